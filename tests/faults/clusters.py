"""Simulated clusters for the fault tests: a process of its own.

It runs ``--count`` :class:`~provisioningserver.rpc.clusterservice.ClusterClientService`
instances, each with its own UUID, in one reactor, all discovering the region
at ``--maas-url``. With ``--stream K`` the first of them keeps ``K`` calls of
:class:`faultext.Linger` in flight against whichever region event-loop
``getClient()`` picks, each with a deadline of ``--call-timeout`` seconds.

It writes one JSON object per line to standard output, each with ``t``, the
:func:`time.monotonic` time it happened (comparable with the test process's
on Linux), and ``event``:

``connected`` / ``lost``
    a cluster (``uuid``) entered or left the rotation for an event-loop
    (``eventloop``); ``lost`` has the ``reason``.
``begin``
    a call of the stream began: ``n``, ``eventloop`` (called), ``start``.
``call``
    a call of the stream ended: ``n``, ``eventloop`` (called), ``start``,
    ``end``, ``outcome`` (``ok`` or ``failed``), ``error`` (the exception's
    class) and ``message``, or ``answeredBy`` when it succeeded.
``summary``
    on SIGTERM (or after ``--duration`` seconds): the calls still pending,
    how many calls found no connection, and each cluster's connections.

Logs (warnings and worse) go to standard error.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
import uuid
from typing import Any

from twisted.application.service import MultiService
from twisted.python.failure import Failure


def emit(event: str, **fields: Any) -> None:
    """Write one event as a JSON line, at once."""
    record = {"event": event, "t": time.monotonic(), **fields}
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def makeProtocol() -> Any:
    from provisioningserver.rpc.clusterservice import ClusterClient

    class ReportingClusterClient(ClusterClient):
        """Reports entering and leaving the rotation."""

        _inRotation = False

        def connectionMade(self) -> None:
            super().connectionMade()
            self.ready.get().addCallbacks(self._entered, lambda _: None)

        def _entered(self, _: Any) -> None:
            self._inRotation = True
            emit("connected", uuid=self.service.uuid, eventloop=self.eventloop)

        def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
            super().connectionLost(reason)
            if self._inRotation:
                emit(
                    "lost",
                    uuid=self.service.uuid,
                    eventloop=self.eventloop,
                    reason=reason.type.__name__ if reason is not None else "",
                )

    return ReportingClusterClient


class Stream:
    """Keeps ``concurrency`` calls of ``Linger`` in flight."""

    def __init__(
        self,
        service: Any,
        concurrency: int,
        linger: float,
        timeout: float,
        reactor: Any,
    ) -> None:
        self.service = service
        self.concurrency = concurrency
        self.linger = linger
        self.timeout = timeout
        self.reactor = reactor
        self.pending: dict[int, dict[str, Any]] = {}
        self.unavailable = 0
        self.stopped = False
        self._numbers = itertools.count(1)

    def start(self) -> None:
        for _ in range(self.concurrency):
            self.next()

    def next(self) -> None:
        from faultext import Linger

        from provisioningserver.rpc.exceptions import NoConnectionsAvailable

        if self.stopped:
            return
        try:
            client = self.service.getClient()
        except NoConnectionsAvailable:
            self.unavailable += 1
            self.reactor.callLater(0.1, self.next)
            return
        n = next(self._numbers)
        call = {"n": n, "eventloop": client.ident, "start": time.monotonic()}
        self.pending[n] = call
        emit("begin", **call)
        d = client(Linger, seconds=self.linger, _timeout=self.timeout)

        def ok(response: dict[str, Any]) -> float:
            del self.pending[n]
            emit(
                "call",
                **call,
                end=time.monotonic(),
                outcome="ok",
                answeredBy=response["eventloop"],
            )
            return 0.0

        def failed(failure: Failure) -> float:
            del self.pending[n]
            emit(
                "call",
                **call,
                end=time.monotonic(),
                outcome="failed",
                error=failure.type.__name__,
                message=failure.getErrorMessage(),
            )
            return 0.1  # Do not spin while the cluster notices.

        d.addCallbacks(ok, failed)
        d.addCallback(lambda pause: self.reactor.callLater(pause, self.next))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maas-url", required=True)
    parser.add_argument("--secret-file", required=True)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--poll", default="2,10,30", help="disconnected,partial,all")
    parser.add_argument("--keepalive", default="30,10", help="interval,timeout")
    parser.add_argument("--handshake-timeout", type=float, default=30.0)
    parser.add_argument("--stream", type=int, default=0, help="calls in flight")
    parser.add_argument("--linger", type=float, default=1.0)
    parser.add_argument("--call-timeout", type=float, default=30.0)
    parser.add_argument("--duration", type=float, default=120.0)
    args = parser.parse_args(argv)

    from twisted.internet import reactor
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    from provisioningserver.rpc.clusterservice import ClusterClientService
    from provisioningserver.security import read_shared_secret

    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])],
        redirectStandardIO=False,
    )
    secret = read_shared_secret(args.secret_file)
    intervals = [float(x) for x in args.poll.split(",")]
    keepaliveInterval, keepaliveTimeout = (float(x) for x in args.keepalive.split(","))
    protocol = makeProtocol()
    top = MultiService()
    services = []
    for n in range(args.count):
        service = ClusterClientService(
            args.maas_url,
            secret,
            str(uuid.uuid4()),
            protocol=protocol,
            intervals=intervals,
            handshakeTimeout=args.handshake_timeout,
            keepaliveInterval=keepaliveInterval,
            keepaliveTimeout=keepaliveTimeout,
        )
        service.setName(f"rpc-{n + 1}")
        service.setServiceParent(top)
        services.append(service)
    stream = (
        Stream(services[0], args.stream, args.linger, args.call_timeout, reactor)
        if args.stream
        else None
    )

    def start() -> None:
        emit("started", uuids=[s.uuid for s in services])
        top.startService()
        if stream is not None:
            stream.start()

    def stop() -> Any:
        if stream is not None:
            stream.stopped = True
        emit(
            "summary",
            pending=sorted(stream.pending.values(), key=lambda c: c["n"])
            if stream is not None
            else [],
            unavailable=stream.unavailable if stream is not None else 0,
            connections={s.uuid: sorted(s.connections) for s in services},
        )
        return top.stopService()

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", stop)
    # A safety net: never outlive a test that forgot this process.
    reactor.callLater(args.duration, reactor.stop)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
