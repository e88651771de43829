"""The cheeseboard's cluster side: :class:`CheeseboardCluster`.

Run a cluster with it by setting
``MAAS_RPC_CLUSTER_PROTOCOL=cheeseboard.cluster:CheeseboardCluster``. It loads
no region code.
"""

from __future__ import annotations

import threading
from typing import Any

from twisted.internet import threads
from twisted.internet.defer import Deferred

from cheeseboard import AskRegion, Greet, UnknownVia
from provisioningserver.rpc import getRegionClient
from provisioningserver.rpc.clusterservice import ClusterClient

__all__ = ["GREET_TIMEOUT", "CheeseboardCluster"]

#: Seconds the cluster gives the region to answer ``Greet``.
GREET_TIMEOUT = 10.0


class CheeseboardCluster(ClusterClient):
    """A cluster connection that also answers :class:`~cheeseboard.AskRegion`."""

    @AskRegion.responder
    def ask_region(self, name: str, via: str) -> Deferred[dict[str, str]]:
        """Get a greeting for ``name`` from a region event-loop.

        :param name: who is greeted.
        :param via: ``"reactor"`` to call the region in the reactor thread,
            ``"thread"`` to call it from a thread of the reactor's pool.
        :return: a Deferred firing ``{"greeting": ..., "thread": ...}``.
        :raises UnknownVia: for another ``via``.
        :raises NoConnectionsAvailable: when no region event-loop is
            connected.
        """
        if via == "reactor":
            return self._askInReactor(name)
        if via == "thread":
            return threads.deferToThread(self._askFromThread, name)
        raise UnknownVia(f"cannot call the region via {via!r}")

    @staticmethod
    def _askInReactor(name: str) -> Deferred[dict[str, str]]:
        # In the reactor thread getRegionClient() returns the client itself,
        # and calling the client returns a Deferred.
        thread = threading.current_thread().name
        d = getRegionClient()(Greet, name=name, _timeout=GREET_TIMEOUT)

        def answer(response: dict[str, Any]) -> dict[str, str]:
            return {"greeting": response["greeting"], "thread": thread}

        return d.addCallback(answer)

    @staticmethod
    def _askFromThread(name: str) -> dict[str, str]:
        # Outside the reactor thread getRegionClient() blocks until the
        # reactor hands over the client, and calling the client returns a
        # crochet EventualResult.
        client = getRegionClient()
        response = client(Greet, name=name, _timeout=GREET_TIMEOUT).wait(
            GREET_TIMEOUT + 5
        )
        return {
            "greeting": response["greeting"],
            "thread": threading.current_thread().name,
        }
