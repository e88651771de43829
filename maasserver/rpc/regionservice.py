"""The region's side of RPC: its responders, its server, and its services.

* :class:`Region` answers what clusters call: ``Identify``, ``Authenticate``
  and ``Register``.
* :class:`RegionServer` is the protocol for one accepted cluster connection:
  it runs the region's half of the handshake, and enters the connection into
  rotation once the cluster is authenticated and registered.
* :class:`RegionService` listens for clusters and hands out clients for
  them (:meth:`RegionService.getClientFor`, :meth:`RegionService.getAllClients`).
* :class:`RegionAdvertisingService` keeps this event-loop's addresses in the
  shared advertisement store, from which clusters discover it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import socket
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from provisioningserver.rpc import observers
from provisioningserver.rpc.common import (
    Client,
    RPCProtocol,
    peerAddress,
    refuseStartTLS,
    releaseFailure,
)
from provisioningserver.rpc.exceptions import (
    AuthenticationFailed,
    CannotRegisterCluster,
    LegacyPeerRefused,
    NoConnectionsAvailable,
)
from provisioningserver.rpc.handshake import (
    REGION,
    HandshakeDeadline,
    challengePeer,
    handshakeCall,
)
from provisioningserver.rpc.limits import DEFAULT_LIMITS, Limits
from provisioningserver.rpc.region import Authenticate, Identify, Ping, Register
from provisioningserver.rpc.tls import TLSConfig
from provisioningserver.twisted.protocols import amp
from provisioningserver.utils.ratelimit import LogLimiter
from provisioningserver.utils.text import printable
from provisioningserver.utils.twisted import DeferredValue

__all__ = [
    "Region",
    "RegionAdvertisingService",
    "RegionServer",
    "RegionService",
    "NoFreePort",
    "eventloopName",
    "listAddresses",
]

log = Logger()


def eventloopName() -> str:
    """Return this process's event-loop name, ``<hostname>:pid=<pid>``.

    :return: the name.
    """
    return f"{socket.gethostname()}:pid={os.getpid()}"


class NoFreePort(CannotListenError):
    """None of the configured RPC ports could be bound."""


class Region(RPCProtocol):
    """The responders of a region event-loop: what clusters may call.

    Subclass it (usually through :class:`RegionServer`) to add responders of
    your own, and hand the subclass to :class:`RegionService` as
    ``protocol``.

    :param service: the :class:`RegionService` this connection belongs to.
    """

    __slots__ = ("service",)

    def __init__(self, service: RegionService) -> None:
        super().__init__(limits=service.limits)
        self.service = service
        self.tls = service.tls
        self.clock = service.clock
        self.allowLegacyPeers = service.allowLegacyPeers
        self.logLimiter = service.logLimiter

    #: TLS is set up by the secure channel, before anything else: AMP's
    #: ``StartTLS`` is refused.
    refuseStartTLS = amp.StartTLS.responder(refuseStartTLS)

    @Identify.responder
    def identify(self) -> dict[str, str]:
        """Answer ``Identify`` with this event-loop's name.

        :return: ``{"ident": "<hostname>:pid=<pid>"}``.
        """
        return {"ident": self.service.eventloop}

    @Authenticate.responder
    def authenticate(self, message: bytes) -> dict[str, bytes]:
        """Answer a cluster's challenge, proving the region knows the secret.

        :param message: the cluster's challenge.
        :return: ``digest`` and ``salt``.
        :raises ChallengeRefused: for a challenge this side will not answer
            (see :mod:`provisioningserver.rpc.handshake`); the connection is
            then closed.
        """
        return self.answerChallenge(self.service.secret, message, REGION)

    @Ping.responder
    def ping(self) -> dict[str, Any]:
        """Answer a cluster's keepalive.

        :return: ``{}``.
        """
        return {}

    @Register.responder
    def register(
        self,
        uuid: str,
        networks: list[dict[str, str]] | None = None,
        url: Any = None,
        ip_addr_json: str | None = None,
    ) -> Deferred[dict[str, Any]]:
        """Register the calling cluster; see :class:`RegionServer`.

        :param uuid: the cluster's UUID.
        :param networks: the cluster's networks, if it sent them.
        :param url: the ``MAAS_URL`` the cluster used, if it sent it.
        :param ip_addr_json: the cluster's addresses as JSON, if it sent them.
        :return: a Deferred firing ``{}`` once registered.
        :raises CannotRegisterCluster: always, here: a bare :class:`Region`
            does not authenticate clusters, so it registers none.
        """
        raise CannotRegisterCluster("this protocol does not register clusters")


#: The longest ``ident`` a cluster may give (a UUID is 36 characters).
_MAX_IDENT = 255


class RegionServer(Region):
    """One accepted connection from a cluster.

    First the secure channel (:mod:`provisioningserver.rpc.channel`): the
    region waits for the cluster's ``SecureChannel``, and both start TLS; a
    cluster that does not offer it is refused unless legacy peers are
    allowed. Then the region's half of the handshake: it calls the
    cluster's ``Identify`` (learning its UUID) and ``Authenticate`` (checking
    the digest). The cluster meanwhile checks the region and then calls
    ``Register``; a ``Register`` that arrives before the region's check has
    finished waits for it (one at a time). Once both are done the connection
    enters the service's rotation under the cluster's UUID. A failed check,
    a refused registration, or a handshake that takes longer than the
    service's handshake timeout drops the connection and logs why, with the
    peer's address.

    :ivar ident: the cluster's UUID once identified.
    :ivar authenticated: a :class:`DeferredValue` set to ``True`` or ``False``
        when the region's check of the cluster ends.
    :ivar registered: whether the connection is in rotation.
    """

    channelRole = "server"

    #: Until the cluster has authenticated and registered, only these are
    #: dispatched.
    handshakeCommands = frozenset(
        cmd.commandName for cmd in (Identify, Authenticate, Register)
    )

    __slots__ = (
        "authenticated",
        "registered",
        "lastHeard",
        "networks",
        "url",
        "ip_addr_json",
        "_admittedFrom",
        "_deadline",
        "_failureLogged",
        "_peer",
        "_registering",
        "_heldBytes",
    )

    def __init__(self, service: RegionService) -> None:
        super().__init__(service)
        self.authenticated = DeferredValue()
        self.registered = False
        self._deadline: HandshakeDeadline | None = None
        self._failureLogged = False
        self._registering = False
        self._heldBytes = 0
        # The address counted against the unauthenticated-connection limit,
        # until the handshake completes.
        self._admittedFrom: str | None = None
        self._peer = "(not connected)"
        self.lastHeard = 0.0
        self.networks: list[dict[str, str]] | None = None
        self.url: Any = None
        self.ip_addr_json: str | None = None

    def dataReceived(self, data: bytes) -> None:
        """Note when the cluster was last heard from, then parse.

        :param data: bytes from the cluster.
        """
        self.lastHeard = self.clock.seconds()
        super().dataReceived(data)
        if self._admittedFrom is not None and not self._lost:
            held = len(self._buffer) + self._boxBytes
            if held != self._heldBytes and not self.service._holding(self, held):
                self.peerWarn(
                    "held-bytes",
                    "Connections in the handshake hold more than {limit} bytes; "
                    "dropping the one from {peer}.",
                    limit=self.limits.maxUnauthenticatedBytesTotal,
                    peer=peerAddress(self),
                )
                self.abort()

    def connectionMade(self) -> None:
        """Start the handshake and its deadline."""
        super().connectionMade()
        self.lastHeard = self.service.clock.seconds()
        self.service.live.add(self)
        self._peer = peerAddress(self)
        observers.connectionChanged("region", "handshake", 1)
        self._deadline = HandshakeDeadline(
            self,
            self.service.handshakeTimeout,
            self.service.clock,
            "Handshake of cluster",
        )
        d = Deferred.fromCoroutine(self._checkCluster())
        d.addErrback(self._checkFailed)

    async def _checkCluster(self) -> None:
        await self.channelReady.get()
        response = await handshakeCall(self, Identify)
        ident = response["ident"]
        if not ident or len(ident) > _MAX_IDENT:
            raise AuthenticationFailed(
                f"the cluster identified itself as {printable(ident)!r}, which "
                "is not a cluster UUID"
            )
        self.ident = ident
        if not await challengePeer(self, self.service.secret, REGION, self.proof()):
            raise AuthenticationFailed(
                f"cluster {printable(ident)} gave a wrong digest: it does not "
                "know the shared secret"
            )
        self.authenticated.set(True)

    def challengeRefused(self) -> None:
        """A challenge was refused (and logged): the hang-up that follows is
        not to be blamed on the secret."""
        self._failureLogged = True
        observers.handshakeFailed("region", "protocol")

    def legacyRefused(self) -> None:
        """A legacy cluster was refused: count it, and say so once."""
        self._failureLogged = True
        observers.handshakeFailed("region", "legacy-refused")

    def _checkFailed(self, failure: Failure) -> None:
        try:
            self._reportCheckFailure(failure)
        finally:
            releaseFailure(failure)

    def _reportCheckFailure(self, failure: Failure) -> None:
        if not self.authenticated.isSet:
            self.authenticated.set(False)
        if not self.isConnected() or failure.check(LegacyPeerRefused):
            return  # Lost while checking (connectionLost says so), or refused.
        self._failureLogged = True
        if failure.check(AuthenticationFailed):
            observers.handshakeFailed("region", "wrong-secret")
            self.peerError(
                "auth",
                "Authentication of cluster at {peer} failed: {error}; dropping "
                "the connection.",
                peer=peerAddress(self),
                error=printable(failure.getErrorMessage(), 200),
            )
        elif failure.check(amp.AmpError, ConnectionError):
            observers.handshakeFailed("region", "protocol")
            self.peerWarn(
                "handshake",
                "Handshake with cluster at {peer} failed: {error}; dropping the "
                "connection.",
                peer=peerAddress(self),
                error=printable(failure.getErrorMessage(), 200),
            )
        else:
            observers.handshakeFailed("region", "protocol")
            log.failure(
                "Handshake with cluster at {peer} failed; dropping the connection.",
                failure,
                peer=peerAddress(self),
            )
        self.disconnect()

    @Register.responder
    def register(
        self,
        uuid: str,
        networks: list[dict[str, str]] | None = None,
        url: Any = None,
        ip_addr_json: str | None = None,
    ) -> Deferred[dict[str, Any]]:
        """Register the cluster once the region has authenticated it.

        Waits, if need be, for the region's own check of the cluster to end.

        :param uuid: the cluster's UUID; must be what it answered to
            ``Identify``.
        :param networks: the cluster's networks (kept as
            ``networks``).
        :param url: the ``MAAS_URL`` the cluster used.
        :param ip_addr_json: the cluster's addresses as JSON.
        :return: a Deferred firing ``{}``.
        :raises CannotRegisterCluster: when the cluster failed
            authentication, ``uuid`` differs from its ``Identify`` answer, or
            another ``Register`` from it is still pending.
        """
        if self._registering or self.registered:
            self.closeAfterReply()
            raise CannotRegisterCluster(
                "this connection has already asked to register; refusing"
            )
        self._registering = True
        self.networks = networks
        self.url = url
        self.ip_addr_json = ip_addr_json
        return self.authenticated.get().addCallback(self._register, uuid)

    def _register(self, authenticated: bool, uuid: str) -> dict[str, Any]:
        if not authenticated:
            raise CannotRegisterCluster(
                f"cluster {uuid} is not authenticated; refusing to register it"
            )
        if uuid != self.ident:
            self.peerError(
                "register",
                "Cluster at {peer} identified itself as {ident} but asked to "
                "register as {uuid}; refusing.",
                peer=peerAddress(self),
                ident=printable(str(self.ident)),
                uuid=printable(uuid),
            )
            observers.handshakeFailed("region", "refused-registration")
            self._failureLogged = True
            self.closeAfterReply()
            raise CannotRegisterCluster(
                f"UUID {uuid} is not the identity {self.ident} this connection gave"
            )
        if not self.isConnected():
            raise CannotRegisterCluster("the connection was lost while registering")
        if self._deadline is not None:
            self._deadline.done()
            self._deadline = None
        self.registered = True
        self.peerAuthenticated = True
        self.service._releaseUnauthenticated(self)
        self.service._addConnectionFor(uuid, self)
        observers.connectionChanged("region", "handshake", -1)
        observers.connectionChanged("region", "authenticated", 1)
        log.info(
            "Cluster {uuid} at {peer} registered ({mode}).",
            uuid=uuid,
            peer=peerAddress(self),
            mode=self.mode,
        )
        return {}

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Leave the rotation, stop the deadline, fail what waits.

        :param reason: why the connection was lost.
        """
        if self._deadline is not None:
            self._deadline.done()
            quiet = self.registered or self._failureLogged or self._deadline.expired
            if self._deadline.expired:
                observers.handshakeFailed("region", "timeout")
            if not quiet:
                self._logEarlyHangUp()
        if not self.authenticated.isSet:
            self.authenticated.set(False)
        self.service._releaseUnauthenticated(self)
        self.service.live.discard(self)
        if self.registered:
            self.registered = False
            observers.connectionChanged("region", "authenticated", -1)
            self.service._removeConnectionFor(self.ident, self)
        else:
            observers.connectionChanged("region", "handshake", -1)
        super().connectionLost(reason)

    def _logEarlyHangUp(self) -> None:
        ident = printable(self.ident) if self.ident else "(unidentified)"
        if self.lastRefused is not None:
            self.peerWarn(
                "hangup",
                "Cluster {ident} at {peer} disconnected before completing the "
                "handshake, after {n} of its commands (the last {command}) were "
                "refused because it had not completed the handshake.",
                ident=ident,
                peer=self._peer,
                n=self.refused,
                command=printable(self.lastRefused),
            )
        elif self.mode is None:
            self.peerWarn(
                "hangup",
                "Peer at {peer} disconnected before the secure channel was up.",
                peer=self._peer,
            )
        else:
            self.peerWarn(
                "hangup",
                "Cluster {ident} at {peer} disconnected before completing the "
                "handshake; a cluster hangs up when the region's digest is "
                "wrong, so check that both have the same shared secret.",
                ident=ident,
                peer=self._peer,
            )


