"""Faultext's cluster side: :class:`FaultCluster`. It loads no region code."""

from __future__ import annotations

import os

from twisted.internet.task import deferLater
from twisted.logger import Logger

from provisioningserver.cheese import rate_cheese
from provisioningserver.rpc.cluster import EatCheez
from provisioningserver.rpc.clusterservice import ClusterClient

__all__ = ["FaultCluster"]

log = Logger()


class FaultCluster(ClusterClient):
    """A cluster connection whose ``EatCheez`` is slow when
    ``FAULTEXT_CHEEZ_DELAY`` (seconds) is set."""

    @EatCheez.responder
    def eat_cheez(self, name: str, origin: str) -> object:
        """Rate a cheese, after ``FAULTEXT_CHEEZ_DELAY`` seconds.

        :param name: the cheese.
        :param origin: where it comes from.
        :return: ``{"rating": ...}``, or a Deferred of it.
        """
        delay = float(os.environ.get("FAULTEXT_CHEEZ_DELAY") or 0)
        if delay <= 0:
            return {"rating": rate_cheese(name, origin)}
        log.info(
            "faultext: EatCheez({name}) received; answering in {delay} s.",
            name=name,
            delay=delay,
        )
        return deferLater(
            self.service.clock, delay, lambda: {"rating": rate_cheese(name, origin)}
        )
