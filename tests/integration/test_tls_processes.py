"""Mutual TLS between real processes: ``maas-rpc tls-init``, then an
event-loop and clusters configured through MAAS_RPC_TLS_*."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

from maasserver.supervisor import listeningSocket
from provisioningserver.rpc.testing import waitFor

ROOT = Path(__file__).resolve().parents[2]


def clusters_of(status_dir: Path) -> set[str]:
    found: set[str] = set()
    for path in status_dir.glob("*.json"):
        try:
            found.update(json.loads(path.read_text())["clusters"])
        except (OSError, ValueError):
            continue
    return found


def test_tls_mesh_between_processes(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    pki = tmp_path / "pki"
    subprocess.run(
        [sys.executable, "-m", "maasserver.cli", "tls-init", str(pki)],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    other = tmp_path / "other-pki"
    subprocess.run(
        [sys.executable, "-m", "maasserver.cli", "tls-init", str(other)],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    reserved = listeningSocket("127.0.0.1", 0)
    port = reserved.getsockname()[1]
    region_dir = tmp_path / "region"
    region_env = {
        **env,
        "MAAS_RPC_DATA_DIR": str(region_dir),
        "MAAS_RPC_HTTP_PORT": str(port),
        "MAAS_RPC_HTTP_FD": str(reserved.fileno()),
        "MAAS_RPC_PORTS": "0",
        "MAAS_RPC_BIND": "127.0.0.1",
        "MAAS_RPC_STATUS": "1",
        "MAAS_RPC_TLS_CA": str(pki / "ca.pem"),
        "MAAS_RPC_TLS_CERT": str(pki / "region.pem"),
        "MAAS_RPC_TLS_KEY": str(pki / "region-key.pem"),
    }
    processes: list[subprocess.Popen] = []
    logs = []

    def start(args, env, name, passFds=()):
        log = (tmp_path / f"{name}.log").open("wb")
        logs.append(log)
        proc = subprocess.Popen(
            args, env=env, stdout=log, stderr=subprocess.STDOUT, pass_fds=passFds
        )
        processes.append(proc)
        return proc

    try:
        start(
            [sys.executable, "-m", "maasserver.cli", "eventloop"],
            region_env,
            "region",
            (reserved.fileno(),),
        )
        waitFor(lambda: list((region_dir / "status").glob("*.json")), what="region")
        reserved.close()

        def cluster(name, ca, cert, key):
            data = tmp_path / name
            data.mkdir()
            shutil.copy(region_dir / "secret", data / "secret")
            ident = str(uuid.uuid4())
            start(
                [sys.executable, "-m", "provisioningserver.cli", "cluster"],
                {
                    **env,
                    "MAAS_URL": f"http://127.0.0.1:{port}/MAAS",
                    "MAAS_RPC_DATA_DIR": str(data),
                    "MAAS_RPC_CLUSTER_UUID": ident,
                    "MAAS_RPC_POLL_DISCONNECTED": "0.2",
                    "MAAS_RPC_TLS_CA": str(ca),
                    "MAAS_RPC_TLS_CERT": str(cert),
                    "MAAS_RPC_TLS_KEY": str(key),
                },
                name,
            )
            return ident

        good = cluster(
            "good", pki / "ca.pem", pki / "cluster.pem", pki / "cluster-key.pem"
        )
        bad = cluster(
            "foreign",
            other / "ca.pem",
            other / "cluster.pem",
            other / "cluster-key.pem",
        )
        started = time.monotonic()
        waitFor(lambda: good in clusters_of(region_dir / "status"), what="TLS mesh")
        print(f"TLS cluster registered after {time.monotonic() - started:.2f}s")
        # The cluster from another CA is refused, and both sides say so.
        waitFor(
            lambda: "TLS with" in (tmp_path / "region.log").read_text(),
            what="the region's log line",
        )
        waitFor(
            lambda: (
                "certificate verify failed" in (tmp_path / "foreign.log").read_text()
            ),
            what="the foreign cluster's log line",
        )
        assert bad not in clusters_of(region_dir / "status")
    finally:
        for proc in processes:
            proc.terminate()
        for proc in processes:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
        reserved.close()
