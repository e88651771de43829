"""Tests for :mod:`provisioningserver.rpc.arguments`."""

from __future__ import annotations

import json
import math
import zlib
from urllib.parse import ParseResult, urlparse

import pytest
from hypothesis import given, provisional
from hypothesis import strategies as st

from provisioningserver.rpc.arguments import (
    Bytes,
    CompressedAmpList,
    ParsedURL,
    StructureAsJSON,
)
from provisioningserver.twisted.protocols import amp

RECORD = [(b"name", amp.Unicode()), (b"count", amp.Integer())]


class EchoBytes(amp.Command):
    arguments = [(b"value", Bytes())]


class EchoJSON(amp.Command):
    arguments = [(b"value", StructureAsJSON())]


class EchoURL(amp.Command):
    arguments = [(b"value", ParsedURL())]


class EchoList(amp.Command):
    arguments = [(b"value", CompressedAmpList(RECORD))]


class EchoUnicode(amp.Command):
    arguments = [(b"value", amp.Unicode())]


class EchoInteger(amp.Command):
    arguments = [(b"value", amp.Integer())]


class EchoMany(amp.Command):
    arguments = [
        (b"data", Bytes()),
        (b"structure", StructureAsJSON()),
        (b"url", ParsedURL()),
        (b"records", CompressedAmpList(RECORD)),
        (b"text", amp.Unicode()),
        (b"number", amp.Integer()),
    ]


def wire(command, **arguments) -> bytes:
    """Encode ``arguments`` as ``command`` would, and serialise the box."""
    return command.makeArguments(arguments, None).serialize()


def unwire(command, data: bytes) -> dict:
    """Parse one serialised box and decode it as ``command``'s arguments."""
    boxes = amp.parseString(data)
    assert len(boxes) == 1
    return command.parseArguments(boxes[0], None)


def round_trip(command, value):
    return unwire(command, wire(command, value=value))["value"]


def raw_value(command, value) -> bytes:
    """The bytes ``command`` puts on the wire for ``value``."""
    return amp.parseString(wire(command, value=value))[0][b"value"]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=25,
)

records = st.lists(
    st.fixed_dictionaries(
        {"name": st.text(max_size=40), "count": st.integers(-(2**70), 2**70)}
    ),
    max_size=20,
)


# Bytes


@given(st.binary(max_size=2000))
def test_bytes_round_trip(value):
    assert round_trip(EchoBytes, value) == value
    assert raw_value(EchoBytes, value) == value


@pytest.mark.parametrize("value", ["text", bytearray(b"ba"), 1, None])
def test_bytes_refuses_other_types(value):
    with pytest.raises(TypeError, match="expected bytes"):
        Bytes().toString(value)
    with pytest.raises(TypeError):
        wire(EchoBytes, value=value)


# StructureAsJSON


@given(json_values)
def test_json_round_trip(value):
    assert round_trip(EchoJSON, value) == value


@given(json_values)
def test_json_is_compact_utf8(value):
    data = raw_value(EchoJSON, value)
    assert json.loads(data.decode("utf-8")) == value
    assert data == json.dumps(value, separators=(",", ":")).encode("utf-8")


def test_json_examples():
    value = {"a": [1, 2.5, None, True, False], "ü": {"nested": "ßtring"}}
    assert raw_value(EchoJSON, value) == (
        b'{"a":[1,2.5,null,true,false],"\\u00fc":{"nested":"\\u00dftring"}}'
    )
    assert round_trip(EchoJSON, value) == value
    assert round_trip(EchoJSON, (1, 2)) == [1, 2]
    assert round_trip(EchoJSON, {1: "x"}) == {"1": "x"}
    negative_zero = round_trip(EchoJSON, -0.0)
    assert negative_zero == 0 and math.copysign(1, negative_zero) == -1


@pytest.mark.parametrize("value", [{1, 2}, object(), b"bytes", {(1, 2): 3}])
def test_json_refuses_unserialisable(value):
    with pytest.raises(TypeError):
        StructureAsJSON().toString(value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, [1.0, math.nan]])
def test_json_refuses_non_finite_floats(value):
    with pytest.raises(ValueError):
        StructureAsJSON().toString(value)


@pytest.mark.parametrize("data", [b"", b"{", b"nope", b"\xff\xfe", b'"\xc3"'])
def test_json_refuses_bad_input(data):
    with pytest.raises(ValueError):
        StructureAsJSON().fromString(data)


# ParsedURL


@given(provisional.urls())
def test_url_round_trip_from_str(url):
    result = round_trip(EchoURL, url)
    assert isinstance(result, ParseResult)
    assert result == urlparse(url)
    assert result.geturl() == url
    assert raw_value(EchoURL, url) == url.encode("ascii")


@given(provisional.urls())
def test_url_round_trip_from_parse_result(url):
    parsed = urlparse(url)
    result = round_trip(EchoURL, parsed)
    assert isinstance(result, ParseResult)
    assert result == parsed


def test_url_examples():
    url = "https://user:pw@example.com:5240/MAAS/api/2.0/?op=list&x=%C3%A9#frag"
    result = round_trip(EchoURL, url)
    assert result.scheme == "https"
    assert result.hostname == "example.com"
    assert result.port == 5240
    assert result.path == "/MAAS/api/2.0/"
    assert result.query == "op=list&x=%C3%A9"
    assert result.fragment == "frag"
    assert round_trip(EchoURL, "") == urlparse("")


