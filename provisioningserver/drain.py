"""Graceful stop: let calls in progress finish before connections close.

On SIGTERM (or :func:`maasserver.eventloop.stop`), a process first drains
its RPC connections: each connection's ``drain()`` refuses new commands
(``SHUTTING_DOWN``) and fires once the commands in progress have answered.
:func:`drainConnections` waits for all of them, up to a bound
(``MAAS_RPC_DRAIN_TIMEOUT``), then the services stop and close what is left.
:class:`DrainingMultiService` does that in front of its children's
``stopService``, so that ``twistd`` gets it too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from provisioningserver.utils.twisted import resolveReactor

__all__ = ["DrainingMultiService", "drainConnections"]

log = Logger()


def _drainFailed(failure: Failure) -> None:
    log.failure("Draining a connection failed.", failure)


def drainConnections(
    connections: Iterable[Any], timeout: float, clock: Any
) -> Deferred[int]:
    """Drain ``connections``: refuse new commands, wait for those in progress.

    :param connections: RPC protocols; those without ``drain()`` are
        skipped.
    :param timeout: seconds to wait at most.
    :param clock: the reactor (or a :class:`~twisted.internet.task.Clock`).
    :return: a Deferred firing with how many connections were still busy
        when ``timeout`` passed (0 when all finished in time); it never
        fails.
    """
    pending: dict[int, Deferred[Any]] = {}
    for n, conn in enumerate(list(connections)):
        drain = getattr(conn, "drain", None)
        if drain is None:
            continue
        # One connection's failure stops nothing: it is logged, and counts
        # as drained.
        d = defer.maybeDeferred(drain).addErrback(_drainFailed)
        if d.called:
            continue
        pending[n] = d

        def forget(result: Any, n: int = n) -> Any:
            pending.pop(n, None)
            return result

        d.addBoth(forget)
    if not pending:
        return defer.succeed(0)
    log.info(
        "Draining {n} connection(s) with calls in progress; waiting up to "
        "{timeout} seconds.",
        n=len(pending),
        timeout=timeout,
    )
    done: Deferred[int] = Deferred()
    waits = defer.DeferredList(list(pending.values()), consumeErrors=True)

    def finished(_: Any) -> None:
        if not done.called:
            timer.cancel()
            log.info("Drained: every call in progress has answered.")
            done.callback(0)

    def expired() -> None:
        if not done.called:
            busy = len(pending)
            log.warn(
                "{busy} connection(s) still had calls in progress after "
                "{timeout} seconds (MAAS_RPC_DRAIN_TIMEOUT); closing them.",
                busy=busy,
                timeout=timeout,
            )
            done.callback(busy)

    timer = clock.callLater(timeout, expired)
    waits.addCallback(finished)
    return done


class DrainingMultiService(MultiService):
    """A :class:`~twisted.application.service.MultiService` that drains
    before its children stop.

    :param connections: returns the connections to drain, when stopping.
    :param timeout: seconds to wait at most (a function, read when
        stopping, or a number).
    :param clock: the reactor; the global one when ``None``.
    """

    def __init__(
        self,
        connections: Callable[[], Iterable[Any]] = lambda: (),
        timeout: float | Callable[[], float] = 10.0,
        clock: Any = None,
    ) -> None:
        super().__init__()
        self.connections = connections
        self.timeout = timeout
        self._clock = clock

    def stopService(self) -> Deferred[None]:
        """Drain, then stop the children.

        :return: a Deferred that fires once every child has stopped.
        """
        clock = resolveReactor(self._clock)
        timeout = self.timeout() if callable(self.timeout) else self.timeout
        d = drainConnections(self.connections(), timeout, clock)
        return d.addCallback(lambda _: MultiService.stopService(self))
