"""Tests for :mod:`provisioningserver.rpc.common`."""

from __future__ import annotations

import os
import re
import socket
import threading

import crochet
import pytest
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from provisioningserver.rpc.cluster import EatCheez
from provisioningserver.rpc.common import (
    Authenticate,
    Client,
    Identify,
    RPCProtocol,
    callWithFallback,
)
from provisioningserver.rpc.exceptions import (
    ArgumentTooLarge,
    CallTimedOut,
    NoSuchCheese,
    RemoteResponderFailed,
)
from provisioningserver.rpc.interfaces import IConnection
from provisioningserver.rpc.limits import Limits
from provisioningserver.rpc.testing import (
    call_responder,
    connect_in_memory,
    open_channel,
)
from provisioningserver.twisted.protocols import amp

_sync = SynchronousTestCase()
successResultOf = _sync.successResultOf
failureResultOf = _sync.failureResultOf


class Boom(amp.Command):
    """A command whose responder crashes."""

    arguments = [(b"n", amp.Integer())]
    response = [(b"n", amp.Integer())]


class Slow(amp.Command):
    """A command answered only when the test says so."""

    arguments: list = []
    response = [(b"ok", amp.Boolean())]


class CheesyProtocol(RPCProtocol):
    """A protocol that answers EatCheez, Boom and Slow."""

    def __init__(self) -> None:
        super().__init__()
        self.boom_calls = 0
        self.slow: list[defer.Deferred] = []

    @EatCheez.responder
    def eat_cheez(self, name: str, origin: str) -> dict:
        if name == "Cheez Whiz":
            raise NoSuchCheese(f"{name} is not cheese")
        return {"rating": len(name) + len(origin)}

    @Boom.responder
    def boom(self, n: int) -> dict:
        self.boom_calls += 1
        raise ZeroDivisionError(n / 0)

    @Slow.responder
    def slow_responder(self) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.slow.append(d)
        return d


def make_pair(clock=None):
    server = CheesyProtocol()
    client = RPCProtocol()
    pump = connect_in_memory(server, client, clock=clock)
    return server, client, pump


def test_rpc_protocol_provides_iconnection():
    verifyObject(IConnection, RPCProtocol())


def test_connection_deferreds_fire():
    server, client, pump = make_pair()
    assert successResultOf(server.onConnectionMade) is None
    assert successResultOf(client.onConnectionMade) is None
    assert not server.onConnectionLost.called
    client.transport.loseConnection()
    pump.flush()
    assert successResultOf(client.onConnectionLost) is None
    assert successResultOf(server.onConnectionLost) is None


def test_call_returns_response():
    server, client, pump = make_pair()
    d = client.callRemote(EatCheez, name="Brie", origin="France")
    pump.flush()
    assert successResultOf(d) == {"rating": 10}


def test_declared_error_arrives_as_that_exception():
    server, client, pump = make_pair()
    d = client.callRemote(EatCheez, name="Cheez Whiz", origin="USA")
    pump.flush()
    failure = failureResultOf(d, NoSuchCheese)
    assert "not cheese" in str(failure.value)
    # The connection is still up and answers.
    d = client.callRemote(EatCheez, name="Feta", origin="Greece")
    pump.flush()
    assert successResultOf(d) == {"rating": 10}


def test_undeclared_error_is_non_fatal_with_reference(logged):
    server, client, pump = make_pair()
    d = client.callRemote(Boom, n=7)
    pump.flush()
    failure = failureResultOf(d, RemoteResponderFailed)
    # As MAAS answers it: UNHANDLED, "Unknown Error [<reference>]".
    assert isinstance(failure.value, amp.UnhandledCommand)
    assert failure.value.errorCode == b"UNHANDLED"
    match = re.fullmatch(
        r"Unknown Error \[(\S+:pid=(\d+):cmd=Boom:ask=(\w+))\]",
        failure.value.description,
    )
    assert match is not None, failure.value.description
    reference = match.group(1)
    assert failure.value.reference == reference
    assert int(match.group(2)) == os.getpid()
    assert match.group(1).startswith(socket.gethostname() + ":")
    assert server.boom_calls == 1
    # The same reference is logged, with the traceback.
    logged_refs = [e for e in logged if e.get("reference") == reference]
    assert len(logged_refs) == 1
    assert logged_refs[0]["log_failure"].check(ZeroDivisionError)
    # The connection stays up for everyone else.
    assert not server.transport.disconnecting
    d = client.callRemote(EatCheez, name="Brie", origin="France")
    pump.flush()
    assert successResultOf(d) == {"rating": 10}


def test_unknown_command_is_unhandled_not_unknown():
    server, client, pump = make_pair()
    d = server.callRemote(EatCheez, name="Brie", origin="France")
    pump.flush()
    failure = failureResultOf(d, amp.UnhandledCommand)
    # Stock AMP's answer for a command the peer does not know, told apart
    # from a failed responder.
    assert not isinstance(failure.value, RemoteResponderFailed)
    assert "Unhandled Command" in str(failure.value)


