"""The region's discovery endpoint: ``GET /MAAS/rpc/``.

Clusters learn where the region's event-loops listen by asking any of them
for ``<MAAS_URL>/rpc/``. The answer is JSON::

    {"eventloops": {"<hostname>:pid=<pid>": [["<address>", <port>], ...], ...},
     "mac": "<hex>"}

or ``{"eventloops": null, "mac": "<hex>"}`` while this event-loop has not
advertised itself yet, which means "ask again later". ``mac`` authenticates
the document under the shared secret (see
:mod:`provisioningserver.rpc.discovery`). It reveals event-loop names,
addresses and ports, nothing else, and it runs nothing.

The event-loops of one region on one host share the HTTP port: ``maas-rpc
region`` binds and listens on it once and hands the listening socket to each
worker (:class:`WebService` with ``fd``), and the kernel spreads connections
among them. A process of another region cannot join: its bind fails.

The server is built for one small ``GET`` per connection from clients it
does not trust, and bounds what each costs (:class:`HTTPLimits`):

* a connection lives at most ``timeout`` seconds from its first byte to its
  last, however the bytes trickle in (Twisted's idle timer restarts on every
  byte; this deadline does not); it serves one request and closes;
* a request may have at most ``maxHeaders`` headers, and its request line and
  headers at most ``maxHeaderBytes`` bytes (``400 Bad Request`` past that);
* a request with a body (a ``Content-Length`` other than 0, or a
  ``Transfer-Encoding``) is answered ``413`` and the connection closed as
  soon as its headers are read: the body is never read, whatever its
  declared size; a method other than ``GET`` or ``HEAD`` is answered
  ``405`` (it has no body to read);
* at most ``maxConnections`` connections at once, and ``maxPerAddress`` from
  one address: a connection over either is closed as soon as it is
  accepted.

Refusals are logged at most once a minute per kind of problem.

Twisted web's seams used: :class:`~twisted.web.server.Site` with its
``protocol`` set to an :class:`~twisted.web.http.HTTPChannel` subclass (so
HTTP/1.1 only), and that channel's public ``maxHeaders``,
``totalHeadersSize``, ``MAX_LENGTH``, ``length``, ``callLater``,
``dataReceived``, ``allHeadersReceived``, ``checkPersistence`` and
``loseConnection``. No private name of Twisted's is used.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from provisioningserver import settings
from provisioningserver.rpc.discovery import makeDiscoveryDocument
from provisioningserver.utils.ratelimit import LogLimiter
from provisioningserver.utils.text import printable
from provisioningserver.utils.twisted import ListeningService

__all__ = [
    "DiscoveryChannel",
    "DiscoveryResource",
    "DiscoverySite",
    "HTTPLimits",
    "WebService",
    "makeSite",
]

log = Logger()


@dataclass(frozen=True)
class HTTPLimits:
    """Bounds on the region's discovery web server.

    :ivar timeout: seconds an HTTP connection may live, from accept to close
        (``MAAS_RPC_HTTP_TIMEOUT``, default 10): the request must arrive and
        be answered within it. Bytes arriving do not extend it. When it trips,
        the connection is aborted.
    :ivar maxHeaders: headers per request (``MAAS_RPC_HTTP_MAX_HEADERS``,
        default 32); more get ``400 Bad Request`` and the connection closed.
    :ivar maxHeaderBytes: bytes of request line and headers
        (``MAAS_RPC_HTTP_MAX_HEADER_BYTES``, default 8192); more get ``400 Bad
        Request`` and the connection closed.
    :ivar maxConnections: HTTP connections at once
        (``MAAS_RPC_HTTP_MAX_CONNECTIONS``, default 256); a connection over it
        is closed as soon as it is accepted.
    :ivar maxPerAddress: HTTP connections at once from one address
        (``MAAS_RPC_HTTP_MAX_PER_ADDRESS``, default 64); a connection over it
        is closed as soon as it is accepted.
    """

    timeout: float = 10.0
    maxHeaders: int = 32
    maxHeaderBytes: int = 8192
    maxConnections: int = 256
    maxPerAddress: int = 64

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> HTTPLimits:
        """Read the limits from ``MAAS_RPC_HTTP_*``.

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
                "timeout": "MAAS_RPC_HTTP_TIMEOUT",
                "maxHeaders": "MAAS_RPC_HTTP_MAX_HEADERS",
                "maxHeaderBytes": "MAAS_RPC_HTTP_MAX_HEADER_BYTES",
                "maxConnections": "MAAS_RPC_HTTP_MAX_CONNECTIONS",
                "maxPerAddress": "MAAS_RPC_HTTP_MAX_PER_ADDRESS",
            },
        )


