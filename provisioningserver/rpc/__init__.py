"""The RPC layer: commands, protocol, clients.

Cluster-side code calls the region with :func:`getRegionClient` (added with
the cluster service). Commands each side answers are declared in
:mod:`provisioningserver.rpc.cluster` and :mod:`provisioningserver.rpc.region`.
"""

__all__: list[str] = []
