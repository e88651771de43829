"""``python -m benchmarks --profile P1``: where a call's time goes.

It sets up one cluster (in a worker process) connected to this process's
region event-loop and one raw AMP peer, then makes the same number of calls
through maas-rpc and through raw AMP under :mod:`cProfile`: in the reactor
thread of this process (the caller) and in the peer process (the
responder). It prints, per side, the top functions by cumulative and by
total (own) time, in microseconds per RPC call, and the functions whose own
time per call grew most over raw AMP.

The raw AMP peer is called over TLS by default, as maas-rpc's secure
channel runs over TLS (``--profile-raw tcp`` calls it over plain TCP).

P2 (100 outstanding) works the same way, and so do P1s (a command on the
stock path, :class:`benchmarks.raw.Enlist`) and P1d (a responder that
returns a fired Deferred). P3 (calls from a thread) and P4
(gather() of one call to each of 100 clusters, from a thread) also profile
the calling thread (the reactor thread is profiled separately; Python 3.11's
cProfile follows one thread per profiler).

cProfile's own overhead inflates every figure, more so for code making many
small calls; compare the two columns, not the absolutes with the benchmarks.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time
from pathlib import Path
from time import perf_counter
from typing import Any

from benchmarks.procs import ROOT
from benchmarks.run import Bench, say

__all__ = ["profile"]

Key = tuple[str, int, str]


def _label(key: Key) -> str:
    filename, line, name = key
    if filename == "~":
        return name  # A built-in.
    path = Path(filename)
    try:
        shown = str(path.resolve().relative_to(ROOT))
    except ValueError:
        parts = path.parts
        if "site-packages" in parts:
            index = len(parts) - 1 - parts[::-1].index("site-packages")
            shown = "/".join(parts[index + 1 :])
        else:
            shown = "/".join(parts[-2:])
    return f"{shown}:{line}({name})"


def _rows(stats: pstats.Stats) -> dict[Key, tuple[int, float, float]]:
    """function → (calls, own seconds, cumulative seconds)."""
    raw: dict[Key, Any] = stats.stats  # type: ignore[attr-defined]
    return {key: (nc, tt, ct) for key, (cc, nc, tt, ct, _) in raw.items()}


def _table(
    title: str,
    stats: pstats.Stats,
    calls: int,
    top: int,
    sortIndex: int,
    per: str = "RPC",
) -> str:
    rows = _rows(stats)
    ordered = sorted(rows.items(), key=lambda kv: kv[1][sortIndex], reverse=True)
    lines = [
        title,
        f"  {'calls/' + per:>9} {'own µs':>10} {'cum µs':>10}  function",
    ]
    for key, (nc, tt, ct) in ordered[:top]:
        lines.append(
            f"  {nc / calls:9.2f} {tt / calls * 1e6:10.1f} {ct / calls * 1e6:10.1f}  "
            f"{_label(key)}"
        )
    return "\n".join(lines)


def _diff(
    title: str,
    ours: pstats.Stats,
    raw: pstats.Stats,
    calls: int,
    top: int,
    per: str = "RPC",
    rawName: str = "raw AMP",
) -> str:
    a, b = _rows(ours), _rows(raw)
    deltas = []
    for key in set(a) | set(b):
        ncA, ttA, _ = a.get(key, (0, 0.0, 0.0))
        ncB, ttB, _ = b.get(key, (0, 0.0, 0.0))
        deltas.append((ttA - ttB, ncA - ncB, ttA, ttB, key))
    deltas.sort(reverse=True)
    totalA = sum(tt for _, tt, _ in a.values())
    totalB = sum(tt for _, tt, _ in b.values())
    lines = [
        title,
        f"  total own time: maas-rpc {totalA / calls * 1e6:.1f} µs/{per}, "
        f"{rawName} {totalB / calls * 1e6:.1f} µs/{per}",
        f"  {'+µs/' + per:>8} {'+calls/' + per:>10} {'ours µs':>8} {'raw µs':>7}  "
        "function",
    ]
    for delta, dnc, ttA, ttB, key in deltas[:top]:
        lines.append(
            f"  {delta / calls * 1e6:8.1f} {dnc / calls:10.2f} "
            f"{ttA / calls * 1e6:8.1f} {ttB / calls * 1e6:7.1f}  {_label(key)}"
        )
    return "\n".join(lines)


class _Profiled(Bench):
    """A :class:`Bench` with one cluster and one raw peer."""

    timer: Any = time.thread_time
    clusters = 1

    def setUp(self) -> None:
        self.sizes.clusterProcs = 1
        self.sizes.clustersPerProc = self.clusters
        super().setUp()
        self.cluster = self.procs.workers[0]
        self.raw = self.procs.workers[1]

    def reactorProfiled(self, figure: str, call: Any, n: int) -> tuple[Any, float]:
        """Run ``n`` calls in the reactor thread under cProfile."""
        from benchmarks.loops import pipelined, sequential

        def run() -> Any:
            profiler = cProfile.Profile(self.timer)
            profiler.enable()
            if figure == "P2":
                d = pipelined(call, n, self.sizes.window)
            else:
                d = sequential(call, n)

            def stop(elapsed: float) -> tuple[Any, float]:
                profiler.disable()
                return profiler, elapsed

            return d.addCallback(stop)

        return self.inReactor(run, timeout=600)  # type: ignore[no-any-return]

    def threadProfiled(self, unit: Any, n: int) -> tuple[Any, Any, float]:
        """Run ``unit()`` ``n`` times from this thread (it blocks until its
        calls are answered), profiling this thread and the reactor's."""
        reactorProfiler = cProfile.Profile(self.timer)
        self.inReactor(reactorProfiler.enable)
        threadProfiler = cProfile.Profile(self.timer)
        try:
            threadProfiler.enable()
        except ValueError:  # One profiler per process (Python 3.12+).
            threadProfiler = None  # type: ignore[assignment]
        start = perf_counter()
        for _ in range(n):
            unit()
        elapsed = perf_counter() - start
        if threadProfiler is not None:
            threadProfiler.disable()
        self.inReactor(reactorProfiler.disable)
        return threadProfiler, reactorProfiler, elapsed


