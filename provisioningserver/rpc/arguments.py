"""Argument types for commands, beyond those AMP provides.

Each type converts a Python value to the bytes of one AMP value and back.
Use them in a command's ``arguments`` or ``response`` like AMP's own types::

    class ReportStatus(amp.Command):
        arguments = [(b"status", StructureAsJSON())]

Every AMP value is limited to 65,535 bytes; a value that would not fit is
refused with :class:`~provisioningserver.rpc.exceptions.ArgumentTooLarge`
before anything is sent (see :class:`provisioningserver.rpc.common.RPCProtocol`).
"""

from __future__ import annotations

import json
import zlib
from typing import Any
from urllib.parse import ParseResult, urlparse

from provisioningserver.twisted.protocols import amp

__all__ = [
    "Bytes",
    "CompressedAmpList",
    "ParsedURL",
    "StructureAsJSON",
]


class Bytes(amp.Argument):
    """A byte string, sent as it is.

    Unlike :class:`amp.String` it refuses anything but :class:`bytes`, so a
    :class:`str` passed by mistake is an error rather than a surprise.
    """

    def toString(self, inObject: bytes) -> bytes:
        """Encode ``inObject``.

        :param inObject: the bytes to send.
        :return: the same bytes.
        :raises TypeError: when ``inObject`` is not :class:`bytes`.
        """
        if not isinstance(inObject, bytes):
            raise TypeError(f"expected bytes; got {type(inObject).__name__}")
        return inObject

    def fromString(self, inString: bytes) -> bytes:
        """Decode a received value.

        :param inString: the bytes received.
        :return: the same bytes.
        """
        return inString


class StructureAsJSON(amp.Argument):
    """Any JSON-serialisable structure, sent as compact UTF-8 JSON."""

    def toString(self, inObject: Any) -> bytes:
        """Encode ``inObject`` as JSON.

        :param inObject: a structure of dicts, lists, strings, numbers,
            booleans and ``None``.
        :return: compact UTF-8 JSON.
        :raises TypeError: when ``inObject`` is not JSON-serialisable.
        :raises ValueError: for NaN or infinite numbers.
        """
        return json.dumps(inObject, separators=(",", ":"), allow_nan=False).encode(
            "utf-8"
        )

    def fromString(self, inString: bytes) -> Any:
        """Decode received JSON.

        :param inString: UTF-8 JSON.
        :return: the structure.
        :raises ValueError: when the bytes are not valid UTF-8 JSON.
        """
        return json.loads(inString.decode("utf-8"))


class ParsedURL(amp.Argument):
    """A URL, sent as ASCII text and received as a
    :class:`urllib.parse.ParseResult`.

    A URL with non-ASCII characters must be percent-encoded (or, for host
    names, IDNA-encoded) first.
    """

    def toString(self, inObject: ParseResult | str) -> bytes:
        """Encode a URL.

        :param inObject: a :class:`~urllib.parse.ParseResult` or a string.
        :return: the URL as ASCII bytes.
        :raises ValueError: when the URL has non-ASCII characters.
        """
        text = inObject if isinstance(inObject, str) else inObject.geturl()
        try:
            return text.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError(
                f"URL {text!r} is not ASCII; percent-encode it first"
            ) from None

    def fromString(self, inString: bytes) -> ParseResult:
        """Decode a received URL.

        :param inString: ASCII bytes.
        :return: the parsed URL.
        :raises ValueError: when the bytes are not ASCII.
        """
        return urlparse(inString.decode("ascii"))


class CompressedAmpList(amp.AmpList):
    """An :class:`amp.AmpList` whose encoding is compressed with zlib.

    For long lists of small, repetitive records (network interfaces, say)
    that would otherwise outgrow one AMP value.

    :param subargs: as for :class:`amp.AmpList`.
    :param optional: as for :class:`amp.Argument`.
    :param max_size: the most bytes a received value may expand to; a value
        that expands further is refused, so a small message cannot exhaust
        memory (default 16 MiB).
    """

    def __init__(
        self,
        subargs: list[tuple[bytes, amp.Argument]],
        optional: bool = False,
        max_size: int = 16 * 1024 * 1024,
    ) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1; not {max_size!r}")
        super().__init__(subargs, optional)
        self.max_size = max_size

    def toStringProto(self, inObject: list[dict[str, Any]], proto: Any) -> bytes:
        """Encode the list, then compress it.

        :param inObject: a list of dicts, as for :class:`amp.AmpList`.
        :param proto: the protocol sending it.
        :return: the compressed encoding.
        """
        return zlib.compress(super().toStringProto(inObject, proto))

    def fromStringProto(self, inString: bytes, proto: Any) -> list[dict[str, Any]]:
        """Decompress a received value, then decode the list.

        :param inString: the compressed encoding.
        :param proto: the protocol receiving it.
        :return: a list of dicts.
        :raises ValueError: when the value is not zlib data, or expands past
            ``max_size`` bytes.
        """
        decompressor = zlib.decompressobj()
        try:
            data = decompressor.decompress(inString, self.max_size)
        except zlib.error as error:
            raise ValueError(f"not a compressed list: {error}") from None
        if decompressor.unused_data:
            raise ValueError("compressed list is followed by extra bytes")
        if not decompressor.eof:
            raise ValueError(
                f"compressed list is truncated or expands past {self.max_size} bytes"
            )
        return super().fromStringProto(data, proto)
