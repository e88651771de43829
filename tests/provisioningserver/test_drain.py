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
