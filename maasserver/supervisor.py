"""``maas-rpc region``: a region of N event-loop processes on one host.

The supervisor binds and listens on the discovery (HTTP) port itself and
hands the listening socket to each worker (as file descriptor 3, named by
``MAAS_RPC_HTTP_FD``; the worker adopts it with
:meth:`~twisted.internet.interfaces.IReactorSocket.adoptStreamPort`). The
kernel spreads discovery requests among the workers, and no process of
another region can join the port: a second region's bind fails, and it
stops with one line. (This replaces ``SO_REUSEPORT``, with which any process
of the same user could silently share the port.) Each worker binds its own
RPC port, the first free one of ``MAAS_RPC_PORTS``.

Each worker tells the supervisor on a pipe (file descriptor 4,
``MAAS_RPC_NOTIFY_FD``; see :mod:`provisioningserver.systemd`) when it
serves, or why it could not start:

* A worker that fails **before it ever served** stops the region: the
  supervisor stops the other workers and exits with status 1 and the
  worker's one-line error. A configuration or port problem does not go away
  by restarting.
* A worker that dies **after serving** is restarted, after 1 s, then 2, 4,
  ... up to 30 s while it keeps dying; a worker that served for a minute
  starts over at 1 s.

Workers log JSON lines; the supervisor prints each once, at the worker's
level, under the worker's name (``eventloop-2[4121]``). Once every worker
serves, the supervisor logs one start-up line and notifies systemd
(``READY=1``) when run as a ``Type=notify`` service.

SIGTERM or Ctrl-C is passed on to every worker, each drains its calls in
progress (``MAAS_RPC_DRAIN_TIMEOUT``) and withdraws its advertisement; a
worker that has not exited ``MAAS_RPC_DRAIN_TIMEOUT`` + 15 seconds later is
killed.

With ``MAAS_RPC_METRICS_PORT``, the supervisor serves the workers' metrics,
added up: on each scrape it asks every worker for its counts over the
worker's control socket (:meth:`Supervisor.gatherMetrics`; see
:mod:`provisioningserver.metrics`).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from provisioningserver.logs import emitWorkerLine
from provisioningserver.utils.twisted import resolveReactor

__all__ = ["HTTP_FD", "NOTIFY_FD", "Supervisor", "Worker", "listeningSocket"]

log = Logger(namespace="region")

#: The worker's file descriptor for the shared discovery socket.
HTTP_FD = 3

#: The worker's file descriptor for telling the supervisor how it is.
NOTIFY_FD = 4

#: The longest line of a worker's output kept; the rest is cut.
MAX_LINE = 64 * 1024


def listeningSocket(interface: str, port: int, backlog: int = 128) -> socket.socket:
    """Bind and listen on a TCP port, to hand to event-loops.

    No ``SO_REUSEPORT``: while this socket is open, no other process can
    bind the port. The socket is non-blocking, as event-loops that share it
    need.

    :param interface: the address; ``""`` for all IPv4 interfaces.
    :param port: the port; 0 for any free one.
    :param backlog: the listen backlog.
    :return: the listening socket; its port is ``getsockname()[1]``.
    :raises OSError: when the port cannot be bound (``EADDRINUSE``: in
        use).
    """
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((interface, port))
        sock.listen(backlog)
        # Shared by processes that all wait for it with epoll: a blocking
        # accept() would hang the one that loses the race.
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class _Lines:
    """Splits a byte stream into lines, each bounded."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list[str]:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        if len(self.buffer) > MAX_LINE:
            lines.append(self.buffer[:MAX_LINE])
            self.buffer = b""
        return [line[:MAX_LINE].decode("utf-8", "replace") for line in lines]

    def rest(self) -> list[str]:
        rest, self.buffer = self.buffer, b""
        return [rest.decode("utf-8", "replace")] if rest else []


