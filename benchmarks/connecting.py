"""P8: what setting up one connection costs, over the secure channel.

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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.run import Bench

__all__ = ["p8"]


def p8(bench: Bench) -> None:
    """Measure P8 and add its figures to ``bench``.

    :param bench: the run.
    """
    from provisioningserver.security import get_or_create_shared_secret

    n = bench.sizes.p8Conns
    dataDir = bench.workdir / "p8-region"
    secret = get_or_create_shared_secret(dataDir / "secret").hex()
    region = bench.procs.worker("region", "p8-region")
    cluster = bench.procs.worker("cluster", "p8-cluster")
    rawServer = bench.procs.worker("raw", "p8-raw-server")
    rawClient = bench.procs.worker("raw", "p8-raw-client")
    workers = [region, cluster, rawServer, rawClient]
    try:
        info = region.request("region_start", dataDir=str(dataDir))
        tcpPort = rawServer.request("raw_listen")["port"]
        tlsPort = rawServer.request("raw_listen", tls=True)["port"]

        def burst(name: str, count: int) -> dict[str, float]:
            if name == "ours":
                acceptor, connector = region, cluster
                command: dict[str, Any] = {
                    "cmd": "clusters_setup",
                    "port": info["rpc"],
                    "eventloop": info["name"],
                    "secret": secret,
                }
            else:
                acceptor, connector = rawServer, rawClient
                command = {
                    "cmd": "raw_setup",
                    "port": tlsPort if name == "rawTLS" else tcpPort,
                    "tls": name == "rawTLS",
                }
            accept0 = acceptor.request("cpu")["cpu"]
            connect0 = connector.request("cpu")["cpu"]
            seconds = connector.request(timeout=300, n=count, **command)["seconds"]
            accept1 = acceptor.request("cpu")["cpu"]
            connect1 = connector.request("cpu")["cpu"]
            if name == "ours":
                listed = region.request("region_count")["connections"]
            else:
                listed = rawServer.request("raw_open")["open"]
            if listed != count:
                bench.errors.append(f"P8 {name}: {listed} connections, not {count}")
            connector.request("setup_drop", timeout=120)
            if name == "ours":
                region.request("region_wait", count=0, timeout=60)
            else:
                rawServer.request("raw_wait_open", count=0, timeout=60)
            return {
                "p50": statistics.median(seconds) * 1000,
                "accept": (accept1 - accept0) / count * 1000,
                "connect": (connect1 - connect0) / count * 1000,
            }

        names = ("raw", "rawTLS", "ours")
        for name in names:  # Warm up: load code, make the certificates.
            burst(name, max(5, n // 5))
        r = bench._pair({name: (lambda name=name: burst(name, n)) for name in names})
    finally:
        bench.procs.stopWorkers(workers)

    def col(field: str) -> dict[str, list[float]]:
        return {name: [trial[field] for trial in r[name]] for name in names}

    bench._againstRaw(
        "P8",
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
        "P8.cpu.region",
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
        "P8.cpu.cluster",
        "set-up CPU per connection, connecting (cluster) process",
        "ms",
        False,
        col("connect"),
        "client",
        None,
    )
