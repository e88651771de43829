"""``maas-rpc demo``: the whole system on one machine, with no configuration.

It starts, on 127.0.0.1, in a temporary directory with a fresh secret:

* a region of two event-loops: this process (in-process, the way a plain
  Python program runs one) and one worker process;
* three clusters: two processes, and one in this process (so that the demo
  can show a cluster calling the region through ``getRegionClient``).

It names each cluster by its UUID as it starts, shows the mesh forming
(each event-loop keeps a status file of its connections in the data
directory), calls ``EatCheez`` on every cluster from this (non-reactor)
thread with ``getAllClients`` and ``gather``, has the in-process cluster call
the region, stops everything, and ends with the commands to try next
(:data:`NEXT_STEPS`).

Like ``maas-rpc region``, it listens on the discovery port once and hands
the listening socket to both event-loops (``MAAS_RPC_HTTP_FD``).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

__all__ = ["CHEESES", "NEXT_STEPS", "meshConnections", "run_demo"]

#: What the demo asks each cluster to rate: (name, origin).
CHEESES = [
    ("Brie", "France"),
    ("Gouda", "Netherlands"),
    ("Stilton", "England"),
]


#: What the demo suggests to try next, printed when it ends.
NEXT_STEPS = """\
Next, run it yourself (each in its own terminal, or with & at the end):

  maas-rpc region --workers 2 --data-dir /tmp/mr/region --bind 127.0.0.1
  mkdir -p /tmp/mr/cluster && cp /tmp/mr/region/secret /tmp/mr/cluster/
  maas-rpc cluster --data-dir /tmp/mr/cluster --maas-url http://127.0.0.1:5240/MAAS
  maas-rpc status --data-dir /tmp/mr/region
  maas-rpc call EatCheez name=Brie origin=France --all --data-dir /tmp/mr/region
  maas-rpc status --cluster --data-dir /tmp/mr/cluster

