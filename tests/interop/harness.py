"""The maas-rpc side of the interop tests, and the stock MAAS peer process.

* :class:`StockPeer` starts ``maaspeer.py`` (stock Twisted AMP only, in its
  own process), sends it requests and waits, with a bound, for what it
  reports; :meth:`StockPeer.stop` stops it by its PID.
* :func:`peerIsCluster` runs this package's region (a
  :class:`~maasserver.rpc.regionservice.RegionService` in this process's
  reactor) with a stock peer as its cluster; :func:`peerIsRegion` runs this
  package's cluster (a
  :class:`~provisioningserver.rpc.clusterservice.ClusterClientService`)
  against a stock peer as its region event-loop. Both give a :class:`Link`.
* The commands both sides declare, here with this package's argument types
  (``maaspeer.py`` declares them with its own).

The project side runs with ``MAAS_RPC_ALLOW_LEGACY_PEERS=1``: the stock peer
speaks MAAS's plain handshake.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import crochet
from twisted.internet import defer

from maasserver.rpc.regionservice import RegionServer, RegionService
from provisioningserver.rpc.arguments import Bytes, CompressedAmpList, StructureAsJSON
from provisioningserver.rpc.clusterservice import ClusterClient, ClusterClientService
from provisioningserver.rpc.common import Client
from provisioningserver.rpc.exceptions import NoSuchCluster
from provisioningserver.rpc.testing import waitFor
from provisioningserver.twisted.protocols import amp

__all__ = [
    "BOUND",
    "InteropClusterClient",
    "InteropRegionServer",
    "Link",
    "StockPeer",
    "inReactor",
    "pattern",
    "peerIsCluster",
    "peerIsRegion",
    "startRegionService",
]

HERE = Path(__file__).resolve().parent
PEER_SCRIPT = HERE / "maaspeer.py"

#: Generous bound, in seconds, on every wait.
BOUND = 30.0

SECRET = bytes.fromhex("5ec7e75ec7e75ec7e75ec7e75ec7e75e")
CLUSTER_UUID = "1f1e0c0d-0000-4a11-b0b0-00000000c1a5"
REGION_NAME = "interop-region:pid=1"


def pattern(size: int) -> bytes:
    """The test pattern, as ``maaspeer.pattern`` makes it: ``size`` bytes
    that barely compress."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(b"%d" % counter).digest()
        counter += 1
    return bytes(out[:size])


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def inReactor(function: Callable[..., Any], *args: Any) -> Any:
    """Run ``function(*args)`` in the reactor thread and return its result
    (waiting, with a bound, if it returns a Deferred)."""
    return crochet.run_in_reactor(function)(*args).wait(BOUND)


# The commands, declared with this package's argument types.

NAMES = [(b"name", amp.Unicode())]


class EchoBytes(amp.Command):
    """Answers ``data`` as it arrived."""

    arguments = [(b"data", Bytes())]
    response = [(b"data", Bytes())]


class MakeBytes(amp.Command):
    """Answers ``size`` bytes of the test pattern."""

    arguments = [(b"size", amp.Integer())]
    response = [(b"data", Bytes())]


class EchoJSON(amp.Command):
    """Answers ``value`` as it arrived."""

    arguments = [(b"value", StructureAsJSON())]
    response = [(b"value", StructureAsJSON())]


class ShowJSON(amp.Command):
    """The stock peer answers the raw bytes ``value`` arrived as."""

    arguments = [(b"value", StructureAsJSON())]
    response = [(b"raw", Bytes())]


class MakeJSON(amp.Command):
    """Answers the structure ``text`` holds, as a StructureAsJSON."""

    arguments = [(b"text", amp.Unicode())]
    response = [(b"value", StructureAsJSON())]


class EchoList(amp.Command):
    """Answers ``items`` as they arrived."""

    arguments = [(b"items", CompressedAmpList(NAMES))]
    response = [(b"items", CompressedAmpList(NAMES))]


class SumList(amp.Command):
    """Answers how many ``items`` arrived, and their digest."""

    arguments = [(b"items", CompressedAmpList(NAMES))]
    response = [(b"count", amp.Integer()), (b"sha256", amp.Unicode())]


