"""The cluster side of maas-rpc, and everything both sides share.

A cluster process imports only this package; it never imports
:mod:`maasserver` (the region side).
"""

__all__: list[str] = []
