"""Configuration from ``MAAS_RPC_*`` environment variables, checked early.

Every setting of a region or cluster process can be given in the
environment; command-line flags mirror the variables and take precedence.
Values are parsed and checked before the reactor starts, so a bad value stops
the process with one clear line (a :class:`ConfigError`) rather than a
traceback later.

Variables a cluster reads (see :class:`ClusterConfig`):

``MAAS_URL``
    Where the region serves discovery; default ``http://localhost:5240/MAAS``.
``MAAS_RPC_DATA_DIR``
    Where the cluster keeps its UUID (and, by default, its ``secret``).
``MAAS_RPC_SECRET_FILE``
    The shared secret; default ``secret`` in the data directory.
``MAAS_RPC_CLUSTER_UUID``
    The cluster's UUID; generated once and kept in the data directory when
    unset.
``MAAS_RPC_HANDSHAKE_TIMEOUT``
    Seconds a connection may take to complete the handshake (default 30).
``MAAS_RPC_CONNECT_TIMEOUT``
    Seconds a TCP connection attempt may take (default 10).
``MAAS_RPC_POLL_DISCONNECTED``, ``MAAS_RPC_POLL_PARTIAL``, ``MAAS_RPC_POLL_CONNECTED``
    Seconds between discovery polls with no connection (default 2), with
    some (10), and with every advertised event-loop connected (30).
``MAAS_RPC_KEEPALIVE_INTERVAL``, ``MAAS_RPC_KEEPALIVE_TIMEOUT``
    Seconds between pings on each region connection (default 30), and how
    long one may take before the connection is dropped (10).
``MAAS_RPC_TLS_CA``, ``MAAS_RPC_TLS_CERT``, ``MAAS_RPC_TLS_KEY``
    PEM files that turn on mutual TLS (see :mod:`provisioningserver.rpc.tls`);
    all three or none.
``MAAS_RPC_MAX_OUTSTANDING``, ``MAAS_RPC_MAX_UNSENT``
    Limits per connection (see :mod:`provisioningserver.rpc.limits`).
``MAAS_RPC_ALLOW_LEGACY_PEERS``
    ``1`` to accept region event-loops that do not offer the secure channel
    (MAAS regions), with MAAS's plain, unencrypted handshake; default ``0``.
"""

from __future__ import annotations

import os
import uuid as uuid_module
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import platformdirs

from provisioningserver.security import SecretError, read_shared_secret

__all__ = [
    "ClusterConfig",
    "ConfigError",
    "default_data_dir",
    "env_bool",
    "env_float",
    "env_int",
    "get_or_create_cluster_uuid",
    "parse_maas_url",
    "parse_ports",
]

DEFAULT_MAAS_URL = "http://localhost:5240/MAAS"


class ConfigError(Exception):
    """A setting is missing or malformed; the message says which and why."""


def default_data_dir(role: str) -> Path:
    """Return the per-user data directory for a role.

    :param role: ``"region"`` or ``"cluster"``.
    :return: e.g. ``~/.local/share/maas-rpc/region``.
    """
    return Path(platformdirs.user_data_dir("maas-rpc")) / role


def env_float(
    environ: Mapping[str, str],
    name: str,
    default: float,
    *,
    positive: bool = True,
) -> float:
    """Read a number of seconds from the environment.

    :param environ: the environment.
    :param name: the variable.
    :param default: the value when the variable is unset or empty.
    :param positive: whether the value must be greater than zero.
    :return: the value.
    :raises ConfigError: when the value is not a (positive) finite number.
    """
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"{name}={text!r} is not a finite number")
    if positive and value <= 0:
        raise ConfigError(f"{name}={text!r} must be greater than zero")
    return value


