"""A cluster host of the test bed: many clusters in one process.

``python -m benchmarks.clusterhost cluster`` is a :mod:`benchmarks.worker`
(the same JSON-lines commands, the reactor in the main thread) with the
commands the bed needs on top (``bed_*``):

* clusters that connect from an address of their own on the host (one per
  cluster, as clusters on their own hosts do), with the poll, keepalive and
  timeout settings given, and that note when each connection enters and
  leaves the rotation (:meth:`BedControl.cmd_bed_events`);
* a stream of :class:`~benchmarks.bednote.BedNote` calls from every
  cluster to whichever event-loop ``getClient()`` picks, each call with a
  token of its own and a deadline, every outcome recorded
  (:meth:`BedControl.cmd_bed_stream_start`);
* raw AMP peers listening on, and connecting to, the bed's addresses (the
  baselines);
* a count of discovery requests, and a burst of them (P11).

``python -m benchmarks.clusterhost raw`` is the same with only the raw AMP
peer loaded (it loads none of maas-rpc's RPC modules).

Every time is :func:`time.monotonic`, which on Linux is the same clock in
every process of the machine.
"""

from __future__ import annotations

import random
import resource
import sys
import time
import uuid
from functools import partial
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory

from benchmarks.worker import Control, _beginLogging

__all__ = ["BedControl", "main"]


