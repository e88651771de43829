"""P0: what setting up one connection costs, over the secure channel.

A region event-loop and a cluster process of their own (as P6's), and a raw
AMP server and a raw AMP client process. Each trial opens, one after
another, ``n`` connections of each kind, in rotating order:

* **maas-rpc** (``ours``): a new cluster (its own UUID and service, not
  started: no discovery) connects to the region event-loop and goes through
  the whole handshake: TCP, ``SecureChannel``, TLS 1.3, ``Identify`` and
  ``Authenticate`` both ways, ``Register``. It is timed until ``Register``
  is answered, which the region does once the cluster is in its rotation
  (listed by ``getClientFor``); the region is then asked how many clusters
  it lists.
* **raw AMP over TLS** (``rawTLS``): TCP, the TLS 1.3 handshake (the same
  crypto), and one ``EatCheez`` call.
* **raw AMP over TCP** (``raw``): TCP and one ``EatCheez`` call.

Every connection goes through a ``TCP4ClientEndpoint`` to 127.0.0.1 (no name
resolution on either side of the ratio). Around each burst the CPU time of
the accepting process (the region, or the raw server) and of the connecting
process (the cluster, or the raw client) is read: their difference divided
by ``n`` is the CPU per connection on each side. After a burst the
connections are closed and the accepting side is waited on until it has
none, so that closing never counts.
"""

from __future__ import annotations

import statistics
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.procs import Processes, Worker
    from benchmarks.run import Bench

__all__ = ["p0", "profileSetup"]


class _Setup:
    """The four processes of P0 and one burst of connections.

    :param procs: where the processes are started (and stopped).
    :param workdir: where the region keeps its data.
    """

    names = ("raw", "rawTLS", "ours")

    def __init__(self, procs: Processes, workdir: Path) -> None:
        from provisioningserver.security import get_or_create_shared_secret

        dataDir = workdir / "p0-region"
        self.secret = get_or_create_shared_secret(dataDir / "secret").hex()
        self.region = procs.worker("region", "p0-region")
        self.cluster = procs.worker("cluster", "p0-cluster")
        self.rawServer = procs.worker("raw", "p0-raw-server")
        self.rawClient = procs.worker("raw", "p0-raw-client")
        self.workers = [self.region, self.cluster, self.rawServer, self.rawClient]
        self.info = self.region.request("region_start", dataDir=str(dataDir))
        self.tcpPort = self.rawServer.request("raw_listen")["port"]
        self.tlsPort = self.rawServer.request("raw_listen", tls=True)["port"]
        self.errors: list[str] = []

    def sides(self, name: str) -> tuple[Worker, Worker]:
        """The accepting and the connecting process of ``name``."""
        if name == "ours":
            return self.region, self.cluster
        return self.rawServer, self.rawClient

    def connect(self, name: str, count: int) -> list[float]:
        """Open ``count`` connections of kind ``name``, one after another;
        return the seconds each took."""
        connector = self.sides(name)[1]
        if name == "ours":
            command: dict[str, Any] = {
                "cmd": "clusters_setup",
                "port": self.info["rpc"],
                "eventloop": self.info["name"],
                "secret": self.secret,
            }
        else:
            command = {
                "cmd": "raw_setup",
                "port": self.tlsPort if name == "rawTLS" else self.tcpPort,
                "tls": name == "rawTLS",
            }
        seconds: list[float] = connector.request(timeout=300, n=count, **command)[
            "seconds"
        ]
        return seconds

    def drop(self, name: str, count: int) -> None:
        """Check that the accepting side lists ``count`` connections, close
        them, and wait until the accepting side has none."""
        if name == "ours":
            listed = self.region.request("region_count")["connections"]
        else:
            listed = self.rawServer.request("raw_open")["open"]
        if listed != count:
            self.errors.append(f"P0 {name}: {listed} connections, not {count}")
        self.sides(name)[1].request("setup_drop", timeout=120)
        if name == "ours":
            self.region.request("region_wait", count=0, timeout=60)
        else:
            self.rawServer.request("raw_wait_open", count=0, timeout=60)

    def burst(self, name: str, count: int) -> dict[str, float]:
        """One trial of ``name``: the median set-up time (ms) and the CPU
        per connection (ms) of each side."""
        acceptor, connector = self.sides(name)
        accept0 = acceptor.request("cpu")["cpu"]
        connect0 = connector.request("cpu")["cpu"]
        seconds = self.connect(name, count)
        accept1 = acceptor.request("cpu")["cpu"]
        connect1 = connector.request("cpu")["cpu"]
        self.drop(name, count)
        return {
            "p50": statistics.median(seconds) * 1000,
            "accept": (accept1 - accept0) / count * 1000,
            "connect": (connect1 - connect0) / count * 1000,
        }


