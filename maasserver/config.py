"""Configuration of a region event-loop process, from the environment.

Variables (command-line flags mirror them and take precedence):

``MAAS_RPC_DATA_DIR``
    Holds the ``secret`` file and the SQLite advertisement store, shared by
    every event-loop process on the host; default a per-user data directory.
``MAAS_RPC_HTTP_PORT``
    The discovery (web) port, shared by all event-loops on the host
    (``SO_REUSEPORT``); default 5240.
``MAAS_RPC_PORTS``
    RPC ports to try, first free wins: ``N``, ``N-M``, or ``0`` for any free
    port; default ``5250-5259``.
``MAAS_RPC_BIND``
    One address to listen on; default all interfaces.
``MAAS_RPC_HANDSHAKE_TIMEOUT``
    Seconds a cluster may take to complete the handshake; default 30.
``MAAS_RPC_ADVERTISE_INTERVAL``
    Seconds between refreshes of this event-loop's advertisement; default 60.
``MAAS_RPC_ADVERTISE_EXPIRY``
    Seconds after which an advertisement that was not refreshed is deleted;
    default 300.
``MAAS_RPC_STATUS``
    ``1`` to keep a status file per event-loop (its connected clusters) in
    ``<data dir>/status/``, for supervisors and the demo; default off.
``MAAS_RPC_DATABASE_URL``
    A ``postgresql://`` (or ``postgres://``) URL: keep the advertisement
    store in that PostgreSQL database, which event-loops on several hosts can
    share, instead of the SQLite file in the data directory; libpq's ``PG*``
    variables supply what the URL leaves out. Needs psycopg 3
    (``maas-rpc[postgresql]``). Default unset: SQLite.
``MAAS_RPC_IDLE_TIMEOUT``
    Seconds after which a cluster connection the region has heard nothing
    from is dropped (default 90; clusters ping every 30).
``MAAS_RPC_TLS_CA``, ``MAAS_RPC_TLS_CERT``, ``MAAS_RPC_TLS_KEY``
    PEM files that turn on mutual TLS, required from every cluster (see
    :mod:`provisioningserver.rpc.tls`); all three or none.
``MAAS_RPC_MAX_*``
    Limits per peer (see :mod:`provisioningserver.rpc.limits`).
``MAAS_RPC_ALLOW_LEGACY_PEERS``
    ``1`` to accept clusters that do not offer the secure channel (MAAS
    clusters), with MAAS's plain, unencrypted handshake; default ``0``.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from provisioningserver.config import (
    ConfigError,
    default_data_dir,
    env_bool,
    env_float,
    env_int,
    parse_ports,
)
from provisioningserver.rpc.limits import Limits
from provisioningserver.rpc.tls import REGION_ROLE, TLSConfig

__all__ = ["RegionConfig"]


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
    :ivar allow_legacy_peers: whether clusters that do not offer the secure
        channel are accepted.
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
    allow_legacy_peers: bool = False

    @property
    def secret_path(self) -> Path:
        """The shared ``secret`` file."""
        return self.data_dir / "secret"

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
        env = dict(os.environ if environ is None else environ)
        env.update({k: v for k, v in overrides.items() if v is not None})
        data_dir = Path(
            env.get("MAAS_RPC_DATA_DIR") or default_data_dir("region")
        ).expanduser()
        bind = (env.get("MAAS_RPC_BIND") or "").strip()
        if bind:
            try:
                ipaddress.ip_address(bind)
            except ValueError:
                raise ConfigError(
                    f"MAAS_RPC_BIND={bind!r} is not an IP address"
                ) from None
        status = (env.get("MAAS_RPC_STATUS") or "").strip().lower()
        if status not in ("", "0", "1", "yes", "no", "true", "false"):
            raise ConfigError(f"MAAS_RPC_STATUS={status!r} is not 0 or 1")
        database_url = (env.get("MAAS_RPC_DATABASE_URL") or "").strip() or None
        if database_url is not None and not database_url.startswith(
            ("postgresql://", "postgres://")
        ):
            # The value may hold a password: not repeated here.
            raise ConfigError(
                "MAAS_RPC_DATABASE_URL must start with postgresql:// or postgres://"
            )
        return cls(
            data_dir=data_dir,
            http_port=env_int(env, "MAAS_RPC_HTTP_PORT", 5240, maximum=65535),
            ports=parse_ports(env.get("MAAS_RPC_PORTS") or "5250-5259"),
            bind=bind,
            handshake_timeout=env_float(env, "MAAS_RPC_HANDSHAKE_TIMEOUT", 30.0),
            advertise_interval=env_float(env, "MAAS_RPC_ADVERTISE_INTERVAL", 60.0),
            advertise_expiry=env_float(env, "MAAS_RPC_ADVERTISE_EXPIRY", 300.0),
            status=status in ("1", "yes", "true"),
            database_url=database_url,
            idle_timeout=env_float(env, "MAAS_RPC_IDLE_TIMEOUT", 90.0),
            tls=TLSConfig.from_env(env, REGION_ROLE),
            limits=Limits.from_env(env),
            allow_legacy_peers=env_bool(env, "MAAS_RPC_ALLOW_LEGACY_PEERS"),
        )
