"""Faultext's region side: :class:`FaultRegion`."""

from __future__ import annotations

from twisted.internet.task import deferLater

from faultext import Linger
from maasserver.rpc.regionservice import RegionServer

__all__ = ["FaultRegion"]


class FaultRegion(RegionServer):
    """A region connection that also answers :class:`~faultext.Linger`."""

    @Linger.responder
    def linger(self, seconds: float) -> object:
        """Answer after ``seconds``.

        :param seconds: how long to take.
        :return: a Deferred firing ``{"eventloop": <this event-loop's name>}``.
        """
        return deferLater(
            self.service.clock,
            seconds,
            lambda: {"eventloop": self.service.eventloop},
        )
