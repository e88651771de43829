"""Tests for :mod:`provisioningserver.rpc.arguments`.

Each type's bytes are compared with MAAS's encoding, written here from the
recipe MAAS's source gives (see ``tests/interop/README.md`` for where each
recipe was read), for a table of values that includes non-ASCII content and
edge sizes; then round trips, and bad input, which must raise
:class:`ValueError` and nothing else.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import time
import zlib
from urllib.parse import ParseResult, urlparse, urlsplit

import pytest
from hypothesis import given, provisional
from hypothesis import strategies as st

from provisioningserver.rpc.arguments import (
    DEFAULT_MAX_ITEMS,
    DEFAULT_MAX_SIZE,
    AmpList,
    Bytes,
    Choice,
    CompressedAmpList,
    IPAddress,
    IPNetwork,
    ParsedURL,
    StructureAsJSON,
)
from provisioningserver.twisted.protocols import amp

RECORD = [(b"name", amp.Unicode()), (b"count", amp.Integer())]


def command(argument: amp.Argument) -> type[amp.Command]:
    """A command with one argument, ``value``, of the given type."""
    return type("Echo", (amp.Command,), {"arguments": [(b"value", argument)]})


def wire(cmd, **arguments) -> bytes:
    """Encode ``arguments`` as ``cmd`` would, and serialise the box."""
    return cmd.makeArguments(arguments, None).serialize()


def unwire(cmd, data: bytes) -> dict:
    """Parse one serialised box and decode it as ``cmd``'s arguments."""
    boxes = amp.parseString(data)
    assert len(boxes) == 1
    return cmd.parseArguments(boxes[0], None)


def round_trip(argument: amp.Argument, value):
    cmd = command(argument)
    return unwire(cmd, wire(cmd, value=value))["value"]


def raw_value(argument: amp.Argument, value) -> bytes:
    """The bytes ``argument`` puts on the wire for ``value``."""
    return amp.parseString(wire(command(argument), value=value))[0][b"value"]


def only_value_errors(argument: amp.Argument, data: bytes) -> None:
    """Decoding ``data`` gives a value or raises ValueError, nothing else."""
    try:
        argument.fromStringProto(data, None)
    except ValueError:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
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


# Bytes: MAAS sends the bytes as they are.

BYTES_TABLE = [
    b"",
    b"\x00",
    b"plain ascii",
    "caf\u00e9 \u65e5\u672c".encode(),
    bytes(range(256)),
    b"\xff" * 65535,
    b"x" * 65536,  # The argument does not judge size; the connection does.
]


@pytest.mark.parametrize("value", BYTES_TABLE, ids=lambda v: f"{len(v)}B")
def test_bytes_are_sent_as_they_are(value):
    assert Bytes().toString(value) == value
    assert Bytes().fromString(value) == value


@given(st.binary(max_size=2000))
def test_bytes_round_trip(value):
    assert round_trip(Bytes(), value) == value
    assert raw_value(Bytes(), value) == value


@pytest.mark.parametrize("value", ["text", bytearray(b"ba"), 1, None])
def test_bytes_refuses_other_types(value):
    with pytest.raises(TypeError, match="expected bytes"):
        Bytes().toString(value)


# StructureAsJSON: MAAS sends zlib.compress(json.dumps(value).encode("ascii")).


def maas_json(value) -> bytes:
    return zlib.compress(json.dumps(value).encode("ascii"))


def incompressible_text(size: int) -> str:
    """ASCII text of ``size`` characters that zlib barely compresses."""
    return os.urandom(size).hex()[:size]


