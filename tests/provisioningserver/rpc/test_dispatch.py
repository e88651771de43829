"""Answering commands: responders of every shape on both paths, draining,
and the limits before authentication (in memory)."""

from __future__ import annotations

import pytest
from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from provisioningserver.rpc import observers
from provisioningserver.rpc.common import RPCProtocol
from provisioningserver.rpc.dispatch import _countItems
from provisioningserver.rpc.exceptions import (
    NoSuchCheese,
    RemoteResponderFailed,
    ShuttingDown,
)
from provisioningserver.rpc.limits import Limits
from provisioningserver.rpc.region import Register
from provisioningserver.rpc.testing import connect_in_memory
from provisioningserver.rpc.twistedprivate import missingNames
from provisioningserver.twisted.protocols import amp

_sync = SynchronousTestCase()
successResultOf = _sync.successResultOf
failureResultOf = _sync.failureResultOf


class Rate(amp.Command):
    """Rate something, plainly (the common path).

    :since: test
    """

    arguments = [(b"name", amp.Unicode())]
    response = [(b"rating", amp.Integer())]
    errors = {NoSuchCheese: b"NoSuchCheese"}


class RateMany(amp.Command):
    """The same with a list argument (stock AMP's path).

    :since: test
    """

    arguments = [(b"names", amp.ListOf(amp.Unicode()))]
    response = [(b"rating", amp.Integer())]
    errors = {NoSuchCheese: b"NoSuchCheese"}


SHAPES = {
    "plain": lambda value: value,
    "deferred": defer.succeed,
    "coroutine": None,  # async def: see below.
    "failure": lambda value: Failure(NoSuchCheese("not cheese")),
    "raises": None,
}


def _respond(shape: str, rating: int):
    if shape == "coroutine":

        async def answer():
            await defer.succeed(None)
            return {"rating": rating}

        return answer()
    if shape == "raises":
        raise NoSuchCheese("not cheese")
    return SHAPES[shape]({"rating": rating})


class Responding(RPCProtocol):
    shape = "plain"

    @Rate.responder
    def rate(self, name):
        return _respond(self.shape, len(name))

    @RateMany.responder
    def rateMany(self, names):
        return _respond(self.shape, sum(map(len, names)))


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("command", ["common path", "stock path"])
def test_every_responder_shape_behaves_the_same_on_both_paths(shape, command):
    server, client = Responding(), RPCProtocol()
    server.shape = shape
    pump = connect_in_memory(server, client)
    if command == "common path":
        d = client.callRemote(Rate, name="Brie")
    else:
        d = client.callRemote(RateMany, names=["Br", "ie"])
    pump.flush()
    if shape in ("failure", "raises"):
        assert "not cheese" in str(failureResultOf(d, NoSuchCheese).value)
    else:
        assert successResultOf(d) == {"rating": 4}
    assert server.isConnected()


class Audited(Responding):
    """Overrides dispatchCommand, as MAAS 3's SecuredRPCProtocol does."""

    seen: list[bytes] = []

    def dispatchCommand(self, box):
        Audited.seen.append(box[amp.COMMAND])
        if box[amp.COMMAND] == b"Rate" and box[b"name"] == b"forbidden":
            return defer.fail(amp.RemoteAmpError(b"DENIED", "no"))
        return super().dispatchCommand(box)


def test_an_overridden_dispatch_command_sees_every_command():
    Audited.seen = []
    server, client = Audited(), RPCProtocol()
    pump = connect_in_memory(server, client)
    d1 = client.callRemote(Rate, name="Brie")
    d2 = client.callRemote(Rate, name="forbidden")
    pump.flush()
    assert successResultOf(d1) == {"rating": 4}
    failureResultOf(d2, amp.UnknownRemoteError)
    assert Audited.seen == [b"Rate", b"Rate"]