class DiscoveryResource(Resource):
    """Answers ``GET /MAAS/rpc/`` (with or without the trailing slash).

    :param advertising: the
        :class:`~maasserver.rpc.regionservice.RegionAdvertisingService` whose
        store to read, whose state says whether this event-loop advertises
        yet, and whose ``rpc.secret`` signs the document.
    """

    #: Seconds an answer is reused: a region with a thousand clusters
    #: polling every 30 s is asked some 33 times a second, and each answer
    #: otherwise costs a store read and an HMAC.
    cacheSeconds = 1.0

    def __init__(self, advertising: Any) -> None:
        super().__init__()
        self.advertising = advertising
        self._cached: tuple[float, bytes] | None = None
        self._reading: list[Deferred[bytes]] | None = None

    def getChild(self, path: bytes, request: Request) -> IResource:
        """Serve ``/rpc/`` as ``/rpc``; nothing lies below.

        :param path: the next path segment.
        :param request: the request.
        :return: this resource for an empty segment, else a 404 resource.
        """
        if path == b"":
            return self
        return notFound()

    def render(self, request: Request) -> Any:
        """Answer ``GET`` and ``HEAD``; anything else is ``405``.

        :param request: the request.
        :return: the answer, or ``NOT_DONE_YET``.
        """
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"Allow", b"GET, HEAD")
            request.setHeader(b"Content-Length", b"0")
            return b""
        return super().render(request)

    def render_GET(self, request: Request) -> Any:
        """Answer with the advertised event-loops, as signed JSON.

        :param request: the request.
        :return: the document, or ``NOT_DONE_YET`` when it is written once
            the store replies.
        """
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        if not self.advertising.advertising.isSet:
            return self._encode(None)
        now = self._now()
        cached = self._cached
        if cached is not None and 0 <= now - cached[0] < self.cacheSeconds:
            request.setHeader(b"Content-Length", b"%d" % len(cached[1]))
            return cached[1]
        gone: list[Failure] = []
        request.notifyFinish().addErrback(gone.append)
        self._document().addCallbacks(
            lambda body: self._finish(request, gone, body),
            lambda failure: self._failed(request, gone, failure),
        )
        return NOT_DONE_YET

    def _now(self) -> float:
        return float(self.advertising.rpc.clock.seconds())

    def _document(self) -> Deferred[bytes]:
        """Read the store and sign its answer: once for all the requests
        that arrive meanwhile."""
        waiting: Deferred[bytes] = Deferred()
        if self._reading is not None:
            self._reading.append(waiting)
            return waiting
        self._reading = [waiting]
        started = self._now()

        def done(result: Any) -> None:
            readers, self._reading = self._reading or [], None
            if not isinstance(result, Failure):
                result = self._encode(result)
                self._cached = (started, result)
            for reader in readers:
                if isinstance(result, Failure):
                    reader.errback(result)
                else:
                    reader.callback(result)

        defer.maybeDeferred(self.advertising.store.eventloops).addBoth(done)
        return waiting

    def _encode(self, eventloops: Mapping[str, Any] | None) -> bytes:
        return makeDiscoveryDocument(self.advertising.rpc.secret, eventloops)

    def _finish(self, request: Request, gone: list[Failure], body: bytes) -> None:
        if gone or request.finished:
            return
        request.setHeader(b"Content-Length", b"%d" % len(body))
        request.write(body)
        request.finish()

    def _failed(self, request: Request, gone: list[Failure], failure: Failure) -> None:
        log.failure("Could not read the advertised event-loops.", failure)
        if gone or request.finished:
            return
        request.setResponseCode(503)
        body = self._encode(None)
        request.setHeader(b"Content-Length", b"%d" % len(body))
        request.write(body)
        request.finish()


class _Directory(Resource):
    """A resource with children only; anything else is a plain 404."""

    def getChild(self, path: bytes, request: Request) -> IResource:
        return notFound()


#: What a request with a body is answered, before its body is read.
_TOO_LARGE = (
    b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
)


