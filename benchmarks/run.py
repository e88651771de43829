"""Run every benchmark figure and report it against its baseline.

``python -m benchmarks`` (or ``python benchmarks/run.py``) prints a table;
``--json`` prints a JSON object of every figure, baseline and ratio instead.
``--profile P1`` runs P1 under cProfile instead (see
:mod:`benchmarks.profiling`). See ``benchmarks/README.md`` for what each
figure measures.

This process is the region event-loop for P1-P4 (started with
:func:`maasserver.eventloop.start`, the reactor in crochet's thread, as a
plain Python program runs one); the clusters and the raw AMP peers are
worker processes (:mod:`benchmarks.worker`). P5 and P6 start regions of
their own.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from time import perf_counter
from typing import Any

if __package__ in (None, ""):  # Run as ``python benchmarks/run.py``.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.procs import ROOT, Processes, Worker, childEnv, discover, processCpu
from benchmarks.stats import Figure, percentile, render

__all__ = ["Bench", "main"]

#: Figures that can be selected with ``--only``.
FIGURES = ("P0", "P1", "P1M", "P1S", "P1D", "P2", "P3", "P4", "P5", "P6", "P7")

#: Poll intervals of the simulated clusters: disconnected, partly and fully
#: connected (seconds).
INTERVALS = [0.1, 0.25, 30.0]


def say(message: str) -> None:
    """Progress, on standard error."""
    print(message, file=sys.stderr, flush=True)


class Sizes:
    """How much work each trial does."""

    def __init__(self, quick: bool) -> None:
        scale = 4 if quick else 1
        self.seq = 3000 // scale  # P1, P3: calls per trial
        self.pipe = 10000 // scale  # P2: calls per trial
        self.window = 100  # P2: calls outstanding
        self.fanouts = 100 // scale  # P4: fan-outs per trial and size
        self.fanSizes = (50, 100)  # P4
        self.clusterProcs = 2  # P1-P4: cluster processes
        self.clustersPerProc = 50  # P1-P4: clusters in each
        self.p5Workers = 4  # P5: region event-loops
        self.p5Procs = 4  # P5: cluster processes
        self.p5PerProc = 25  # P5: clusters in each
        self.p6Step = 100 if quick else 250  # P6: connections per step
        self.p6Steps = 2 if quick else 3  # P6: steps
        self.grpcSeq = 1000 // scale  # P7
        self.grpcConc = 2000 // scale  # P7
        self.p0Conns = 20 if quick else 50  # P0: connections per trial and kind


class Bench:
    """One benchmark run: its processes, its region, its figures.

    :param trials: trials per figure.
    :param quick: do less work per trial (a smoke run; noisier figures).
    """

    def __init__(
        self, trials: int = 5, quick: bool = False, sameSource: bool = False
    ) -> None:
        self.trials = trials
        self.sameSource = sameSource
        self._nextSource = 0
        self.sizes = Sizes(quick)
        self.workdir = Path(tempfile.mkdtemp(prefix="maas-rpc-bench-"))
        self.procs = Processes(self.workdir)
        self.figures: list[Figure] = []
        self.timings: dict[str, float] = {}
        self.errors: list[str] = []
        self.skipped: dict[str, str] = {}
        self.regionStarted = False
        self.uuids: list[str] = []
        self.rawProtos: list[Any] = []
        self.rawTLSProtos: list[Any] = []
        self.tlsInUse: dict[str, str | None] = {}
        self.clusterWorkers: list[Worker] = []
        self.rawWorkers: list[Worker] = []

    # Plumbing.

    def sources(self, n: int) -> int | None:
        """The first of ``n`` fresh source-address indexes for simulated
        clusters (see :func:`benchmarks.worker.sourceAddress`), or ``None``
        when every cluster connects from 127.0.0.1 (``--same-source``)."""
        if self.sameSource:
            return None
        first, self._nextSource = self._nextSource, self._nextSource + n
        return first

    def inReactor(
        self, func: Callable[..., Any], *args: Any, timeout: float = 120
    ) -> Any:
        """Run ``func`` in the reactor thread; wait for its (Deferred) result."""
        import crochet

        return crochet.run_in_reactor(func)(*args).wait(timeout)

    def close(self) -> None:
        """Stop every process and the region; remove the work directory."""
        try:
            if self.regionStarted:
                from maasserver import eventloop

                self.inReactor(lambda: self._dropRaw(), timeout=30)
                eventloop.stop().wait(30)
        finally:
            self.procs.close()
            if self.errors or os.environ.get("MAAS_RPC_BENCH_KEEP"):
                say(f"kept {self.workdir} (every process's log is in it)")
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def _dropRaw(self) -> None:
        for proto in self.rawProtos + self.rawTLSProtos:
            if proto.transport is not None:
                proto.transport.loseConnection()
        self.rawProtos = []
        self.rawTLSProtos = []

    def _pair(
        self,
        measures: dict[str, Callable[[], Any]],
        trials: int | None = None,
    ) -> dict[str, list[Any]]:
        """Run each measure once per trial, rotating the order each trial so
        that drift on this noisy machine falls evenly on every measure."""
        names = list(measures)
        results: dict[str, list[Any]] = {name: [] for name in names}
        for trial in range(trials or self.trials):
            shift = trial % len(names)
            for name in names[shift:] + names[:shift]:
                gc.collect()
                results[name].append(measures[name]())
        return results

    # The region in this process, the clusters and the raw peers.

    def setUp(self) -> None:
        """Start this process's region event-loop, the cluster processes
        (each hosting many clusters) and the raw AMP peers."""
        from maasserver import eventloop
        from maasserver.config import RegionConfig
        from provisioningserver.security import get_or_create_shared_secret
        from provisioningserver.utils.heap import freezeStartupHeap

        s = self.sizes
        logging.basicConfig(
            filename=str(self.workdir / "driver.log"),
            level=logging.WARNING,
            format="%(asctime)s %(name)s %(message)s",
        )
        dataDir = self.workdir / "region"
        self.secret = get_or_create_shared_secret(dataDir / "secret")
        config = RegionConfig(
            data_dir=dataDir, http_port=0, ports=range(0, 1), bind="127.0.0.1"
        )
        eventloop.start(config).wait(60)
        self.regionStarted = True
        web = eventloop.services.getServiceNamed("web")
        self.maasURL = f"http://127.0.0.1:{web.getPort()}/MAAS"
        say(f"region event-loop (this process) discovery at {self.maasURL}/rpc/")

        clusters = [
            self.procs.worker("cluster", f"cluster-{n}") for n in range(s.clusterProcs)
        ]
        raws = [self.procs.worker("raw", f"raw-{n}") for n in range(s.clusterProcs)]
        self.clusterWorkers, self.rawWorkers = clusters, raws
        perProc: list[list[str]] = []
        for worker in clusters:
            answer = worker.request(
                "clusters_create",
                url=self.maasURL,
                secret=self.secret.hex(),
                n=s.clustersPerProc,
                intervals=INTERVALS,
                source=self.sources(s.clustersPerProc),
                responders=True,
            )
            perProc.append(answer["uuids"])
        for worker in clusters:
            worker.send("clusters_start")
        for worker in clusters:
            worker.receive()
        for worker in clusters:
            worker.request("clusters_wait", perCluster=1, timeout=120)
        # Interleave the processes, so any prefix is spread over all of them.
        self.uuids = [u for group in zip(*perProc, strict=True) for u in group]
        from maasserver.rpc import getAllClients

        connected = {c.ident for c in getAllClients()}
        missing = set(self.uuids) - connected
        if missing:
            raise RuntimeError(f"{len(missing)} clusters are not connected here")
        say(f"{len(self.uuids)} clusters in {len(clusters)} processes connected")

        ports = [w.request("raw_listen")["port"] for w in raws]
        tlsPorts = [w.request("raw_listen", tls=True)["port"] for w in raws]
        self.rawProtos = self.inReactor(self._connectRaw, ports, s.clustersPerProc)
        self.rawTLSProtos = self.inReactor(
            self._connectRaw, tlsPorts, s.clustersPerProc, True
        )
        say(
            f"{len(self.rawProtos)} raw AMP connections over TCP and "
            f"{len(self.rawTLSProtos)} over TLS to {len(raws)} processes"
        )
        client = self.ourClient()  # From this thread: the Client itself.
        self.tlsInUse = self.inReactor(self._tlsInUse, client)
        # As maas-rpc's processes do once they serve; the raw AMP peers are
        # left as stock Twisted runs them.
        frozen = [w.request("freeze")["frozen"] for w in clusters]
        frozen.append(freezeStartupHeap())
        say(f"start-up heaps frozen (objects: {', '.join(map(str, frozen))})")

    def _connectRaw(self, ports: list[int], each: int, tls: bool = False) -> Any:
        from twisted.internet import defer, reactor
        from twisted.internet.endpoints import (
            TCP4ClientEndpoint,
            connectProtocol,
            wrapClientTLS,
        )
        from twisted.protocols import amp

        from benchmarks.raw import tlsClientOptions

        attempts = []
        for _ in range(each):
            for port in ports:  # Interleaved, as the clusters are.
                endpoint: Any = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
                if tls:
                    endpoint = wrapClientTLS(tlsClientOptions(), endpoint)
                attempts.append(connectProtocol(endpoint, amp.AMP()))
        return defer.gatherResults(attempts, consumeErrors=True)

    def _tlsInUse(self, client: Any) -> Any:
        """What TLS the first cluster connection (``client``'s) and the first
        raw TLS connection negotiated (after a call on each, so that TLS is
        up)."""
        from twisted.internet import defer

        from benchmarks.raw import NAME, ORIGIN, tlsDescription
        from provisioningserver.rpc.cluster import EatCheez

        def describe(_: Any) -> dict[str, str | None]:
            return {
                "maas-rpc": tlsDescription(client.connection.transport),
                "raw AMP/TLS": tlsDescription(self.rawTLSProtos[0].transport),
            }

        calls = [client(EatCheez, name=NAME, origin=ORIGIN), self.rawCall(tls=True)()]
        return defer.gatherResults(calls, consumeErrors=True).addCallback(describe)

    # Calls.

    def rawCall(
        self,
        index: int = 0,
        tls: bool = False,
        command: Any = None,
        args: dict[str, Any] | None = None,
    ) -> Callable[[], Any]:
        """A raw AMP call on connection ``index`` (over TLS when ``tls``),
        for the reactor thread: ``command`` with ``args`` (by default
        ``EatCheez``, as stock AMP declares it)."""
        from benchmarks.raw import NAME, ORIGIN, RawEatCheez

        proto = (self.rawTLSProtos if tls else self.rawProtos)[index]
        if command is None:
            command, args = RawEatCheez, {"name": NAME, "origin": ORIGIN}
        return partial(proto.callRemote, command, **(args or {}))

    def ourClient(self, index: int = 0) -> Any:
        """A :class:`Client` for cluster ``index``, from ``getClientFor``."""
        from maasserver.rpc import getClientFor

        return getClientFor(self.uuids[index])

    def ourCall(
        self, index: int = 0, command: Any = None, args: dict[str, Any] | None = None
    ) -> Callable[[], Any]:
        """A call through one ``getClientFor`` client, for any thread:
        ``command`` with ``args`` (by default ``EatCheez``)."""
        from benchmarks.raw import NAME, ORIGIN
        from provisioningserver.rpc.cluster import EatCheez

        client = self.ourClient(index)
        if command is None:
            command, args = EatCheez, {"name": NAME, "origin": ORIGIN}
        return partial(client, command, **(args or {}))

    def ourFreshCall(self, index: int = 0) -> Callable[[], Any]:
        """``getClientFor(uuid)`` then the call, for the reactor thread."""
        from benchmarks.raw import NAME, ORIGIN
        from maasserver.rpc import getClientFor
        from provisioningserver.rpc.cluster import EatCheez

        uuid = self.uuids[index]

        def call() -> Any:
            d = getClientFor(uuid)
            return d.addCallback(lambda c: c(EatCheez, name=NAME, origin=ORIGIN))

        return call

    def seqRate(self, call: Callable[[], Any], n: int) -> float:
        """Sequential calls/s in the reactor thread."""
        from benchmarks.loops import sequential

        return n / self.inReactor(sequential, call, n)

    def pipeRate(self, call: Callable[[], Any], n: int) -> float:
        """Calls/s with ``window`` outstanding, in the reactor thread."""
        from benchmarks.loops import pipelined

        return n / self.inReactor(pipelined, call, n, self.sizes.window)

    @staticmethod
    def threadRate(call: Callable[[], Any], n: int) -> float:
        """Sequential calls/s from this (non-reactor) thread; ``call``
        returns a :class:`crochet.EventualResult` or the answer itself."""
        start = perf_counter()
        for _ in range(n):
            result = call()
            if hasattr(result, "wait"):
                result.wait(30)
        return n / (perf_counter() - start)

    @staticmethod
    def withCpu(
        rate: Callable[[], float], n: int, peer: Worker | None
    ) -> dict[str, float]:
        """Run ``rate()`` (``n`` calls); add the CPU time per call of this
        process (all its threads) and of ``peer``, in microseconds."""
        peer0 = peer.request("cpu")["cpu"] if peer is not None else 0.0
        cpu0 = time.process_time()
        result = {"rate": rate()}
        result["cpu"] = (time.process_time() - cpu0) / n * 1e6
        if peer is not None:
            result["peerCpu"] = (peer.request("cpu")["cpu"] - peer0) / n * 1e6
        return result

    def _cpuFigures(
        self,
        key: str,
        what: str,
        r: dict[str, list[dict[str, float]]],
        ours: str = "ours",
        peer: bool = True,
        base: str = "raw",
        baseName: str = "raw AMP",
    ) -> None:
        def col(name: str, field: str) -> list[float]:
            return [trial[field] for trial in r[name]]

        self.figures.append(
            Figure(
                f"{key}.cpu",
                f"{what}: CPU per call, caller (region) process",
                "µs",
                False,
                col(ours, "cpu"),
                baseName,
                col(base, "cpu"),
            )
        )
        if peer:
            self.figures.append(
                Figure(
                    f"{key}.cpu.peer",
                    f"{what}: CPU per call, responder (cluster) process",
                    "µs",
                    False,
                    col(ours, "peerCpu"),
                    baseName,
                    col(base, "peerCpu"),
                )
            )

    # Figures.

    def _againstRaw(
        self,
        key: str,
        what: str,
        unit: str,
        higherIsBetter: bool,
        values: dict[str, list[float]],
        baseline: str,
        target: tuple[str, float] | None,
        note: str = "",
        ours: str = "ours",
        absTarget: tuple[str, float] | None = None,
    ) -> None:
        """Two figures of ``values[ours]``: ``key`` against raw AMP over TLS
        (``values["rawTLS"]``, with ``target`` and ``absTarget``) and
        ``key.tcp`` against raw AMP over TCP (``values["raw"]``)."""
        self.figures.append(
            Figure(
                key,
                what,
                unit,
                higherIsBetter,
                values[ours],
                f"raw AMP/TLS {baseline}".rstrip(),
                values["rawTLS"],
                target=target,
                absTarget=absTarget,
                note=note,
            )
        )
        self.figures.append(
            Figure(
                f"{key}.tcp",
                f"{what}, vs raw over TCP",
                unit,
                higherIsBetter,
                values[ours],
                f"raw AMP/TCP {baseline}".rstrip(),
                values["raw"],
            )
        )

    def _tlsNote(self) -> str:
        ours = self.tlsInUse.get("maas-rpc")
        raw = self.tlsInUse.get("raw AMP/TLS")
        return f" TLS negotiated: maas-rpc {ours}; raw AMP/TLS {raw}."

    def _seqPair(
        self, calls: dict[str, tuple[Callable[[], Any], Worker]], n: int
    ) -> dict[str, list[dict[str, float]]]:
        """Sequential calls/s and CPU per call of each call, paired."""
        for call, _ in calls.values():
            self.seqRate(call, n // 5)
        return self._pair(
            {
                name: partial(self.withCpu, partial(self.seqRate, call, n), n, peer)
                for name, (call, peer) in calls.items()
            }
        )

    def p1(self) -> None:
        s = self.sizes
        rawPeer, ourPeer = self.rawWorkers[0], self.clusterWorkers[0]
        r = self._seqPair(
            {
                "raw": (self.rawCall(), rawPeer),
                "rawTLS": (self.rawCall(tls=True), rawPeer),
                "ours": (self.ourCall(), ourPeer),
                "fresh": (self.ourFreshCall(), ourPeer),
            },
            s.seq,
        )
        rate = {name: [trial["rate"] for trial in r[name]] for name in r}
        self._againstRaw(
            "P1",
            "sequential calls in the reactor, 1 conn",
            "calls/s",
            True,
            rate,
            "seq",
            (">=", 1.0),
            note="maas-rpc: one getClientFor() client, reused, over the secure "
            "channel (the default); raw: amp.AMP.callRemote on a plain amp.AMP "
            "connection, over TLS (same crypto: TLS 1.3, throwaway self-signed "
            "P-256 certificate, no verification) and over TCP." + self._tlsNote(),
        )
        self.figures.append(
            Figure(
                "P1'",
                "P1 with getClientFor() before each call",
                "calls/s",
                True,
                rate["fresh"],
                "raw AMP/TLS seq",
                rate["rawTLS"],
            )
        )
        self._cpuFigures("P1", "P1", r, base="rawTLS", baseName="raw AMP/TLS")
        self.figures.append(
            Figure(
                "P1r",
                "ref: raw AMP over TLS vs over TCP, seq",
                "calls/s",
                True,
                rate["rawTLS"],
                "raw AMP/TCP seq",
                rate["raw"],
                note="what TLS itself costs stock AMP, from the same trials.",
            )
        )

    def p1m(self) -> None:
        """P1 with Prometheus metrics on at both ends (MAAS_RPC_METRICS_PORT),
        against P1 with them off, back to back."""
        from provisioningserver import metrics

        s = self.sizes
        ours, peer = self.ourCall(), self.clusterWorkers[0]

        def measure(on: bool) -> dict[str, float]:
            metrics.observe(on)
            peer.request("metrics", on=on)
            try:
                return {"rate": self.seqRate(ours, s.seq)}
            finally:
                metrics.observe(False)
                peer.request("metrics", on=False)

        self.seqRate(ours, s.seq // 5)
        r = self._pair({"on": lambda: measure(True), "off": lambda: measure(False)})
        observed = metrics.observe(False)
        self.figures.append(
            Figure(
                "P1m",
                "P1 with metrics on (caller and responder)",
                "calls/s",
                True,
                [trial["rate"] for trial in r["on"]],
                "P1, metrics off",
                [trial["rate"] for trial in r["off"]],
                target=(">=", 0.9),
                note="metrics: provisioningserver.metrics.PrometheusObserver in "
                "both processes"
                + (
                    ""
                    if observed
                    else "; NOT MEASURED: this RPC core reports to "
                    "no observer, so both columns ran without metrics"
                ),
            )
        )

    def p2(self) -> None:
        s = self.sizes
        rawPeer, ourPeer = self.rawWorkers[0], self.clusterWorkers[0]
        calls = {
            "raw": (self.rawCall(), rawPeer),
            "rawTLS": (self.rawCall(tls=True), rawPeer),
            "ours": (self.ourCall(), ourPeer),
        }
        for call, _ in calls.values():
            self.pipeRate(call, s.pipe // 5)
        r = self._pair(
            {
                name: partial(
                    self.withCpu, partial(self.pipeRate, call, s.pipe), s.pipe, peer
                )
                for name, (call, peer) in calls.items()
            }
        )
        rate = {name: [trial["rate"] for trial in r[name]] for name in r}
        self._againstRaw(
            "P2",
            f"{s.window} calls outstanding, 1 conn",
            "calls/s",
            True,
            rate,
            "pipelined",
            (">=", 1.0),
        )
        self._cpuFigures("P2", "P2", r, base="rawTLS", baseName="raw AMP/TLS")
        self.figures.append(
            Figure(
                "P2r",
                f"ref: raw AMP over TLS vs over TCP, {s.window} outstanding",
                "calls/s",
                True,
                rate["rawTLS"],
                "raw AMP/TCP pipelined",
                rate["raw"],
            )
        )

    def p3(self) -> None:
        import crochet
        from twisted.internet import reactor
        from twisted.internet.threads import blockingCallFromThread

        from provisioningserver.utils.twisted import asynchronous

        s = self.sizes
        rawInReactor = self.rawCall()
        rawTLSInReactor = self.rawCall(tls=True)
        ours = self.ourCall()  # From this thread: returns an EventualResult.
        crochetAlone = crochet.run_in_reactor(rawInReactor)
        twistedAlone = partial(blockingCallFromThread, reactor, rawInReactor)
        # Our thread hop alone, around the same raw call as P3c and P3t.
        hopAlone = asynchronous(rawInReactor)
        for call in (ours, crochetAlone, twistedAlone, hopAlone):
            self.threadRate(call, s.seq // 5)
        self.seqRate(rawInReactor, s.seq // 5)
        self.seqRate(rawTLSInReactor, s.seq // 5)
        n = s.seq
        r = self._pair(
            {
                "raw": lambda: self.withCpu(
                    lambda: self.seqRate(rawInReactor, n), n, None
                ),
                "rawTLS": lambda: self.withCpu(
                    lambda: self.seqRate(rawTLSInReactor, n), n, None
                ),
                "ours": lambda: self.withCpu(lambda: self.threadRate(ours, n), n, None),
                "crochet": lambda: self.withCpu(
                    lambda: self.threadRate(crochetAlone, n), n, None
                ),
                "twisted": lambda: self.withCpu(
                    lambda: self.threadRate(twistedAlone, n), n, None
                ),
                "hop": lambda: self.withCpu(
                    lambda: self.threadRate(hopAlone, n), n, None
                ),
            }
        )

        def rate(name: str) -> list[float]:
            return [trial["rate"] for trial in r[name]]

        self.figures.append(
            Figure(
                "P3",
                "sequential calls from a thread, .wait()",
                "calls/s",
                True,
                rate("ours"),
                "raw AMP/TLS seq, in the reactor",
                rate("rawTLS"),
                target=(">=", 1.0),
                note="ours over the secure channel, called from another thread; "
                "the raw baselines run in the reactor (as P1's), over TLS and "
                "(P3.tcp) over TCP.",
            )
        )
        self.figures.append(
            Figure(
                "P3.tcp",
                "sequential calls from a thread, vs raw over TCP",
                "calls/s",
                True,
                rate("ours"),
                "raw AMP/TCP seq, in the reactor",
                rate("raw"),
            )
        )
        self.figures.append(
            Figure(
                "P3c",
                "ref: crochet alone around a raw call",
                "calls/s",
                True,
                rate("crochet"),
                "raw AMP seq",
                rate("raw"),
            )
        )
        self.figures.append(
            Figure(
                "P3t",
                "ref: blockingCallFromThread, raw call",
                "calls/s",
                True,
                rate("twisted"),
                "raw AMP seq",
                rate("raw"),
            )
        )
        self.figures.append(
            Figure(
                "P3h",
                "ref: our thread hop alone, raw call",
                "calls/s",
                True,
                rate("hop"),
                "crochet alone (P3c)",
                rate("crochet"),
                note="asynchronous() around the raw call, against "
                "crochet.run_in_reactor around it: the two hops compared.",
            )
        )
        self._cpuFigures("P3", "P3", r, peer=False)
        self._cpuFigures("P3c", "P3c (crochet alone)", r, ours="crochet", peer=False)
        self._cpuFigures("P3h", "P3h (our hop alone)", r, ours="hop", peer=False)

    def p4(self) -> None:
        from twisted.internet import reactor
        from twisted.internet.threads import blockingCallFromThread

        from benchmarks.loops import fanout
        from maasserver.utils.asynchronous import gather

        s = self.sizes
        failures: list[str] = []

        def ours(size: int) -> float:
            calls = [self.ourFreshCall(i) for i in range(size)]
            start = perf_counter()
            results = list(gather(calls, timeout=30))
            elapsed = perf_counter() - start
            bad = [r for r in results if not isinstance(r, dict)]
            if bad or len(results) != size:
                failures.append(f"gather of {size}: {len(results)} answers, {bad[:1]}")
            return elapsed * 1000

        def raw(size: int, tls: bool = False) -> float:
            calls = [self.rawCall(i, tls=tls) for i in range(size)]
            start = perf_counter()
            results = blockingCallFromThread(reactor, fanout, calls)
            elapsed = perf_counter() - start
            if not all(ok for ok, _ in results):
                failures.append(f"raw fan-out of {size} failed (tls={tls})")
            return elapsed * 1000

        def gatherRaw(size: int) -> float:
            calls = [self.rawCall(i) for i in range(size)]
            start = perf_counter()
            results = list(gather(calls, timeout=30))
            elapsed = perf_counter() - start
            if len(results) != size:
                failures.append(f"gather of {size} raw calls: {len(results)} answers")
            return elapsed * 1000

        measures: dict[str, Callable[[int], float]] = {
            "ours": ours,
            "raw": raw,
            "rawTLS": partial(raw, tls=True),
            "gatherRaw": gatherRaw,
        }
        names = list(measures)
        for size in s.fanSizes:
            if size > min(len(self.uuids), len(self.rawProtos), len(self.rawTLSProtos)):
                self.skipped[f"P4.{size}"] = "not enough clusters"
                continue
            for _ in range(3):
                for measure in measures.values():
                    measure(size)
            stats = {name: {"p50": [], "p99": []} for name in names}
            for trial in range(self.trials):
                gc.collect()
                samples: dict[str, list[float]] = {name: [] for name in names}
                for k in range(s.fanouts):
                    shift = (k + trial) % len(names)
                    for name in names[shift:] + names[:shift]:
                        samples[name].append(measures[name](size))
                for name, values in samples.items():
                    stats[name]["p50"].append(percentile(values, 50))
                    stats[name]["p99"].append(percentile(values, 99))
            for q in ("p50", "p99"):
                self._againstRaw(
                    f"P4.{size}.{q}",
                    f"gather() of a call to {size} clusters, {q}",
                    "ms",
                    False,
                    {name: stats[name][q] for name in names},
                    "fan-out",
                    ("<=", 1.1),
                    note=(
                        f"{s.fanouts} fan-outs per trial, from a non-reactor "
                        "thread; maas-rpc: gather() of getClientFor(uuid) then "
                        "the call, over the secure channel; raw: "
                        "blockingCallFromThread of a DeferredList of callRemote, "
                        "over TLS (P4.*) and over TCP (P4.*.tcp)."
                    )
                    if q == "p50" and size == s.fanSizes[0]
                    else "",
                )
            self.figures.append(
                Figure(
                    f"P4g.{size}.p50",
                    f"ref: gather() of {size} raw calls, p50",
                    "ms",
                    False,
                    stats["gatherRaw"]["p50"],
                    "raw AMP/TCP fan-out",
                    stats["raw"]["p50"],
                    note="gather()'s own cost: the same raw callRemote calls as "
                    "the baseline, through gather()."
                    if size == s.fanSizes[0]
                    else "",
                )
            )
        self.errors.extend(failures[:5])

    def p5(self) -> None:
        """A region of N event-loop processes (``maas-rpc region``), then
        cluster processes hosting 100 clusters: time until all are
        authenticated with every event-loop."""
        from provisioningserver.security import get_or_create_shared_secret

        s = self.sizes
        dataDir = self.workdir / "p5-region"
        secret = get_or_create_shared_secret(dataDir / "secret")
        # maas-rpc region binds the discovery port itself: find a free one.
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            httpPort = probe.getsockname()[1]
        url = f"http://127.0.0.1:{httpPort}/MAAS"
        env = childEnv(
            MAAS_RPC_DATA_DIR=str(dataDir),
            MAAS_RPC_HTTP_PORT=str(httpPort),
            MAAS_RPC_PORTS="0",
            MAAS_RPC_BIND="127.0.0.1",
        )
        started = perf_counter()
        supervisor = self.procs.command(
            [
                sys.executable,
                "-m",
                "maasserver.cli",
                "region",
                "--workers",
                str(s.p5Workers),
            ],
            env,
            "p5-region",
        )
        workers = [
            self.procs.worker("cluster", f"p5-cluster-{n}") for n in range(s.p5Procs)
        ]
        try:
            names = self._waitEventloops(f"{url}/rpc/", s.p5Workers)
            advertising = perf_counter() - started
            say(f"P5: {len(names)} event-loops advertising after {advertising:.1f} s")
            pids = [supervisor.pid]
            for name in names:
                pids.append(int(name.rsplit("pid=", 1)[1]))
                self.procs.adopt(pids[-1])
            # A first round, not counted, warms up code paths and caches.
            cold = self._p5Trial(workers, url, secret, len(names))
            say(f"P5: warm-up round: {cold:.2f} s")
            times: list[float] = []
            cpu: dict[str, list[float]] = {"region": [], "cluster": []}
            for _ in range(self.trials):
                times.append(self._p5Trial(workers, url, secret, len(names), pids, cpu))
                say(f"P5: trial {len(times)}: {times[-1]:.2f} s")
        finally:
            self.procs.stopWorkers(workers)
        clusters = s.p5Procs * s.p5PerProc
        self.figures.append(
            Figure(
                "P5",
                f"{clusters} clusters x {s.p5Workers} event-loops authenticated",
                "s",
                False,
                times,
                target=("<=", 5.0),
                note=f"{clusters} clusters in {s.p5Procs} processes, a region of "
                f"{s.p5Workers} event-loop processes ({clusters * s.p5Workers} "
                "connections): from starting the clusters (processes up, region "
                "advertising) until every cluster is registered with every "
                f"event-loop; poll intervals {INTERVALS} s; fresh clusters each "
                f"trial, after a warm-up round ({cold:.2f} s).",
            )
        )
        conns = clusters * s.p5Workers
        for side in ("region", "cluster"):
            self.figures.append(
                Figure(
                    f"P5.cpu.{side}",
                    f"P5: CPU per connection, {side} side",
                    "ms",
                    False,
                    cpu[side],
                    note=f"CPU time (user + system, /proc/<pid>/stat) over a trial "
                    f"of the region's {s.p5Workers} event-loops and its supervisor "
                    f"(region side), of the {s.p5Procs} cluster processes (cluster "
                    f"side), divided by the {conns} connections: discovery polls, "
                    "connecting, the secure channel (TLS), the handshake, "
                    "registering."
                    if side == "region"
                    else "",
                )
            )

    def _waitEventloops(self, url: str, count: int, timeout: float = 60) -> list[str]:
        deadline = time.monotonic() + timeout
        wake = threading.Event()
        while time.monotonic() < deadline:
            document = discover(url)
            loops = (document or {}).get("eventloops") or {}
            if len(loops) >= count:
                return sorted(loops)
            wake.wait(0.05)
        raise RuntimeError(f"fewer than {count} event-loops advertised at {url}")

    def _p5Trial(
        self,
        workers: list[Worker],
        url: str,
        secret: bytes,
        eventloops: int,
        regionPids: list[int] | None = None,
        cpu: dict[str, list[float]] | None = None,
    ) -> float:
        """One round of P5: create and start the clusters, wait until all
        are registered with every event-loop, stop them.

        :param regionPids: the region's processes, whose CPU is counted
            into ``cpu`` (as are the cluster workers') when both are given.
        :return: the seconds from starting the clusters until all were
            registered.
        """
        s = self.sizes
        for worker in workers:
            worker.request(
                "clusters_create",
                url=url,
                secret=secret.hex(),
                n=s.p5PerProc,
                intervals=INTERVALS,
                source=self.sources(s.p5PerProc),
            )
        gc.collect()
        counting = regionPids is not None and cpu is not None
        if counting:
            region0 = sum(processCpu(pid) for pid in regionPids or ())
            cluster0 = sum(worker.request("cpu")["cpu"] for worker in workers)
        t0 = time.monotonic()
        for worker in workers:
            worker.send("clusters_start")
        for worker in workers:
            worker.receive()
        for worker in workers:
            worker.send("clusters_wait", perCluster=eventloops, timeout=60)
        t1 = max(worker.receive(90)["t"] for worker in workers)
        if counting and cpu is not None:
            region1 = sum(processCpu(pid) for pid in regionPids or ())
            cluster1 = sum(worker.request("cpu")["cpu"] for worker in workers)
            conns = len(workers) * s.p5PerProc * eventloops
            cpu["region"].append((region1 - region0) / conns * 1000)
            cpu["cluster"].append((cluster1 - cluster0) / conns * 1000)
        for worker in workers:
            worker.send("clusters_stop")
        for worker in workers:
            worker.receive()
        return float(t1 - t0)

    def p6(self) -> None:
        """RSS per authenticated connection, each side in its own process,
        against raw AMP connections."""
        from provisioningserver.security import get_or_create_shared_secret

        s = self.sizes
        dataDir = self.workdir / "p6-region"
        secret = get_or_create_shared_secret(dataDir / "secret")
        region = self.procs.worker("region", "p6-region")
        cluster = self.procs.worker("cluster", "p6-cluster")
        rawServer = self.procs.worker("raw", "p6-raw-server")
        rawClient = self.procs.worker("raw", "p6-raw-client")
        workers = [region, cluster, rawServer, rawClient]
        try:
            info = region.request("region_start", dataDir=str(dataDir))
            url = f"http://127.0.0.1:{info['http']}/MAAS"
            port = rawServer.request("raw_listen")["port"]
            tlsPort = rawServer.request("raw_listen", tls=True)["port"]

            def rss(worker: Worker) -> int:
                return int(worker.request("rss")["rss"])

            def addClusters(n: int) -> tuple[int, int]:
                cluster.request(
                    "clusters_create",
                    url=url,
                    secret=secret.hex(),
                    n=n,
                    intervals=INTERVALS,
                    source=self.sources(n),
                )
                before = rss(cluster)
                cluster.request("clusters_start")
                cluster.request("clusters_wait", perCluster=1, timeout=120)
                return before, rss(cluster)

            # Warm up with one step, not counted: the first connections load
            # code, fill caches and grow the allocator's arenas.
            n = s.p6Step
            addClusters(n)
            rawClient.request("raw_connect", port=port, n=n, timeout=120)
            rawClient.request("raw_connect", port=tlsPort, n=n, tls=True, timeout=120)
            per: dict[str, list[float]] = {
                side: []
                for side in (
                    "region",
                    "cluster",
                    "server",
                    "client",
                    "serverTLS",
                    "clientTLS",
                )
            }
            for _ in range(s.p6Steps):
                r0 = rss(region)
                c0, c1 = addClusters(n)
                r1 = rss(region)
                s0, k0 = rss(rawServer), rss(rawClient)
                rawClient.request("raw_connect", port=port, n=n, timeout=120)
                s1, k1 = rss(rawServer), rss(rawClient)
                rawClient.request(
                    "raw_connect", port=tlsPort, n=n, tls=True, timeout=120
                )
                s2, k2 = rss(rawServer), rss(rawClient)
                for side, grown in (
                    ("region", r1 - r0),
                    ("cluster", c1 - c0),
                    ("server", s1 - s0),
                    ("client", k1 - k0),
                    ("serverTLS", s2 - s1),
                    ("clientTLS", k2 - k1),
                ):
                    per[side].append(grown / n / 1024)
            total = region.request("region_count")["connections"]
            expected = n * (1 + s.p6Steps)
            if total != expected:
                self.errors.append(
                    f"P6: region has {total} connections, not {expected}"
                )
        finally:
            self.procs.stopWorkers(workers)
        steps = f"{s.p6Steps} steps of {n} connections after a warm-up step"
        self._againstRaw(
            "P6.region",
            "RSS per authenticated conn, region",
            "KiB",
            False,
            {"ours": per["region"], "rawTLS": per["serverTLS"], "raw": per["server"]},
            "server",
            ("<=", 2.0),
            absTarget=("<=", 16.0),
            note=f"{steps} (trials are steps); RSS of each process from "
            "/proc/self/statm after gc.collect(); maas-rpc over the secure "
            "channel; raw connections (over TCP, then over TLS, in the same "
            "processes) made one call each.",
        )
        self._againstRaw(
            "P6.cluster",
            "RSS per authenticated conn, cluster",
            "KiB",
            False,
            {"ours": per["cluster"], "rawTLS": per["clientTLS"], "raw": per["client"]},
            "client",
            ("<=", 2.0),
            absTarget=("<=", 16.0),
            note="cluster side: each connection belongs to its own "
            "ClusterClientService, created before the 'before' RSS, so its "
            "discovery poll and handshake state count, the object itself not.",
        )

    def p7(self) -> None:
        """gRPC Python, sync and aio, against P1 and P2's maas-rpc paths."""
        from benchmarks import grpcbench

        if not grpcbench.available():
            self.skipped["P7"] = "grpcio is not installed (pip install .[bench])"
            return
        s = self.sizes
        servers = {
            mode: self.procs.worker(mode, f"grpc-{mode}", module="benchmarks.grpcbench")
            for mode in ("sync", "aio")
        }
        try:
            syncPort = servers["sync"].request("port")["port"]
            aioPort = servers["aio"].request("port")["port"]
            ours = self.ourCall()
            grpcbench.syncRate(syncPort, s.grpcSeq // 5)
            grpcbench.aioRate(aioPort, s.grpcSeq // 5)
            w = s.window
            r = self._pair(
                {
                    "oursSeq": lambda: self.seqRate(ours, s.grpcSeq),
                    "oursPipe": lambda: self.pipeRate(ours, s.grpcConc),
                    "syncSeq": lambda: grpcbench.syncRate(syncPort, s.grpcSeq),
                    "aioSeq": lambda: grpcbench.aioRate(aioPort, s.grpcSeq),
                    "syncConc": lambda: grpcbench.syncRate(syncPort, s.grpcConc, w),
                    "aioConc": lambda: grpcbench.aioRate(aioPort, s.grpcConc, w),
                }
            )
        finally:
            self.procs.stopWorkers(list(servers.values()))
        for key, what, ourKey, theirs, name in (
            (
                "P7.sync.seq",
                "P1 path vs gRPC sync, sequential",
                "oursSeq",
                "syncSeq",
                "gRPC sync",
            ),
            (
                "P7.aio.seq",
                "P1 path vs gRPC aio, sequential",
                "oursSeq",
                "aioSeq",
                "gRPC aio",
            ),
            (
                "P7.sync.conc",
                f"P2 path vs gRPC sync, {w} outstanding",
                "oursPipe",
                "syncConc",
                "gRPC sync",
            ),
            (
                "P7.aio.conc",
                f"P2 path vs gRPC aio, {w} concurrent",
                "oursPipe",
                "aioConc",
                "gRPC aio",
            ),
        ):
            self.figures.append(
                Figure(
                    key,
                    what,
                    "calls/s",
                    True,
                    r[ourKey],
                    name,
                    r[theirs],
                    target=(">=", 1.0),
                    note="gRPC: generic handler, bytes in and out, client in this "
                    "process, server in its own; sync server with 16 threads."
                    if key == "P7.sync.seq"
                    else "",
                )
            )

    def p0(self) -> None:
        """Connection set-up: see :mod:`benchmarks.connecting`."""
        from benchmarks.connecting import p0

        p0(self)

    def p1s(self) -> None:
        """A command on the stock path: see :mod:`benchmarks.slowpath`."""
        from benchmarks.slowpath import p1s

        p1s(self)

    def p1d(self) -> None:
        """Deferred-returning responders: see :mod:`benchmarks.slowpath`."""
        from benchmarks.slowpath import p1d

        p1d(self)

    # All of it.

    def run(self, only: set[str]) -> None:
        """Run the selected figures (all when ``only`` is empty)."""
        wanted = [f for f in FIGURES if not only or f in only]
        needsRegion = {"P1", "P1M", "P1S", "P1D", "P2", "P3", "P4", "P7"} & set(wanted)
        if needsRegion:
            started = perf_counter()
            self.setUp()
            self.timings["setup"] = perf_counter() - started
        for name in wanted:
            say(f"{name}...")
            started = perf_counter()
            getattr(self, name.lower())()
            self.timings[name] = perf_counter() - started
            say(f"{name} done in {self.timings[name]:.1f} s")


def _versions() -> dict[str, Any]:
    from importlib import metadata

    versions: dict[str, Any] = {"python": platform.python_version()}
    for dist in ("Twisted", "crochet", "grpcio", "maas-rpc"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def _commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="maas-rpc against raw Twisted AMP, measured in the same run.",
    )
    p.add_argument("--json", action="store_true", help="print JSON, not a table")
    p.add_argument(
        "--json-out", metavar="FILE", help="also write the JSON object to FILE"
    )
    p.add_argument("--trials", type=int, default=5, help="trials per figure (5)")
    p.add_argument(
        "--only",
        default="",
        help="comma-separated figures to run, e.g. P1,P2 (default: all)",
    )
    p.add_argument("--quick", action="store_true", help="less work per trial")
    p.add_argument(
        "--same-source",
        action="store_true",
        help="simulated clusters all connect from 127.0.0.1 (default: each "
        "from its own loopback address, as clusters on their own hosts do)",
    )
    p.add_argument(
        "--profile",
        metavar="FIG",
        choices=("P0", "P1", "P1S", "P1D", "P2", "P3", "P4"),
        type=str.upper,
        help="run FIG under cProfile, ours and raw AMP, and print the top "
        "functions, instead of the benchmarks",
    )
    p.add_argument(
        "--calls",
        type=int,
        default=None,
        help="calls to profile (--profile; 3000), or connections (--profile P0; 300)",
    )
    p.add_argument(
        "--top", type=int, default=25, help="functions per profile table (25)"
    )
    p.add_argument(
        "--profile-clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="what the profile measures: each thread's CPU time (default), or "
        "wall time (which counts waiting in epoll and being descheduled)",
    )
    p.add_argument(
        "--profile-raw",
        choices=("tls", "tcp"),
        default="tls",
        help="how --profile calls raw AMP: over TLS, as maas-rpc's secure "
        "channel runs (default), or over plain TCP",
    )
    p.add_argument(
        "--scale",
        action="store_true",
        help="run the scale figures (P8-P12) in a bed of network namespaces "
        "instead (root; see benchmarks/scale.py)",
    )
    p.add_argument("--sizes", help="--scale: numbers of clusters (100,250,500,1000)")
    p.add_argument(
        "--no-failover", action="store_true", help="--scale: skip the host failure"
    )
    p.add_argument("--plot", metavar="DIR", help="--scale: write one SVG per figure")
    p.add_argument(
        "--from", dest="from_json", metavar="FILE", help="--plot: a saved --scale JSON"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks (or a profile); see :func:`parser`.

    :return: 0, or 1 when a figure could not be measured.
    """
    args = parser().parse_args(argv)
    # Stop every process this run started on SIGTERM too, not only Ctrl-C.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.scale or args.plot:
        if not args.scale and not args.from_json:
            parser().error("--plot needs --scale or --from FILE")
        from benchmarks import scale

        return scale.main(args)
    if args.profile:
        from benchmarks.profiling import profile

        calls = args.calls or (300 if args.profile == "P0" else 3000)
        return profile(
            args.profile, calls, args.top, args.profile_clock, args.profile_raw
        )
    only = {f.strip().upper() for f in args.only.split(",") if f.strip()}
    unknown = only - set(FIGURES)
    if unknown:
        parser().error(f"unknown figures: {', '.join(sorted(unknown))}")
    bench = Bench(
        trials=max(1, args.trials), quick=args.quick, sameSource=args.same_source
    )
    started = perf_counter()
    loadBefore = os.getloadavg()
    status = 0
    try:
        bench.run(only)
    except Exception as error:  # noqa: BLE001 - report what was measured
        import traceback

        traceback.print_exc()
        bench.errors.append(f"{type(error).__name__}: {error}")
        status = 1
    finally:
        bench.close()
    total = perf_counter() - started
    meta = {
        "commit": _commit(),
        "cpus": os.cpu_count(),
        "trials": bench.trials,
        "quick": args.quick,
        "same_source": args.same_source,
        "total_seconds": round(total, 1),
        "loadavg_before": [round(x, 2) for x in loadBefore],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "seconds": {k: round(v, 1) for k, v in bench.timings.items()},
        "versions": _versions(),
        "skipped": bench.skipped,
        "errors": bench.errors,
    }
    document = {
        "meta": meta,
        "figures": {f.key: f.asDict() for f in bench.figures},
    }
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(document, indent=2) + "\n")
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        header = (
            f"maas-rpc benchmarks ({meta['commit']}), {bench.trials} trials each, "
            f"median [min-max]; ratio = median of per-trial ratios to the "
            f"baseline measured back to back; total {total:.0f} s"
        )
        header += (
            f"\nload average (1 min) {meta['loadavg_before'][0]} before, "
            f"{meta['loadavg_after'][0]} after, on {meta['cpus']} CPUs"
        )
        if max(loadBefore[0], meta["loadavg_after"][0]) > (os.cpu_count() or 1):
            header += " -- other work competed for the CPUs: expect noise"
        print(render(bench.figures, header))
        for name, why in bench.skipped.items():
            print(f"  {name} skipped: {why}")
        for error in bench.errors:
            print(f"  ERROR: {error}")
    if bench.errors:
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
