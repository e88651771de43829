"""Interfaces of the RPC layer."""

from __future__ import annotations

from zope.interface import Attribute, Interface

__all__ = ["IConnection", "IRPCObserver"]


class IConnection(Interface):
    """An authenticated AMP connection to one peer, as a ``Client`` wraps it.

    Both the region's connections to clusters and a cluster's connections to
    region event-loops provide this.
    """

    ident = Attribute(
        "The peer's identity: a cluster's UUID, or a region event-loop's name "
        "(``<hostname>:pid=<pid>``); ``None`` until known."
    )

    def callRemote(commandType, *a, **kw):
        """Call ``commandType`` on the peer.

        :param commandType: an :class:`amp.Command` subclass.
        :param a: not used by this package's commands.
        :param kw: the command's arguments.
        :return: a Deferred firing with the response dict.
        """

    def getPeerCertificate():
        """Return the peer's TLS certificate.

        :return: an :class:`OpenSSL.crypto.X509`-like object, or ``None`` when
            the connection does not use TLS.
        """

    def getHostCertificate():
        """Return this side's TLS certificate.

        :return: a certificate, or ``None`` when the connection does not use
            TLS.
        """


class IRPCObserver(Interface):
    """Told what the RPC layer does. Every method must return quickly and
    must not raise."""

    def callCompleted(command, direction, error, seconds):
        """A call ended.

        :param command: the command's name (``str``).
        :param direction: ``"out"`` for a call this process made, ``"in"``
            for one it answered.
        :param error: ``None`` on success, else the error code (``str``,
            e.g. ``"UNHANDLED"``, ``"NoSuchCheese"``, ``"TIMEOUT"``,
            ``"CONNECTION_LOST"``).
        :param seconds: how long it took.
        """

    def connectionChanged(side, state, delta):
        """A connection entered (``delta`` = 1) or left (-1) a state.

        :param side: ``"region"`` (this process is a region event-loop) or
            ``"cluster"``.
        :param state: ``"handshake"`` or ``"authenticated"``.
        :param delta: ``1`` or ``-1``.
        """

    def handshakeFailed(side, reason):
        """A handshake failed.

        :param side: ``"region"`` or ``"cluster"``.
        :param reason: one of ``"wrong-secret"``, ``"timeout"``,
            ``"legacy-refused"``, ``"tls"``, ``"protocol"``,
            ``"refused-registration"``.
        """

    def reconnected(side):
        """A lost connection was replaced.

        :param side: ``"region"`` or ``"cluster"``.
        """
