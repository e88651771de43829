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

import random
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredSemaphore
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
from provisioningserver.rpc.discovery import (
    DiscoveryError,
    DiscoveryFetcher,
    DiscoveryLimits,
    Endpoints,
    UnverifiedDiscovery,
    clientEndpoint,
    parseDiscovery,
    readDiscovery,
)
from provisioningserver.rpc.exceptions import (
    AuthenticationFailed,
    LegacyPeerRefused,
    NoConnectionsAvailable,
    RegistrationFailed,
)
from provisioningserver.rpc.handshake import (
    CLUSTER,
    HandshakeDeadline,
    challengePeer,
)
from provisioningserver.rpc.limits import DEFAULT_LIMITS, Limits
from provisioningserver.rpc.region import Ping, Register
from provisioningserver.rpc.tls import TLSConfig
from provisioningserver.twisted.protocols import amp
from provisioningserver.utils.ratelimit import LogLimiter
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
        self.logLimiter = service.logLimiter

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
        return self.answerChallenge(self.service.secret, message, CLUSTER)

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
            self.peerWarn(
                "keepalive",
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
            self.peerError(
                "handshake",
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
    it is not connected to, and drops connections to event-loops no longer
    advertised. It polls every ``intervals[0]`` seconds while it has no
    connection (and when just started), ``intervals[1]`` while some
    advertised event-loops are not connected, ``intervals[2]`` when all are
    (each give or take 10%), and at once after a connection is lost, then
    with exponential backoff and jitter (0.5 s, 1 s, 2 s, ... up to the
    interval) until reconnected.

    The discovery document must carry a MAC that verifies under the shared
    secret (see :mod:`provisioningserver.rpc.discovery`); an unsigned one is
    accepted only when ``allowLegacyPeers`` is true, one with a wrong MAC
    never. A fetch that fails, is too large, takes longer than the
    discovery deadline, or returns a document that does not verify means
    "try again": it is logged (at most once a minute per problem, and once
    more when the region answers well again), and meanwhile the service
    keeps connecting to the last event-loops it knew.

    A document lists at most ``discoveryLimits.maxEventloops`` event-loops
    and ``maxAddresses`` addresses for each that are used (the rest are
    dropped, in one log line). An event-loop's addresses are tried in
    order, a new attempt starting when one fails or every
    :attr:`attemptDelay` seconds, with at most ``addressConcurrency``
    attempts for one event-loop at a time and at most
    ``discoveryLimits.connectConcurrency`` in all; the first to connect
    wins and the others are cancelled.

    Each region connection is pinged every ``keepaliveInterval`` seconds; one
    that does not answer within ``keepaliveTimeout`` is dropped (and so
    replaced).

    Stopping the service abandons a fetch or connection attempt in
    progress at once: :meth:`stopService` never waits for the network
    beyond closing the connections it has.

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
        failing with :class:`DiscoveryError` on an HTTP error; cancelling
        the Deferred must abandon the fetch. A
        :class:`~provisioningserver.rpc.discovery.DiscoveryFetcher` on
        ``reactor`` when ``None``. The discovery deadline applies to it
        either way.
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
        (``MAAS_RPC_ALLOW_LEGACY_PEERS``), and unsigned discovery documents;
        refused when ``False``.
    :param discoveryLimits: the
        :class:`~provisioningserver.rpc.discovery.DiscoveryLimits` (deadline,
        body size, event-loops and addresses per document, connection
        attempts at once); the defaults when ``None``.
    :param addressConcurrency: connection attempts to one event-loop's
        addresses at a time.

    :ivar connections: event-loop name → its ready :class:`ClusterClient`.
    :ivar handshaking: connections still in the handshake.
    :ivar eventloops: the last good event-loops the region advertised.
    """

    name = "rpc"  # type: ignore[assignment]

    #: Seconds after starting a connection attempt to one of an event-loop's
    #: addresses before also trying its next address (as Twisted's
    #: ``HostnameEndpoint`` does).
    attemptDelay = 0.3

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
        discoveryLimits: DiscoveryLimits | None = None,
        addressConcurrency: int = 4,
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
        self.discoveryLimits = (
            discoveryLimits if discoveryLimits is not None else DiscoveryLimits()
        )
        self.addressConcurrency = max(1, addressConcurrency)
        self._reactor = reactor
        self._fetch = fetch or DiscoveryFetcher(
            reactor,
            connectTimeout=connectTimeout,
            maxBytes=self.discoveryLimits.maxBytes,
        )
        self._connect = connect or self._connectTCP
        self._attempts = DeferredSemaphore(self.discoveryLimits.connectConcurrency)
        self._logs = LogLimiter(log, clock=reactor)
        #: Warnings about what region peers do: ten a minute per kind and
        #: address, then a count (the connections' own).
        self.logLimiter = LogLimiter(log, clock=reactor, burst=10)
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
        """Stop polling, abandon a poll in progress, and drop every
        connection.

        :return: a Deferred that fires once all connections are closed.
        """
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._updating is not None:
            # Abandons the fetch, or the connection attempts, in progress.
            self._updating.cancel()
        waits = [proto.onConnectionLost for proto in self.handshaking]
        for pending in list(self.connecting.values()):
            pending.cancel()
        for conn in list(self.connections.values()):
            waits.append(conn.onConnectionLost)
            conn.disconnect()
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
        self._updating.addErrback(self._updateFailed)
        self._updating.addBoth(self._updated)

    @staticmethod
    def _updateFailed(failure: Failure) -> None:
        if not failure.check(defer.CancelledError):  # Cancelled: stopping.
            log.failure("Updating connections failed.", failure)

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

    def _fetchDocument(self, url: str) -> Deferred[bytes]:
        """Fetch the discovery document, within the discovery deadline.

        :return: a Deferred of the body; on the deadline, the fetch is
            cancelled and this fails with :class:`DiscoveryError`.
        """
        timeout = self.discoveryLimits.timeout
        d = self._fetch(url)
        d.addTimeout(timeout, self.clock)

        def timedOut(failure: Failure) -> Failure:
            if failure.check(defer.TimeoutError):
                raise DiscoveryError(
                    f"no complete answer within {timeout:g} seconds "
                    "(MAAS_RPC_DISCOVERY_TIMEOUT)"
                )
            return failure

        return d.addErrback(timedOut)

    async def _update(self) -> None:
        url = self.discoveryURL
        shown = printable(url, 200)
        try:
            body = await self._fetchDocument(url)
            discovery = readDiscovery(
                body,
                self.secret,
                allowUnsigned=self.allowLegacyPeers,
                limits=self.discoveryLimits,
            )
        except defer.CancelledError:
            raise
        except UnverifiedDiscovery as error:
            if not self.running:
                return  # Stopping: nothing to say, nothing to fall back to.
            self._complained = True
            self._logs.warn(
                ("unverified", url),
                "Ignoring the discovery document from {url}: {error}; using the "
                "last known event-loops.",
                url=shown,
                error=printable(str(error), 200),
            )
            await self._fallBack()
            return
        except Exception as error:  # noqa: BLE001 - any failure means "try again"
            if not self.running:
                return  # Stopping: nothing to say, nothing to fall back to.
            self._complained = True
            self._logs.warn(
                ("unusable", url),
                "Region at {url} did not answer usefully ({error}); will keep trying.",
                url=shown,
                error=printable(str(error) or type(error).__name__, 200),
            )
            await self._fallBack()
            return
        if self._complained:
            log.info("Region at {url} answers again.", url=shown)
            self._complained = False
            self._logs.forget(("unverified", url))
            self._logs.forget(("unusable", url))
        if not discovery.signed:
            self._logs.info(
                ("unsigned", url),
                "Accepted an unsigned discovery document from {url}: legacy "
                "peers are allowed (MAAS_RPC_ALLOW_LEGACY_PEERS=1).",
                url=shown,
            )
        if discovery.droppedEventloops or discovery.droppedAddresses:
            self._logs.warn(
                ("dropped", url),
                "The discovery document from {url} lists {total} event-loops; "
                "dropped {eventloops} event-loops and {addresses} addresses over "
                "the limits (MAAS_RPC_DISCOVERY_MAX_EVENTLOOPS={maxEventloops}, "
                "MAAS_RPC_DISCOVERY_MAX_ADDRESSES={maxAddresses}).",
                url=shown,
                total=discovery.totalEventloops,
                eventloops=discovery.droppedEventloops,
                addresses=discovery.droppedAddresses,
                maxEventloops=self.discoveryLimits.maxEventloops,
                maxAddresses=self.discoveryLimits.maxAddresses,
            )
        if discovery.eventloops is None:
            # The region does not advertise yet: ask again soon.
            self._setInterval()
            return
        self.eventloops = discovery.eventloops
        await self._reconcile(discovery.eventloops)
        self._setInterval()

    async def _fallBack(self) -> None:
        """Keep to the last event-loops the region advertised: they may well
        still be there even when ``MAAS_URL`` does not answer usefully."""
        if self.eventloops:
            await self._reconcile(self.eventloops, dropVanished=False)
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
                name=printable(name),
            )
            conn.disconnect()
        failures: list[tuple[str, str]] = []
        attempts = [
            self._connectTo(name, endpoints, failures)
            for name, endpoints in eventloops.items()
            if name not in self.connections and name not in self.connecting
        ]
        if attempts:
            await defer.DeferredList(attempts)
        if failures:
            name, error = failures[0]
            self._logs.warn(
                "connect",
                "Could not connect to {count} of {total} region event-loops; "
                "{name}: {error}",
                count=len(failures),
                total=len(eventloops),
                name=printable(name),
                error=printable(error, 200),
            )

    def _connectTo(
        self, name: str, endpoints: Endpoints, failures: list[tuple[str, str]]
    ) -> Deferred[Any]:
        d = Deferred.fromCoroutine(self._connectToAny(name, endpoints))
        self.connecting[name] = d

        def done(result: Any) -> Any:
            self.connecting.pop(name, None)
            if isinstance(result, Failure):
                if not result.check(defer.CancelledError):
                    failures.append((name, result.getErrorMessage()))
                return None
            return result

        return d.addBoth(done)

    async def _connectToAny(self, name: str, endpoints: Endpoints) -> Any:
        proto = await self._firstConnected(name, endpoints)
        self.handshaking[proto] = None
        try:
            await proto.ready.get()
            return proto
        except defer.CancelledError:
            proto.abort()  # Stopped mid-handshake: leave nothing open.
            raise
        finally:
            self.handshaking.pop(proto, None)

    def _firstConnected(self, name: str, endpoints: Endpoints) -> Deferred[Any]:
        """Connect to the first of ``endpoints`` that answers.

        Attempts start in order: the next when one fails, or
        :attr:`attemptDelay` seconds after the last one started, with at
        most :attr:`addressConcurrency` in progress (each also holding one of
        the service's ``connectConcurrency`` slots while it connects). The
        first connection made wins; the other attempts are cancelled, and a
        connection made after the winner is closed.

        :return: a Deferred of the connected protocol; it fails with
            :class:`ConnectionError` listing (some of) the errors when every
            address failed. Cancelling it cancels every attempt.
        """
        remaining = iter(endpoints)
        pending: dict[Deferred[Any], tuple[str, int]] = {}
        errors: list[str] = []
        state: dict[str, Any] = {"timer": None, "stopped": False, "failed": 0}

        def stop() -> None:
            state["stopped"] = True
            timer = state["timer"]
            if timer is not None and timer.active():
                timer.cancel()
            for attempt in list(pending):
                attempt.cancel()

        result: Deferred[Any] = Deferred(lambda _: stop())

        def launch() -> None:
            state["timer"] = None
            if state["stopped"]:
                return
            address = next(remaining, None)
            if address is None:
                if not pending:
                    state["stopped"] = True
                    more = state["failed"] - len(errors)
                    summary = "; ".join(errors) or "no endpoints advertised"
                    if more > 0:
                        summary += f"; and {more} more"
                    result.errback(Failure(ConnectionError(summary)))
                return
            host, port = address
            factory = _ClientFactory(self, name, (host, port))
            attempt = self._attempts.run(self._connect, host, port, factory)
            pending[attempt] = address
            attempt.addBoth(finished, attempt)
            if (
                attempt in pending  # Still connecting (it did not end at once).
                and state["timer"] is None
                and len(pending) < self.addressConcurrency
                and not state["stopped"]
            ):
                state["timer"] = self.clock.callLater(self.attemptDelay, launch)

        def finished(outcome: Any, attempt: Deferred[Any]) -> None:
            host, port = pending.pop(attempt)
            if isinstance(outcome, Failure):
                if state["stopped"]:
                    return None
                state["failed"] += 1
                if len(errors) < 3:
                    error = printable(outcome.getErrorMessage(), 200)
                    errors.append(f"{printable(host)}:{port}: {error}")
                timer = state["timer"]
                if timer is not None and timer.active():
                    timer.cancel()
                state["timer"] = None
                launch()
                return None
            if state["stopped"]:
                outcome.abort()  # Another address won, or we were cancelled.
                return None
            stop()
            result.callback(outcome)
            return None

        launch()
        return result

    def _connectTCP(self, host: str, port: int, factory: Factory) -> Deferred[Any]:
        return clientEndpoint(self.clock, host, port, self.connectTimeout).connect(
            factory
        )

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
            log.info(
                "Lost connection to region event-loop {name}.", name=printable(name)
            )
            self._setInterval()
            # Look for it (or its replacement) again at once, then back off.
            self._retries = 0
            self._schedule(0)
