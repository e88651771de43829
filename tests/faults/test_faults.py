"""Faults between real region and cluster processes on 127.0.0.1.

Each test starts its own processes (region event-loops with ``maas-rpc
eventloop``, clusters with ``python -m provisioningserver.cli cluster`` or
simulated clusters in one ``clusters.py`` process) and stops every one of
them. Faults are a ``kill -9`` or the fault-injecting proxy (``proxy.py``)
between a cluster and an event-loop, which clusters reach because a fake
discovery server advertises the proxy's address under the event-loop's name.

* a. An event-loop killed during a stream of calls: the calls in flight fail
  at once, none hangs; the cluster drops it and joins its replacement.
* b. A cluster killed during a ``gather``: the others answer, the dead one
  is reported, within the timeout.
* c. A blackholed connection: the keepalive drops it, the region's idle
  timeout drops its side, the cluster reconnects once traffic flows; calls
  caught in the blackhole fail when the keepalive gives up, not at their
  deadline. A delay within the keepalive bound is tolerated; a cut (RST) is
  recovered at once, even while discovery does not answer.
* d. A region restart under 50 clusters: all reconnect to the new
  event-loop and to nothing else. How spread out they come back is printed:
  the clusters' jitter is a timing policy, tested under an injected clock
  (``test_jitter_spreads_clusters_that_lost_the_same_region``); in real
  processes a restarted event-loop that accepts connections before it serves
  them answers every attempt queued meanwhile at once, so the spread seen
  here depends on how fast it starts (26 ms on a loaded CI machine).

The outcomes are checked with generous bounds; the figures measured (time to
detect, time to reconnect, calls failed and hung, how spread out reconnects
are) are printed, never asserted tightly: run with ``-s`` to see them.
Timestamps from other processes are :func:`time.monotonic`, which on Linux is
one clock for every process on the host.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.threads import blockingCallFromThread
from twisted.python.failure import Failure

from maasserver import eventloop
from maasserver.config import RegionConfig
from maasserver.rpc import getAllClients
from maasserver.utils.asynchronous import gather
from provisioningserver.cheese import rate_cheese
from provisioningserver.rpc.cluster import EatCheez
from provisioningserver.security import read_shared_secret

HERE = Path(__file__).resolve().parent


def _load(name: str) -> Any:
    """Import a helper module of this folder (pytest runs in importlib mode)."""
    qualified = f"maas_rpc_faults_{name}"
    if qualified not in sys.modules:
        spec = importlib.util.spec_from_file_location(qualified, HERE / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[qualified] = module
        spec.loader.exec_module(module)
    return sys.modules[qualified]


harness = _load("harness")
proxies = _load("proxy")
BOUND = harness.BOUND
waitFor = harness.waitFor

#: What a call in flight on a connection that is lost fails with.
CONNECTION_LOST = {"ConnectionDone", "ConnectionLost", "ConnectionAborted"}


def waitQuietly(condition: Any, timeout: float) -> bool:
    """Like :func:`waitFor`, but tell rather than raise at the deadline."""
    try:
        waitFor(condition, "", timeout=timeout)
    except AssertionError:
        return False
    return True


def figures(values: list[float]) -> str:
    """min / median / max of ``values``, in seconds."""
    if not values:
        return "(none)"
    return (
        f"min {min(values):.3f} s, median {statistics.median(values):.3f} s, "
        f"max {max(values):.3f} s"
    )


@pytest.fixture
def processes(tmp_path: Path):
    """Every process the test starts; all stopped at the end."""
    processes = harness.Processes(tmp_path)
    try:
        yield processes
    finally:
        processes.stopAll()


def _reactorState() -> tuple[frozenset[Any], frozenset[Any]]:
    from twisted.internet import reactor

    def state() -> tuple[frozenset[Any], frozenset[Any]]:
        return (
            frozenset(c.func for c in reactor.getDelayedCalls() if c.active()),
            frozenset(reactor.getReaders()) | frozenset(reactor.getWriters()),
        )

    return blockingCallFromThread(reactor, state)


@pytest.fixture
def inProcess(processes: Any):
    """For a test that runs things in this process's reactor (the proxy, an
    event-loop): at the end, once the processes are stopped and the
    event-loop reset, the reactor holds no socket and no timer of the
    test's."""
    baseline = _reactorState()
    try:
        yield
    finally:
        processes.stopAll()
        eventloop.reset().wait(BOUND)

    def leftBehind() -> tuple[set[Any], set[Any]]:
        calls, sockets = _reactorState()
        return set(calls - baseline[0]), set(sockets - baseline[1])

    if not waitQuietly(lambda: leftBehind() == (set(), set()), timeout=BOUND):
        raise AssertionError(f"the test left behind in the reactor: {leftBehind()}")