class Crash(amp.Command):
    """Its responder raises an exception it does not declare."""

    arguments: list = []
    response: list = []


class CrashingCommand(amp.Command):
    """A newer form of ``EchoBytes`` that the stock peer has, and crashes in."""

    arguments = [(b"data", Bytes())]
    response = [(b"data", Bytes())]


class MissingCommand(amp.Command):
    """A newer form of ``EchoBytes`` that the stock peer lacks."""

    arguments = [(b"data", Bytes())]
    response = [(b"data", Bytes())]


class FindCluster(amp.Command):
    """Raises the declared ``NoSuchCluster``."""

    arguments = [(b"uuid", amp.Unicode())]
    response: list = []
    errors = {NoSuchCluster: b"NoSuchCluster"}


def listDigest(items: list[dict[str, Any]]) -> str:
    """As ``maaspeer.listDigest``."""
    return digest(json.dumps(items).encode("ascii"))


# The responders of this package's side, in both roles.


def _echoBytes(self: Any, data: bytes) -> dict[str, Any]:
    return {"data": data}


def _makeBytes(self: Any, size: int) -> dict[str, Any]:
    return {"data": pattern(size)}


def _echoJSON(self: Any, value: Any) -> dict[str, Any]:
    self.received.append(value)
    return {"value": value}


def _makeJSON(self: Any, text: str) -> dict[str, Any]:
    return {"value": json.loads(text)}


def _echoList(self: Any, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"items": items}


def _sumList(self: Any, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"count": len(items), "sha256": listDigest(items)}


def _crash(self: Any) -> dict[str, Any]:
    raise ZeroDivisionError("this responder crashes on purpose")


def _findCluster(self: Any, uuid: str) -> dict[str, Any]:
    raise NoSuchCluster.from_uuid(uuid)


class InteropRegionServer(RegionServer):
    """This package's region, with the test commands."""

    received: list[Any]

    def __init__(self, service: RegionService) -> None:
        super().__init__(service)
        self.received = []

    echoBytes = EchoBytes.responder(_echoBytes)
    makeBytes = MakeBytes.responder(_makeBytes)
    echoJSON = EchoJSON.responder(_echoJSON)
    makeJSON = MakeJSON.responder(_makeJSON)
    echoList = EchoList.responder(_echoList)
    sumList = SumList.responder(_sumList)
    crash = Crash.responder(_crash)
    findCluster = FindCluster.responder(_findCluster)


