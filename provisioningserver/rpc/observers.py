"""Watching the RPC layer: calls, connections, handshakes, reconnects.

A process may install one observer (an
:class:`~provisioningserver.rpc.interfaces.IRPCObserver` provider, such as a
metrics exporter) with :func:`setObserver`. The RPC layer tells it
about every call it makes or answers, every connection that enters or leaves
the handshake or the rotation, every failed handshake and every
reconnection. With no observer installed (the default) the cost is one
global lookup per call.
"""

from __future__ import annotations

import time
from typing import Any

from provisioningserver.rpc.interfaces import IRPCObserver

__all__ = [
    "IRPCObserver",
    "callCompleted",
    "connectionChanged",
    "current",
    "handshakeFailed",
    "reconnected",
    "setObserver",
]


#: The installed observer, or ``None``.
current: Any = None


def setObserver(observer: Any) -> None:
    """Install ``observer`` (or remove the current one with ``None``).

    :param observer: an
        :class:`~provisioningserver.rpc.interfaces.IRPCObserver` provider, or
        ``None``.
    """
    global current
    current = observer


def _name(command: bytes | str) -> str:
    if isinstance(command, bytes):
        return command.decode("ascii", "replace")
    return command


def callCompleted(
    command: bytes | str, direction: str, error: bytes | str | None, started: float
) -> None:
    """Tell the observer, if any, that a call ended.

    :param command: the command's wire name.
    :param direction: ``"out"`` or ``"in"``.
    :param error: the error code, or ``None``.
    :param started: when it started, in :func:`time.monotonic` seconds.
    """
    observer = current
    if observer is not None:
        observer.callCompleted(
            _name(command),
            direction,
            None if error is None else _name(error),
            time.monotonic() - started,
        )


def connectionChanged(side: str, state: str, delta: int) -> None:
    """Tell the observer, if any, that a connection changed state.

    :param side: ``"region"`` or ``"cluster"``.
    :param state: ``"handshake"`` or ``"authenticated"``.
    :param delta: ``1`` or ``-1``.
    """
    observer = current
    if observer is not None:
        observer.connectionChanged(side, state, delta)


def handshakeFailed(side: str, reason: str) -> None:
    """Tell the observer, if any, that a handshake failed.

    :param side: ``"region"`` or ``"cluster"``.
    :param reason: see
        :meth:`~provisioningserver.rpc.interfaces.IRPCObserver.handshakeFailed`.
    """
    observer = current
    if observer is not None:
        observer.handshakeFailed(side, reason)


def reconnected(side: str) -> None:
    """Tell the observer, if any, that a lost connection was replaced.

    :param side: ``"region"`` or ``"cluster"``.
    """
    observer = current
    if observer is not None:
        observer.reconnected(side)
