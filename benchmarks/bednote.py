"""The command of the test bed's call stream, :class:`BedNote`.

Declared apart from the region's responder (:mod:`benchmarks.bedext`) so
that a cluster host of the bed loads no region code.
"""

from __future__ import annotations

from provisioningserver.twisted.protocols import amp

__all__ = ["BedNote"]


class BedNote(amp.Command):
    """A call the bed's clusters make to the region, one token each.

    :since: the bed (benchmarks only; not part of the wire contract)
    """

    commandName = b"BedNote"
    arguments = [(b"token", amp.Unicode())]
    response = [(b"eventloop", amp.Unicode())]
    errors: dict[type[Exception], bytes] = {}
