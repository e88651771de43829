"""Scale figures: how each cost grows with the number of clusters.

``python -m benchmarks --scale`` builds, for each N (100, 250, 500, 1,000 by
default), a fresh bed (:mod:`benchmarks.netbed`): one region host running
``maas-rpc region --workers 3`` and one more event-loop that the benchmark
can ask things (:mod:`benchmarks.probe`), so **4 event-loops**, all
advertising in a PostgreSQL server on a host of their own; and 4 cluster
hosts, each a process hosting N/4 clusters, each cluster connecting from an
address of its own. Every connection is what users run: the secure channel
(TLS 1.3 with a throwaway certificate, channel-bound HMAC), default poll,
keepalive and timeout settings. Each figure has its baseline measured in
the same bed, back to back:

P8 (formation)
    seconds from starting N clusters (the region advertising) until every
    cluster is registered with every event-loop (N x 4 authenticated
    connections), in freshly started processes and again in warm ones.
    Baselines: the same N x 4 raw AMP connections (stock ``amp.AMP``, no
    handshake) from 4 processes on the cluster hosts to 4 raw AMP processes
    on the region host, one call on each, over TLS (TLS 1.3, a throwaway
    certificate: the secure channel's crypto; the figure's baseline) and
    over plain TCP (the ``.tcp`` line).
P9 (gather)
    p50 and p99 of ``gather()`` of one call to each of N clusters from one
    event-loop (the probe), from a thread that is not the reactor's.
    Baselines: raw AMP fan-out from the same process to N raw AMP peers,
    over TLS and (``.tcp``) over TCP.
P10 (memory)
    RSS growth per authenticated connection, region side (each event-loop
    gains N connections) and cluster side (each cluster process gains
    N/4 x 4), freshly started and warm. Baselines: the raw AMP processes of
    P8's baselines.
P11 (discovery and advertisement load)
    in steady state (default intervals: clusters poll every 30 s, ping
    every 30 s; event-loops refresh every 60 s), over a window: discovery
    requests served per second, store writes per second, and the region's
    CPU spent on them (requests/s x the CPU of one request, measured by a
    burst; baseline: the same burst of requests for a path that is not
    discovery, a 404 from the same server), and the region's whole CPU in
    steady state.
Handshake CPU
    CPU per authenticated connection during formation, each side (all the
    processes of that side, over the formation). Baselines: P8's raw AMP
    connections, each side.

``--plot DIR`` writes one SVG per figure (:mod:`benchmarks.svgplot`).
"""

from __future__ import annotations

import os
import resource
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.netbed import HTTP_PORT, Bed, Region, waitUntil
from benchmarks.stats import Figure, percentile

__all__ = [
    "SIZES",
    "Scale",
    "figures",
    "growth",
    "main",
    "physicalLimits",
    "writeCharts",
]

#: The numbers of clusters measured.
SIZES = (100, 250, 500, 1000)

#: Event-loops: ``maas-rpc region --workers 3`` and the probe.
WORKERS = 3

#: Cluster host processes.
CLUSTER_HOSTS = 4

#: The region host's address.
REGION_ADDRESS = "10.250.1.1"


def clockTicks() -> int:
    """Clock ticks per second, for ``/proc/<pid>/stat``."""
    return os.sysconf("SC_CLK_TCK")


