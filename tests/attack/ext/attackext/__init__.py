"""Attackext: counted responders for the attack tests, loaded into real
processes the way a user's own extension is.

Each responder below logs one line when it runs, so that a test counts, from
a process's log, exactly which commands reached a responder (and from which
peer). The handshake's own commands (``Identify``, ``Authenticate``,
``Register``) are not counted here: the region logs every registration.

``attackext`` (this module)
    :class:`Tally` and :class:`AskRegion`, the commands both sides import.
``attackext.region``
    :class:`~attackext.region.AttackRegion`
    (``MAAS_RPC_REGION_PROTOCOL=attackext.region:AttackRegion``): counts
    ``Tally`` and ``Ping``.
``attackext.cluster``
    :class:`~attackext.cluster.AttackCluster`
    (``MAAS_RPC_CLUSTER_PROTOCOL=attackext.cluster:AttackCluster``): counts
    ``EatCheez`` and ``AskRegion``; ``AskRegion`` makes the cluster call the
    region's ``Tally``, so that a test can have a command sent from the
    cluster to the region on demand.
"""

from __future__ import annotations

from provisioningserver.twisted.protocols import amp

__all__ = ["RAN", "AskRegion", "Tally"]

#: Every counted line starts with this, then the command's name.
RAN = "attackext: ran"


class Tally(amp.Command):
    """A region command that only counts that it ran.

    Arguments: ``origin`` (Unicode), who asked, for the log line.
    Response: ``count`` (Integer), how many times it ran in this process.

    :since: 1.0
    """

    arguments = [(b"origin", amp.Unicode())]
    response = [(b"count", amp.Integer())]


class AskRegion(amp.Command):
    """A cluster command: call the region's :class:`Tally` on the same
    connection and answer its count.

    Arguments: ``origin`` (Unicode), passed on to ``Tally``.
    Response: ``count`` (Integer).

    :since: 1.0
    """

    arguments = [(b"origin", amp.Unicode())]
    response = [(b"count", amp.Integer())]
