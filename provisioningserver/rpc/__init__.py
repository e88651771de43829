"""The RPC layer: commands, protocol, clients.

Commands each side answers are declared in
:mod:`provisioningserver.rpc.cluster` (the cluster answers) and
:mod:`provisioningserver.rpc.region` (the region answers). Cluster-side code
calls the region through :func:`getRegionClient`.
"""

from __future__ import annotations

from typing import Any

from provisioningserver.rpc.exceptions import NoConnectionsAvailable
from provisioningserver.utils.twisted import FOREVER, asynchronous

__all__ = ["getClient", "getRegionClient"]


@asynchronous(timeout=FOREVER)
def getRegionClient() -> Any:
    """Return a client for a random region event-loop this cluster is
    connected to.

    It uses the ``rpc`` service of this process's cluster services
    (:data:`provisioningserver.services`). Usable in the reactor thread and
    from any other thread; either way it returns the client itself. Don't
    keep the client: ask for one each time you call.

    :return: a :class:`~provisioningserver.rpc.common.Client`.
    :raises NoConnectionsAvailable: when no region event-loop is connected,
        or no cluster service runs in this process.
    """
    from provisioningserver import services

    try:
        service = services.getServiceNamed("rpc")
    except KeyError:
        raise NoConnectionsAvailable(
            "no cluster RPC service runs in this process"
        ) from None
    return service.getClient()


#: The name MAAS also uses for :func:`getRegionClient`.
getClient = getRegionClient
