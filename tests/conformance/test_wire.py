"""Bytes on the wire, well formed or not, and however they are cut, are
handled as stock AMP handles them.

A raw peer writes byte streams to a responder (stock-based reference or
``RPCProtocol``), or answers a caller's calls with raw boxes; the responder's
answers, the caller's results and the connection's fate must match stock
AMP's. Streams are delivered whole, cut at every byte boundary, one byte at
a time, and (hypothesis) in random pieces.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.protocols import amp

from maas_rpc_conformance import harness
from maas_rpc_conformance.scenarios import BASES, newProtocol

WIRE = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def pairs(*items: tuple[bytes, bytes], end: bool = True) -> bytes:
    """Encode key/value pairs as AMP does, in the order given (duplicates
    and any length the prefix allows)."""
    out = b"".join(
        struct.pack(">H", len(k)) + k + struct.pack(">H", len(v)) + v for k, v in items
    )
    return out + (b"\x00\x00" if end else b"")


def call(tag: bytes, n: bytes = b"1", name: bytes = b"Probe") -> bytes:
    return pairs((b"_ask", tag), (b"_command", name), (b"n", n))


#: Boxes a peer may send a responder: good, odd and malformed.
BOXES = {
    "call": call(b"1"),
    "call-tag-2": call(b"2", b"41"),
    "call-bad-int": call(b"3", b"one"),
    "call-missing-arg": pairs((b"_ask", b"4"), (b"_command", b"Probe")),
    "call-extra-arg": pairs(
        (b"_ask", b"5"), (b"_command", b"Probe"), (b"n", b"1"), (b"x", b"y")
    ),
    "call-no-ask": pairs((b"_command", b"Probe"), (b"n", b"2")),
    "call-no-ask-bad": pairs((b"_command", b"Probe"), (b"n", b"two")),
    "unknown-command": call(b"6", name=b"Nobody"),
    "unknown-no-ask": pairs((b"_command", b"Nobody")),
    "crash": call(b"7", name=b"Crash"),
    "duplicate-key": pairs(
        (b"_ask", b"8"), (b"_command", b"Probe"), (b"n", b"1"), (b"n", b"2")
    ),
    "empty-value-key": pairs((b"_ask", b"9"), (b"_command", b"Probe"), (b"n", b"")),
    "max-value": pairs(
        (b"_ask", b"a"), (b"_command", b"Probe"), (b"n", b"1"), (b"pad", b"p" * 65535)
    ),
    "many-keys": pairs(
        (b"_ask", b"b"),
        (b"_command", b"Probe"),
        (b"n", b"1"),
        *[(b"k%d" % i, b"") for i in range(300)],
    ),
    "no-command": pairs((b"hello", b"world")),
    "empty-box": b"\x00\x00",
    "answer-never-asked": pairs((b"_answer", b"99"), (b"n", b"1")),
    "error-never-asked": pairs(
        (b"_error", b"99"), (b"_error_code", b"X"), (b"_error_description", b"y")
    ),
    "ask-and-answer": pairs(
        (b"_answer", b"98"), (b"_ask", b"c"), (b"_command", b"Probe"), (b"n", b"1")
    ),
    "chunk-like-keys": pairs(
        (b"_ask", b"d"), (b"_command", b"Probe"), (b"n", b"1"), (b"n.2", b"2")
    ),
    "key-256": struct.pack(">H", 256)
    + b"k" * 256
    + struct.pack(">H", 1)
    + b"v"
    + b"\x00\x00",
    "key-65535-prefix": b"\xff\xff",
    "truncated": call(b"e")[:-3],
}


class Probe(amp.Command):
    arguments = [(b"n", amp.Integer())]
    response = [(b"n", amp.Integer())]
    errors = {ValueError: b"VALUE", KeyError: b"KEY"}


class Crash(amp.Command):
    arguments: list = []
    response: list = []


def responderClass(base: type[amp.AMP]) -> type[amp.AMP]:
    class Responder(base):
        @Probe.responder
        def probe(self, n: int) -> dict:
            self.observed.append(("probe", n))
            return {"n": n + 1}

        @Crash.responder
        def crash(self) -> dict:
            self.observed.append(("crash",))
            raise RuntimeError("crashed")

    return Responder


_classes = {name: responderClass(base) for name, base in BASES.items()}


def respond(base: str, stream: bytes, pieces: Any = None) -> tuple:
    """What a ``base`` responder does with ``stream``: what it wrote (boxes,
    normalised), the connection's fate, what its responders saw."""
    responder = newProtocol(_classes[base])
    raw = harness.RawPeer()
    link = harness.Link(responder, raw, pieces=pieces)
    raw.transport.write(stream)
    link.flush()
    return (
        harness.normaliseStream(bytes(link.responder.wrote)),
        link.fate,
        tuple(responder.observed),
    )


