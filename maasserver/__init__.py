"""The region side of maas-rpc.

Region code may import :mod:`provisioningserver` (shared and cluster code);
the reverse never happens.
"""

__all__: list[str] = []
