"""The operator's toolkit against a real ``maas-rpc region --workers 2`` and
two cluster processes: ``status``, ``call``, metrics, readiness, a clean
stop; and supervision that fails fast.

Every process is started here and stopped here, by its PID. Waits poll a
condition with a bound; the figures measured are printed, never asserted
on.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest

from provisioningserver.rpc.testing import waitFor

BOUND = 60.0

HAVE_PROMETHEUS = find_spec("prometheus_client") is not None


def env(**settings: str) -> dict[str, str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MAAS_RPC_", "MAAS_URL", "NOTIFY_SOCKET"))
    }
    clean["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    clean["PYTHONUNBUFFERED"] = "1"
    clean.update(settings)
    return clean


def cli(*args: str, timeout: float = BOUND, **settings: str) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "maasserver.cli", *args],
        env=env(**settings),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def freePort() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Started:
    """A process this module started (output in a file); stopped by PID."""

    def __init__(self, argv: list[str], environ: dict[str, str], log: Path) -> None:
        self.log = log
        self._file = log.open("wb")
        self.popen = subprocess.Popen(
            argv,
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=self._file,
            stderr=subprocess.STDOUT,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout)
        self._file.close()
        return self.popen.returncode


class Notifications:
    """A datagram socket standing in for systemd's ``NOTIFY_SOCKET``."""

    def __init__(self) -> None:
        self.name = f"@maas-rpc-test-{os.getpid()}-{os.urandom(4).hex()}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name[1:])
        self.sock.settimeout(0.1)
        self.received: list[str] = []

    def poll(self) -> list[str]:
        try:
            while True:
                self.received.extend(self.sock.recv(65536).decode("utf-8").splitlines())
        except TimeoutError:
            pass
        return self.received

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory):
    """``maas-rpc region --workers 2`` (with metrics when prometheus_client is
    installed) and two clusters, fully meshed."""
    work = tmp_path_factory.mktemp("operator")
    data = work / "region"
    notify = Notifications()
    metricsPort = freePort() if HAVE_PROMETHEUS else None
    settings = dict(
        MAAS_RPC_DATA_DIR=str(data),
        MAAS_RPC_HTTP_PORT="0",
        MAAS_RPC_PORTS="0",
        MAAS_RPC_BIND="127.0.0.1",
        NOTIFY_SOCKET=notify.name,
    )
    if metricsPort is not None:
        settings["MAAS_RPC_METRICS_PORT"] = str(metricsPort)
    started = time.monotonic()
    supervisor = Started(
        [sys.executable, "-m", "maasserver.cli", "region", "--workers", "2"],
        env(**settings),
        work / "region.log",
    )
    clusters: list[Started] = []
    try:
        waitFor(
            lambda: "READY=1" in notify.poll() or supervisor.popen.poll() is not None,
            what="the region to notify READY=1",
            timeout=BOUND,
        )
        assert supervisor.popen.poll() is None, supervisor.text()
        print(f"\nregion ready (sd_notify) after {time.monotonic() - started:.2f}s")
        port = int(re.search(r"127\.0\.0\.1:(\d+)/MAAS/rpc/", supervisor.text())[1])
        for n in (1, 2):
            cdata = work / f"cluster-{n}"
            cdata.mkdir()
            shutil.copy(data / "secret", cdata / "secret")
            clusters.append(
                Started(
                    [sys.executable, "-m", "provisioningserver.cli", "cluster"],
                    env(
                        MAAS_RPC_DATA_DIR=str(cdata),
                        MAAS_URL=f"http://127.0.0.1:{port}/MAAS",
                        MAAS_RPC_POLL_DISCONNECTED="0.2",
                        MAAS_RPC_POLL_PARTIAL="0.5",
                    ),
                    work / f"cluster-{n}.log",
                )
            )

        def meshed() -> bool:
            result = cli("status", "--json", MAAS_RPC_DATA_DIR=str(data))
            if result.returncode != 0:
                return False
            conns = [c for a in json.loads(result.stdout) for c in a["connections"]]
            return sum(c["state"] == "authenticated" for c in conns) == 4

        waitFor(meshed, what="4 authenticated connections", timeout=BOUND)
        print(f"mesh of 2 x 2 after {time.monotonic() - started:.2f}s")
        yield {
            "data": data,
            "work": work,
            "supervisor": supervisor,
            "clusters": clusters,
            "metricsPort": metricsPort,
            "notify": notify,
        }
    finally:
        for process in clusters:
            process.stop()
        supervisor.stop()
        notify.close()


def test_status_lists_four_connections(region):
    result = cli("status", MAAS_RPC_DATA_DIR=str(region["data"]))
    print(result.stdout)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["EVENT-LOOP", "CLUSTER", "PEER"]
    rows = [line for line in lines[1:-1] if "127.0.0.1:" in line]
    assert len(rows) == 4, result.stdout
    assert lines[-1] == "2 event-loop(s), 4 connection(s), 2 cluster(s)"


def test_status_json_for_scripts(region):
    result = cli("status", "--json", MAAS_RPC_DATA_DIR=str(region["data"]))
    answers = json.loads(result.stdout)
    assert len(answers) == 2
    for answer in answers:
        assert answer["eventloop"].endswith(f"pid={answer['pid']}")
        assert len(answer["connections"]) == 2
        for conn in answer["connections"]:
            assert set(conn) >= {
                "cluster",
                "peer",
                "connectedAt",
                "mode",
                "tls",
                "callsMade",
                "callsFailed",
                "lastCallAt",
                "state",
            }