# a. A region event-loop killed during a stream of calls.


def test_killed_eventloop_fails_calls_in_flight_and_clusters_join_replacement(
    processes: Any,
) -> None:
    poll = 1.0  # Seconds between polls, disconnected and partly connected.
    linger = 1.0  # Seconds each call of the stream takes to answer.
    region = harness.Region(processes)
    try:
        first = region.startEventloop()
        firstName, _, _ = region.waitAdvertised(first)
        driver = harness.Driver(
            processes,
            region.maasURL,
            region.secretPath,
            "--stream=5",
            f"--linger={linger}",
            "--call-timeout=30",
            f"--poll={poll},{poll},30",
        )
        [clusterUUID] = driver.uuids()
        check = harness.alive(first, driver.process)

        # The stream runs: calls answered by the first event-loop, and 5 in
        # flight at any moment.
        def answered() -> bool:
            ok = [c for c in driver.events("call") if c["outcome"] == "ok"]
            return len(ok) >= 5

        waitFor(answered, "the first calls of the stream to be answered", check=check)

        killed = first.kill9()

        def inFlight() -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]]]:
            begun = [b for b in driver.events("begin") if b["start"] < killed]
            ended = {c["n"]: c for c in driver.events("call")}
            flying = [
                b for b in begun if ended.get(b["n"], {}).get("end", killed) >= killed
            ]
            return flying, ended

        # Every call in flight at the kill ends, promptly.
        settled = waitQuietly(
            lambda: all(b["n"] in inFlight()[1] for b in inFlight()[0]), timeout=15
        )
        flying, ended = inFlight()
        hung = [b for b in flying if b["n"] not in ended]
        outcomes = [ended[b["n"]] for b in flying if b["n"] in ended]
        failed = [c for c in outcomes if c["outcome"] == "failed"]
        answeredLate = [c for c in outcomes if c["outcome"] == "ok"]
        toFail = [c["end"] - killed for c in failed]
        errors = Counter(c["error"] for c in failed)

        # The cluster drops the dead event-loop.
        lost = waitFor(
            lambda: [e for e in driver.events("lost") if e["eventloop"] == firstName],
            "the cluster to drop the killed event-loop",
            check=harness.alive(driver.process),
        )[0]

        # A replacement event-loop, on the same discovery port and data
        # directory: the cluster connects to it.
        second = region.startEventloop()
        secondName, _, advertisedAt = region.waitAdvertised(second)
        joined = waitFor(
            lambda: [
                e for e in driver.events("connected") if e["eventloop"] == secondName
            ],
            "the cluster to connect to the replacement event-loop",
            check=harness.alive(second, driver.process),
        )[0]
        waitFor(
            lambda: clusterUUID in region.connectedTo(second),
            "the replacement's status file to list the cluster",
            check=harness.alive(second, driver.process),
        )
        waitFor(
            lambda: [
                c
                for c in driver.events("call")
                if c["outcome"] == "ok" and c["answeredBy"] == secondName
            ],
            "a call of the stream answered by the replacement",
            check=harness.alive(second, driver.process),
        )
        summary = driver.finish()
    finally:
        region.close()

    calls = driver.events("call")
    unavailable = summary["unavailable"]
    stale = [p for p in summary["pending"] if p["start"] < killed]
    print(
        f"\nkill -9 of event-loop {firstName} with {len(flying)} calls in flight "
        f"(Linger {linger} s, deadline 30 s): {len(failed)} failed "
        f"({dict(errors)}), {len(answeredLate)} answered (already on the wire), "
        f"{len(hung)} hung; time from kill to failure: {figures(toFail)}"
        f"\ncluster dropped the dead event-loop {lost['t'] - killed:.3f} s after "
        f"the kill; {unavailable} calls found no connection meanwhile"
        f"\nreplacement advertised {advertisedAt - killed:.3f} s after the kill; "
        f"cluster connected to it {joined['t'] - advertisedAt:.3f} s after it "
        f"advertised (poll interval {poll} s, jittered up to x1.5), "
        f"{joined['t'] - killed:.3f} s after the kill"
        f"\n{len(calls)} calls in all; still pending at the end: "
        f"{len(summary['pending'])} (none from before the kill: {not stale})"
    )
    assert settled and not hung, f"calls hung after the kill: {hung}"
    assert len(flying) >= 3
    assert failed, "no call in flight failed"
    assert set(errors) <= CONNECTION_LOST, errors
    assert max(toFail) < 5.0
    assert lost["t"] - killed < 5.0
    assert joined["t"] - advertisedAt < 1.5 * poll + 5.0
    assert not stale
    assert summary["connections"][clusterUUID] == [secondName]