class BedControl(Control):
    """:class:`benchmarks.worker.Control` and the bed's commands."""

    def __init__(self, reactor: Any, role: str) -> None:
        super().__init__(reactor, role)
        self.events: list[tuple[float, str, str, str]] = []
        self.calls: list[dict[str, Any]] = []
        self.inFlight: dict[str, dict[str, Any]] = {}
        self.stream: Any = None
        self.fetches = 0
        self.seq = 0
        self.label = "c"

    # Clusters.

    def cmd_bed_create(
        self,
        url: str,
        secret: str,
        addresses: list[str],
        intervals: list[float],
        keepalive: list[float] | None = None,
        connectTimeout: float = 10.0,
        handshakeTimeout: float = 30.0,
        label: str = "c",
    ) -> dict[str, Any]:
        """Create one cluster service per address (not started).

        :param url: the ``MAAS_URL``.
        :param secret: the shared secret, in hex.
        :param addresses: each cluster's source address.
        :param intervals: poll intervals (disconnected, partial, connected).
        :param keepalive: ``[interval, timeout]`` of the keepalive.
        :param connectTimeout: seconds per TCP connection attempt.
        :param handshakeTimeout: seconds a handshake may take.
        :param label: prefix of this host's call tokens.
        :return: ``{"uuids": [...]}``.
        """
        from provisioningserver.rpc.clusterservice import ClusterClientService

        self.label = label
        interval, timeout = keepalive or (30.0, 10.0)
        protocol = _trackingProtocol(self.events)
        created = []
        for address in addresses:
            service = ClusterClientService(
                url,
                bytes.fromhex(secret),
                str(uuid.uuid4()),
                protocol=protocol,
                intervals=intervals,
                handshakeTimeout=handshakeTimeout,
                connectTimeout=connectTimeout,
                keepaliveInterval=interval,
                keepaliveTimeout=timeout,
                connect=partial(self._connectFromTimeout, address, connectTimeout),
            )
            service._fetch = self._counting(service._fetch)
            created.append(service)
        self.clusters.extend(created)
        return {"uuids": [s.uuid for s in created]}

    def _connectFromTimeout(
        self, address: str, timeout: float, host: str, port: int, factory: Factory
    ) -> Deferred[Any]:
        # What ClusterClientService does by default, from a chosen address.
        from twisted.internet.endpoints import HostnameEndpoint

        endpoint = HostnameEndpoint(
            self.reactor, host, port, timeout, bindAddress=(address, 0)
        )
        return endpoint.connect(factory)

    def _counting(self, fetch: Any) -> Any:
        def counted(url: str) -> Any:
            self.fetches += 1
            return fetch(url)

        return counted

    def cmd_bed_events(self, since: int = 0) -> dict[str, Any]:
        """The rotation's events from index ``since``: ``[t, uuid,
        eventloop, "up" | "down"]`` each."""
        return {"events": self.events[since:], "next": len(self.events)}

    def cmd_bed_state(self) -> dict[str, Any]:
        """Each started cluster's connected event-loops, and poll interval."""
        return {
            "clusters": {
                s.uuid: {"connected": sorted(s.connections), "interval": s.interval}
                for s in self.started
            },
            "t": time.monotonic(),
        }

    def cmd_bed_fetches(self) -> dict[str, Any]:
        """Discovery requests made so far, by all clusters here."""
        return {"fetches": self.fetches, "t": time.monotonic()}

    # The call stream.

    def cmd_bed_stream_start(self, period: float, deadline: float) -> dict[str, Any]:
        """Every ``period`` seconds, every started cluster calls
        :class:`~benchmarks.bednote.BedNote` once, with ``deadline``."""
        from twisted.internet.task import LoopingCall

        self.stream = LoopingCall(self._tick, deadline)
        self.stream.clock = self.reactor
        self.stream.start(period, now=True)
        return {"t": time.monotonic()}

    def _tick(self, deadline: float) -> None:
        from benchmarks.bednote import BedNote
        from provisioningserver.rpc.exceptions import NoConnectionsAvailable

        for service in self.started:
            self.seq += 1
            token = f"{self.label}-{self.seq}"
            record: dict[str, Any] = {
                "token": token,
                "cluster": service.uuid,
                "start": time.monotonic(),
            }
            try:
                conns = list(service.connections.values())
                if not conns:
                    raise NoConnectionsAvailable("no region connection")
                conn = random.choice(conns)
            except NoConnectionsAvailable as error:
                record.update(
                    end=record["start"],
                    eventloop=None,
                    error=type(error).__name__,
                    message=str(error),
                )
                self.calls.append(record)
                continue
            from provisioningserver.rpc.common import Client

            record["eventloop"] = conn.eventloop
            self.inFlight[token] = record
            d = Client(conn)(BedNote, token=token, _timeout=deadline)
            d.addCallbacks(
                partial(self._answered, record), partial(self._failed, record)
            )

    def _finish(self, record: dict[str, Any]) -> None:
        record["end"] = time.monotonic()
        if self.inFlight.pop(record["token"], None) is None:
            record["twice"] = True  # Completed already: answered twice.
        self.calls.append(record)

    def _answered(self, record: dict[str, Any], answer: dict[str, Any]) -> None:
        record["answeredBy"] = answer.get("eventloop")
        self._finish(record)

    def _failed(self, record: dict[str, Any], failure: Any) -> None:
        record["error"] = type(failure.value).__name__
        record["message"] = str(failure.value)[:200]
        self._finish(record)

    def cmd_bed_stream_stop(self, timeout: float = 30.0) -> Deferred[Any]:
        """Stop the stream; answer every call's record once none is in
        flight (or ``timeout`` seconds have passed)."""
        if self.stream is not None and self.stream.running:
            self.stream.stop()
        done: Deferred[Any] = Deferred()
        limit = time.monotonic() + timeout
        from twisted.internet.task import LoopingCall

        def check() -> None:
            if not self.inFlight or time.monotonic() > limit:
                poll.stop()
                calls, self.calls = self.calls, []
                pending = list(self.inFlight.values())
                done.callback({"calls": calls, "pending": pending})

        poll = LoopingCall(check)
        poll.clock = self.reactor
        poll.start(0.05)
        return done

    # Raw AMP on the bed's addresses.

    def cmd_bed_raw_listen(
        self, interface: str, port: int = 0, tls: bool = False
    ) -> dict[str, Any]:
        """Listen for raw AMP on ``interface``, over TCP, or over TLS (the
        secure channel's crypto: :func:`benchmarks.raw.tlsServerOptions`)
        when ``tls``."""
        from benchmarks.raw import rawFactory, tlsServerOptions

        factory = rawFactory(self.rawServers)
        if tls:
            listening = self.reactor.listenSSL(
                port, factory, tlsServerOptions(), interface=interface, backlog=4096
            )
        else:
            listening = self.reactor.listenTCP(
                port, factory, interface=interface, backlog=4096
            )
        self.rawPorts.append(listening)
        return {"port": listening.getHost().port}

    def cmd_bed_raw_connect(
        self, targets: list[list[Any]], n: int, call: bool = True, tls: bool = False
    ) -> Deferred[Any]:
        """Open ``n`` raw AMP connections spread over ``targets`` (``[host,
        port]`` pairs), over TLS when ``tls``, making one call on each when
        ``call``; answer when (monotonic) the last one was done."""
        from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
        from twisted.protocols import amp

        from benchmarks.raw import NAME, ORIGIN, RawEatCheez, tlsClientOptions

        class _Factory(Factory):
            noisy = False
            protocol = amp.AMP

        def connected(proto: Any) -> Any:
            self.rawClients.append(proto)
            if call:
                return proto.callRemote(RawEatCheez, name=NAME, origin=ORIGIN)
            return None

        attempts = []
        for i in range(n):
            host, port = targets[i % len(targets)]
            endpoint: Any = TCP4ClientEndpoint(self.reactor, host, port, timeout=30)
            if tls:
                endpoint = wrapClientTLS(tlsClientOptions(), endpoint)
            attempts.append(endpoint.connect(_Factory()).addCallback(connected))
        d = defer.gatherResults(attempts, consumeErrors=True)
        return d.addCallback(
            lambda _: {"connections": len(self.rawClients), "t": time.monotonic()}
        )

    # Discovery load.

    def cmd_bed_http(self, url: str, n: int, concurrency: int = 10) -> Deferred[Any]:
        """GET ``url`` ``n`` times, ``concurrency`` at a time (new
        connections, as clusters poll); answer the status codes seen."""
        import treq

        codes: dict[str, int] = {}
        sem = defer.DeferredSemaphore(concurrency)

        async def one() -> None:
            response = await treq.get(url, timeout=30, persistent=False)
            await treq.content(response)
            key = str(response.code)
            codes[key] = codes.get(key, 0) + 1

        started = time.monotonic()
        d = defer.gatherResults(
            [sem.run(lambda: Deferred.fromCoroutine(one())) for _ in range(n)],
            consumeErrors=True,
        )
        return d.addCallback(
            lambda _: {"codes": codes, "seconds": time.monotonic() - started}
        )


