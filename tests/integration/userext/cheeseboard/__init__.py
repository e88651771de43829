"""Cheeseboard: a user extension of maas-rpc, written against the public API
only (the package itself is not edited).

It adds one command that region event-loops answer and one that clusters
answer:

* :class:`Greet` (cluster → region): a region event-loop answers with a
  greeting that names it.
* :class:`AskRegion` (region → cluster): the cluster calls :class:`Greet` on
  a region event-loop through
  :func:`provisioningserver.rpc.getRegionClient`, from the reactor thread or
  from a thread of the reactor's pool, and passes the answer back.

The code is split the way MAAS splits it, so that a cluster process never
loads region code:

``cheeseboard`` (this module)
    The commands and the greeting; both sides import it.
``cheeseboard.cluster``
    :class:`~cheeseboard.cluster.CheeseboardCluster`, for cluster processes:
    ``MAAS_RPC_CLUSTER_PROTOCOL=cheeseboard.cluster:CheeseboardCluster``.
``cheeseboard.region``
    :class:`~cheeseboard.region.CheeseboardRegion`, for region event-loops:
    ``MAAS_RPC_REGION_PROTOCOL=cheeseboard.region:CheeseboardRegion``, or
    ``eventloop.start(config, protocol=CheeseboardRegion)`` in-process.
"""

from __future__ import annotations

from provisioningserver.rpc.exceptions import CallTimedOut, NoConnectionsAvailable
from provisioningserver.twisted.protocols import amp

__all__ = ["VIAS", "AskRegion", "Greet", "UnknownVia", "greeting"]

#: The ways :class:`AskRegion` can call the region: from the reactor thread,
#: or from a thread of the reactor's pool.
VIAS = ("reactor", "thread")


class UnknownVia(Exception):
    """Sent by a cluster asked to call the region in a way it does not know."""


def greeting(name: str, eventloop: str) -> str:
    """Return what region event-loop ``eventloop`` answers to ``Greet``.

    :param name: who is greeted.
    :param eventloop: the event-loop's name, ``<hostname>:pid=<pid>``.
    :return: the greeting.
    """
    return f"Hello, {name}! Greetings from region event-loop {eventloop}."


class Greet(amp.Command):
    """Ask a region event-loop for a greeting.

    Arguments: ``name`` (Unicode).
    Response: ``greeting`` (Unicode), :func:`greeting` of ``name`` and the
    answering event-loop's name.

    :since: 1.0
    """

    arguments = [(b"name", amp.Unicode())]
    response = [(b"greeting", amp.Unicode())]


class AskRegion(amp.Command):
    """Ask a cluster to get a greeting from the region.

    The cluster calls :class:`Greet` on one of the region event-loops it is
    connected to, through
    :func:`~provisioningserver.rpc.getRegionClient`: in the reactor thread
    when ``via`` is ``"reactor"``, from a thread of the reactor's pool when
    it is ``"thread"``.

    Arguments: ``name`` (Unicode), ``via`` (Unicode, one of :data:`VIAS`).
    Response: ``greeting`` (Unicode, the region's answer), ``thread``
    (Unicode, the name of the cluster's thread that called the region).
    Errors: :class:`UnknownVia` for another ``via``;
    :class:`~provisioningserver.rpc.exceptions.NoConnectionsAvailable` when
    the cluster is connected to no region event-loop;
    :class:`~provisioningserver.rpc.exceptions.CallTimedOut` when the region
    did not answer in time.

    :since: 1.0
    """

    arguments = [(b"name", amp.Unicode()), (b"via", amp.Unicode())]
    response = [(b"greeting", amp.Unicode()), (b"thread", amp.Unicode())]
    errors = {
        UnknownVia: b"UnknownVia",
        NoConnectionsAvailable: b"NoConnectionsAvailable",
        CallTimedOut: b"CallTimedOut",
    }
