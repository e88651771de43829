"""The region's discovery document: make, sign, fetch, verify and read it.

Each region event-loop answers ``GET <MAAS_URL>/rpc/`` with::

    {"eventloops": {"<name>": [["<address>", <port>], ...], ...}, "mac": "<hex>"}

or ``{"eventloops": null, "mac": "<hex>"}`` while it does not advertise
yet ("ask again later"). ``mac`` authenticates the document under the shared
secret (:func:`signEventloops`), so that whoever answers a cluster's plain
HTTP request cannot steer it to event-loops of their choosing; MAAS peers
ignore the extra key. A cluster ignores a document whose MAC is missing or
wrong (:class:`UnverifiedDiscovery`); an unsigned document, which is what a
MAAS region serves, is accepted only when legacy peers are allowed.

Everything about a document is bounded before it costs anything
(:class:`DiscoveryLimits`): the fetch has one deadline, body included, and
a maximum body size; a document lists at most so many event-loops and so
many addresses for each (the rest are dropped, and :class:`Discovery` says
how many).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from provisioningserver import settings
from provisioningserver.utils.twisted import resolveReactor

__all__ = [
    "MAC_CONTEXT",
    "Discovery",
    "DiscoveryError",
    "DiscoveryFetcher",
    "DiscoveryLimits",
    "Endpoints",
    "UnverifiedDiscovery",
    "canonicalEventloops",
    "clientEndpoint",
    "makeDiscoveryDocument",
    "parseDiscovery",
    "readDiscovery",
    "signEventloops",
]

#: An event-loop's advertised endpoints: ``[(address, port), ...]``.
Endpoints = list[tuple[str, int]]

#: What the discovery MAC is computed over, before the canonical
#: event-loops: it keeps a discovery MAC from ever being valid as anything
#: else computed with the same secret.
MAC_CONTEXT = b"maas-rpc discovery v1\0"

#: The longest host name or address kept from a document (DNS's limit); a
#: longer one is dropped rather than handed to the resolver.
MAX_HOST_LENGTH = 253


class DiscoveryError(Exception):
    """The region's discovery answer was unusable (HTTP error, bad JSON, too
    large)."""


class UnverifiedDiscovery(DiscoveryError):
    """The discovery document's MAC is missing or does not verify."""


@dataclass(frozen=True)
class DiscoveryLimits:
    """Bounds on a cluster's discovery of the region.

    :ivar timeout: seconds one fetch of the document may take, from
        connecting to the last byte of the body (``MAAS_RPC_DISCOVERY_TIMEOUT``,
        default 20). Bytes arriving do not extend it. When it trips the
        fetch is abandoned, logged, and the cluster keeps the last event-loops
        it knew.
    :ivar maxBytes: the largest body accepted (``MAAS_RPC_DISCOVERY_MAX_BYTES``,
        default 1 MiB); a larger one is abandoned as soon as it is known to be
        larger (by its ``Content-Length``, or by counting).
    :ivar maxEventloops: event-loops used from one document
        (``MAAS_RPC_DISCOVERY_MAX_EVENTLOOPS``, default 256); the rest are
        dropped, and one log line says so.
    :ivar maxAddresses: addresses used for one event-loop
        (``MAAS_RPC_DISCOVERY_MAX_ADDRESSES``, default 32); the rest are
        dropped, and one log line says so.
    :ivar connectConcurrency: connection attempts to event-loops in progress
        at once (``MAAS_RPC_CONNECT_CONCURRENCY``, default 16); more wait
        their turn.
    """

    timeout: float = 20.0
    maxBytes: int = 1 << 20
    maxEventloops: int = 256
    maxAddresses: int = 32
    connectConcurrency: int = 16

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DiscoveryLimits:
        """Read the limits from ``MAAS_RPC_DISCOVERY_*`` and
        ``MAAS_RPC_CONNECT_CONCURRENCY``.

        :param environ: the environment; ``os.environ`` when ``None``.
        :return: the limits; defaults for unset variables.
        :raises provisioningserver.config.ConfigError: when a value is
            malformed or out of range.
        """
        env = os.environ if environ is None else environ
        return settings.readInto(
            cls,
            env,
            {
                "timeout": "MAAS_RPC_DISCOVERY_TIMEOUT",
                "maxBytes": "MAAS_RPC_DISCOVERY_MAX_BYTES",
                "maxEventloops": "MAAS_RPC_DISCOVERY_MAX_EVENTLOOPS",
                "maxAddresses": "MAAS_RPC_DISCOVERY_MAX_ADDRESSES",
                "connectConcurrency": "MAAS_RPC_CONNECT_CONCURRENCY",
            },
        )


# Making and signing documents (the region's side).


