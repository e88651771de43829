"""The cluster's side of RPC: its responders, its connections to the region,
and the service that keeps one connection to every region event-loop.

* :class:`Cluster` answers what the region calls: ``Identify``,
  ``Authenticate`` and ``EatCheez``. Subclass it to add responders.
* :class:`ClusterClient` is one connection to one region event-loop: on
  connecting it authenticates the region, then registers.
* :class:`ClusterClientService` discovers the region's event-loops over HTTP
  (``<MAAS_URL>/rpc/``), connects to each, drops connections to event-loops
  no longer advertised, and hands out clients (:meth:`~ClusterClientService.getClient`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from provisioningserver.cheese import rate_cheese
from provisioningserver.rpc import observers
from provisioningserver.rpc.client import peerLacksCommand
from provisioningserver.rpc.cluster import Authenticate, EatCheez, Identify
from provisioningserver.rpc.common import (
    Client,
    RPCProtocol,
    peerAddress,
    refuseStartTLS,
    releaseFailure,
)
from provisioningserver.rpc.exceptions import (
    AuthenticationFailed,
    ChallengeRefused,
    LegacyPeerRefused,
    NoConnectionsAvailable,
    RegistrationFailed,
)
from provisioningserver.rpc.handshake import (
    CLUSTER,
    HandshakeDeadline,
    answerChallenge,
    challengePeer,
)
from provisioningserver.rpc.limits import DEFAULT_LIMITS, Limits
from provisioningserver.rpc.region import Ping, Register
from provisioningserver.rpc.tls import TLSConfig
from provisioningserver.twisted.protocols import amp
from provisioningserver.utils.text import printable
from provisioningserver.utils.twisted import DeferredValue

__all__ = [
    "Cluster",
    "ClusterClient",
    "ClusterClientService",
    "DiscoveryError",
    "parseDiscovery",
]

log = Logger()

#: An event-loop's advertised endpoints: ``[(address, port), ...]``.
Endpoints = list[tuple[str, int]]


class DiscoveryError(Exception):
    """The region's discovery answer was unusable (HTTP error, bad JSON)."""


