"""Real processes for the attack tests, and the attacker process.

It reuses the fault tests' harness (``tests/faults/harness.py``: processes
stopped by PID, the region's data directory and event-loops, cluster
environments, bounded waits) and proxy (``tests/faults/proxy.py``), and
adds:

* :class:`AttackRegion` and :func:`startVictim`: a region and cluster
  processes that load the ``attackext`` extension (``ext/``), whose
  responders log one line each time they run (:func:`ran`).
* :class:`SignedDiscovery`: the discovery document the harness serves to
  point a victim cluster at the attacker (an on-path position), with a MAC
  under the secret as the design specifies, so that the victim accepts it
  whether or not it checks MACs.
* :class:`Attacker`: the attacker program (``attacker/``) in a process of
  its own, with an environment and arguments that hold no secret and no
  path to one, and its JSON events.
* :func:`callCluster`: a call from the region event-loop to a cluster,
  through the event-loop's control socket, as ``maas-rpc call`` makes it.
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import importlib.util
import json
import os
import re
import sys
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FAULTS = HERE.parent / "faults"

#: Where the ``attackext`` extension lives.
EXT = HERE / "ext"

#: The attacker program (a directory with ``__main__.py``).
ATTACKER = HERE / "attacker"


def _load(path: Path, name: str) -> Any:
    """Import a helper module by path, once (pytest runs in importlib
    mode); the fault tests load theirs under the same names."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


faults = _load(FAULTS / "harness.py", "maas_rpc_faults_harness")
proxies = _load(FAULTS / "proxy.py", "maas_rpc_faults_proxy")
tamper = _load(HERE / "tamper.py", "maas_rpc_attack_tamper")

BOUND = faults.BOUND
Processes = faults.Processes
alive = faults.alive
waitFor = faults.waitFor

__all__ = [
    "BOUND",
    "AttackRegion",
    "Attacker",
    "Bench",
    "Processes",
    "SignedDiscovery",
    "alive",
    "callCluster",
    "lines",
    "proxies",
    "ran",
    "startVictim",
    "tamper",
    "waitFor",
]


def _withExt(env: dict[str, str]) -> dict[str, str]:
    env["PYTHONPATH"] = os.pathsep.join([str(EXT), env.get("PYTHONPATH", "")])
    return env


class AttackRegion(faults.Region):
    """A region whose event-loops load ``attackext.region:AttackRegion``
    (it answers ``Tally`` and counts ``Tally`` and ``Ping``)."""

    def env(self) -> dict[str, str]:
        env = _withExt(super().env())
        env["MAAS_RPC_REGION_PROTOCOL"] = "attackext.region:AttackRegion"
        return env

    @property
    def secretHex(self) -> str:
        return self.secretPath.read_text().strip()

    @property
    def secret(self) -> bytes:
        return bytes.fromhex(self.secretHex)

    def controlSocket(self, process: Any) -> Path:
        return self.dataDir / "control" / f"{process.pid}.sock"


def startVictim(
    processes: Any, maasURL: str, secretPath: Path, **settings: str
) -> tuple[str, Any, Path]:
    """Start a real cluster process (``python -m provisioningserver.cli
    cluster``) with ``attackext.cluster:AttackCluster``.

    :return: ``(uuid, process, data directory)``.
    """
    clusterUUID, env = faults.clusterEnv(
        maasURL, secretPath, processes.workdir, **settings
    )
    env = _withExt(env)
    env["MAAS_RPC_CLUSTER_PROTOCOL"] = "attackext.cluster:AttackCluster"
    process = processes.start(
        "cluster", [sys.executable, "-m", "provisioningserver.cli", "cluster"], env
    )
    return clusterUUID, process, Path(env["MAAS_RPC_DATA_DIR"])


def lines(process: Any, text: str) -> list[str]:
    """The lines of a process's log that contain ``text``."""
    return [line for line in process.log().splitlines() if text in line]


def ran(process: Any, command: str, origin: str | None = None) -> list[str]:
    """The lines where an ``attackext`` responder says ``command`` ran (with
    that ``origin``, when given)."""
    found = lines(process, f"attackext: ran {command} ")
    if origin is not None:
        found = [line for line in found if f"origin={origin!r}" in line]
    return found


