"""A region of several hosts, and a whole region host failing, for real.

These tests build a bed of Linux network namespaces
(:mod:`benchmarks.netbed`): three region hosts, each running ``maas-rpc
region --workers 2`` against one PostgreSQL server on a host of its own,
and cluster hosts running many clusters that discover the region through
one ``MAAS_URL``. They need root and iproute2; they are skipped, with the
reason, only where namespaces cannot be made, and never under ``CI=true``.
Every process they start is stopped by its PID and every namespace deleted,
also when a test fails.

They print what they measured and assert only generous bounds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    # The bed lives with the benchmarks, which use it too.
    sys.path.append(str(ROOT))

from benchmarks import failover, netbed  # noqa: E402

WHY = netbed.unavailable()
if WHY is None and netbed.postgresBin() is None:
    WHY = "PostgreSQL's server programs are not installed"

if WHY is not None and os.environ.get("CI") == "true":
    raise RuntimeError(f"the multi-host bed must run under CI, but: {WHY}")

pytestmark = pytest.mark.skipif(WHY is not None, reason=f"no multi-host bed: {WHY}")


def _namespaces(prefix: str) -> list[str]:
    out = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=30
    ).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]


def test_bed_tears_down_everything_even_when_the_test_fails(tmp_path: Path) -> None:
    """A bed closed by an exception leaves no namespace and no process."""
    bed = netbed.Bed(tmp_path)
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="boom"), bed:
        host = bed.addHost("mh-c1", "10.250.2.1", ["10.250.16.1"])
        popen = host.spawn(["sleep", "600"], "sleeper")
        pids.append(popen.pid)
        # The process runs in the host: its own address, its own host name.
        seen = subprocess.run(
            host.wrap(["sh", "-c", "hostname; ip -o -4 addr show dev eth0"]),
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        assert seen.splitlines()[0] == "mh-c1"
        assert "10.250.2.1/16" in seen and "10.250.16.1/16" in seen
        assert _namespaces(bed.prefix)
        raise RuntimeError("boom")
    assert _namespaces(bed.prefix) == []
    assert not Path(f"/proc/{pids[0]}").exists()


def test_a_region_host_fails_while_calls_flow(request: Any) -> None:
    """Cut one region host's link, bring it back, then SIGKILL another: every
    cluster stays reachable through the other hosts, calls in flight to the
    dead host fail clearly within their deadline, no other call is lost, none
    is answered twice, and the dead host's advertisements expire."""
    logs: list[str] = []

    def keep(bed: netbed.Bed) -> None:
        logs.append(bed.describe())

    try:
        figures = failover.runFailover(say=print, keep=keep)
    except Exception:
        print("\n".join(logs))
        raise
    print(json.dumps(figures, indent=2, sort_keys=True))
    s = failover.Settings
    assert figures["duplicates"] == 0
    assert figures["wrongAnswerer"] == 0
    assert figures["answeredNotNoted"] == 0
    assert figures["pending"] == 0
    assert figures["lostOutsideFailures"] == 0
    assert figures["answered"] > 0
    for phase in figures["phases"]:
        what = f"{phase['how']} {phase['host']}"
        assert phase["clustersAffected"] == phase["clusters"], what
        assert phase["lost"] == 0, (what, phase["lostErrors"])
        assert phase["inFlightUnclear"] == 0, (what, phase["inFlightErrors"])
        assert phase["inFlightLate"] == 0, what
        assert phase["regionCallErrors"] == 0, what
        # Generous: the goal is 2 x the fast poll interval.
        assert phase["recoveryMax"] <= 10 * s.intervals[0], what
        # The expiry plus a refresh interval, with room for a busy machine.
        assert phase["advertsExpiredAfter"] <= 3 * sum(s.advertise) + 5, what
        if phase["how"] == "cut":
            assert phase["cutHostCallSlowest"] <= s.deadline + 5, what
