"""Tests for :mod:`maasserver.utils.asynchronous`."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import crochet
import pytest
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from maasserver.utils.asynchronous import (
    AlreadyIterated,
    DeferredHooks,
    GatherResults,
    UseOnceIterator,
    gather,
)
from provisioningserver.utils.twisted import isInReactorThread

NAMESPACE = "maasserver.utils.asynchronous"


@crochet.wait_for(timeout=10)
def in_reactor(func, *args, **kwargs):
    """Call ``func`` in the reactor thread and return ``[its result]``.

    The list stops crochet from waiting on a Deferred that ``func`` returns.
    An exception ``func`` raises propagates.
    """
    return [func(*args, **kwargs)]


def reactor_thread_id() -> int:
    return in_reactor(threading.get_ident)[0]


class Boom(Exception):
    """An exception only these tests raise."""


class ClockedReactor:
    """Make calls in the real reactor's thread, but keep time on a ``Clock``.

    Tests advance :attr:`clock` in the reactor thread (``in_reactor``), so
    deadlines pass exactly when a test says, with no real delayed calls.
    """

    def __init__(self, reactor):
        self._reactor = reactor
        self.clock = Clock()
        self.fromThread = 0

    def callFromThread(self, f, *args, **kwargs):
        self.fromThread += 1
        self._reactor.callFromThread(f, *args, **kwargs)

    def callLater(self, delay, f, *args, **kwargs):
        return self.clock.callLater(delay, f, *args, **kwargs)


@contextmanager
def captured_failures() -> Iterator[list[dict]]:
    """Capture this module's log events that carry a failure."""
    events: list[dict] = []

    def observer(event):
        if event.get("log_namespace") == NAMESPACE and "log_failure" in event:
            events.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observer)


def cancellable(on_cancel=None):
    """Return ``(deferred, cancelled)``; ``cancelled`` records cancellations."""
    cancelled: list[bool] = []

    def canceller(d):
        cancelled.append(True)
        if on_cancel is not None:
            on_cancel(d)

    return Deferred(canceller), cancelled


# UseOnceIterator


def test_use_once_iterator_yields_values_once():
    it = UseOnceIterator([1, 2, 3])
    assert list(it) == [1, 2, 3]
    with pytest.raises(AlreadyIterated, match="only once"):
        list(it)


def test_use_once_iterator_second_loop_raises_even_when_not_exhausted():
    it = UseOnceIterator("abc")
    for value in it:
        assert value == "a"
        break
    with pytest.raises(AlreadyIterated):
        for _ in it:
            pass
    assert issubclass(AlreadyIterated, RuntimeError)


def test_use_once_iterator_next_works_before_and_after_iter():
    it = UseOnceIterator(x for x in "ab")
    assert next(it) == "a"
    assert iter(it) is it
    assert next(it) == "b"
    with pytest.raises(StopIteration):
        next(it)
    with pytest.raises(AlreadyIterated):
        iter(it)


# gather


def test_gather_no_calls_is_empty():
    results = gather([])
    assert isinstance(results, GatherResults)
    assert list(results) == []
    assert results.timedOut == []


def test_gather_rejects_negative_timeout():
    with pytest.raises(ValueError, match="timeout"):
        gather([lambda: 1], timeout=-1)


def test_gather_plain_values_deferreds_and_synchronous_failures(reactor_thread):
    boom = Boom()

    def fails():
        raise boom

    # Every call answers at once, so the results come in the calls' order.
    calls = (c for c in [lambda: 1, fails, lambda: defer.succeed(2)])
    results = gather(calls)
    one, failure, two = list(results)
    assert (one, two) == (1, 2)
    assert isinstance(failure, Failure)
    assert failure.value is boom
    assert results.timedOut == []


def test_gather_makes_calls_in_reactor_thread(reactor_thread):
    assert list(gather([isInReactorThread, isInReactorThread])) == [True, True]


def test_gather_yields_results_in_arrival_order(reactor_thread):
    d_a, d_b = Deferred(), Deferred()
    results = gather([lambda: d_a, lambda: d_b], timeout=5)
    in_reactor(d_b.callback, "b")
    # "b" is handed over while "a" has not even answered yet.
    assert next(results) == "b"
    in_reactor(d_a.callback, "a")
    assert next(results) == "a"
    with pytest.raises(StopIteration):
        next(results)
    assert results.timedOut == []


def test_gather_yields_failure_of_a_deferred(reactor_thread):
    boom = Boom()
    d = Deferred()
    results = gather([lambda: d, lambda: "fine"], timeout=5)
    assert next(results) == "fine"
    in_reactor(d.errback, boom)
    [failure] = list(results)
    assert isinstance(failure, Failure)
    assert failure.value is boom


def test_gather_yields_a_cancelled_error_it_did_not_cause(reactor_thread):
    [failure] = list(gather([lambda: defer.fail(CancelledError())]))
    assert failure.check(CancelledError)