class InteropClusterClient(ClusterClient):
    """This package's cluster, with the test commands."""

    received: list[Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received = []

    echoBytes = EchoBytes.responder(_echoBytes)
    makeBytes = MakeBytes.responder(_makeBytes)
    echoJSON = EchoJSON.responder(_echoJSON)
    makeJSON = MakeJSON.responder(_makeJSON)
    echoList = EchoList.responder(_echoList)
    sumList = SumList.responder(_sumList)
    crash = Crash.responder(_crash)
    findCluster = FindCluster.responder(_findCluster)


# The stock peer's process.


class PeerDied(AssertionError):
    """The stock peer's process ended while a test waited on it."""


class StockPeer:
    """``maaspeer.py`` in its own process, and what it reports.

    :param workdir: where its standard error goes (``peer-<n>.log``).
    :param args: its command-line options.
    :ivar events: every JSON object it has written, in order.
    :ivar ready: its ``ready`` event (its PID, and as a region its port and
        event-loop name).
    """

    _count = 0

    def __init__(self, workdir: Path, *args: str) -> None:
        StockPeer._count += 1
        self.logPath = workdir / f"peer-{StockPeer._count}.log"
        self._log = self.logPath.open("wb")
        self.argv = [sys.executable, str(PEER_SCRIPT), "--secret", SECRET.hex(), *args]
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.events: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._ids = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.ready = self.expect(lambda e: e.get("event") == "ready", "its ready line")

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "garbage", "line": line.decode("utf-8", "replace")}
            with self._changed:
                self.events.append(event)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def mark(self) -> int:
        """The number of events so far, for :meth:`since`."""
        with self._changed:
            return len(self.events)

    def since(self, mark: int, **match: Any) -> list[dict[str, Any]]:
        """The events after ``mark`` whose fields equal ``match``."""
        with self._changed:
            found = self.events[mark:]
        return [e for e in found if all(e.get(k) == v for k, v in match.items())]

    def expect(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        what: str,
        since: int = 0,
        timeout: float = BOUND,
    ) -> dict[str, Any]:
        """Wait for an event that satisfies ``predicate``, with a bound.

        :param predicate: a test on one event.
        :param what: what is awaited, for the failure message.
        :param since: look only at events after this mark.
        :param timeout: seconds to wait at most.
        :return: the first such event.
        :raises PeerDied: when the process ended first.
        :raises AssertionError: at the deadline.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for event in self.events[since:]:
                    if predicate(event):
                        return event
                if self.popen.poll() is not None and not self._reader.is_alive():
                    raise PeerDied(
                        f"stock peer (pid {self.pid}) exited with "
                        f"{self.popen.returncode} while waiting for {what}:\n"
                        + self.tail()
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"stock peer (pid {self.pid}) did not report {what} within "
                        f"{timeout} s; last events: {self.events[-5:]}\n" + self.tail()
                    )
                self._changed.wait(min(left, 1.0))

    def request(self, op: str, timeout: float = BOUND, **fields: Any) -> dict[str, Any]:
        """Send one request and wait for its reply.

        :param op: ``call``, ``close`` or ``quit``.
        :param timeout: seconds to wait for the reply.
        :param fields: the request's other fields.
        :return: the reply.
        """
        self._ids += 1
        ident = self._ids
        line = json.dumps({"id": ident, "op": op, **fields}) + "\n"
        assert self.popen.stdin is not None
        self.popen.stdin.write(line.encode())
        self.popen.stdin.flush()
        return self.expect(
            lambda e: e.get("id") == ident, f"the reply to {op}", 0, timeout
        )

    def call(self, command: str, **args: Any) -> dict[str, Any]:
        """Have the peer call ``command`` on this package's side.

        :param command: the peer's name for the command (see ``maaspeer.py``).
        :param args: its arguments, in the peer's JSON form.
        :return: the reply: ``ok``, then ``answer`` or ``type``, ``code`` and
            ``description``.
        """
        return self.request("call", command=command, args=args)

    def tail(self, lines: int = 40) -> str:
        self._log.flush()
        text = self.logPath.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> int | None:
        """Stop the process by its PID (SIGTERM, then SIGKILL), and reap it.

        :return: its exit status.
        """
        if self.popen.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(15)
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                stream.close()
        self._reader.join(BOUND)
        self._log.close()
        return self.popen.returncode


# The two arrangements.


class Link:
    """A connection between this package and a stock MAAS peer.

    :ivar role: ``"peer-is-cluster"`` or ``"peer-is-region"``.
    :ivar peer: the :class:`StockPeer`.
    :ivar service: this package's service (a region or a cluster service).
    :ivar client: this package's :class:`Client` for the peer.
    """

    def __init__(self, role: str, peer: StockPeer, service: Any, client: Client):
        self.role = role
        self.peer = peer
        self.service = service
        self.client = client

    @property
    def conn(self) -> Any:
        """This package's protocol instance for the connection."""
        return self.client.connection

    def healthy(self) -> bool:
        return self.peer.popen.poll() is None and bool(inReactor(self.conn.isConnected))

    def call(self, command: type[amp.Command], **kwargs: Any) -> dict[str, Any]:
        """Call ``command`` on the stock peer from this package's side.

        :return: the answer.
        :raises Exception: whatever the call fails with.
        """
        return self.client(command, _timeout=BOUND, **kwargs).wait(BOUND)

    def close(self) -> None:
        try:
            inReactor(self.service.stopService)
        finally:
            self.peer.stop()


#: The setting under which this package accepts a peer that speaks MAAS's
#: plain handshake (the ``legacy_peers_allowed`` fixture sets it).
LEGACY = "MAAS_RPC_ALLOW_LEGACY_PEERS"


