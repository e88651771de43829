"""Call deadlines that share one timer.

Twisted's :meth:`~twisted.internet.defer.Deferred.addTimeout` schedules (and
later cancels) a delayed call for every call. Most calls have the same
timeout, so their deadlines come in the order they were set; here each
distinct timeout keeps its pending calls in insertion order, and one delayed
call, for the earliest deadline, serves them all. Setting a deadline costs a
dict insertion, and meeting it a dict deletion; the timer is not moved when
calls answer early, so it may fire once with nothing to do.

Meeting a deadline cancels the call's Deferred, which runs its callbacks
there and then. Those callbacks may set new deadlines, settle or cancel other
calls (the last of a group included), or :meth:`Deadlines.stop` the lot; the
timer is always rescheduled for whatever is still pending afterwards, and a
canceller that raises is logged without costing the other calls their
deadline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["Deadlines"]

log = Logger()


class Deadlines:
    """Deadlines for Deferreds, measured on one clock.

    :param clock: the clock (an
        :class:`~twisted.internet.interfaces.IReactorTime`).
    :ivar clock: the clock.
    """

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        # timeout -> {Deferred: (expiry, makes the timeout's exception)}, in
        # the order set, which is also the order of expiry.
        self._groups: dict[float, dict[Deferred[Any], tuple[float, Any]]] = {}
        # Deferreds cancelled for their deadline -> the exception to raise.
        self._expired: dict[Deferred[Any], Callable[[], BaseException]] = {}
        self._call: Any = None
        self._callAt = 0.0
        # True while _fire cancels calls: add() leaves scheduling to _fire.
        self._firing = False
        # Bumped by stop(), so that a _fire in progress stops cancelling.
        self._generation = 0

    def __len__(self) -> int:
        return sum(len(group) for group in self._groups.values())

    def add(
        self,
        d: Deferred[Any],
        timeout: float,
        error: Callable[[], BaseException],
    ) -> Deferred[Any]:
        """Cancel ``d`` if it has not fired within ``timeout`` seconds.

        Call it before anything else is added to ``d``'s callbacks, and once
        per Deferred.

        :param d: the Deferred.
        :param timeout: seconds, > 0.
        :param error: makes the exception ``d`` then fails with, instead of
            :class:`~twisted.internet.defer.CancelledError`.
        :return: ``d``.
        """
        group = self._groups.get(timeout)
        if group is None:
            group = self._groups[timeout] = {}
        expiry = self.clock.seconds() + timeout
        group[d] = (expiry, error)
        d.addBoth(self._settled, group, d)
        if not self._firing and (self._call is None or expiry < self._callAt):
            self._schedule(expiry)
        return d

    def _settled(self, result: Any, group: dict[Deferred[Any], Any], d: Any) -> Any:
        group.pop(d, None)
        error = self._expired.pop(d, None)
        if error is not None and isinstance(result, Failure):
            if result.check(CancelledError):
                return Failure(error())
        return result

    def stop(self) -> None:
        """Stop the timer (the connection is gone); pending deadlines are
        forgotten.

        Safe to call from a callback that a deadline runs: the calls due at
        the same time that have not been cancelled yet are left alone.
        """
        self._generation += 1
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._groups.clear()

    def _schedule(self, when: float) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._callAt = when
        delay = max(0.0, when - self.clock.seconds())
        self._call = self.clock.callLater(delay, self._fire)

    def _reschedule(self) -> None:
        # Forget the groups that emptied, find the earliest pending deadline
        # (each group's first), and make sure the timer comes no later.
        earliest: float | None = None
        for timeout, group in list(self._groups.items()):
            if not group:
                del self._groups[timeout]
                continue
            head = next(iter(group.values()))[0]
            if earliest is None or head < earliest:
                earliest = head
        if earliest is None:
            return
        if self._call is None or not self._call.active() or earliest < self._callAt:
            self._schedule(earliest)

    def _fire(self) -> None:
        self._call = None
        now = self.clock.seconds()
        due: list[tuple[Deferred[Any], Any]] = []
        for group in self._groups.values():
            while group:
                d = next(iter(group))
                expiry, error = group[d]
                if expiry > now:
                    break
                del group[d]
                due.append((d, error))
        generation = self._generation
        self._firing = True
        try:
            for d, error in due:
                if self._generation != generation:
                    break  # stop() was called by a callback: forget the rest.
                if d.called:
                    continue  # Settled meanwhile by an earlier call's callbacks.
                self._expired[d] = error
                try:
                    d.cancel()
                except Exception:  # noqa: BLE001 - one call's canceller
                    log.failure("Cancelling {call} at its deadline failed", call=d)
                    # The canceller raised before the Deferred fired; fail it
                    # with its deadline's error all the same.
                    if not d.called:
                        d.errback(CancelledError())
        finally:
            self._firing = False
            self._reschedule()