class Worker(ProcessProtocol):
    """One event-loop process, as the supervisor sees it.

    :param supervisor: the :class:`Supervisor`.
    :param number: 1, 2, ...

    :ivar ready: whether it has said it serves (this incarnation).
    :ivar served: whether any incarnation ever served.
    :ivar error: the one-line error it sent, if any.
    """

    def __init__(self, supervisor: Supervisor, number: int) -> None:
        self.supervisor = supervisor
        self.number = number
        self.name = f"eventloop-{number}"
        self.ready = False
        self.served = False
        self.readyAt: float | None = None
        self.lastPid: int | None = None
        self.error: str | None = None
        self.held: list[tuple[int, str]] = []
        self.ended: Deferred[None] = Deferred()
        self._streams = {1: _Lines(), 2: _Lines(), NOTIFY_FD: _Lines()}

    @property
    def pid(self) -> int | None:
        """The process ID, or ``None`` when not running."""
        return getattr(self.transport, "pid", None)

    @property
    def who(self) -> str:
        """How its lines are labelled: ``eventloop-1[4121]``."""
        return f"{self.name}[{self.pid or self.lastPid}]"

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        """Pass output on, and read notifications.

        :param childFD: 1, 2, or the notification pipe.
        :param data: what arrived.
        """
        lines = self._streams.setdefault(childFD, _Lines()).feed(data)
        for line in lines:
            self._line(childFD, line)

    def _line(self, fd: int, line: str) -> None:
        if fd == NOTIFY_FD:
            for state in line.split("\n"):
                key, _, value = state.partition("=")
                if key == "READY" and value == "1":
                    self._ready()
                elif key == "ERROR":
                    self.error = value
            return
        if self.supervisor.failed:
            return  # Stopping because the region could not start: said once.
        if not self.served or not self.supervisor.started.called:
            # Held until it serves and the region is up: when it cannot
            # start, the supervisor says why in one line instead.
            self.held.append((fd, line))
            return
        self.supervisor.printLine(self, fd, line)

    def _ready(self) -> None:
        if self.ready:
            return
        self.ready = self.served = True
        self.readyAt = self.supervisor.clock.seconds()
        self.supervisor.workerReady(self)

    def flush(self) -> None:
        """Print the lines held back while the region was starting."""
        held, self.held = self.held, []
        for fd, line in held:
            self.supervisor.printLine(self, fd, line)

    def processEnded(self, reason: Failure) -> None:
        """Tell the supervisor.

        :param reason: how it ended.
        """
        for fd, stream in self._streams.items():
            for line in stream.rest():
                self._line(fd, line)
        code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        self.ready = False
        ended, self.ended = self.ended, Deferred()
        self.supervisor.workerEnded(self, code, sig)
        ended.callback(None)


