"""The ``maas-clusterd`` twistd plugin: a cluster process.

After installation, ``twistd -n maas-clusterd`` runs a cluster. Settings come
from the environment (see :mod:`provisioningserver.settings`); the flags
mirror the variables and take precedence. Bad configuration is reported by
twistd as one line, before the reactor starts, and twistd exits non-zero.

The dropin in ``twisted/plugins/`` names this module lazily (through
:class:`twisted.application.service.ServiceMaker`), so discovering plugins
loads no region code.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from typing import Any

from twisted.application.service import MultiService
from twisted.python import usage

from provisioningserver import settings
from provisioningserver.config import ClusterConfig, ConfigError

__all__ = [
    "PluginOptions",
    "Options",
    "describeCluster",
    "loadClusterProtocol",
    "loadProtocol",
    "makeClusterService",
    "makeService",
    "wrapDraining",
]


def loadProtocol(spec: str, base: type, name: str) -> Any:
    """Import a protocol class named ``module:Class``.

    :param spec: ``"package.module:ClassName"``.
    :param base: the class it must subclass.
    :param name: the setting's name, for error messages.
    :return: the class.
    :raises ConfigError: when it cannot be imported or is not a subclass of
        ``base``.
    """
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise ConfigError(f"{name}={spec!r} is not of the form module:Class")
    try:
        module = importlib.import_module(module_name)
        cls = getattr(module, class_name)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"{name}={spec!r} cannot be imported: {error}") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(f"{name}={spec!r} is not a subclass of {base.__name__}")
    return cls


def loadClusterProtocol(environ: Mapping[str, str]) -> Any:
    """The protocol class ``MAAS_RPC_CLUSTER_PROTOCOL`` names.

    :param environ: the environment (with flags applied).
    :return: the class; ``ClusterClient`` when unset.
    :raises ConfigError: when it cannot be loaded.
    """
    from provisioningserver.rpc.clusterservice import ClusterClient

    spec = settings.setting("MAAS_RPC_CLUSTER_PROTOCOL").value(environ)
    if not spec:
        return ClusterClient
    return loadProtocol(spec, ClusterClient, "MAAS_RPC_CLUSTER_PROTOCOL")


class PluginOptions(usage.Options):
    """Options of a twistd plugin that stop twistd with a non-zero status on
    a configuration error, on every supported Twisted (twistd before 26.10
    prints a usage error and exits 0).

    :cvar command: how the command is named in the error line.
    """

    command = "twistd"

    def parseOptions(self, options: Any = None) -> None:
        """Parse, and on a usage error print it as one line and exit 1.

        :param options: the arguments; ``sys.argv[1:]`` when ``None``.
        :raises SystemExit: (1) on a usage error.
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as error:
            print(f"{self.command}: error: {error}", file=sys.stderr)
            raise SystemExit(1) from None


class Options(PluginOptions):
    """Flags of ``twistd maas-clusterd``: one per cluster setting."""

    command = "twistd maas-clusterd"

    optParameters = settings.optParameters("cluster")

    def postOptions(self) -> None:
        """Check the configuration now, before the reactor starts.

        :raises twisted.python.usage.UsageError: with one clear line when a
            setting is missing or malformed.
        """
        settings.warnUnknown(os.environ, "maas-clusterd", sys.stderr)
        try:
            given = settings.optionOverrides(self, "cluster")
            self["config"] = ClusterConfig.from_env(None, **given)
            self["protocolClass"] = loadClusterProtocol({**os.environ, **given})
        except ConfigError as error:
            raise usage.UsageError(str(error)) from None


def _clusterStatus(rpc: Any) -> dict[str, Any]:
    from provisioningserver.control import describeConnection

    connections = [
        describeConnection(conn, eventloop=name, state="authenticated")
        for name, conn in sorted(rpc.connections.items())
    ]
    connections += [
        describeConnection(conn, eventloop=conn.eventloop, state="handshake")
        for conn in list(rpc.handshaking)
    ]
    return {
        "cluster": rpc.uuid,
        "pid": os.getpid(),
        "maas_url": rpc.maasURL,
        "connections": connections,
    }


