"""twistd dropins for maas-rpc: ``maas-regiond`` and ``maas-clusterd``.

Each names its module lazily, so discovering plugins imports neither the
region's nor the cluster's code; a cluster process loads no region code.
"""

from twisted.application.service import ServiceMaker

maas_regiond = ServiceMaker(
    "maas-regiond",
    "maasserver.plugin",
    "A MAAS RPC region event-loop process.",
    "maas-regiond",
)

maas_clusterd = ServiceMaker(
    "maas-clusterd",
    "provisioningserver.plugin",
    "A MAAS RPC cluster process.",
    "maas-clusterd",
)
