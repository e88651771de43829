"""Hostileext: the commands the hostile tests' processes load (as a user's
extension is loaded).

``hostileext`` (this module)
    :class:`Probe` and :class:`Ingest`, which both sides import.
``hostileext.region``
    :class:`~hostileext.region.ProbeRegion`
    (``MAAS_RPC_REGION_PROTOCOL=hostileext.region:ProbeRegion``): answers
    :class:`Probe` by calling the asking cluster's ``EatCheez`` back on the
    same connection, and :class:`Ingest` by counting the items it got.
``hostileext.cluster``
    :class:`~hostileext.cluster.ProbeCluster`
    (``MAAS_RPC_CLUSTER_PROTOCOL=hostileext.cluster:ProbeCluster``): once
    connected, calls :class:`Probe` every ``HOSTILEEXT_PROBE_INTERVAL``
    seconds and appends one JSON line per call to ``HOSTILEEXT_PROBE_FILE``:
    ``{"start": <monotonic>, "seconds": <latency>, "ok": true|false}``. A
    probe that comes back within a second shows that the region's reactor
    answers, and that this cluster is connected and answers the region.
"""

from __future__ import annotations

from provisioningserver.rpc.arguments import CompressedAmpList
from provisioningserver.twisted.protocols import amp

__all__ = ["Ingest", "Probe"]


class Probe(amp.Command):
    """Ask the region to call this cluster's ``EatCheez`` and pass on the
    rating.

    Response: ``rating`` (Integer).

    :since: 1.0
    """

    arguments: list = []
    response = [(b"rating", amp.Integer())]


class Ingest(amp.Command):
    """Hand the region a (compressed) list of items; it answers how many.

    Arguments: ``items`` (a :class:`CompressedAmpList` of optional ``n``).
    Response: ``count`` (Integer).

    :since: 1.0
    """

    arguments = [(b"items", CompressedAmpList([(b"n", amp.Integer(optional=True))]))]
    response = [(b"count", amp.Integer())]
