"""Argument types for commands, beyond those AMP provides, encoded as MAAS
encodes them.

Each type converts a Python value to the bytes of one AMP value and back.
Use them in a command's ``arguments`` or ``response`` like AMP's own types::

    class ReportStatus(amp.Command):
        arguments = [(b"status", StructureAsJSON())]

The bytes are MAAS's, so a command declared here with these types talks to
a MAAS peer that declares it with MAAS's types:

============================  ======================================================
type                          bytes of one value
============================  ======================================================
:class:`Bytes`                the bytes themselves
:class:`Choice`               the byte string the declaration maps the value to
:class:`ParsedURL`            the URL as ASCII, its host name IDNA-encoded
:class:`StructureAsJSON`      ``zlib.compress(json.dumps(value).encode("ascii"))``
:class:`AmpList`              stock AMP's list of boxes (item keys may be text)
:class:`CompressedAmpList`    ``zlib.compress`` of the :class:`AmpList` bytes
:class:`IPAddress`            4 or 16 bytes, big-endian
:class:`IPNetwork`            the network address (4 or 16 bytes), then one byte
                              of prefix length
============================  ======================================================

Decoding is strict and bounded: a value that does not parse raises
:class:`ValueError` saying why, a compressed value may expand only so far,
and a list may hold only so many items, so that a small message from a peer
cannot cost much memory or time.

Every AMP value is limited to 65,535 bytes. A larger one travels in chunks
only to a peer that agreed to reassemble them; to any other peer it is
refused with :class:`~provisioningserver.rpc.exceptions.ArgumentTooLarge`
before anything is sent (see
:class:`~provisioningserver.rpc.common.RPCProtocol`).
"""

from __future__ import annotations

import ipaddress
import json
import zlib
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import ParseResult, urlparse

from provisioningserver.twisted.protocols import amp

__all__ = [
    "DEFAULT_MAX_ITEMS",
    "DEFAULT_MAX_SIZE",
    "AmpList",
    "Bytes",
    "Choice",
    "CompressedAmpList",
    "IPAddress",
    "IPNetwork",
    "ParsedURL",
    "StructureAsJSON",
]

#: The most bytes a received compressed value may expand to, by default.
DEFAULT_MAX_SIZE = 16 * 1024 * 1024

#: The most items a received list may hold, by default.
DEFAULT_MAX_ITEMS = 100_000

IPAddressType = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetworkType = ipaddress.IPv4Network | ipaddress.IPv6Network