See "Operating it" in the documentation for status, call, metrics and systemd.
"""


def _say(message: str) -> None:
    print(message, flush=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def meshConnections(statusDir: Path) -> dict[str, int]:
    """Read the connection counts of the live event-loops' status files.

    :param statusDir: the region's ``status`` directory.
    :return: event-loop name → number of cluster connections.
    """
    import json

    counts: dict[str, int] = {}
    for path in statusDir.glob("*.json"):
        try:
            pid = int(path.stem)
            status = json.loads(path.read_text())
        except (ValueError, OSError):
            continue
        if _alive(pid):
            counts[status["eventloop"]] = int(status["connections"])
    return counts


def run_demo(timeout: float = 60.0) -> int:
    """Run the demo.

    :param timeout: seconds to wait for each stage (the mesh forming, the
        calls).
    :return: the exit status: 0 when every step worked.
    """
    logging.basicConfig(level=logging.WARNING, format="  log: %(message)s")
    workdir = Path(tempfile.mkdtemp(prefix="maas-rpc-demo-"))
    children: list[subprocess.Popen[bytes]] = []
    try:
        return _demo(workdir, children, timeout)
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def _demo(
    workdir: Path, children: list[subprocess.Popen[bytes]], timeout: float
) -> int:
    import crochet

    from maasserver import eventloop
    from maasserver.config import RegionConfig
    from maasserver.rpc import getAllClients
    from maasserver.supervisor import listeningSocket
    from maasserver.utils.asynchronous import gather
    from provisioningserver.config import ClusterConfig
    from provisioningserver.rpc import getRegionClient
    from provisioningserver.rpc.cluster import EatCheez
    from provisioningserver.rpc.common import Identify
    from provisioningserver.rpc.testing import waitFor
    from provisioningserver.security import get_or_create_shared_secret

    regionDir = workdir / "region"
    get_or_create_shared_secret(regionDir / "secret")
    httpSocket = listeningSocket("127.0.0.1", 0)
    httpPort = httpSocket.getsockname()[1]
    maasURL = f"http://127.0.0.1:{httpPort}/MAAS"
    _say(f"maas-rpc demo in {workdir}")
    _say(f"  region discovery at {maasURL}/rpc/ (a fresh shared secret)")

    baseEnv = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MAAS_RPC_", "MAAS_URL"))
    }
    regionEnv = {
        **baseEnv,
        "MAAS_RPC_DATA_DIR": str(regionDir),
        "MAAS_RPC_HTTP_PORT": str(httpPort),
        "MAAS_RPC_HTTP_FD": str(httpSocket.fileno()),
        "MAAS_RPC_PORTS": "0",
        "MAAS_RPC_BIND": "127.0.0.1",
        "MAAS_RPC_STATUS": "1",
    }

    # Event-loop 1: this process.
    config = RegionConfig.from_env(regionEnv)
    eventloop.start(config).wait(timeout)
    _say(f"  event-loop {eventloop.loop.name} started (this process)")

    # Event-loop 2: a worker process.
    quiet = subprocess.DEVNULL
    worker = subprocess.Popen(
        [sys.executable, "-m", "maasserver.cli", "eventloop"],
        env=regionEnv,
        stdout=quiet,
        stderr=quiet,
        pass_fds=(httpSocket.fileno(),),
    )
    children.append(worker)
    waitFor(
        lambda: len(meshConnections(config.status_dir)) == 2,
        "the second event-loop",
        timeout=timeout,
        interval=0.1,
    )
    # Both event-loops serve the discovery socket now.
    httpSocket.close()
    _say(f"  event-loop pid={worker.pid} started (a worker process)")

    # Clusters 1 and 2: processes, each with its own data directory and a
    # copy of the secret.
    clusterEnv = {
        **baseEnv,
        "MAAS_URL": maasURL,
        "MAAS_RPC_POLL_DISCONNECTED": "0.5",
        "MAAS_RPC_POLL_PARTIAL": "1",
    }
    for n in (1, 2):
        clusterDir = workdir / f"cluster-{n}"
        clusterDir.mkdir()
        shutil.copy(regionDir / "secret", clusterDir / "secret")
        clusterUUID = str(uuid.uuid4())
        child = subprocess.Popen(
            [sys.executable, "-m", "provisioningserver.cli", "cluster"],
            env={
                **clusterEnv,
                "MAAS_RPC_DATA_DIR": str(clusterDir),
                "MAAS_RPC_CLUSTER_UUID": clusterUUID,
            },
            stdout=quiet,
            stderr=quiet,
        )
        children.append(child)
        _say(f"  cluster {clusterUUID} started (process pid={child.pid})")

    # Cluster 3: in this process.
    clusterDir = workdir / "cluster-3"
    clusterDir.mkdir()
    shutil.copy(regionDir / "secret", clusterDir / "secret")
    clusterConfig = ClusterConfig.from_env(
        {**clusterEnv, "MAAS_RPC_DATA_DIR": str(clusterDir)}
    )

    @crochet.wait_for(timeout)
    def startCluster() -> None:
        from provisioningserver import services
        from provisioningserver.plugin import makeClusterService

        makeClusterService(clusterConfig).startService()
        assert services.running

    startCluster()
    _say(f"  cluster {clusterConfig.cluster_uuid} started (in this process)")

    # The mesh: every event-loop connected to every cluster.
    expected = 2 * 3
    shown = -1

    def meshFormed() -> bool:
        nonlocal shown
        k = sum(meshConnections(config.status_dir).values())
        if k != shown:
            _say(f"  mesh: {k} of {expected} connections")
            shown = k
        return k == expected

    waitFor(meshFormed, "the mesh to form", timeout=timeout, interval=0.1)
    _say("mesh formed: every event-loop is connected to every cluster")

    # Region -> clusters, from this (non-reactor) thread.
    clients = getAllClients()
    calls = []
    for client, (name, origin) in zip(
        sorted(clients, key=lambda c: str(c.ident)), CHEESES * 3, strict=False
    ):

        def call(client: Any = client, name: str = name, origin: str = origin) -> Any:
            d = client(EatCheez, name=name, origin=origin)
            return d.addCallback(lambda r: (client.ident, name, origin, r["rating"]))

        calls.append(call)
    results = gather(calls, timeout=timeout)
    ok = 0
    for result in results:
        if isinstance(result, tuple):
            ident, name, origin, rating = result
            _say(f"  cluster {ident}: EatCheez({name}, {origin}) -> rating {rating}")
            ok += 1
        else:
            _say(f"  a call failed: {result.getErrorMessage()}")
    if results.timedOut:
        _say(f"  {len(results.timedOut)} call(s) timed out")
    if ok != len(clients) or ok != 3:
        _say(f"FAILED: {ok} of 3 clusters answered")
        return 1

    # Cluster -> region, through getRegionClient, from this thread.
    answer = getRegionClient()(Identify).wait(timeout)
    _say(
        f"  cluster {clusterConfig.cluster_uuid} called the region: Identify -> "
        f"{answer['ident']}"
    )

    # Stop everything.
    @crochet.wait_for(timeout)
    def stopCluster() -> Any:
        from provisioningserver import services

        return services.stopService()

    stopCluster()
    for child in children:
        child.terminate()
    for child in children:
        child.wait(timeout)
    eventloop.stop().wait(timeout)
    _say("stopped every process; demo complete")
    _say("")
    _say(NEXT_STEPS.rstrip())
    return 0
