"""The ``maas-clusterd`` twistd plugin: a cluster process.

After installation, ``twistd -n maas-clusterd`` runs a cluster. Settings come
from the environment (see :mod:`provisioningserver.config`); the flags below
mirror the variables and take precedence. Bad configuration is reported by
twistd as one line, before the reactor starts, and twistd exits non-zero.

The dropin in ``twisted/plugins/`` names this module lazily (through
:class:`twisted.application.service.ServiceMaker`), so discovering plugins
loads no region code.
"""

from __future__ import annotations

import importlib
from typing import Any

from twisted.application.service import MultiService
from twisted.python import usage

from provisioningserver.config import ClusterConfig, ConfigError

__all__ = ["Options", "loadProtocol", "makeClusterService", "makeService"]


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


class Options(usage.Options):
    """Flags of ``twistd maas-clusterd`` (and ``maas-rpc cluster``)."""

    optParameters = [
        ["maas-url", None, None, "The region's URL (MAAS_URL)."],
        ["data-dir", None, None, "Data directory (MAAS_RPC_DATA_DIR)."],
        ["secret-file", None, None, "Shared secret file (MAAS_RPC_SECRET_FILE)."],
        ["uuid", None, None, "This cluster's UUID (MAAS_RPC_CLUSTER_UUID)."],
        ["tls-ca", None, None, "CA certificate, PEM (MAAS_RPC_TLS_CA)."],
        ["tls-cert", None, None, "This cluster's certificate (MAAS_RPC_TLS_CERT)."],
        ["tls-key", None, None, "Its private key (MAAS_RPC_TLS_KEY)."],
        [
            "protocol",
            None,
            None,
            "module:Class of a ClusterClient subclass with extra responders "
            "(MAAS_RPC_CLUSTER_PROTOCOL).",
        ],
    ]

    def postOptions(self) -> None:
        """Check the configuration now, before the reactor starts.

        :raises twisted.python.usage.UsageError: with one clear line when a
            setting is missing or malformed.
        """
        import os

        from provisioningserver.rpc.clusterservice import ClusterClient

        try:
            self["config"] = ClusterConfig.from_env(
                MAAS_URL=self["maas-url"],
                MAAS_RPC_DATA_DIR=self["data-dir"],
                MAAS_RPC_SECRET_FILE=self["secret-file"],
                MAAS_RPC_CLUSTER_UUID=self["uuid"],
                MAAS_RPC_TLS_CA=self["tls-ca"],
                MAAS_RPC_TLS_CERT=self["tls-cert"],
                MAAS_RPC_TLS_KEY=self["tls-key"],
            )
            spec = self["protocol"] or os.environ.get("MAAS_RPC_CLUSTER_PROTOCOL")
            self["protocolClass"] = (
                loadProtocol(spec, ClusterClient, "MAAS_RPC_CLUSTER_PROTOCOL")
                if spec
                else ClusterClient
            )
        except ConfigError as error:
            raise usage.UsageError(str(error)) from None


def makeClusterService(config: ClusterConfig, protocol: Any = None) -> MultiService:
    """Create this process's cluster services.

    The ``rpc`` service is added to :data:`provisioningserver.services`,
    where :func:`~provisioningserver.rpc.getRegionClient` finds it.

    :param config: the checked configuration.
    :param protocol: the per-connection protocol class; ``ClusterClient``
        when ``None``.
    :return: :data:`provisioningserver.services`.
    """
    from provisioningserver import services
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
    return services


def makeService(options: Options) -> MultiService:
    """twistd's entry point: build the cluster's services.

    :param options: the parsed :class:`Options`.
    :return: the service tree; its ``rpc`` child is the
        :class:`~provisioningserver.rpc.clusterservice.ClusterClientService`.
    """
    import crochet

    crochet.no_setup()
    return makeClusterService(options["config"], options["protocolClass"])
