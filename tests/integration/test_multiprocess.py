"""Real region event-loop and cluster processes on 127.0.0.1.

The module builds one mesh, once: two region event-loops (this process's,
run in-process the way a plain Python program runs one, and one worker
process) and three cluster processes, every one of them loading the
``cheeseboard`` user extension (``userext/cheeseboard``). Every event-loop
ends up connected to every cluster; the tests call across it in both
directions, add a cluster with the wrong secret, and kill and replace the
worker event-loop. The last tests run the command-line entry points on
their own.

Nothing sleeps to synchronise: each wait polls a condition (status files,
logs, discovery) until a generous deadline. The figures measured (how long
the mesh takes to form, to recover) are printed, never asserted on; run with
``-s`` to see them.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.threads import blockingCallFromThread
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure

import maasserver
import provisioningserver
from maasserver import eventloop
from maasserver.config import RegionConfig
from maasserver.demo import meshConnections
from maasserver.rpc import getAllClients, getClientFor
from maasserver.supervisor import listeningSocket
from maasserver.utils.asynchronous import gather
from provisioningserver.cheese import rate_cheese
from provisioningserver.rpc.cluster import EatCheez
from provisioningserver.rpc.exceptions import NoConnectionsAvailable, NoSuchCheese
from provisioningserver.rpc.testing import waitFor
from provisioningserver.security import get_or_create_shared_secret, read_shared_secret

HERE = Path(__file__).resolve().parent

#: Where the ``cheeseboard`` extension lives; on ``PYTHONPATH`` of every
#: process started here, and on this process's ``sys.path``.
USEREXT = HERE / "userext"

#: Generous bound, in seconds, on every wait for something to happen.
BOUND = 30.0

#: Bound, in seconds, on one RPC call.
CALL = 10.0

#: Cheeses to rate: (name, origin), one per cluster.
CHEESES = [("Brie", "France"), ("Gouda", "Netherlands"), ("Stilton", "England")]

CLUSTERS = 3


def _userext(module: str) -> Any:
    """Import a module of the ``cheeseboard`` extension in this process."""
    if str(USEREXT) not in sys.path:
        sys.path.insert(0, str(USEREXT))
    return importlib.import_module(module)


cheeseboard = _userext("cheeseboard")
CheeseboardRegion = _userext("cheeseboard.region").CheeseboardRegion


def _pythonPath() -> str:
    """``PYTHONPATH`` for the processes: this process's copy of the package
    first (the source tree, or where it is installed), then the extension,
    then whatever ``PYTHONPATH`` this process had."""
    entries = [
        str(Path(module.__file__).resolve().parent.parent)
        for module in (provisioningserver, maasserver)
    ]
    entries.append(str(USEREXT))
    entries.extend(
        os.path.abspath(entry)
        for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep)
        if entry
    )
    return os.pathsep.join(dict.fromkeys(entries))


def childEnv(**settings: str) -> dict[str, str]:
    """This process's environment without its ``MAAS_*`` settings, with
    ``settings`` and a ``PYTHONPATH`` that finds the package and the
    extension."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("MAAS_RPC_", "MAAS_URL"))
    }
    env["PYTHONPATH"] = _pythonPath()
    env["PYTHONUNBUFFERED"] = "1"
    env.update(settings)
    return env


def _reactorState() -> tuple[frozenset[Any], frozenset[Any]]:
    """The reactor's delayed calls (by what they run) and its sockets."""
    from twisted.internet import reactor

    def state() -> tuple[frozenset[Any], frozenset[Any]]:
        return (
            frozenset(c.func for c in reactor.getDelayedCalls() if c.active()),
            frozenset(reactor.getReaders()) | frozenset(reactor.getWriters()),
        )

    return blockingCallFromThread(reactor, state)


def _leftBehind(
    baseline: tuple[frozenset[Any], frozenset[Any]],
) -> tuple[set[Any], set[Any]]:
    """What the reactor has now, timers and sockets, that it had not at
    ``baseline``."""
    calls, sockets = _reactorState()
    return set(calls - baseline[0]), set(sockets - baseline[1])


