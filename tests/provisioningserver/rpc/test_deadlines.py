"""Deadlines share one timer, under an injected clock."""

from __future__ import annotations

from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from provisioningserver.rpc.deadlines import Deadlines

_sync = SynchronousTestCase()
successResultOf = _sync.successResultOf
failureResultOf = _sync.failureResultOf


class Late(TimeoutError):
    pass


def test_deadlines_fire_in_order_with_one_timer():
    clock = Clock()
    deadlines = Deadlines(clock)
    calls = [deadlines.add(Deferred(), 10, Late) for _ in range(100)]
    clock.advance(1)
    later = [deadlines.add(Deferred(), 10, Late) for _ in range(5)]
    assert len(clock.getDelayedCalls()) == 1  # One timer for 105 deadlines.
    calls[0].callback("early")
    assert successResultOf(calls[0]) == "early"
    clock.advance(8.9)
    assert not any(d.called for d in calls[1:] + later)
    clock.advance(0.2)  # 10.1 s after the first 100.
    for d in calls[1:]:
        failureResultOf(d, Late)
    assert not any(d.called for d in later)
    clock.advance(1)
    for d in later:
        failureResultOf(d, Late)
    assert clock.getDelayedCalls() == []
    assert len(deadlines) == 0


def test_a_shorter_timeout_moves_the_timer_earlier():
    clock = Clock()
    deadlines = Deadlines(clock)
    slow = deadlines.add(Deferred(), 120, Late)
    quick = deadlines.add(Deferred(), 1, Late)
    clock.advance(1)
    failureResultOf(quick, Late)
    assert not slow.called
    clock.advance(119)
    failureResultOf(slow, Late)


def test_a_caller_cancelling_is_not_a_timeout():
    from twisted.internet.defer import CancelledError

    clock = Clock()
    deadlines = Deadlines(clock)
    d = deadlines.add(Deferred(), 10, Late)
    d.cancel()
    failureResultOf(d, CancelledError)
    clock.advance(20)
    assert len(deadlines) == 0


def test_stop_forgets_pending_deadlines():
    clock = Clock()
    deadlines = Deadlines(clock)
    d = deadlines.add(Deferred(), 10, Late)
    deadlines.stop()
    assert clock.getDelayedCalls() == []
    clock.advance(20)
    assert not d.called