# b. A cluster killed during a gather.


def test_cluster_killed_during_gather_is_reported_and_others_answer(
    processes: Any, inProcess: None
) -> None:
    timeout = 10.0  # The gather's.
    slowness = 5.0  # Seconds the slow cluster takes to answer EatCheez.
    region = harness.Region(processes)
    try:
        config = RegionConfig.from_env(region.env())
        eventloop.start(config).wait(BOUND)
        quick = {"MAAS_RPC_POLL_DISCONNECTED": "0.5", "MAAS_RPC_POLL_PARTIAL": "0.5"}
        clusters = [
            harness.startCluster(processes, region.maasURL, region.secretPath, **quick)
            for _ in range(2)
        ]
        slowUUID, slow = harness.startCluster(
            processes,
            region.maasURL,
            region.secretPath,
            FAULTEXT_CHEEZ_DELAY=str(slowness),
            **quick,
        )
        clusters.append((slowUUID, slow))
        uuids = {u for u, _ in clusters}
        check = harness.alive(*(p for _, p in clusters))
        waitFor(
            lambda: {c.ident for c in getAllClients()} == uuids,
            "the 3 clusters to connect to the in-process event-loop",
            check=check,
        )

        def eat(client: Any) -> Any:
            d = client(EatCheez, name="Brie", origin="France")
            return d.addCallback(lambda r: (client.ident, r["rating"]))

        clients = getAllClients()
        assert len(clients) == 3
        started = time.monotonic()
        results = gather([partial(eat, client) for client in clients], timeout=timeout)
        waitFor(
            lambda: "faultext: EatCheez(Brie) received" in slow.log(),
            "the slow cluster to receive its call",
            check=check,
        )
        killed = slow.kill9()
        arrivals = []
        for result in results:
            arrivals.append((time.monotonic(), result))
        ended = time.monotonic()
        waitFor(
            lambda: slowUUID not in {c.ident for c in getAllClients()},
            "the region to drop the killed cluster",
        )
        dropped = time.monotonic()
    finally:
        region.close()

    answers = [r for _, r in arrivals if not isinstance(r, Failure)]
    failures = [(t, r) for t, r in arrivals if isinstance(r, Failure)]
    print(
        f"\ngather(timeout={timeout}) of EatCheez on 3 clusters, the slow one "
        f"(answering after {slowness} s) killed {killed - started:.3f} s in:"
    )
    for when, result in arrivals:
        what = (
            f"Failure {result.type.__name__}: {result.getErrorMessage()}"
            if isinstance(result, Failure)
            else f"answer {result}"
        )
        since = f", {when - killed:.3f} s after the kill" if when > killed else ""
        print(f"  after {when - started:.3f} s{since}: {what}")
    print(
        f"  timed out: {len(results.timedOut)}; gather ended {ended - started:.3f} s "
        f"after it began, {ended - killed:.3f} s after the kill; the region had "
        f"dropped the cluster {dropped - killed:.3f} s after the kill"
    )
    fast = uuids - {slowUUID}
    assert sorted(answers) == sorted((u, rate_cheese("Brie", "France")) for u in fast)
    # The dead one is reported: as a failure, or as timed out.
    assert len(failures) + len(results.timedOut) == 1
    for _, failure in failures:
        assert failure.type.__name__ in CONNECTION_LOST, failure
    assert ended - started <= timeout + 2.0


