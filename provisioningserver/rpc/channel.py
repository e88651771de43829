"""The secure channel: TLS keyed to the shared secret, with nothing to
provision.

Between two maas-rpc peers every connection is encrypted and
integrity-protected, and the proof that each side knows the shared secret is
bound to that very connection, so a proof relayed or replayed onto another
connection never verifies:

1. The connecting side (a cluster) sends :class:`SecureChannel` as its first
   box, with the capabilities it supports; the accepting side (a region
   event-loop) waits for that first box and answers with its own, then both
   start TLS (1.3) right after the answer. No certificate is verified: each
   process presents one throwaway self-signed certificate
   (:func:`throwawayCertificate`), or, with ``MAAS_RPC_TLS_*``, its
   CA-issued certificate, which is then verified (mutual TLS).
2. Inside TLS, MAAS's ``Authenticate`` exchange runs with its wire format
   unchanged, but each digest also covers the channel: 32 bytes of TLS
   keying material exported from this connection (RFC 5705, as RFC 9266's
   ``tls-exporter`` binding), the answering side's role, and the
   capabilities both sides announced in the clear (:func:`boundDigest`). A
   man in the middle holds two different TLS connections with two different
   exported keys, so nothing it forwards verifies; a reflected challenge is
   answered for the wrong role.

A peer whose first box is anything but ``SecureChannel`` (or that answers it
``UNHANDLED``) is a legacy peer: a MAAS region or cluster, or someone
pretending to be one. It is refused unless the operator allows legacy peers
(``MAAS_RPC_ALLOW_LEGACY_PEERS=1``), in which case the plain MAAS handshake
runs, as MAAS itself runs it, with MAAS's weaknesses (see the security
documentation). Which mode a connection uses is decided before either side
answers a challenge.

Why not TLS with a pre-shared key, which would need no certificate at all:
neither pyOpenSSL nor Python's :mod:`ssl` module offers TLS-PSK on the
versions this package supports.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
from typing import Any

from twisted.internet import ssl

from provisioningserver.rpc.chunking import CHUNKED_VALUES
from provisioningserver.twisted.protocols import amp

__all__ = [
    "CAPABILITIES",
    "EXPORTER_LABEL",
    "LEGACY",
    "MTLS",
    "MUTUAL_TLS",
    "SECURE",
    "SecureChannel",
    "boundDigest",
    "capabilityTranscript",
    "exportBinding",
    "parseCapabilities",
    "tlsOptions",
    "throwawayCertificate",
]

#: The mode of a connection over the secure channel.
SECURE = "secure"

#: The mode of a connection over mutual TLS with CA-issued certificates.
MTLS = "mtls"

#: The mode of a connection with a legacy (MAAS) peer: plain TCP.
LEGACY = "legacy"

#: What this package announces it supports.
CAPABILITIES = frozenset({CHUNKED_VALUES})

#: Announced by a side configured for mutual TLS (``MAAS_RPC_TLS_*``), so
#: that a mismatch is refused with a clear reason rather than a failed TLS
#: handshake.
MUTUAL_TLS = "mutual-tls"

#: The label of the keying material the digests are bound to.
EXPORTER_LABEL = b"EXPORTER-maas-rpc-channel"

_BINDING_BYTES = 32
_DIGEST_CONTEXT = b"maas-rpc channel v1\0"
_MAX_CAPABILITIES = 16
_MAX_CAPABILITY_LENGTH = 64


class SecureChannel(amp.Command):
    """Ask the peer to secure this connection (the first box a maas-rpc
    cluster sends).

    The peer answers with the capabilities it supports, and both sides
    start TLS right after the answer (see :mod:`provisioningserver.rpc.channel`).
    A MAAS region does not know the command and answers ``UNHANDLED``.

    Arguments: ``capabilities`` (optional list of Unicode), what the caller
    supports, e.g. ``chunked-values``. Response: ``capabilities``, what the
    peer supports.

    :since: 2.0
    """

    arguments = [(b"capabilities", amp.ListOf(amp.Unicode(), optional=True))]
    response = [(b"capabilities", amp.ListOf(amp.Unicode(), optional=True))]


def parseCapabilities(value: list[str] | None) -> frozenset[str]:
    """Check capabilities a peer announced.

    :param value: the decoded ``capabilities`` argument (or ``None``).
    :return: them, as a set.
    :raises ValueError: when there are too many or one is too long.
    """
    if not value:
        return frozenset()
    if len(value) > _MAX_CAPABILITIES or any(
        len(name) > _MAX_CAPABILITY_LENGTH for name in value
    ):
        raise ValueError("too many or too long capabilities")
    return frozenset(value)


def capabilityTranscript(cluster: frozenset[str], region: frozenset[str]) -> bytes:
    """Hash what each side announced in the clear, for the digests.

    :param cluster: what the cluster announced.
    :param region: what the region announced.
    :return: 32 bytes.
    """
    text = "cluster\0" + "\n".join(sorted(cluster)) + "\0region\0"
    text += "\n".join(sorted(region))
    return hashlib.sha256(text.encode("utf-8")).digest()


def boundDigest(
    secret: bytes,
    answerer: bytes,
    binding: bytes,
    transcript: bytes,
    message: bytes,
    salt: bytes,
) -> bytes:
    """The ``Authenticate`` digest over the secure channel.

    :param secret: the raw shared secret.
    :param answerer: the answering side's role tag
        (:data:`~provisioningserver.rpc.handshake.REGION` or
        :data:`~provisioningserver.rpc.handshake.CLUSTER`).
    :param binding: the channel's exported keying material
        (:func:`exportBinding`).
    :param transcript: :func:`capabilityTranscript` of the negotiation.
    :param message: the challenge.
    :param salt: the answerer's fresh salt.
    :return: 32 bytes of HMAC-SHA256.
    """
    data = _DIGEST_CONTEXT + answerer + b"\0" + binding + transcript + message + salt
    return hmac.new(secret, data, hashlib.sha256).digest()


def exportBinding(transport: Any) -> bytes:
    """Export this connection's keying material (RFC 5705).

    :param transport: a transport on which TLS is up.
    :return: 32 bytes, the same on both ends of this TLS connection only.
    :raises ValueError: when the transport has no TLS connection.
    """
    connection = transport.getHandle()
    export = getattr(connection, "export_keying_material", None)
    if export is None:
        raise ValueError("the transport has no TLS connection to bind to")
    return bytes(export(EXPORTER_LABEL, _BINDING_BYTES, None))


_throwaway: ssl.PrivateCertificate | None = None
# (side, id(tls)) -> (tls, options): the entry keeps tls alive, so its id
# cannot be reused while cached.
_options: dict[tuple[str, int], tuple[Any, ssl.CertificateOptions]] = {}


def throwawayCertificate() -> ssl.PrivateCertificate:
    """Return this process's throwaway certificate for the secure channel.

    A self-signed certificate for a fresh P-256 key, made once per process
    and never verified by anyone: it only lets TLS run. Its key never leaves
    the process.

    :return: the certificate, with its key.
    """
    global _throwaway
    if _throwaway is None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, "maas-rpc secure channel")]
        )
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .sign(key, hashes.SHA256())
        )
        pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _throwaway = ssl.PrivateCertificate.loadPEM(pem)
    return _throwaway


def tlsOptions(server: bool, tls: Any = None) -> ssl.CertificateOptions:
    """Return the TLS options of one side of the secure channel.

    Made once per process and side (and TLS material), so that every
    connection shares one OpenSSL context.

    :param server: ``True`` for the accepting side (which presents a
        certificate), ``False`` for the connecting side.
    :param tls: a :class:`~provisioningserver.rpc.tls.TLSConfig` for mutual
        TLS (both sides present their certificate and verify the peer's
        against the CA), or ``None`` for the secure channel (only the server
        presents a certificate, a throwaway one, and nobody verifies).
    :return: the options.
    """
    key = ("server" if server else "client", id(tls))
    cached = _options.get(key)
    if cached is not None:
        return cached[1]
    minimum = ssl.TLSVersion.TLSv1_3
    if tls is not None:
        options = ssl.CertificateOptions(
            privateKey=tls.certificate.privateKey.original,
            certificate=tls.certificate.original,
            verify=True,
            requireCertificate=True,
            caCerts=[tls.authority.original],
            raiseMinimumTo=minimum,
        )
    elif server:
        cert = throwawayCertificate()
        options = ssl.CertificateOptions(
            privateKey=cert.privateKey.original,
            certificate=cert.original,
            raiseMinimumTo=minimum,
        )
    else:
        options = ssl.CertificateOptions(raiseMinimumTo=minimum)
    _options[key] = (tls, options)
    return options