@pytest.mark.parametrize(
    "url", ["http://exämple.com/", "http://example.com/päth", "http://ä/?q=ü"]
)
def test_url_refuses_non_ascii(url):
    with pytest.raises(ValueError, match="ASCII"):
        ParsedURL().toString(url)
    with pytest.raises(ValueError, match="ASCII"):
        ParsedURL().toString(urlparse(url))
    with pytest.raises(ValueError):
        wire(EchoURL, value=url)


def test_url_refuses_non_ascii_input():
    with pytest.raises(ValueError):
        ParsedURL().fromString("http://exämple.com/".encode())


# CompressedAmpList


@given(records)
def test_compressed_list_round_trip(value):
    assert round_trip(EchoList, value) == value


@given(records)
def test_compressed_list_is_zlib_of_amp_list(value):
    data = raw_value(EchoList, value)
    assert zlib.decompress(data) == amp.AmpList(RECORD).toStringProto(value, None)


def test_compressed_list_compresses_repetitive_records():
    value = [{"name": "eth0", "count": 1500}] * 5000
    compressed = CompressedAmpList(RECORD).toStringProto(value, None)
    plain = amp.AmpList(RECORD).toStringProto(value, None)
    assert len(plain) > amp.MAX_VALUE_LENGTH  # Would not fit uncompressed.
    assert len(compressed) < len(plain) // 20
    assert round_trip(EchoList, value) == value


def test_compressed_list_default_max_size():
    assert CompressedAmpList(RECORD).max_size == 16 * 1024 * 1024


def test_compressed_list_refuses_zlib_bomb():
    bomb = zlib.compress(b"\0" * (20 * 1024 * 1024))
    assert len(bomb) < amp.MAX_VALUE_LENGTH
    with pytest.raises(ValueError, match="expands past"):
        CompressedAmpList(RECORD).fromStringProto(bomb, None)
    # Also as an argument in a box.
    data = amp.AmpBox(value=bomb).serialize()
    with pytest.raises(ValueError):
        unwire(EchoList, data)


def test_compressed_list_max_size_boundary():
    value = [{"name": f"record {i}", "count": i} for i in range(2000)]
    compressed = CompressedAmpList(RECORD).toStringProto(value, None)
    size = len(zlib.decompress(compressed))
    exact = CompressedAmpList(RECORD, max_size=size)
    assert exact.fromStringProto(compressed, None) == value
    roomy = CompressedAmpList(RECORD, max_size=size + 1)
    assert roomy.fromStringProto(compressed, None) == value
    tight = CompressedAmpList(RECORD, max_size=size - 1)
    with pytest.raises(ValueError):
        tight.fromStringProto(compressed, None)


def test_compressed_list_zero_max_size_is_not_unlimited():
    """max_size=0 must not disable the limit.

    BUG: zlib's ``max_length=0`` means "no limit", so a CompressedAmpList made
    with ``max_size=0`` accepts values of any size instead of refusing them.
    Either the constructor should refuse max_size < 1, or decoding should.
    """
    value = [{"name": "x", "count": 1}]
    compressed = CompressedAmpList(RECORD).toStringProto(value, None)
    try:
        argument = CompressedAmpList(RECORD, max_size=0)
    except ValueError:
        return
    with pytest.raises(ValueError):
        argument.fromStringProto(compressed, None)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"\x00" * 10,
        b"x\x9c not really zlib",
        b"\x78\x9c" + bytes(range(256)),
    ],
)
def test_compressed_list_refuses_garbage(data):
    with pytest.raises(ValueError):
        CompressedAmpList(RECORD).fromStringProto(data, None)


def test_compressed_list_refuses_truncated():
    value = [{"name": f"record {i}", "count": i} for i in range(50)]
    compressed = CompressedAmpList(RECORD).toStringProto(value, None)
    for cut in (1, 4, len(compressed) // 2, len(compressed) - 2):
        with pytest.raises(ValueError):
            CompressedAmpList(RECORD).fromStringProto(compressed[:cut], None)


def test_compressed_list_empty():
    assert round_trip(EchoList, []) == []
    assert zlib.decompress(raw_value(EchoList, [])) == b""


def test_compressed_list_optional():
    class Optional(amp.Command):
        arguments = [(b"value", CompressedAmpList(RECORD, optional=True))]

    assert unwire(Optional, wire(Optional)) == {"value": None}
    assert round_trip(Optional, [{"name": "a", "count": 2}]) == [
        {"name": "a", "count": 2}
    ]


# Stock AMP types, for good measure


@given(st.text(max_size=500))
def test_unicode_round_trip(value):
    assert round_trip(EchoUnicode, value) == value


@given(st.integers())
def test_integer_round_trip(value):
    assert round_trip(EchoInteger, value) == value


@given(
    data=st.binary(max_size=200),
    structure=json_values,
    url=provisional.urls(),
    records=records,
    text=st.text(max_size=100),
    number=st.integers(),
)
def test_many_arguments_round_trip(data, structure, url, records, text, number):
    arguments = {
        "data": data,
        "structure": structure,
        "url": url,
        "records": records,
        "text": text,
        "number": number,
    }
    result = unwire(EchoMany, wire(EchoMany, **arguments))
    assert result == dict(arguments, url=urlparse(url))