def _legacyEnvironment() -> None:
    # The stock peer speaks MAAS's plain handshake: a legacy peer.
    assert os.environ.get(LEGACY) == "1", f"{LEGACY}=1 is not set"


def peerIsCluster(workdir: Path, *peerArgs: str) -> Link:
    """This package's region, and a stock MAAS cluster connected to it.

    :param workdir: where the peer's log goes.
    :param peerArgs: more options for the peer.
    :return: the :class:`Link`, once the peer has registered.
    """
    _legacyEnvironment()

    @crochet.wait_for(timeout=BOUND)
    def start() -> defer.Deferred[Any]:
        service = RegionService(
            SECRET,
            REGION_NAME,
            ports=[0],
            interface="127.0.0.1",
            protocol=InteropRegionServer,
            handshakeTimeout=BOUND,
            allowLegacyPeers=True,
        )
        service.startService()
        return defer.succeed(service)

    service = start()
    port = inReactor(service.getPort)
    peer = StockPeer(
        workdir,
        "--role",
        "cluster",
        "--uuid",
        CLUSTER_UUID,
        "--connect",
        f"127.0.0.1:{port}",
        *peerArgs,
    )
    try:
        client = inReactor(service.getClientFor, CLUSTER_UUID, BOUND)
    except BaseException:
        inReactor(service.stopService)
        peer.stop()
        raise
    return Link("peer-is-cluster", peer, service, client)


def startRegionService(workdir: Path) -> tuple[RegionService, int]:
    """Only this package's region (for tests that run their own peer).

    :return: the service and its port.
    """
    _legacyEnvironment()

    @crochet.wait_for(timeout=BOUND)
    def start() -> defer.Deferred[Any]:
        service = RegionService(
            SECRET,
            REGION_NAME,
            ports=[0],
            interface="127.0.0.1",
            protocol=InteropRegionServer,
            handshakeTimeout=BOUND,
            allowLegacyPeers=True,
        )
        service.startService()
        return defer.succeed((service, service.getPort()))

    return start()


def peerIsRegion(
    workdir: Path,
    *peerArgs: str,
    keepaliveInterval: float = 30.0,
) -> Link:
    """A stock MAAS region event-loop, and this package's cluster connected
    to it.

    :param workdir: where the peer's log goes.
    :param peerArgs: more options for the peer.
    :param keepaliveInterval: seconds between the cluster's pings.
    :return: the :class:`Link`, once the cluster is connected and
        registered.
    """
    _legacyEnvironment()
    peer = StockPeer(workdir, "--role", "region", *peerArgs)
    name, port = peer.ready["name"], peer.ready["port"]
    document = json.dumps({"eventloops": {name: [["127.0.0.1", port]]}}).encode()

    @crochet.wait_for(timeout=BOUND)
    def start() -> defer.Deferred[Any]:
        from twisted.internet import reactor

        service = ClusterClientService(
            "http://127.0.0.1:5240/MAAS",
            SECRET,
            CLUSTER_UUID,
            protocol=InteropClusterClient,
            intervals=(0.2, 0.5, 5.0),
            handshakeTimeout=BOUND,
            reactor=reactor,
            fetch=lambda url: defer.succeed(document),
            keepaliveInterval=keepaliveInterval,
            keepaliveTimeout=BOUND,
            allowLegacyPeers=True,
        )
        service.startService()
        return defer.succeed(service)

    service = start()
    try:
        waitFor(
            lambda: inReactor(lambda: name in service.connections),
            "this package's cluster to connect to the stock region",
            timeout=BOUND,
            check=lambda: _alive(peer),
        )
    except BaseException:
        inReactor(service.stopService)
        peer.stop()
        raise
    client = inReactor(service.getClient)
    return Link("peer-is-region", peer, service, client)


def _alive(peer: StockPeer) -> None:
    if peer.popen.poll() is not None:
        raise PeerDied(
            f"stock peer exited with {peer.popen.returncode}:\n{peer.tail()}"
        )