def assertSameResponse(stream: bytes, pieces: Any = None, what: str = "") -> None:
    expected = respond("stock", stream, pieces)
    actual = respond("rpc", stream, pieces)
    assert actual == expected, (
        f"RPCProtocol responds to {what or stream!r} unlike stock AMP:\n"
        f"stock: {expected!r}\nrpc:   {actual!r}"
    )


@pytest.mark.parametrize("box", sorted(BOXES))
def test_one_box(box: str) -> None:
    assertSameResponse(BOXES[box], what=box)


@pytest.mark.parametrize("box", sorted(set(BOXES) - {"truncated"}))
def test_box_between_two_calls(box: str) -> None:
    """The box, then a good call, all in one chunk: whatever the box does to
    the connection, the call after it fares as under stock AMP."""
    stream = call(b"101") + BOXES[box] + call(b"102", b"5")
    assertSameResponse(stream, what=f"a call, {box}, a call")


#: Three boxes: a call on the fast path, one stock AMP answers UNHANDLED,
#: and one that does not parse.
STREAM = (
    call(b"1") + BOXES["unknown-command"] + BOXES["call-bad-int"] + call(b"2", b"9")
)


def test_split_at_every_byte_boundary() -> None:
    whole = respond("rpc", STREAM)
    for cut in range(1, len(STREAM)):

        def pieces(data: bytes, cut: int = cut) -> list[bytes]:
            return [data[:cut], data[cut:]]

        # However it is cut, RPCProtocol does what it does with the whole
        # stream, and what stock AMP does with the same pieces.
        assert respond("rpc", STREAM, pieces) == whole, f"cut at byte {cut}"
        assertSameResponse(STREAM, pieces, f"the stream cut at byte {cut}")


def test_one_byte_at_a_time() -> None:
    def pieces(data: bytes) -> list[bytes]:
        return [data[i : i + 1] for i in range(len(data))]

    assert respond("rpc", STREAM, pieces) == respond("rpc", STREAM)
    assertSameResponse(STREAM, pieces, "the stream one byte at a time")


@WIRE
@given(
    names=st.lists(st.sampled_from(sorted(BOXES)), min_size=1, max_size=6),
    cuts=st.lists(st.integers(1, 400), max_size=8),
)
def test_random_streams_in_random_pieces(names: list[str], cuts: list[int]) -> None:
    stream = b"".join(BOXES[name] for name in names)
    offsets = sorted({c for c in cuts if c < len(stream)})

    def pieces(data: bytes) -> list[bytes]:
        bounds = [0, *[o for o in offsets if o < len(data)], len(data)]
        return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]

    assertSameResponse(stream, pieces, f"{names} cut at {offsets}")


# The caller's side: raw answers to calls made with callRemote.