def callCluster(
    region: AttackRegion,
    eventloop: Any,
    clusterUUID: str,
    command: str = "EatCheez",
    timeout: float = 10.0,
    **arguments: str,
) -> tuple[dict[str, Any], float]:
    """Have the event-loop call a cluster (as ``maas-rpc call`` does).

    :return: the cluster's result (``{"answer": ...}`` or ``{"error":
        ...}``) and the seconds it took.
    """
    from provisioningserver.control import ask

    started = time.monotonic()
    answer = ask(
        region.controlSocket(eventloop),
        {
            "op": "call",
            "command": command,
            "arguments": arguments,
            "clusters": [clusterUUID],
            "timeout": timeout,
        },
        timeout=timeout + 10,
    )
    took = time.monotonic() - started
    [result] = answer["results"]
    return result, took


def regionStatus(region: AttackRegion, eventloop: Any) -> dict[str, Any]:
    """The event-loop's status (its connections), from its control socket."""
    from provisioningserver.control import ask

    return ask(region.controlSocket(eventloop), {"op": "status"}, timeout=10)


def signEventloops(secret: bytes, eventloops: Any) -> str:
    """The discovery MAC of the design: ``HMAC-SHA256(secret, b"maas-rpc
    discovery v1\\0" ‖ canonical JSON of eventloops)``."""
    canonical = json.dumps(eventloops, sort_keys=True, separators=(",", ":"))
    message = b"maas-rpc discovery v1\0" + canonical.encode("utf-8")
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


