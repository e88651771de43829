"""Real processes under attack, and the means to measure them.

Built on the fault tests' harness (``tests/faults/harness.py``: processes,
regions, waiting) and the fuzz tests' AMP wire codec
(``tests/fuzz/ampwire.py``), which this module loads and re-exports.

* :class:`Meter`: a process's RSS and open descriptors, read from ``/proc``,
  once or sampled in a thread during an attack (the peak).
* :class:`ProbeLog`: what the legitimate cluster's probes measured (see
  ``ext/hostileext``): every call it made through the region, and how long
  each took.
* :class:`Mesh`: one region event-loop (the ``hostileext`` protocol,
  optionally under a ``ulimit -n``) and one legitimate cluster probing it.
* :class:`HostileDiscovery`: an HTTP server that answers a cluster's
  discovery request as an attacker would: a good document, a huge body, a
  body dripping a byte a second, or any document given.
* :func:`connectFrom`, :func:`blast`: raw sockets from a chosen loopback
  address, and sending to many of them at once.

Every wait is bounded; nothing sleeps to synchronise.
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import selectors
import socket
import statistics
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioningserver.rpc.discovery import makeDiscoveryDocument
from provisioningserver.security import read_shared_secret

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent

#: Where the ``hostileext`` extension lives.
EXT = HERE / "ext"


def _load(name: str, path: Path) -> Any:
    """Import a helper module of another test folder (pytest runs in
    importlib mode)."""
    qualified = f"maas_rpc_hostile_{name}"
    if qualified not in sys.modules:
        spec = importlib.util.spec_from_file_location(qualified, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[qualified] = module
        spec.loader.exec_module(module)
    return sys.modules[qualified]


harness = _load("harness", TESTS / "faults" / "harness.py")
ampwire = _load("ampwire", TESTS / "fuzz" / "ampwire.py")
waitFor = harness.waitFor
BOUND = harness.BOUND
MiB = 1 << 20


def withExt(env: dict[str, str]) -> dict[str, str]:
    """``env`` with ``hostileext`` first on ``PYTHONPATH``."""
    env = dict(env)
    env["PYTHONPATH"] = os.pathsep.join([str(EXT), env.get("PYTHONPATH", "")])
    return env


# Measuring.


class Meter:
    """A process's resident memory and open descriptors, from ``/proc``.

    :param pid: the process.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def rss(self) -> int:
        """Resident set size, in bytes."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError(f"no VmRSS for {self.pid}")

    def cpu(self) -> float:
        """CPU seconds used so far (user and system)."""
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def fds(self) -> int:
        """Open descriptors."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def fdTargets(self) -> list[str]:
        """What each open descriptor points at."""
        found = []
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                found.append(os.readlink(f"/proc/{self.pid}/fd/{fd}"))
            except OSError:
                pass
        return found

    def now(self) -> Reading:
        """One reading."""
        return Reading(self.rss(), self.fds())

    def sampling(self, interval: float = 0.02) -> Sampler:
        """Sample in a thread until the block ends; the peak is kept.

        :param interval: seconds between samples.
        """
        return Sampler(self, interval)


@dataclass
class Reading:
    """RSS (bytes) and open descriptors at one moment."""

    rss: int
    fds: int

    def __str__(self) -> str:
        return f"RSS {self.rss / MiB:.1f} MiB, {self.fds} fds"


