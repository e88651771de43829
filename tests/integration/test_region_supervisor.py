"""``maas-rpc region --workers N``: N event-loop processes sharing the
discovery port, a dead worker restarted, a clean stop on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from maasserver.demo import meshConnections
from provisioningserver.rpc.testing import waitFor

ROOT = Path(__file__).resolve().parents[2]


def live_workers(status_dir: Path) -> dict[int, str]:
    workers = {}
    for path in status_dir.glob("*.json"):
        pid = int(path.stem)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        workers[pid] = json.loads(path.read_text())["eventloop"]
    return workers


def test_region_supervises_workers(tmp_path):
    data = tmp_path / "region"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        "MAAS_RPC_DATA_DIR": str(data),
        "MAAS_RPC_HTTP_PORT": "0",
        "MAAS_RPC_PORTS": "0",
        "MAAS_RPC_BIND": "127.0.0.1",
        "MAAS_RPC_STATUS": "1",
    }
    log = (tmp_path / "region.log").open("wb")
    started = time.monotonic()
    region = subprocess.Popen(
        [sys.executable, "-m", "maasserver.cli", "region", "--workers", "2"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    try:
        workers = waitFor(
            lambda: (w := live_workers(data / "status")) and len(w) == 2 and w,
            what="two event-loop workers",
        )
        print(f"2 workers up after {time.monotonic() - started:.2f}s")
        found = waitFor(
            lambda: re.search(
                r"127\.0\.0\.1:(\d+)/MAAS/rpc/", (tmp_path / "region.log").read_text()
            ),
            what="the region's start-up line",
        )
        port = int(found.group(1))

        # Both workers serve discovery on the one shared port, and both are
        # advertised.
        def advertised():
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/MAAS/rpc/", timeout=10
            ) as response:
                loops = json.load(response)["eventloops"] or {}
            return set(loops) == set(workers.values())

        waitFor(advertised, what="both workers advertised")
        assert meshConnections(data / "status") == {
            name: 0 for name in workers.values()
        }

        # Kill one worker: the supervisor starts a replacement.
        victim = min(workers)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        replaced = waitFor(
            lambda: (
                (w := live_workers(data / "status"))
                and len(w) == 2
                and victim not in w
                and w
            ),
            what="a replacement worker",
        )
        print(f"worker {victim} replaced after {time.monotonic() - killed_at:.2f}s")
        survivors = set(replaced) - {victim}
        assert len(survivors) == 2

        # SIGTERM stops every worker cleanly: each withdraws its
        # advertisement (the killed one's stays until it expires).
        region.send_signal(signal.SIGTERM)
        assert region.wait(timeout=30) == 0
        for pid in survivors:
            waitFor(
                lambda pid=pid: not Path(f"/proc/{pid}").exists(),
                what=f"worker {pid} to exit",
            )
        with sqlite3.connect(data / "eventloops.sqlite3") as db:
            names = {row[0] for row in db.execute("SELECT name FROM eventloops")}
        assert names == {workers[victim]}
    finally:
        if region.poll() is None:
            region.kill()
            region.wait()
        log.close()
