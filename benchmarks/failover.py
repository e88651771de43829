"""A whole region host fails while calls flow: what it costs, measured.

:func:`runFailover` builds a bed (:mod:`benchmarks.netbed`) of three region
hosts, each running ``maas-rpc region --workers 2`` against one PostgreSQL,
and cluster hosts running many clusters that discover the region through one
``MAAS_URL``. While calls flow both ways, it fails one region host by
cutting its link, lets it come back, then fails another by SIGKILLing all
its processes, and measures each failure:

* **recovery**: for each cluster, from the moment the failure is visible to
  it (its first connection to the dead host leaves the rotation) until none
  of its connections goes to the dead host, so that every call it makes
  reaches a live event-loop (it never lost its connections to the other
  hosts' event-loops, which keep reaching it throughout);
* **calls**: each call a cluster made (``BedNote``, one token each, to the
  event-loop ``getClient()`` picks, with a deadline) is *in flight to the
  dead host* when it was sent to one of its event-loops: it must fail with a
  clear error (connection lost, or ``CallTimedOut``) within its deadline.
  Any other failed call is *lost*. A token the region answered twice (in
  the event-loops' notes, or a completion seen twice) is a *duplicate*;
* **region calls**: every event-loop keeps calling every cluster
  (``EatCheez`` through its control socket, as ``maas-rpc call`` does);
  calls from live hosts must all be answered; the cut-off host's calls must
  fail within their deadline;
* **expiry**: seconds until the dead host's advertisements are gone from
  the store.

The test (``tests/multihost``) asserts generous bounds on these; ``python
-m benchmarks --scale`` reports them.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.netbed import Bed, Host, Region, waitUntil

__all__ = ["CLEAR_ERRORS", "Settings", "runFailover"]

#: What a call in flight to a dead host may fail with: a lost connection,
#: or its deadline.
CLEAR_ERRORS = frozenset(
    {"ConnectionLost", "ConnectionDone", "ConnectionAborted", "CallTimedOut"}
)


class Settings:
    """The bed's size and timing.

    :ivar clusterHosts: cluster host processes (one namespace each).
    :ivar perHost: clusters in each.
    :ivar workers: event-loops per region host.
    :ivar intervals: the clusters' poll intervals (the first is the "fast
        poll interval").
    :ivar keepalive: the clusters' keepalive interval and timeout.
    :ivar period: seconds between two calls of one cluster.
    :ivar deadline: each call's deadline.
    :ivar advertise: the region's advertisement interval and expiry.
    """

    clusterHosts = 2
    perHost = 20
    workers = 2
    intervals = (0.5, 1.0, 5.0)
    keepalive = (1.0, 1.0)
    connectTimeout = 2.0
    period = 0.25
    deadline = 5.0
    advertise = (1.0, 4.0)


class _RegionCalls(threading.Thread):
    """Calls every cluster through one event-loop's control socket, again
    and again, and records each round."""

    def __init__(self, host: str, path: Path, deadline: float) -> None:
        super().__init__(daemon=True, name=f"calls-{path.name}")
        self.host = host
        self.path = path
        self.deadline = deadline
        self.rounds: list[dict[str, Any]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        from provisioningserver.control import ControlError, ask

        request = {
            "op": "call",
            "command": "EatCheez",
            "arguments": {"name": "Brie", "origin": "France"},
            "timeout": self.deadline,
        }
        while not self.halt.is_set():
            start = time.monotonic()
            try:
                answer = ask(self.path, request, timeout=self.deadline + 10)
            except ControlError as error:
                self.rounds.append(
                    {"start": start, "end": time.monotonic(), "gone": str(error)}
                )
                return  # The event-loop is gone.
            results = answer.get("results", [])
            errors = Counter(r["error"]["code"] for r in results if "error" in r)
            self.rounds.append(
                {
                    "start": start,
                    "end": time.monotonic(),
                    "answered": sum(1 for r in results if "answer" in r),
                    "errors": dict(errors),
                }
            )
            self.halt.wait(0.2)


class _Run:
    def __init__(self, settings: Settings, say: Callable[[str], None]) -> None:
        self.s = settings
        self.say = say
        self.bed = Bed()
        self.regions: dict[str, Region] = {}
        self.peers: list[Any] = []
        self.uuids: list[str] = []
        self.callers: list[_RegionCalls] = []
        self.phases: list[dict[str, Any]] = []

    def build(self) -> None:
        s, bed = self.s, self.bed
        t0 = time.monotonic()
        bed.startPostgres()
        hosts = [bed.addHost(f"mh-r{i}", f"10.250.1.{i}") for i in (1, 2, 3)]
        for host in hosts:
            self.regions[host.name] = bed.startRegion(
                host,
                s.workers,
                MAAS_RPC_REGION_PROTOCOL="benchmarks.bedext:BedRegion",
                MAAS_RPC_ADVERTISE_INTERVAL=str(s.advertise[0]),
                MAAS_RPC_ADVERTISE_EXPIRY=str(s.advertise[1]),
                MAAS_RPC_DRAIN_TIMEOUT="1",
            )
        for k in range(s.clusterHosts):
            addresses = [f"10.250.{16 + k}.{i + 1}" for i in range(s.perHost)]
            host = bed.addHost(f"mh-c{k + 1}", f"10.250.2.{k + 1}", addresses)
            peer = host.peer("benchmarks.clusterhost", "cluster", host.name)
            self.uuids += peer.request(
                "bed_create",
                url=bed.maasURL,
                secret=bed.secret.hex(),
                addresses=addresses,
                intervals=list(s.intervals),
                keepalive=list(s.keepalive),
                connectTimeout=s.connectTimeout,
                handshakeTimeout=10.0,
                label=host.name,
            )["uuids"]
            self.peers.append(peer)
        names = bed.waitAdvertised(3 * s.workers, timeout=90)
        self.say(f"bed: {len(names)} event-loops advertising after "
                 f"{time.monotonic() - t0:.1f} s")  # fmt: skip
        t1 = time.monotonic()
        for peer in self.peers:
            peer.request("clusters_start")
        for peer in self.peers:
            peer.request("clusters_wait", perCluster=3 * s.workers, timeout=90)
        self.formation = time.monotonic() - t1
        self.say(
            f"bed: {len(self.uuids)} clusters x {len(names)} event-loops "
            f"connected in {self.formation:.2f} s"
        )

    def state(self) -> dict[str, list[str]]:
        connected: dict[str, list[str]] = {}
        for peer in self.peers:
            for uuid, info in peer.request("bed_state")["clusters"].items():
                connected[uuid] = info["connected"]
        return connected

    def startFlows(self) -> None:
        for region in self.regions.values():
            for path in region.controlSockets():
                caller = _RegionCalls(region.host.name, path, self.s.deadline)
                caller.start()
                self.callers.append(caller)
        for peer in self.peers:
            peer.request(
                "bed_stream_start", period=self.s.period, deadline=self.s.deadline
            )

    def observe(self, seconds: float) -> None:
        threading.Event().wait(seconds)  # Calls flow meanwhile.

    def fail(self, region: Region, how: str) -> dict[str, Any]:
        bed, host = self.bed, region.host
        dead = f"{host.name}:"
        self.say(f"failure: {how} {host.name}")
        t = time.monotonic()
        if how == "cut":
            bed.cut(host)
        else:
            region.kill()

        def clear() -> bool:
            return all(
                not any(n.startswith(dead) for n in loops)
                for loops in self.state().values()
            )

        waitUntil(clear, f"every cluster off {host.name}", 30, 0.1)
        tClear = time.monotonic()
        waitUntil(
            lambda: not any(n.startswith(dead) for n in bed.advertised()),
            f"{host.name}'s advertisements expired",
            30,
            0.1,
        )
        tExpired = time.monotonic()
        self.observe(1.0)
        phase = {
            "how": how,
            "host": host.name,
            "t": t,
            "clearSeen": tClear - t,
            "expired": tExpired - t,
            "end": time.monotonic(),
        }
        self.phases.append(phase)
        return phase

    def heal(self, host: Host) -> float:
        """Plug ``host`` back in; seconds until every cluster is connected
        to every event-loop again."""
        t = time.monotonic()
        self.bed.restore(host)
        want = 3 * self.s.workers
        waitUntil(
            lambda: all(len(v) >= want for v in self.state().values()),
            f"every cluster back on {host.name}",
            60,
            0.1,
        )
        return time.monotonic() - t

    def collect(self) -> tuple[list[dict[str, Any]], list[Any], Counter[str]]:
        calls: list[dict[str, Any]] = []
        events: list[Any] = []
        for peer in self.peers:
            answer = peer.request("bed_stream_stop", timeout=self.s.deadline + 5)
            calls += answer["calls"]
            calls += [dict(p, pending=True) for p in answer["pending"]]
            events += peer.request("bed_events")["events"]
        for caller in self.callers:
            caller.halt.set()
        for caller in self.callers:
            caller.join(self.s.deadline + 15)
        notes: Counter[str] = Counter()
        for path in self.bed.workdir.glob("mh-r*-data/notes-*.log"):
            notes.update(path.read_text().split())
        return calls, events, notes


def _analyse(
    run: _Run,
    calls: list[dict[str, Any]],
    events: list[Any],
    notes: Counter[str],
) -> dict[str, Any]:
    s = run.s
    out: dict[str, Any] = {"formation": run.formation, "phases": []}
    answered = [c for c in calls if "answeredBy" in c]
    out["calls"] = len(calls)
    out["answered"] = len(answered)
    out["duplicates"] = sum(1 for c in calls if c.get("twice")) + sum(
        1 for n in notes.values() if n > 1
    )
    out["wrongAnswerer"] = sum(1 for c in answered if c["answeredBy"] != c["eventloop"])
    out["answeredNotNoted"] = sum(1 for c in answered if notes[c["token"]] != 1)
    out["pending"] = sum(1 for c in calls if c.get("pending"))
    classified: set[str] = set()
    for phase in run.phases:
        dead = f"{phase['host']}:"
        t, end = phase["t"], phase["end"]
        # Recovery per cluster: from its first lost connection to the dead
        # host to its last.
        downs: dict[str, list[float]] = {}
        for when, uuid, loop, what in events:
            if what == "down" and loop.startswith(dead) and when >= t - 0.01:
                downs.setdefault(uuid, []).append(when)
        visible = min((min(v) for v in downs.values()), default=None)
        recovery = [max(v) - min(v) for v in downs.values()]
        inFlight, lost, late, unclear = [], [], [], []
        for call in calls:
            if call["token"] in classified or "answeredBy" in call:
                continue
            if not (t - s.deadline <= call["start"] <= end):
                continue
            classified.add(call["token"])
            toDead = (call.get("eventloop") or "").startswith(dead)
            if not toDead:
                lost.append(call)
                continue
            inFlight.append(call)
            if call.get("pending") or call["end"] - call["start"] > s.deadline + 1.0:
                late.append(call)
            if call.get("error") not in CLEAR_ERRORS:
                unclear.append(call)
        regionErrors = 0
        cutCalls: list[float] = []
        for caller in run.callers:
            for rnd in caller.rounds:
                if not (t <= rnd["start"] <= end) or "gone" in rnd:
                    continue
                if caller.host == phase["host"]:
                    if rnd["errors"]:
                        cutCalls.append(rnd["end"] - rnd["start"])
                else:
                    regionErrors += sum(rnd["errors"].values())
        out["phases"].append(
            {
                "how": phase["how"],
                "host": phase["host"],
                "clusters": len(run.uuids),
                "visibleAfter": None if visible is None else visible - t,
                "recoveryMax": max(recovery, default=0.0),
                "recoveryMedian": statistics.median(recovery) if recovery else 0.0,
                "allClearAfter": (max((max(v) for v in downs.values()), default=t) - t),
                "clustersAffected": len(downs),
                "inFlightFailed": len(inFlight),
                "inFlightLate": len(late),
                "inFlightUnclear": len(unclear),
                "inFlightErrors": dict(Counter(c.get("error") for c in inFlight)),
                "inFlightSlowest": max(
                    (c["end"] - c["start"] for c in inFlight if "end" in c),
                    default=0.0,
                ),
                "lost": len(lost),
                "lostErrors": dict(Counter(c.get("error") for c in lost)),
                "regionCallErrors": regionErrors,
                "cutHostCallSlowest": max(cutCalls, default=0.0),
                "advertsExpiredAfter": phase["expired"],
                "healed": phase.get("healed"),
            }
        )
    # Calls outside the failure windows must all have been answered.
    others = [
        c for c in calls if c["token"] not in classified and "answeredBy" not in c
    ]
    out["lostOutsideFailures"] = len(others)
    outside: Counter[str] = Counter()
    windows = [(p["t"], p["end"]) for p in run.phases]
    for caller in run.callers:
        for rnd in caller.rounds:
            if "gone" in rnd or any(a <= rnd["start"] <= b for a, b in windows):
                continue
            outside[caller.host] += sum(rnd["errors"].values())
    out["regionCallErrorsOutsideFailures"] = dict(outside)
    out["fastPoll"] = s.intervals[0]
    out["deadline"] = s.deadline
    out["advertise"] = list(s.advertise)
    out["keepalive"] = list(s.keepalive)
    return out


def runFailover(
    settings: Settings | None = None,
    say: Callable[[str], None] = print,
    keep: Callable[[Bed], None] | None = None,
) -> dict[str, Any]:
    """Build the bed, fail two region hosts in turn, and measure.

    :param settings: sizes and timings; :class:`Settings` when ``None``.
    :param say: where progress goes.
    :param keep: called with the bed before it is closed (a test adds its
        logs to a failure's report).
    :return: the figures (see the module), per failure under ``phases``.
    """
    run = _Run(settings or Settings(), say)
    try:
        run.build()
        run.startFlows()
        run.observe(2.0)
        first = run.regions["mh-r1"]
        run.fail(first, "cut")
        run.phases[-1]["healed"] = run.heal(first.host)
        run.observe(1.0)
        run.fail(run.regions["mh-r2"], "kill")
        calls, events, notes = run.collect()
        return _analyse(run, calls, events, notes)
    finally:
        if keep is not None:
            keep(run.bed)
        for caller in run.callers:
            caller.halt.set()
        for host in run.bed.hosts.values():
            if host.cut:
                run.bed.restore(host)
        run.bed.close()