class Sampler:
    """Samples a :class:`Meter` every ``interval`` seconds in a thread (a
    context manager); :attr:`peak` holds the highest RSS and fds seen."""

    def __init__(self, meter: Meter, interval: float) -> None:
        self.meter = meter
        self.interval = interval
        self.peak = Reading(0, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                reading = self.meter.now()
            except (OSError, AssertionError):
                return  # The process is gone.
            self.peak = Reading(
                max(self.peak.rss, reading.rss), max(self.peak.fds, reading.fds)
            )
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(BOUND)


@dataclass
class Probes:
    """The probes started in a window of time.

    :ivar latencies: seconds each successful probe took.
    :ivar failures: the error of each failed probe.
    :ivar seconds: the window's length.
    """

    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def __str__(self) -> str:
        if not self.latencies:
            return f"no probe answered in {self.seconds:.1f} s ({self.failures[:3]})"
        return (
            f"{len(self.latencies)} probes in {self.seconds:.1f} s answered in "
            f"median {statistics.median(self.latencies) * 1000:.0f} ms, max "
            f"{max(self.latencies) * 1000:.0f} ms; {len(self.failures)} failed"
        )

    def check(self, within: float = 1.0, interval: float = 0.2) -> None:
        """Assert the legitimate cluster answered throughout: every probe in
        the window answered within ``within`` seconds, and probes kept coming
        (at least half as many as ``interval`` allows).

        :raises AssertionError: when not.
        """
        assert not self.failures, f"probes failed: {self.failures[:5]} ({self})"
        expected = max(1, int(self.seconds / interval / 2))
        assert len(self.latencies) >= expected, f"too few probes: {self}"
        assert max(self.latencies) < within, f"a probe took too long: {self}"


class ProbeLog:
    """The JSON lines a ``ProbeCluster`` writes (see ``hostileext``).

    :param path: its file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text()
        except OSError:
            return []
        found = []
        for line in text.splitlines(keepends=True):
            if line.endswith("\n"):
                found.append(json.loads(line))
        return found

    def window(self, start: float, end: float) -> Probes:
        """The probes started between ``start`` and ``end`` (monotonic
        seconds; the window is at least a second long), once each has had
        time to finish."""
        end = max(end, start + 1.0)
        # A probe gives up after 5 s: wait until those started by ``end``
        # have all been written.
        waitFor(
            lambda: (
                any(e["start"] >= end for e in self.entries())
                or time.monotonic() > end + 6
            ),
            "the probes of the window to finish",
            timeout=BOUND,
        )
        probes = Probes(seconds=end - start)
        for entry in self.entries():
            if start <= entry["start"] <= end:
                if entry["ok"]:
                    probes.latencies.append(entry["seconds"])
                else:
                    probes.failures.append(entry.get("error", "?"))
        return probes

    def healthy(self, since: float, within: float = 1.0) -> bool:
        """Whether a probe started after ``since`` answered within
        ``within`` seconds."""
        return any(
            e["ok"] and e["start"] >= since and e["seconds"] < within
            for e in self.entries()
        )


# Processes.


class HostileRegion(harness.Region):
    """A region whose event-loops load ``hostileext.region:ProbeRegion``,
    optionally with ``RLIMIT_NOFILE`` set to ``nofile`` (soft and hard, as
    ``ulimit -n`` does; set with ``prlimit`` as soon as it starts)."""

    def __init__(
        self, processes: Any, *, nofile: int | None = None, **settings: str
    ) -> None:
        super().__init__(processes, **settings)
        self.nofile = nofile

    def env(self) -> dict[str, str]:
        env = super().env()
        env["MAAS_RPC_REGION_PROTOCOL"] = "hostileext.region:ProbeRegion"
        return withExt(env)

    def startEventloop(self) -> Any:
        process = super().startEventloop()
        if self.nofile is not None:
            # The event-loop raises its soft limit to the hard one at start:
            # lower both, as ``ulimit -n`` does, before it opens much.
            nofile = (self.nofile, self.nofile)
            resource.prlimit(process.pid, resource.RLIMIT_NOFILE, nofile)
        return process


def startProbeCluster(
    processes: Any, maasURL: str, secretPath: Path, **settings: str
) -> tuple[str, Any, ProbeLog]:
    """Start a real cluster process (``python -m provisioningserver.cli
    cluster``) that probes the region through ``hostileext``.

    :return: ``(uuid, process, probe log)``.
    """
    clusterUUID, env = harness.clusterEnv(
        maasURL, secretPath, processes.workdir, **settings
    )
    probes = processes.workdir / f"probes-{clusterUUID}.jsonl"
    env["MAAS_RPC_CLUSTER_PROTOCOL"] = "hostileext.cluster:ProbeCluster"
    env["HOSTILEEXT_PROBE_FILE"] = str(probes)
    env["HOSTILEEXT_PROBE_INTERVAL"] = "0.2"
    process = processes.start(
        "cluster",
        [sys.executable, "-m", "provisioningserver.cli", "cluster"],
        withExt(env),
    )
    return clusterUUID, process, ProbeLog(probes)


class Mesh:
    """One region event-loop and one legitimate cluster probing it.

    :param workdir: a directory of its own.
    :param nofile: ``ulimit -n`` for the event-loop, or ``None``.
    :param settings: the event-loop's ``MAAS_RPC_*`` settings.
    """

    def __init__(
        self, workdir: Path, *, nofile: int | None = None, **settings: str
    ) -> None:
        self.workdir = workdir
        self.nofile = nofile
        self.settings = settings
        self.generation = 0
        self.start()

    def start(self) -> None:
        self.generation += 1
        work = self.workdir / f"run{self.generation}"
        work.mkdir(parents=True)
        self.processes = harness.Processes(work)
        try:
            self.region = HostileRegion(
                self.processes, nofile=self.nofile, **self.settings
            )
            self.loop = self.region.startEventloop()
            self.name, self.rpcPort, _ = self.region.waitAdvertised(self.loop)
            self.secret = read_shared_secret(self.region.secretPath)
            self.clusterUUID, self.cluster, self.probes = startProbeCluster(
                self.processes, self.region.maasURL, self.region.secretPath
            )
            self.meter = Meter(self.loop.pid)
            started = time.monotonic()
            waitFor(
                lambda: self.probes.healthy(started),
                "the legitimate cluster to connect and answer a probe",
                check=harness.alive(self.loop, self.cluster),
            )
        except BaseException:
            self.close()
            raise

    @property
    def httpPort(self) -> int:
        return self.region.httpPort

    @property
    def maasURL(self) -> str:
        return self.region.maasURL

    def close(self) -> None:
        self.processes.stopAll()
        self.region.close()

    def describe(self) -> str:
        return self.processes.describe()

    def ready(self, timeout: float = 10.0) -> Reading:
        """Make sure the mesh is healthy before an attack (restart it if a
        previous attack left it wedged); return a baseline reading, taken
        once the region has settled."""
        since = time.monotonic()
        try:
            waitFor(
                lambda: self.probes.healthy(since),
                "the legitimate cluster to answer a probe",
                timeout=timeout,
                check=harness.alive(self.loop, self.cluster),
            )
        except AssertionError as error:
            print(f"\nrestarting the mesh: {error}")
            self.close()
            self.start()
        settled = self.meter.now()
        return settled

    def log(self) -> str:
        return self.loop.log()

    def logSince(self, offset: int) -> str:
        return self.log()[offset:]


# Raw sockets.


def connectFrom(source: str, port: int, timeout: float = 5.0) -> socket.socket:
    """A TCP connection to ``127.0.0.1:port`` from the loopback address
    ``source`` (any address in 127.0.0.0/8 is this host's)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    return sock


def reset(sock: socket.socket) -> None:
    """Close with a reset (``SO_LINGER`` 0)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def isClosedByPeer(sock: socket.socket) -> bool:
    """Whether the peer has closed (or reset) ``sock``; what it sent before
    is read and dropped."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(1 << 16)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


@dataclass
class Sent:
    """What :func:`blast` did on one connection."""

    sent: int = 0
    closed: bool = False
    closedAt: float | None = None
    received: bytes = b""


def blast(
    socks: list[socket.socket],
    payload: bytes | Callable[[int], bytes],
    *,
    limit: int,
    seconds: float,
    keep: int = 4096,
) -> list[Sent]:
    """Send to every socket at once, as fast as each takes it, until
    ``limit`` bytes went to each, or it is closed, or ``seconds`` pass.

    :param payload: the bytes to send repeatedly, or a function from the
        offset sent so far to the next bytes.
    :param keep: bytes received to keep per socket.
    :return: one :class:`Sent` per socket.
    """
    results = {sock: Sent() for sock in socks}
    selector = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    deadline = time.monotonic() + seconds
    open_ = set(socks)
    try:
        while open_ and time.monotonic() < deadline:
            for key, mask in selector.select(0.05):
                sock = key.fileobj
                result = results[sock]
                if mask & selectors.EVENT_READ:
                    try:
                        data = sock.recv(1 << 16)
                    except BlockingIOError:
                        data = None
                    except OSError:
                        data = b""
                    if data == b"":
                        result.closed = True
                        result.closedAt = time.monotonic()
                    elif data:
                        result.received = (result.received + data)[:keep]
                if mask & selectors.EVENT_WRITE and not result.closed:
                    if result.sent >= limit:
                        selector.modify(sock, selectors.EVENT_READ)
                        continue
                    chunk = payload(result.sent) if callable(payload) else payload
                    chunk = chunk[: limit - result.sent]
                    try:
                        result.sent += sock.send(chunk)
                    except BlockingIOError:
                        pass
                    except OSError:
                        result.closed = True
                        result.closedAt = time.monotonic()
                if result.closed and sock in open_:
                    open_.discard(sock)
                    selector.unregister(sock)
            if all(r.sent >= limit for s, r in results.items() if s in open_):
                # Everything sent: keep reading until closed or the deadline.
                for sock in list(open_):
                    selector.modify(sock, selectors.EVENT_READ)
    finally:
        selector.close()
        for sock in socks:
            sock.setblocking(True)
    return list(results.values())


def rawCluster(
    port: int, secret: bytes, source: str = "127.0.0.1", ident: str | None = None
) -> Any:
    """A raw AMP peer that completes the legacy (MAAS) handshake as a cluster
    that knows the secret: an authenticated connection the attacker owns
    (the region must allow legacy peers).

    As a MAAS cluster does, it speaks first: its challenge to the region,
    which makes the region take it for a legacy peer.

    :return: the :class:`ampwire.Peer`.
    """
    ident = ident or str(uuid.uuid4())
    responders = {
        b"Identify": lambda box: {b"ident": ident},
        b"Authenticate": ampwire.authenticate_responder(secret),
    }
    peer = ampwire.Peer(connectFrom(source, port, BOUND), responders, timeout=BOUND)
    try:
        peer.post(b"Authenticate", message=os.urandom(16))
        peer.serve_until(
            lambda: any(b[b"_command"] == b"Authenticate" for b in peer.received)
        )
        peer.settle()
        challenge = os.urandom(16)
        answer = peer.call(b"Authenticate", message=challenge)
        assert ampwire.check_authenticate(secret, challenge, answer)
        peer.call(b"Register", uuid=ident)
    except BaseException:
        peer.close()
        raise
    return peer


# A hostile discovery server.


class HostileDiscovery:
    """Answers ``GET .../rpc/`` as :attr:`mode` says, in threads.

    Modes: ``"good"`` (:attr:`eventloops` signed with :attr:`secret`),
    ``"document"`` (the bytes in :attr:`document`), ``"huge"`` (a
    ``Content-Length`` of 100 MB, then bytes as fast as the client takes
    them), ``"endless"`` (the same without a length), ``"drip"`` (a byte a
    second).

    :ivar requests: one dict per request: ``start``, ``mode``, ``sent``
        (body bytes the client took), ``end`` (when the client closed or the
        server gave up).
    """

    def __init__(self, secret: bytes, eventloops: dict[str, Any] | None) -> None:
        self.secret = secret
        self.eventloops = eventloops
        self.mode = "good"
        self.document = b""
        self.requests: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(0.1)
        self.maasURL = f"http://127.0.0.1:{self.listener.getsockname()[1]}/MAAS"
        self._accepting = threading.Thread(target=self._accept, name="discovery")
        self._accepting.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,))
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        record: dict[str, Any] = {"start": time.monotonic(), "mode": self.mode}
        record["sent"] = 0
        self.requests.append(record)
        try:
            conn.settimeout(5)
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                data = conn.recv(4096)
                if not data:
                    return
                head += data
            mode = record["mode"]
            if mode in ("good", "document"):
                body = (
                    makeDiscoveryDocument(self.secret, self.eventloops)
                    if mode == "good"
                    else self.document
                )
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n"
                    % len(body)
                    + body
                )
            elif mode in ("huge", "endless"):
                length = b"Content-Length: 104857600\r\n" if mode == "huge" else b""
                conn.sendall(b"HTTP/1.1 200 OK\r\n" + length + b"\r\n")
                chunk = b"[" * 65536
                while record["sent"] < 100 * MiB and not self._stop.is_set():
                    try:
                        record["sent"] += conn.send(chunk)
                    except TimeoutError:
                        continue
            elif mode == "drip":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
                conn.settimeout(1.0)
                while not self._stop.is_set():
                    try:
                        if conn.recv(1) == b"":
                            return  # The client hung up.
                    except TimeoutError:
                        pass
                    conn.send(b" ")
                    record["sent"] += 1
        except OSError:
            pass  # The client closed: what we measure.
        finally:
            record["end"] = time.monotonic()
            conn.close()

    def since(self, start: float) -> list[dict[str, Any]]:
        """The requests that started after ``start``."""
        return [r for r in list(self.requests) if r["start"] >= start]

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        self._accepting.join(BOUND)
        for thread in self._threads:
            thread.join(BOUND)


def signedBody(secret: bytes, eventloops: dict[str, Any]) -> bytes:
    """A discovery document signed with ``secret``."""
    return makeDiscoveryDocument(secret, eventloops)


def closedPorts(count: int) -> list[int]:
    """Ports on 127.0.0.1 where nothing listens (connections are refused)."""
    ports = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        ports.append(sock.getsockname()[1])
        sock.close()
    return ports


def logLines(text: str) -> list[str]:
    return text.splitlines()


def fmtMiB(value: int) -> str:
    return f"{value / MiB:+.1f} MiB"