def env_bool(environ: Mapping[str, str], name: str, default: bool = False) -> bool:
    """Read a yes/no setting from the environment.

    :param environ: the environment.
    :param name: the variable.
    :param default: the value when the variable is unset or empty.
    :return: the value.
    :raises ConfigError: when the value is not one of ``1``, ``0``,
        ``yes``, ``no``, ``true``, ``false``, ``on``, ``off``.
    """
    text = environ.get(name, "").strip().lower()
    if not text:
        return default
    if text in ("1", "yes", "true", "on"):
        return True
    if text in ("0", "no", "false", "off"):
        return False
    raise ConfigError(f"{name}={text!r} is not 1 or 0")


def env_int(
    environ: Mapping[str, str],
    name: str,
    default: int,
    *,
    minimum: int = 0,
    maximum: int | None = None,
) -> int:
    """Read a whole number from the environment.

    :param environ: the environment.
    :param name: the variable.
    :param default: the value when the variable is unset or empty.
    :param minimum: the smallest allowed value.
    :param maximum: the largest allowed value, or ``None``.
    :return: the value.
    :raises ConfigError: when the value is not a whole number in range.
    """
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not a whole number") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise ConfigError(f"{name}={text!r} is out of range ({bound})")
    return value


def parse_ports(text: str, name: str = "MAAS_RPC_PORTS") -> range:
    """Parse a port specification: ``N``, ``N-M``, or ``0`` for any free port.

    :param text: the specification.
    :param name: the setting's name, for error messages.
    :return: the ports to try, in order (``range(0, 1)`` for any).
    :raises ConfigError: when the text is malformed or out of 0..65535.
    """
    spec = text.strip()
    try:
        if "-" in spec:
            first_text, last_text = spec.split("-", 1)
            first, last = int(first_text), int(last_text)
        else:
            first = last = int(spec)
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not a port, a range N-M, or 0") from None
    if not (0 <= first <= 65535 and 0 <= last <= 65535):
        raise ConfigError(f"{name}={text!r}: ports must be within 0..65535")
    if last < first:
        raise ConfigError(f"{name}={text!r}: the range is empty")
    if first == 0 and last != 0:
        raise ConfigError(f"{name}={text!r}: 0 means any port and takes no range")
    return range(first, last + 1)


def parse_maas_url(text: str, name: str = "MAAS_URL") -> str:
    """Check a region URL such as ``http://region:5240/MAAS``.

    :param text: the URL.
    :param name: the setting's name, for error messages.
    :return: the URL without a trailing slash.
    :raises ConfigError: when it is not an http(s) URL with a host.
    """
    url = text.strip()
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"{name}={text!r} is not an http:// or https:// URL")
    try:
        parsed.port  # noqa: B018 - validates the port
    except ValueError:
        raise ConfigError(f"{name}={text!r} has a malformed port") from None
    return url.rstrip("/")


def get_or_create_cluster_uuid(data_dir: Path) -> str:
    """Return the cluster's UUID, kept in ``data_dir/cluster_uuid``.

    The first call creates it (atomically, so concurrent first starts agree).

    :param data_dir: the cluster's data directory.
    :return: the UUID as text.
    :raises ConfigError: when the file holds something that is not a UUID.
    """
    path = data_dir / "cluster_uuid"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".cluster_uuid.{os.getpid()}")
        temp.write_text(str(uuid_module.uuid4()) + "\n")
        try:
            os.link(temp, path)
        except FileExistsError:
            pass
        finally:
            temp.unlink(missing_ok=True)
    text = path.read_text().strip()
    try:
        return str(uuid_module.UUID(text))
    except ValueError:
        raise ConfigError(f"{path} does not hold a UUID: {text!r}") from None


