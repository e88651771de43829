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
    (``GET /MAAS/rpc/``).

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
from provisioningserver.security import get_or_create_shared_secret
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
        self.services = MultiService()
        self.config: RegionConfig | None = None

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
        self.config = config
        secret = get_or_create_shared_secret(config.secret_path)
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
        web = WebService(makeSite(advertise), config.http_port, config.bind)
        web.setServiceParent(self.services)
        return self.services

    def _start(self, config: RegionConfig | None, protocol: Any) -> Deferred[None]:
        if not self.populated:
            self.populate(config, protocol=protocol)
        if not self.services.running:
            # "rpc" binds its port synchronously, before "rpc-advertise"
            # first runs and advertises it.
            self.services.startService()
        rpc = self.services.getServiceNamed("rpc")
        advertise = self.services.getServiceNamed("rpc-advertise")
        d = rpc.starting.addCallback(lambda _: advertise.advertising.get())
        return d.addCallback(lambda _: None)

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