def test_oversize_argument_refused_before_sending():
    server = CheesyProtocol()
    client = RPCProtocol(limits=Limits(maxValueBytes=100_000))
    pump = connect_in_memory(server, client)
    open_channel(server, client, pump)
    with pytest.raises(ArgumentTooLarge) as info:
        client.callRemote(EatCheez, name="x" * 100_001, origin="here")
    assert info.value.key == b"name"
    assert info.value.size == 100_001
    assert "'name'" in str(info.value) and "EatCheez" in str(info.value)
    assert pump.flush() is False  # nothing was written
    assert client._outstandingRequests == {}
    # Exactly at the limit is fine: it travels in chunks.
    d = client.callRemote(EatCheez, name="x" * 100_000, origin="here")
    pump.flush()
    assert successResultOf(d) == {"rating": 100_004}


def test_cancelled_call_releases_entry_and_late_answer_is_dropped(logged):
    server, client, pump = make_pair()
    d = client.callRemote(Slow)
    pump.flush()
    assert len(client._outstandingRequests) == 1
    d.cancel()
    failureResultOf(d, defer.CancelledError)
    assert client._outstandingRequests == {}
    # The late answer arrives and is dropped without harm.
    server.slow.pop().callback({"ok": True})
    pump.flush()
    assert not client.transport.disconnecting
    assert not [
        e
        for e in logged
        if e.get("log_level") and e["log_level"].name in ("warn", "error", "critical")
    ]
    d = client.callRemote(EatCheez, name="Brie", origin="France")
    pump.flush()
    assert successResultOf(d) == {"rating": 10}


def test_answer_to_ask_never_sent_is_logged_and_dropped(logged):
    server, client, pump = make_pair()
    box = amp.AmpBox({amp.ANSWER: b"ff", b"ok": b"True"})
    server.sendBox(box)
    pump.flush()
    assert not client.transport.disconnecting
    warnings = [e for e in logged if "never sent" in e.get("log_format", "")]
    assert len(warnings) == 1


def test_connection_loss_fails_outstanding_calls():
    server, client, pump = make_pair()
    d = client.callRemote(Slow)
    pump.flush()
    server.transport.loseConnection()
    pump.flush()
    failure = failureResultOf(d)
    assert failure.check(Exception)


# Client


def test_client_refuses_positional_arguments():
    client = Client(RPCProtocol())
    with pytest.raises(TypeError, match="keyword"):
        client(EatCheez, "Brie", "France")


def test_client_refuses_non_commands():
    client = Client(RPCProtocol())
    with pytest.raises(TypeError, match="amp.Command"):
        client("EatCheez", name="Brie")


def test_client_equality_and_hash():
    conn = RPCProtocol()
    other = RPCProtocol()
    assert Client(conn) == Client(conn)
    assert hash(Client(conn)) == hash(Client(conn))
    assert Client(conn) != Client(other)
    assert len({Client(conn), Client(conn), Client(other)}) == 2


def test_client_ident_follows_connection():
    conn = RPCProtocol()
    conn.ident = "some-uuid"
    assert Client(conn).ident == "some-uuid"


@crochet.wait_for(timeout=10)
def _in_reactor(func, *args, **kwargs):
    return defer.maybeDeferred(func, *args, **kwargs)


def test_client_in_reactor_returns_deferred_and_times_out(reactor_thread):
    """In the reactor a Client returns a Deferred; the deadline uses the
    injected clock and releases the outstanding entry."""
    clock = Clock()

    def body():
        server, conn, pump = make_pair()
        client = Client(conn, clock=clock)
        d = client(Slow, _timeout=5)
        assert isinstance(d, defer.Deferred)
        pump.flush()
        clock.advance(4.9)
        assert not d.called
        clock.advance(0.2)
        failure = failureResultOf(d, CallTimedOut)
        assert isinstance(failure.value, defer.TimeoutError)
        assert "Slow" in str(failure.value)
        assert conn._outstandingRequests == {}
        # No deadline at all: the call waits however long it takes.
        d = client(Slow, _timeout=None)
        pump.flush()
        clock.advance(10_000)
        assert not d.called
        server.slow[-1].callback({"ok": True})
        pump.flush()
        assert successResultOf(d) == {"ok": True}
        assert clock.getDelayedCalls() == []
        conn.transport.loseConnection()
        pump.flush()

    _in_reactor(body)


class _ServerFactory(Factory):
    def __init__(self):
        self.protocols: list[CheesyProtocol] = []
        self.connected: defer.Deferred = defer.Deferred()

    def buildProtocol(self, addr):
        proto = CheesyProtocol()
        proto.factory = self
        self.protocols.append(proto)
        proto.onConnectionMade.chainDeferred(self.connected)
        return proto