JSON_TABLE = [
    None,
    True,
    False,
    0,
    -1,
    2**70,
    1.5,
    -0.0,
    1e300,
    "",
    "plain",
    "caf\u00e9",
    "\u65e5\u672c\u8a9e",
    "\U0001f600 astral",
    'quote " backslash \\ newline \n tab \t nul \x00',
    [],
    {},
    [1, 2.5, None, True, "x"],
    {"b": 1, "a": 2, "\u00fc": {"nested": ["\u00df"]}},  # Key order kept.
    {"list": list(range(1000))},
    # Compresses to just under, and just over, one AMP value.
    incompressible_text(65_000),
    incompressible_text(70_000),
    # Very repetitive: compresses a 4 MiB text to a few KiB.
    "a" * (4 * 1024 * 1024),
]


def json_id(value) -> str:
    text = repr(value)
    return text if len(text) < 30 else f"{type(value).__name__}[{len(text)}]"


@pytest.mark.parametrize("value", JSON_TABLE, ids=json_id)
def test_json_bytes_are_maas_bytes(value):
    assert StructureAsJSON().toString(value) == maas_json(value)
    assert StructureAsJSON().fromString(maas_json(value)) == value


def test_json_exact_text():
    """The compressed text uses json.dumps's default separators and ASCII
    escapes, not compact or UTF-8 JSON."""
    value = {"a": [1, 2.5, None, True], "\u00fc": "\u00df\U0001f600"}
    data = zlib.decompress(StructureAsJSON().toString(value))
    assert data == (b'{"a": [1, 2.5, null, true], "\\u00fc": "\\u00df\\ud83d\\ude00"}')


def test_json_non_finite_numbers_as_maas_sends_them():
    value = [math.inf, -math.inf]
    assert StructureAsJSON().toString(value) == maas_json(value)
    assert zlib.decompress(maas_json(value)) == b"[Infinity, -Infinity]"
    assert StructureAsJSON().fromString(maas_json(value)) == value
    nan = StructureAsJSON().fromString(maas_json(math.nan))
    assert math.isnan(nan)


def test_json_python_only_types_become_json():
    assert round_trip(StructureAsJSON(), (1, 2)) == [1, 2]
    assert round_trip(StructureAsJSON(), {1: "x"}) == {"1": "x"}
    negative_zero = round_trip(StructureAsJSON(), -0.0)
    assert negative_zero == 0 and math.copysign(1, negative_zero) == -1


@given(json_values)
def test_json_round_trip_and_bytes(value):
    assert raw_value(StructureAsJSON(), value) == maas_json(value)
    assert round_trip(StructureAsJSON(), value) == value


def test_json_accepts_utf8_as_well():
    data = zlib.compress('{"k": "caf\u00e9"}'.encode())
    assert StructureAsJSON().fromString(data) == {"k": "caf\u00e9"}


@pytest.mark.parametrize("value", [{1, 2}, object(), b"bytes", {(1, 2): 3}])
def test_json_refuses_unserialisable(value):
    with pytest.raises(TypeError):
        StructureAsJSON().toString(value)


def test_json_refuses_circular_and_too_deep():
    loop: list = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular"):
        StructureAsJSON().toString(loop)
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ValueError, match="too deeply"):
        StructureAsJSON().toString(deep)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated"),
        (b"{}", "not zlib data"),
        (b'{"plain": "json"}', "not zlib data"),
        (maas_json({"a": 1})[:-3], "truncated"),
        (maas_json({"a": 1}) + b"junk", "after its zlib stream"),
        (zlib.compress(b"{"), "does not parse"),
        (zlib.compress(b"nope"), "does not parse"),
        (zlib.compress(b'"\xff\xfe"'), "not UTF-8"),
        (zlib.compress(b"[" * 100_000 + b"]" * 100_000), "nested too deeply"),
        (zlib.compress(b"1" * 5000), "does not parse"),  # Python's digit limit.
    ],
)
def test_json_refuses_bad_input(data, message):
    with pytest.raises(ValueError, match=message):
        StructureAsJSON().fromString(data)


def test_json_refuses_a_bomb():
    bomb = zlib.compress(b" " * (DEFAULT_MAX_SIZE + 1))
    assert len(bomb) < amp.MAX_VALUE_LENGTH
    with pytest.raises(ValueError, match="expands past the limit"):
        StructureAsJSON().fromString(bomb)