@dataclass(frozen=True)
class ClusterConfig:
    """Everything a cluster process needs, checked.

    :ivar maas_url: the region's base URL (discovery is ``<maas_url>/rpc/``).
    :ivar data_dir: the cluster's data directory.
    :ivar secret: the raw shared secret.
    :ivar cluster_uuid: the cluster's UUID.
    :ivar handshake_timeout: seconds to complete the handshake.
    :ivar connect_timeout: seconds for one TCP connection attempt.
    :ivar poll_disconnected: seconds between polls with no connection.
    :ivar poll_partial: seconds between polls while partly connected.
    :ivar poll_connected: seconds between polls when fully connected.
    :ivar keepalive_interval: seconds between pings on each connection.
    :ivar keepalive_timeout: seconds a ping may take.
    :ivar tls: mutual TLS material
        (:class:`~provisioningserver.rpc.tls.TLSConfig`), or ``None`` for
        plain TCP.
    :ivar limits: the :class:`~provisioningserver.rpc.limits.Limits` applied
        to each connection.
    :ivar allow_legacy_peers: whether region event-loops that do not offer
        the secure channel are accepted.
    """

    maas_url: str
    data_dir: Path
    secret: bytes
    cluster_uuid: str
    handshake_timeout: float = 30.0
    connect_timeout: float = 10.0
    poll_disconnected: float = 2.0
    poll_partial: float = 10.0
    poll_connected: float = 30.0
    keepalive_interval: float = 30.0
    keepalive_timeout: float = 10.0
    tls: Any = None
    limits: Any = None
    allow_legacy_peers: bool = False

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: str | None
    ) -> ClusterConfig:
        """Read the configuration from the environment.

        :param environ: the environment; ``os.environ`` when ``None``.
        :param overrides: variable values that take precedence (the CLI's
            flags), by variable name; ``None`` values are ignored.
        :return: the checked configuration.
        :raises ConfigError: when a setting is missing or malformed.
        """
        from provisioningserver.rpc.limits import Limits
        from provisioningserver.rpc.tls import CLUSTER_ROLE, TLSConfig

        env = dict(os.environ if environ is None else environ)
        env.update({k: v for k, v in overrides.items() if v is not None})
        data_dir = Path(
            env.get("MAAS_RPC_DATA_DIR") or default_data_dir("cluster")
        ).expanduser()
        maas_url = parse_maas_url(env.get("MAAS_URL") or DEFAULT_MAAS_URL)
        secret_file = Path(
            env.get("MAAS_RPC_SECRET_FILE") or data_dir / "secret"
        ).expanduser()
        try:
            secret = read_shared_secret(secret_file)
        except SecretError as error:
            raise ConfigError(
                f"{error} (set MAAS_RPC_SECRET_FILE to a copy of the region's "
                "secret file)"
            ) from None
        uuid_text = (env.get("MAAS_RPC_CLUSTER_UUID") or "").strip()
        if uuid_text:
            try:
                cluster_uuid = str(uuid_module.UUID(uuid_text))
            except ValueError:
                raise ConfigError(
                    f"MAAS_RPC_CLUSTER_UUID={uuid_text!r} is not a UUID"
                ) from None
        else:
            cluster_uuid = get_or_create_cluster_uuid(data_dir)
        return cls(
            maas_url=maas_url,
            data_dir=data_dir,
            secret=secret,
            cluster_uuid=cluster_uuid,
            handshake_timeout=env_float(env, "MAAS_RPC_HANDSHAKE_TIMEOUT", 30.0),
            connect_timeout=env_float(env, "MAAS_RPC_CONNECT_TIMEOUT", 10.0),
            poll_disconnected=env_float(env, "MAAS_RPC_POLL_DISCONNECTED", 2.0),
            poll_partial=env_float(env, "MAAS_RPC_POLL_PARTIAL", 10.0),
            poll_connected=env_float(env, "MAAS_RPC_POLL_CONNECTED", 30.0),
            keepalive_interval=env_float(env, "MAAS_RPC_KEEPALIVE_INTERVAL", 30.0),
            keepalive_timeout=env_float(env, "MAAS_RPC_KEEPALIVE_TIMEOUT", 10.0),
            tls=TLSConfig.from_env(env, CLUSTER_ROLE),
            limits=Limits.from_env(env),
            allow_legacy_peers=env_bool(env, "MAAS_RPC_ALLOW_LEGACY_PEERS"),
        )