@pytest.mark.timeout(10)
def test_gather_ends_once_all_answered_and_cancels_its_timer(reactor_thread):
    reactor = ClockedReactor(reactor_thread)
    d = Deferred()
    results = gather([lambda: d], timeout=60, reactor=reactor)
    in_reactor(d.callback, "x")
    # The clock never moves: the iteration ends because every call answered.
    assert list(results) == ["x"]
    assert reactor.clock.getDelayedCalls() == []
    assert results.timedOut == []


def test_gather_without_timeout_sets_no_timer(reactor_thread):
    reactor = ClockedReactor(reactor_thread)
    d = Deferred()
    results = gather([lambda: d], timeout=None, reactor=reactor)
    assert in_reactor(reactor.clock.getDelayedCalls)[0] == []
    in_reactor(d.callback, "x")
    assert list(results) == ["x"]
    assert reactor.fromThread == 1


def test_gather_cancels_and_reports_calls_that_time_out(reactor_thread):
    never, never_cancelled = cancellable()
    # This one answers its cancellation with a value; it must not be yielded.
    late, late_cancelled = cancellable(lambda d: d.callback("late"))
    just_in_time = Deferred()

    def never_call():
        return never

    def ok_call():
        return "ok"

    def late_call():
        return late

    def just_in_time_call():
        return just_in_time

    calls = [never_call, ok_call, late_call, just_in_time_call]
    reactor = ClockedReactor(reactor_thread)
    results = gather(calls, timeout=5, reactor=reactor)
    assert next(results) == "ok"
    in_reactor(reactor.clock.advance, 4.9)
    in_reactor(just_in_time.callback, "just in time")
    assert next(results) == "just in time"
    assert results.timedOut == []  # Not complete until iteration ends.
    assert never_cancelled == late_cancelled == []
    in_reactor(reactor.clock.advance, 0.1)
    assert list(results) == []
    assert results.timedOut == [never_call, late_call]
    assert results.timedOut[0] is never_call
    assert never_cancelled == [True]
    assert late_cancelled == [True]
    assert reactor.clock.getDelayedCalls() == []


def test_gather_with_real_reactor_times_out(reactor_thread):
    never, cancelled = cancellable()

    def never_call():
        return never

    results = gather([never_call, lambda: "ok"], timeout=0.01)
    assert list(results) == ["ok"]
    assert results.timedOut == [never_call]
    assert cancelled == [True]


def test_gather_carries_on_when_cancelling_a_call_fails(reactor_thread):
    boom = Boom()

    def raise_boom(d):
        raise boom

    stubborn, cancelled = cancellable(raise_boom)
    quiet, _ = cancellable()

    def stubborn_call():
        return stubborn

    def quiet_call():
        return quiet

    reactor = ClockedReactor(reactor_thread)
    with captured_failures() as events:
        results = gather([stubborn_call, quiet_call], timeout=1, reactor=reactor)
        in_reactor(reactor.clock.advance, 1)
        assert list(results) == []
    assert results.timedOut == [stubborn_call, quiet_call]
    assert cancelled == [True]
    assert quiet.called  # The failed cancellation did not stop the others.
    [event] = events
    assert event["log_failure"].value is boom
    assert event["call"] is stubborn_call
    # The stubborn Deferred never fired; fire it now so it is not left waiting.
    in_reactor(stubborn.callback, None)


def test_gather_in_reactor_thread_raises(reactor_thread):
    made: list[bool] = []
    with pytest.raises(AssertionError, match="reactor thread"):
        in_reactor(gather, [lambda: made.append(True)])
    assert made == []


def test_gather_results_cannot_be_iterated_twice(reactor_thread):
    results = gather([lambda: 1])
    assert list(results) == [1]
    with pytest.raises(AlreadyIterated):
        list(results)


# DeferredHooks


def test_hooks_add_rejects_what_is_not_a_deferred():
    hooks = DeferredHooks()
    with pytest.raises(TypeError, match="Deferred"):
        hooks.add(lambda: None)
    assert len(hooks) == 0


def test_hooks_are_inspectable(reactor_thread):
    hooks = DeferredHooks()
    d1, d2 = Deferred(), Deferred()
    hooks.add(d1)
    hooks.add(d2)
    assert len(hooks) == 2
    assert list(hooks) == [d1, d2]
    assert list(hooks.hooks) == [d1, d2]
    hooks.reset()
    assert len(hooks) == 0


def test_fire_with_no_hooks_does_nothing():
    hooks = DeferredHooks()
    hooks.fire()
    assert len(hooks) == 0