def test_a_responder_that_crashes_gives_unhandled_with_a_reference():
    class Crashing(RPCProtocol):
        @Rate.responder
        def rate(self, name):
            return {"rating": "not a number"}  # Cannot be encoded.

    server, client = Crashing(), RPCProtocol()
    pump = connect_in_memory(server, client)
    d = client.callRemote(Rate, name="Brie")
    pump.flush()
    failure = failureResultOf(d, RemoteResponderFailed)
    assert ":cmd=Rate:ask=" in failure.value.reference
    assert server.isConnected()


def test_drain_refuses_new_commands_and_waits_for_those_in_progress():
    pending: list[defer.Deferred] = []

    class Slow(RPCProtocol):
        @Rate.responder
        def rate(self, name):
            d = defer.Deferred()
            pending.append(d)
            return d

    server, client = Slow(), RPCProtocol()
    pump = connect_in_memory(server, client)
    first = client.callRemote(Rate, name="Brie")
    pump.flush()
    drained = server.drain()
    assert not drained.called
    second = client.callRemote(Rate, name="Feta")
    pump.flush()
    failureResultOf(second, ShuttingDown)
    pending[0].callback({"rating": 1})
    pump.flush()
    assert successResultOf(first) == {"rating": 1}
    assert successResultOf(drained) is None


class Gated(RPCProtocol):
    handshakeCommands = frozenset({Register.commandName})
    registered: list = []

    @Register.responder
    def register(self, uuid, networks=None, url=None, ip_addr_json=None):
        Gated.registered.append(len(networks or []))
        return {}


def _networks(n: int) -> list[dict[str, str]]:
    return [{"interface": "eth0", "ip": "10.0.0.1", "subnet_mask": "/24"}] * n


def test_list_arguments_before_authentication_are_capped_in_items(logged):
    Gated.registered = []
    server, client = (
        Gated(limits=Limits(maxUnauthenticatedBoxBytes=10**6)),
        (RPCProtocol()),
    )
    pump = connect_in_memory(server, client)
    ok = client.callRemote(Register, uuid="u", networks=_networks(256))
    pump.flush()
    assert successResultOf(ok) == {}
    client.callRemote(Register, uuid="u", networks=_networks(257)).addErrback(
        lambda _: None
    )
    pump.flush()
    assert Gated.registered == [256]  # The 257 were never decoded.
    assert not server.isConnected()
    assert logged.lines("with more than 256 items in networks")


def test_counting_items_stops_past_the_cap():
    value = Register.arguments[1][1].toStringProto(_networks(1000), None)
    assert _countItems(value, Register.arguments[1][1], 10) == 11
    assert _countItems(value, Register.arguments[1][1], 5000) == 1000
    words = amp.ListOf(amp.Unicode())
    assert _countItems(words.toString(["a", "b", "c"]), words, 10) == 3


def test_in_flight_commands_before_authentication_are_budgeted(logged):
    class Waiting(RPCProtocol):
        handshakeCommands = frozenset({Rate.commandName})

        @Rate.responder
        def rate(self, name):
            return defer.Deferred()

    server, client = Waiting(), RPCProtocol()
    pump = connect_in_memory(server, client)
    for _ in range(5):
        client.callRemote(Rate, name="x").addErrback(lambda _: None)
    pump.flush()
    assert not server.isConnected()
    assert logged.lines("more than 4 commands in progress")


def test_observers_hear_calls_in_both_directions():
    heard: list = []

    class Observer:
        def callCompleted(self, command, direction, error, seconds):
            heard.append((command, direction, error))
            assert seconds >= 0

    observers.setObserver(Observer())
    try:
        server, client = Responding(), RPCProtocol()
        pump = connect_in_memory(server, client)
        client.callRemote(Rate, name="Brie")
        pump.flush()
        server.shape = "raises"
        client.callRemote(RateMany, names=["x"]).addErrback(lambda _: None)
        pump.flush()
    finally:
        observers.setObserver(None)
    assert ("Rate", "in", None) in heard
    assert ("RateMany", "in", "NoSuchCheese") in heard


def test_every_private_twisted_name_used_exists():
    missing = missingNames()
    assert missing == [], (
        "this Twisted release lacks private names maas-rpc relies on: "
        + ", ".join(missing)
    )
