"""The ``maas-regiond`` twistd plugin: one region event-loop process.

After installation, ``twistd -n maas-regiond`` runs a region event-loop.
Settings come from the environment (see :mod:`maasserver.config`); the flags
below mirror the variables and take precedence. Bad configuration is reported
by twistd as one line, before the reactor starts, and twistd exits non-zero.
"""

from __future__ import annotations

import os

from twisted.application.service import MultiService
from twisted.python import usage

from maasserver.config import RegionConfig
from provisioningserver.config import ConfigError
from provisioningserver.plugin import loadProtocol

__all__ = ["Options", "makeService"]


class Options(usage.Options):
    """Flags of ``twistd maas-regiond`` (and ``maas-rpc eventloop``)."""

    optParameters = [
        ["data-dir", None, None, "Data directory (MAAS_RPC_DATA_DIR)."],
        ["http-port", None, None, "Discovery port (MAAS_RPC_HTTP_PORT)."],
        ["ports", None, None, "RPC ports: N, N-M or 0 (MAAS_RPC_PORTS)."],
        ["bind", None, None, "Listen address (MAAS_RPC_BIND)."],
        ["tls-ca", None, None, "CA certificate, PEM (MAAS_RPC_TLS_CA)."],
        ["tls-cert", None, None, "This region's certificate (MAAS_RPC_TLS_CERT)."],
        ["tls-key", None, None, "Its private key (MAAS_RPC_TLS_KEY)."],
        [
            "database-url",
            None,
            None,
            "PostgreSQL URL of the shared advertisement store (MAAS_RPC_DATABASE_URL).",
        ],
        [
            "protocol",
            None,
            None,
            "module:Class of a RegionServer subclass with extra responders "
            "(MAAS_RPC_REGION_PROTOCOL).",
        ],
    ]

    def postOptions(self) -> None:
        """Check the configuration now, before the reactor starts.

        :raises twisted.python.usage.UsageError: with one clear line when a
            setting is malformed.
        """
        from maasserver.rpc.regionservice import RegionServer

        try:
            self["config"] = RegionConfig.from_env(
                MAAS_RPC_DATA_DIR=self["data-dir"],
                MAAS_RPC_HTTP_PORT=self["http-port"],
                MAAS_RPC_PORTS=self["ports"],
                MAAS_RPC_BIND=self["bind"],
                MAAS_RPC_DATABASE_URL=self["database-url"],
                MAAS_RPC_TLS_CA=self["tls-ca"],
                MAAS_RPC_TLS_CERT=self["tls-cert"],
                MAAS_RPC_TLS_KEY=self["tls-key"],
            )
            spec = self["protocol"] or os.environ.get("MAAS_RPC_REGION_PROTOCOL")
            self["protocolClass"] = (
                loadProtocol(spec, RegionServer, "MAAS_RPC_REGION_PROTOCOL")
                if spec
                else RegionServer
            )
        except ConfigError as error:
            raise usage.UsageError(str(error)) from None


def makeService(options: Options) -> MultiService:
    """twistd's entry point: build this event-loop's services.

    :param options: the parsed :class:`Options`.
    :return: :data:`maasserver.eventloop.services`, populated.
    :raises twisted.python.usage.UsageError: when the secret cannot be read or
        created, or the PostgreSQL store is configured without psycopg.
    """
    import crochet

    from maasserver.eventloop import loop
    from provisioningserver.security import SecretError
    from provisioningserver.utils.fds import raiseOpenFileLimit

    crochet.no_setup()
    raiseOpenFileLimit()
    try:
        return loop.populate(options["config"], protocol=options["protocolClass"])
    except (SecretError, OSError, ImportError) as error:
        raise usage.UsageError(str(error)) from None