class Process:
    """A process this module started, logging (stdout and stderr) to a file.

    :ivar role: what it is, for messages.
    :ivar popen: the :class:`subprocess.Popen`.
    :ivar logPath: its log file.
    """

    def __init__(
        self,
        role: str,
        argv: list[str],
        env: dict[str, str],
        logPath: Path,
        passFds: tuple[int, ...] = (),
    ) -> None:
        self.role = role
        self.logPath = logPath
        self._logFile = logPath.open("wb")
        self.popen = subprocess.Popen(
            argv,
            env=env,
            cwd=logPath.parent,
            stdin=subprocess.DEVNULL,
            stdout=self._logFile,
            stderr=subprocess.STDOUT,
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

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

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
        return self.popen.returncode

    def __repr__(self) -> str:
        return f"<{self.role} pid={self.pid} returncode={self.popen.returncode}>"


class Mesh:
    """Region event-loops and clusters started by this module.

    :ivar regionDir: the region's data directory (secret, store, status).
    :ivar httpPort: the discovery port all event-loops share.
    :ivar httpSocket: its listening socket, handed to every event-loop
        (``MAAS_RPC_HTTP_FD``), as ``maas-rpc region`` does.
    :ivar localName: the in-process event-loop's name.
    :ivar worker: the worker event-loop process now in the mesh.
    :ivar uuids: the UUIDs of the mesh's clusters, in order.
    :ivar clusters: their processes, in the same order.
    :ivar processes: every process started, to stop at the end.
    :ivar essential: the processes that must stay alive.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.regionDir = workdir / "region"
        self.regionDir.mkdir()
        self.httpPort = 0
        self.httpSocket: socket.socket | None = None
        self.localName = ""
        self.worker: Process | None = None
        self.uuids: list[str] = []
        self.clusters: list[Process] = []
        self.processes: list[Process] = []
        self.essential: list[Process] = []

    @property
    def statusDir(self) -> Path:
        return self.regionDir / "status"

    @property
    def maasURL(self) -> str:
        return f"http://127.0.0.1:{self.httpPort}/MAAS"

    def regionEnv(self) -> dict[str, str]:
        assert self.httpSocket is not None
        return childEnv(
            MAAS_RPC_DATA_DIR=str(self.regionDir),
            MAAS_RPC_HTTP_PORT=str(self.httpPort),
            MAAS_RPC_HTTP_FD=str(self.httpSocket.fileno()),
            MAAS_RPC_PORTS="0",
            MAAS_RPC_BIND="127.0.0.1",
            MAAS_RPC_STATUS="1",
            MAAS_RPC_REGION_PROTOCOL="cheeseboard.region:CheeseboardRegion",
        )

    def _start(
        self,
        role: str,
        argv: list[str],
        env: dict[str, str],
        essential: bool,
        passFds: tuple[int, ...] = (),
    ) -> Process:
        n = len(self.processes) + 1
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        process = Process(role, argv, env, logs / f"{n:02d}-{role}.log", passFds)
        self.processes.append(process)
        if essential:
            self.essential.append(process)
        return process

    def startEventloop(self) -> Process:
        """Start a worker event-loop process, and make it the mesh's."""
        self.worker = self._start(
            "eventloop",
            [sys.executable, "-m", "maasserver.cli", "eventloop"],
            self.regionEnv(),
            essential=True,
            passFds=(self.httpSocket.fileno(),) if self.httpSocket else (),
        )
        return self.worker

    def startCluster(
        self,
        clusterUUID: str,
        *,
        ownSecret: bool = False,
        essential: bool = True,
        maasURL: str | None = None,
    ) -> Process:
        """Start a cluster process with a copy of the region's secret (or,
        with ``ownSecret``, a fresh secret of its own), discovering the
        region at ``maasURL`` (the region's own when ``None``)."""
        dataDir = self.workdir / f"cluster-{clusterUUID}"
        dataDir.mkdir()
        if ownSecret:
            get_or_create_shared_secret(dataDir / "secret")
        else:
            shutil.copy(self.regionDir / "secret", dataDir / "secret")
        env = childEnv(
            MAAS_URL=maasURL or self.maasURL,
            MAAS_RPC_DATA_DIR=str(dataDir),
            MAAS_RPC_CLUSTER_UUID=clusterUUID,
            MAAS_RPC_POLL_DISCONNECTED="0.5",
            MAAS_RPC_POLL_PARTIAL="0.5",
            MAAS_RPC_POLL_CONNECTED="1",
            MAAS_RPC_CLUSTER_PROTOCOL="cheeseboard.cluster:CheeseboardCluster",
        )
        return self._start(
            "cluster" if essential else "extra-cluster",
            [sys.executable, "-m", "provisioningserver.cli", "cluster"],
            env,
            essential,
        )

    def stopProcess(self, process: Process) -> int:
        if process in self.essential:
            self.essential.remove(process)
        return process.stop()

    def stopAll(self) -> None:
        # Clusters first, so the event-loops see them leave.
        for process in sorted(self.processes, key=lambda p: p.role == "eventloop"):
            self.stopProcess(process)

    def checkAlive(self) -> None:
        dead = [p for p in self.essential if not p.alive]
        if dead:
            raise AssertionError(f"processes died: {dead}\n{self.describe()}")

    def waitFor(self, condition: Callable[[], Any], what: str, **kwargs: Any) -> Any:
        return waitFor(condition, what, check=self.checkAlive, **kwargs)

    def statuses(self) -> dict[int, dict[str, Any]]:
        """The status files of the live event-loops, by PID."""
        live = {os.getpid()}
        live.update(p.pid for p in self.processes if p.role == "eventloop" and p.alive)
        found = {}
        for path in self.statusDir.glob("*.json"):
            try:
                pid = int(path.stem)
                status = json.loads(path.read_text())
            except (ValueError, OSError):
                continue
            if pid in live:
                found[pid] = status
        return found

    def connectedTo(self, pid: int) -> set[str]:
        """The clusters the event-loop with ``pid`` says it is connected to."""
        return set(self.statuses().get(pid, {}).get("clusters", ()))

    def discover(self) -> dict[str, Any] | None:
        """Ask any event-loop which event-loops are advertised.

        :return: the ``eventloops`` of the answer; ``None`` when nothing is
            advertised yet or the request failed.
        """
        url = f"{self.maasURL}/rpc/"
        try:
            with urllib.request.urlopen(url, timeout=CALL) as response:
                return json.load(response)["eventloops"]
        except OSError:
            return None

    def describe(self) -> str:
        parts = [f"logs in {self.workdir / 'logs'}"]
        for process in self.processes:
            parts.append(f"--- {process!r}, last lines of {process.logPath.name}:")
            parts.append(process.tail())
        return "\n".join(parts)


def _buildMesh(mesh: Mesh) -> None:
    get_or_create_shared_secret(mesh.regionDir / "secret")
    # The discovery socket, shared by both event-loops (and their
    # replacements); closed when the mesh stops.
    mesh.httpSocket = listeningSocket("127.0.0.1", 0)
    mesh.httpPort = mesh.httpSocket.getsockname()[1]
    started = time.monotonic()
    config = RegionConfig.from_env(mesh.regionEnv())
    eventloop.start(config, protocol=CheeseboardRegion).wait(BOUND)
    mesh.localName = eventloop.loop.name
    worker = mesh.startEventloop()
    mesh.waitFor(
        lambda: worker.pid in mesh.statuses() and len(mesh.discover() or ()) == 2,
        "both region event-loops to listen and advertise",
    )
    regionUp = time.monotonic() - started

    started = time.monotonic()
    mesh.uuids = [str(uuid.uuid4()) for _ in range(CLUSTERS)]
    mesh.clusters = [mesh.startCluster(u) for u in mesh.uuids]
    everyone = set(mesh.uuids)

    def formed() -> bool:
        statuses = mesh.statuses()
        return len(statuses) == 2 and all(
            set(s["clusters"]) == everyone for s in statuses.values()
        )

    mesh.waitFor(formed, "every event-loop to be connected to every cluster")
    print(
        f"\nregion (2 event-loops) up in {regionUp:.2f} s; mesh of 2 x "
        f"{CLUSTERS} connections formed {time.monotonic() - started:.2f} s "
        "after the clusters were started"
    )


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory):
    """The mesh: 2 region event-loops (this process, a worker), 3 clusters."""
    mesh = Mesh(tmp_path_factory.mktemp("mesh"))
    baseline = _reactorState()
    try:
        try:
            _buildMesh(mesh)
        except BaseException:
            print(mesh.describe())
            raise
        yield mesh
    finally:
        mesh.stopAll()
        eventloop.reset().wait(BOUND)
        if mesh.httpSocket is not None:
            mesh.httpSocket.close()
    # Once the processes are gone and the event-loop reset, this process's
    # reactor holds nothing of the mesh: no socket, no timer.
    started = time.monotonic()
    waitFor(
        lambda: _leftBehind(baseline) == (set(), set()),
        "the reactor to drop every socket and timer of the in-process event-loop",
    )
    print(f"\nreactor back to its baseline {time.monotonic() - started:.2f} s after")