def test_json_max_size_boundary():
    value = {"k": "v" * 1000}
    text = json.dumps(value).encode("ascii")
    data = maas_json(value)
    assert StructureAsJSON(max_size=len(text)).fromString(data) == value
    with pytest.raises(ValueError, match="expands past the limit of"):
        StructureAsJSON(max_size=len(text) - 1).fromString(data)


@pytest.mark.parametrize("limit", [0, -1, 1.5, True, None])
def test_json_refuses_bad_max_size(limit):
    with pytest.raises(ValueError, match="max_size"):
        StructureAsJSON(max_size=limit)


@given(st.binary(max_size=300))
def test_json_fuzz_raises_only_value_error(data):
    only_value_errors(StructureAsJSON(), data)
    only_value_errors(StructureAsJSON(), zlib.compress(data))


# ParsedURL: MAAS IDNA-encodes the network location and sends ASCII.


def maas_url(url) -> bytes:
    text = url if isinstance(url, str) else url.geturl()
    parts = urlparse(text)
    netloc = parts.netloc.encode("idna").decode("ascii")
    return parts._replace(netloc=netloc).geturl().encode("ascii")


URL_TABLE = [
    "http://example.com:5240/MAAS",
    "https://user:pw@example.com:5240/MAAS/api/2.0/?op=list&x=%C3%A9#frag",
    "http://10.0.0.1/MAAS/",
    "http://[fe80::1]:5240/MAAS",
    "http://EXAMPLE.com/Path",  # Case kept.
    "http://example.com/MAAS?",  # Empty query dropped, as MAAS drops it.
    "http://example.com.",
    "http://ex\u00e4mple.com/MAAS",  # IDNA: xn--exmple-cua.com.
    "http://\u65e5\u672c.jp:80/",
    "file:///var/lib/maas",
    "",
]


@pytest.mark.parametrize("url", URL_TABLE)
def test_url_bytes_are_maas_bytes(url):
    assert ParsedURL().toString(url) == maas_url(url)
    assert ParsedURL().toString(urlparse(url)) == maas_url(urlparse(url))
    assert ParsedURL().toString(urlsplit(url)) == maas_url(urlsplit(url))
    assert ParsedURL().fromString(maas_url(url)) == urlparse(
        maas_url(url).decode("ascii")
    )


def test_url_idna_host():
    assert ParsedURL().toString("http://ex\u00e4mple.com/") == (
        b"http://xn--exmple-cua.com/"
    )


def test_url_bytes_input_must_be_ascii():
    assert ParsedURL().toString(b"http://h/") == b"http://h/"
    assert ParsedURL().toString(urlparse(b"http://h/")) == b"http://h/"
    with pytest.raises(ValueError, match="not ASCII"):
        ParsedURL().toString(b"http://h/\xc3\xa9")


def test_url_examples():
    result = round_trip(ParsedURL(), URL_TABLE[1])
    assert isinstance(result, ParseResult)
    assert (result.scheme, result.hostname, result.port) == (
        "https",
        "example.com",
        5240,
    )
    assert result.path == "/MAAS/api/2.0/"
    assert result.query == "op=list&x=%C3%A9"
    assert result.fragment == "frag"
    assert round_trip(ParsedURL(), "") == urlparse("")


@given(provisional.urls())
def test_url_round_trip(url):
    assert raw_value(ParsedURL(), url) == maas_url(url)
    result = round_trip(ParsedURL(), url)
    assert isinstance(result, ParseResult)
    assert result == urlparse(maas_url(url).decode("ascii"))
    assert round_trip(ParsedURL(), urlparse(url)) == result


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://example.com/p\u00e4th", "not ASCII outside its host"),
        ("http://h/?q=\u00fc", "not ASCII outside its host"),
        ("http://a..b/", "cannot IDNA-encode"),
        ("http://" + "a" * 64 + ".com/", "cannot IDNA-encode"),
    ],
)
def test_url_refuses_what_maas_cannot_send(url, message):
    with pytest.raises(ValueError, match=message):
        ParsedURL().toString(url)


