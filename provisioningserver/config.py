"""Configuration from ``MAAS_RPC_*`` environment variables, checked early.

Every setting of a region or cluster process can be given in the
environment; command-line flags mirror the variables and take precedence.
Every variable, its default and its meaning are in one table,
:data:`provisioningserver.settings.SETTINGS`. Values are parsed and checked
before the reactor starts, so a bad value stops the process with one clear
line (a :class:`ConfigError`) that names the variable, rather than a
traceback later.

:class:`ClusterConfig` is what a cluster process reads;
:class:`maasserver.config.RegionConfig` what a region event-loop reads.
"""

from __future__ import annotations

import os
import uuid as uuid_module
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from provisioningserver import settings
from provisioningserver.security import (
    InsecureFile,
    SecretError,
    UnreadableFile,
    ensure_private_directory,
    get_or_create_shared_secret,
    read_shared_secret,
)

__all__ = [
    "ClusterConfig",
    "ConfigError",
    "default_data_dir",
    "env_bool",
    "env_float",
    "env_int",
    "get_or_create_cluster_uuid",
    "load_secret",
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


def _env_value(
    environ: Mapping[str, str], name: str, parse: Callable[[str], Any], default: Any
) -> Any:
    """Parse ``name`` from ``environ`` with one of :mod:`settings`' parsers.

    :param environ: the environment.
    :param name: the variable.
    :param parse: the parser (text in, value out, or
        :class:`~provisioningserver.settings.InvalidValue`).
    :param default: the value when the variable is unset or empty.
    :return: the value.
    :raises ConfigError: naming the variable and its value when ``parse``
        refuses it.
    """
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        return parse(text)
    except settings.InvalidValue as error:
        raise ConfigError(f"{name}={text!r} {error}") from None


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
    parse = settings.seconds if positive else settings.number
    return _env_value(environ, name, parse, default)


def env_bool(environ: Mapping[str, str], name: str, default: bool = False) -> bool:
    """Read a yes/no setting from the environment.

    :param environ: the environment.
    :param name: the variable.
    :param default: the value when the variable is unset or empty.
    :return: the value.
    :raises ConfigError: when the value is not one of ``1``, ``0``,
        ``yes``, ``no``, ``true``, ``false``, ``on``, ``off``.
    """
    return _env_value(environ, name, settings.boolean, default)


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
    return _env_value(environ, name, settings.wholeNumber(minimum, maximum), default)


def parse_ports(text: str, name: str = "MAAS_RPC_PORTS") -> range:
    """Parse a port specification: ``N``, ``N-M``, or ``0`` for any free port.

    :param text: the specification.
    :param name: the setting's name, for error messages.
    :return: the ports to try, in order (``range(0, 1)`` for any).
    :raises ConfigError: when the text is malformed or out of 0..65535.
    """
    try:
        return settings.ports(text)
    except settings.InvalidValue as error:
        raise ConfigError(f"{name}={text!r} {error}") from None


def parse_maas_url(text: str, name: str = "MAAS_URL") -> str:
    """Check a region URL such as ``http://region:5240/MAAS``.

    :param text: the URL.
    :param name: the setting's name, for error messages.
    :return: the URL without a trailing slash.
    :raises ConfigError: when it is not an http(s) URL with a host.
    """
    try:
        return settings.url(text)
    except settings.InvalidValue as error:
        raise ConfigError(f"{name}={text!r} {error}") from None


def get_or_create_cluster_uuid(data_dir: Path) -> str:
    """Return the cluster's UUID, kept in ``data_dir/cluster_uuid``.

    The first call creates it (atomically, so concurrent first starts agree).

    :param data_dir: the cluster's data directory.
    :return: the UUID as text.
    :raises ConfigError: when the file holds something that is not a UUID,
        or the data directory cannot be written or read.
    """
    path = data_dir / "cluster_uuid"
    try:
        if not path.exists():
            ensure_private_directory(data_dir)
            temp = path.with_name(f".cluster_uuid.{os.getpid()}")
            temp.write_text(str(uuid_module.uuid4()) + "\n")
            try:
                os.link(temp, path)
            except FileExistsError:
                pass
            finally:
                temp.unlink(missing_ok=True)
        text = path.read_text().strip()
    except OSError as error:
        raise ConfigError(
            f"cannot keep the cluster's UUID in {path} ({_reason(error)}); "
            "check MAAS_RPC_DATA_DIR"
        ) from None
    try:
        return str(uuid_module.UUID(text))
    except ValueError:
        raise ConfigError(f"{path} does not hold a UUID: {text!r}") from None


def _reason(error: OSError) -> str:
    return error.strerror or str(error)


def data_dir_from(env: Mapping[str, str], role: str) -> Path:
    """The data directory a process of ``role`` uses.

    :param env: the environment (with flags applied).
    :param role: ``"region"`` or ``"cluster"``.
    :return: ``MAAS_RPC_DATA_DIR``, or the per-user default.
    :raises ConfigError: when ``MAAS_RPC_DATA_DIR`` names something that is
        not a directory.
    """
    data_dir = Path(
        settings.setting("MAAS_RPC_DATA_DIR").value(env) or default_data_dir(role)
    ).expanduser()
    if data_dir.exists() and not data_dir.is_dir():
        raise ConfigError(f"MAAS_RPC_DATA_DIR={str(data_dir)!r} is not a directory")
    return data_dir


def secret_file_from(env: Mapping[str, str], data_dir: Path) -> Path:
    """The shared secret's file: ``MAAS_RPC_SECRET_FILE`` or ``<data dir>/secret``.

    :param env: the environment (with flags applied).
    :param data_dir: the data directory.
    :return: the path.
    :raises ConfigError: when ``MAAS_RPC_SECRET_FILE`` is malformed.
    """
    given = settings.setting("MAAS_RPC_SECRET_FILE").value(env)
    return Path(given).expanduser() if given else data_dir / "secret"


def load_secret(path: Path, *, given: bool, create: bool) -> bytes:
    """Read (or, for a region, create) the shared secret, in one clear line.

    :param path: the secret's file.
    :param given: whether ``MAAS_RPC_SECRET_FILE`` named it (the error names
        that variable then; ``MAAS_RPC_DATA_DIR`` otherwise).
    :param create: whether to create it when missing (a region does).
    :return: the raw secret.
    :raises ConfigError: when it is missing, malformed, a directory, or
        unreadable.
    """
    where = (
        f"MAAS_RPC_SECRET_FILE={str(path)!r}"
        if given
        else f"the shared secret {str(path)!r} (in MAAS_RPC_DATA_DIR)"
    )
    try:
        if path.is_dir():
            raise ConfigError(f"{where} is a directory, not a secret file")
        if create:
            return get_or_create_shared_secret(path)
        return read_shared_secret(path)
    except (InsecureFile, UnreadableFile) as error:
        raise ConfigError(str(error)) from None  # One line; it names the file.
    except SecretError as error:
        detail = str(error).removeprefix(f"{path}: ")
        if "no shared secret" in detail:
            raise ConfigError(
                f"{where} does not exist; set MAAS_RPC_SECRET_FILE to a copy of "
                "the region's secret file"
            ) from None
        raise ConfigError(f"{where} is malformed: {detail}") from None
    except OSError as error:
        verb = "cannot be read or created" if create else "cannot be read"
        raise ConfigError(f"{where} {verb}: {_reason(error)}") from None


#: The fields of :class:`ClusterConfig` read straight from one setting each.
_CLUSTER_FIELDS = {
    "handshake_timeout": "MAAS_RPC_HANDSHAKE_TIMEOUT",
    "connect_timeout": "MAAS_RPC_CONNECT_TIMEOUT",
    "poll_disconnected": "MAAS_RPC_POLL_DISCONNECTED",
    "poll_partial": "MAAS_RPC_POLL_PARTIAL",
    "poll_connected": "MAAS_RPC_POLL_CONNECTED",
    "keepalive_interval": "MAAS_RPC_KEEPALIVE_INTERVAL",
    "keepalive_timeout": "MAAS_RPC_KEEPALIVE_TIMEOUT",
    "allow_legacy_peers": "MAAS_RPC_ALLOW_LEGACY_PEERS",
    "metrics_port": "MAAS_RPC_METRICS_PORT",
    "drain_timeout": "MAAS_RPC_DRAIN_TIMEOUT",
    "control": "MAAS_RPC_CONTROL",
    "log_level": "MAAS_RPC_LOG_LEVEL",
}


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
    :ivar discovery: the
        :class:`~provisioningserver.rpc.discovery.DiscoveryLimits`.
    :ivar secret_path: where the secret was read from.
    :ivar allow_legacy_peers: whether MAAS and stock-AMP regions are
        accepted.
    :ivar metrics_port: the loopback port of the Prometheus metrics, or
        ``None`` for none.
    :ivar drain_timeout: seconds calls in progress may take to finish on
        SIGTERM.
    :ivar control: whether to open the control socket.
    :ivar log_level: the lowest level logged.
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
    discovery: Any = None
    secret_path: Path | None = None
    allow_legacy_peers: bool = False
    metrics_port: int | None = None
    drain_timeout: float = 10.0
    control: bool = True
    log_level: str = "info"

    @property
    def control_dir(self) -> Path:
        """Where this cluster's control socket is."""
        return self.data_dir / "control"

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
        from provisioningserver.rpc.discovery import DiscoveryLimits
        from provisioningserver.rpc.limits import Limits
        from provisioningserver.rpc.tls import CLUSTER_ROLE, TLSConfig

        env = settings.environment(environ, overrides, ["cluster"])

        def get(name: str, default: Any = None) -> Any:
            return settings.setting(name).value(env, default)

        data_dir = data_dir_from(env, "cluster")
        maas_url = get("MAAS_URL", DEFAULT_MAAS_URL)
        secret_path = secret_file_from(env, data_dir)
        secret = load_secret(
            secret_path, given=bool(get("MAAS_RPC_SECRET_FILE")), create=False
        )
        cluster_uuid = get("MAAS_RPC_CLUSTER_UUID") or get_or_create_cluster_uuid(
            data_dir
        )
        return cls(
            maas_url=maas_url,
            data_dir=data_dir,
            secret=secret,
            cluster_uuid=cluster_uuid,
            tls=TLSConfig.from_env(env, CLUSTER_ROLE),
            limits=Limits.from_env(env),
            discovery=DiscoveryLimits.from_env(env),
            secret_path=secret_path,
            **settings.readFields(cls, env, _CLUSTER_FIELDS),
        )