# c. A blackholed connection (and, with the same set-up, a delay and a cut).

#: Keepalive interval and timeout of the proxied cluster, in seconds.
KEEPALIVE = (1.0, 1.0)

#: The region drops a connection it has heard nothing from for this long.
IDLE = 4.0

#: Bound on a handshake, such as one the blackhole swallows.
HANDSHAKE = 3.0


class Proxied:
    """A region event-loop process, a proxy in front of it, and a fake
    discovery server that advertises the proxy under the event-loop's name:
    a cluster that discovers the region there connects through the proxy.

    :ivar uuid: the cluster's UUID, once :meth:`startCluster` has run.
    :ivar cluster: the cluster process, likewise.
    """

    def __init__(self, processes: Any) -> None:
        self.processes = processes
        self.region = harness.Region(
            processes,
            MAAS_RPC_IDLE_TIMEOUT=str(IDLE),
            MAAS_RPC_HANDSHAKE_TIMEOUT=str(HANDSHAKE),
        )
        self.proxy = self.discovery = None
        try:
            self.loop = self.region.startEventloop()
            self.name, rpcPort, _ = self.region.waitAdvertised(self.loop)
            self.proxy = proxies.FaultProxy(("127.0.0.1", rpcPort))
            self.proxy.start()
            # The name must be the event-loop's own; the address is the
            # proxy's.
            self.discovery = harness.FakeDiscovery(
                {self.name: [["127.0.0.1", self.proxy.port]]},
                secret=read_shared_secret(self.region.secretPath),
            )
        except BaseException:
            self.close()
            raise
        self.check = harness.alive(self.loop)

    def startCluster(self) -> None:
        """Start a cluster process, and wait until it is connected."""
        self.uuid, self.cluster = harness.startCluster(
            self.processes,
            self.discovery.maasURL,
            self.region.secretPath,
            MAAS_RPC_KEEPALIVE_INTERVAL=str(KEEPALIVE[0]),
            MAAS_RPC_KEEPALIVE_TIMEOUT=str(KEEPALIVE[1]),
            MAAS_RPC_HANDSHAKE_TIMEOUT=str(HANDSHAKE),
            MAAS_RPC_POLL_DISCONNECTED="1",
            MAAS_RPC_POLL_PARTIAL="1",
            MAAS_RPC_POLL_CONNECTED="5",
        )
        self.check = harness.alive(self.loop, self.cluster)
        # The region registers the cluster a moment before the cluster logs
        # that it is connected: wait for both.
        self.waitFor(
            lambda: self.registered() and self.connects() == 1,
            "the cluster to connect through the proxy",
        )

    def registered(self) -> bool:
        """Whether the event-loop's status file lists the cluster."""
        return self.uuid in self.region.connectedTo(self.loop)

    def connects(self) -> int:
        """How many times the cluster has logged a completed connection."""
        return self.cluster.log().count("Connected to region event-loop")

    def closed(self, pair: int) -> list[Any]:
        """The proxy's events of the cluster's side of ``pair`` closing."""
        return [
            e
            for e in self.proxy.eventsFor("closed", proxies.DOWNSTREAM)
            if e.pair == pair
        ]

    def waitFor(self, condition: Any, what: str, **kwargs: Any) -> Any:
        return waitFor(condition, what, check=self.check, **kwargs)

    def close(self) -> None:
        if self.discovery is not None:
            self.discovery.close()
        if self.proxy is not None:
            self.proxy.stop()
        self.region.close()