def _call(uuid: str, command: Any, **kwargs: Any) -> dict[str, Any]:
    """Call ``command`` on cluster ``uuid`` through the in-process event-loop."""
    client = getClientFor(uuid, timeout=CALL)
    assert client.ident == uuid
    return client(command, **kwargs).wait(CALL)


def test_every_eventloop_is_connected_to_every_cluster(mesh: Mesh) -> None:
    statuses = mesh.statuses()
    assert sorted(s["eventloop"] for s in statuses.values()) == sorted(
        [mesh.localName, f"{socket.gethostname()}:pid={mesh.worker.pid}"]
    )
    for status in statuses.values():
        assert status["clusters"] == sorted(mesh.uuids)
        assert status["connections"] == CLUSTERS
    assert sum(meshConnections(mesh.statusDir).values()) == 2 * CLUSTERS
    assert sorted(client.ident for client in getAllClients()) == sorted(mesh.uuids)


def test_region_calls_each_cluster_through_getClientFor(mesh: Mesh) -> None:
    for clusterUUID, (name, origin) in zip(mesh.uuids, CHEESES, strict=True):
        response = _call(clusterUUID, EatCheez, name=name, origin=origin)
        assert response == {"rating": rate_cheese(name, origin)}
        # A declared error crosses the process boundary as itself.
        with pytest.raises(NoSuchCheese, match="Cheez Whiz"):
            _call(clusterUUID, EatCheez, name="Cheez Whiz", origin="USA")


