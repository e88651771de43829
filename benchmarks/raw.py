"""The baseline: stock Twisted AMP, with nothing of maas-rpc on the wire path.

:class:`RawEatCheez` is wire-identical to
:class:`provisioningserver.rpc.cluster.EatCheez` (same command name, argument
and response keys and types) but is declared here on Twisted's own
:mod:`twisted.protocols.amp`, so the baseline cannot pick up whatever the
package does to speed up its commands. The responder does the same work as
the cluster's (a copy of :func:`provisioningserver.cheese.rate_cheese`, so
that a raw peer imports nothing of maas-rpc).

The commands that show what maas-rpc's stock path and Deferred handling
cost (:class:`Enlist`, :class:`EatCheezNow`, :class:`EatCheezLater`) are
declared here too, on stock AMP; the simulated clusters answer the very same
classes (:mod:`benchmarks.cluster`), with the same work (:func:`answerEnlist`,
:func:`rateNow`, :func:`rateLater`).

Raw AMP over TLS uses the same crypto as maas-rpc's secure channel
(:mod:`provisioningserver.rpc.channel`), built here from Twisted and
``cryptography`` alone: TLS 1.3, a throwaway self-signed certificate for a
fresh P-256 key on the listening side, no certificate on the connecting side,
and nobody verifies (:func:`tlsServerOptions`, :func:`tlsClientOptions`).
"""

from __future__ import annotations

import datetime
import hashlib
from typing import Any

from twisted.internet import defer, ssl
from twisted.internet.protocol import Factory, connectionDone
from twisted.protocols import amp
from twisted.python.failure import Failure

__all__ = [
    "NAME",
    "NETWORKS",
    "ORIGIN",
    "URL",
    "EatCheezLater",
    "EatCheezNow",
    "Enlist",
    "RawCheeseServer",
    "RawClient",
    "RawEatCheez",
    "answerEnlist",
    "rateLater",
    "rateNow",
    "rawFactory",
    "tlsClientOptions",
    "tlsDescription",
    "tlsServerOptions",
]

#: The arguments every benchmark call sends: two short Unicode strings.
NAME = "Brie"
ORIGIN = "France"


def rate_cheese(name: str, origin: str) -> int:
    """The same computation as :func:`provisioningserver.cheese.rate_cheese`."""
    if not name.strip() or name.strip().casefold() in ("cheez whiz", "squirty cheese"):
        raise ValueError(f"{name} is not cheese")
    return hashlib.sha256(f"{name}\0{origin}".encode()).digest()[0] % 10 + 1


class RawEatCheez(amp.Command):
    """``EatCheez`` declared on stock AMP."""

    commandName = b"EatCheez"
    arguments = [(b"name", amp.Unicode()), (b"origin", amp.Unicode())]
    response = [(b"rating", amp.Integer())]


class Enlist(amp.Command):
    """A ``Register``-like command: an ``AmpList`` and optional arguments,
    so that maas-rpc cannot take its common path for it (see
    :mod:`provisioningserver.rpc.codec`) and stock AMP's path is measured.

    Shaped as MAAS's ``Register``: ``uuid``; optional ``networks`` (an
    ``AmpList`` of ``interface``, ``ip``, ``subnet_mask``), ``url`` and
    ``ip_addr_json``; an empty answer.
    """

    commandName = b"Enlist"
    arguments = [
        (b"uuid", amp.Unicode()),
        (
            b"networks",
            amp.AmpList(
                [
                    (b"interface", amp.Unicode()),
                    (b"ip", amp.Unicode()),
                    (b"subnet_mask", amp.Unicode()),
                ],
                optional=True,
            ),
        ),
        (b"url", amp.Unicode(optional=True)),
        (b"ip_addr_json", amp.Unicode(optional=True)),
    ]
    response = []


class EatCheezNow(amp.Command):
    """``EatCheez``'s arguments and answer, answered by a responder that
    returns a Deferred that has already fired."""

    commandName = b"EatCheezNow"
    arguments = RawEatCheez.arguments
    response = RawEatCheez.response


class EatCheezLater(amp.Command):
    """``EatCheez``'s arguments and answer, answered by a responder that
    returns a Deferred fired by the reactor (``callLater(0)``)."""

    commandName = b"EatCheezLater"
    arguments = RawEatCheez.arguments
    response = RawEatCheez.response


#: What every :class:`Enlist` call sends: three networks and a URL (the
#: optional ``ip_addr_json`` is left out).
NETWORKS = [
    {"interface": f"eth{n}", "ip": f"10.{n}.0.2", "subnet_mask": "255.255.255.0"}
    for n in range(3)
]
URL = "http://127.0.0.1:5240/MAAS"