def _checkLimit(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a whole number of at least 1; not {value!r}")
    return value


def _decompress(data: bytes, maxSize: int, what: str) -> bytes:
    """Decompress one zlib stream, expanding it to at most ``maxSize`` bytes.

    :param data: the compressed bytes.
    :param maxSize: the most bytes the result may have.
    :param what: what the value is, for error messages.
    :return: the decompressed bytes.
    :raises ValueError: when ``data`` is not one complete zlib stream, or
        expands past ``maxSize`` bytes.
    """
    decompressor = zlib.decompressobj()
    try:
        result = decompressor.decompress(data, maxSize)
    except zlib.error as error:
        raise ValueError(f"{what} is not zlib data: {error}") from None
    if decompressor.unconsumed_tail:
        raise ValueError(f"{what} expands past the limit of {maxSize} bytes")
    if not decompressor.eof:
        if len(result) == maxSize and decompressor.decompress(b"", 1):
            # All input taken, the limit reached, and zlib holds more output.
            raise ValueError(f"{what} expands past the limit of {maxSize} bytes")
        raise ValueError(f"{what} is a truncated zlib stream ({len(data)} bytes)")
    if decompressor.unused_data:
        raise ValueError(
            f"{what} has {len(decompressor.unused_data)} bytes after its zlib stream"
        )
    return result


class Bytes(amp.Argument):
    """A byte string, sent as it is.

    Unlike :class:`amp.String` it refuses anything but :class:`bytes`, so a
    :class:`str` passed by mistake is an error rather than a surprise (as in
    MAAS).
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


class Choice(amp.Argument):
    """One of a fixed set of values, each sent as the byte string the
    declaration gives it.

    For example, ``Choice({"on": b"1", "off": b"0"})`` sends ``"on"`` as
    ``b"1"`` and turns a received ``b"0"`` back into ``"off"``.

    :param choices: a mapping from each value (anything hashable) to its byte
        string on the wire; the byte strings must be distinct.
    :param optional: as for :class:`amp.Argument`.
    :raises TypeError: when ``choices`` is not a mapping or a byte string is
        not :class:`bytes`.
    :raises ValueError: when two values share a byte string.
    """

    def __init__(self, choices: Mapping[Any, bytes], optional: bool = False) -> None:
        super().__init__(optional=optional)
        if not isinstance(choices, Mapping):
            raise TypeError(f"choices must be a mapping; got {type(choices).__name__}")
        wrong = sorted(repr(v) for v in choices.values() if not isinstance(v, bytes))
        if wrong:
            raise TypeError(f"choices must map to bytes; not {', '.join(wrong)}")
        self._encode = dict(choices)
        self._decode = {wire: value for value, wire in choices.items()}
        if len(self._decode) != len(self._encode):
            raise ValueError("two choices share one byte string; each must be distinct")

    def toString(self, inObject: Any) -> bytes:
        """Encode a choice.

        :param inObject: one of the declared values.
        :return: its byte string.
        :raises ValueError: when ``inObject`` is not one of them.
        """
        try:
            return self._encode[inObject]
        except (KeyError, TypeError):
            known = ", ".join(sorted(map(repr, self._encode)))
            raise ValueError(
                f"{inObject!r} is not one of the choices {known}"
            ) from None

    def fromString(self, inString: bytes) -> Any:
        """Decode a received choice.

        :param inString: a byte string.
        :return: the value it stands for.
        :raises ValueError: when it stands for none.
        """
        try:
            return self._decode[inString]
        except KeyError:
            raise ValueError(
                f"{inString[:64]!r} is not one of the declared choices"
            ) from None


class ParsedURL(amp.Argument):
    """A URL, sent as ASCII text and received as a
    :class:`urllib.parse.ParseResult`.

    Encoded as MAAS encodes it: the URL is split, its network location (the
    part between ``//`` and the path) is passed through Python's ``idna``
    codec, so a non-ASCII host name travels in its ``xn--`` form, and the URL
    is put back together and sent as ASCII. Any other part must already be
    ASCII (percent-encode it first).
    """

    def toString(self, inObject: ParseResult | str | bytes) -> bytes:
        """Encode a URL.

        :param inObject: a URL-like object (one with a ``geturl`` method, such
            as :class:`~urllib.parse.ParseResult`), or the URL as text or
            bytes.
        :return: the URL as ASCII bytes.
        :raises TypeError: when ``inObject`` is none of these.
        :raises ValueError: when the URL has non-ASCII characters outside its
            host name, or a host name that IDNA cannot encode.
        """
        if isinstance(inObject, (str, bytes)):
            url: str | bytes = inObject
        else:
            try:
                geturl = inObject.geturl
            except AttributeError:
                kind = type(inObject).__name__
                raise TypeError(
                    f"expected a URL or a URL-like object; got {kind}"
                ) from None
            url = geturl()
        if isinstance(url, bytes):
            try:
                url.decode("ascii")
            except UnicodeDecodeError:
                raise ValueError(f"URL {url[:200]!r} is not ASCII") from None
            return url
        parts = urlparse(url)
        try:
            netloc = parts.netloc.encode("idna").decode("ascii")
        except UnicodeError as error:
            raise ValueError(
                f"URL {url[:200]!r}: cannot IDNA-encode {parts.netloc!r}: {error}"
            ) from None
        try:
            return parts._replace(netloc=netloc).geturl().encode("ascii")
        except UnicodeEncodeError:
            raise ValueError(
                f"URL {url[:200]!r} is not ASCII outside its host name; "
                "percent-encode it first"
            ) from None

    def fromString(self, inString: bytes) -> ParseResult:
        """Decode a received URL.

        :param inString: ASCII bytes.
        :return: the parsed URL.
        :raises ValueError: when the bytes are not ASCII.
        """
        try:
            text = inString.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"received URL {inString[:200]!r} is not ASCII") from None
        return urlparse(text)


class StructureAsJSON(amp.Argument):
    """Any JSON-serialisable structure, sent as zlib-compressed JSON.

    The bytes are MAAS's: ``zlib.compress(json.dumps(value).encode("ascii"))``
    with :func:`json.dumps`'s defaults (``", "`` and ``": "`` separators,
    non-ASCII characters escaped as ``\\uXXXX``, ``NaN`` and ``Infinity``
    allowed, keys in the order given) and zlib's default level.

    :param optional: as for :class:`amp.Argument`.
    :param max_size: the most bytes a received value may expand to before it
        is parsed (default :data:`DEFAULT_MAX_SIZE`).
    :raises ValueError: when ``max_size`` is not a whole number of at least 1.
    """

    def __init__(
        self, optional: bool = False, max_size: int = DEFAULT_MAX_SIZE
    ) -> None:
        super().__init__(optional=optional)
        self.max_size = _checkLimit("max_size", max_size)

    def toString(self, inObject: Any) -> bytes:
        """Encode ``inObject``.

        :param inObject: a structure of dicts, lists, tuples, strings,
            numbers, booleans and ``None``.
        :return: the compressed JSON.
        :raises TypeError: when ``inObject`` is not JSON-serialisable.
        :raises ValueError: when it refers to itself or is nested too deeply.
        """
        try:
            text = json.dumps(inObject)
        except RecursionError:
            raise ValueError("structure is nested too deeply to encode") from None
        return zlib.compress(text.encode("ascii"))

    def fromString(self, inString: bytes) -> Any:
        """Decode a received value.

        :param inString: compressed JSON (ASCII, as MAAS sends it; UTF-8 is
            accepted too).
        :return: the structure.
        :raises ValueError: when the bytes are not zlib data, expand past
            ``max_size``, or are not JSON.
        """
        data = _decompress(inString, self.max_size, "JSON structure")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"JSON structure is not UTF-8: {error}") from None
        try:
            return json.loads(text)
        except RecursionError:
            raise ValueError("JSON structure is nested too deeply") from None
        except ValueError as error:
            raise ValueError(f"JSON structure does not parse: {error}") from None


def _asBytesName(name: bytes | str) -> bytes:
    if isinstance(name, str):
        try:
            return name.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError(f"item key {name!r} is not ASCII") from None
    if isinstance(name, bytes):
        return name
    raise TypeError(f"item key must be bytes or str; got {type(name).__name__}")


def _countBoxes(data: bytes, maxItems: int) -> int:
    """Count the AMP boxes in ``data``, checking their framing.

    Stops as soon as there are more than ``maxItems``, so that a value of
    millions of tiny boxes costs no more than ``maxItems`` of them.

    :param data: serialised boxes.
    :param maxItems: the most boxes allowed.
    :return: how many boxes there are.
    :raises ValueError: when there are more than ``maxItems``, or the framing
        is broken (a key over 255 bytes, a truncated key or value, or bytes
        after the last complete box).
    """
    end = len(data)
    pos = 0
    boxes = 0
    while pos < end:
        if end - pos < 2:
            raise ValueError(f"list is truncated at byte {pos} of {end}")
        length = (data[pos] << 8) | data[pos + 1]
        pos += 2
        if length == 0:
            boxes += 1
            if boxes > maxItems:
                raise ValueError(f"list has more than {maxItems} items")
            continue
        if length > amp.MAX_KEY_LENGTH:
            raise ValueError(f"list item has a key of {length} bytes (at most 255)")
        pos += length
        if end - pos < 2:
            raise ValueError(f"list is truncated at byte {min(pos, end)} of {end}")
        pos += 2 + ((data[pos] << 8) | data[pos + 1])
        if pos > end:
            raise ValueError(f"list is truncated: a value runs past byte {end}")
    return boxes


class AmpList(amp.AmpList):
    """A list of dicts, each sent as one AMP box, as :class:`amp.AmpList`.

    The bytes are stock AMP's. As in MAAS, the item keys may be given as
    ASCII text as well as bytes. Unlike stock AMP, a received list may hold
    at most ``max_items`` items, counted before any is decoded, and a list
    that does not parse raises :class:`ValueError`.

    :param subargs: ``(key, argument type)`` pairs describing each item.
    :param optional: as for :class:`amp.Argument`.
    :param max_items: the most items a received list may hold (default
        :data:`DEFAULT_MAX_ITEMS`).
    :raises ValueError: when a key is not ASCII, or ``max_items`` is not a
        whole number of at least 1.
    """

    def __init__(
        self,
        subargs: Iterable[tuple[bytes | str, amp.Argument]],
        optional: bool = False,
        max_items: int = DEFAULT_MAX_ITEMS,
    ) -> None:
        super().__init__([(_asBytesName(k), arg) for k, arg in subargs], optional)
        self.max_items = _checkLimit("max_items", max_items)

    def fromStringProto(self, inString: bytes, proto: Any) -> list[dict[str, Any]]:
        """Decode a received list.

        :param inString: the serialised boxes.
        :param proto: the protocol receiving it.
        :return: a list of dicts.
        :raises ValueError: when there are more than ``max_items`` items, the
            framing is broken, an item lacks a required key, or a value does
            not parse.
        """
        _countBoxes(inString, self.max_items)
        try:
            return super().fromStringProto(inString, proto)
        except KeyError as error:
            raise ValueError(f"a list item lacks the key {error}") from None


class CompressedAmpList(AmpList):
    """An :class:`AmpList` whose bytes are compressed with zlib.

    For long lists of small, repetitive records (network interfaces, leases)
    that would otherwise outgrow one AMP value. The bytes are MAAS's:
    ``zlib.compress`` of the :class:`AmpList` encoding, at zlib's default
    level.

    Values over 65,535 bytes: from July 2024 until July 2026 MAAS split a
    compressed list that did not fit into chunks inside the argument: the
    first 65,535 bytes under the argument's key, the rest under
    ``<key>.2``, ``<key>.3``, …, the same keys as this package's box-level
    chunking. A received value in that form is reassembled here, whatever the
    peer announced. When sending, the whole value is handed to the
    connection, which splits it into those same keys only for a peer that
    agreed to chunked values; to any other peer an over-large value is
    refused before anything is sent. (No MAAS release could read such a
    value back: the releases that looked for the chunk keys let every later
    chunk overwrite the first, and the others ignore them.)

    Received values are bounded twice: they may expand to at most
    ``max_size`` bytes, and hold at most ``max_items`` items, counted before
    any is decoded.

    :param subargs: as for :class:`AmpList`.
    :param optional: as for :class:`amp.Argument`.
    :param max_size: the most bytes a received value may expand to (default
        :data:`DEFAULT_MAX_SIZE`).
    :param max_items: the most items a received list may hold (default
        :data:`DEFAULT_MAX_ITEMS`).
    :raises ValueError: when ``max_size`` or ``max_items`` is not a whole
        number of at least 1.
    """

    def __init__(
        self,
        subargs: Iterable[tuple[bytes | str, amp.Argument]],
        optional: bool = False,
        max_size: int = DEFAULT_MAX_SIZE,
        max_items: int = DEFAULT_MAX_ITEMS,
    ) -> None:
        super().__init__(subargs, optional, max_items)
        self.max_size = _checkLimit("max_size", max_size)

    def fromBox(
        self,
        name: bytes,
        strings: dict[bytes, bytes],
        objects: dict[str, Any],
        proto: Any,
    ) -> None:
        """Take this argument out of a received box, reassembling chunks.

        When the box holds ``<name>.2``, ``<name>.3``, … (MAAS's chunks, in
        order, up to the first missing number) they are appended to
        ``<name>`` and removed from the box before the value is decoded.

        :param name: the argument's wire name.
        :param strings: the received box.
        :param objects: the decoded arguments, to which this one is added.
        :param proto: the protocol receiving it.
        """
        first = strings.get(name)
        if first is not None:
            parts = [first]
            n = 2
            while (part := strings.pop(b"%s.%d" % (name, n), None)) is not None:
                parts.append(part)
                n += 1
            if len(parts) > 1:
                strings[name] = b"".join(parts)
        super().fromBox(name, strings, objects, proto)

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
        :raises ValueError: when the value is not one zlib stream, expands
            past ``max_size`` bytes, holds more than ``max_items`` items, or
            does not parse.
        """
        data = _decompress(inString, self.max_size, "compressed list")
        return super().fromStringProto(data, proto)


def _toIPAddress(value: Any) -> IPAddressType:
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return value
    if isinstance(value, str):
        return ipaddress.ip_address(value)
    version = getattr(value, "version", None)
    if version in (4, 6):  # netaddr.IPAddress and the like.
        return ipaddress.ip_address(str(value))
    raise TypeError(f"expected an IP address; got {type(value).__name__}")


class IPAddress(amp.Argument):
    """An IPv4 or IPv6 address, sent as its 4 or 16 bytes, big-endian (as
    MAAS sends a ``netaddr.IPAddress``).

    Encodes an :mod:`ipaddress` address, its text form, or any object with a
    ``version`` whose text form is an address (a ``netaddr.IPAddress``);
    decodes to :class:`ipaddress.IPv4Address` or
    :class:`ipaddress.IPv6Address`.
    """

    def toString(self, inObject: Any) -> bytes:
        """Encode an address.

        :param inObject: the address.
        :return: 4 or 16 bytes.
        :raises TypeError: when ``inObject`` is not an address.
        :raises ValueError: when its text is not an address.
        """
        return _toIPAddress(inObject).packed

    def fromString(self, inString: bytes) -> IPAddressType:
        """Decode a received address.

        :param inString: 4 or 16 bytes.
        :return: the address.
        :raises ValueError: for any other length.
        """
        if len(inString) not in (4, 16):
            raise ValueError(
                f"an IP address is 4 or 16 bytes; received {len(inString)}"
            )
        return ipaddress.ip_address(inString)


def _toIPNetwork(value: Any) -> IPNetworkType:
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return value
    if isinstance(value, (ipaddress.IPv4Interface, ipaddress.IPv6Interface)):
        return value.network
    if isinstance(value, str):
        return ipaddress.ip_network(value, strict=False)
    cidr = getattr(value, "cidr", None)
    if cidr is not None:  # netaddr.IPNetwork and the like.
        return ipaddress.ip_network(str(cidr), strict=False)
    raise TypeError(f"expected an IP network; got {type(value).__name__}")


class IPNetwork(amp.Argument):
    """An IPv4 or IPv6 network, sent as its network address (4 or 16 bytes,
    big-endian) followed by one byte of prefix length (as MAAS sends a
    ``netaddr.IPNetwork``: host bits are cleared).

    Encodes an :mod:`ipaddress` network or interface, its text form, or any
    object with a ``cidr`` (a ``netaddr.IPNetwork``); decodes to
    :class:`ipaddress.IPv4Network` or :class:`ipaddress.IPv6Network`.
    """

    def toString(self, inObject: Any) -> bytes:
        """Encode a network.

        :param inObject: the network.
        :return: 5 or 17 bytes.
        :raises TypeError: when ``inObject`` is not a network.
        :raises ValueError: when its text is not a network.
        """
        network = _toIPNetwork(inObject)
        return network.network_address.packed + bytes([network.prefixlen])

    def fromString(self, inString: bytes) -> IPNetworkType:
        """Decode a received network.

        :param inString: 5 or 17 bytes.
        :return: the network (host bits, if a peer sent any, cleared).
        :raises ValueError: for any other length, or a prefix longer than the
            address.
        """
        if len(inString) not in (5, 17):
            raise ValueError(
                f"an IP network is 5 or 17 bytes; received {len(inString)}"
            )
        address = ipaddress.ip_address(inString[:-1])
        prefix = inString[-1]
        if prefix > address.max_prefixlen:
            raise ValueError(
                f"prefix length {prefix} is longer than an IPv{address.version} address"
            )
        return ipaddress.ip_network((address, prefix), strict=False)
