"""The simulated clusters' protocol: :class:`ClusterClient` plus the
benchmark's extra responders.

:class:`BenchCluster` answers the commands that show what maas-rpc's stock
path and its handling of Deferred-returning responders cost
(:class:`benchmarks.raw.Enlist`, :class:`~benchmarks.raw.EatCheezNow`,
:class:`~benchmarks.raw.EatCheezLater`), with the same work as the raw AMP
peer (:class:`benchmarks.raw.RawCheeseServer`). It adds responders the
documented way (a subclass handed to :class:`ClusterClientService` as
``protocol``) and overrides no dispatch hook, so ``EatCheez`` keeps the
common path. A cluster process imports it; it loads no region code.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from benchmarks.raw import (
    EatCheezLater,
    EatCheezNow,
    Enlist,
    answerEnlist,
    rateLater,
    rateNow,
)
from provisioningserver.rpc.clusterservice import ClusterClient

__all__ = ["BenchCluster"]


class BenchCluster(ClusterClient):
    """A :class:`ClusterClient` that also answers the benchmark's commands."""

    __slots__ = ()

    @Enlist.responder
    def enlist(self, **kwargs: Any) -> dict[str, Any]:
        """Answer :class:`~benchmarks.raw.Enlist` (stock AMP's path)."""
        return answerEnlist(**kwargs)

    @EatCheezNow.responder
    def eatCheezNow(self, name: str, origin: str) -> Deferred[dict[str, int]]:
        """Answer with a Deferred that has already fired."""
        return rateNow(name, origin)

    @EatCheezLater.responder
    def eatCheezLater(self, name: str, origin: str) -> Deferred[dict[str, int]]:
        """Answer with a Deferred the reactor fires (``callLater(0)``)."""
        return rateLater(self.service.clock, name, origin)