def test_keepalive_drops_a_blackholed_connection_and_the_cluster_reconnects(
    processes: Any, inProcess: None
) -> None:
    mesh = Proxied(processes)
    try:
        mesh.startCluster()
        proxy = mesh.proxy
        [accepted] = proxy.eventsFor("accepted")
        pair = accepted.pair
        # Keepalives go through: the connection stays.
        answers = proxy.chunks[proxies.DOWNSTREAM]
        mesh.waitFor(
            lambda: proxy.chunks[proxies.DOWNSTREAM] > answers, "a keepalive answer"
        )

        blackholed = time.monotonic()
        proxy.blackhole()

        # The cluster's keepalive notices, and drops the connection.
        closed = mesh.waitFor(
            lambda: mesh.closed(pair), "the cluster to drop the blackholed connection"
        )[0]
        detected = closed.when - blackholed
        mesh.waitFor(
            lambda: "did not answer a keepalive" in mesh.cluster.log(),
            "the cluster to log why it dropped the connection",
        )
        # The region, hearing nothing, drops its side too.
        mesh.waitFor(
            lambda: not mesh.registered(), "the region to drop the silent connection"
        )
        regionDropped = time.monotonic() - blackholed
        attempts = len([e for e in proxy.eventsFor("accepted") if e.pair != pair])

        restored = time.monotonic()
        proxy.passThrough()
        mesh.waitFor(
            mesh.registered, "the cluster to connect again once the blackhole ends"
        )
        reconnected = time.monotonic() - restored
        status = mesh.region.status(mesh.loop)
    finally:
        mesh.close()

    print(
        f"\nblackhole with keepalive every {KEEPALIVE[0]} s (timeout "
        f"{KEEPALIVE[1]} s): the cluster dropped the connection {detected:.3f} s "
        f"after the blackhole began; the region (idle timeout {IDLE} s) dropped "
        f"its side after {regionDropped:.3f} s; {attempts} reconnection "
        f"attempt(s) swallowed by the blackhole (handshake timeout {HANDSHAKE} s); "
        f"reconnected {reconnected:.3f} s after the blackhole ended; "
        f"{proxy.dropped} bytes dropped"
    )
    assert detected < 15.0
    assert status is not None and status["clusters"] == [mesh.uuid]
    assert status["connections"] == 1