@pytest.mark.parametrize("value", [1, None, ["http://h/"], 2.5])
def test_url_refuses_other_types(value):
    with pytest.raises(TypeError, match="URL-like"):
        ParsedURL().toString(value)


def test_url_refuses_non_ascii_input():
    with pytest.raises(ValueError, match="not ASCII"):
        ParsedURL().fromString("http://ex\u00e4mple.com/".encode())


@given(st.binary(max_size=200))
def test_url_fuzz_raises_only_value_error(data):
    only_value_errors(ParsedURL(), data)


# Choice: MAAS sends the byte string the declaration maps the value to.

POWER = {"on": b"1", "off": b"0", None: b"unknown", 7: b"\xff\xfe"}


@pytest.mark.parametrize(("value", "wire_bytes"), list(POWER.items()))
def test_choice_bytes_are_the_declared_bytes(value, wire_bytes):
    assert Choice(POWER).toString(value) == wire_bytes
    assert Choice(POWER).fromString(wire_bytes) == value
    assert raw_value(Choice(POWER), value) == wire_bytes
    assert round_trip(Choice(POWER), value) == value


def test_choice_refuses_unknown_values():
    with pytest.raises(ValueError, match="not one of the choices"):
        Choice(POWER).toString("dimmed")
    with pytest.raises(ValueError, match="not one of the choices"):
        Choice(POWER).toString([])  # Unhashable.
    with pytest.raises(ValueError, match="not one of the declared choices"):
        Choice(POWER).fromString(b"2")


def test_choice_refuses_bad_declarations():
    with pytest.raises(TypeError, match="mapping"):
        Choice([("on", b"1")])
    with pytest.raises(TypeError, match="'1'"):
        Choice({"on": "1"})
    with pytest.raises(ValueError, match="distinct"):
        Choice({"on": b"1", "yes": b"1"})


def test_choice_optional():
    cmd = type("Opt", (amp.Command,), {"arguments": [(b"value", Choice(POWER, True))]})
    assert unwire(cmd, wire(cmd)) == {"value": None}


# AmpList: stock AMP's bytes; MAAS lets the item keys be text.


def stock_list(value, subargs=RECORD) -> bytes:
    return amp.AmpList(subargs).toStringProto(value, None)


LIST_TABLE = [
    [],
    [{"name": "", "count": 0}],
    [{"name": "caf\u00e9 \u65e5\u672c \U0001f600", "count": -(2**70)}],
    [{"name": f"eth{i}", "count": i} for i in range(100)],
    [{"name": "x" * 65535, "count": 1}],  # Largest value inside an item.
]


@pytest.mark.parametrize("value", LIST_TABLE, ids=lambda v: f"{len(v)} items")
def test_amp_list_bytes_are_stock_bytes(value):
    text_keys = AmpList([("name", amp.Unicode()), ("count", amp.Integer())])
    for argument in (AmpList(RECORD), text_keys):
        assert argument.toStringProto(value, None) == stock_list(value)
        assert argument.fromStringProto(stock_list(value), None) == value


def test_amp_list_refuses_non_ascii_keys():
    with pytest.raises(ValueError, match="not ASCII"):
        AmpList([("n\u00e4me", amp.Unicode())])
    with pytest.raises(TypeError):
        AmpList([(1, amp.Unicode())])


