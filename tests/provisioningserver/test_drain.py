"""Draining: wait for calls in progress, up to a bound, then stop."""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from provisioningserver.drain import DrainingMultiService, drainConnections


class Conn:
    def __init__(self) -> None:
        self.done: Deferred[None] = Deferred()
        self.drained = 0

    def drain(self) -> Deferred[None]:
        self.drained += 1
        return self.done


def test_drain_waits_for_calls_in_progress():
    clock = Clock()
    a, b = Conn(), Conn()
    d = drainConnections([a, b, object()], 10, clock)
    assert (a.drained, b.drained) == (1, 1)
    assert not d.called
    a.done.callback(None)
    b.done.callback(None)
    assert d.result == 0
    assert not clock.getDelayedCalls()


class Failing:
    def __init__(self, error: Exception, later: bool) -> None:
        self.error, self.later = error, later
        self.done: Deferred[None] = Deferred()

    def drain(self) -> Deferred[None]:
        if not self.later:
            raise self.error
        return self.done


def test_a_drain_that_fails_is_logged_and_the_others_go_on(logged):
    clock = Clock()
    now = Failing(ValueError("at once"), later=False)
    later = Failing(ValueError("later"), later=True)
    ok = Conn()
    d = drainConnections([now, later, ok], 10, clock)
    assert ok.drained == 1
    later.done.errback(later.error)
    assert not d.called
    ok.done.callback(None)
    assert d.result == 0
    failed = logged.lines("Draining a connection failed.")
    assert len(failed) == 2, failed
    assert [e["log_failure"].value for e in logged if "log_failure" in e] == [
        now.error,
        later.error,
    ]


def test_drain_gives_up_after_the_bound():
    clock = Clock()
    a = Conn()
    d = drainConnections([a], 10, clock)
    clock.advance(9.9)
    assert not d.called
    clock.advance(0.1)
    assert d.result == 1


def test_nothing_to_drain_is_immediate():
    d = drainConnections([], 10, Clock())
    assert d.result == 0


def test_draining_service_drains_before_children_stop():
    clock = Clock()
    conn = Conn()
    top = DrainingMultiService(lambda: [conn], 5, clock)
    child = Service()
    child.setServiceParent(top)
    top.startService()
    d = top.stopService()
    assert child.running
    conn.done.callback(None)
    assert not child.running
    assert d.called


def test_draining_a_real_connection():
    """Against the core's RPCProtocol: a call in progress finishes, a new one
    is refused with SHUTTING_DOWN, and the drain fires when the first one
    has answered."""
    from provisioningserver.rpc.cluster import EatCheez
    from provisioningserver.rpc.common import RPCProtocol
    from provisioningserver.rpc.exceptions import ShuttingDown
    from provisioningserver.rpc.testing import connect_in_memory

    slow: Deferred[dict[str, int]] = Deferred()

    class Server(RPCProtocol):
        @EatCheez.responder
        def eat(self, name: str, origin: str) -> Deferred[dict[str, int]]:
            return slow

    server, caller = Server(), RPCProtocol()
    pump = connect_in_memory(server, caller)
    server.peerAuthenticated = caller.peerAuthenticated = True
    server.mode = caller.mode = "legacy"
    # callRemote, not a Client: the test suite's reactor runs in crochet's
    # thread, and a Client called from here would hop to it.
    first = caller.callRemote(EatCheez, name="Brie", origin="France")
    pump.flush()
    clock = Clock()
    drained = drainConnections([server], 10, clock)
    second = caller.callRemote(EatCheez, name="Brie", origin="France")
    pump.flush()
    assert second.called and second.result.check(ShuttingDown)
    second.addErrback(lambda _: None)
    assert not drained.called and not first.called
    slow.callback({"rating": 8})
    pump.flush()
    assert first.result == {"rating": 8}
    assert drained.result == 0
