"""Tests for :mod:`provisioningserver.utils.ratelimit`."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import Logger

from provisioningserver.utils.ratelimit import LogLimiter


def test_once_per_interval_per_key_with_a_count_of_the_rest(logged):
    clock = Clock()
    limiter = LogLimiter(Logger(), interval=60, clock=clock)
    assert limiter.warn("a", "problem {n}", n=1)
    assert not limiter.warn("a", "problem {n}", n=2)
    assert limiter.warn("b", "other")
    clock.advance(59)
    assert not limiter.warn("a", "problem {n}", n=3)
    clock.advance(1)
    assert limiter.warn("a", "problem {n}", n=4)
    assert logged.lines("problem") == [
        "problem 1",
        "problem 4 (2 more like this in the last 60 s)",
    ]
    assert logged.lines("other") == ["other"]


def test_forget_lets_the_next_one_through(logged):
    clock = Clock()
    limiter = LogLimiter(Logger(), clock=clock)
    limiter.info("k", "one")
    limiter.forget("k")
    limiter.info("k", "two")
    assert logged.lines("one") and logged.lines("two")


def test_keys_are_bounded():
    clock = Clock()
    limiter = LogLimiter(Logger(), clock=clock, maxKeys=10)
    for n in range(1000):
        limiter.warn(("peer", n), "x")
    assert len(limiter._seen) == 10


def test_a_burst_passes_then_the_rest_is_counted():
    from twisted.internet.task import Clock
    from twisted.logger import Logger, LogLevel

    from provisioningserver.utils.ratelimit import LogLimiter

    events: list[dict] = []
    clock = Clock()
    limiter = LogLimiter(Logger(observer=events.append), 60, clock, burst=3)
    passed = [limiter.emit(LogLevel.warn, "k", "n={n}", n=n) for n in range(10)]
    assert passed == [True] * 3 + [False] * 7
    clock.advance(61)
    assert limiter.emit(LogLevel.warn, "k", "n={n}", n=10)
    assert events[-1]["suppressed"] == 7
    assert len(events) == 4