def test_call_all_prints_one_rating_per_cluster(region):
    result = cli(
        "call",
        "EatCheez",
        "name=Brie",
        "origin=France",
        "--all",
        MAAS_RPC_DATA_DIR=str(region["data"]),
    )
    print(result.stdout)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 2
    assert {line["answer"]["rating"] for line in lines} == {8}
    assert len({line["cluster"] for line in lines}) == 2


def test_call_one_cluster_prints_its_answer(region):
    uuid = (region["work"] / "cluster-1" / "cluster_uuid").read_text().strip()
    result = cli(
        "call",
        "EatCheez",
        "name=Gouda",
        "origin=Netherlands",
        "--cluster",
        uuid,
        MAAS_RPC_DATA_DIR=str(region["data"]),
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"rating": 10}


def test_call_prints_a_declared_error_with_its_code(region):
    result = cli(
        "call",
        "EatCheez",
        "name=Cheez Whiz",
        "origin=USA",
        "--all",
        MAAS_RPC_DATA_DIR=str(region["data"]),
    )
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    print(result.stdout)
    assert result.returncode == 1
    assert len(lines) == 2
    for line in lines:
        assert line["error"] == {
            "code": "NoSuchCheese",
            "description": "Cheez Whiz is not cheese",
        }


def test_call_refuses_bad_arguments_in_one_line(region):
    result = cli(
        "call", "EatCheez", "name=Brie", "--all", MAAS_RPC_DATA_DIR=str(region["data"])
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "maas-rpc call: error: missing argument origin"
    ], result.stderr
    result = cli(
        "call", "NoSuchCommand", "--all", MAAS_RPC_DATA_DIR=str(region["data"])
    )
    assert result.returncode == 2
    assert "no command 'NoSuchCommand'" in result.stderr


def test_status_cluster_shows_the_clusters_view(region):
    cdata = region["work"] / "cluster-1"
    result = cli("status", "--cluster", MAAS_RPC_DATA_DIR=str(cdata))
    print(result.stdout)
    assert result.returncode == 0, result.stderr
    uuid = (cdata / "cluster_uuid").read_text().strip()
    rows = [line for line in result.stdout.splitlines() if line.startswith(uuid)]
    assert len(rows) == 2


def test_status_of_the_other_role_is_one_line(region):
    """``--cluster`` given a region's directory (or its absence, a
    cluster's) names the mix-up instead of printing a table of blanks."""
    cdata = region["work"] / "cluster-1"
    for flags, data, fix in [
        (["--cluster"], region["data"], "without --cluster"),
        ([], cdata, "with --cluster"),
    ]:
        result = cli("status", *flags, MAAS_RPC_DATA_DIR=str(data))
        print(result.stderr)
        assert result.returncode == 1
        assert result.stdout == ""
        [line] = result.stderr.splitlines()
        assert f"in {data / 'control'} are" in line and fix in line, line


@pytest.mark.skipif(not HAVE_PROMETHEUS, reason="prometheus_client not installed")
def test_metrics_are_served_by_the_region(region):
    cli(
        "call",
        "EatCheez",
        "name=Brie",
        "origin=France",
        "--all",
        MAAS_RPC_DATA_DIR=str(region["data"]),
    )
    url = f"http://127.0.0.1:{region['metricsPort']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode("utf-8")
    calls = re.findall(
        r'maas_rpc_calls_total\{command="EatCheez",direction="out"\} (\S+)', text
    )
    assert calls and float(calls[0]) >= 2, text


def test_worker_that_cannot_start_stops_the_region_in_one_line(tmp_path):
    # One RPC port for two workers: the second cannot bind one.
    port = freePort()
    started = time.monotonic()
    result = cli(
        "region",
        "--workers",
        "2",
        "--ports",
        str(port),
        "--bind",
        "127.0.0.1",
        "--http-port",
        "0",
        timeout=BOUND,
        MAAS_RPC_DATA_DIR=str(tmp_path),
    )
    took = time.monotonic() - started
    print(f"\nregion exited {result.returncode} after {took:.2f}s: {result.stderr}")
    assert result.returncode != 0
    assert took < 10
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("maas-rpc region: error: ")
    assert "no free RPC port" in lines[0]
    # The workers are gone with it.
    assert not list((tmp_path / "control").glob("*.sock"))


def test_second_region_on_a_running_regions_port_is_refused(region, tmp_path):
    text = region["supervisor"].text()
    port = int(re.search(r"127\.0\.0\.1:(\d+)/MAAS/rpc/", text)[1])
    result = cli(
        "region",
        "--http-port",
        str(port),
        "--bind",
        "127.0.0.1",
        MAAS_RPC_DATA_DIR=str(tmp_path),
    )
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert f"127.0.0.1:{port} is in use by another process" in lines[0]


def test_supervisor_logs_each_worker_line_once(region):
    text = region["supervisor"].text()
    ready = [line for line in text.splitlines() if "ready:" in line]
    # One per worker, one for the region; each with one timestamp.
    assert len([line for line in ready if "eventloop-" in line]) == 2, text
    assert len([line for line in ready if "Region ready" in line]) == 1, text
    stamp = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
    for line in ready:
        assert len(stamp.findall(line)) == 1, line
    assert "Starting factory" not in text
    assert "GET /MAAS/rpc/" not in text