class Supervisor(Service):
    """Runs and watches the event-loop workers (see the module).

    :param workers: how many.
    :param argv: the command that runs one worker.
    :param environ: the workers' environment (the supervisor adds what each
        needs).
    :param httpSocket: the listening discovery socket to hand down.
    :param stream: where workers' lines are printed; standard error when
        ``None``.
    :param reactor: the reactor; the global one when ``None``.
    :param stopTimeout: seconds a worker may take to exit after SIGTERM.
    :param controlDir: where the workers' control sockets are (for
        :meth:`gatherMetrics`).

    :ivar started: fires once every worker serves, or fails with the error
        of the first that could not start.
    """

    name = "supervisor"  # type: ignore[assignment]

    def __init__(
        self,
        workers: int,
        argv: list[str],
        environ: Mapping[str, str],
        httpSocket: socket.socket,
        *,
        stream: IO[str] | None = None,
        reactor: Any = None,
        stopTimeout: float = 25.0,
        controlDir: Path | None = None,
    ) -> None:
        self.argv = argv
        self.environ = dict(environ)
        self.httpSocket = httpSocket
        self.stream = sys.stderr if stream is None else stream
        self._reactor = reactor
        self.stopTimeout = stopTimeout
        self.controlDir = controlDir
        self.workers = [Worker(self, n + 1) for n in range(workers)]
        self.started: Deferred[None] = Deferred()
        self.stopping = False
        self.failed = False
        self._restarts: dict[int, int] = {}
        self._timers: dict[int, Any] = {}
        self.stamp = not os.environ.get("JOURNAL_STREAM")

    @property
    def clock(self) -> Any:
        """The reactor."""
        return resolveReactor(self._reactor)

    def startService(self) -> None:
        """Start every worker."""
        super().startService()
        for worker in self.workers:
            self._spawn(worker)

    def _spawn(self, worker: Worker) -> None:
        env = {
            **self.environ,
            "MAAS_RPC_WORKER": worker.name,
            "MAAS_RPC_HTTP_FD": str(HTTP_FD),
            "MAAS_RPC_NOTIFY_FD": str(NOTIFY_FD),
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("NOTIFY_SOCKET", None)
        worker.ready = False
        worker.error = None
        transport = self.clock.spawnProcess(
            worker,
            self.argv[0],
            self.argv,
            env=env,
            childFDs={
                0: "w",
                1: "r",
                2: "r",
                HTTP_FD: self.httpSocket.fileno(),
                NOTIFY_FD: "r",
            },
        )
        worker.lastPid = transport.pid

    def printLine(self, worker: Worker, fd: int, line: str) -> None:
        """Print one line of a worker's output, once, at its level.

        :param worker: the worker.
        :param fd: 1 (standard output) or 2 (standard error).
        :param line: the line.
        """
        emitWorkerLine(
            line,
            worker.who,
            self.stream,
            default="info" if fd == 1 else "warn",
            stamp=self.stamp,
        )

    def workerReady(self, worker: Worker) -> None:
        """Note that a worker serves; fire ``started`` when all do.

        :param worker: the worker.
        """
        if self._restarts.get(worker.number):
            log.info("{who} serves again.", who=worker.who)
        if not self.started.called and all(w.ready for w in self.workers):
            # The workers' start-up lines first, then the region's.
            self.started.callback(None)
        elif self.started.called:
            worker.flush()

    def workerEnded(self, worker: Worker, code: int | None, sig: int | None) -> None:
        """Decide what to do about a worker that exited.

        :param worker: the worker.
        :param code: its exit status, or ``None`` when a signal ended it.
        :param sig: the signal, or ``None``.
        """
        how = f"signal {sig}" if sig else f"status {code}"
        if self.stopping:
            return
        if not worker.served:
            message = worker.error or (
                f"event-loop {worker.number} exited with {how} before it served"
            )
            if worker.error is None:
                # It crashed without saying why: its output will.
                worker.flush()
            worker.held = []
            if not self.started.called:
                self.failed = True
                self.started.errback(RuntimeError(message))
            return
        # It served once: restart it, with a growing delay while it keeps
        # dying.
        now = self.clock.seconds()
        restarts = self._restarts.get(worker.number, 0)
        if worker.readyAt is not None and now - worker.readyAt > 60:
            restarts = 0
        delay = min(30.0, 2.0**restarts)
        self._restarts[worker.number] = restarts + 1
        detail = f": {worker.error}" if worker.error else ""
        log.warn(
            "{name} exited with {how}{detail}; restarting it in {delay:.0f} s.",
            name=worker.name,
            how=how,
            detail=detail,
            delay=delay,
        )
        self._timers[worker.number] = self.clock.callLater(delay, self._respawn, worker)

    def _respawn(self, worker: Worker) -> None:
        self._timers.pop(worker.number, None)
        if not self.stopping:
            worker.readyAt = None
            self._spawn(worker)

    def gatherMetrics(self) -> Deferred[bytes]:
        """Ask every live worker for its metrics, and add them up.

        :return: a Deferred of the exposition in Prometheus's text format.
        """
        from twisted.internet import threads

        from provisioningserver import metrics
        from provisioningserver.control import ControlError, askEach

        paths = [
            self.controlDir / f"{worker.pid}.sock"
            for worker in self.workers
            if worker.pid is not None and worker.ready and self.controlDir
        ]

        def gather() -> bytes:
            from prometheus_client import generate_latest

            snapshots = []
            for path, answer in askEach(paths, {"op": "metrics"}, timeout=10):
                if isinstance(answer, ControlError):
                    log.warn("No metrics from {path}: {error}", path=path, error=answer)
                else:
                    snapshots.append(answer)
            summed = metrics.addSnapshots(snapshots)
            return bytes(generate_latest(metrics.registryFor(lambda: summed)))

        return threads.deferToThread(gather)

    def stopService(self) -> Deferred[None]:
        """Stop every worker: SIGTERM, then SIGKILL after ``stopTimeout``.

        :return: a Deferred that fires once every worker has exited.
        """
        super().stopService()
        self.stopping = True
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        waits = []
        for worker in self.workers:
            if worker.pid is None:
                continue
            waits.append(worker.ended)
            if worker.transport is None:
                continue
            try:
                worker.transport.signalProcess("TERM")
            except Exception:  # noqa: BLE001 - it may have just exited
                continue

        def kill() -> None:
            for worker in self.workers:
                if worker.pid is not None:
                    log.warn(
                        "{who} did not exit within {timeout} s; killing it.",
                        who=worker.who,
                        timeout=self.stopTimeout,
                    )
                    try:
                        os.kill(worker.pid, signal.SIGKILL)
                    except OSError:
                        pass

        timer = self.clock.callLater(self.stopTimeout, kill)
        d = defer.DeferredList(waits)

        def done(_: Any) -> None:
            if timer.active():
                timer.cancel()
            self.httpSocket.close()

        return d.addCallback(done)
