"""The cheeseboard's region side: :class:`CheeseboardRegion`.

Run a region event-loop with it by setting
``MAAS_RPC_REGION_PROTOCOL=cheeseboard.region:CheeseboardRegion``, or in-process
with ``eventloop.start(config, protocol=CheeseboardRegion)``.
"""

from __future__ import annotations

from cheeseboard import Greet, greeting
from maasserver.rpc.regionservice import RegionServer

__all__ = ["CheeseboardRegion"]


class CheeseboardRegion(RegionServer):
    """A region connection that also answers :class:`~cheeseboard.Greet`."""

    @Greet.responder
    def greet(self, name: str) -> dict[str, str]:
        """Greet ``name`` from this event-loop.

        :param name: who is greeted.
        :return: ``{"greeting": ...}``, naming this event-loop.
        """
        return {"greeting": greeting(name, self.service.eventloop)}