def test_region_gathers_from_every_cluster(mesh: Mesh) -> None:
    clients = getAllClients()
    # One client per connection, and each cluster has one connection here.
    assert sorted(client.ident for client in clients) == sorted(mesh.uuids)

    def eat(client: Any, name: str, origin: str) -> Any:
        d = client(EatCheez, name=name, origin=origin)
        return d.addCallback(lambda r: (client.ident, name, origin, r["rating"]))

    calls = [
        partial(eat, client, name, origin)
        for client, (name, origin) in zip(clients, CHEESES, strict=True)
    ]
    started = time.monotonic()
    results = gather(calls, timeout=CALL)
    answers = list(results)
    print(f"\ngathered {len(answers)} answers in {time.monotonic() - started:.3f} s")
    assert results.timedOut == []
    assert [a for a in answers if isinstance(a, Failure)] == []
    assert sorted(answers) == sorted(
        (client.ident, name, origin, rate_cheese(name, origin))
        for client, (name, origin) in zip(clients, CHEESES, strict=True)
    )


def test_each_cluster_calls_the_region_through_getRegionClient(mesh: Mesh) -> None:
    names = [mesh.localName, f"{socket.gethostname()}:pid={mesh.worker.pid}"]
    expected = {cheeseboard.greeting("Alice", name): name for name in names}
    answeredBy: Counter[str] = Counter()
    for clusterUUID in mesh.uuids:
        for via in cheeseboard.VIAS:
            response = _call(clusterUUID, cheeseboard.AskRegion, name="Alice", via=via)
            assert response["greeting"] in expected
            answeredBy[expected[response["greeting"]]] += 1
            # The reactor runs in a cluster process's main thread.
            if via == "reactor":
                assert response["thread"] == "MainThread"
            else:
                assert response["thread"] != "MainThread"
        # The extension's declared error crosses the wire as itself too.
        with pytest.raises(cheeseboard.UnknownVia, match="pigeon"):
            _call(clusterUUID, cheeseboard.AskRegion, name="Alice", via="pigeon")
    print(f"\nGreet answered by: {dict(answeredBy)}")


def test_cluster_with_wrong_secret_is_refused_and_the_region_says_why(
    mesh: Mesh,
) -> None:
    badUUID = str(uuid.uuid4())
    why = ("disconnected before completing the handshake", "Authentication of cluster")
    complaints: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        text = formatEvent(event)
        if badUUID in text and any(reason in text for reason in why):
            complaints.append(text)

    # The region's discovery document is signed with the region's secret, so
    # a cluster with another secret ignores it and never connects. To reach
    # the region's handshake, it is given the same event-loops in a document
    # signed with its own secret.
    discovery = _ResigningDiscovery(mesh, badUUID)
    globalLogPublisher.addObserver(observe)
    bad = None
    try:
        started = time.monotonic()
        bad = mesh.startCluster(
            badUUID, ownSecret=True, essential=False, maasURL=discovery.maasURL
        )
        # Two complaints: the cluster tried (at least) twice and was refused
        # each time.
        mesh.waitFor(
            lambda: len(complaints) >= 2,
            f"the in-process event-loop to log why it refuses {badUUID}",
        )
        print(
            f"\nthe region refused the cluster with the wrong secret twice within "
            f"{time.monotonic() - started:.2f} s; first complaint: {complaints[0]}"
        )
        # The worker event-loop says why in its log too.
        mesh.waitFor(
            lambda: any(
                badUUID in line and any(reason in line for reason in why)
                for line in mesh.worker.log().splitlines()
            ),
            f"the worker event-loop to log why it refuses {badUUID}",
        )
        assert bad.alive, bad.tail()
        assert sorted(client.ident for client in getAllClients()) == sorted(mesh.uuids)
        with pytest.raises(NoConnectionsAvailable):
            getClientFor(badUUID, timeout=0)
        for status in mesh.statuses().values():
            assert badUUID not in status["clusters"]
    finally:
        globalLogPublisher.removeObserver(observe)
        if bad is not None:
            mesh.stopProcess(bad)
        discovery.close()