class _RegionFactory(Factory):
    """Builds a :class:`RegionServer` (or the configured protocol) per
    accepted connection, bound to the service."""

    noisy = False

    def __init__(self, service: RegionService) -> None:
        self.service = service

    def buildProtocol(self, addr: Any) -> RegionServer | None:
        host = getattr(addr, "host", str(addr))
        if not self.service._admitUnauthenticated(host):
            return None  # Twisted closes the connection.
        proto = self.service.protocol(self.service)
        proto.factory = self
        proto._admittedFrom = host
        return proto


class RegionService(Service):
    """Accepts cluster connections, and hands out clients for them.

    It listens on the first free port of ``ports``. Connections enter
    ``connections`` (UUID → set of connections; a cluster that runs
    several processes for high availability has several) once the handshake
    completes.

    :param secret: the raw shared secret.
    :param eventloop: this event-loop's name; ``<hostname>:pid=<pid>`` when
        ``None``.
    :param ports: RPC ports to try in order; ``range(0, 1)`` for any free
        port.
    :param interface: the address to listen on; ``""`` for all IPv4
        interfaces.
    :param protocol: the protocol class per connection: :class:`RegionServer`
        or a subclass with responders of your own.
    :param handshakeTimeout: seconds a cluster may take to complete the
        handshake.
    :param reactor: the reactor to listen with and to measure time; the
        global reactor when ``None``.
    :param statusPath: a file in which to keep this event-loop's status (its
        name, port and connected clusters, as JSON), rewritten on each
        change; none when ``None``.
    :param limits: the :class:`~provisioningserver.rpc.limits.Limits` applied
        to each cluster connection; the defaults when ``None``.
    :param tls: TLS material (:class:`~provisioningserver.rpc.tls.TLSConfig`);
        when given, every cluster must start TLS first; plain TCP when
        ``None``.
    :param idleTimeout: seconds after which a connection the region has
        heard nothing from (clusters ping every 30 s by default) is dropped.
    :param allowLegacyPeers: accept clusters that do not offer the secure
        channel (MAAS clusters), with MAAS's plain handshake
        (``MAAS_RPC_ALLOW_LEGACY_PEERS``); refused when ``False``.
    :param backlog: the listening socket's backlog: connections the kernel
        queues before the event-loop accepts them (many clusters connect at
        once when a region starts).

    :ivar connections: UUID → set of :class:`RegionServer` (in rotation).
    :ivar live: every open connection, in rotation or still in the
        handshake.
    :ivar starting: a Deferred that fires once listening (or fails).
    """

    name = "rpc"  # type: ignore[assignment]

    def __init__(
        self,
        secret: bytes,
        eventloop: str | None = None,
        *,
        ports: Iterable[int] = range(5250, 5260),
        interface: str = "",
        protocol: Callable[[RegionService], RegionServer] = RegionServer,
        handshakeTimeout: float = 30.0,
        reactor: Any = None,
        statusPath: Path | None = None,
        limits: Limits | None = None,
        tls: TLSConfig | None = None,
        idleTimeout: float = 90.0,
        allowLegacyPeers: bool = False,
        backlog: int = 1024,
    ) -> None:
        self.secret = secret
        self.tls = tls
        self.allowLegacyPeers = allowLegacyPeers
        self.backlog = backlog
        #: Warnings about what peers do: ten a minute per kind and address, then
        #: a count.
        self.logLimiter = LogLimiter(log, clock=reactor, burst=10)
        self._statusCall: Any = None
        self.idleTimeout = idleTimeout
        self._sweeper: Any = None
        self.limits = limits if limits is not None else DEFAULT_LIMITS
        self._unauthenticated: Counter[str] = Counter()
        self._unauthenticatedTotal = 0
        #: Bytes buffered by connections still in the handshake, together.
        self.unauthenticatedBytes = 0
        self._eventloop = eventloop
        self.ports = list(ports)
        self.interface = interface
        self.protocol = protocol
        self.handshakeTimeout = handshakeTimeout
        self._reactor = reactor
        self.statusPath = statusPath
        self.connections: dict[str, set[RegionServer]] = {}
        self.live: set[RegionServer] = set()
        self.waiters: dict[str, set[Deferred[Client]]] = {}
        self.starting: Deferred[Any] = Deferred()
        self._port: Any = None

    @property
    def eventloop(self) -> str:
        """This event-loop's name."""
        return self._eventloop or eventloopName()

    @property
    def clock(self) -> Any:
        """The reactor (or clock) this service uses."""
        if self._reactor is None:
            from twisted.internet import reactor

            return reactor
        return self._reactor

    def startService(self) -> None:
        """Start listening on the first free port; see ``starting``.

        :raises NoFreePort: when no port in ``ports`` can be bound.
        """
        super().startService()
        self._sweeper = LoopingCall(self._dropIdle)
        self._sweeper.clock = self.clock
        self._sweeper.start(self.idleTimeout / 3, now=False)
        try:
            port = self._listen()
        except NoFreePort as error:
            log.error("{error}", error=error)
            self.starting.errback(error)
            self.starting.addErrback(lambda _: None)  # Raised instead.
            raise
        self.starting.callback(port)

    def _listen(self) -> Any:
        factory = _RegionFactory(self)
        for port in self.ports:
            try:
                self._port = self.clock.listenTCP(
                    port, factory, backlog=self.backlog, interface=self.interface
                )
            except CannotListenError:
                continue
            log.info(
                "Region event-loop {name} listening for clusters on port {port}.",
                name=self.eventloop,
                port=self.getPort(),
            )
            self._writeStatus()
            return self._port
        first, last = (self.ports[0], self.ports[-1]) if self.ports else (0, 0)
        raise NoFreePort(
            self.interface,
            f"{first}-{last}",
            f"no free RPC port among {len(self.ports)} tried",
        )

    def stopService(self) -> Deferred[None]:
        """Stop listening and drop every connection.

        :return: a Deferred that fires once all connections are closed.
        """
        super().stopService()
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        waits = []
        if self._port is not None:
            waits.append(defer.maybeDeferred(self._port.stopListening))
            self._port = None
        for conn in list(self.live):
            waits.append(conn.onConnectionLost)
            conn.disconnect()
        # Cancelling a waiter forgets it (and an emptied entry): iterate
        # over copies.
        for waiters in list(self.waiters.values()):
            for waiter in list(waiters):
                waiter.cancel()
        self.waiters.clear()
        if self._statusCall is not None and self._statusCall.active():
            self._statusCall.cancel()
        self._statusCall = None
        if self.statusPath is not None:
            self.statusPath.unlink(missing_ok=True)
        return defer.DeferredList(waits).addCallback(lambda _: None)

    def getPort(self) -> int | None:
        """Return the port this service listens on.

        :return: the port, or ``None`` when not listening.
        """
        if self._port is None:
            return None
        return int(self._port.getHost().port)

    def _dropIdle(self) -> None:
        deadline = self.clock.seconds() - self.idleTimeout
        for conn in list(self.live):
            if conn.lastHeard < deadline:
                conn.peerWarn(
                    "idle",
                    "Heard nothing from cluster {ident} at {peer} for {idle} "
                    "seconds; dropping the connection.",
                    ident=conn.ident or "(unidentified)",
                    peer=peerAddress(conn),
                    idle=self.idleTimeout,
                )
                conn.abort()

    # Connections not yet authenticated, per source address.

    def _admitUnauthenticated(self, host: str) -> bool:
        limit = self.limits.maxUnauthenticatedPerAddress
        total = self.limits.maxUnauthenticatedTotal
        if self._unauthenticated[host] >= limit:
            self.logLimiter.emit(
                LogLevel.warn,
                ("refused", host),
                "Refused a connection from {host}: {limit} connections from it "
                "are already in the handshake.",
                host=printable(host),
                limit=limit,
            )
            return False
        if self._unauthenticatedTotal >= total:
            self.logLimiter.emit(
                LogLevel.warn,
                ("refused-total", None),
                "Refused a connection from {host}: {limit} connections are "
                "already in the handshake (MAAS_RPC_MAX_UNAUTHENTICATED_TOTAL).",
                host=printable(host),
                limit=total,
            )
            return False
        self._unauthenticated[host] += 1
        self._unauthenticatedTotal += 1
        return True

    def _releaseUnauthenticated(self, conn: RegionServer) -> None:
        host = getattr(conn, "_admittedFrom", None)
        if host is None:
            return
        conn._admittedFrom = None
        self.unauthenticatedBytes -= conn._heldBytes
        conn._heldBytes = 0
        self._unauthenticatedTotal -= 1
        self._unauthenticated[host] -= 1
        if self._unauthenticated[host] <= 0:
            del self._unauthenticated[host]

    def _holding(self, conn: RegionServer, held: int) -> bool:
        """Account for what a connection in the handshake holds.

        :return: ``False`` when all such connections together would hold
            more than the budget (the connection is then dropped).
        """
        self.unauthenticatedBytes += held - conn._heldBytes
        conn._heldBytes = held
        return self.unauthenticatedBytes <= self.limits.maxUnauthenticatedBytesTotal

    # Rotation.

    def _addConnectionFor(self, uuid: str, conn: RegionServer) -> None:
        self.connections.setdefault(uuid, set()).add(conn)
        for waiter in self.waiters.pop(uuid, set()):
            waiter.callback(Client(conn))
        self._writeStatus()

    def _removeConnectionFor(self, uuid: str | None, conn: RegionServer) -> None:
        if uuid is None:
            return
        conns = self.connections.get(uuid)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self.connections[uuid]
        log.info(
            "Cluster {uuid} at {peer} disconnected.", uuid=uuid, peer=peerAddress(conn)
        )
        self._writeStatus()

    def _writeStatus(self) -> None:
        # Coalesced: a thousand clusters registering at once cost one write,
        # not a thousand writes of a growing file.
        if self.statusPath is None or not self.running:
            return
        if self._statusCall is None or not self._statusCall.active():
            self._statusCall = self.clock.callLater(0.2, self._writeStatusNow)

    def _writeStatusNow(self) -> None:
        self._statusCall = None
        if self.statusPath is None or not self.running:
            return
        status = {
            "eventloop": self.eventloop,
            "port": self.getPort(),
            "clusters": sorted(self.connections),
            "connections": sum(len(c) for c in self.connections.values()),
        }
        self.statusPath.parent.mkdir(parents=True, exist_ok=True)
        temp = self.statusPath.with_name(f".{self.statusPath.name}.tmp")
        temp.write_text(json.dumps(status))
        os.replace(temp, self.statusPath)

    # Clients.

    def getClientFor(self, uuid: str, timeout: float = 30) -> Deferred[Client]:
        """Return a client for a random connection of cluster ``uuid``.

        :param uuid: the cluster's UUID.
        :param timeout: seconds to wait for the cluster to connect when it
            has no connection now; 0 does not wait.
        :return: a Deferred firing with a :class:`Client`, or failing with
            :class:`NoConnectionsAvailable` (whose ``uuid`` is set) when the
            cluster has no connection within ``timeout``.
        """
        conns = self.connections.get(uuid)
        if conns:
            if len(conns) == 1:
                (conn,) = conns
            else:
                conn = random.choice(list(conns))
            return defer.succeed(Client(conn))
        if timeout is None or timeout <= 0:
            return defer.fail(self._noConnections(uuid))

        def forget(d: Deferred[Client]) -> None:
            waiters = self.waiters.get(uuid)
            if waiters is not None:
                waiters.discard(d)
                if not waiters:
                    del self.waiters[uuid]

        waiter: Deferred[Client] = Deferred(forget)
        self.waiters.setdefault(uuid, set()).add(waiter)

        def timedOut(result: Any, seconds: float) -> Any:
            if isinstance(result, Failure) and result.check(defer.CancelledError):
                return Failure(self._noConnections(uuid, seconds))
            return result

        return waiter.addTimeout(timeout, self.clock, onTimeoutCancel=timedOut)

    @staticmethod
    def _noConnections(uuid: str, waited: float | None = None) -> Exception:
        after = f" after waiting {waited} seconds" if waited else ""
        return NoConnectionsAvailable(
            f"no connection to cluster {uuid}{after}", uuid=uuid
        )

    def getAllClients(self) -> list[Client]:
        """Return one client for each connection, of every cluster.

        :return: a list of :class:`Client` (a cluster with several
            connections appears once per connection).
        """
        return [Client(conn) for conns in self.connections.values() for conn in conns]


