"""The cluster side of maas-rpc, and everything both sides share.

A cluster process imports only this package; it never imports
:mod:`maasserver` (the region side).

:data:`services` holds this process's cluster services; the ``rpc`` one
(:class:`~provisioningserver.rpc.clusterservice.ClusterClientService`) is
what :func:`provisioningserver.rpc.getRegionClient` uses.
"""

from twisted.application.service import MultiService

__all__ = ["services"]

#: This process's cluster services (the ``rpc`` service once a cluster runs).
services = MultiService()