#: Replies a peer may send to a caller who asked twice (tags 1 and 2).
REPLIES = {
    "answers": pairs((b"_answer", b"1"), (b"n", b"2"))
    + pairs((b"_answer", b"2"), (b"n", b"3")),
    "answers-reversed": pairs((b"_answer", b"2"), (b"n", b"3"))
    + pairs((b"_answer", b"1"), (b"n", b"2")),
    "answer-missing-key": pairs((b"_answer", b"1")),
    "answer-bad-value": pairs((b"_answer", b"1"), (b"n", b"two")),
    "answer-extra-key": pairs((b"_answer", b"1"), (b"n", b"2"), (b"x", b"y")),
    "answer-twice": pairs((b"_answer", b"1"), (b"n", b"2")) * 2,
    "answer-never-asked": pairs((b"_answer", b"9"), (b"n", b"2")),
    "declared-error": pairs(
        (b"_error", b"1"), (b"_error_code", b"VALUE"), (b"_error_description", b"bad")
    ),
    "unknown-code": pairs(
        (b"_error", b"1"), (b"_error_code", b"WHAT"), (b"_error_description", b"?")
    ),
    "unhandled-command": pairs(
        (b"_error", b"1"),
        (b"_error_code", b"UNHANDLED"),
        (b"_error_description", b"Unhandled Command: b'Probe'"),
    ),
    "unknown-error": pairs(
        (b"_error", b"1"),
        (b"_error_code", b"UNKNOWN"),
        (b"_error_description", b"Unknown Error"),
    ),
    "error-no-code": pairs((b"_error", b"1"), (b"_error_description", b"no code")),
    "error-no-description": pairs((b"_error", b"1"), (b"_error_code", b"VALUE")),
    "error-bad-utf8": pairs(
        (b"_error", b"1"),
        (b"_error_code", b"VALUE"),
        (b"_error_description", b"\xff\xfe"),
    ),
    "error-never-asked": pairs(
        (b"_error", b"9"), (b"_error_code", b"VALUE"), (b"_error_description", b"x")
    ),
    "error-twice": pairs(
        (b"_error", b"1"), (b"_error_code", b"VALUE"), (b"_error_description", b"x")
    )
    * 2,
    "chunk-like-keys": pairs((b"_answer", b"1"), (b"n", b"2"), (b"n.2", b"3")),
    "key-256": struct.pack(">H", 256) + b"k" * 256,
    "no-answer-key": pairs((b"n", b"2")),
}


def ask(
    base: str, reply: bytes, handled: bool, pieces: Any = None, asks: int = 2
) -> tuple:
    """What a ``base`` caller gets when it asks Probe ``asks`` times (tags 1,
    2, ...) and the peer writes ``reply``."""
    caller = newProtocol(BASES[base])
    raw = harness.RawPeer()
    link = harness.Link(raw, caller, pieces=pieces)
    calls = [
        harness.Call.make(caller, Probe, handled=handled, n=n)
        for n in range(1, asks + 1)
    ]
    link.flush()
    raw.transport.write(reply)
    link.flush()
    outcome = (
        harness.normaliseStream(bytes(link.caller.wrote)),
        tuple(c.seen(link) for c in calls),
        link.fate,
    )
    for c in calls:
        c.settle()
    return outcome


@pytest.mark.parametrize("handled", [True, False], ids=["handled", "unhandled"])
@pytest.mark.parametrize("reply", sorted(REPLIES))
def test_caller_given_reply(reply: str, handled: bool) -> None:
    expected = ask("stock", REPLIES[reply], handled)
    actual = ask("rpc", REPLIES[reply], handled)
    assert actual == expected, (
        f"an RPCProtocol caller given {reply} fares unlike stock AMP:\n"
        f"stock: {expected!r}\nrpc:   {actual!r}"
    )


def test_caller_reply_split_at_every_byte_boundary() -> None:
    reply = (
        pairs((b"_answer", b"1"), (b"n", b"2"))
        + pairs(
            (b"_error", b"2"), (b"_error_code", b"VALUE"), (b"_error_description", b"x")
        )
        + pairs((b"_answer", b"3"), (b"n", b"4"))
    )
    whole = ask("rpc", reply, True, asks=3)
    for cut in range(1, len(reply)):

        def pieces(data: bytes, cut: int = cut) -> list[bytes]:
            return [data[:cut], data[cut:]] if len(data) > cut else [data]

        expected = ask("stock", reply, True, pieces, asks=3)
        actual = ask("rpc", reply, True, pieces, asks=3)
        assert actual == whole, f"cut at byte {cut}: {actual}"
        assert actual == expected, (
            f"cut at byte {cut}:\nstock: {expected}\nrpc:   {actual}"
        )