def test_amp_list_max_items():
    value = [{"name": "n", "count": i} for i in range(50)]
    assert AmpList(RECORD, max_items=50).fromStringProto(stock_list(value), None)
    with pytest.raises(ValueError, match="more than 49 items"):
        AmpList(RECORD, max_items=49).fromStringProto(stock_list(value), None)
    assert AmpList(RECORD).max_items == DEFAULT_MAX_ITEMS == 100_000


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00", "truncated"),
        (b"\x00\x04name", "truncated"),
        (b"\x00\x04name\x00\x05ab", "runs past"),
        (b"\x01\x00" + b"k" * 256, "key of 256 bytes"),
        (b"\x00\x04name\x00\x01a\x00\x00", "lacks the key"),
    ],
)
def test_amp_list_refuses_broken_input(data, message):
    with pytest.raises(ValueError, match=message):
        AmpList(RECORD).fromStringProto(data, None)


@given(st.binary(max_size=200))
def test_amp_list_fuzz_raises_only_value_error(data):
    only_value_errors(AmpList([(b"name", amp.String())], max_items=10), data)


# CompressedAmpList: MAAS sends zlib.compress(<AmpList bytes>), and from
# 2024-07 to 2026-07 split a value over 65,535 bytes into <key>, <key>.2, ...


def maas_compressed(value, subargs=RECORD) -> bytes:
    return zlib.compress(stock_list(value, subargs))


def maas_chunked_box(key: bytes, data: bytes) -> dict[bytes, bytes]:
    """The box entries MAAS (2024-07 to 2026-07) sent for one compressed list."""
    box = {key: data[:65535]}
    for n, start in enumerate(range(65535, len(data), 65535), start=2):
        box[b"%s.%d" % (key, n)] = data[start : start + 65535]
    return box


@pytest.mark.parametrize("value", LIST_TABLE, ids=lambda v: f"{len(v)} items")
def test_compressed_list_bytes_are_maas_bytes(value):
    argument = CompressedAmpList(RECORD)
    assert argument.toStringProto(value, None) == maas_compressed(value)
    assert argument.fromStringProto(maas_compressed(value), None) == value
    assert raw_value(argument, value) == maas_compressed(value)


@given(records)
def test_compressed_list_round_trip(value):
    assert raw_value(CompressedAmpList(RECORD), value) == maas_compressed(value)
    assert round_trip(CompressedAmpList(RECORD), value) == value


def big_records(count: int) -> list[dict]:
    """Records that barely compress."""
    return [{"name": os.urandom(24).hex(), "count": i} for i in range(count)]


@pytest.mark.parametrize("count", [2100, 4500, 13000])
def test_compressed_list_reassembles_maas_chunks(count):
    value = big_records(count)
    data = maas_compressed(value)
    assert len(data) > 65535
    box = maas_chunked_box(b"value", data)
    assert len(box) == 1 + (len(data) - 1) // 65535
    # Through the wire format, as a peer's box arrives.
    cmd = command(CompressedAmpList(RECORD))
    serialised = amp.AmpBox(box).serialize()
    assert unwire(cmd, serialised) == {"value": value}
    # The chunk keys are consumed.
    received = dict(box)
    objects: dict = {}
    CompressedAmpList(RECORD).fromBox(b"value", received, objects, None)
    assert objects == {"value": value}
    assert received == {}


def test_compressed_list_chunks_stop_at_the_first_gap():
    value = big_records(4500)
    box = maas_chunked_box(b"value", maas_compressed(value))
    assert b"value.3" in box
    del box[b"value.2"]
    with pytest.raises(ValueError, match="truncated"):
        CompressedAmpList(RECORD).fromBox(b"value", dict(box), {}, None)


def test_compressed_list_first_chunk_alone_is_refused_not_truncated():
    """What a peer that ignores the chunk keys sees: an error, not a
    shorter list."""
    value = big_records(3000)
    first = maas_compressed(value)[:65535]
    with pytest.raises(ValueError, match="truncated zlib stream"):
        CompressedAmpList(RECORD).fromStringProto(first, None)


def test_compressed_list_sends_the_whole_value_under_one_key():
    """Splitting is the connection's business, and only by agreement."""
    value = big_records(3000)
    strings: dict = {}
    CompressedAmpList(RECORD).toBox(b"value", strings, {"value": value}, None)
    assert list(strings) == [b"value"]
    assert strings[b"value"] == maas_compressed(value)


