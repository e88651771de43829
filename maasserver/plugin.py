"""The ``maas-regiond`` twistd plugin: one region event-loop process.

After installation, ``twistd -n maas-regiond`` runs a region event-loop.
Settings come from the environment (see :mod:`provisioningserver.settings`);
the flags mirror the variables and take precedence. Bad configuration is
reported by twistd as one line, before the reactor starts, and twistd exits
non-zero.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.application.service import MultiService
from twisted.python import usage

from maasserver.config import RegionConfig
from provisioningserver import settings
from provisioningserver.config import ConfigError
from provisioningserver.plugin import PluginOptions, loadProtocol

__all__ = ["Options", "loadRegionProtocol", "makeService"]


def loadRegionProtocol(config: RegionConfig) -> Any:
    """The protocol class ``MAAS_RPC_REGION_PROTOCOL`` names.

    :param config: the checked configuration.
    :return: the class; ``RegionServer`` when unset.
    :raises ConfigError: when it cannot be loaded.
    """
    from maasserver.rpc.regionservice import RegionServer

    spec = config.protocol
    if not spec:
        return RegionServer
    return loadProtocol(spec, RegionServer, "MAAS_RPC_REGION_PROTOCOL")


class Options(PluginOptions):
    """Flags of ``twistd maas-regiond``: one per region setting."""

    command = "twistd maas-regiond"

    optParameters = settings.optParameters("region")

    def postOptions(self) -> None:
        """Check the configuration now, before the reactor starts.

        :raises twisted.python.usage.UsageError: with one clear line when a
            setting is malformed.
        """
        settings.warnUnknown(os.environ, "maas-regiond", sys.stderr)
        try:
            given = settings.optionOverrides(self, "region")
            self["config"] = RegionConfig.from_env(None, **given)
            self["protocolClass"] = loadRegionProtocol(self["config"])
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
    except (ConfigError, SecretError, OSError, ImportError) as error:
        raise usage.UsageError(str(error)) from None
