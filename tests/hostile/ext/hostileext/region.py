"""Hostileext's region side: :class:`ProbeRegion`."""

from __future__ import annotations

from typing import Any

from hostileext import Ingest, Probe
from maasserver.rpc.regionservice import RegionServer
from provisioningserver.rpc.cluster import EatCheez

__all__ = ["ProbeRegion"]


class ProbeRegion(RegionServer):
    """A region connection that also answers :class:`Probe` and
    :class:`Ingest`."""

    @Probe.responder
    def probe(self) -> Any:
        """Call the cluster's ``EatCheez`` on this connection, and answer
        its rating.

        :return: a Deferred firing ``{"rating": ...}``.
        """
        d = self.callRemote(EatCheez, name="Brie", origin="France")
        return d.addCallback(lambda answer: {"rating": answer["rating"]})

    @Ingest.responder
    def ingest(self, items: list[dict[str, Any]]) -> dict[str, int]:
        """Count the items.

        :param items: the decoded list.
        :return: ``{"count": len(items)}``.
        """
        return {"count": len(items)}