def test_a_delay_within_the_keepalive_bound_is_tolerated_and_a_cut_is_recovered(
    processes: Any, inProcess: None
) -> None:
    latency = 0.2  # Each way: a round trip well within the keepalive timeout.
    mesh = Proxied(processes)
    try:
        mesh.startCluster()
        proxy = mesh.proxy
        [accepted] = proxy.eventsFor("accepted")
        connects = mesh.connects()

        proxy.delay(latency)
        answers = proxy.chunks[proxies.DOWNSTREAM]
        delayed = time.monotonic()
        mesh.waitFor(
            lambda: proxy.chunks[proxies.DOWNSTREAM] >= answers + 3,
            "3 keepalives answered through the delay",
        )
        throughDelay = time.monotonic() - delayed
        keptThroughDelay = not mesh.closed(accepted.pair) and mesh.connects() == (
            connects
        )
        warned = "did not answer a keepalive" in mesh.cluster.log()
        proxy.passThrough()

        # Discovery stops answering, then the connection is cut: the cluster
        # reconnects to the event-loop it knows of.
        mesh.discovery.failing = True
        refused = mesh.discovery.refused
        cut = time.monotonic()
        assert proxy.cut() == 1
        mesh.waitFor(
            lambda: mesh.connects() > connects and mesh.registered(),
            "the cluster to connect again after the cut",
        )
        recovered = time.monotonic() - cut
        refusedMeanwhile = mesh.discovery.refused - refused
        mesh.waitFor(
            lambda: "did not answer usefully" in mesh.cluster.log(),
            "the cluster to log that discovery failed",
        )
        status = mesh.region.status(mesh.loop)
    finally:
        mesh.close()

    print(
        f"\n{latency} s added each way (keepalive timeout {KEEPALIVE[1]} s): 3 "
        f"keepalives answered in {throughDelay:.3f} s, connection kept: "
        f"{keptThroughDelay}; after a cut (RST both ways), with discovery "
        f"answering 503 ({refusedMeanwhile} refused polls), the cluster was "
        f"connected again within {recovered:.3f} s, to the event-loop it knew"
    )
    assert keptThroughDelay and not warned
    assert refusedMeanwhile >= 1
    assert recovered < BOUND
    assert status is not None and status["clusters"] == [mesh.uuid]


def test_calls_in_flight_on_a_blackholed_connection_fail_when_keepalive_drops_it(
    processes: Any, inProcess: None
) -> None:
    deadline = 30.0  # Each call's.
    mesh = Proxied(processes)
    try:
        driver = harness.Driver(
            processes,
            mesh.discovery.maasURL,
            mesh.region.secretPath,
            "--stream=3",
            "--linger=0.5",
            f"--call-timeout={deadline}",
            f"--keepalive={KEEPALIVE[0]},{KEEPALIVE[1]}",
            f"--handshake-timeout={HANDSHAKE}",
            "--poll=1,1,5",
        )
        [clusterUUID] = driver.uuids()
        mesh.check = harness.alive(mesh.loop, driver.process)
        mesh.waitFor(
            lambda: (
                len([c for c in driver.events("call") if c["outcome"] == "ok"]) >= 3
            ),
            "the first calls through the proxy to be answered",
        )
        blackholed = time.monotonic()
        mesh.proxy.blackhole()

        def pending() -> list[dict[str, Any]]:
            ended = {c["n"] for c in driver.events("call")}
            return [
                b
                for b in driver.events("begin")
                if b["start"] < blackholed and b["n"] not in ended
            ]

        settled = waitQuietly(lambda: not pending(), timeout=15)
        hung = pending()
        lost = mesh.waitFor(
            lambda: driver.events("lost"), "the keepalive to drop the connection"
        )[0]
        ended = {c["n"]: c for c in driver.events("call")}
        caught = [
            ended[b["n"]]
            for b in driver.events("begin")
            if b["start"] < lost["t"]
            and ended.get(b["n"], {}).get("end", 0) > blackholed
        ]
        failed = [c for c in caught if c["outcome"] == "failed"]
        errors = Counter(c["error"] for c in failed)
        toFail = [c["end"] - blackholed for c in failed]

        restored = time.monotonic()
        mesh.proxy.passThrough()
        mesh.waitFor(
            lambda: len(driver.events("connected")) >= 2,
            "the cluster to connect again once the blackhole ends",
        )
        mesh.waitFor(
            lambda: [
                c
                for c in driver.events("call")
                if c["outcome"] == "ok" and c["start"] > restored
            ],
            "a call answered after the blackhole",
        )
        summary = driver.finish()
    finally:
        mesh.close()

    print(
        f"\nblackhole under a stream of calls (deadline {deadline} s, keepalive "
        f"{KEEPALIVE[0]}/{KEEPALIVE[1]} s): the keepalive dropped the connection "
        f"{lost['t'] - blackholed:.3f} s in ({lost['reason']}); {len(caught)} calls "
        f"caught in the blackhole: {len(failed)} failed ({dict(errors)}) after "
        f"{figures(toFail)}, {len(hung)} hung; {summary['unavailable']} calls found "
        f"no connection meanwhile"
    )
    assert settled and not hung, f"calls hung in the blackhole: {hung}"
    assert failed, "no call was caught in the blackhole"
    assert set(errors) <= CONNECTION_LOST, errors
    # They failed when the keepalive gave up, long before their deadline.
    assert max(toFail) < 15.0 < deadline
    assert summary["connections"][clusterUUID] == [mesh.name]


