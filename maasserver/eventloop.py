"""The region event-loop: the services one region process runs.

A region is one or more event-loop processes; each runs three named
services:

``rpc``
    :class:`~maasserver.rpc.regionservice.RegionService`, which accepts
    cluster connections.
``rpc-advertise``
    :class:`~maasserver.rpc.regionservice.RegionAdvertisingService`, which
    keeps this event-loop's addresses in the shared store.
``web``
    :class:`~maasserver.web.WebService`, which serves discovery
    (``GET /MAAS/rpc/``);
``control``
    :class:`~provisioningserver.control.ControlService`, the control socket
    that ``maas-rpc status`` and ``maas-rpc call`` use (unless
    ``MAAS_RPC_CONTROL=0``);
``metrics``
    :class:`~provisioningserver.metrics.MetricsService`, Prometheus metrics
    on a loopback port (only with ``MAAS_RPC_METRICS_PORT``, and not in a
    worker of ``maas-rpc region``, whose supervisor serves them).

Stopping them (:func:`stop`, SIGTERM) first drains the cluster connections
(:mod:`provisioningserver.drain`): calls in progress may finish, for up to
``MAAS_RPC_DRAIN_TIMEOUT`` seconds, while new ones are refused.

They are created when the loop starts, not when this module is imported.
The module-level :data:`loop` is this process's event-loop, and
:data:`services`, :func:`start`, :func:`stop` and :func:`reset` are its
parts. A plain Python program can run an event-loop in-process::

    from maasserver import eventloop
    eventloop.start().wait(30)      # sets up crochet if no reactor runs
    ...                             # getClientFor(), getAllClients(), gather()
    eventloop.stop().wait(30)

Under ``twistd`` the reactor is twistd's; the plugin calls
:func:`crochet.no_setup` and hands :data:`services` to twistd.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

import crochet
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from maasserver.config import RegionConfig
from maasserver.rpc.regionservice import (
    RegionAdvertisingService,
    RegionServer,
    RegionService,
)
from maasserver.rpc.stores import (
    IAdvertisementStore,
    PostgreSQLAdvertisementStore,
    SQLiteAdvertisementStore,
)
from maasserver.web import WebService, makeSite
from provisioningserver.drain import DrainingMultiService
from provisioningserver.utils.twisted import asynchronous, isInReactorThread

__all__ = [
    "RegionEventLoop",
    "loop",
    "reset",
    "services",
    "start",
    "stop",
]

log = Logger()


class RegionEventLoop:
    """One region process's services, created on :meth:`populate`.

    :ivar services: the :class:`~twisted.application.service.MultiService`
        holding ``rpc``, ``rpc-advertise`` and ``web`` once populated.
    :ivar config: the :class:`~maasserver.config.RegionConfig` in use, once
        populated.
    """

    def __init__(self) -> None:
        self.services: MultiService = DrainingMultiService(
            self._liveConnections, self._drainTimeout
        )
        self.config: RegionConfig | None = None

    def _liveConnections(self) -> list[Any]:
        try:
            return list(self.services.getServiceNamed("rpc").live)
        except KeyError:
            return []

    def _drainTimeout(self) -> float:
        return self.config.drain_timeout if self.config is not None else 10.0

    @property
    def name(self) -> str:
        """This event-loop's name, ``<hostname>:pid=<pid>``."""
        return f"{socket.gethostname()}:pid={os.getpid()}"

    @property
    def populated(self) -> bool:
        """Whether the services exist."""
        return len(list(self.services)) > 0

    def populate(
        self,
        config: RegionConfig | None = None,
        *,
        protocol: Callable[[RegionService], RegionServer] = RegionServer,
        environ: Mapping[str, str] | None = None,
    ) -> MultiService:
        """Create the services, without starting them.

        :param config: the configuration; read from the environment when
            ``None``.
        :param protocol: the per-connection protocol for the ``rpc`` service:
            :class:`~maasserver.rpc.regionservice.RegionServer` or a subclass
            with responders of your own.
        :param environ: the environment to read when ``config`` is ``None``.
        :return: :attr:`services`.
        :raises provisioningserver.config.ConfigError: when the configuration
            is malformed.
        :raises RuntimeError: when already populated.
        :raises ImportError: when the configuration names a PostgreSQL store
            and psycopg is not installed.
        """
        if self.populated:
            raise RuntimeError("the event-loop's services exist already")
        if config is None:
            config = RegionConfig.from_env(environ)
        secret = config.load_secret()
        self.config = config
        store: IAdvertisementStore
        if config.database_url:
            store = PostgreSQLAdvertisementStore(config.database_url)
        else:
            store = SQLiteAdvertisementStore(config.store_path)
        rpc = RegionService(
            secret,
            self.name,
            ports=config.ports,
            interface=config.bind,
            protocol=protocol,
            handshakeTimeout=config.handshake_timeout,
            statusPath=(
                config.status_dir / f"{os.getpid()}.json" if config.status else None
            ),
            limits=config.limits,
            tls=config.tls,
            idleTimeout=config.idle_timeout,
            allowLegacyPeers=config.allow_legacy_peers,
        )
        if config.allow_legacy_peers:
            log.warn(
                "MAAS_RPC_ALLOW_LEGACY_PEERS is set: clusters that do not offer "
                "the secure channel (MAAS clusters) are accepted over plain, "
                "unencrypted TCP with MAAS's handshake."
            )
        rpc.setServiceParent(self.services)
        advertise = RegionAdvertisingService(
            store,
            rpc,
            interval=config.advertise_interval,
            expiry=config.advertise_expiry,
        )
        advertise.setServiceParent(self.services)
        if config.http_fd is not None:
            # Several processes wait on it: accept() must never block.
            os.set_blocking(config.http_fd, False)
        web = WebService(
            makeSite(advertise, config.http),
            config.http_port,
            config.bind,
            fd=config.http_fd,
        )
        web.setServiceParent(self.services)
        if config.control:
            from maasserver.control import regionHandlers
            from provisioningserver.control import ControlService

            ControlService(config.control_dir, regionHandlers(rpc)).setServiceParent(
                self.services
            )
        from provisioningserver import metrics

        served = metrics.setUp(config.metrics_port, environ)
        if served is not None:
            served.setServiceParent(self.services)
        return self.services

    def whenReady(self) -> Deferred[None]:
        """Fire once the event-loop listens and advertises.

        :return: a Deferred that fires with ``None``, or fails with why the
            event-loop could not start.
        """
        rpc = self.services.getServiceNamed("rpc")
        advertise = self.services.getServiceNamed("rpc-advertise")
        started: Deferred[Any] = Deferred()

        def passOn(result: Any) -> Any:
            if isinstance(result, Failure):
                started.errback(result)
            else:
                started.callback(None)
            return result

        rpc.starting.addBoth(passOn)
        started.addCallback(lambda _: advertise.advertising.get())
        return started.addCallback(lambda _: None)

    def describe(self) -> str:
        """One line that says where this event-loop is and serves.

        :return: e.g. ``Region event-loop host:pid=7 ready: data directory
            ..., secret ..., RPC on 127.0.0.1:5250, discovery at ...``.
        """
        config = self.config
        if config is None:
            return f"Region event-loop {self.name} is not configured."
        rpc = self.services.getServiceNamed("rpc")
        web = self.services.getServiceNamed("web")
        host = config.bind or "0.0.0.0"
        parts = [
            f"data directory {config.data_dir}",
            f"secret {config.secret_path}",
            f"RPC on {host}:{rpc.getPort()}",
            f"discovery at http://{config.bind or 'localhost'}:{web.getPort()}"
            "/MAAS/rpc/"
            + (
                " (shared with the region's workers)"
                if config.http_fd is not None
                else ""
            ),
        ]
        try:
            parts.append(f"control {self.services.getServiceNamed('control').path}")
        except KeyError:
            pass
        try:
            metricsService = self.services.getServiceNamed("metrics")
            parts.append(f"metrics at {metricsService.url}")
        except KeyError:
            pass
        return f"Region event-loop {self.name} ready: " + ", ".join(parts) + "."

    def _start(self, config: RegionConfig | None, protocol: Any) -> Deferred[None]:
        if not self.populated:
            self.populate(config, protocol=protocol)
        if not self.services.running:
            # "rpc" binds its port synchronously, before "rpc-advertise"
            # first runs and advertises it.
            self.services.startService()
        return self.whenReady()

    def start(
        self,
        config: RegionConfig | None = None,
        *,
        protocol: Callable[[RegionService], RegionServer] = RegionServer,
    ) -> Any:
        """Start the event-loop's services.

        From a thread other than the reactor's, crochet is set up first when
        no reactor runs yet.

        :param config: as for :meth:`populate`.
        :param protocol: as for :meth:`populate`.
        :return: in the reactor thread, a Deferred that fires once the loop
            listens and advertises; elsewhere, a
            :class:`crochet.EventualResult` of it.
        """
        if not isInReactorThread():
            crochet.setup()
        return asynchronous(self._start)(config, protocol)

    def _stop(self) -> Deferred[None]:
        if not self.services.running:
            return defer.succeed(None)
        # Withdraw the advertisement first, then stop the rest.
        return defer.maybeDeferred(self.services.stopService).addCallback(
            lambda _: None
        )

    def stop(self) -> Any:
        """Stop the event-loop's services (its advertisement is withdrawn).

        :return: a Deferred in the reactor thread, an
            :class:`crochet.EventualResult` elsewhere.
        """
        return asynchronous(self._stop)()

    def _reset(self) -> Deferred[None]:
        def clear(_: Any) -> None:
            for service in list(self.services):
                service.disownServiceParent()
            self.config = None

        return self._stop().addCallback(clear)

    def reset(self) -> Any:
        """Stop the services and forget them, so :meth:`start` creates anew.

        :return: a Deferred in the reactor thread, an
            :class:`crochet.EventualResult` elsewhere.
        """
        return asynchronous(self._reset)()


#: This process's event-loop.
loop = RegionEventLoop()

#: Its services (``rpc``, ``rpc-advertise``, ``web`` once started).
services = loop.services

#: Start this process's event-loop; see :meth:`RegionEventLoop.start`.
start = loop.start

#: Stop it; see :meth:`RegionEventLoop.stop`.
stop = loop.stop

#: Stop it and forget its services; see :meth:`RegionEventLoop.reset`.
reset = loop.reset