def canonicalEventloops(eventloops: Any) -> bytes:
    """The bytes the discovery MAC covers.

    :param eventloops: the document's ``eventloops`` value, as JSON would
        decode it (a mapping of name to lists of ``[address, port]``, or
        ``None``).
    :return: ``json.dumps(eventloops, sort_keys=True, separators=(",", ":"))``
        encoded as UTF-8 (``b"null"`` for ``None``).
    """
    return json.dumps(eventloops, sort_keys=True, separators=(",", ":")).encode("utf-8")


def signEventloops(secret: bytes, eventloops: Any) -> str:
    """Compute a discovery document's MAC.

    :param secret: the raw shared secret.
    :param eventloops: the document's ``eventloops`` value (see
        :func:`canonicalEventloops`).
    :return: ``HMAC-SHA256(secret, MAC_CONTEXT ‖ canonical)``, as lowercase
        hex.
    """
    message = MAC_CONTEXT + canonicalEventloops(eventloops)
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def makeDiscoveryDocument(
    secret: bytes | None, eventloops: Mapping[str, Endpoints] | None
) -> bytes:
    """Build the region's answer to ``GET /rpc/``.

    :param secret: the raw shared secret; ``None`` to leave the document
        unsigned (as a MAAS region does).
    :param eventloops: name → ``[(address, port), ...]``, or ``None`` while
        not advertising yet.
    :return: the JSON document, UTF-8 encoded.
    """
    value: Any = None
    if eventloops is not None:
        value = {
            str(name): [[str(address), int(port)] for address, port in endpoints]
            for name, endpoints in eventloops.items()
        }
    document: dict[str, Any] = {"eventloops": value}
    if secret is not None:
        document["mac"] = signEventloops(secret, value)
    return json.dumps(document).encode("utf-8")


# Reading documents (the cluster's side).


@dataclass(frozen=True)
class Discovery:
    """A discovery document, read and checked.

    :ivar eventloops: name → endpoints (within the limits), or ``None`` when
        the region does not advertise yet.
    :ivar signed: whether its MAC verified (``False``: it was unsigned, and
        unsigned documents were allowed).
    :ivar totalEventloops: how many event-loops it listed.
    :ivar droppedEventloops: how many of them were dropped (over the limit).
    :ivar droppedAddresses: how many addresses of the event-loops kept were
        dropped (over the limit, or not a usable host).
    """

    eventloops: dict[str, Endpoints] | None
    signed: bool = False
    totalEventloops: int = 0
    droppedEventloops: int = 0
    droppedAddresses: int = 0


