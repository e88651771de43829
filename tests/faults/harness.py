"""Real processes for the fault tests, and the means to watch them.

* :class:`Process`: a process a test started, logging to a file, stopped by
  its PID (SIGTERM, then SIGKILL) or killed with ``kill -9``;
  :class:`Processes`: every process a test started, to stop them all.
* :func:`startCluster`: a real cluster process with the ``faultext``
  extension.
* :class:`Region`: a region's data directory and discovery port, its
  event-loop processes, and their status files.
* :class:`Driver`: ``clusters.py`` (simulated clusters in one process) and
  the JSON events it writes.
* :class:`FakeDiscovery`: an HTTP server answering ``GET /MAAS/rpc/`` with
  whatever event-loops the test says, so that clusters can be pointed at a
  proxy rather than at the event-loop itself.
* :func:`waitFor`: poll a condition with a bound; nothing here sleeps.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import maasserver
import provisioningserver
from maasserver.supervisor import listeningSocket
from provisioningserver.rpc.discovery import makeDiscoveryDocument
from provisioningserver.rpc.testing import waitFor
from provisioningserver.security import get_or_create_shared_secret

__all__ = [
    "BOUND",
    "Driver",
    "FakeDiscovery",
    "Process",
    "Processes",
    "Region",
    "alive",
    "childEnv",
    "clusterEnv",
    "startCluster",
    "waitFor",
]

HERE = Path(__file__).resolve().parent

#: Where the ``faultext`` extension lives.
EXT = HERE / "ext"

#: Generous bound, in seconds, on every wait for something to happen.
BOUND = 30.0


def childEnv(**settings: str) -> dict[str, str]:
    """This process's environment without its ``MAAS_*`` settings, with
    ``settings`` and a ``PYTHONPATH`` that finds this copy of the package and
    the ``faultext`` extension."""
    entries = [
        str(Path(module.__file__).resolve().parent.parent)
        for module in (provisioningserver, maasserver)
    ]
    entries.append(str(EXT))
    entries.extend(
        os.path.abspath(entry)
        for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep)
        if entry
    )
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("MAAS_RPC_", "MAAS_URL", "FAULTEXT_"))
    }
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(entries))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(settings)
    return env


class Process:
    """A process a test started; its output goes to a log file.

    :ivar role: what it is, for messages.
    :ivar popen: the :class:`subprocess.Popen`.
    :ivar logPath: its log file (standard error, and standard output unless
        ``stdoutPath`` is given).
    :ivar started: :func:`time.monotonic` when it was started.
    """

    def __init__(
        self,
        role: str,
        argv: list[str],
        env: dict[str, str],
        logPath: Path,
        stdoutPath: Path | None = None,
        passFds: tuple[int, ...] = (),
    ) -> None:
        self.role = role
        self.logPath = logPath
        self._logFile = logPath.open("wb")
        self._stdoutFile = stdoutPath.open("wb") if stdoutPath is not None else None
        self.started = time.monotonic()
        self.popen = subprocess.Popen(
            argv,
            env=env,
            cwd=logPath.parent,
            stdin=subprocess.DEVNULL,
            stdout=self._stdoutFile or self._logFile,
            stderr=self._logFile if self._stdoutFile else subprocess.STDOUT,
            pass_fds=passFds,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.logPath.read_text(errors="replace")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def kill9(self) -> float:
        """``kill -9`` it, and reap it.

        :return: :func:`time.monotonic` just before the signal was sent.
        """
        killed = time.monotonic()
        os.kill(self.pid, signal.SIGKILL)
        self.popen.wait(BOUND)
        return killed

    def stop(self) -> int:
        """Terminate it (SIGTERM, then SIGKILL after 15 s), by its PID.

        :return: its exit status.
        """
        if self.popen.poll() is None:
            self.popen.terminate()
        try:
            self.popen.wait(15)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(15)
        self._logFile.close()
        if self._stdoutFile is not None:
            self._stdoutFile.close()
        return self.popen.returncode

    def __repr__(self) -> str:
        return f"<{self.role} pid={self.pid} returncode={self.popen.returncode}>"


class Processes:
    """Every process a test starts, so that the test stops them all."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Process] = []

    def start(
        self,
        role: str,
        argv: list[str],
        env: dict[str, str],
        stdout: bool = False,
        passFds: tuple[int, ...] = (),
    ) -> Process:
        n = len(self.started) + 1
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        process = Process(
            role,
            argv,
            env,
            logs / f"{n:02d}-{role}.log",
            logs / f"{n:02d}-{role}.jsonl" if stdout else None,
            passFds,
        )
        self.started.append(process)
        return process

    def stopAll(self) -> None:
        # Clusters first, so that the event-loops see them leave.
        for process in sorted(self.started, key=lambda p: p.role == "eventloop"):
            process.stop()

    def describe(self) -> str:
        parts = [f"logs in {self.workdir / 'logs'}"]
        for process in self.started:
            parts.append(f"--- {process!r}, last lines of {process.logPath.name}:")
            parts.append(process.tail())
        return "\n".join(parts)


