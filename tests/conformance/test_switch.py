"""``ProtocolSwitchCommand``: the new protocol on each side receives exactly
the bytes that follow the switch, as under stock AMP.

The caller pipelines bytes for the new protocol right behind its command;
the responder's new protocol greets as soon as it is connected, so its
greeting arrives in the same chunk as the answer box. Delivery is also cut
at every byte boundary.

Row of issue 10 caught here: 5 (the new protocol gets ``b''`` or a stale
fragment of the answer box).
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.protocols import amp

from maas_rpc_conformance import harness
from maas_rpc_conformance.scenarios import BASES, ROLES, DeclaredError, newProtocol

PIPELINED = b"first bytes of the new protocol\x00\x00\xff"
GREETING = b"\x00\x05hello from the responder's new protocol"


class Inner(Protocol):
    """The protocol switched to: records what it receives; the responder's
    greets on connection."""

    def __init__(self, greeting: bytes = b"") -> None:
        self.greeting = greeting
        self.received = bytearray()
        self.lost = False

    def connectionMade(self) -> None:
        if self.greeting:
            self.transport.write(self.greeting)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


class InnerFactory(ClientFactory):
    def __init__(self) -> None:
        self.built: list[Inner] = []
        self.events: list[str] = []

    def buildProtocol(self, addr: Any) -> Inner:
        proto = Inner()
        self.built.append(proto)
        return proto

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.events.append("failed")

    def clientConnectionLost(self, connector: Any, reason: Any) -> None:
        self.events.append("lost")


class Switch(amp.ProtocolSwitchCommand):
    arguments = [(b"name", amp.Unicode())]
    response: list = []
    errors = {DeclaredError: b"DECLARED"}


Probe = type(
    "Probe",
    (amp.Command,),
    {"arguments": [(b"n", amp.Integer())], "response": [(b"n", amp.Integer())]},
)


def switcher(base: type[amp.AMP], kind: str) -> type[amp.AMP]:
    class Switcher(base):
        @Switch.responder
        def switch(self, name: str) -> Any:
            self.observed.append(("switch", name))
            if kind == "refuse":
                raise DeclaredError("not now")
            inner = Inner(GREETING)
            self.inners.append(inner)
            if kind == "later":
                d: Deferred[Inner] = Deferred()
                self.later.append(lambda: d.callback(inner))
                return d
            return inner

        @Probe.responder
        def probe(self, n: int) -> dict:
            return {"n": n + 1}

    return Switcher


def outcome(
    caller: str,
    responder: str,
    kind: str,
    pipelined: bool,
    pieces: Any = None,
) -> tuple:
    responderProto = newProtocol(switcher(BASES[responder], kind))
    responderProto.inners = []
    callerProto = newProtocol(BASES[caller])
    factory = InnerFactory()
    link = harness.Link(responderProto, callerProto, pieces=pieces)
    calls = [harness.Call.make(callerProto, Switch, factory, name="inner")]
    if pipelined:
        callerProto.transport.write(PIPELINED)
    link.flush()
    while responderProto.later:
        pending = list(responderProto.later)
        responderProto.later.clear()
        for fire in pending:
            fire()
        link.flush()
    # After the switch both sides talk through their new protocols; after a
    # refused switch, AMP again.
    if factory.built and not link.caller.closed:
        factory.built[0].transport.write(b"after the switch")
        link.flush()
    if kind == "refuse" and not link.caller.closed:
        calls.append(harness.Call.make(callerProto, Probe, n=1))
        link.flush()
    result = (
        bytes(link.caller.wrote),
        bytes(link.responder.wrote),
        tuple(call.seen(link) for call in calls),
        link.fate,
        tuple(responderProto.observed),
        tuple((bytes(p.received), p.lost) for p in factory.built),
        tuple((bytes(p.received), p.lost) for p in responderProto.inners),
        tuple(factory.events),
    )
    for call in calls:
        call.settle()
    return result


FIELDS = (
    "caller wrote",
    "responder wrote",
    "results",
    "fate",
    "responder saw",
    "caller's new protocol (received, lost)",
    "responder's new protocol (received, lost)",
    "caller's factory events",
)


def assertSame(actual: tuple, expected: tuple, what: str) -> None:
    differing = [
        f"{name}:\n  stock: {e!r}\n  here:  {a!r}"
        for name, a, e in zip(FIELDS, actual, expected, strict=True)
        if a != e
    ]
    assert not differing, f"{what} differs from stock AMP in\n" + "\n".join(differing)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("pipelined", [True, False], ids=["pipelined", "quiet"])
@pytest.mark.parametrize("kind", ["sync", "later", "refuse"])
def test_protocol_switch(kind: str, pipelined: bool, role: tuple[str, str]) -> None:
    assertSame(
        outcome(*role, kind, pipelined),
        outcome("stock", "stock", kind, pipelined),
        f"{role[0]} -> {role[1]} switching ({kind}, {pipelined=})",
    )


@pytest.mark.parametrize("role", ROLES)
def test_protocol_switch_split_at_every_byte(role: tuple[str, str]) -> None:
    """Each side's bytes delivered in two pieces, cut at each offset in turn
    (the caller's command box with the pipelined bytes, the responder's
    answer box with the greeting)."""
    whole = outcome("stock", "stock", "sync", True)
    longest = max(len(whole[0]), len(whole[1]))
    for cut in range(1, longest):

        def pieces(data: bytes, cut: int = cut) -> list[bytes]:
            return [data[:cut], data[cut:]] if 0 < cut < len(data) else [data]

        assertSame(
            outcome(*role, "sync", True, pieces),
            outcome("stock", "stock", "sync", True, pieces),
            f"{role[0]} -> {role[1]} switching, delivery cut at byte {cut}",
        )


@pytest.mark.parametrize("role", ROLES)
def test_protocol_switch_byte_by_byte(role: tuple[str, str]) -> None:
    def pieces(data: bytes) -> list[bytes]:
        return [data[i : i + 1] for i in range(len(data))]

    assertSame(
        outcome(*role, "sync", True, pieces),
        outcome("stock", "stock", "sync", True, pieces),
        f"{role[0]} -> {role[1]} switching, delivered one byte at a time",
    )
