"""Bounds on what a peer may cost before and after it is trusted.

A peer that has not authenticated can still open connections, send asks and
refuse to read answers. These limits keep one such peer from exhausting a
process; a peer over a limit is dropped and logged, and the others are
unaffected.

Environment variables (both sides):

``MAAS_RPC_MAX_UNAUTHENTICATED``
    Connections from one source address that may be in the handshake at
    once (region side; default 100: many clusters may share one address
    behind NAT and reconnect together).
``MAAS_RPC_MAX_UNAUTHENTICATED_TOTAL``
    Connections from all addresses that may be in the handshake at once
    (region side; default 2000). Further connections are closed at once.
``MAAS_RPC_MAX_UNAUTHENTICATED_BYTES``
    Bytes that all connections in the handshake may hold in their buffers
    together (region side; default 32 MiB); the connection whose data
    crosses it is dropped.
``MAAS_RPC_MAX_OUTSTANDING``
    Commands from one connection that may be in progress at once (default
    1000).
``MAAS_RPC_MAX_UNSENT``
    Bytes of answers and calls that may wait in one connection's send buffer
    while the peer does not read (default 64 MiB).
``MAAS_RPC_MAX_VALUE``
    The largest value (an argument or an answer) sent in chunks (default 16
    MiB); larger ones are refused before anything is sent.
``MAAS_RPC_MAX_BOX``
    The most one received call or answer may hold, chunks included, from an
    authenticated peer (default 32 MiB; 64 KiB before authentication). Each
    entry counts its key, its value and 128 bytes of overhead.
``MAAS_RPC_MAX_KEYS``
    The most keys one received box may have from an authenticated peer
    (default 1024, enough for a box of 32 MiB in chunks; 32 before
    authentication).

``MAAS_RPC_MAX_UNAUTHENTICATED_BOX``, ``MAAS_RPC_MAX_UNAUTHENTICATED_KEYS``
    The same two budgets for a peer that has not completed the handshake
    (default 64 KiB and 32 keys).
``MAAS_RPC_MAX_UNAUTHENTICATED_ASKS``
    Commands a peer that has not completed the handshake may have in
    progress at once (default 4; ``Register`` may be pending only once).
``MAAS_RPC_MAX_UNAUTHENTICATED_LIST_ITEMS``
    Items a list argument may have in a command from such a peer (default
    256), counted before anything is decoded.

A peer over any limit is dropped with one log line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from provisioningserver import settings

__all__ = ["DEFAULT_LIMITS", "Limits"]


@dataclass(frozen=True)
class Limits:
    """The limits one process applies to each peer.

    :ivar maxUnauthenticatedPerAddress: connections from one address that may
        be unauthenticated at once.
    :ivar maxOutstandingAsks: commands from one connection that may be in
        progress at once.
    :ivar maxUnsentBytes: bytes that may wait unsent on one connection while
        its peer does not read.
    :ivar maxValueBytes: the largest argument or answer value this side
        sends (larger values travel in chunks); a larger one is refused before
        anything is sent.
    :ivar maxBoxBytes: the most a received box (a call or an answer, chunks
        included) may hold once the peer is authenticated.
    :ivar maxUnauthenticatedBoxBytes: the same, before the peer is
        authenticated.
    :ivar maxKeys: the most keys a received box may have once the peer is
        authenticated.
    :ivar maxUnauthenticatedKeys: the same, before.
    :ivar maxUnauthenticatedAsks: commands a peer may have in progress
        before it is authenticated.
    :ivar maxUnauthenticatedListItems: the most items a list argument of a
        command received before authentication may have.
    :ivar maxUnauthenticatedTotal: connections (from all addresses) that may
        be in the handshake at once.
    :ivar maxUnauthenticatedBytesTotal: bytes that the connections in the
        handshake may hold in their buffers, together.
    """

    maxUnauthenticatedPerAddress: int = 100
    maxOutstandingAsks: int = 1000
    maxUnsentBytes: int = 64 * 1024 * 1024
    maxValueBytes: int = 16 * 1024 * 1024
    maxBoxBytes: int = 32 * 1024 * 1024
    maxUnauthenticatedBoxBytes: int = 64 * 1024
    maxKeys: int = 1024
    maxUnauthenticatedKeys: int = 32
    maxUnauthenticatedAsks: int = 4
    maxUnauthenticatedListItems: int = 256
    maxUnauthenticatedTotal: int = 2000
    maxUnauthenticatedBytesTotal: int = 32 * 1024 * 1024

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Limits:
        """Read the limits from the environment.

        :param environ: the environment; ``os.environ`` when ``None``.
        :return: the limits.
        :raises provisioningserver.config.ConfigError: when a value is not a
            positive whole number.
        """
        env = os.environ if environ is None else environ
        return settings.readInto(
            cls,
            env,
            {
                "maxUnauthenticatedPerAddress": "MAAS_RPC_MAX_UNAUTHENTICATED",
                "maxOutstandingAsks": "MAAS_RPC_MAX_OUTSTANDING",
                "maxUnsentBytes": "MAAS_RPC_MAX_UNSENT",
                "maxValueBytes": "MAAS_RPC_MAX_VALUE",
                "maxBoxBytes": "MAAS_RPC_MAX_BOX",
                "maxKeys": "MAAS_RPC_MAX_KEYS",
                "maxUnauthenticatedBoxBytes": "MAAS_RPC_MAX_UNAUTHENTICATED_BOX",
                "maxUnauthenticatedKeys": "MAAS_RPC_MAX_UNAUTHENTICATED_KEYS",
                "maxUnauthenticatedAsks": "MAAS_RPC_MAX_UNAUTHENTICATED_ASKS",
                "maxUnauthenticatedListItems": (
                    "MAAS_RPC_MAX_UNAUTHENTICATED_LIST_ITEMS"
                ),
                "maxUnauthenticatedTotal": "MAAS_RPC_MAX_UNAUTHENTICATED_TOTAL",
                "maxUnauthenticatedBytesTotal": "MAAS_RPC_MAX_UNAUTHENTICATED_BYTES",
            },
        )


#: The limits a connection applies when it is given none.
DEFAULT_LIMITS = Limits()