def p0(bench: Bench) -> None:
    """Measure P0 and add its figures to ``bench``.

    :param bench: the run.
    """
    n = bench.sizes.p0Conns
    setup = _Setup(bench.procs, bench.workdir)
    names = setup.names
    try:
        for name in names:  # Warm up: load code, make the certificates.
            setup.burst(name, max(5, n // 5))
        r = bench._pair({name: partial(setup.burst, name, n) for name in names})
    finally:
        bench.procs.stopWorkers(setup.workers)
        bench.errors.extend(setup.errors)

    def col(field: str) -> dict[str, list[float]]:
        return {name: [trial[field] for trial in r[name]] for name in names}

    bench._againstRaw(
        "P0",
        "connection set-up per cluster, p50",
        "ms",
        False,
        col("p50"),
        "connect+call",
        None,
        note=f"{n} connections one after another per trial; maas-rpc: connect, "
        "SecureChannel, TLS 1.3, Identify/Authenticate both ways, Register, until "
        "the region lists the cluster; raw AMP/TLS: connect, TLS 1.3 handshake, "
        "one call; raw AMP/TCP: connect, one call. Fresh processes of their own "
        "(a region event-loop, a cluster process, a raw server, a raw client).",
    )
    bench._againstRaw(
        "P0.cpu.region",
        "set-up CPU per connection, accepting (region) process",
        "ms",
        False,
        col("accept"),
        "server",
        None,
        note="CPU time (all threads) of the process over a burst of connections, "
        "divided by their number; the region logs one line per registered "
        "cluster, as deployed.",
    )
    bench._againstRaw(
        "P0.cpu.cluster",
        "set-up CPU per connection, connecting (cluster) process",
        "ms",
        False,
        col("connect"),
        "client",
        None,
    )


def profileSetup(n: int, top: int, clock: str = "cpu") -> int:
    """``python -m benchmarks --profile P0``: where setting up a connection
    spends its CPU time, on each side, maas-rpc against raw AMP over TLS.

    :param n: connections of each kind under the profiler.
    :param top: rows per table.
    :param clock: ``cpu`` (the thread's CPU time) or ``wall``.
    :return: the exit status.
    """
    import pstats
    import shutil
    import tempfile

    from benchmarks.procs import Processes
    from benchmarks.profiling import _diff, _table
    from benchmarks.run import say

    workdir = Path(tempfile.mkdtemp(prefix="maas-rpc-bench-"))
    procs = Processes(workdir)
    out: list[str] = []
    try:
        setup = _Setup(procs, workdir)
        for name in ("rawTLS", "ours"):
            setup.burst(name, max(10, n // 5))
        stats: dict[str, dict[str, pstats.Stats]] = {}
        for name in ("rawTLS", "ours"):
            acceptor, connector = setup.sides(name)
            for worker in (acceptor, connector):
                worker.request("profile_start", clock=clock)
            setup.connect(name, n)
            stats[name] = {}
            for side, worker in (("accept", acceptor), ("connect", connector)):
                path = workdir / f"{name}-{side}.prof"
                worker.request("profile_stop", path=str(path))
                stats[name][side] = pstats.Stats(str(path))
            setup.drop(name, n)
        unit = "the thread's CPU time" if clock == "cpu" else "wall-clock time"
        out.append(
            f"P0 under cProfile: {n} connections of each kind, one after another; "
            f"µs of {unit} per connection. maas-rpc: TCP, SecureChannel, TLS, "
            "Identify/Authenticate both ways, Register; raw AMP/TLS: TCP, TLS, one "
            "call."
        )
        out.append("")
        for side, who in (
            ("accept", "ACCEPTING SIDE (region event-loop / raw server)"),
            ("connect", "CONNECTING SIDE (cluster / raw client)"),
        ):
            out.append(
                _table(
                    f"{who}, maas-rpc, by own time",
                    stats["ours"][side],
                    n,
                    top,
                    1,
                    per="conn",
                )
            )
            out.append("")
            out.append(
                _table(
                    f"{who}, raw AMP/TLS, by own time",
                    stats["rawTLS"][side],
                    n,
                    top,
                    1,
                    per="conn",
                )
            )
            out.append("")
            out.append(
                _diff(
                    f"{who}: own time per connection, maas-rpc minus raw AMP/TLS",
                    stats["ours"][side],
                    stats["rawTLS"][side],
                    n,
                    top,
                    per="conn",
                    rawName="raw AMP/TLS",
                )
            )
            out.append("")
    finally:
        procs.close()
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join(out))
    say("(figures are per connection, averaged over all connections)")
    return 0 if out else 1
