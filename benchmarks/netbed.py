"""A test bed of several "hosts" on one machine, made of network namespaces.

Each host is a Linux network namespace of its own with one interface,
``eth0``, whose other end is plugged into a bridge; the bridge itself lives
in a namespace of its own (the "switch"), so the bed adds nothing to the
machine's own network: no interface, no address, no route. Addresses are
private (``10.250.0.0/16``) and exist only inside the bed's namespaces, so
two beds (two test runs at once) never see each other.

* :class:`Bed` makes the switch and the hosts, starts processes in them
  (:meth:`Host.spawn`), cuts and restores a host's link (:meth:`Bed.cut`),
  and tears everything down (:meth:`Bed.close`): every process it started
  is stopped by its PID, then every namespace is deleted. :meth:`Bed.close`
  runs at interpreter exit too, if nobody called it.
* :meth:`Bed.startPostgres` runs a throwaway PostgreSQL server in a host of
  its own ("db"), listening on that host's address: the region hosts reach
  it over the bed's network, so cutting a region host's link cuts its
  database connection too, as it would on real hosts.
* :meth:`Bed.startRegion` runs ``maas-rpc region --workers N`` on a host,
  with the shared secret, the PostgreSQL store and ``MAAS_RPC_BIND`` set to
  that host's address.
* Processes on a host see the host's name as their host name (their UTS
  namespace is their own, so event-loops are named ``mh-r1:pid=...``), and
  ``region`` resolves to every region host's address (an ``/etc/hosts``
  bind-mounted over the real one in the process's own mount namespace: the
  machine's ``/etc/hosts`` is untouched). So clusters discover the region
  through one ``MAAS_URL``, ``http://region:5240/MAAS``, that keeps working
  when one region host dies: Twisted's ``HostnameEndpoint`` tries the next
  address.

Creating namespaces needs root (``CAP_SYS_ADMIN`` and ``CAP_NET_ADMIN``) and
iproute2's ``ip``; :func:`unavailable` says why a bed cannot be made here,
or ``None``. Every namespace's name starts with ``mrpc<pid>-`` (the PID of
the process that made the bed), so parallel runs never collide; namespaces
left behind by a run that was killed are removed by the next run, once their
owner is gone.

The driver (the test or the benchmark) stays in the machine's own
namespace and talks to the processes only over pipes and Unix sockets (the
region's control sockets, PostgreSQL's socket), which namespaces do not
separate.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from benchmarks.procs import ROOT, Worker, childEnv

__all__ = [
    "Bed",
    "Host",
    "Peer",
    "Region",
    "unavailable",
    "waitUntil",
]

#: The bed's network: every host has an address in it.
NETWORK = "10.250.0.0/16"

#: The name every process in the bed resolves to the region hosts.
REGION_NAME = "region"

#: The discovery port of every region host.
HTTP_PORT = 5240

#: The PostgreSQL server's port on the "db" host.
PG_PORT = 5432

_PREFIX = "mrpc"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=30, check=check
    )


def unavailable() -> str | None:
    """Say why a bed cannot be made on this machine, or ``None`` when it can.

    It tries: it makes a namespace and a veth pair in it, and deletes them.

    :return: the reason, or ``None``.
    """
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    for tool in ("ip", "unshare", "setpriv", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (iproute2, util-linux)"
    name = f"{_PREFIX}{os.getpid()}-probe{secrets.token_hex(2)}"
    try:
        made = _ip("netns", "add", name, check=False)
        if made.returncode != 0:
            return f"ip netns add failed: {made.stderr.strip()}"
        veth = _ip(
            "-n", name, "link", "add", "name", "a", "type", "veth", "peer", "name", "b",
            check=False,
        )  # fmt: skip
        if veth.returncode != 0:
            return f"cannot make a veth pair in a namespace: {veth.stderr.strip()}"
    finally:
        _ip("netns", "del", name, check=False)
    return None


def postgresBin() -> Path | None:
    """The directory of PostgreSQL's server programs, or ``None``.

    :return: Debian's newest ``/usr/lib/postgresql/<v>/bin``, else the one
        ``pg_config --bindir`` names, when it holds ``postgres`` and
        ``initdb``.
    """
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    pgConfig = shutil.which("pg_config")
    if pgConfig:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pgConfig, "--bindir"], capture_output=True, text=True, timeout=10
            )
            candidates.append(out.stdout.strip())
    for candidate in candidates:
        path = Path(candidate)
        if (path / "postgres").exists() and (path / "initdb").exists():
            return path
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def removeStale() -> list[str]:
    """Delete the namespaces of beds whose maker is gone (a killed run).

    :return: the names deleted.
    """
    listed = _ip("netns", "list", check=False).stdout.split("\n")
    removed = []
    for line in listed:
        name = line.split(" ", 1)[0]
        if not name.startswith(_PREFIX) or "-" not in name:
            continue
        owner = name[len(_PREFIX) :].split("-", 1)[0]
        if owner.isdigit() and not _alive(int(owner)):
            _ip("netns", "del", name, check=False)
            removed.append(name)
    return removed


def waitUntil(
    condition: Callable[[], Any], what: str, timeout: float, every: float = 0.05
) -> Any:
    """Poll ``condition`` until it returns something true; return that.

    :param condition: what to poll.
    :param what: what is awaited, for the error.
    :param timeout: the bound, in seconds.
    :param every: seconds between polls.
    :raises TimeoutError: when ``timeout`` passes first.
    """
    import threading

    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        pause.wait(every)


class Peer(Worker):
    """A JSON-lines process (:mod:`benchmarks.worker` protocol) in a host.

    :param argv: the command.
    :param name: a label, and its log file's name.
    :param logDir: where its standard error goes.
    :param env: its environment.
    """

    def __init__(
        self, argv: list[str], name: str, logDir: Path, env: dict[str, str]
    ) -> None:
        self._spawn(argv, name, logDir, env)


class Host:
    """One host of the bed: a network namespace with one address.

    :ivar name: its host name (``mh-r1``).
    :ivar netns: its namespace's name.
    :ivar address: its address on the bed's network.
    :ivar extra: more addresses of its interface (simulated clusters connect
        from one each).
    """

    def __init__(
        self, bed: Bed, name: str, address: str, extra: Iterable[str] = ()
    ) -> None:
        self.bed = bed
        self.name = name
        self.netns = f"{bed.prefix}{name}"
        self.address = address
        self.extra = list(extra)
        self.cut = False

    def wrap(self, argv: list[str]) -> list[str]:
        """The command that runs ``argv`` on this host, as the same process.

        ``ip netns exec`` enters the namespace (and a mount namespace of its
        own); ``unshare --uts`` gives it a host name of its own; a shell sets
        the host name and mounts the bed's ``hosts`` file over ``/etc/hosts``
        (in that private mount namespace only), then becomes ``argv``. Each
        step ``exec``\\ s the next, so the PID is ``argv``'s.
        """
        script = (
            'echo "$1" > /proc/sys/kernel/hostname && '
            'mount --bind "$2" /etc/hosts && shift 2 && exec "$@"'
        )
        return [
            "ip", "netns", "exec", self.netns, "unshare", "--uts", "sh", "-c",
            script, "sh", self.name, str(self.bed.hostsFile), *argv,
        ]  # fmt: skip

    def spawn(
        self,
        argv: list[str],
        name: str,
        env: dict[str, str] | None = None,
        stdin: Any = subprocess.DEVNULL,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` on this host; the bed stops it at the end.

        :param argv: the command.
        :param name: its label; its output goes to ``<name>.log``.
        :param env: its environment (:func:`benchmarks.procs.childEnv` when
            ``None``).
        :param stdin: its standard input.
        :return: the process.
        """
        log = (self.bed.workdir / f"{name}.log").open("wb")
        popen = subprocess.Popen(
            self.wrap(argv),
            env=env if env is not None else childEnv(),
            cwd=ROOT,
            stdin=stdin,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.bed._started.append((popen, log, name))
        return popen

    def peer(self, module: str, role: str, name: str, **settings: str) -> Peer:
        """Start a JSON-lines process (``python -m module role``) here.

        :param module: e.g. ``benchmarks.clusterhost``.
        :param role: its first argument.
        :param name: its label.
        :param settings: extra environment variables.
        :return: the running :class:`Peer`, which answered a ``ping``.
        """
        peer = Peer(
            self.wrap([sys.executable, "-m", module, role]),
            name,
            self.bed.workdir,
            childEnv(**settings),
        )
        self.bed._peers.append(peer)
        peer.request("ping", timeout=60)
        return peer


class Region:
    """A ``maas-rpc region`` running on a host.

    :ivar host: the :class:`Host`.
    :ivar popen: the supervisor's process.
    :ivar dataDir: its data directory (control sockets, logs).
    """

    def __init__(self, host: Host, popen: subprocess.Popen[bytes], dataDir: Path):
        self.host = host
        self.popen = popen
        self.dataDir = dataDir

    @property
    def pid(self) -> int:
        """The supervisor's PID."""
        return self.popen.pid

    def workers(self) -> list[int]:
        """The PIDs of its event-loop processes (the supervisor's children).

        :return: the PIDs, sorted.
        """
        found: set[int] = set()
        for task in glob.glob(f"/proc/{self.pid}/task/*/children"):
            with contextlib.suppress(OSError):
                found.update(int(p) for p in Path(task).read_text().split())
        return sorted(found)

    def pids(self) -> list[int]:
        """Every PID of this region host: the supervisor and its workers."""
        return [self.pid, *self.workers()]

    def controlSockets(self) -> list[Path]:
        """Its event-loops' control sockets."""
        return sorted((self.dataDir / "control").glob("*.sock"))

    def status(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Ask each event-loop for its status (``maas-rpc status``).

        :return: the answers of those that answered.
        """
        from provisioningserver.control import ControlError, ask

        answers = []
        for path in self.controlSockets():
            try:
                answers.append(ask(path, {"op": "status"}, timeout=timeout))
            except ControlError:
                continue
        return answers

    def kill(self) -> list[int]:
        """SIGKILL every process of this region host at once, by PID.

        All are stopped (SIGSTOP) first, so none reacts to another's death
        (the supervisor would restart a worker; a worker would stop cleanly
        when the supervisor goes), then killed.

        :return: the PIDs killed.
        """
        pids = self.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids


class Bed:
    """The switch, the hosts, the processes; see the module.

    :param workdir: where logs and data directories go; a new temporary
        directory when ``None`` (removed by :meth:`close` unless ``keep``).
    :param keep: keep ``workdir`` at the end.
    """

    def __init__(self, workdir: Path | None = None, keep: bool = False) -> None:
        self.prefix = f"{_PREFIX}{os.getpid()}-{secrets.token_hex(2)}"
        self._ownDir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="maas-rpc-bed-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self.hosts: dict[str, Host] = {}
        self.regions: dict[str, Region] = {}
        self._started: list[tuple[subprocess.Popen[bytes], IO[bytes], str]] = []
        self._peers: list[Peer] = []
        self._adopted: set[int] = set()
        self._namespaces: list[str] = []
        self.hostsFile = self.workdir / "hosts"
        self.secretFile = self.workdir / "secret"
        self.pgDir: Path | None = None
        self.pgPassword = secrets.token_hex(12)
        self.databaseURL: str | None = None
        self.closed = False
        removeStale()
        atexit.register(self.close)
        self._ns("sw")
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        self.secretFile.write_text(secrets.token_hex(16) + "\n")
        self.secretFile.chmod(0o600)
        self._writeHosts()

    @property
    def switch(self) -> str:
        """The switch's namespace."""
        return f"{self.prefix}sw"

    @property
    def secret(self) -> bytes:
        """The shared secret."""
        return bytes.fromhex(self.secretFile.read_text().strip())

    @property
    def maasURL(self) -> str:
        """The one ``MAAS_URL`` of the bed: every region host's discovery."""
        return f"http://{REGION_NAME}:{HTTP_PORT}/MAAS"

    def _ns(self, suffix: str) -> str:
        name = f"{self.prefix}{suffix}"
        _ip("netns", "add", name)
        self._namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
        return name

    def _writeHosts(self) -> None:
        lines = ["127.0.0.1 localhost"]
        lines += [f"{h.address} {h.name}" for h in self.hosts.values()]
        lines += [
            f"{h.address} {REGION_NAME}"
            for h in self.hosts.values()
            if h.name.startswith("mh-r")
        ]
        temp = self.hostsFile.with_suffix(".tmp")
        temp.write_text("\n".join(lines) + "\n")
        temp.chmod(0o644)
        # In place, not replaced: bind mounts hold the file, not its name.
        with self.hostsFile.open("a+") as target:
            target.seek(0)
            target.truncate()
            target.write(temp.read_text())
        temp.unlink()

    def addHost(self, name: str, address: str, extra: Iterable[str] = ()) -> Host:
        """Make a host: a namespace, its ``eth0`` on the switch, addresses.

        :param name: its host name; region hosts are named ``mh-r<n>`` (the
            name ``region`` resolves to all of them).
        :param address: its address.
        :param extra: more addresses of ``eth0``.
        :return: the :class:`Host`.
        """
        host = Host(self, name, address, extra)
        self._ns(name)
        port = f"v{len(self.hosts)}"
        _ip(
            "link", "add", "eth0", "netns", host.netns, "type", "veth",
            "peer", "name", port, "netns", self.switch,
        )  # fmt: skip
        _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
        prefix = NETWORK.split("/")[1]
        batch = [f"address add {address}/{prefix} dev eth0"]
        batch += [f"address add {a}/{prefix} dev eth0" for a in host.extra]
        batch.append("link set eth0 up")
        subprocess.run(
            ["ip", "-n", host.netns, "-batch", "-"],
            input="\n".join(batch) + "\n",
            text=True,
            capture_output=True,
            check=True,
            timeout=60,
        )
        host.port = port  # type: ignore[attr-defined]
        self.hosts[name] = host
        self._writeHosts()
        return host

    # Failures.

    def cut(self, host: Host) -> None:
        """Unplug ``host`` from the switch: nothing reaches it or leaves it,
        and nobody is told (no reset, no FIN)."""
        _ip("-n", self.switch, "link", "set", host.port, "down")  # type: ignore[attr-defined]
        host.cut = True

    def restore(self, host: Host) -> None:
        """Plug ``host`` back in."""
        _ip("-n", self.switch, "link", "set", host.port, "up")  # type: ignore[attr-defined]
        host.cut = False

    # Services.

    def startPostgres(self, address: str = "10.250.0.2", timeout: float = 60) -> str:
        """Run a throwaway PostgreSQL server on a host of its own (``mh-db``).

        ``initdb`` makes a cluster owned by the ``postgres`` user in a new
        temporary directory (PostgreSQL refuses to run as root), with a
        ``maasrpc`` superuser and a random password; the server listens on
        ``address`` only (and on a Unix socket in that directory, for the
        driver), with ``fsync`` off (nothing here needs to survive a crash).

        :return: the database URL for the regions (``postgresql://...``).
        :raises RuntimeError: when PostgreSQL is not installed or does not
            start.
        """
        binDir = postgresBin()
        if binDir is None:
            raise RuntimeError(
                "PostgreSQL's server programs are not installed (Debian: "
                "apt-get install postgresql)"
            )
        host = self.addHost("mh-db", address)
        self.pgDir = Path(tempfile.mkdtemp(prefix="maas-rpc-bed-pg-"))
        pgData = self.pgDir / "data"
        pwfile = self.pgDir / "pw"
        pwfile.write_text(self.pgPassword + "\n")
        shutil.chown(self.pgDir, "postgres", "postgres")
        shutil.chown(pwfile, "postgres", "postgres")
        drop = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]
        subprocess.run(
            [
                *drop, str(binDir / "initdb"), "-D", str(pgData), "-U", "maasrpc",
                "--auth-local=trust", "--auth-host=scram-sha-256",
                f"--pwfile={pwfile}", "--no-sync", "-E", "UTF8",
            ],
            capture_output=True,
            check=True,
            timeout=120,
            cwd=self.pgDir,
        )  # fmt: skip
        with (pgData / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {NETWORK} scram-sha-256\n")
        host.spawn(
            [
                *drop, str(binDir / "postgres"), "-D", str(pgData),
                "-c", f"listen_addresses={address}", "-c", f"port={PG_PORT}",
                "-c", f"unix_socket_directories={self.pgDir}",
                "-c", "fsync=off", "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off", "-c", "max_connections=200",
            ],
            "postgres",
        )  # fmt: skip
        waitUntil(
            lambda: (
                (self.pgDir / f".s.PGSQL.{PG_PORT}").exists()
                and self.sql("SELECT 1") == [(1,)]
            ),
            "PostgreSQL accepting connections",
            timeout,
            every=0.1,
        )
        self.databaseURL = (
            f"postgresql://maasrpc:{self.pgPassword}@{address}:{PG_PORT}/postgres"
        )
        return self.databaseURL

    def sql(self, statement: str, *args: Any) -> list[tuple[Any, ...]] | None:
        """Run ``statement`` on the bed's PostgreSQL, over its Unix socket.

        :return: the rows, or ``None`` when the server cannot be reached.
        """
        import psycopg

        try:
            with psycopg.connect(
                host=str(self.pgDir),
                port=PG_PORT,
                user="maasrpc",
                dbname="postgres",
                connect_timeout=5,
                autocommit=True,
            ) as connection:
                cursor = connection.execute(statement, args or None)
                return cursor.fetchall() if cursor.description else []
        except psycopg.Error:
            return None

    def advertised(self) -> dict[str, list[tuple[str, int]]]:
        """The event-loops in the store: name -> endpoints."""
        rows = self.sql(
            "SELECT name, address, port FROM maas_rpc_eventloops"
            " ORDER BY name, address, port"
        )
        found: dict[str, list[tuple[str, int]]] = {}
        for name, address, port in rows or []:
            found.setdefault(name, []).append((address, port))
        return found

    def startRegion(self, host: Host, workers: int = 2, **settings: str) -> Region:
        """Run ``maas-rpc region --workers N`` on ``host``.

        :param host: a region host (``mh-r<n>``).
        :param workers: its event-loop processes.
        :param settings: more ``MAAS_RPC_*`` variables.
        :return: the :class:`Region` (not yet advertising: see
            :meth:`waitAdvertised`).
        """
        dataDir = self.workdir / f"{host.name}-data"
        env = childEnv(
            MAAS_RPC_DATA_DIR=str(dataDir),
            MAAS_RPC_SECRET_FILE=str(self.secretFile),
            MAAS_RPC_BIND=host.address,
            MAAS_RPC_HTTP_PORT=str(HTTP_PORT),
            MAAS_RPC_PORTS="5250-5259",
            MAAS_RPC_DATABASE_URL=self.databaseURL or "",
            **settings,
        )
        if not self.databaseURL:
            del env["MAAS_RPC_DATABASE_URL"]
        popen = host.spawn(
            [sys.executable, "-m", "maasserver.cli", "region", f"--workers={workers}"],
            host.name,
            env,
        )
        region = Region(host, popen, dataDir)
        self.regions[host.name] = region
        return region

    def waitAdvertised(
        self, count: int, timeout: float = 60, prefix: str = ""
    ) -> list[str]:
        """Wait until ``count`` event-loops (named ``prefix...``) advertise.

        :return: their names.
        """

        def ready() -> list[str]:
            names = [n for n in self.advertised() if n.startswith(prefix)]
            for region in self.regions.values():
                if region.popen.poll() is not None and not region.host.cut:
                    raise RuntimeError(
                        f"region on {region.host.name} exited "
                        f"({region.popen.returncode}); see "
                        f"{self.workdir / (region.host.name + '.log')}"
                    )
                self._adopted.update(region.workers())
            return names if len(names) >= count else []

        return waitUntil(ready, f"{count} event-loops advertising", timeout, 0.1)

    # The end.

    def close(self) -> None:
        """Stop every process (by PID), delete every namespace."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
        for region in self.regions.values():
            with contextlib.suppress(OSError):
                self._adopted.update(region.workers())
        for peer in self._peers:
            peer.stop()
        for peer in self._peers:
            with contextlib.suppress(Exception):
                peer.wait(10)
            for stream in (peer.popen.stdin, peer.popen.stdout):
                with contextlib.suppress(OSError):
                    if stream is not None:
                        stream.close()
        # SIGTERM in reverse order of starting: regions before PostgreSQL.
        for popen, _, name in reversed(self._started):
            if popen.poll() is None:
                sig = signal.SIGINT if name == "postgres" else signal.SIGTERM
                with contextlib.suppress(ProcessLookupError):
                    popen.send_signal(sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    popen.wait(30)
        for popen, log, _ in self._started:
            if popen.poll() is None:
                popen.kill()
                popen.wait(10)
            log.close()
        for pid in self._adopted:
            _killStray(pid)
        for name in reversed(self._namespaces):
            _ip("netns", "del", name, check=False)
        if self.pgDir is not None:
            shutil.rmtree(self.pgDir, ignore_errors=True)
        if self._ownDir and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Bed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> str:
        """The tail of every process's log (for a failed test's report)."""
        parts = []
        for path in sorted(self.workdir.glob("*.log")):
            with contextlib.suppress(OSError):
                lines = path.read_text(errors="replace").splitlines()[-30:]
                parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)


def _killStray(pid: int) -> None:
    """SIGKILL ``pid`` if it is still an event-loop of ours (its supervisor
    should have stopped it)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if b"maasserver.cli" not in cmdline:
        return  # Gone, and the PID reused by something else.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def jsonLines(path: Path) -> list[dict[str, Any]]:
    """Read a file of JSON lines, skipping lines that do not parse."""
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out