class DiscoveryChannel(HTTPChannel):
    """One HTTP connection to the discovery site: one request, bounded.

    Built by :class:`DiscoverySite`, which sets its limits.

    :ivar peerHost: the client's address, as counted by the site.
    """

    transport: Any
    factory: Any
    peerHost: str | None = None
    _deadline: Any = None
    _refused = False

    def connectionMade(self) -> None:
        """Start the connection's fixed deadline."""
        super().connectionMade()
        site = self.factory
        self._deadline = self.callLater(site.limits.timeout, self._expired)

    def _expired(self) -> None:
        self._deadline = None
        self.factory._refused(
            "timeout",
            "Dropped an HTTP connection from {peer}: not done within {timeout:g} "
            "seconds (MAAS_RPC_HTTP_TIMEOUT).",
            peer=printable(self.peerHost),
            timeout=self.factory.limits.timeout,
        )
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        """Read request bytes, unless the request was refused.

        :param data: bytes from the client.
        """
        if not self._refused:
            super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        """Refuse a request with a body now, before reading any of it."""
        if self.length != 0:  # A Content-Length > 0, or chunked (None).
            self._refused = True
            self.factory._refused(
                "body",
                "Refused an HTTP request with a body from {peer}.",
                peer=printable(self.peerHost),
            )
            self.transport.write(_TOO_LARGE)
            self.loseConnection()
            return
        super().allHeadersReceived()

    def checkPersistence(self, request: Request, version: bytes) -> bool:
        """Serve one request per connection.

        :param request: the request.
        :param version: its HTTP version.
        :return: ``False``: the connection closes after the answer.
        """
        request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
        return False

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Stop the deadline, and free the connection's place.

        :param reason: why the connection was lost.
        """
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        super().connectionLost(reason)
        self.factory._released(self)


class DiscoverySite(Site):
    """The discovery web site, with connection caps (see the module
    docstring).

    :param resource: the root resource.
    :param limits: the :class:`HTTPLimits`; the defaults when ``None``.
    :param reactor: the reactor for deadlines; the global one when ``None``.

    :ivar connections: client address → connections open from it.
    """

    protocol = DiscoveryChannel  # type: ignore[assignment]
    displayTracebacks = False
    noisy = False

    def __init__(
        self,
        resource: IResource,
        limits: HTTPLimits | None = None,
        reactor: Any = None,
    ) -> None:
        self.limits = limits if limits is not None else HTTPLimits()
        super().__init__(
            resource,
            timeout=None,  # The channel's fixed deadline replaces the idle timer.
            reactor=reactor,
        )
        self.connections: dict[str, int] = {}
        self.total = 0
        self._logs = LogLimiter(log, clock=self.reactor)

    def buildProtocol(self, addr: Any) -> Any:
        """Make a channel for a new connection, unless a cap is reached.

        :param addr: the client's address.
        :return: the channel, or ``None`` to close the connection at once.
        """
        host = str(getattr(addr, "host", addr))
        if self.total >= self.limits.maxConnections:
            self._refused(
                "total",
                "Refused an HTTP connection from {peer}: {limit} are open "
                "(MAAS_RPC_HTTP_MAX_CONNECTIONS).",
                peer=printable(host),
                limit=self.limits.maxConnections,
            )
            return None
        if self.connections.get(host, 0) >= self.limits.maxPerAddress:
            self._refused(
                ("address", host),
                "Refused an HTTP connection from {peer}: {limit} are open from "
                "that address (MAAS_RPC_HTTP_MAX_PER_ADDRESS).",
                peer=printable(host),
                limit=self.limits.maxPerAddress,
            )
            return None
        channel = super().buildProtocol(addr)
        channel.maxHeaders = self.limits.maxHeaders
        channel.totalHeadersSize = self.limits.maxHeaderBytes
        channel.MAX_LENGTH = self.limits.maxHeaderBytes
        channel.peerHost = host
        self.connections[host] = self.connections.get(host, 0) + 1
        self.total += 1
        return channel

    def _released(self, channel: DiscoveryChannel) -> None:
        host = channel.peerHost
        if host is None:
            return
        channel.peerHost = None
        self.total -= 1
        left = self.connections.get(host, 0) - 1
        if left > 0:
            self.connections[host] = left
        else:
            self.connections.pop(host, None)

    def _refused(self, key: Any, format: str, **kwargs: Any) -> None:  # noqa: A002
        self._logs.warn(key, format, **kwargs)


def makeSite(
    advertising: Any, limits: HTTPLimits | None = None, reactor: Any = None
) -> DiscoverySite:
    """Build the region's web site.

    :param advertising: the advertising service (see
        :class:`DiscoveryResource`).
    :param limits: the :class:`HTTPLimits`; the defaults when ``None``.
    :param reactor: the reactor for deadlines; the global one when ``None``.
    :return: a :class:`DiscoverySite` serving ``/MAAS/rpc/``.
    """
    root = _Directory()
    maas = _Directory()
    root.putChild(b"MAAS", maas)
    maas.putChild(b"rpc", DiscoveryResource(advertising))
    return DiscoverySite(root, limits, reactor)


class WebService(ListeningService):
    """Serves the region's site on its own port, or on a listening socket
    handed down by ``maas-rpc region`` and shared with the region's other
    event-loops.

    :param site: the site to serve.
    :param port: the TCP port; 0 for any free port.
    :param interface: the address to listen on; ``""`` for all.
    :param reactor: the reactor; the global one when ``None``.
    :param fd: a listening socket's file descriptor to serve on instead of
        binding ``port`` (it is duplicated; the caller keeps its own).
    """

    name = "web"  # type: ignore[assignment]

    def __init__(
        self,
        site: Site,
        port: int,
        interface: str = "",
        reactor: Any = None,
        fd: int | None = None,
    ) -> None:
        super().__init__(reactor)
        self.site = site
        self.fd = fd
        self.port = port
        self.interface = interface

    def listen(self, reactor: Any) -> Any:
        """Listen on ``port`` (or adopt ``fd``).

        :param reactor: the reactor.
        :return: the listening port.
        """
        if self.fd is not None:
            family = socket.AF_INET6 if ":" in self.interface else socket.AF_INET
            return reactor.adoptStreamPort(self.fd, family, self.site)
        return reactor.listenTCP(self.port, self.site, interface=self.interface)

    def getPort(self) -> int | None:
        """Return the port being served.

        :return: the port, or ``None`` when not listening.
        """
        if self._listening is None:
            return None
        return int(self._listening.getHost().port)
