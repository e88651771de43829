"""The RPC layer: commands, protocol, clients.

Commands each side answers are declared in
:mod:`provisioningserver.rpc.cluster` (the cluster answers) and
:mod:`provisioningserver.rpc.region` (the region answers). Cluster-side code
calls the region through :func:`getRegionClient`.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall

from provisioningserver.rpc.exceptions import NoConnectionsAvailable
from provisioningserver.utils.twisted import FOREVER, asynchronous

__all__ = ["getClient", "getRegionClient", "waitForRegionClient"]

#: How often, in seconds, :func:`waitForRegionClient` looks for a connection.
WAIT_INTERVAL = 0.05


def waitForRegionClient(service: Any, timeout: float) -> Deferred[Any]:
    """Wait until ``service`` has a region connection, and return a client.

    It looks every :data:`WAIT_INTERVAL` seconds, on the service's clock
    (``service.clock``), so a test drives it with a
    :class:`~twisted.internet.task.Clock`.

    :param service: a
        :class:`~provisioningserver.rpc.clusterservice.ClusterClientService`
        (anything with ``connections``, ``getClient()`` and ``clock``).
    :param timeout: seconds to wait at most.
    :return: a Deferred firing with a
        :class:`~provisioningserver.rpc.common.Client`, or failing with
        :class:`NoConnectionsAvailable` after ``timeout`` seconds; cancelling
        it stops the wait.
    """
    clock = service.clock
    deadline = clock.seconds() + timeout

    def stop(_: Any = None) -> None:
        if looking.running:
            looking.stop()

    found: Deferred[Any] = Deferred(stop)

    def look() -> None:
        if service.connections:
            stop()
            found.callback(service.getClient())
        elif clock.seconds() >= deadline:
            stop()
            found.errback(
                NoConnectionsAvailable(
                    "this cluster connected to no region event-loop within "
                    f"{timeout} seconds"
                )
            )

    looking = LoopingCall(look)
    looking.clock = clock
    looking.start(min(WAIT_INTERVAL, timeout), now=False)
    return found


@asynchronous(timeout=FOREVER)
def getRegionClient(timeout: float = 0) -> Any:
    """Return a client for a random region event-loop this cluster is
    connected to, waiting up to ``timeout`` seconds for one.

    It uses the ``rpc`` service of this process's cluster services
    (:data:`provisioningserver.services`). It follows MAAS's
    ``@asynchronous(timeout=FOREVER)`` convention, as
    :func:`maasserver.rpc.getClientFor` does: from a thread other than the
    reactor's it blocks and returns the client (or raises); in the reactor
    thread it returns the client itself when one is connected now (or
    ``timeout`` is 0), else a Deferred of one. Don't keep the client: ask for
    one each time you call.

    :param timeout: seconds to wait for a connection when there is none now;
        0 (the default) does not wait.
    :return: a :class:`~provisioningserver.rpc.common.Client`, or (in the
        reactor, when waiting) a Deferred of one.
    :raises NoConnectionsAvailable: when no region event-loop is connected
        within ``timeout``, or no cluster service runs in this process.
    """
    from provisioningserver import services

    try:
        service = services.getServiceNamed("rpc")
    except KeyError:
        raise NoConnectionsAvailable(
            "no cluster RPC service runs in this process"
        ) from None
    if service.connections or not timeout or timeout <= 0:
        return service.getClient()
    return waitForRegionClient(service, timeout)


#: The name MAAS also uses for :func:`getRegionClient`.
getClient = getRegionClient
