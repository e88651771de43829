"""The region's discovery endpoint: ``GET /MAAS/rpc/``.

Clusters learn where the region's event-loops listen by asking any of them
for ``<MAAS_URL>/rpc/``. The answer is JSON::

    {"eventloops": {"<hostname>:pid=<pid>": [["<address>", <port>], ...], ...}}

or ``{"eventloops": null}`` while this event-loop has not advertised itself
yet, which means "ask again later". It reveals event-loop names, addresses
and ports, nothing else, and it runs nothing.

The event-loops of one region on one host share the HTTP port: ``maas-rpc
region`` binds and listens on it once and hands the listening socket to each
worker (:class:`WebService` with ``fd``), and the kernel spreads connections
among them. A process of another region cannot join: its bind fails.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

__all__ = ["DiscoveryResource", "WebService", "makeSite"]

log = Logger()


class DiscoveryResource(Resource):
    """Answers ``GET /MAAS/rpc/`` (with or without the trailing slash).

    :param advertising: the
        :class:`~maasserver.rpc.regionservice.RegionAdvertisingService` whose
        store to read and whose state says whether this event-loop
        advertises yet.
    """

    def __init__(self, advertising: Any) -> None:
        super().__init__()
        self.advertising = advertising

    def getChild(self, path: bytes, request: Request) -> IResource:
        """Serve ``/rpc/`` as ``/rpc``; nothing lies below.

        :param path: the next path segment.
        :param request: the request.
        :return: this resource for an empty segment, else a 404 resource.
        """
        if path == b"":
            return self
        return notFound()

    def render_GET(self, request: Request) -> Any:
        """Answer with the advertised event-loops, as JSON.

        :param request: the request.
        :return: ``NOT_DONE_YET``; the answer is written when the store
            replies.
        """
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        if not self.advertising.advertising.isSet:
            return self._encode(None)
        d = defer.maybeDeferred(self.advertising.store.eventloops)
        d.addCallbacks(
            lambda loops: self._finish(request, loops),
            lambda failure: self._failed(request, failure),
        )
        return NOT_DONE_YET

    @staticmethod
    def _encode(eventloops: dict[str, list[tuple[str, int]]] | None) -> bytes:
        document: dict[str, Any] = {"eventloops": None}
        if eventloops is not None:
            document["eventloops"] = {
                name: [[address, port] for address, port in endpoints]
                for name, endpoints in eventloops.items()
            }
        return json.dumps(document).encode("utf-8")

    def _finish(self, request: Request, eventloops: Any) -> None:
        if request.finished or request._disconnected:
            return
        request.write(self._encode(eventloops))
        request.finish()

    def _failed(self, request: Request, failure: Failure) -> None:
        log.failure("Could not read the advertised event-loops.", failure)
        if request.finished or request._disconnected:
            return
        request.setResponseCode(503)
        request.write(self._encode(None))
        request.finish()


class _Directory(Resource):
    """A resource with children only; anything else is a plain 404."""

    def getChild(self, path: bytes, request: Request) -> IResource:
        return notFound()


def makeSite(advertising: Any) -> Site:
    """Build the region's web site.

    :param advertising: the advertising service (see
        :class:`DiscoveryResource`).
    :return: a :class:`~twisted.web.server.Site` serving ``/MAAS/rpc/``.
    """
    root = _Directory()
    maas = _Directory()
    root.putChild(b"MAAS", maas)
    maas.putChild(b"rpc", DiscoveryResource(advertising))
    site = Site(root)
    site.displayTracebacks = False
    site.noisy = False
    return site


class WebService(Service):
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
        self.site = site
        self.fd = fd
        self.port = port
        self.interface = interface
        self._reactor = reactor
        self._listening: Any = None

    def startService(self) -> None:
        """Start listening.

        :raises twisted.internet.error.CannotListenError: when the port is
            taken.
        """
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        if self.fd is not None:
            family = socket.AF_INET6 if ":" in self.interface else socket.AF_INET
            self._listening = reactor.adoptStreamPort(self.fd, family, self.site)
        else:
            self._listening = reactor.listenTCP(
                self.port, self.site, interface=self.interface
            )
        super().startService()

    def stopService(self) -> Deferred[None]:
        """Stop listening.

        :return: a Deferred that fires once the port is closed.
        """
        super().stopService()
        listening, self._listening = self._listening, None
        if listening is None:
            return defer.succeed(None)
        return defer.maybeDeferred(listening.stopListening)

    def getPort(self) -> int | None:
        """Return the port being served.

        :return: the port, or ``None`` when not listening.
        """
        if self._listening is None:
            return None
        return int(self._listening.getHost().port)
