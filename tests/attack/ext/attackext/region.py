"""Attackext's region side: :class:`AttackRegion`."""

from __future__ import annotations

import itertools
from typing import Any

from twisted.logger import Logger

from attackext import RAN, Tally
from maasserver.rpc.regionservice import RegionServer
from provisioningserver.rpc.common import peerAddress
from provisioningserver.rpc.region import Ping

__all__ = ["AttackRegion"]

log = Logger()

_tallies = itertools.count(1)


class AttackRegion(RegionServer):
    """A region connection that answers :class:`~attackext.Tally` and logs
    every ``Tally`` and ``Ping`` it runs."""

    @Tally.responder
    def tally(self, origin: str) -> dict[str, int]:
        """Count, and log, that ``Tally`` ran.

        :param origin: who asked.
        :return: ``{"count": <runs in this process>}``.
        """
        count = next(_tallies)
        log.info(
            RAN + " Tally for {peer} origin={origin!r} count={count}",
            peer=peerAddress(self),
            origin=origin,
            count=count,
        )
        return {"count": count}

    @Ping.responder
    def ping(self) -> dict[str, Any]:
        """Answer a keepalive, and log that it ran.

        :return: ``{}``.
        """
        log.info(RAN + " Ping for {peer}", peer=peerAddress(self))
        return {}
