"""Commands a cluster answers; the region calls them.

Besides :class:`EatCheez`, the worked example, a cluster answers the
handshake's :class:`~provisioningserver.rpc.common.Identify` and
:class:`~provisioningserver.rpc.common.Authenticate` (declared in
:mod:`provisioningserver.rpc.common` and re-exported here).
"""

from __future__ import annotations

from provisioningserver.rpc.common import Authenticate, Identify
from provisioningserver.rpc.exceptions import NoSuchCheese
from provisioningserver.twisted.protocols import amp

__all__ = [
    "Authenticate",
    "EatCheez",
    "Identify",
]


class EatCheez(amp.Command):
    """Ask a cluster to rate a cheese.

    The worked example of this package's documentation. The cluster answers
    ``rating``, from 1 to 10, a deterministic function of ``name`` and
    ``origin`` (:func:`provisioningserver.cheese.rate_cheese`).

    Arguments: ``name`` (Unicode), ``origin`` (Unicode).
    Response: ``rating`` (Integer).
    Errors: :class:`~provisioningserver.rpc.exceptions.NoSuchCheese` (wire
    code ``NoSuchCheese``) for a cheese the cluster will not rate.

    :since: 1.0
    """

    arguments = [
        (b"name", amp.Unicode()),
        (b"origin", amp.Unicode()),
    ]
    response = [
        (b"rating", amp.Integer()),
    ]
    errors = {
        NoSuchCheese: b"NoSuchCheese",
    }