def test_client_over_tcp_from_reactor_and_from_thread(reactor_thread):
    """A real loopback connection: calls from the reactor thread return
    Deferreds, calls from other threads return EventualResults."""
    factory = _ServerFactory()

    @crochet.wait_for(timeout=10)
    def setup():
        endpoint = TCP4ServerEndpoint(reactor_thread, 0, interface="127.0.0.1")
        d = endpoint.listen(factory)

        def connect(port):
            client_endpoint = TCP4ClientEndpoint(
                reactor_thread, "127.0.0.1", port.getHost().port
            )
            connecting = client_endpoint.connect(Factory.forProtocol(RPCProtocol))
            connecting.addCallback(lambda proto: (port, proto))
            return connecting

        return d.addCallback(connect)

    port, conn = setup()
    client = Client(conn)
    try:
        # From the reactor thread: a Deferred.
        @crochet.wait_for(timeout=10)
        def call_in_reactor():
            d = client(EatCheez, name="Brie", origin="France")
            assert isinstance(d, defer.Deferred)
            return d

        assert call_in_reactor() == {"rating": 10}

        # From this (non-reactor) thread: an EventualResult.
        result = client(EatCheez, name="Gouda", origin="Netherlands")
        assert isinstance(result, crochet.EventualResult)
        assert result.wait(10) == {"rating": 16}

        # From several threads at once.
        results: dict[int, int] = {}

        def worker(i: int) -> None:
            answer = client(EatCheez, name="x" * i, origin="y").wait(10)
            results[i] = answer["rating"]

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(1, 9)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert results == {i: i + 1 for i in range(1, 9)}

        # A declared error crosses the wire to a thread too.
        with pytest.raises(NoSuchCheese):
            client(EatCheez, name="Cheez Whiz", origin="USA").wait(10)
    finally:

        @crochet.wait_for(timeout=10)
        def teardown():
            conn.transport.loseConnection()
            server_lost = defer.DeferredList(
                [p.onConnectionLost for p in factory.protocols]
            )
            return defer.gatherResults(
                [conn.onConnectionLost, server_lost, port.stopListening()]
            )

        teardown()


# call_responder


def test_call_responder_goes_through_wire_format():
    proto = CheesyProtocol()
    d = call_responder(proto, EatCheez, {"name": "Brie", "origin": "France"})
    assert successResultOf(d) == {"rating": 10}
    d = call_responder(proto, EatCheez, {"name": "Cheez Whiz", "origin": "USA"})
    failureResultOf(d, NoSuchCheese)


def test_call_responder_unknown_command():
    with pytest.raises(amp.UnhandledCommand):
        call_responder(RPCProtocol(), Identify, {})


def test_handshake_commands_wire_contract():
    assert Identify.commandName == b"Identify"
    assert Identify.arguments == []
    assert [(k, type(v)) for k, v in Identify.response] == [(b"ident", amp.Unicode)]
    assert Authenticate.commandName == b"Authenticate"
    assert [(k, type(v)) for k, v in Authenticate.arguments] == [
        (b"message", amp.String)
    ]
    assert [(k, type(v)) for k, v in Authenticate.response] == [
        (b"digest", amp.String),
        (b"salt", amp.String),
    ]


# Version skew.


class EatCheezV2(amp.Command):
    """A newer EatCheez that also takes the cheese's age.

    :since: test
    """

    arguments = [
        (b"name", amp.Unicode()),
        (b"origin", amp.Unicode()),
        (b"age", amp.Integer()),
    ]
    response = [(b"rating", amp.Integer())]


class NewerCheesyProtocol(CheesyProtocol):
    @EatCheezV2.responder
    def eat_cheez_v2(self, name, origin, age):
        if age < 0:
            raise ValueError("a crash, not an unknown command")
        return {"rating": age}


def _skew(server_class, age):
    def body():
        server = server_class()
        conn = RPCProtocol()
        pump = connect_in_memory(server, conn)
        d = callWithFallback(
            Client(conn),
            (EatCheezV2, {"name": "Brie", "origin": "France", "age": age}),
            (EatCheez, {"name": "Brie", "origin": "France"}),
            _timeout=None,
        )
        pump.flush()
        return d

    return _in_reactor(body)


def test_fallback_to_the_older_form_when_the_peer_does_not_know_it(reactor_thread):
    command, answer = _skew(CheesyProtocol, 3)  # An older peer: no V2.
    assert (command, answer) == (EatCheez, {"rating": 10})


def test_no_fallback_when_the_peer_knows_the_newer_form(reactor_thread):
    command, answer = _skew(NewerCheesyProtocol, 3)
    assert (command, answer) == (EatCheezV2, {"rating": 3})


def test_no_fallback_when_the_newer_responder_crashes(reactor_thread):
    with pytest.raises(RemoteResponderFailed):
        _skew(NewerCheesyProtocol, -1)
