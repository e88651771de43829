"""Measurement loops that run in the reactor thread.

Each takes ``call``, a function of no arguments that makes one call and
returns a Deferred of its answer, and returns a Deferred of the elapsed
seconds. Raw AMP and maas-rpc go through the very same loop, so the loop's
own cost is the same on both sides of every ratio.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import Any

from twisted.internet.defer import Deferred, DeferredList

__all__ = ["fanout", "pipelined", "sequential"]

Call = Callable[[], Deferred[Any]]


def sequential(call: Call, n: int) -> Deferred[float]:
    """Make ``n`` calls one after another: the next once the last answered.

    :return: a Deferred of the elapsed seconds; it fails with the first
        failed call.
    """
    done: Deferred[float] = Deferred()
    left = n
    start = perf_counter()

    def step(_: Any = None) -> None:
        nonlocal left
        if left == 0:
            done.callback(perf_counter() - start)
            return
        left -= 1
        call().addCallbacks(step, failed)

    def failed(failure: Any) -> None:
        if not done.called:
            done.errback(failure)

    step()
    return done


def pipelined(call: Call, n: int, window: int) -> Deferred[float]:
    """Make ``n`` calls keeping ``window`` of them outstanding at all times
    (until the last ``window``).

    :return: a Deferred of the elapsed seconds; it fails with the first
        failed call.
    """
    done: Deferred[float] = Deferred()
    issued = 0
    answered = 0
    start = perf_counter()

    def issue() -> None:
        nonlocal issued
        issued += 1
        call().addCallbacks(answer, failed)

    def answer(_: Any) -> None:
        nonlocal answered
        answered += 1
        if answered == n:
            done.callback(perf_counter() - start)
        elif issued < n:
            issue()

    def failed(failure: Any) -> None:
        if not done.called:
            done.errback(failure)

    for _ in range(min(window, n)):
        issue()
    return done


def fanout(calls: list[Call]) -> Deferred[list[Any]]:
    """Make every call at once; fire when all have answered.

    :return: a Deferred of the answers (a DeferredList's result).
    """
    return DeferredList([call() for call in calls], consumeErrors=True)
