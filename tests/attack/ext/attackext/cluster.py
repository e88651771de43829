"""Attackext's cluster side: :class:`AttackCluster`. It loads no region
code."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from attackext import RAN, AskRegion, Tally
from provisioningserver.cheese import rate_cheese
from provisioningserver.rpc.cluster import EatCheez
from provisioningserver.rpc.clusterservice import ClusterClient
from provisioningserver.rpc.common import peerAddress

__all__ = ["AttackCluster"]

log = Logger()


class AttackCluster(ClusterClient):
    """A cluster connection that logs every ``EatCheez`` and ``AskRegion``
    it runs."""

    @EatCheez.responder
    def eat_cheez(self, name: str, origin: str) -> dict[str, int]:
        """Rate a cheese, and log that ``EatCheez`` ran.

        :param name: the cheese.
        :param origin: where it comes from.
        :return: ``{"rating": ...}``.
        """
        log.info(
            RAN + " EatCheez for {peer} name={name!r} origin={origin!r}",
            peer=peerAddress(self),
            name=name,
            origin=origin,
        )
        return {"rating": rate_cheese(name, origin)}

    @AskRegion.responder
    def ask_region(self, origin: str) -> Deferred[Any]:
        """Call the region's ``Tally`` on this connection, and log that
        ``AskRegion`` ran.

        :param origin: passed on to ``Tally``.
        :return: a Deferred of ``{"count": ...}``.
        """
        log.info(
            RAN + " AskRegion for {peer} origin={origin!r}",
            peer=peerAddress(self),
            origin=origin,
        )
        return self.callRemote(Tally, origin=origin)