def listAddresses(bind: str) -> list[str]:
    """Return the addresses to advertise for a listening address.

    :param bind: the address the RPC server listens on; ``""``, ``0.0.0.0``
        or ``::`` for all interfaces.
    :return: ``[bind]`` for one address; for all interfaces, every address of
        this host that is not link-local (IPv4 first).
    """
    if bind not in ("", "0.0.0.0", "::"):
        return [bind]
    import ifaddr

    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            text = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            address = ipaddress.ip_address(text.split("%")[0])
            if address.is_link_local or (bind == "" and address.version == 6):
                continue
            found.append(str(address))
    return sorted(set(found), key=lambda a: (":" in a, a))


class RegionAdvertisingService(TimerService):
    """Keeps this event-loop's RPC addresses in the advertisement store.

    At start, and every ``interval`` seconds, it writes ``(name, address,
    port)`` records and deletes every record (of any event-loop) not
    refreshed for ``expiry`` seconds. At stop it removes its own records.

    :param store: an
        :class:`~maasserver.rpc.stores.IAdvertisementStore` provider.
    :param rpc: the :class:`RegionService` whose port to advertise.
    :param interval: seconds between refreshes.
    :param expiry: seconds after which unrefreshed records are deleted.
    :param clock: the clock for the period; the global reactor when ``None``.

    :ivar advertising: a :class:`DeferredValue` set once the first
        advertisement has been written.
    """

    name = "rpc-advertise"  # type: ignore[assignment]

    def __init__(
        self,
        store: Any,
        rpc: RegionService,
        *,
        interval: float = 60.0,
        expiry: float = 300.0,
        clock: Any = None,
    ) -> None:
        super().__init__(interval, self._refresh)
        self.store = store
        self.rpc = rpc
        self.expiry = expiry
        self.clock = clock
        self.advertising = DeferredValue()

    def endpoints(self) -> list[tuple[str, int]]:
        """Return the ``(address, port)`` pairs to advertise now.

        :return: the pairs; empty when the RPC service is not listening.
        """
        port = self.rpc.getPort()
        if port is None:
            return []
        return [(address, port) for address in listAddresses(self.rpc.interface)]

    async def _refreshNow(self) -> None:
        endpoints = self.endpoints()
        if not endpoints:
            return
        await self.store.advertise(self.rpc.eventloop, endpoints)
        if not self.advertising.isSet:
            self.advertising.set(True)
            log.info(
                "Advertising event-loop {name} at {endpoints}.",
                name=self.rpc.eventloop,
                endpoints=endpoints,
            )
        expired = await self.store.expire(self.expiry)
        if expired:
            log.info("Deleted {n} stale event-loop advertisements.", n=expired)

    def _refresh(self) -> Deferred[None]:
        d = Deferred.fromCoroutine(self._refreshNow())
        d.addErrback(
            lambda failure: log.failure(
                "Could not advertise event-loop {name}; will try again.",
                failure,
                name=self.rpc.eventloop,
            )
        )
        return d

    def stopService(self) -> Deferred[None]:
        """Stop refreshing, remove this event-loop's records, and release the
        store's connection if it keeps one.

        :return: a Deferred that fires once removed.
        """
        if not self.running:
            # Never started (another service failed to start first).
            return defer.succeed(None)
        d = defer.maybeDeferred(super().stopService)
        d.addCallback(lambda _: self.store.withdraw(self.rpc.eventloop))
        d.addErrback(
            lambda failure: log.failure(
                "Could not withdraw the advertisement of {name}.",
                failure,
                name=self.rpc.eventloop,
            )
        )
        close = getattr(self.store, "close", None)
        if close is not None:
            d.addCallback(lambda _: close())
            d.addErrback(
                lambda failure: log.failure("Could not close the store.", failure)
            )
        return d
