"""Utilities for the region side of maas-rpc.

Region code may import :mod:`provisioningserver.utils`; the reverse never
happens.
"""

__all__: list[str] = []
