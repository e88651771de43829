"""Deadlines share one timer, under an injected clock."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
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


# Re-entrancy: meeting a deadline cancels a Deferred, whose callbacks run
# inside Deadlines._fire.


def _also(failure, func, *args):
    """An errback that calls ``func(*args)`` and passes the failure on."""
    func(*args)
    return failure


def test_a_timeout_settling_the_last_of_another_group_keeps_the_timer():
    """A deadline's errback that settles the only call of another group used
    to raise StopIteration out of the timer, losing it: an unrelated call
    with a 30 s deadline then never timed out."""
    clock = Clock()
    deadlines = Deadlines(clock)
    first = deadlines.add(Deferred(), 10, Late)
    alone = deadlines.add(Deferred(), 20, Late)  # The only 20 s deadline.
    first.addErrback(_also, alone.callback, "settled by first's errback")
    unrelated = deadlines.add(Deferred(), 30, Late)
    clock.advance(10)  # Raised StopIteration here.
    failureResultOf(first, Late)
    assert successResultOf(alone) == "settled by first's errback"
    assert not unrelated.called
    clock.advance(20)
    failureResultOf(unrelated, Late)
    assert clock.getDelayedCalls() == []
    assert len(deadlines) == 0


def test_a_timeout_settling_the_last_of_its_own_group_keeps_the_timer():
    clock = Clock()
    deadlines = Deadlines(clock)
    first = deadlines.add(Deferred(), 10, Late)
    clock.advance(5)
    second = deadlines.add(Deferred(), 10, Late)  # Same group, due later.
    first.addErrback(_also, second.callback, "settled")
    unrelated = deadlines.add(Deferred(), 30, Late)
    clock.advance(5)
    failureResultOf(first, Late)
    assert successResultOf(second) == "settled"
    clock.advance(30)
    failureResultOf(unrelated, Late)
    assert clock.getDelayedCalls() == []


def test_a_timeout_cancelling_a_call_due_at_the_same_time():
    """A call that an earlier call's errback cancels is the caller's
    cancellation, not a timeout, even though its deadline is also due."""
    from twisted.internet.defer import CancelledError

    clock = Clock()
    deadlines = Deadlines(clock)
    first = deadlines.add(Deferred(), 10, Late)
    second = deadlines.add(Deferred(), 10, Late)
    first.addErrback(_also, second.cancel)
    clock.advance(10)
    failureResultOf(first, Late)
    failureResultOf(second, CancelledError)
    assert clock.getDelayedCalls() == []
    assert len(deadlines) == 0


def test_a_timeout_adding_deadlines():
    """Callbacks may set new deadlines (a retry, say), shorter or longer than
    what is pending; each is met at its own time."""
    clock = Clock()
    deadlines = Deadlines(clock)
    added = {}

    def retry(failure, timeout):
        added[timeout] = deadlines.add(Deferred(), timeout, Late)
        return failure

    pending = deadlines.add(Deferred(), 50, Late)
    first = deadlines.add(Deferred(), 10, Late)
    first.addErrback(retry, 5).addErrback(retry, 100)
    clock.advance(10)
    failureResultOf(first, Late)
    assert [d.called for d in added.values()] == [False, False]
    clock.advance(5)  # 15: the 5 s retry.
    failureResultOf(added[5], Late)
    assert not added[100].called
    assert not pending.called
    clock.advance(35)  # 50: the pending call.
    failureResultOf(pending, Late)
    assert not added[100].called
    clock.advance(60)  # 110: the 100 s retry.
    failureResultOf(added[100], Late)
    assert clock.getDelayedCalls() == []


def test_stop_from_a_timeout_callback():
    """stop() in a deadline's callback (the connection dropped): the other
    calls due at that moment are left alone, and nothing is rescheduled."""
    clock = Clock()
    deadlines = Deadlines(clock)
    first = deadlines.add(Deferred(), 10, Late)
    second = deadlines.add(Deferred(), 10, Late)
    later = deadlines.add(Deferred(), 20, Late)
    first.addErrback(_also, deadlines.stop)
    clock.advance(10)
    failureResultOf(first, Late)
    assert not second.called
    assert clock.getDelayedCalls() == []
    clock.advance(100)
    assert not second.called
    assert not later.called
    assert len(deadlines) == 0
    # Usable again afterwards.
    again = deadlines.add(Deferred(), 1, Late)
    clock.advance(1)
    failureResultOf(again, Late)


def test_stop_then_add_from_a_timeout_callback():
    clock = Clock()
    deadlines = Deadlines(clock)
    first = deadlines.add(Deferred(), 10, Late)
    added = []

    def restart(failure):
        deadlines.stop()
        added.append(deadlines.add(Deferred(), 3, Late))
        return failure

    first.addErrback(restart)
    clock.advance(10)
    failureResultOf(first, Late)
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(3)
    failureResultOf(added[0], Late)
    assert clock.getDelayedCalls() == []


def test_a_canceller_that_raises_costs_no_other_call_its_deadline(logged):
    clock = Clock()
    deadlines = Deadlines(clock)

    def badCanceller(d):
        raise RuntimeError("canceller broke")

    broken = deadlines.add(Deferred(badCanceller), 10, Late)
    sibling = deadlines.add(Deferred(), 10, Late)
    unrelated = deadlines.add(Deferred(), 30, Late)
    clock.advance(10)
    failureResultOf(broken, Late)
    failureResultOf(sibling, Late)
    assert logged.lines("at its deadline failed")
    (event,) = [e for e in logged if "log_failure" in e]
    assert event["log_failure"].check(RuntimeError)
    clock.advance(20)
    failureResultOf(unrelated, Late)
    assert clock.getDelayedCalls() == []


_timeouts = st.sampled_from([1, 2, 5, 10, 30])
_ops = st.one_of(
    st.tuples(st.just("add"), _timeouts),
    # When this call times out, its errback settles (or cancels) the n-th
    # call made so far, or sets a new deadline: re-entrancy.
    st.tuples(st.just("add-settling"), _timeouts, st.integers(0, 30)),
    st.tuples(st.just("add-cancelling"), _timeouts, st.integers(0, 30)),
    st.tuples(st.just("add-adding"), _timeouts, _timeouts),
    st.tuples(st.just("settle"), st.integers(0, 30)),
    st.tuples(st.just("cancel"), st.integers(0, 30)),
    st.tuples(st.just("advance"), st.integers(0, 12)),
)


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(_ops, max_size=40))
def test_every_deadline_is_met_on_time_whatever_callbacks_do(ops):
    """Model check: after any mix of calls, early answers, cancellations and
    callbacks that do those things while deadlines are being met, every call
    still pending is within its deadline, no call timed out early, and a
    timer is set for the earliest pending deadline."""
    clock = Clock()
    deadlines = Deadlines(clock)
    calls: list[tuple[Deferred, float]] = []
    timedOutAt: dict[int, float] = {}

    def add(timeout, then=None):
        index = len(calls)
        d = deadlines.add(Deferred(), timeout, Late)
        calls.append((d, clock.seconds() + timeout))

        def noted(failure):
            if failure.check(Late):
                timedOutAt[index] = clock.seconds()
                if then is not None:
                    then()
            return failure

        d.addErrback(noted)
        d.addErrback(lambda _: None)  # Handled.
        return d

    def settle(n):
        if calls:
            d, _ = calls[n % len(calls)]
            if not d.called:
                d.callback("answer")

    def cancel(n):
        if calls:
            calls[n % len(calls)][0].cancel()

    for op in ops:
        kind = op[0]
        if kind == "add":
            add(op[1])
        elif kind == "add-settling":
            add(op[1], lambda n=op[2]: settle(n))
        elif kind == "add-cancelling":
            add(op[1], lambda n=op[2]: cancel(n))
        elif kind == "add-adding":
            add(op[1], lambda t=op[2]: add(t))
        elif kind == "settle":
            settle(op[1])
        elif kind == "cancel":
            cancel(op[1])
        else:
            clock.advance(op[1])
        now = clock.seconds()
        pending = [expiry for d, expiry in calls if not d.called]
        assert all(expiry > now for expiry in pending), "a deadline was missed"
        for index, at in timedOutAt.items():
            assert at >= calls[index][1], "a call timed out early"
        if pending:
            timers = [c.getTime() for c in clock.getDelayedCalls() if c.active()]
            assert len(timers) == 1
            assert timers[0] <= min(pending)
        assert len(deadlines) == len(pending)
    # Twice: a deadline set by a callback at the first is met at the second.
    clock.advance(1000)
    clock.advance(1000)
    assert all(d.called for d, _ in calls)
    clock.advance(1000)  # The timer may fire once more with nothing to do.
    assert clock.getDelayedCalls() == []
    assert len(deadlines) == 0