class _ResigningDiscovery:
    """Serves the mesh's advertised event-loops signed with the secret of
    the cluster ``clusterUUID`` (which has a secret of its own)."""

    def __init__(self, mesh: Mesh, clusterUUID: str) -> None:
        secretPath = mesh.workdir / f"cluster-{clusterUUID}" / "secret"
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from provisioningserver.rpc.discovery import makeDiscoveryDocument

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                loops = mesh.discover()
                body = makeDiscoveryDocument(
                    read_shared_secret(secretPath),
                    None
                    if loops is None
                    else {
                        name: [tuple(e) for e in ends] for name, ends in loops.items()
                    },
                )
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
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


def test_cluster_hanging_up_mid_handshake_is_logged_once_without_a_traceback(
    mesh: Mesh,
) -> None:
    from twisted.internet import reactor

    badUUID = str(uuid.uuid4())
    events: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "maasserver.rpc.regionservice":
            events.append(event)

    def hungUp() -> dict[str, Any] | None:
        for event in list(events):
            if event.get("ident") == badUUID and "disconnected before" in formatEvent(
                event
            ):
                return event
        return None

    discovery = _ResigningDiscovery(mesh, badUUID)
    globalLogPublisher.addObserver(observe)
    bad = None
    try:
        # A cluster with the wrong secret hangs up as soon as it has checked
        # the region's digest, which is often before the region has checked
        # the cluster's.
        bad = mesh.startCluster(
            badUUID, ownSecret=True, essential=False, maasURL=discovery.maasURL
        )
        warning = mesh.waitFor(hungUp, f"cluster {badUUID} to hang up mid-handshake")
        # The region logs all it has to say about that connection in the
        # reactor turn that logged the warning; let the turn end.
        blockingCallFromThread(reactor, lambda: None)
        about = [
            formatEvent(event)
            for event in list(events)
            if event.get("peer") == warning["peer"]
        ]
        assert about == [formatEvent(warning)]
    finally:
        globalLogPublisher.removeObserver(observe)
        if bad is not None:
            mesh.stopProcess(bad)
        discovery.close()


def test_clusters_survive_a_killed_eventloop_and_join_its_replacement(
    mesh: Mesh,
) -> None:
    worker = mesh.worker
    assert worker is not None
    deadName = f"{socket.gethostname()}:pid={worker.pid}"
    mesh.essential.remove(worker)
    killed = time.monotonic()
    os.kill(worker.pid, signal.SIGKILL)
    worker.popen.wait(BOUND)

    # Every cluster notices, and drops it.
    lost = f"Lost connection to region event-loop {deadName}."
    for cluster in mesh.clusters:
        mesh.waitFor(lambda c=cluster: lost in c.log(), f"{cluster!r} to log {lost!r}")
    noticed = time.monotonic() - killed

    # The region still reaches every cluster through this process's
    # event-loop ...
    for clusterUUID, (name, origin) in zip(mesh.uuids, CHEESES, strict=True):
        response = _call(clusterUUID, EatCheez, name=name, origin=origin)
        assert response == {"rating": rate_cheese(name, origin)}
    # ... and every cluster reaches the region, now always this process's.
    survivor = cheeseboard.greeting("Bob", mesh.localName)
    for clusterUUID in mesh.uuids:
        for via in cheeseboard.VIAS * 3:
            response = _call(clusterUUID, cheeseboard.AskRegion, name="Bob", via=via)
            assert response["greeting"] == survivor

    # A new event-loop: the clusters find it and connect, without a restart.
    started = time.monotonic()
    replacement = mesh.startEventloop()
    mesh.waitFor(
        lambda: mesh.connectedTo(replacement.pid) == set(mesh.uuids),
        "every cluster to connect to the new event-loop",
    )
    rejoined = time.monotonic() - started
    assert sum(meshConnections(mesh.statusDir).values()) == 2 * CLUSTERS
    for cluster in mesh.clusters:
        assert cluster.alive
    advertised = sorted(mesh.discover() or ())
    print(
        f"\nclusters dropped the killed event-loop within {noticed:.2f} s; all "
        f"{CLUSTERS} connected to its replacement {rejoined:.2f} s after it was "
        f"started; advertised now: {advertised} (the dead one stays until expiry)"
    )


