"""Text from peers, made safe to log.

Anything a peer or a discovery document supplies (identities, command names,
ask tags, event-loop names, URLs, error descriptions) can be arbitrarily long
and can hold control characters: a newline forges a log line, ``ESC[2J``
clears an operator's terminal. :func:`printable` bounds and escapes such a
value before it reaches a log line.
"""

from __future__ import annotations

__all__ = ["DEFAULT_LIMIT", "printable"]

#: The most characters of a peer-supplied value shown in a log line.
DEFAULT_LIMIT = 64

#: Code points escaped: C0 controls, DEL and C1 controls as ``\\xNN``; line
#: and paragraph separators and bidirectional overrides as ``\\uNNNN``.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_ESCAPES.update(
    {c: f"\\u{c:04x}" for c in (*range(0x2028, 0x202F), *range(0x2066, 0x206A))}
)
_ESCAPES[ord("\\")] = "\\\\"
# Undecodable bytes (decoded with "surrogateescape") are shown as the byte.
_ESCAPES.update({c: f"\\x{c - 0xDC00:02x}" for c in range(0xDC80, 0xDD00)})


def printable(value: object, limit: int = DEFAULT_LIMIT) -> str:
    """Render a peer-supplied value for a log line: bounded and escaped.

    Bytes are decoded as UTF-8 with undecodable bytes shown as ``\\xNN``;
    control characters (C0, DEL, C1) and backslashes are escaped, so the
    result is one line that cannot move the cursor. A value longer than
    ``limit`` characters is cut, and its full length is given.

    :param value: :class:`bytes`, :class:`str`, or anything else (rendered
        with :class:`str`).
    :param limit: the most characters of ``value`` shown (at least 1).
    :return: printable text.
    """
    limit = max(1, limit)
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        # A character is at most 4 bytes: decode no more than can be shown.
        text = raw[: limit * 4].decode("utf-8", "surrogateescape")
        cut = len(text) > limit or len(raw) > limit * 4
        size, unit = len(raw), "bytes"
    else:
        text = value if isinstance(value, str) else str(value)
        cut = len(text) > limit
        size, unit = len(text), "characters"
    shown = text[:limit].translate(_ESCAPES)
    if cut:
        return f"{shown}... ({size} {unit})"
    return shown
