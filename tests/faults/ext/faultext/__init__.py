"""Faultext: a user extension for the fault tests, loaded into real
processes the way a user's own extension is.

``faultext`` (this module)
    :class:`Linger`, the command both sides import.
``faultext.region``
    :class:`~faultext.region.FaultRegion`, for region event-loops
    (``MAAS_RPC_REGION_PROTOCOL=faultext.region:FaultRegion``): it answers
    :class:`Linger` after the number of seconds asked for, so that a stream of
    calls always has some in flight.
``faultext.cluster``
    :class:`~faultext.cluster.FaultCluster`, for cluster processes
    (``MAAS_RPC_CLUSTER_PROTOCOL=faultext.cluster:FaultCluster``): its
    ``EatCheez`` answers after ``FAULTEXT_CHEEZ_DELAY`` seconds when that
    variable is set, and logs that it started.
"""

from __future__ import annotations

from provisioningserver.twisted.protocols import amp

__all__ = ["Linger"]


class Linger(amp.Command):
    """Ask a region event-loop to answer after ``seconds``.

    Arguments: ``seconds`` (Float).
    Response: ``eventloop`` (Unicode), the answering event-loop's name.

    :since: 1.0
    """

    arguments = [(b"seconds", amp.Float())]
    response = [(b"eventloop", amp.Unicode())]