def test_fire_runs_hooks_in_order_in_reactor_thread(reactor_thread):
    reactor = ClockedReactor(reactor_thread)
    hooks = DeferredHooks(reactor=reactor)
    ran = []
    for name in "abc":
        d = Deferred()
        d.addCallback(lambda _, name=name: ran.append((name, threading.get_ident())))
        hooks.add(d)
    hooks.fire()
    rid = reactor_thread_id()
    assert rid != threading.get_ident()
    assert ran == [("a", rid), ("b", rid), ("c", rid)]
    assert len(hooks) == 0
    assert reactor.fromThread == 3


def test_fire_waits_for_each_hook_to_finish(reactor_thread):
    hooks = DeferredHooks()
    ran = []
    started = threading.Event()
    inner = Deferred()

    def slow(_):
        ran.append("a")
        started.set()
        return inner

    def finish_a():
        # Runs while fire() is blocked in the test thread.
        assert started.wait(10)
        in_reactor(lambda: (ran.append("a done"), inner.callback(None)))

    first, second = Deferred(), Deferred()
    first.addCallback(slow)
    second.addCallback(lambda _: ran.append("b"))
    hooks.add(first)
    hooks.add(second)
    helper = threading.Thread(target=finish_a)
    helper.start()
    try:
        hooks.fire()
    finally:
        helper.join(10)
    assert ran == ["a", "a done", "b"]


def test_fire_logs_a_failing_hook_and_runs_the_others(reactor_thread):
    hooks = DeferredHooks()
    boom = Boom()
    ran = []

    def explode(_):
        raise boom

    failing, fine = Deferred(), Deferred()
    failing.addCallback(explode)
    fine.addCallback(lambda _: ran.append("fine"))
    hooks.add(failing)
    hooks.add(fine)
    with captured_failures() as events:
        hooks.fire()
    assert ran == ["fine"]
    [event] = events
    assert event["log_failure"].value is boom
    assert event["hook"] is failing
    assert len(hooks) == 0


def test_fire_logs_a_hook_fired_already_and_runs_the_others(reactor_thread):
    hooks = DeferredHooks()
    ran = []
    fired, fine = defer.succeed("early"), Deferred()
    fine.addCallback(lambda _: ran.append("fine"))
    hooks.add(fired)
    hooks.add(fine)
    with captured_failures() as events:
        hooks.fire()
    assert ran == ["fine"]
    [event] = events
    assert event["log_failure"].check(defer.AlreadyCalledError)
    assert event["hook"] is fired


def test_fire_in_reactor_thread_raises(reactor_thread):
    hooks = DeferredHooks()
    with pytest.raises(AssertionError, match="reactor thread"):
        in_reactor(hooks.fire)


def test_reset_cancels_hooks_and_suppresses_cancelled_error(reactor_thread):
    hooks = DeferredHooks()
    d1, cancelled1 = cancellable()
    d2 = Deferred()  # No canceller: Deferred.cancel fails it with CancelledError.
    hooks.add(d1)
    hooks.add(d2)
    with captured_failures() as events:
        hooks.reset()
    assert cancelled1 == [True]
    assert len(hooks) == 0
    assert events == []
    outcomes = []
    in_reactor(lambda: [d.addBoth(outcomes.append) for d in (d1, d2)])
    assert outcomes == [None, None]


def test_reset_logs_other_failures_of_a_cancelled_hook(reactor_thread):
    hooks = DeferredHooks()
    boom = Boom()
    d, _ = cancellable(lambda d: d.errback(boom))
    hooks.add(d)
    with captured_failures() as events:
        hooks.reset()
    [event] = events
    assert event["log_failure"].value is boom
    assert event["hook"] is d


def test_reset_in_reactor_thread_cancels_the_reactor_threads_hooks(reactor_thread):
    hooks = DeferredHooks()
    mine = Deferred()
    hooks.add(mine)

    def in_the_reactor():
        d, cancelled = cancellable()
        hooks.add(d)
        assert len(hooks) == 1  # Only the reactor thread's own hook.
        hooks.reset()
        return cancelled, len(hooks)

    assert in_reactor(in_the_reactor)[0] == ([True], 0)
    assert list(hooks) == [mine]
    assert not mine.called
    hooks.reset()


def test_hooks_are_per_thread(reactor_thread):
    hooks = DeferredHooks()
    ran = []
    mine = Deferred()
    mine.addCallback(lambda _: ran.append("mine"))
    hooks.add(mine)
    seen = []
    errors = []

    def other_thread():
        try:
            seen.append(len(hooks))
            theirs = Deferred()
            theirs.addCallback(lambda _: ran.append("theirs"))
            hooks.add(theirs)
            hooks.fire()
            seen.append(len(hooks))
        except BaseException as e:  # Reported to the test thread below.
            errors.append(e)

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    assert errors == []
    assert seen == [0, 0]
    assert ran == ["theirs"]
    assert list(hooks) == [mine]
    hooks.fire()
    assert ran == ["theirs", "mine"]