def _decode(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise DiscoveryError(f"malformed discovery answer: {error}") from None
    if not isinstance(document, dict) or "eventloops" not in document:
        raise DiscoveryError("malformed discovery answer: no eventloops")
    return document


def _verify(
    document: dict[str, Any], secret: bytes | None, allowUnsigned: bool
) -> bool:
    mac = document.get("mac")
    if mac is None:
        if allowUnsigned:
            return False
        raise UnverifiedDiscovery(
            "the document is not signed (a MAAS region's is not: set "
            "MAAS_RPC_ALLOW_LEGACY_PEERS=1 to accept it)"
        )
    if secret is None:
        return False
    if not isinstance(mac, str) or len(mac) != 64:
        raise UnverifiedDiscovery("the document's MAC is malformed")
    expected = signEventloops(secret, document["eventloops"])
    if not hmac.compare_digest(expected, mac.lower()):
        raise UnverifiedDiscovery(
            "the document's MAC does not verify: it was not made with this "
            "cluster's shared secret"
        )
    return True


def _endpoint(entry: Any) -> tuple[str, int] | None:
    """One ``[address, port]`` entry, or ``None`` when it is unusable.

    :raises ValueError: when it is malformed.
    """
    if not isinstance(entry, list) or len(entry) != 2:
        raise ValueError(entry)
    host, port = entry
    if not isinstance(host, str) or isinstance(port, bool):
        raise ValueError(entry)
    port = int(port)
    if not 0 < port < 65536:
        raise ValueError(entry)
    if not host or len(host) > MAX_HOST_LENGTH:
        return None
    return host, port


def readDiscovery(
    body: bytes,
    secret: bytes | None,
    *,
    allowUnsigned: bool = False,
    limits: DiscoveryLimits | None = None,
) -> Discovery:
    """Parse, authenticate and bound a discovery document.

    The MAC is checked on the document as received, before anything is
    dropped; then only the first ``maxEventloops`` event-loops, and the
    first ``maxAddresses`` addresses of each, are kept.

    :param body: the response body.
    :param secret: the raw shared secret the MAC must verify under; ``None``
        to skip the check (the document is then reported unsigned).
    :param allowUnsigned: whether a document without a MAC is acceptable
        (legacy peers allowed); a wrong MAC is never acceptable.
    :param limits: the :class:`DiscoveryLimits`; the defaults when ``None``.
    :return: the :class:`Discovery`.
    :raises UnverifiedDiscovery: when the MAC is missing (and unsigned
        documents are not allowed), malformed or wrong.
    :raises DiscoveryError: when the body is not the expected JSON.
    """
    limits = limits if limits is not None else DiscoveryLimits()
    document = _decode(body)
    signed = _verify(document, secret, allowUnsigned)
    eventloops = document["eventloops"]
    if eventloops is None:
        return Discovery(None, signed=signed)
    if not isinstance(eventloops, dict):
        raise DiscoveryError("malformed discovery answer: eventloops is not a map")
    result: dict[str, Endpoints] = {}
    droppedAddresses = 0
    for name, entries in eventloops.items():
        if len(result) >= limits.maxEventloops:
            break
        if not isinstance(entries, list):
            raise DiscoveryError("malformed discovery answer: endpoints not a list")
        endpoints: Endpoints = []
        for entry in entries[: limits.maxAddresses]:
            try:
                endpoint = _endpoint(entry)
            except (TypeError, ValueError):
                raise DiscoveryError(
                    "malformed discovery answer: bad endpoints"
                ) from None
            if endpoint is None:
                droppedAddresses += 1
            else:
                endpoints.append(endpoint)
        droppedAddresses += max(0, len(entries) - limits.maxAddresses)
        result[name] = endpoints
    return Discovery(
        result,
        signed=signed,
        totalEventloops=len(eventloops),
        droppedEventloops=len(eventloops) - len(result),
        droppedAddresses=droppedAddresses,
    )


def parseDiscovery(body: bytes) -> dict[str, Endpoints] | None:
    """Parse the region's ``/rpc/`` answer, without checking its MAC.

    Kept for code written against earlier versions; a cluster uses
    :func:`readDiscovery`, which authenticates the document.

    :param body: the response body.
    :return: event-loop name → endpoints (within the default
        :class:`DiscoveryLimits`), or ``None`` when the region says it is
        not advertising yet.
    :raises DiscoveryError: when the body is not the expected JSON.
    """
    return readDiscovery(body, None, allowUnsigned=True).eventloops


# Fetching documents.


class _BoundedBody(Protocol):
    """Collects a response body up to ``limit`` bytes; past that, stops the
    transfer (closing the connection) and fails."""

    transport: Any  # The response's IPushProducer-providing transport.

    def __init__(self, finished: Deferred[bytes], limit: int) -> None:
        self.finished = finished
        self.limit = limit
        self.size = 0
        self.chunks: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.chunks = []
            self.transport.stopProducing()
            self.finished.errback(
                DiscoveryError(
                    f"the answer is larger than {self.limit} bytes "
                    "(MAAS_RPC_DISCOVERY_MAX_BYTES)"
                )
            )
            return
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.finished.called:
            return
        if reason is not None and reason.check(ResponseDone):
            body, self.chunks = b"".join(self.chunks), []
            self.finished.callback(body)
        else:
            self.chunks = []
            self.finished.errback(
                DiscoveryError(
                    "the answer was cut short: "
                    f"{reason.getErrorMessage() if reason else 'connection lost'}"
                )
            )

    def abort(self) -> None:
        """Stop the transfer (the fetch was cancelled)."""
        self.chunks = []
        if self.transport is not None:
            self.transport.stopProducing()


class _Discard(Protocol):
    """Takes a response body it does not want: stops the transfer at once."""

    transport: Any

    def connectionMade(self) -> None:
        self.transport.stopProducing()


def clientEndpoint(reactor: Any, host: str, port: int, timeout: float) -> Any:
    """A TCP client endpoint for ``host``: a plain IPv4 or IPv6 endpoint for
    an address, :class:`~twisted.internet.endpoints.HostnameEndpoint` (which
    resolves names) otherwise.

    Discovery documents list addresses. ``HostnameEndpoint`` would resolve
    each one anyway and spends about 0.3 s on every refused attempt (its
    happy-eyeballs timer), which a document of many addresses multiplies.

    :param reactor: the reactor to connect with.
    :param host: an address or a host name.
    :param port: the port.
    :param timeout: seconds a connection attempt may take.
    :return: the endpoint.
    """
    from twisted.internet.abstract import isIPAddress, isIPv6Address
    from twisted.internet.endpoints import (
        HostnameEndpoint,
        TCP4ClientEndpoint,
        TCP6ClientEndpoint,
    )

    if isIPAddress(host):
        return TCP4ClientEndpoint(reactor, host, port, timeout)
    if isIPv6Address(host):
        return TCP6ClientEndpoint(reactor, host, port, timeout)
    return HostnameEndpoint(reactor, host, port, timeout)


class _QuietEndpoints:
    """An agent endpoint factory (``IAgentEndpointFactory``) that connects
    with :class:`~twisted.internet.endpoints.HostnameEndpoint` (wrapped in
    TLS for ``https``) and keeps the HTTP client factories from logging
    "Starting factory" on every fetch."""

    def __init__(self, reactor: Any, connectTimeout: float) -> None:
        self.reactor = reactor
        self.connectTimeout = connectTimeout

    def endpointForURI(self, uri: Any) -> Any:
        from twisted.internet.endpoints import wrapClientTLS
        from twisted.web.client import BrowserLikePolicyForHTTPS

        host = uri.host.decode("ascii") if isinstance(uri.host, bytes) else uri.host
        endpoint = clientEndpoint(self.reactor, host, uri.port, self.connectTimeout)
        if uri.scheme == b"https":
            creator = BrowserLikePolicyForHTTPS().creatorForNetloc(uri.host, uri.port)
            endpoint = wrapClientTLS(creator, endpoint)
        return _Quiet(endpoint)


class _Quiet:
    """An endpoint whose factories do not log their start and stop."""

    def __init__(self, endpoint: Any) -> None:
        self.endpoint = endpoint

    def connect(self, factory: Any) -> Deferred[Any]:
        factory.noisy = False
        return self.endpoint.connect(factory)


class DiscoveryFetcher:
    """Fetches discovery documents over HTTP, bounded.

    A fetch is one ``GET`` on a fresh connection (nothing is kept between
    fetches). Its body is read up to ``maxBytes``: a ``Content-Length``
    over that fails the fetch at once, and a body that grows past it is cut
    off. Cancelling the Deferred a fetch returns closes its connection at
    once, whatever stage it is in: that is how the caller's deadline
    (the ``timeout`` of :class:`DiscoveryLimits`, applied by
    :class:`~provisioningserver.rpc.clusterservice.ClusterClientService`)
    and a stopping service abandon it.

    :param reactor: the reactor to connect with; the global reactor when
        ``None`` (resolved at the first fetch).
    :param connectTimeout: seconds a TCP connection attempt may take.
    :param maxBytes: the largest body accepted.
    :param agent: an :class:`~twisted.web.iweb.IAgent` to use instead of the
        default :class:`~twisted.web.client.Agent` (tests).
    """

    def __init__(
        self,
        reactor: Any = None,
        *,
        connectTimeout: float = 10.0,
        maxBytes: int = DiscoveryLimits.maxBytes,
        agent: Any = None,
    ) -> None:
        self._reactor = reactor
        self.connectTimeout = connectTimeout
        self.maxBytes = maxBytes
        self._agent = agent

    @property
    def agent(self) -> Any:
        """The HTTP agent, made on first use."""
        if self._agent is None:
            from twisted.web.client import Agent, HTTPConnectionPool

            reactor = resolveReactor(self._reactor)
            self._agent = Agent.usingEndpointFactory(
                reactor,
                _QuietEndpoints(reactor, self.connectTimeout),
                pool=HTTPConnectionPool(reactor, persistent=False),
            )
        return self._agent

    def __call__(self, url: str) -> Deferred[bytes]:
        """Fetch ``url``.

        :param url: the document's URL.
        :return: a Deferred of the body; it fails with
            :class:`DiscoveryError` for an answer other than ``200 OK`` or a
            body over ``maxBytes``, or with the connection's error.
        """
        body: _BoundedBody | None = None
        request: Deferred[Any] | None = None
        cancelled = False

        def cancel(_: Deferred[bytes]) -> None:
            # The Deferred then fails with CancelledError, whatever the
            # connection's own error.
            nonlocal cancelled
            cancelled = True
            if body is not None:
                body.abort()
            elif request is not None:
                request.cancel()

        finished: Deferred[bytes] = Deferred(cancel)

        def received(response: Any) -> None:
            nonlocal body
            if finished.called:  # Cancelled meanwhile.
                response.deliverBody(_Discard())
                return
            if response.code != 200:
                response.deliverBody(_Discard())
                finished.errback(DiscoveryError(f"HTTP {response.code}"))
                return
            length = response.length
            if isinstance(length, int) and length > self.maxBytes:
                response.deliverBody(_Discard())
                finished.errback(
                    DiscoveryError(
                        f"the answer is {length} bytes, more than {self.maxBytes} "
                        "(MAAS_RPC_DISCOVERY_MAX_BYTES)"
                    )
                )
                return
            body = _BoundedBody(finished, self.maxBytes)
            response.deliverBody(body)

        def failed(failure: Failure) -> None:
            if not finished.called and not cancelled:
                finished.errback(failure)

        try:
            target = url.encode("ascii")
        except UnicodeEncodeError:
            return fail(DiscoveryError(f"not an ASCII URL: {url!r}"))
        request = self.agent.request(b"GET", target)
        request.addCallbacks(received, failed)
        return finished