def parseDiscovery(body: bytes) -> dict[str, Endpoints] | None:
    """Parse the region's ``/rpc/`` answer.

    :param body: the response body.
    :return: event-loop name → endpoints, or ``None`` when the region says
        it is not advertising yet.
    :raises DiscoveryError: when the body is not the expected JSON.
    """
    try:
        document = json.loads(body.decode("utf-8"))
        eventloops = document["eventloops"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise DiscoveryError(f"malformed discovery answer: {error}") from None
    if eventloops is None:
        return None
    if not isinstance(eventloops, dict):
        raise DiscoveryError("malformed discovery answer: eventloops is not a map")
    result: dict[str, Endpoints] = {}
    for name, endpoints in eventloops.items():
        try:
            result[str(name)] = [(str(host), int(port)) for host, port in endpoints]
        except (TypeError, ValueError):
            raise DiscoveryError(
                f"malformed discovery answer: bad endpoints for {name!r}"
            ) from None
    return result


class Cluster(RPCProtocol):
    """The responders of a cluster: what the region may call.

    Subclass it (usually through :class:`ClusterClient`) to add responders
    of your own, and hand the subclass to :class:`ClusterClientService` as
    ``protocol``.

    :param service: the :class:`ClusterClientService` this connection
        belongs to (it knows the UUID and the secret).
    """

    __slots__ = ("service",)

    def __init__(self, service: ClusterClientService) -> None:
        super().__init__(limits=service.limits)
        self.service = service
        self.tls = service.tls
        self.clock = service.clock
        self.allowLegacyPeers = service.allowLegacyPeers

    #: TLS is set up by the secure channel, before anything else: AMP's
    #: ``StartTLS`` is refused.
    refuseStartTLS = amp.StartTLS.responder(refuseStartTLS)

    @Identify.responder
    def identify(self) -> dict[str, str]:
        """Answer ``Identify`` with this cluster's UUID.

        :return: ``{"ident": "<uuid>"}``.
        """
        return {"ident": self.service.uuid}

    @Authenticate.responder
    def authenticate(self, message: bytes) -> dict[str, bytes]:
        """Answer the region's challenge, proving the cluster knows the
        secret.

        :param message: the region's challenge.
        :return: ``digest`` and ``salt``.
        :raises ChallengeRefused: for a challenge this side will not answer
            (see :mod:`provisioningserver.rpc.handshake`); the connection is
            then closed.
        """
        try:
            return answerChallenge(self.service.secret, message, CLUSTER, self.proof())
        except ChallengeRefused as error:
            log.warn(
                "Refused to answer a challenge from {peer}: {error}; closing "
                "the connection.",
                peer=peerAddress(self),
                error=error,
            )
            self.closeAfterReply()
            raise

    @EatCheez.responder
    def eat_cheez(self, name: str, origin: str) -> dict[str, int]:
        """Rate a cheese (the worked example).

        :param name: the cheese.
        :param origin: where it comes from.
        :return: ``{"rating": 1..10}``.
        :raises NoSuchCheese: for a cheese this cluster will not rate.
        """
        return {"rating": rate_cheese(name, origin)}


class ClusterClient(Cluster):
    """One connection from this cluster to one region event-loop.

    On connecting it offers the secure channel
    (:mod:`provisioningserver.rpc.channel`), then calls the region's
    ``Authenticate`` and checks the digest, then calls ``Register`` with the
    cluster's UUID (and the ``MAAS_URL`` it used). Only then is it ready,
    and in the service's rotation. A region that does not offer the secure
    channel is refused unless legacy peers are allowed. A wrong digest, a
    refused registration, or a handshake slower than the service's
    handshake timeout drops the connection, logged with the reason.

    :param service: the owning :class:`ClusterClientService`.
    :param eventloop: the name of the region event-loop this connects to.
    :param address: the ``(host, port)`` connected to.

    :ivar ready: a :class:`DeferredValue` set to ``True`` once authenticated
        and registered, or failed with the reason it is not.
    """

    __slots__ = ("eventloop", "address", "ready", "_deadline", "_keepalive")

    channelRole = "client"

    #: Until the region has proved it knows the secret, only these are
    #: dispatched.
    handshakeCommands = frozenset(cmd.commandName for cmd in (Identify, Authenticate))

    def __init__(
        self,
        service: ClusterClientService,
        eventloop: str,
        address: tuple[str, int],
    ) -> None:
        super().__init__(service)
        self.eventloop = eventloop
        self.ident = eventloop
        self.address = address
        self.ready = DeferredValue()
        self._deadline: HandshakeDeadline | None = None
        self._keepalive: _Keepalive | None = None

    def connectionMade(self) -> None:
        """Start the handshake and its deadline."""
        super().connectionMade()
        observers.connectionChanged("cluster", "handshake", 1)
        self._deadline = HandshakeDeadline(
            self,
            self.service.handshakeTimeout,
            self.service.clock,
            f"Handshake with region event-loop {printable(self.eventloop)}",
        )
        d = Deferred.fromCoroutine(self._handshake())
        d.addCallbacks(self._handshakeDone, self._handshakeFailed)

    async def _handshake(self) -> None:
        await self.openChannel()
        if not await challengePeer(self, self.service.secret, CLUSTER, self.proof()):
            raise AuthenticationFailed(
                f"region event-loop {printable(self.eventloop)} gave a wrong "
                "digest: it does not know the shared secret"
            )
        self.peerAuthenticated = True
        try:
            await self.callRemote(
                Register, uuid=self.service.uuid, url=self.service.maasURL
            )
        except Exception as error:
            raise RegistrationFailed(
                f"region event-loop {printable(self.eventloop)} refused to "
                f"register cluster {self.service.uuid}: {error}"
            ) from error

    def _handshakeDone(self, _: Any) -> None:
        if self._deadline is not None:
            self._deadline.done()
            self._deadline = None
        if not self.isConnected():
            return
        log.info(
            "Connected to region event-loop {eventloop} at {peer} ({mode}).",
            eventloop=printable(self.eventloop),
            peer=peerAddress(self),
            mode=self.mode,
        )
        observers.connectionChanged("cluster", "handshake", -1)
        observers.connectionChanged("cluster", "authenticated", 1)
        self.service._addConnection(self.eventloop, self)
        self.ready.set(True)
        self._keepalive = _Keepalive.join(self)

    def _ping(self) -> Deferred[None]:
        timeout = self.service.keepaliveTimeout
        d = self.callRemote(Ping).addTimeout(timeout, self.service.clock)

        def failed(failure: Failure) -> None:
            if peerLacksCommand(failure.value):
                return  # An older region without Ping: it answered, so alive.
            if not self.isConnected():
                return
            log.warn(
                "Region event-loop {eventloop} at {peer} did not answer a "
                "keepalive within {timeout} seconds ({error}); dropping the "
                "connection.",
                eventloop=printable(self.eventloop),
                peer=peerAddress(self),
                timeout=timeout,
                error=printable(failure.getErrorMessage(), 200),
            )
            self.abort()

        return d.addCallbacks(lambda _: None, failed)

    def _handshakeFailed(self, failure: Failure) -> None:
        try:
            self._reportHandshakeFailure(failure)
        finally:
            releaseFailure(failure)

    def _reportHandshakeFailure(self, failure: Failure) -> None:
        if self._deadline is not None:
            self._deadline.done()
            if self._deadline.expired:
                observers.handshakeFailed("cluster", "timeout")
            self._deadline = None
        if not self.ready.isSet:
            self.ready.fail(failure)
            self.ready.get().addErrback(lambda _: None)
        if not self.isConnected():
            return
        if failure.check(LegacyPeerRefused):
            observers.handshakeFailed("cluster", "legacy-refused")
        elif failure.check(RegistrationFailed):
            observers.handshakeFailed("cluster", "refused-registration")
        elif failure.check(AuthenticationFailed):
            observers.handshakeFailed("cluster", "wrong-secret")
        else:
            observers.handshakeFailed("cluster", "protocol")
        if failure.check(AuthenticationFailed, RegistrationFailed, amp.AmpError):
            log.error(
                "Handshake with region at {peer} failed: {error}; dropping the "
                "connection.",
                peer=peerAddress(self),
                error=printable(failure.getErrorMessage(), 300),
            )
        else:
            log.failure(
                "Handshake with region at {peer} failed; dropping the connection.",
                failure,
                peer=peerAddress(self),
            )
        self.disconnect()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Leave the rotation, and tell the service.

        :param reason: why the connection was lost.
        """
        if self._deadline is not None:
            self._deadline.done()
            self._deadline = None
        if self._keepalive is not None:
            self._keepalive.leave(self)
            self._keepalive = None
        wasReady = self.ready.isSet and self.ready.value is True
        super().connectionLost(reason)
        if not self.ready.isSet:
            self.ready.fail(reason)
            self.ready.get().addErrback(lambda _: None)
        observers.connectionChanged(
            "cluster", "authenticated" if wasReady else "handshake", -1
        )
        self.service._removeConnection(self.eventloop, self)


class _Keepalive:
    """Pings every region connection that shares a clock, interval and
    timeout, with one timer (not one per connection)."""

    _shared: dict[tuple[Any, float, float], _Keepalive] = {}

    def __init__(self, clock: Any, interval: float, timeout: float) -> None:
        self.key = (clock, interval, timeout)
        self.conns: set[ClusterClient] = set()
        self.loop = LoopingCall(self._pingAll)
        self.loop.clock = clock

    @classmethod
    def join(cls, conn: ClusterClient) -> _Keepalive:
        service = conn.service
        key = (service.clock, service.keepaliveInterval, service.keepaliveTimeout)
        keepalive = cls._shared.get(key)
        if keepalive is None:
            keepalive = cls._shared[key] = cls(*key)
        keepalive.conns.add(conn)
        if not keepalive.loop.running:
            keepalive.loop.start(service.keepaliveInterval, now=False)
        return keepalive

    def leave(self, conn: ClusterClient) -> None:
        self.conns.discard(conn)
        if not self.conns:
            if self.loop.running:
                self.loop.stop()
            if self._shared.get(self.key) is self:
                del self._shared[self.key]

    def _pingAll(self) -> None:
        for conn in list(self.conns):
            conn._ping()


class _ClientFactory(Factory):
    noisy = False

    def __init__(
        self, service: ClusterClientService, eventloop: str, address: tuple[str, int]
    ) -> None:
        self.service = service
        self.eventloop = eventloop
        self.address = address

    def buildProtocol(self, addr: Any) -> ClusterClient:
        proto = self.service.protocol(self.service, self.eventloop, self.address)
        proto.factory = self
        return proto


class ClusterClientService(Service):
    """Keeps this cluster connected to every region event-loop.

    It polls ``<maasURL>/rpc/`` and connects to every advertised event-loop
    it is not connected to (trying each advertised address in turn until one
    answers), and drops connections to event-loops no longer advertised. It
    polls every ``intervals[0]`` seconds while it has no connection (and
    when just started), ``intervals[1]`` while some advertised event-loops
    are not connected, ``intervals[2]`` when all are (each give or take
    10%), and at once after a connection is lost, then with exponential
    backoff and jitter (0.5 s, 1 s, 2 s, ... up to the interval) until
    reconnected. An HTTP error from the region means "try again", logged
    once until the region answers well again; meanwhile it keeps connecting
    to the last event-loops the region advertised.

    Each region connection is pinged every ``keepaliveInterval`` seconds; one
    that does not answer within ``keepaliveTimeout`` is dropped (and so
    replaced).

    :param maasURL: the region's base URL, e.g. ``http://region:5240/MAAS``.
    :param secret: the raw shared secret.
    :param uuid: this cluster's UUID.
    :param protocol: the per-connection protocol: :class:`ClusterClient` or
        a subclass with responders of your own.
    :param intervals: poll intervals in seconds: disconnected, partly
        connected, fully connected.
    :param handshakeTimeout: seconds a connection may take to authenticate
        and register.
    :param connectTimeout: seconds for one TCP connection attempt.
    :param reactor: the reactor (or a clock with ``connectTCP``); the global
        reactor when ``None``.
    :param fetch: a function from URL to a Deferred of the response body,
        raising :class:`DiscoveryError` on an HTTP error; an HTTP GET with
        treq when ``None``.
    :param connect: a function ``(host, port, factory)`` returning a
        Deferred of the connected protocol; a TCP connection when ``None``.
    :param limits: the :class:`~provisioningserver.rpc.limits.Limits` applied
        to each region connection; the defaults when ``None``.
    :param tls: TLS material (:class:`~provisioningserver.rpc.tls.TLSConfig`);
        when given, each connection starts TLS first and requires it; plain
        TCP when ``None``.
    :param keepaliveInterval: seconds between pings on each region
        connection.
    :param keepaliveTimeout: seconds a ping may take before the connection is
        dropped and replaced.
    :param randomness: a source of uniform numbers in [0, 1) for the jitter
        of poll delays; :func:`random.random` when ``None`` (a test passes a
        constant).
    :param allowLegacyPeers: accept region event-loops that do not offer the
        secure channel (MAAS regions), with MAAS's plain handshake
        (``MAAS_RPC_ALLOW_LEGACY_PEERS``); refused when ``False``.

    :ivar connections: event-loop name → its ready :class:`ClusterClient`.
    :ivar handshaking: connections still in the handshake.
    """

    name = "rpc"  # type: ignore[assignment]

    def __init__(
        self,
        maasURL: str,
        secret: bytes,
        uuid: str,
        *,
        protocol: Callable[..., ClusterClient] = ClusterClient,
        intervals: Sequence[float] = (2.0, 10.0, 30.0),
        handshakeTimeout: float = 30.0,
        connectTimeout: float = 10.0,
        reactor: Any = None,
        fetch: Callable[[str], Deferred[bytes]] | None = None,
        connect: Callable[..., Deferred[Any]] | None = None,
        limits: Limits | None = None,
        tls: TLSConfig | None = None,
        keepaliveInterval: float = 30.0,
        keepaliveTimeout: float = 10.0,
        randomness: Callable[[], float] | None = None,
        allowLegacyPeers: bool = False,
    ) -> None:
        self.maasURL = maasURL.rstrip("/")
        self.allowLegacyPeers = allowLegacyPeers
        self.tls = tls
        self.limits = limits if limits is not None else DEFAULT_LIMITS
        self.secret = secret
        self.uuid = uuid
        self.protocol = protocol
        self.intervals = tuple(intervals)
        self.handshakeTimeout = handshakeTimeout
        self.connectTimeout = connectTimeout
        self._reactor = reactor
        self._fetch = fetch or self._fetchWithTreq
        self._connect = connect or self._connectTCP
        self.connections: dict[str, ClusterClient] = {}
        self.connecting: dict[str, Deferred[Any]] = {}
        self.handshaking: dict[ClusterClient, None] = {}
        self.eventloops: dict[str, Endpoints] = {}
        self.interval = self.intervals[0]
        self._call: Any = None
        self._updating: Deferred[None] | None = None
        self._again = False
        self._complained = False
        self._retries: int | None = None
        self._random = random.random if randomness is None else randomness
        self.keepaliveInterval = keepaliveInterval
        self.keepaliveTimeout = keepaliveTimeout

    @property
    def clock(self) -> Any:
        """The reactor (or clock) this service uses."""
        if self._reactor is None:
            from twisted.internet import reactor

            return reactor
        return self._reactor

    @property
    def discoveryURL(self) -> str:
        """Where the region serves discovery: ``<maasURL>/rpc/``."""
        return f"{self.maasURL}/rpc/"

    # Life cycle.

    def startService(self) -> None:
        """Start polling, at once."""
        super().startService()
        self.interval = self.intervals[0]
        self._schedule(0)

    def stopService(self) -> Deferred[None]:
        """Stop polling and drop every connection.

        :return: a Deferred that fires once all connections are closed.
        """
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        waits = [proto.onConnectionLost for proto in self.handshaking]
        for pending in list(self.connecting.values()):
            pending.cancel()
        for conn in list(self.connections.values()):
            waits.append(conn.onConnectionLost)
            conn.disconnect()
        if self._updating is not None:
            waits.append(self._updating)
        return defer.DeferredList(waits).addCallback(lambda _: None)

    # Clients.

    def getClient(self) -> Client:
        """Return a client for a random connected region event-loop.

        :return: a :class:`~provisioningserver.rpc.common.Client`.
        :raises NoConnectionsAvailable: when no event-loop is connected.
        """
        conns = list(self.connections.values())
        if not conns:
            raise NoConnectionsAvailable(
                "this cluster is not connected to any region event-loop"
            )
        return Client(random.choice(conns))

    def getAllClients(self) -> list[Client]:
        """Return a client for every connected region event-loop.

        :return: a list of :class:`~provisioningserver.rpc.common.Client`.
        """
        return [Client(conn) for conn in self.connections.values()]

    # Polling.

    def _schedule(self, delay: float) -> None:
        if not self.running:
            return
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = self.clock.callLater(delay, self._poll)

    def _poll(self) -> None:
        self._call = None
        if self._updating is not None:
            self._again = True
            return
        self._updating = Deferred.fromCoroutine(self._update())
        self._updating.addErrback(
            lambda failure: log.failure("Updating connections failed.", failure)
        )
        self._updating.addBoth(self._updated)

    def _updated(self, _: Any) -> None:
        self._updating = None
        if self._again:
            self._again = False
            self._schedule(0)
        else:
            self._schedule(self._nextDelay())

    def _nextDelay(self) -> float:
        """How long until the next poll.

        In steady state, the interval for the current state, give or take
        10%. After a lost connection, until every advertised event-loop is
        connected again: 0.5 s, 1 s, 2 s, ... up to that interval, each
        between half and one and a half times that, so that clusters that lost
        the same region at the same moment do not all come back together.
        """
        spread = self._random()
        if self._retries is None or self.interval == self.intervals[2]:
            self._retries = None
            return self.interval * (0.9 + 0.2 * spread)
        self._retries += 1
        backoff = min(self.interval, 0.5 * 2 ** (self._retries - 1))
        return backoff * (0.5 + spread)

    async def _update(self) -> None:
        try:
            body = await self._fetch(self.discoveryURL)
            eventloops = parseDiscovery(body)
        except Exception as error:  # noqa: BLE001 - any failure means "try again"
            if not self._complained:
                log.warn(
                    "Region at {url} did not answer usefully ({error}); will "
                    "keep trying.",
                    url=self.discoveryURL,
                    error=error,
                )
                self._complained = True
            if self.eventloops:
                # Use the last event-loops the region advertised: they may
                # well still be there even when MAAS_URL does not answer.
                await self._reconcile(self.eventloops, dropVanished=False)
            self._setInterval()
            return
        if self._complained:
            log.info("Region at {url} answers again.", url=self.discoveryURL)
            self._complained = False
        if eventloops is None:
            # The region does not advertise yet: ask again soon.
            self._setInterval()
            return
        self.eventloops = eventloops
        await self._reconcile(eventloops)
        self._setInterval()

    def _setInterval(self) -> None:
        wanted = set(self.eventloops)
        connected = set(self.connections) & wanted
        if not self.connections or not self.eventloops:
            self.interval = self.intervals[0]
        elif connected != wanted:
            self.interval = self.intervals[1]
        else:
            self.interval = self.intervals[2]

    async def _reconcile(
        self, eventloops: dict[str, Endpoints], dropVanished: bool = True
    ) -> None:
        # Drop connections to event-loops no longer advertised.
        vanished = set(self.connections) - set(eventloops) if dropVanished else ()
        for name in vanished:
            conn = self.connections.pop(name)
            log.info(
                "Region event-loop {name} is no longer advertised; disconnecting.",
                name=name,
            )
            conn.disconnect()
        attempts = [
            self._connectTo(name, endpoints)
            for name, endpoints in eventloops.items()
            if name not in self.connections and name not in self.connecting
        ]
        if attempts:
            await defer.DeferredList(attempts)

    def _connectTo(self, name: str, endpoints: Endpoints) -> Deferred[Any]:
        d = Deferred.fromCoroutine(self._connectToAny(name, endpoints))
        self.connecting[name] = d

        def done(result: Any) -> Any:
            self.connecting.pop(name, None)
            if isinstance(result, Failure):
                if not result.check(defer.CancelledError):
                    log.warn(
                        "Could not connect to region event-loop {name}: {error}",
                        name=name,
                        error=result.getErrorMessage(),
                    )
                return None
            return result

        return d.addBoth(done)

    async def _connectToAny(self, name: str, endpoints: Endpoints) -> Any:
        errors = []
        for host, port in endpoints:
            factory = _ClientFactory(self, name, (host, port))
            try:
                proto = await self._connect(host, port, factory)
            except defer.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - try the next address
                errors.append(f"{host}:{port}: {error}")
                continue
            self.handshaking[proto] = None
            try:
                await proto.ready.get()
                return proto
            except defer.CancelledError:
                proto.abort()  # Stopped mid-handshake: leave nothing open.
                raise
            finally:
                self.handshaking.pop(proto, None)
        raise ConnectionError("; ".join(errors) or "no endpoints advertised")

    def _connectTCP(self, host: str, port: int, factory: Factory) -> Deferred[Any]:
        endpoint = HostnameEndpoint(self.clock, host, port, self.connectTimeout)
        return endpoint.connect(factory)

    def _fetchWithTreq(self, url: str) -> Deferred[bytes]:
        import treq

        async def fetch() -> bytes:
            response = await treq.get(
                url, timeout=self.connectTimeout, persistent=False
            )
            body = await treq.content(response)
            if response.code != 200:
                raise DiscoveryError(f"HTTP {response.code} from {url}")
            return body

        return Deferred.fromCoroutine(fetch())

    # Rotation.

    def _addConnection(self, name: str, conn: ClusterClient) -> None:
        previous = self.connections.get(name)
        if previous is not None and previous is not conn:
            previous.disconnect()
        self.connections[name] = conn
        self._setInterval()

    def _removeConnection(self, name: str, conn: ClusterClient) -> None:
        if self.connections.get(name) is conn:
            del self.connections[name]
            log.info("Lost connection to region event-loop {name}.", name=name)
            self._setInterval()
            # Look for it (or its replacement) again at once, then back off.
            self._retries = 0
            self._schedule(0)