def cpuOf(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` so far; 0 if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / clockTicks()


def rssOf(pid: int) -> int:
    """The resident set size of process ``pid``, in bytes."""
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except OSError:
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    found = [pid]
    for child in _children(pid):
        found += descendants(child)
    return found


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            out += [int(p) for p in task.read_text().split()]
        except OSError:
            continue
    return out


def physicalLimits() -> dict[str, Any]:
    """What bounds the figures on this machine: CPUs, descriptors, memory,
    the listen backlog and the ports of one source address."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    memory = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory = int(line.split()[1]) * 1024
    low, high = (
        int(x)
        for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    )
    return {
        "cpus": os.cpu_count(),
        "nofile_soft": soft,
        "nofile_hard": hard,
        "memory_bytes": memory,
        "somaxconn": int(Path("/proc/sys/net/core/somaxconn").read_text()),
        "ephemeral_ports": high - low + 1,
    }


class _Sample:
    """CPU and RSS of a set of processes at one moment."""

    def __init__(self, pids: list[int]) -> None:
        self.t = time.monotonic()
        self.cpu = {pid: cpuOf(pid) for pid in pids}
        self.rss = {pid: rssOf(pid) for pid in pids}

    def cpuSince(self, earlier: _Sample) -> float:
        return sum(self.cpu[p] - earlier.cpu.get(p, 0.0) for p in self.cpu)

    def rssGrowth(self, earlier: _Sample) -> list[int]:
        return [self.rss[p] - earlier.rss[p] for p in self.rss]


class _Setup:
    """One bed for one N: the region host, the cluster hosts, their peers."""

    def __init__(self, n: int, say: Callable[[str], None]) -> None:
        self.n = n
        self.say = say
        self.bed = Bed()
        self.region: Region | None = None
        self.probe: Any = None
        self.clusters: list[Any] = []
        self.rawClients: list[Any] = []
        self.rawServers: list[Any] = []
        self.addresses: list[list[str]] = []
        self.batch = 0

    def build(self) -> None:
        bed, n = self.bed, self.n
        t0 = time.monotonic()
        bed.startPostgres()
        host = bed.addHost("mh-r1", REGION_ADDRESS)
        self.region = bed.startRegion(host, WORKERS)
        self.probe = host.peer(
            "benchmarks.probe",
            "region",
            "probe",
            MAAS_RPC_DATA_DIR=str(bed.workdir / "probe-data"),
            MAAS_RPC_SECRET_FILE=str(bed.secretFile),
            MAAS_RPC_BIND=REGION_ADDRESS,
            MAAS_RPC_HTTP_PORT="0",
            MAAS_RPC_PORTS="5250-5259",
            MAAS_RPC_DATABASE_URL=bed.databaseURL or "",
        )
        self.rawServers = [
            host.peer("benchmarks.clusterhost", "raw", f"raw-server-{k}")
            for k in range(CLUSTER_HOSTS)
        ]
        for k in range(CLUSTER_HOSTS):
            per = self.share(k)
            # The warm round reuses the fresh round's addresses: a region
            # host on the same link as more than ~1,000 peer addresses
            # overflows its neighbour (ARP) table (gc_thresh3, 1,024 by
            # default), and its SYN-ACKs wait for entries to expire.
            addresses = [self.address(k, i) for i in range(per)]
            ch = bed.addHost(f"mh-c{k + 1}", f"10.250.2.{k + 1}", addresses)
            self.addresses.append(addresses)
            self.clusters.append(
                ch.peer("benchmarks.clusterhost", "cluster", f"cluster-{k}")
            )
            self.rawClients.append(
                ch.peer("benchmarks.clusterhost", "raw", f"raw-client-{k}")
            )
        bed.waitAdvertised(WORKERS + 1, timeout=120)
        self.say(f"N={n}: bed ready in {time.monotonic() - t0:.1f} s")

    def share(self, host: int) -> int:
        """How many of the N clusters cluster host ``host`` runs."""
        return self.n // CLUSTER_HOSTS + (1 if host < self.n % CLUSTER_HOSTS else 0)

    @staticmethod
    def address(host: int, index: int) -> str:
        return f"10.250.{16 + 8 * host + index // 250}.{index % 250 + 1}"

    def eventloops(self) -> list[int]:
        assert self.region is not None
        return [*self.region.workers(), self.probe.pid]

    def regionPids(self) -> list[int]:
        assert self.region is not None
        return [self.region.pid, *self.eventloops()]

    def clusterPids(self) -> list[int]:
        return [p.pid for p in self.clusters]

    def postgresPids(self) -> list[int]:
        popen = next(p for p, _, name in self.bed._started if name == "postgres")
        return descendants(popen.pid)

    def close(self) -> None:
        self.bed.close()


class Scale:
    """The scale run; see the module.

    :param sizes: the numbers of clusters.
    :param trials: trials of P9 (each of ``fanouts`` fan-outs per side).
    :param fanouts: fan-outs per P9 trial.
    :param window: seconds of the P11 steady-state window.
    :param say: where progress goes.
    """

    def __init__(
        self,
        sizes: tuple[int, ...] = SIZES,
        trials: int = 3,
        fanouts: int = 20,
        window: float = 35.0,
        say: Callable[[str], None] = print,
    ) -> None:
        self.sizes = sizes
        self.trials = trials
        self.fanouts = fanouts
        self.window = window
        self.say = say
        self.results: dict[str, Any] = {
            "sizes": list(sizes),
            "eventloops": WORKERS + 1,
            "clusterProcesses": CLUSTER_HOSTS,
            "limits": physicalLimits(),
            "byN": {},
        }
        self.errors: list[str] = []

    def run(self) -> dict[str, Any]:
        """Measure every N; return everything measured."""
        for n in self.sizes:
            setup = _Setup(n, self.say)
            try:
                setup.build()
                self.results["byN"][str(n)] = self.measure(setup)
            except Exception as error:  # noqa: BLE001 - report what was measured
                self.errors.append(f"N={n}: {type(error).__name__}: {error}")
                self.say(f"N={n}: failed: {error}; logs in {setup.bed.workdir}")
                setup.bed.keep = True
            finally:
                if os.environ.get("MAAS_RPC_BENCH_KEEP"):
                    setup.bed.keep = True
                    self.say(f"N={n}: kept {setup.bed.workdir}")
                setup.close()
        self.results["errors"] = self.errors
        return self.results

    # One N.

    def measure(self, setup: _Setup) -> dict[str, Any]:
        out: dict[str, Any] = {}
        out["raw"] = self.rawFormation(setup)
        out["rawTLS"] = self.rawFormation(setup, tls=True)
        out["fresh"] = self.formation(setup, 0)
        self.dropClusters(setup)
        out["warm"] = self.formation(setup, 1)
        out["P9"] = self.gather(setup)
        out["P11"] = self.steady(setup, measureRate=setup.n == max(self.sizes))
        return out

    def rawFormation(self, setup: _Setup, tls: bool = False) -> dict[str, Any]:
        """P8's, P10's and the handshake's baselines: N x 4 raw AMP
        connections, one call each, over TCP, or over TLS when ``tls`` (in
        the same processes, after the TCP ones)."""
        n = setup.n
        ports = [s.request("bed_raw_listen", interface=REGION_ADDRESS, tls=tls)["port"]
                 for s in setup.rawServers]  # fmt: skip
        targets = [[REGION_ADDRESS, port] for port in ports]
        servers = [s.pid for s in setup.rawServers]
        clients = [c.pid for c in setup.rawClients]
        server0, client0 = _Sample(servers), _Sample(clients)
        t0 = time.monotonic()
        for client in setup.rawClients:
            client.send("bed_raw_connect", targets=targets, n=n, call=True, tls=tls)
        t1 = max(c.receive(180)["t"] for c in setup.rawClients)
        server, client = _Sample(servers), _Sample(clients)
        connections = n * CLUSTER_HOSTS
        before = server0
        result = {
            "seconds": t1 - t0,
            "cpuServerMs": server.cpuSince(before) / connections * 1000,
            "cpuClientMs": client.cpuSince(client0) / connections * 1000,
            # Each server gains N connections; each client N.
            "rssServerKiB": statistics.median(server.rssGrowth(before)) / n / 1024,
            "rssClientKiB": statistics.median(client.rssGrowth(client0)) / n / 1024,
        }
        self.say(
            f"N={n}: raw AMP over {'TLS' if tls else 'TCP'}: {connections} "
            f"connections in {result['seconds']:.2f} s"
        )
        return result

    def formation(self, setup: _Setup, batch: int) -> dict[str, Any]:
        """P8, P10 and the handshake's CPU, for one round of N clusters."""
        n = setup.n
        per = n / CLUSTER_HOSTS
        for k, peer in enumerate(setup.clusters):
            peer.request(
                "bed_create",
                url=setup.bed.maasURL,
                secret=setup.bed.secret.hex(),
                addresses=setup.addresses[k],
                intervals=[2.0, 10.0, 30.0],
                label=f"c{k}",
            )
        eventloops = setup.eventloops()
        clusters = setup.clusterPids()
        region0 = _Sample(eventloops)
        cluster0 = _Sample(clusters)
        t0 = time.monotonic()
        for peer in setup.clusters:
            peer.send("clusters_start")
        for peer in setup.clusters:
            peer.receive()
        for peer in setup.clusters:
            peer.send("clusters_wait", perCluster=WORKERS + 1, timeout=180)
        t1 = max(peer.receive(240)["t"] for peer in setup.clusters)
        region1 = _Sample(eventloops)
        cluster1 = _Sample(clusters)
        connections = n * (WORKERS + 1)
        # The region side: every cluster in the probe's rotation too.
        try:
            waitUntil(
                lambda: setup.probe.request("count")["clusters"] == n,
                f"{n} clusters in the probe's rotation",
                30,
                0.1,
            )
        except TimeoutError:
            count = setup.probe.request("count")
            raise RuntimeError(
                f"the probe has {count['clusters']} clusters "
                f"({count['connections']} connections), not {n}"
            ) from None
        result = {
            "seconds": t1 - t0,
            "cpuRegionMs": region1.cpuSince(region0) / connections * 1000,
            "cpuClusterMs": cluster1.cpuSince(cluster0) / connections * 1000,
            "rssRegionKiB": statistics.median(region1.rssGrowth(region0)) / n / 1024,
            "rssClusterKiB": statistics.median(cluster1.rssGrowth(cluster0))
            / (per * (WORKERS + 1))
            / 1024,
        }
        self.say(
            f"N={n}: {'warm' if batch else 'fresh'}: {connections} authenticated "
            f"connections in {result['seconds']:.2f} s"
        )
        return result

    def dropClusters(self, setup: _Setup) -> None:
        for peer in setup.clusters:
            peer.request("clusters_stop", timeout=120)
        waitUntil(
            lambda: setup.probe.request("count")["connections"] == 0,
            "the region dropping the clusters' connections",
            60,
            0.1,
        )

    def gather(self, setup: _Setup) -> dict[str, Any]:
        """P9: gather() to N clusters against raw AMP fan-out to N peers,
        over TLS (the secure channel's crypto) and over TCP."""
        n = setup.n
        # As maas-rpc's processes do once they serve (the region host's
        # workers already have); the raw AMP peers are left as stock.
        for process in [setup.probe, *setup.clusters]:
            process.request("freeze")
        for tls in (False, True):
            ports = [
                c.request("bed_raw_listen", interface=f"10.250.2.{k + 1}", tls=tls)[
                    "port"
                ]
                for k, c in enumerate(setup.rawClients)
            ]
            targets = [[f"10.250.2.{k + 1}", p] for k, p in enumerate(ports)]
            setup.probe.request(
                "raw_connect", targets=targets, n=n, tls=tls, timeout=180
            )
        commands = {
            "ours": ("gather", {}),
            "raw": ("raw_fanout", {"tls": False}),
            "rawTLS": ("raw_fanout", {"tls": True}),
        }
        # Warm-up, not counted.
        for cmd, extra in commands.values():
            setup.probe.request(cmd, n=n, fanouts=3, timeout=180, **extra)
        names = list(commands)
        trials: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        failed = 0
        for trial in range(self.trials):
            shift = trial % len(names)
            for name in names[shift:] + names[:shift]:
                cmd, extra = commands[name]
                answer = setup.probe.request(
                    cmd, n=n, fanouts=self.fanouts, timeout=600, **extra
                )
                failed += answer["failed"]
                ms = answer["ms"]
                trials[name].append(
                    {"p50": percentile(ms, 50), "p99": percentile(ms, 99)}
                )
        if failed:
            self.errors.append(f"P9 at N={n}: {failed} calls failed")
        result = {
            q: {name: [t[q] for t in trials[name]] for name in names}
            for q in ("p50", "p99")
        }
        p50 = {name: statistics.median(result["p50"][name]) for name in names}
        self.say(
            f"N={n}: gather p50 {p50['ours']:.1f} ms, raw over TLS "
            f"{p50['rawTLS']:.1f} ms, over TCP {p50['raw']:.1f} ms"
        )
        return result

    def steady(self, setup: _Setup, measureRate: bool) -> dict[str, Any]:
        """P11: discovery and advertisement load in steady state.

        The clusters of a round start together, and poll every 30 s (give
        or take 10 %) once connected: a window shorter than 33 s may see
        none of their polls, so the rate is measured over one at the largest
        N only (``measureRate``); at the others it is the expected N / 30
        per second. The CPU of one request is measured at every N.
        """
        bed = setup.bed
        eventloops = setup.regionPids()
        pg = setup.postgresPids()

        def writes() -> int:
            rows = bed.sql(
                "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)"
                " FROM pg_stat_user_tables"
            )
            return int(rows[0][0]) if rows else 0

        def reads() -> int:
            rows = bed.sql(
                "SELECT coalesce(sum(seq_scan + coalesce(idx_scan, 0)), 0)"
                " FROM pg_stat_user_tables"
            )
            return int(rows[0][0]) if rows else 0

        def fetches() -> int:
            return sum(c.request("bed_fetches")["fetches"] for c in setup.clusters)

        # PostgreSQL's statistics reach the views within half a second.
        f0, w0, r0 = fetches(), writes(), reads()
        before = _Sample(eventloops + pg)
        window = self.window if measureRate else 2.0
        threading.Event().wait(window)  # The window: the clusters run.
        after = _Sample(eventloops + pg)
        threading.Event().wait(1.5)  # PostgreSQL reports its statistics.
        f1, w1, r1 = fetches(), writes(), reads()
        seconds = after.t - before.t
        regionCpu = sum(after.cpu[p] - before.cpu[p] for p in eventloops)
        pgCpu = sum(after.cpu[p] - before.cpu.get(p, 0.0) for p in pg)

        # The CPU of one discovery request, and of a request for a path that
        # is not discovery (the baseline), from bursts.
        url = f"http://{REGION_ADDRESS}:{HTTP_PORT}/MAAS"
        burst = 300
        perRequest: dict[str, float] = {}
        for name, path in (("discovery", "/rpc/"), ("notFound", "/nothing")):
            s0 = _Sample(eventloops)
            answer = setup.clusters[0].request(
                "bed_http", url=url + path, n=burst, concurrency=10, timeout=120
            )
            s1 = _Sample(eventloops)
            idle = regionCpu / seconds * (s1.t - s0.t)
            perRequest[name] = max(0.0, s1.cpuSince(s0) - idle) / burst * 1000
            perRequest[f"{name}Codes"] = answer["codes"]
        httpRate = (f1 - f0) / seconds if measureRate else setup.n / 30.0
        result = {
            "window": seconds,
            "rateMeasured": measureRate,
            "httpPerSecond": httpRate,
            "storeWritesPerSecond": (w1 - w0) / seconds,
            "storeReadsPerSecond": (r1 - r0) / seconds,
            "discoveryCpuMs": perRequest["discovery"],
            "notFoundCpuMs": perRequest["notFound"],
            "codes": {
                "discovery": perRequest["discoveryCodes"],
                "notFound": perRequest["notFoundCodes"],
            },
            # Discovery's share of one core: requests/s x CPU per request.
            "discoveryCorePercent": httpRate * perRequest["discovery"] / 10,
            # Over a window of one poll interval only (see above).
            "regionCorePercent": regionCpu / seconds * 100 if measureRate else None,
            "postgresCorePercent": pgCpu / seconds * 100 if measureRate else None,
        }
        self.say(
            f"N={setup.n}: steady: {httpRate:.1f} discovery req/s, "
            f"{result['discoveryCorePercent']:.2f} % of a core on them"
        )
        return result


def _base(values: list[float]) -> list[float]:
    """A baseline's trials, or none when one is zero (no ratio then)."""
    return values if all(v > 0 for v in values) else []


def _baselines(r: dict[str, Any]) -> list[tuple[str, str, dict[str, Any], str]]:
    """One N's baselines: ``(key suffix, name, raw formation, P9 key)``.

    Raw AMP over TLS (the secure channel's crypto, which users run) is each
    figure's baseline, and raw AMP over TCP a second line (``.tcp``); a
    result saved before the TLS baseline existed has the TCP one only.
    """
    if "rawTLS" not in r:
        return [("", "raw AMP", r["raw"], "raw")]
    return [
        ("", "raw AMP/TLS", r["rawTLS"], "rawTLS"),
        (".tcp", "raw AMP/TCP", r["raw"], "raw"),
    ]


def figures(result: dict[str, Any]) -> list[Figure]:
    """The report's lines for a scale result, each against its baseline.

    :param result: :meth:`Scale.run`'s result.
    :return: the figures, by N.
    """
    out: list[Figure] = []
    byN = {int(n): v for n, v in result["byN"].items()}
    loops = result.get("eventloops", WORKERS + 1)
    for n in sorted(byN):
        r = byN[n]
        last = n == max(byN)
        bases = _baselines(r)
        for when in ("fresh", "warm"):
            for suffix, baseName, raw, _ in bases:
                main = not suffix
                out.append(
                    Figure(
                        f"P8.{n}.{when}{suffix}",
                        f"{n} clusters x {loops} event-loops formed, {when}",
                        "s",
                        False,
                        [r[when]["seconds"]],
                        baseName,
                        _base([raw["seconds"]]),
                        absTarget=("<=", 15.0) if n == 1000 and main else None,
                    )
                )
        for q in ("p50", "p99"):
            for suffix, baseName, _, key in bases:
                out.append(
                    Figure(
                        f"P9.{n}.{q}{suffix}",
                        f"gather() to {n} clusters, {q}",
                        "ms",
                        False,
                        r["P9"][q]["ours"],
                        f"{baseName} fan-out",
                        _base(r["P9"][q][key]),
                        target=None if suffix else ("<=", 1.1),
                    )
                )
        for side, ours, rawKey, rawName in (
            ("region", "rssRegionKiB", "rssServerKiB", "server"),
            ("cluster", "rssClusterKiB", "rssClientKiB", "client"),
        ):
            for when in ("fresh", "warm"):
                for suffix, baseName, raw, _ in bases:
                    out.append(
                        Figure(
                            f"P10.{side}.{n}.{when}{suffix}",
                            f"RSS per conn, {side}, {when}",
                            "KiB",
                            False,
                            [r[when][ours]],
                            f"{baseName} {rawName}",
                            _base([raw[rawKey]]),
                            absTarget=None if suffix else ("<=", 16.0),
                        )
                    )
        p11 = r["P11"]
        out.append(
            Figure(
                f"P11.{n}.cpu",
                f"discovery: region CPU at {p11['httpPerSecond']:.1f} req/s",
                "% core",
                False,
                [p11["discoveryCorePercent"]],
                "same rate of 404s",
                _base([p11["httpPerSecond"] * p11["notFoundCpuMs"] / 10]),
                absTarget=("<=", 2.0) if last else None,
            )
        )
        if p11.get("regionCorePercent") is not None:
            out.append(
                Figure(
                    f"P11.{n}.region",
                    "region CPU in steady state, all of it",
                    "% core",
                    False,
                    [p11["regionCorePercent"]],
                )
            )
            out.append(
                Figure(
                    f"P11.{n}.writes",
                    f"store writes/s ({p11['storeReadsPerSecond']:.1f} reads/s)",
                    "rows/s",
                    False,
                    [p11["storeWritesPerSecond"]],
                )
            )
        for side, ours, rawKey, rawName in (
            ("region", "cpuRegionMs", "cpuServerMs", "server"),
            ("cluster", "cpuClusterMs", "cpuClientMs", "client"),
        ):
            for suffix, baseName, raw, _ in bases:
                out.append(
                    Figure(
                        f"HS.{side}.{n}{suffix}",
                        f"CPU per authenticated conn, {side} (fresh, warm)",
                        "ms",
                        False,
                        [r["fresh"][ours], r["warm"][ours]],
                        f"{baseName} {rawName}",
                        _base([raw[rawKey], raw[rawKey]]),
                    )
                )
    failover = result.get("failover")
    if failover:
        for phase in failover["phases"]:
            out.append(
                Figure(
                    f"P12.{phase['how']}",
                    f"host {phase['how']}: recovery after visible (max), "
                    f"{phase['lost']} lost, {phase['inFlightFailed']} in flight",
                    "s",
                    False,
                    [phase["recoveryMax"]],
                    target=("<=", 2 * failover["fastPoll"]),
                )
            )
    return out


def growth(result: dict[str, Any], get: Callable[[dict[str, Any]], float]) -> float:
    """The exponent k of cost ~ N^k between the smallest and largest N."""
    import math

    byN = {int(n): v for n, v in result["byN"].items()}
    low, high = min(byN), max(byN)
    a, b = get(byN[low]), get(byN[high])
    if low == high or a <= 0 or b <= 0:
        return math.nan
    return math.log(b / a) / math.log(high / low)


def writeCharts(
    result: dict[str, Any], directory: str | os.PathLike[str]
) -> list[Path]:
    """Write one SVG per figure into ``directory``.

    :return: the files written.
    """
    from benchmarks.svgplot import scaleCharts

    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, svg in scaleCharts(result).items():
        path = target / f"{stem}.svg"
        path.write_text(svg)
        written.append(path)
    return written


def main(args: Any) -> int:
    """``python -m benchmarks --scale [--plot DIR]`` (or ``--plot DIR
    --from FILE``): measure or load, report, draw.

    :param args: the parsed arguments of :func:`benchmarks.run.parser`.
    :return: 0, or 1 when something could not be measured.
    """
    import json
    import sys

    from benchmarks.run import _commit, _versions
    from benchmarks.stats import render

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if args.scale:
        from benchmarks import netbed

        why = netbed.unavailable()
        if why is not None:
            say(f"--scale needs the network-namespace bed: {why}")
            return 1
        started = time.monotonic()
        load = os.getloadavg()
        sizes = tuple(int(x) for x in args.sizes.split(",")) if args.sizes else SIZES
        scale = Scale(sizes=sizes, say=say, window=20.0 if args.quick else 35.0)
        result = scale.run()
        if not args.no_failover:
            from benchmarks.failover import runFailover

            say("host failure...")
            try:
                result["failover"] = runFailover(say=say)
            except Exception as error:  # noqa: BLE001 - report it
                result["errors"].append(f"failover: {type(error).__name__}: {error}")
        result["meta"] = {
            "commit": _commit(),
            "versions": _versions(),
            "total_seconds": round(time.monotonic() - started, 1),
            "loadavg_before": [round(x, 2) for x in load],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        }
    else:
        document = json.loads(Path(args.from_json).read_text())
        result = document.get("scale", document)
    figs = figures(result)
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps(
                {"scale": result, "figures": {f.key: f.asDict() for f in figs}},
                indent=2,
            )
            + "\n"
        )
    limits = result["limits"]
    meta = result.get("meta", {})
    header = (
        f"maas-rpc scale figures ({meta.get('commit')}), N clusters x "
        f"{result['eventloops']} event-loops on one region host; median "
        f"[min-max]; total {meta.get('total_seconds')} s; load "
        f"{meta.get('loadavg_before', ['?'])[0]} before, "
        f"{meta.get('loadavg_after', ['?'])[0]} after, on {limits['cpus']} CPUs"
    )
    print(render(figs, header))
    k = growth(result, lambda r: r["fresh"]["seconds"])
    print(f"\nP8 grows as N^{k:.2f} (fresh) between the smallest and largest N.")
    print(
        f"limits: {limits['cpus']} CPUs, {limits['memory_bytes'] / 2**30:.1f} GiB, "
        f"open files {limits['nofile_soft']} (hard {limits['nofile_hard']}), "
        f"somaxconn {limits['somaxconn']}, {limits['ephemeral_ports']} "
        "ephemeral ports per source address"
    )
    for error in result.get("errors", []):
        print(f"  ERROR: {error}")
    if args.plot:
        for path in writeCharts(result, args.plot):
            print(f"wrote {path}")
    return 1 if result.get("errors") else 0