def _trackingProtocol(events: list[tuple[float, str, str, str]]) -> Any:
    """A :class:`ClusterClient` that notes entering and leaving the
    rotation in ``events``."""
    from provisioningserver.rpc.clusterservice import ClusterClient

    class TrackingClusterClient(ClusterClient):
        __slots__ = ("_inRotation",)

        def connectionMade(self) -> None:
            self._inRotation = False
            super().connectionMade()
            self.ready.get().addCallbacks(self._entered, lambda _: None)

        def _entered(self, _: Any) -> None:
            if self.isConnected():
                self._inRotation = True
                events.append(
                    (time.monotonic(), self.service.uuid, self.eventloop, "up")
                )

        def connectionLost(self, reason: Any = None) -> None:
            if self._inRotation:
                self._inRotation = False
                events.append(
                    (time.monotonic(), self.service.uuid, self.eventloop, "down")
                )
            super().connectionLost(reason)

    return TrackingClusterClient


def main(argv: list[str] | None = None) -> int:
    """Run until standard input closes.

    :param argv: ``[ROLE]``: ``cluster`` or ``raw``.
    :return: the exit status.
    """
    args = sys.argv[1:] if argv is None else argv
    role = args[0] if args else "cluster"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    _beginLogging()
    if role == "cluster":
        import provisioningserver.rpc.clusterservice  # noqa: F401
    else:
        import benchmarks.raw  # noqa: F401
    from twisted.internet import reactor, stdio

    stdio.StandardIO(BedControl(reactor, role))
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
