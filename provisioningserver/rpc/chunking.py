"""Values larger than one AMP value, carried as chunks, by agreement.

AMP limits a value to 65,535 bytes. Between two peers that have both
announced the :data:`CHUNKED_VALUES` capability (see
:mod:`provisioningserver.rpc.channel`), a larger value is split into chunks
of at most that size at the box level, so command declarations need nothing
special: the first chunk travels under the argument's own key, the rest under
``<key>.2``, ``<key>.3``, ... (the key scheme MAAS used in 2024-2026 inside
its ``CompressedAmpList``). A value that fits is sent exactly as stock AMP
sends it.

A peer that has not announced the capability (a MAAS or stock AMP peer)
would read ``<key>`` alone and silently drop the rest, so such a value is
refused before anything is sent
(:class:`~provisioningserver.rpc.exceptions.ArgumentTooLarge`); see
:class:`provisioningserver.rpc.framing.BoxProtocol`.
"""

from __future__ import annotations

from provisioningserver.twisted.protocols import amp

__all__ = ["CHUNKED_VALUES", "CHUNK_BYTES", "joinChunks", "splitLargeValues"]

#: The largest chunk: the largest AMP value.
CHUNK_BYTES = amp.MAX_VALUE_LENGTH

#: The capability a peer announces when it reassembles chunked values.
CHUNKED_VALUES = "chunked-values"


def splitLargeValues(box: amp.AmpBox, chunk: int = CHUNK_BYTES) -> amp.AmpBox:
    """Split every value longer than ``chunk`` bytes into chunks.

    :param box: the box to send.
    :param chunk: the largest chunk.
    :return: ``box`` itself when every value fits; otherwise a new box of
        the same type, with each large value under its key (first chunk)
        and ``<key>.2``, ``<key>.3``, ... (the rest).
    """
    if all(len(value) <= chunk for value in box.values()):
        return box
    out = box.copy()
    for key, value in box.items():
        if len(value) > chunk:
            out[key] = value[:chunk]
            for n, start in enumerate(range(chunk, len(value), chunk), start=2):
                out[b"%s.%d" % (key, n)] = value[start : start + chunk]
    return out


def joinChunks(box: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """Reassemble values that arrived as chunks, in place.

    A key ``k`` is joined with ``k.2``, ``k.3``, ... when ``k`` and ``k.2``
    are both present; the chunk keys are removed.

    :param box: a received box.
    :return: the same box.
    """
    for key in [k for k in box if k.endswith(b".2")]:
        base = key[:-2]
        if base not in box:
            continue
        parts = [box[base]]
        n = 2
        while (part := box.pop(b"%s.%d" % (base, n), None)) is not None:
            parts.append(part)
            n += 1
        box[base] = b"".join(parts)
    return box