# Configuration errors: one clear line, a non-zero exit.


def _run(argv: list[str], cwd: Path, **settings: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv,
        env=childEnv(**settings),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=BOUND,
    )


def test_cluster_without_its_secret_stops_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "secret"
    result = _run(
        [sys.executable, "-m", "provisioningserver.cli", "cluster"],
        tmp_path,
        MAAS_URL="http://127.0.0.1:9/MAAS",
        MAAS_RPC_DATA_DIR=str(tmp_path / "cluster"),
        MAAS_RPC_SECRET_FILE=str(missing),
    )
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "secret" in lines[0]
    assert str(missing) in lines[0]


def test_eventloop_with_malformed_ports_stops_with_one_line(tmp_path: Path) -> None:
    dataDir = tmp_path / "region"
    result = _run(
        [sys.executable, "-m", "maasserver.cli", "eventloop"],
        tmp_path,
        MAAS_RPC_DATA_DIR=str(dataDir),
        MAAS_RPC_PORTS="abc",
        MAAS_RPC_BIND="127.0.0.1",
    )
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "MAAS_RPC_PORTS" in lines[0]
    assert "abc" in lines[0]
    # Checked before anything was done.
    assert not (dataDir / "secret").exists()


#: ``twistd`` itself: Twisted installs it as a script, not as a runnable
#: module (``python -m twisted`` is the newer ``twist``, which has no ``-n``).
TWISTD = [
    sys.executable,
    "-c",
    "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()",
    "-n",
    "--pidfile=",
]
TWIST = [sys.executable, "-m", "twisted"]


@pytest.mark.parametrize(
    "runner, plugin, setting, expected",
    [
        (TWISTD, "maas-clusterd", "MAAS_RPC_SECRET_FILE", "does not exist"),
        (TWIST, "maas-clusterd", "MAAS_RPC_SECRET_FILE", "does not exist"),
        (TWISTD, "maas-regiond", "MAAS_RPC_PORTS", "MAAS_RPC_PORTS='abc'"),
    ],
    ids=["twistd-maas-clusterd", "twist-maas-clusterd", "twistd-maas-regiond"],
)
def test_twistd_plugin_refuses_bad_configuration(
    tmp_path: Path, runner: list[str], plugin: str, setting: str, expected: str
) -> None:
    settings = {
        "MAAS_URL": "http://127.0.0.1:9/MAAS",
        "MAAS_RPC_DATA_DIR": str(tmp_path / "data"),
        "MAAS_RPC_BIND": "127.0.0.1",
        setting: str(tmp_path / "nowhere" / "secret") if "SECRET" in setting else "abc",
    }
    result = _run([*runner, plugin], tmp_path, **settings)
    output = result.stdout + result.stderr
    # The dropin was found (else: "Unknown command"), and refused the setting.
    assert result.returncode != 0, output
    assert expected in output, output
    assert "Traceback" not in output, output
    assert not (tmp_path / "data" / "secret").exists()


def test_demo_runs_to_completion(tmp_path: Path) -> None:
    # Its own session, so that on a timeout its children go with it.
    demo = subprocess.Popen(
        [sys.executable, "-m", "maasserver.cli", "demo", "--timeout", str(BOUND)],
        env=childEnv(TMPDIR=str(tmp_path)),
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    started = time.monotonic()
    try:
        stdout, stderr = demo.communicate(timeout=3 * BOUND)
    except subprocess.TimeoutExpired:
        os.killpg(demo.pid, signal.SIGKILL)
        stdout, stderr = demo.communicate()
    print(f"\ndemo ran in {time.monotonic() - started:.2f} s")
    assert demo.returncode == 0, stdout + stderr
    assert "demo complete" in stdout, stdout
    eaten = [line for line in stdout.splitlines() if "EatCheez(" in line]
    assert len(eaten) == 3, stdout
    # It cleans up after itself.
    assert list(tmp_path.iterdir()) == []