class _QuietServer(http.server.ThreadingHTTPServer):
    """Says nothing when a cluster hangs up mid-request (it does when it is
    stopped); anything else is reported as usual."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class SignedDiscovery(faults.ThreadedHTTP):
    """An HTTP server on 127.0.0.1 answering ``GET <base>/rpc/`` with a
    signed discovery document naming whatever event-loops the test says.

    This is the harness's doing, not the attacker's: it simulates an
    attacker on the path between the victim and the region (which could
    answer plain HTTP for the region), without giving the attacker the
    secret.

    :param secret: the shared secret, to sign with.
    :ivar eventloops: what it advertises (change it with :meth:`point`).
    :ivar spoof: ``None`` to sign with the secret; ``"wrong-mac"`` to sign
        with another key (a spoofer's document); ``"unsigned"`` for no MAC.
    :ivar maasURL: the base URL to give clusters as ``MAAS_URL``.
    """

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.eventloops: dict[str, list[list[Any]]] | None = None
        self.spoof: str | None = None
        self.requests = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                owner.requests += 1
                if self.path.rstrip("/").endswith("/rpc"):
                    eventloops = owner.eventloops
                    document: dict[str, Any] = {"eventloops": eventloops}
                    if owner.spoof is None:
                        document["mac"] = signEventloops(owner.secret, eventloops)
                    elif owner.spoof == "wrong-mac":
                        document["mac"] = signEventloops(os.urandom(16), eventloops)
                    body = json.dumps(document).encode()
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

        self._serve(Handler, _QuietServer)

    def point(self, name: str, host: str, port: int) -> None:
        """Advertise one event-loop, ``name``, at ``host:port``."""
        self.eventloops = {name: [[host, port]]}


class Bench:
    """A region (one event-loop, with ``attackext``) and a signed discovery
    document, for one test; victims are added with :meth:`victim`.

    Use it as a context manager: on leaving, every process is stopped (by
    PID), the discovery server closed and the region's port released.

    :param processes: the test's processes.
    :param regionSettings: ``MAAS_RPC_*`` settings of the event-loop.

    :ivar region: the :class:`AttackRegion`.
    :ivar eventloop: its event-loop process.
    :ivar name: the event-loop's name.
    :ivar port: its RPC port.
    :ivar discovery: the :class:`SignedDiscovery` victims poll (it
        advertises nothing until the test says).
    """

    def __init__(self, processes: Any, **regionSettings: str) -> None:
        self.processes = processes
        self.region = AttackRegion(processes, **regionSettings)
        self.discovery: SignedDiscovery | None = None

    def __enter__(self) -> Bench:
        try:
            self.eventloop = self.region.startEventloop()
            self.name, self.port, _ = self.region.waitAdvertised(self.eventloop)
            self.discovery = SignedDiscovery(self.region.secret)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        try:
            self.processes.stopAll()
        finally:
            if self.discovery is not None:
                self.discovery.close()
            self.region.close()

    def victim(
        self, discovery: SignedDiscovery | None = None, **settings: str
    ) -> tuple[str, Any, Path]:
        """Start a victim cluster polling ``discovery`` (this bench's by
        default) every 0.3 s while disconnected.

        :return: ``(uuid, process, data directory)``.
        """
        settings.setdefault("MAAS_RPC_POLL_DISCONNECTED", "0.3")
        discovery = discovery or self.discovery
        assert discovery is not None
        return startVictim(
            self.processes, discovery.maasURL, self.region.secretPath, **settings
        )

    def registrations(self, clusterUUID: str) -> list[str]:
        """The event-loop's lines saying ``clusterUUID`` registered."""
        return [
            line
            for line in lines(self.eventloop, f"Cluster {clusterUUID} at ")
            if line.rstrip().endswith("registered (secure).")
        ]

    def waitRegistered(self, clusterUUID: str, count: int = 1) -> list[str]:
        """Wait until ``clusterUUID`` has registered ``count`` times."""
        return waitFor(
            lambda: (
                len(self.registrations(clusterUUID)) >= count
                and self.registrations(clusterUUID)
            ),
            f"cluster {clusterUUID} to register (#{count})",
            check=alive(self.eventloop),
        )

    def call(self, clusterUUID: str, command: str = "EatCheez", **kw: Any) -> Any:
        """:func:`callCluster` through this bench's event-loop."""
        return callCluster(self.region, self.eventloop, clusterUUID, command, **kw)


def attackerEnv() -> dict[str, str]:
    """The attacker's whole environment: enough to run Python, nothing of
    maas-rpc's (no ``MAAS_*`` variable, no data directory, no secret)."""
    env = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    for name in ("PATH", "LANG", "LC_ALL", "TMPDIR", "HOME"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


class Attacker:
    """The attacker program in a process of its own, and its events.

    :param processes: the test's processes (it is stopped with them).
    :param args: the scenario and its options.
    :param secrets: the secrets (hex) and paths it must not be given;
        checked before it starts.
    """

    def __init__(self, processes: Any, args: list[str], secrets: list[str]) -> None:
        self.argv = [sys.executable, str(ATTACKER), *args]
        self.env = attackerEnv()
        given = self.argv + [f"{k}={v}" for k, v in self.env.items()]
        for secret in secrets:
            leaked = [item for item in given if secret and secret in item]
            assert not leaked, f"the attacker would be given {secret!r}: {leaked}"
        self.process = processes.start("attacker", self.argv, self.env, stdout=True)
        self.eventsPath = self.process.logPath.with_suffix(".jsonl")

    @property
    def pid(self) -> int:
        return self.process.pid

    def events(self, kind: str | None = None, **match: Any) -> list[dict[str, Any]]:
        """Its events so far (complete lines), of one kind and matching
        ``match`` when given."""
        try:
            text = self.eventsPath.read_text()
        except OSError:
            return []
        found = []
        for line in text.splitlines(keepends=True):
            if not line.endswith("\n"):
                break
            event = json.loads(line)
            if kind is not None and event["event"] != kind:
                continue
            if all(event.get(k) == v for k, v in match.items()):
                found.append(event)
        return found

    def waitEvent(
        self, kind: str, timeout: float = BOUND, **match: Any
    ) -> dict[str, Any]:
        """Wait for an event (bounded); fail at once if it died."""

        def check() -> None:
            if not self.process.alive and not self.events(kind, **match):
                raise AssertionError(
                    f"the attacker exited ({self.process.popen.returncode}) "
                    f"before {kind} {match}:\n{self.process.tail()}"
                )

        return waitFor(
            lambda: (self.events(kind, **match) or [None])[0],
            f"the attacker's {kind} event {match}",
            timeout=timeout,
            check=check,
        )

    def port(self) -> int:
        return int(self.waitEvent("listening")["port"])

    def outcomes(self, command: str, side: str) -> list[dict[str, Any]]:
        return self.events("outcome", command=command, side=side)

    def openedSecrets(self) -> list[dict[str, Any]]:
        return self.events("opened-secret")


def secretsOf(region: AttackRegion, *clusterDirs: Path) -> list[str]:
    """What the attacker must not be given: the secret, and every path to
    it (the region's and the clusters' copies, and their directories)."""
    found = [region.secretHex, str(region.secretPath), str(region.dataDir)]
    for directory in clusterDirs:
        found += [str(directory / "secret"), str(directory)]
    return found


def newUUID() -> str:
    return str(uuidlib.uuid4())


_PORT = re.compile(r"127\.0\.0\.1:(\d+)")


def ports(line: str) -> list[int]:
    """The loopback ports a log line names."""
    return [int(p) for p in _PORT.findall(line)]