def profile(
    figure: str, calls: int, top: int, clock: str = "cpu", raw: str = "tls"
) -> int:
    """Profile ``figure`` (P1, P2, P3, P4, P1s or P1d) for maas-rpc and for
    raw AMP.

    :param calls: calls to make under the profiler, each way (for P4, in
        fan-outs of 100).
    :param top: rows per table.
    :param clock: ``cpu`` (each thread's CPU time) or ``wall``.
    :param raw: how raw AMP is called: over ``tls`` or over ``tcp``.
    :return: the exit status.
    """
    if figure == "P0":
        from benchmarks.connecting import profileSetup

        return profileSetup(calls, top, clock)

    import crochet
    from twisted.internet import reactor
    from twisted.internet.threads import blockingCallFromThread

    from benchmarks.loops import fanout
    from benchmarks.raw import NAME, NETWORKS, ORIGIN, URL, EatCheezNow, Enlist
    from maasserver.utils.asynchronous import gather

    bench = _Profiled(trials=1)
    bench.timer = time.thread_time if clock == "cpu" else time.perf_counter
    fan = 100
    if figure == "P4":
        bench.clusters = fan
        calls = max(fan, calls // fan * fan)
    threaded = figure in ("P3", "P4")
    tls = raw == "tls"
    out: list[str] = []
    try:
        bench.setUp()
        if figure == "P4":
            ourCalls = [bench.ourFreshCall(i) for i in range(fan)]
            rawCalls = [bench.rawCall(i, tls=tls) for i in range(fan)]

            def ours() -> Any:
                return list(gather(ourCalls, timeout=30))

            def theirs() -> Any:
                return blockingCallFromThread(reactor, fanout, rawCalls)

            units = calls // fan
        elif figure == "P3":
            ourCall = bench.ourCall()
            rawCall = crochet.run_in_reactor(bench.rawCall(tls=tls))

            def ours() -> Any:
                return ourCall().wait(30)

            def theirs() -> Any:
                return rawCall().wait(30)

            units = calls
        else:
            command: Any = None
            args: dict[str, Any] = {}
            if figure == "P1S":
                command = Enlist
                args = {"uuid": bench.uuids[0], "networks": NETWORKS, "url": URL}
            elif figure == "P1D":
                command, args = EatCheezNow, {"name": NAME, "origin": ORIGIN}
            ours = bench.ourCall(command=command, args=args)
            theirs = bench.rawCall(tls=tls, command=command, args=args)
            units = calls
        if threaded:
            for _ in range(max(10, units // 5)):
                ours()
                theirs()
        else:
            warm = max(200, calls // 5)
            bench.seqRate(ours, warm)
            bench.seqRate(theirs, warm)
        results: dict[str, dict[str, Any]] = {}
        for name, call, peer in (
            ("maas-rpc", ours, bench.cluster),
            ("raw AMP", theirs, bench.raw),
        ):
            path = bench.workdir / f"peer-{name.replace(' ', '-')}.prof"
            peer.request("profile_start", clock=clock)
            if threaded:
                thread, reactorStats, elapsed = bench.threadProfiled(call, units)
            else:
                reactorStats, elapsed = bench.reactorProfiled(figure, call, calls)
                thread = None
            peer.request("profile_stop", path=str(path))
            results[name] = {
                "reactor": pstats.Stats(reactorStats),
                "thread": pstats.Stats(thread) if thread is not None else None,
                "peer": pstats.Stats(str(path)),
                "elapsed": elapsed,
            }
        ours_, raw_ = results["maas-rpc"], results["raw AMP"]
        rawThreadName = {
            "P3": "crochet alone",
            "P4": "blockingCallFromThread of a DeferredList",
        }.get(figure, "raw AMP")
        unit = "each thread's CPU time" if clock == "cpu" else "wall-clock time"
        out.append(
            f"{figure} under cProfile, {calls} calls each way; the responder "
            f"processes profiled too. Times are µs of {unit} per RPC call. "
            f"maas-rpc over its secure channel; raw AMP over {raw.upper()}."
        )
        for name, r in results.items():
            out.append(
                f"  {name}: {calls / r['elapsed']:,.0f} calls/s under the profiler, "
                f"{r['elapsed'] / calls * 1e6:.0f} µs/call wall"
            )
        out.append("")
        callerSide = "reactor thread"
        sections = [
            (
                f"CALLER (region, {callerSide}), maas-rpc, by cumulative time",
                ours_["reactor"],
                2,
            ),
            (
                f"CALLER (region, {callerSide}), maas-rpc, by own time",
                ours_["reactor"],
                1,
            ),
            (
                f"CALLER (region, {callerSide}), raw AMP, by own time",
                raw_["reactor"],
                1,
            ),
        ]
        if ours_["thread"] is not None:
            sections += [
                ("CALLER (calling thread), maas-rpc, by own time", ours_["thread"], 1),
                (
                    f"CALLER (calling thread), {rawThreadName}, by own time",
                    raw_["thread"],
                    1,
                ),
            ]
        sections += [
            (
                "RESPONDER (cluster process), maas-rpc, by cumulative time",
                ours_["peer"],
                2,
            ),
            ("RESPONDER (cluster process), maas-rpc, by own time", ours_["peer"], 1),
            ("RESPONDER (raw AMP process), raw AMP, by own time", raw_["peer"], 1),
        ]
        for title, stats, sortIndex in sections:
            out.append(_table(title, stats, calls, top, sortIndex))
            out.append("")
        out.append(
            _diff(
                "CALLER: own time per RPC, maas-rpc minus raw AMP (largest first)",
                ours_["reactor"],
                raw_["reactor"],
                calls,
                top,
            )
        )
        out.append("")
        if ours_["thread"] is not None:
            out.append(
                _diff(
                    f"CALLING THREAD: own time per RPC, maas-rpc minus {rawThreadName}",
                    ours_["thread"],
                    raw_["thread"],
                    calls,
                    top,
                )
            )
            out.append("")
        out.append(
            _diff(
                "RESPONDER: own time per RPC, maas-rpc minus raw AMP (largest first)",
                ours_["peer"],
                raw_["peer"],
                calls,
                top,
            )
        )
    finally:
        bench.close()
    print("\n".join(out))
    say("(figures are per RPC call, averaged over all calls)")
    return 0 if out else 1


if __name__ == "__main__":
    sys.exit(profile(sys.argv[1] if len(sys.argv) > 1 else "P1", 3000, 25))
