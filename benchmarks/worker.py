"""A benchmark peer process, driven over its standard input and output.

``python -m benchmarks.worker ROLE`` runs Twisted's reactor in its main
thread (as a deployed cluster or region process does) and answers one JSON
command per line on standard input with one JSON line on standard output.
Logs go to standard error. The process stops its services and exits when its
standard input closes, so it cannot outlive the driver that started it.

A role only decides which modules are imported up front, so that a cluster
worker never loads region code (``cluster``), a raw AMP peer loads none of
maas-rpc's RPC modules (``raw``), and a region worker runs an event-loop
(``region``).
"""

from __future__ import annotations

import cProfile
import gc
import json
import os
import resource
import sys
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver

__all__ = ["main", "rss", "sourceAddress"]

log = Logger()


def sourceAddress(index: int) -> str:
    """The loopback address simulated cluster ``index`` connects from:
    127.1.0.1, 127.1.0.2, ... (all of 127.0.0.0/8 is this host's)."""
    return f"127.{1 + index // 62500}.{index // 250 % 250}.{index % 250 + 1}"


def rss() -> int:
    """This process's resident set size in bytes, after a full collection."""
    gc.collect()
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


class Control(LineReceiver):
    """Answers the driver's commands; see the ``cmd_*`` methods."""

    delimiter = b"\n"
    MAX_LENGTH = 1 << 20

    def __init__(self, reactor: Any, role: str) -> None:
        self.reactor = reactor
        self.role = role
        self.rawServers: list[Any] = []
        self.rawListening: Any = None  # The last raw port (as subclasses set it).
        self.rawPorts: list[Any] = []
        self.rawFactories: list[Any] = []
        self.rawClients: list[Any] = []
        self.setupConns: list[Any] = []
        self.clusters: list[Any] = []
        self.started: list[Any] = []
        self.region: Any = None
        self.profiler: cProfile.Profile | None = None

    # Protocol.

    def lineReceived(self, line: bytes) -> None:
        request = json.loads(line)
        ident = request.pop("id", None)
        name = request.pop("cmd")
        method = getattr(self, f"cmd_{name}", None)
        if method is None:
            d: Deferred[Any] = defer.fail(ValueError(f"unknown command {name!r}"))
        else:
            d = defer.maybeDeferred(method, **request)

        def ok(result: Any) -> None:
            self._reply({"id": ident, "ok": True, **(result or {})})

        def failed(failure: Any) -> None:
            log.failure("Command {name} failed.", failure, name=name)
            self._reply({"id": ident, "ok": False, "error": failure.getErrorMessage()})

        d.addCallbacks(ok, failed)

    def _reply(self, message: dict[str, Any]) -> None:
        self.transport.write(json.dumps(message).encode() + b"\n")

    def connectionLost(self, reason: Any = None) -> None:
        # The driver closed our standard input (or died): stop everything.
        d = defer.maybeDeferred(self._stopAll)
        d.addErrback(lambda f: log.failure("Stopping failed.", f))
        d.addBoth(lambda _: self.reactor.stop())

    def _stopAll(self) -> Deferred[Any]:
        waits: list[Deferred[Any]] = [self.cmd_clusters_stop()]
        for proto in self.rawClients + self.setupConns:
            _close(proto)
        ports = list(self.rawPorts)
        if self.rawListening is not None and self.rawListening not in ports:
            ports.append(self.rawListening)
        for port in ports:
            waits.append(defer.maybeDeferred(port.stopListening))
        if self.region is not None:
            waits.append(self.region.stop())
        return defer.DeferredList(waits)

    # Generic commands.

    def cmd_ping(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "role": self.role}

    def cmd_metrics(self, on: bool) -> dict[str, Any]:
        """Turn Prometheus metrics on or off in this process (for P1m)."""
        from provisioningserver import metrics

        return {"observed": metrics.observe(on)}

    def cmd_rss(self) -> dict[str, Any]:
        return {"rss": rss()}

    def cmd_cpu(self) -> dict[str, Any]:
        return {"cpu": time.process_time()}

    def _waitUntil(
        self, done: Any, timeout: float, describe: Any
    ) -> Deferred[dict[str, Any]]:
        """Poll ``done()`` every 2 ms until it is true (answer when, in
        monotonic seconds) or ``timeout`` seconds have passed (fail with
        ``describe()``)."""
        from twisted.internet.task import LoopingCall

        result: Deferred[dict[str, Any]] = Deferred()
        deadline = time.monotonic() + timeout

        def check() -> None:
            now = time.monotonic()
            if done():
                poll.stop()
                result.callback({"t": now})
            elif now > deadline:
                poll.stop()
                result.errback(TimeoutError(f"{describe()} after {timeout} s"))

        poll = LoopingCall(check)
        poll.clock = self.reactor
        poll.start(0.002)
        return result

    def cmd_profile_start(self, clock: str = "cpu") -> None:
        self.profiler = cProfile.Profile(
            time.thread_time if clock == "cpu" else time.perf_counter
        )
        self.profiler.enable()

    def cmd_profile_stop(self, path: str) -> None:
        if self.profiler is not None:
            self.profiler.disable()
            self.profiler.dump_stats(path)
            self.profiler = None

    # Raw AMP.

    def cmd_raw_listen(self, tls: bool = False) -> dict[str, Any]:
        """Listen for raw AMP on a free port of 127.0.0.1, over TLS (see
        :func:`benchmarks.raw.tlsServerOptions`) when ``tls``."""
        from benchmarks.raw import rawFactory, tlsServerOptions

        factory = rawFactory(self.rawServers)
        if tls:
            port = self.reactor.listenSSL(
                0, factory, tlsServerOptions(), interface="127.0.0.1"
            )
        else:
            port = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.rawPorts.append(port)
        self.rawListening = port
        self.rawFactories.append(factory)
        return {"port": port.getHost().port}

    def cmd_raw_open(self) -> dict[str, Any]:
        """How many raw AMP connections this process accepted are open."""
        return {"open": sum(len(f.open) for f in self.rawFactories)}

    def cmd_raw_wait_open(self, count: int, timeout: float = 60.0) -> Deferred[Any]:
        """Answer once exactly ``count`` accepted raw connections are open."""

        def current() -> int:
            return sum(len(f.open) for f in self.rawFactories)

        return self._waitUntil(
            lambda: current() == count,
            timeout,
            lambda: f"{current()} raw connections open, not {count},",
        )

    def _rawEndpoint(self, port: int, tls: bool) -> Any:
        from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS

        from benchmarks.raw import tlsClientOptions

        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", port)
        if tls:
            return wrapClientTLS(tlsClientOptions(), endpoint)
        return endpoint

    def cmd_raw_setup(self, port: int, n: int, tls: bool = False) -> Deferred[Any]:
        """Open ``n`` raw AMP connections to ``port``, one after another,
        each with one call (for the connection set-up figure); answer the
        seconds each took, from connecting until the call's answer."""
        from twisted.internet.endpoints import connectProtocol

        from benchmarks.raw import NAME, ORIGIN, RawClient, RawEatCheez

        endpoint = self._rawEndpoint(port, tls)

        async def run() -> dict[str, Any]:
            seconds = []
            for _ in range(n):
                start = time.perf_counter()
                proto = await connectProtocol(endpoint, RawClient())
                self.setupConns.append(proto)
                await proto.callRemote(RawEatCheez, name=NAME, origin=ORIGIN)
                seconds.append(time.perf_counter() - start)
            return {"seconds": seconds}

        return Deferred.fromCoroutine(run())

    def cmd_setup_drop(self) -> Deferred[Any]:
        """Close the connections :meth:`cmd_raw_setup` and
        :meth:`cmd_clusters_setup` opened; answer once all are closed."""
        conns, self.setupConns = self.setupConns, []
        waits = []
        for proto in conns:
            waits.append(proto.onConnectionLost)
            _close(proto)
        return defer.DeferredList(waits).addCallback(lambda _: None)

    def cmd_raw_connect(
        self, port: int, n: int, call: bool = True, tls: bool = False
    ) -> Deferred[Any]:
        """Open ``n`` raw AMP connections to ``port`` (over TLS when
        ``tls``), making one call on each when ``call``."""
        from twisted.protocols import amp

        from benchmarks.raw import NAME, ORIGIN, RawEatCheez

        class _Factory(Factory):
            noisy = False
            protocol = amp.AMP

        endpoint = self._rawEndpoint(port, tls)

        def connected(proto: Any) -> Any:
            self.rawClients.append(proto)
            if call:
                return proto.callRemote(RawEatCheez, name=NAME, origin=ORIGIN)
            return None

        attempts = [
            endpoint.connect(_Factory()).addCallback(connected) for _ in range(n)
        ]
        d = defer.gatherResults(attempts, consumeErrors=True)
        return d.addCallback(lambda _: {"connections": len(self.rawClients)})

    # Clusters.

    def cmd_clusters_create(
        self,
        url: str,
        secret: str,
        n: int,
        intervals: list[float],
        handshakeTimeout: float = 30.0,
        source: int | None = None,
        responders: bool = False,
    ) -> dict[str, Any]:
        """Create ``n`` cluster services (not started), each with its own
        UUID; answer their UUIDs.

        :param source: when given, cluster ``i`` connects to the region from
            its own loopback address, ``sourceAddress(source + i)``, as
            clusters on their own hosts do; else all from 127.0.0.1.
        :param responders: when true, the clusters also answer the
            benchmark's extra commands (:class:`benchmarks.cluster.BenchCluster`).
        """
        from provisioningserver.rpc.clusterservice import (
            ClusterClient,
            ClusterClientService,
        )

        protocol: Any = ClusterClient
        if responders:
            from benchmarks.cluster import BenchCluster

            protocol = BenchCluster

        def connector(index: int) -> Any:
            if source is None:
                return None
            return partial(self._connectFrom, sourceAddress(source + index))

        created = [
            ClusterClientService(
                url,
                bytes.fromhex(secret),
                str(uuid.uuid4()),
                intervals=intervals,
                handshakeTimeout=handshakeTimeout,
                connect=connector(i),
                protocol=protocol,
            )
            for i in range(n)
        ]
        self.clusters.extend(created)
        return {"uuids": [service.uuid for service in created]}

    def _connectFrom(
        self, address: str, host: str, port: int, factory: Factory
    ) -> Deferred[Any]:
        # What ClusterClientService does by default, from a chosen address.
        from twisted.internet.endpoints import HostnameEndpoint

        endpoint = HostnameEndpoint(
            self.reactor, host, port, 10.0, bindAddress=(address, 0)
        )
        return endpoint.connect(factory)

    def cmd_clusters_start(self) -> dict[str, Any]:
        """Start every created cluster service; answer when (monotonic)."""
        t0 = time.monotonic()
        for service in self.clusters:
            if not service.running:
                service.startService()
                self.started.append(service)
        return {"t0": t0}

    def cmd_freeze(self) -> dict[str, Any]:
        """Freeze the heap as a ``maas-rpc cluster`` process does once it
        serves (:func:`provisioningserver.utils.heap.freezeStartupHeap`)."""
        from provisioningserver.utils.heap import freezeStartupHeap

        return {"frozen": freezeStartupHeap()}

    def cmd_clusters_wait(
        self, perCluster: int, timeout: float = 60.0
    ) -> Deferred[Any]:
        """Answer once every started cluster has ``perCluster`` connections
        (authenticated and registered): when (monotonic) and how many."""
        from twisted.internet.task import LoopingCall

        done: Deferred[Any] = Deferred()
        deadline = time.monotonic() + timeout

        def count() -> int:
            return sum(len(s.connections) for s in self.started)

        def check() -> None:
            now = time.monotonic()
            if all(len(s.connections) >= perCluster for s in self.started):
                poll.stop()
                done.callback({"t": now, "connections": count()})
            elif now > deadline:
                poll.stop()
                done.errback(
                    TimeoutError(
                        f"{count()} of {perCluster * len(self.started)} cluster "
                        f"connections after {timeout} s"
                    )
                )

        poll = LoopingCall(check)
        poll.clock = self.reactor
        poll.start(0.002)
        return done

    def cmd_clusters_setup(
        self, port: int, eventloop: str, secret: str, n: int
    ) -> Deferred[Any]:
        """Connect ``n`` new clusters to the region event-loop at
        127.0.0.1:``port``, one after another, each with its own UUID and its
        own service (not started: no discovery, no polling), each connection
        through the whole handshake (secure channel, TLS, ``Authenticate``
        both ways, ``Register``); answer the seconds each took, from
        connecting until ``Register`` was answered, which the region does
        once the cluster is in its rotation.
        """
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        from provisioningserver.rpc.clusterservice import (
            ClusterClient,
            ClusterClientService,
        )

        key = bytes.fromhex(secret)
        url = f"http://127.0.0.1:{port}/MAAS"
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", port)

        async def run() -> dict[str, Any]:
            seconds = []
            for _ in range(n):
                service = ClusterClientService(
                    url, key, str(uuid.uuid4()), keepaliveInterval=3600.0
                )
                start = time.perf_counter()
                proto = ClusterClient(service, eventloop, ("127.0.0.1", port))
                self.setupConns.append(proto)
                await connectProtocol(endpoint, proto)
                await proto.ready.get()
                seconds.append(time.perf_counter() - start)
            return {"seconds": seconds}

        return Deferred.fromCoroutine(run())

    def cmd_clusters_stop(self) -> Deferred[Any]:
        services, self.started, self.clusters = self.started, [], []
        waits = [defer.maybeDeferred(s.stopService) for s in services if s.running]
        return defer.DeferredList(waits).addCallback(lambda _: None)

    # A region event-loop in this process.

    def cmd_region_start(self, dataDir: str) -> Deferred[Any]:
        import crochet

        from maasserver import eventloop
        from maasserver.config import RegionConfig

        crochet.no_setup()
        config = RegionConfig(
            data_dir=Path(dataDir), http_port=0, ports=range(0, 1), bind="127.0.0.1"
        )
        self.region = eventloop.loop
        d = eventloop.start(config)

        def started(_: Any) -> dict[str, Any]:
            services = eventloop.services
            rpc = services.getServiceNamed("rpc")
            return {
                "http": services.getServiceNamed("web").getPort(),
                "rpc": rpc.getPort(),
                "name": rpc.eventloop,
            }

        return d.addCallback(started)

    def cmd_region_count(self) -> dict[str, Any]:
        from maasserver import eventloop

        rpc = eventloop.services.getServiceNamed("rpc")
        return {"connections": sum(len(c) for c in rpc.connections.values())}

    def cmd_region_wait(self, count: int, timeout: float = 60.0) -> Deferred[Any]:
        """Answer once this event-loop has exactly ``count`` registered
        cluster connections."""
        from maasserver import eventloop

        rpc = eventloop.services.getServiceNamed("rpc")

        def current() -> int:
            return sum(len(c) for c in rpc.connections.values())

        return self._waitUntil(
            lambda: current() == count,
            timeout,
            lambda: f"{current()} cluster connections, not {count},",
        )


def _close(proto: Any) -> None:
    """Close a raw AMP or maas-rpc connection, once its output is sent.

    A maas-rpc connection is closed with its ``disconnect()``: it is its
    transport's producer, and a TLS transport's ``loseConnection()`` waits
    for the producer to unregister before it sends its close alert.
    """
    disconnect = getattr(proto, "disconnect", None)
    if disconnect is not None:
        disconnect()
    elif proto.transport is not None:
        proto.transport.loseConnection()


def _beginLogging() -> None:
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])],
        redirectStandardIO=False,
    )


def main(argv: list[str] | None = None) -> int:
    """Run a worker until its standard input closes.

    :param argv: ``[ROLE]``: ``raw``, ``cluster`` or ``region``.
    :return: the exit status.
    """
    args = sys.argv[1:] if argv is None else argv
    role = args[0] if args else "raw"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    _beginLogging()
    if role == "cluster":
        import provisioningserver.rpc.clusterservice  # noqa: F401
    elif role == "region":
        import maasserver.eventloop  # noqa: F401
    else:
        import benchmarks.raw  # noqa: F401
    from twisted.internet import reactor, stdio

    stdio.StandardIO(Control(reactor, role))
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
