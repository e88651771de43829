"""Commands the region answers; clusters call them.

Besides :class:`Register`, a region event-loop answers the handshake's
:class:`~provisioningserver.rpc.common.Identify` and
:class:`~provisioningserver.rpc.common.Authenticate` (declared in
:mod:`provisioningserver.rpc.common` and re-exported here).
"""

from __future__ import annotations

from provisioningserver.rpc.arguments import ParsedURL
from provisioningserver.rpc.common import Authenticate, Identify
from provisioningserver.rpc.exceptions import CannotRegisterCluster
from provisioningserver.twisted.protocols import amp

__all__ = [
    "Authenticate",
    "Identify",
    "Ping",
    "Register",
]


class Register(amp.Command):
    """Register the calling cluster with the region event-loop.

    A cluster calls it once it has authenticated the region. The region
    registers the connection under ``uuid``, which must be what the cluster
    answered to :class:`~provisioningserver.rpc.common.Identify`; only then
    does the connection enter rotation.

    Arguments: ``uuid`` (Unicode); optional ``networks`` (a list of
    ``interface``, ``ip``, ``subnet_mask``, all Unicode), ``url`` (the
    ``MAAS_URL`` the cluster used, as ASCII text), ``ip_addr_json``
    (Unicode). Response: empty.
    Errors: :class:`~provisioningserver.rpc.exceptions.CannotRegisterCluster`
    when the region refuses.

    :since: 1.0
    """

    arguments = [
        (b"uuid", amp.Unicode()),
        (
            b"networks",
            amp.AmpList(
                [
                    (b"interface", amp.Unicode()),
                    (b"ip", amp.Unicode()),
                    (b"subnet_mask", amp.Unicode()),
                ],
                optional=True,
            ),
        ),
        (b"url", ParsedURL(optional=True)),
        (b"ip_addr_json", amp.Unicode(optional=True)),
    ]
    response = []
    errors = {
        CannotRegisterCluster: b"CannotRegisterCluster",
    }


class Ping(amp.Command):
    """Check that the region event-loop is alive: a cluster's keepalive.

    A cluster pings each region connection periodically and drops one that
    does not answer in time; the region drops connections it has heard
    nothing from for a while. An older region that does not know ``Ping``
    answers ``UNHANDLED``, which still shows it is alive.

    Arguments: none. Response: empty.

    :since: 1.1
    """

    arguments = []
    response = []
