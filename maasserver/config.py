"""Configuration of a region event-loop process, from the environment.

Every variable a region reads, its default and its meaning are in the one
table of settings, :data:`provisioningserver.settings.SETTINGS` (the
documentation's settings list is generated from it); command-line flags
mirror the variables and take precedence. :meth:`RegionConfig.from_env`
checks them all before anything starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from maasserver.web import HTTPLimits
from provisioningserver import settings
from provisioningserver.config import (
    data_dir_from,
    load_secret,
    secret_file_from,
)
from provisioningserver.rpc.limits import Limits
from provisioningserver.rpc.tls import REGION_ROLE, TLSConfig

__all__ = ["RegionConfig"]


#: The fields of :class:`RegionConfig` read straight from one setting each.
_FIELDS = {
    "http_port": "MAAS_RPC_HTTP_PORT",
    "ports": "MAAS_RPC_PORTS",
    "bind": "MAAS_RPC_BIND",
    "handshake_timeout": "MAAS_RPC_HANDSHAKE_TIMEOUT",
    "advertise_interval": "MAAS_RPC_ADVERTISE_INTERVAL",
    "advertise_expiry": "MAAS_RPC_ADVERTISE_EXPIRY",
    "status": "MAAS_RPC_STATUS",
    "database_url": "MAAS_RPC_DATABASE_URL",
    "idle_timeout": "MAAS_RPC_IDLE_TIMEOUT",
    "protocol": "MAAS_RPC_REGION_PROTOCOL",
    "allow_legacy_peers": "MAAS_RPC_ALLOW_LEGACY_PEERS",
    "metrics_port": "MAAS_RPC_METRICS_PORT",
    "drain_timeout": "MAAS_RPC_DRAIN_TIMEOUT",
    "control": "MAAS_RPC_CONTROL",
    "log_level": "MAAS_RPC_LOG_LEVEL",
    "http_fd": "MAAS_RPC_HTTP_FD",
}


@dataclass(frozen=True)
class RegionConfig:
    """Everything a region event-loop process needs, checked.

    :ivar data_dir: where the ``secret`` and the advertisement store live.
    :ivar http_port: the discovery port (0: any free port).
    :ivar ports: the RPC ports to try, in order.
    :ivar bind: the address to listen on; ``""`` for all interfaces.
    :ivar handshake_timeout: seconds a cluster may take to complete the
        handshake.
    :ivar advertise_interval: seconds between advertisement refreshes.
    :ivar advertise_expiry: seconds before a stale advertisement is deleted.
    :ivar status: whether to keep a status file in ``data_dir/status``.
    :ivar database_url: the PostgreSQL URL of the advertisement store;
        ``None`` for the SQLite store at ``store_path``.
    :ivar idle_timeout: seconds of silence after which a cluster connection
        is dropped.
    :ivar tls: mutual TLS material
        (:class:`~provisioningserver.rpc.tls.TLSConfig`), or ``None`` for
        plain TCP.
    :ivar limits: the :class:`~provisioningserver.rpc.limits.Limits` applied
        to each cluster connection.
    :ivar http: the :class:`~maasserver.web.HTTPLimits` of the discovery web
        server.
    :ivar secret_file: ``MAAS_RPC_SECRET_FILE``, or ``None`` for ``secret``
        in the data directory.
    :ivar protocol: ``MAAS_RPC_REGION_PROTOCOL`` (``module:Class``), or
        ``None`` for :class:`~maasserver.rpc.regionservice.RegionServer`.
    :ivar allow_legacy_peers: whether MAAS and stock-AMP clusters are
        accepted.
    :ivar metrics_port: the loopback port of the Prometheus metrics, or
        ``None`` for none.
    :ivar drain_timeout: seconds calls in progress may take to finish on
        SIGTERM.
    :ivar control: whether to open a control socket.
    :ivar log_level: the lowest level logged.
    :ivar http_fd: a listening socket's file descriptor to serve discovery
        on (handed down by ``maas-rpc region``), or ``None`` to bind
        ``http_port``.
    """

    data_dir: Path
    http_port: int = 5240
    ports: range = range(5250, 5260)
    bind: str = ""
    handshake_timeout: float = 30.0
    advertise_interval: float = 60.0
    advertise_expiry: float = 300.0
    status: bool = False
    database_url: str | None = None
    idle_timeout: float = 90.0
    tls: TLSConfig | None = None
    limits: Limits = field(default_factory=Limits)
    http: HTTPLimits = field(default_factory=HTTPLimits)
    secret_file: Path | None = None
    protocol: str | None = None
    allow_legacy_peers: bool = False
    metrics_port: int | None = None
    drain_timeout: float = 10.0
    control: bool = True
    log_level: str = "info"
    http_fd: int | None = None

    @property
    def secret_path(self) -> Path:
        """The shared secret's file (``secret`` in the data directory unless
        ``MAAS_RPC_SECRET_FILE`` says otherwise)."""
        return self.secret_file or self.data_dir / "secret"

    @property
    def control_dir(self) -> Path:
        """Where the event-loops' control sockets are."""
        return self.data_dir / "control"

    def load_secret(self) -> bytes:
        """Read the shared secret, creating it if no process has yet.

        :return: the raw secret.
        :raises ConfigError: when it is malformed, a directory, or
            unreadable; the message names the variable to fix.
        """
        return load_secret(
            self.secret_path, given=self.secret_file is not None, create=True
        )

    @property
    def store_path(self) -> Path:
        """The SQLite advertisement store."""
        return self.data_dir / "eventloops.sqlite3"

    @property
    def status_dir(self) -> Path:
        """Where status files are kept when ``status`` is on."""
        return self.data_dir / "status"

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: str | None
    ) -> RegionConfig:
        """Read the configuration from the environment.

        :param environ: the environment; ``os.environ`` when ``None``.
        :param overrides: variable values that take precedence (the CLI's
            flags), by variable name; ``None`` values are ignored.
        :return: the checked configuration.
        :raises ConfigError: when a setting is malformed.
        """
        env = settings.environment(environ, overrides, ["region"])
        data_dir = data_dir_from(env, "region")
        secret_file = (
            secret_file_from(env, data_dir)
            if settings.setting("MAAS_RPC_SECRET_FILE").value(env)
            else None
        )
        return cls(
            data_dir=data_dir,
            tls=TLSConfig.from_env(env, REGION_ROLE),
            limits=Limits.from_env(env),
            http=HTTPLimits.from_env(env),
            secret_file=secret_file,
            **settings.readFields(cls, env, _FIELDS),
        )