class Region:
    """A region: its data directory, discovery port and event-loop processes.

    The discovery socket listens for the whole test and is handed to every
    event-loop (``MAAS_RPC_HTTP_FD``), as ``maas-rpc region`` does, so that a
    replacement event-loop serves the same port after the first one is
    killed.

    :ivar dataDir: the data directory (secret, store, ``status/``).
    :ivar httpPort: the discovery port every event-loop shares.
    """

    def __init__(self, processes: Processes, **settings: str) -> None:
        self.processes = processes
        self.dataDir = processes.workdir / "region"
        self.dataDir.mkdir()
        self.secretPath = self.dataDir / "secret"
        get_or_create_shared_secret(self.secretPath)
        self._reserved = listeningSocket("127.0.0.1", 0)
        self.httpPort = self._reserved.getsockname()[1]
        self.settings = settings

    def close(self) -> None:
        """Release the discovery port."""
        self._reserved.close()

    @property
    def maasURL(self) -> str:
        return f"http://127.0.0.1:{self.httpPort}/MAAS"

    @property
    def statusDir(self) -> Path:
        return self.dataDir / "status"

    def env(self) -> dict[str, str]:
        return childEnv(
            MAAS_RPC_DATA_DIR=str(self.dataDir),
            MAAS_RPC_HTTP_PORT=str(self.httpPort),
            MAAS_RPC_HTTP_FD=str(self._reserved.fileno()),
            MAAS_RPC_PORTS="0",
            MAAS_RPC_BIND="127.0.0.1",
            MAAS_RPC_STATUS="1",
            MAAS_RPC_REGION_PROTOCOL="faultext.region:FaultRegion",
            **self.settings,
        )

    def startEventloop(self) -> Process:
        """Start an event-loop process (it binds any free RPC port)."""
        return self.processes.start(
            "eventloop",
            [sys.executable, "-m", "maasserver.cli", "eventloop"],
            self.env(),
            passFds=(self._reserved.fileno(),),
        )

    def status(self, process: Process) -> dict[str, Any] | None:
        """The status file of a live event-loop process, or ``None``."""
        if not process.alive:
            return None
        try:
            return json.loads((self.statusDir / f"{process.pid}.json").read_text())
        except (OSError, ValueError):
            return None

    def discover(self) -> dict[str, Any]:
        """The event-loops advertised now (``{}`` when none, or no answer)."""
        try:
            with urllib.request.urlopen(f"{self.maasURL}/rpc/", timeout=5) as answer:
                return json.load(answer)["eventloops"] or {}
        except OSError:
            return {}

    def waitAdvertised(self, process: Process) -> tuple[str, int, float]:
        """Wait until ``process`` listens and is advertised.

        :return: its name, its RPC port, and :func:`time.monotonic` when the
            test first saw it advertised.
        """

        def advertised() -> tuple[str, int, float] | None:
            status = self.status(process)
            if status is None or status["eventloop"] not in self.discover():
                return None
            return status["eventloop"], int(status["port"]), time.monotonic()

        return waitFor(advertised, f"{process!r} to advertise", check=alive(process))

    def connectedTo(self, process: Process) -> list[str]:
        """The cluster UUIDs ``process``'s status file lists."""
        return list((self.status(process) or {}).get("clusters", ()))


def alive(*processes: Process) -> Callable[[], None]:
    """A ``check`` for :func:`waitFor`: fail at once if one of ``processes``
    died."""

    def check() -> None:
        dead = [p for p in processes if not p.alive]
        if dead:
            raise AssertionError(
                f"processes died: {dead}\n"
                + "\n".join(f"--- {p!r}:\n{p.tail()}" for p in dead)
            )

    return check