def test_compressed_list_item_bomb_is_refused_cheaply():
    """Issue 13 row 12: a few KiB that expand to 2.4 million tiny items."""
    bomb = zlib.compress(b"\x00\x00" * 2_400_000)
    started = time.process_time()
    with pytest.raises(ValueError, match="more than 100000 items"):
        CompressedAmpList(RECORD).fromStringProto(bomb, None)
    spent = time.process_time() - started
    print(f"{len(bomb)}-byte value of 2.4 M items refused in {spent:.3f} s CPU")


def test_compressed_list_max_items_boundary():
    value = [{"name": "n", "count": i} for i in range(200)]
    data = maas_compressed(value)
    assert CompressedAmpList(RECORD, max_items=200).fromStringProto(data, None)
    with pytest.raises(ValueError, match="more than 199 items"):
        CompressedAmpList(RECORD, max_items=199).fromStringProto(data, None)


def test_compressed_list_defaults():
    argument = CompressedAmpList(RECORD)
    assert argument.max_size == DEFAULT_MAX_SIZE == 16 * 1024 * 1024
    assert argument.max_items == DEFAULT_MAX_ITEMS


def test_compressed_list_refuses_a_byte_bomb():
    bomb = zlib.compress(b"\0" * (20 * 1024 * 1024))
    assert len(bomb) < amp.MAX_VALUE_LENGTH
    with pytest.raises(ValueError, match="expands past the limit"):
        CompressedAmpList(RECORD).fromStringProto(bomb, None)
    with pytest.raises(ValueError):
        unwire(command(CompressedAmpList(RECORD)), amp.AmpBox(value=bomb).serialize())


def test_compressed_list_max_size_boundary():
    value = [{"name": f"record {i}", "count": i} for i in range(2000)]
    compressed = maas_compressed(value)
    size = len(zlib.decompress(compressed))
    exact = CompressedAmpList(RECORD, max_size=size)
    assert exact.fromStringProto(compressed, None) == value
    with pytest.raises(ValueError, match="expands past"):
        CompressedAmpList(RECORD, max_size=size - 1).fromStringProto(compressed, None)


@pytest.mark.parametrize(
    ("keyword", "limit"), [("max_size", 0), ("max_items", 0), ("max_size", -5)]
)
def test_compressed_list_refuses_bad_limits(keyword, limit):
    """Zero must not mean "no limit" (zlib's meaning of max_length=0)."""
    with pytest.raises(ValueError, match=keyword):
        CompressedAmpList(RECORD, **{keyword: limit})


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"\x00" * 10,
        b"x\x9c not really zlib",
        b"\x78\x9c" + bytes(range(256)),
        zlib.compress(b"\x00\x04name"),  # Broken framing inside.
        zlib.compress(b"\x00\x04name\x00\x01a\x00\x00"),  # Lacks "count".
    ],
)
def test_compressed_list_refuses_garbage(data):
    with pytest.raises(ValueError):
        CompressedAmpList(RECORD).fromStringProto(data, None)


