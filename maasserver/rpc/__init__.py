"""The region's RPC layer: clients for the clusters connected to this
event-loop.

Both helpers follow MAAS's ``@asynchronous(timeout=FOREVER)`` convention:
called from a thread other than the reactor's they block and return their
result (or raise); called in the reactor thread, :func:`getClientFor`
returns a Deferred (failed, never raising, when there is no connection) and
:func:`getAllClients` returns the list.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred

from provisioningserver.rpc.exceptions import NoConnectionsAvailable
from provisioningserver.utils.twisted import FOREVER, asynchronous

__all__ = ["getAllClients", "getClientFor"]


_services: Any = None


def _rpcService() -> Any:
    global _services
    if _services is None:
        from maasserver.eventloop import services

        _services = services
    try:
        return _services.getServiceNamed("rpc")
    except KeyError:
        return None


@asynchronous(timeout=FOREVER)
def getClientFor(uuid: str, timeout: float = 0) -> Deferred[Any]:
    """Return a client for cluster ``uuid``, connected to this event-loop.

    When the cluster has several connections (several processes, for high
    availability), one is chosen at random. Don't keep the client: ask for
    one each time you call.

    :param uuid: the cluster's UUID.
    :param timeout: seconds to wait for the cluster to connect when it has
        no connection now; 0 (the default) does not wait.
    :return: a :class:`~provisioningserver.rpc.common.Client` (from another
        thread) or a Deferred of one (in the reactor, where every error below
        fails the Deferred rather than being raised).
    :raises NoConnectionsAvailable: when the cluster has no connection to
        this event-loop within ``timeout``, or the event-loop is not
        running.
    :raises crochet.ReactorStopped: (from another thread) when the reactor
        stops first.
    """
    service = _rpcService()
    if service is None or not service.running:
        return defer.fail(
            NoConnectionsAvailable(
                "this process's region event-loop is not running", uuid=uuid
            )
        )
    # In the reactor, even an error comes as a (failed) Deferred.
    return defer.maybeDeferred(service.getClientFor, uuid, timeout)


@asynchronous(timeout=FOREVER)
def getAllClients() -> list[Any]:
    """Return a client for every cluster connection of this event-loop.

    A cluster with several connections appears once per connection.

    :return: a list of :class:`~provisioningserver.rpc.common.Client`;
        empty when nothing is connected or the event-loop is not running.
    :raises crochet.ReactorStopped: (from another thread) when the reactor
        stops first.
    """
    service = _rpcService()
    if service is None or not service.running:
        return []
    return service.getAllClients()