class Driver:
    """``clusters.py``: simulated clusters in one process, and their events."""

    def __init__(
        self,
        processes: Processes,
        maasURL: str,
        secretPath: Path,
        *args: str,
        count: int = 1,
    ) -> None:
        self.process = processes.start(
            "clusters",
            [
                sys.executable,
                str(HERE / "clusters.py"),
                "--maas-url",
                maasURL,
                "--secret-file",
                str(secretPath),
                "--count",
                str(count),
                *args,
            ],
            childEnv(),
            stdout=True,
        )
        self.eventsPath = self.process.logPath.with_suffix(".jsonl")

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The events written so far (complete lines only)."""
        try:
            text = self.eventsPath.read_text()
        except OSError:
            return []
        found = []
        for line in text.splitlines(keepends=True):
            if not line.endswith("\n"):
                break  # Being written.
            event = json.loads(line)
            if kind is None or event["event"] == kind:
                found.append(event)
        return found

    def uuids(self) -> list[str]:
        started = waitFor(
            lambda: self.events("started"),
            "the clusters to start",
            check=alive(self.process),
        )
        return list(started[0]["uuids"])

    def finish(self) -> dict[str, Any]:
        """Stop it (SIGTERM) and return its summary."""
        self.process.stop()
        summary = self.events("summary")
        assert summary, f"no summary from {self.process!r}:\n{self.process.tail()}"
        return summary[0]


class ThreadedHTTP:
    """An HTTP server on ``127.0.0.1`` in a thread of its own.

    :ivar maasURL: the base URL to give clusters as ``MAAS_URL``.
    """

    def _serve(
        self,
        handler: type[http.server.BaseHTTPRequestHandler],
        serverClass: type[http.server.ThreadingHTTPServer] = (
            http.server.ThreadingHTTPServer
        ),
    ) -> None:
        """Start serving with ``handler``, on a free port."""
        self.server = serverClass(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.maasURL = f"http://127.0.0.1:{self.server.server_address[1]}/MAAS"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(BOUND)


class FakeDiscovery(ThreadedHTTP):
    """An HTTP server on ``127.0.0.1`` answering ``GET <anything>/rpc/`` with
    ``{"eventloops": <eventloops>, "mac": ...}`` signed with ``secret``, in a
    thread of its own.

    :ivar eventloops: what it answers; change it at any time.
    :ivar failing: when true, it answers ``503 Service Unavailable`` instead.
    :ivar requests: how many requests it has answered, and ``refused`` how
        many of them with 503.
    :ivar maasURL: the base URL to give clusters as ``MAAS_URL``.
    """

    def __init__(
        self,
        eventloops: dict[str, list[list[Any]]] | None = None,
        *,
        secret: bytes | None = None,
    ) -> None:
        self.eventloops = eventloops
        self.failing = False
        self.requests = 0
        self.refused = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                owner.requests += 1
                if owner.failing:
                    owner.refused += 1
                    body = b"unavailable"
                    self.send_response(503)
                elif self.path.rstrip("/").endswith("/rpc"):
                    body = makeDiscoveryDocument(secret, owner.eventloops)
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                else:
                    body = b"not found"
                    self.send_response(404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._serve(Handler)


def clusterEnv(
    maasURL: str, secretPath: Path, workdir: Path, **settings: str
) -> tuple[str, dict[str, str]]:
    """A cluster process's UUID and environment: its own data directory with
    a copy of the region's secret.

    :return: ``(uuid, env)``.
    """
    clusterUUID = str(uuid.uuid4())
    dataDir = workdir / f"cluster-{clusterUUID}"
    dataDir.mkdir()
    shutil.copy(secretPath, dataDir / "secret")
    return clusterUUID, childEnv(
        MAAS_URL=maasURL,
        MAAS_RPC_DATA_DIR=str(dataDir),
        MAAS_RPC_CLUSTER_UUID=clusterUUID,
        MAAS_RPC_CLUSTER_PROTOCOL="faultext.cluster:FaultCluster",
        **settings,
    )


def startCluster(
    processes: Processes, maasURL: str, secretPath: Path, **settings: str
) -> tuple[str, Process]:
    """Start a real cluster process (``python -m provisioningserver.cli
    cluster``) with the ``faultext`` protocol.

    :return: ``(uuid, process)``.
    """
    clusterUUID, env = clusterEnv(maasURL, secretPath, processes.workdir, **settings)
    process = processes.start(
        "cluster",
        [sys.executable, "-m", "provisioningserver.cli", "cluster"],
        env,
    )
    return clusterUUID, process