def answerEnlist(
    uuid: str,
    networks: list[dict[str, str]] | None = None,
    url: str | None = None,
    ip_addr_json: str | None = None,
) -> dict[str, Any]:
    """:class:`Enlist`'s work: check the arguments arrived, answer nothing.

    :raises ValueError: when an argument is missing or malformed.
    """
    if not uuid or url is None or len(networks or ()) != len(NETWORKS):
        raise ValueError("Enlist arrived incomplete")
    return {}


def rateNow(name: str, origin: str) -> defer.Deferred[dict[str, int]]:
    """:class:`EatCheezNow`'s work: a Deferred that has already fired."""
    return defer.succeed({"rating": rate_cheese(name, origin)})


def rateLater(reactor: Any, name: str, origin: str) -> defer.Deferred[dict[str, int]]:
    """:class:`EatCheezLater`'s work: a Deferred the reactor fires on its
    next iteration (``callLater(0)``)."""
    from twisted.internet.task import deferLater

    return deferLater(reactor, 0, lambda: {"rating": rate_cheese(name, origin)})


class RawCheeseServer(amp.AMP):
    """A plain :class:`amp.AMP` that answers :class:`RawEatCheez`,
    :class:`Enlist`, :class:`EatCheezNow` and :class:`EatCheezLater`."""

    factory: Any = None

    @RawEatCheez.responder
    def eatCheez(self, name: str, origin: str) -> dict[str, int]:
        return {"rating": rate_cheese(name, origin)}

    @Enlist.responder
    def enlist(self, **kwargs: Any) -> dict[str, Any]:
        return answerEnlist(**kwargs)

    @EatCheezNow.responder
    def eatCheezNow(self, name: str, origin: str) -> defer.Deferred[dict[str, int]]:
        return rateNow(name, origin)

    @EatCheezLater.responder
    def eatCheezLater(self, name: str, origin: str) -> defer.Deferred[dict[str, int]]:
        from twisted.internet import reactor

        return rateLater(reactor, name, origin)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        if self.factory is not None:
            self.factory.open.discard(self)


class RawClient(amp.AMP):
    """A plain :class:`amp.AMP` whose ``onConnectionLost`` fires when its
    connection is closed (for closing many and waiting)."""

    def __init__(self) -> None:
        super().__init__()
        self.onConnectionLost: defer.Deferred[None] = defer.Deferred()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.onConnectionLost.callback(None)


def rawFactory(counter: list[Any] | None = None) -> Factory:
    """A factory of :class:`RawCheeseServer`; ``counter`` collects the
    protocols it builds, when given. Its ``open`` attribute is the set of
    its protocols still connected."""

    class _Factory(Factory):
        noisy = False

        def __init__(self) -> None:
            self.open: set[RawCheeseServer] = set()

        def buildProtocol(self, addr: Any) -> RawCheeseServer:
            proto = RawCheeseServer()
            proto.factory = self
            self.open.add(proto)
            if counter is not None:
                counter.append(proto)
            return proto

    return _Factory()


_server: ssl.CertificateOptions | None = None
_client: ssl.CertificateOptions | None = None


def tlsServerOptions() -> ssl.CertificateOptions:
    """The listening side's TLS options, made once per process: TLS 1.3 and a
    throwaway self-signed certificate for a fresh P-256 key, as
    :func:`provisioningserver.rpc.channel.tlsOptions` makes them for the
    secure channel. The peer's certificate is neither asked for nor
    verified."""
    global _server
    if _server is None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "raw AMP")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(key, hashes.SHA256())
        )
        pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        private = ssl.PrivateCertificate.loadPEM(pem)
        _server = ssl.CertificateOptions(
            privateKey=private.privateKey.original,
            certificate=private.original,
            raiseMinimumTo=ssl.TLSVersion.TLSv1_3,
        )
    return _server


def tlsClientOptions() -> ssl.CertificateOptions:
    """The connecting side's TLS options, made once per process: TLS 1.3, no
    certificate, and the server's is not verified (as the secure channel's
    connecting side)."""
    global _client
    if _client is None:
        _client = ssl.CertificateOptions(raiseMinimumTo=ssl.TLSVersion.TLSv1_3)
    return _client


def tlsDescription(transport: Any) -> str | None:
    """What a TLS connection negotiated, e.g. ``TLSv1.3
    TLS_AES_256_GCM_SHA384 X25519``; ``None`` when ``transport`` has no
    TLS."""
    handle = transport.getHandle()
    version = getattr(handle, "get_protocol_version_name", None)
    if version is None:
        return None
    group = getattr(handle, "get_group_name", lambda: None)()
    return " ".join(
        str(part) for part in (version(), handle.get_cipher_name(), group) if part
    )