# d. A region restart with 50 clusters.


def test_fifty_clusters_reconnect_after_a_region_restart(
    processes: Any,
) -> None:
    count = 50
    region = harness.Region(processes)
    try:
        first = region.startEventloop()
        firstName, _, _ = region.waitAdvertised(first)
        started = time.monotonic()
        # MAAS's poll intervals: 2 s disconnected, 10 s partly, 30 s fully.
        driver = harness.Driver(
            processes, region.maasURL, region.secretPath, "--poll=2,10,30", count=count
        )
        uuids = set(driver.uuids())
        assert len(uuids) == count
        waitFor(
            lambda: set(region.connectedTo(first)) == uuids,
            f"all {count} clusters to connect",
            timeout=60,
            check=harness.alive(first, driver.process),
        )
        formed = time.monotonic() - started

        killed = first.kill9()
        waitFor(
            lambda: (
                len([e for e in driver.events("lost") if e["eventloop"] == firstName])
                == count
            ),
            f"all {count} clusters to drop the killed event-loop",
            check=harness.alive(driver.process),
        )
        second = region.startEventloop()
        secondName, _, advertisedAt = region.waitAdvertised(second)
        waitFor(
            lambda: set(region.connectedTo(second)) == uuids,
            f"all {count} clusters to connect to the restarted region",
            timeout=60,
            check=harness.alive(second, driver.process),
        )
        # The region registers a cluster a moment before the cluster has its
        # answer: wait for the clusters' side too.
        waitFor(
            lambda: (
                {
                    e["uuid"]
                    for e in driver.events("connected")
                    if e["eventloop"] == secondName
                }
                == uuids
            ),
            f"all {count} clusters to have their connection ready",
            check=harness.alive(second, driver.process),
        )
        summary = driver.finish()
    finally:
        region.close()

    lost = [
        e["t"] - killed for e in driver.events("lost") if e["eventloop"] == firstName
    ]
    joined: dict[str, float] = {}
    for event in driver.events("connected"):
        if event["eventloop"] == secondName:
            joined.setdefault(event["uuid"], event["t"])
    afterAdvert = sorted(t - advertisedAt for t in joined.values())
    afterKill = sorted(t - killed for t in joined.values())
    spread = afterAdvert[-1] - afterAdvert[0]
    buckets = Counter(int(t // 0.5) for t in afterAdvert)
    histogram = ", ".join(
        f"{b * 0.5:+.1f}..{(b + 1) * 0.5:+.1f} s: {n}"
        for b, n in sorted(buckets.items())
    )
    print(
        f"\n{count} clusters in one process connected in {formed:.2f} s; kill -9 "
        f"of the region's event-loop: all dropped it ({figures(lost)} after the "
        f"kill); the restarted event-loop advertised {advertisedAt - killed:.3f} s "
        f"after the kill"
        f"\nreconnects after it advertised: {figures(afterAdvert)}; spread "
        f"{spread:.3f} s; after the kill: {figures(afterKill)}"
        f"\nreconnects per half second after it advertised: {histogram}"
    )
    assert set(joined) == uuids
    assert all(summary["connections"][u] == [secondName] for u in uuids)
    assert afterKill[-1] < 60.0
