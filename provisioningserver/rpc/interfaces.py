"""Interfaces of the RPC layer."""

from __future__ import annotations

from zope.interface import Attribute, Interface

__all__ = ["IConnection"]


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