def test_compressed_list_refuses_truncated():
    value = [{"name": f"record {i}", "count": i} for i in range(50)]
    compressed = maas_compressed(value)
    for cut in (1, 4, len(compressed) // 2, len(compressed) - 2):
        with pytest.raises(ValueError):
            CompressedAmpList(RECORD).fromStringProto(compressed[:cut], None)


def test_compressed_list_empty_and_optional():
    assert round_trip(CompressedAmpList(RECORD), []) == []
    assert raw_value(CompressedAmpList(RECORD), []) == zlib.compress(b"")
    cmd = command(CompressedAmpList(RECORD, optional=True))
    assert unwire(cmd, wire(cmd)) == {"value": None}
    assert unwire(cmd, wire(cmd, value=[{"name": "a", "count": 2}])) == {
        "value": [{"name": "a", "count": 2}]
    }


def test_compressed_list_text_keys():
    argument = CompressedAmpList([("name", amp.Unicode()), ("count", amp.Integer())])
    value = [{"name": "a", "count": 1}]
    assert argument.toStringProto(value, None) == maas_compressed(value)


@given(st.binary(max_size=300))
def test_compressed_list_fuzz_raises_only_value_error(data):
    argument = CompressedAmpList([(b"name", amp.String())], max_items=10)
    only_value_errors(argument, data)
    only_value_errors(argument, zlib.compress(data))


# IPAddress and IPNetwork: MAAS sends the address as 4 or 16 big-endian
# bytes, and a network as its network address then one prefix-length byte.


def maas_address(text: str) -> bytes:
    address = ipaddress.ip_address(text)
    return int(address).to_bytes(4 if address.version == 4 else 16, "big")


def maas_network(text: str) -> bytes:
    network = ipaddress.ip_network(text, strict=False)
    length = 4 if network.version == 4 else 16
    return int(network.network_address).to_bytes(length, "big") + bytes(
        [network.prefixlen]
    )


class NetaddrLike:
    """Quacks like a netaddr address or network (version, cidr, str)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.version = 6 if ":" in text else 4
        if "/" in text:
            self.cidr = str(ipaddress.ip_network(text, strict=False))

    def __str__(self) -> str:
        return self.text


ADDRESSES = ["0.0.0.0", "10.0.0.1", "255.255.255.255", "::", "::1", "fe80::1:2"]


@pytest.mark.parametrize("text", ADDRESSES)
def test_ip_address_bytes_are_maas_bytes(text):
    expected = maas_address(text)
    for value in (text, ipaddress.ip_address(text), NetaddrLike(text)):
        assert IPAddress().toString(value) == expected
    assert IPAddress().fromString(expected) == ipaddress.ip_address(text)
    assert round_trip(IPAddress(), text) == ipaddress.ip_address(text)


@pytest.mark.parametrize("data", [b"", b"\x01\x02\x03", b"\x00" * 5, b"\x00" * 17])
def test_ip_address_refuses_other_lengths(data):
    with pytest.raises(ValueError, match="4 or 16 bytes"):
        IPAddress().fromString(data)


def test_ip_address_refuses_non_addresses():
    with pytest.raises(ValueError):
        IPAddress().toString("10.0.0.256")
    with pytest.raises(TypeError):
        IPAddress().toString(3.5)


NETWORKS = ["10.0.0.0/8", "10.1.2.3/24", "0.0.0.0/0", "1.2.3.4/32", "fd00::/8", "::/0"]


@pytest.mark.parametrize("text", NETWORKS)
def test_ip_network_bytes_are_maas_bytes(text):
    expected = maas_network(text)
    network = ipaddress.ip_network(text, strict=False)
    for value in (text, network, ipaddress.ip_interface(text), NetaddrLike(text)):
        assert IPNetwork().toString(value) == expected
    assert IPNetwork().fromString(expected) == network
    assert round_trip(IPNetwork(), text) == network


def test_ip_network_clears_host_bits_received():
    assert IPNetwork().fromString(bytes([10, 1, 2, 3, 8])) == ipaddress.ip_network(
        "10.0.0.0/8"
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x0a\x00\x00\x00", "5 or 17 bytes"),
        (b"\x0a\x00\x00\x00\x21", "longer than an IPv4"),
        (b"\x00" * 16 + b"\x81", "longer than an IPv6"),
    ],
)
def test_ip_network_refuses_bad_input(data, message):
    with pytest.raises(ValueError, match=message):
        IPNetwork().fromString(data)


@given(st.binary(max_size=20))
def test_ip_fuzz_raises_only_value_error(data):
    only_value_errors(IPAddress(), data)
    only_value_errors(IPNetwork(), data)
