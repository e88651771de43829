"""The baseline: stock Twisted AMP, with nothing of maas-rpc on the wire path.

:class:`RawEatCheez` is wire-identical to
:class:`provisioningserver.rpc.cluster.EatCheez` (same command name, argument
and response keys and types) but is declared here on Twisted's own
:mod:`twisted.protocols.amp`, so the baseline cannot pick up whatever the
package does to speed up its commands. The responder does the same work as
the cluster's (a copy of :func:`provisioningserver.cheese.rate_cheese`, so
that a raw peer imports nothing of maas-rpc).
"""

from __future__ import annotations

import hashlib
from typing import Any

from twisted.internet.protocol import Factory
from twisted.protocols import amp

__all__ = ["NAME", "ORIGIN", "RawCheeseServer", "RawEatCheez", "rawFactory"]

#: The arguments every benchmark call sends: two short Unicode strings.
NAME = "Brie"
ORIGIN = "France"


def rate_cheese(name: str, origin: str) -> int:
    """The same computation as :func:`provisioningserver.cheese.rate_cheese`."""
    if not name.strip() or name.strip().casefold() in ("cheez whiz", "squirty cheese"):
        raise ValueError(f"{name} is not cheese")
    return hashlib.sha256(f"{name}\0{origin}".encode()).digest()[0] % 10 + 1


class RawEatCheez(amp.Command):
    """``EatCheez`` declared on stock AMP."""

    commandName = b"EatCheez"
    arguments = [(b"name", amp.Unicode()), (b"origin", amp.Unicode())]
    response = [(b"rating", amp.Integer())]


class RawCheeseServer(amp.AMP):
    """A plain :class:`amp.AMP` that answers :class:`RawEatCheez`."""

    @RawEatCheez.responder
    def eatCheez(self, name: str, origin: str) -> dict[str, int]:
        return {"rating": rate_cheese(name, origin)}


def rawFactory(counter: list[Any] | None = None) -> Factory:
    """A factory of :class:`RawCheeseServer`; ``counter`` collects the
    protocols it builds, when given."""

    class _Factory(Factory):
        noisy = False

        def buildProtocol(self, addr: Any) -> RawCheeseServer:
            proto = RawCheeseServer()
            proto.factory = self
            if counter is not None:
                counter.append(proto)
            return proto

    return _Factory()