def makeClusterService(config: ClusterConfig, protocol: Any = None) -> MultiService:
    """Create this process's cluster services.

    The ``rpc`` service is added to :data:`provisioningserver.services`,
    where :func:`~provisioningserver.rpc.getRegionClient` finds it, with a
    ``control`` service (the control socket, unless ``config.control`` is
    off) and a ``metrics`` service (with ``config.metrics_port``).

    :param config: the checked configuration.
    :param protocol: the per-connection protocol class; ``ClusterClient``
        when ``None``.
    :return: :data:`provisioningserver.services`.
    :raises ConfigError: when metrics are asked for without
        ``prometheus_client``.
    """
    from provisioningserver import metrics, services
    from provisioningserver.control import ControlService
    from provisioningserver.rpc.clusterservice import (
        ClusterClient,
        ClusterClientService,
    )

    rpc = ClusterClientService(
        config.maas_url,
        config.secret,
        config.cluster_uuid,
        protocol=protocol or ClusterClient,
        intervals=(
            config.poll_disconnected,
            config.poll_partial,
            config.poll_connected,
        ),
        handshakeTimeout=config.handshake_timeout,
        connectTimeout=config.connect_timeout,
        tls=config.tls,
        limits=config.limits,
        keepaliveInterval=config.keepalive_interval,
        keepaliveTimeout=config.keepalive_timeout,
        discoveryLimits=config.discovery,
        allowLegacyPeers=config.allow_legacy_peers,
    )
    if config.allow_legacy_peers:
        from twisted.logger import Logger

        Logger().warn(
            "MAAS_RPC_ALLOW_LEGACY_PEERS is set: region event-loops that do not "
            "offer the secure channel (MAAS regions) are accepted over plain, "
            "unencrypted TCP with MAAS's handshake."
        )
    rpc.setServiceParent(services)
    if config.control:
        ControlService(
            config.control_dir,
            {
                "status": lambda request: _clusterStatus(rpc),
                "metrics": metrics.snapshot,
            },
        ).setServiceParent(services)
    served = metrics.setUp(config.metrics_port)
    if served is not None:
        served.setServiceParent(services)
    return services


def wrapDraining(services: MultiService, config: ClusterConfig) -> MultiService:
    """Put the cluster's services under one that drains them when stopping.

    :param services: what :func:`makeClusterService` returned.
    :param config: the configuration (its ``drain_timeout``).
    :return: the parent service to run.
    """
    from provisioningserver.drain import DrainingMultiService

    def connections() -> list[Any]:
        try:
            rpc = services.getServiceNamed("rpc")
        except KeyError:
            return []
        return [*rpc.connections.values(), *rpc.handshaking]

    top = DrainingMultiService(connections, config.drain_timeout)
    services.setServiceParent(top)
    return top


def describeCluster(config: ClusterConfig) -> str:
    """The cluster's start-up line.

    :param config: its configuration.
    :return: e.g. ``Cluster <uuid> started: data directory ..., secret ...,
        polling <MAAS_URL>/rpc/ ...``.
    """
    from provisioningserver import services

    parts = [
        f"data directory {config.data_dir}",
        f"secret {config.secret_path}",
        f"polling {config.maas_url}/rpc/ (MAAS_URL)",
        "mutual TLS" if config.tls is not None else "",
    ]
    for name, what in (("control", "path"), ("metrics", "url")):
        try:
            parts.append(f"{name} {getattr(services.getServiceNamed(name), what)}")
        except KeyError:
            pass
    return (
        f"Cluster {config.cluster_uuid} started: "
        + ", ".join(part for part in parts if part)
        + "."
    )


def makeService(options: Options) -> MultiService:
    """twistd's entry point: build the cluster's services.

    :param options: the parsed :class:`Options`.
    :return: the service tree: a draining parent of
        :data:`provisioningserver.services`, whose ``rpc`` child is the
        :class:`~provisioningserver.rpc.clusterservice.ClusterClientService`.
    :raises twisted.python.usage.UsageError: when metrics are asked for
        without ``prometheus_client``.
    """
    import crochet

    from provisioningserver.utils.fds import raiseOpenFileLimit

    crochet.no_setup()
    raiseOpenFileLimit()
    config = options["config"]
    try:
        services = makeClusterService(config, options["protocolClass"])
    except ConfigError as error:
        raise usage.UsageError(str(error)) from None
    return wrapDraining(services, config)
