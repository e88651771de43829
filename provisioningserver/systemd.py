"""Readiness notification: systemd's ``sd_notify`` and ``maas-rpc region``'s.

A process tells whoever started it that it serves (``READY=1``), that it
stops (``STOPPING=1``), or why it could not start, through one of:

* ``NOTIFY_SOCKET`` (set by systemd for ``Type=notify`` units): one
  datagram per message to that UNIX socket (a leading ``@`` names an
  abstract socket). This module writes the datagram itself; it needs no
  library.
* ``MAAS_RPC_NOTIFY_FD`` (set by ``maas-rpc region`` for its workers): one
  line per message on that pipe. The supervisor learns from it when a worker
  serves, and a worker that cannot start sends its one-line error as
  ``ERROR=...``.

Without either, :func:`notify` does nothing.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

__all__ = ["notify", "notifyError", "notifyReady", "notifyStopping"]


def notify(*states: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``states`` (``"READY=1"``, ``"STATUS=..."``) to the supervisor.

    :param states: ``KEY=value`` assignments, as ``sd_notify`` takes.
    :param environ: the environment; ``os.environ`` when ``None``.
    :return: whether they were sent anywhere.
    """
    env = os.environ if environ is None else environ
    message = "\n".join(state.replace("\n", " ") for state in states)
    sent = False
    fd = env.get("MAAS_RPC_NOTIFY_FD", "").strip()
    if fd.isdigit():
        try:
            os.write(int(fd), (message + "\n").encode("utf-8", "replace"))
            sent = True
        except OSError:
            pass
    path = env.get("NOTIFY_SOCKET", "")
    if path:
        address = "\0" + path[1:] if path.startswith("@") else path
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(address)
                sock.sendall(message.encode("utf-8", "replace"))
            sent = True
        except OSError:
            pass
    return sent


def notifyReady(status: str = "") -> bool:
    """Say that this process serves.

    :param status: a one-line status to show (``systemctl status``).
    :return: whether it was sent anywhere.
    """
    states = ["READY=1", f"MAINPID={os.getpid()}"]
    if status:
        states.append(f"STATUS={status}")
    return notify(*states)


def notifyStopping() -> bool:
    """Say that this process is stopping.

    :return: whether it was sent anywhere.
    """
    return notify("STOPPING=1")


def notifyError(message: str) -> bool:
    """Say why this process could not start (``maas-rpc region`` prints it).

    :param message: the one-line error.
    :return: whether it was sent anywhere.
    """
    return notify(f"ERROR={message}", f"STATUS={message}")
