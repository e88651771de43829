"""Optional mutual TLS on the RPC channel.

Plain TCP is the default. When a process is given a CA certificate and its
own certificate and key (``MAAS_RPC_TLS_CA``, ``MAAS_RPC_TLS_CERT``,
``MAAS_RPC_TLS_KEY``), TLS is **required** on that process, with no fallback:

* the cluster sends AMP's ``StartTLS`` as its first command;
* the region answers it, and starts its own handshake calls only once TLS is
  up; until then it dispatches nothing but ``StartTLS``;
* each side verifies the other's certificate against the CA, and checks the
  certificate's *role*: a certificate's subject carries the organisational
  unit ``maas-rpc region`` or ``maas-rpc cluster``, so a cluster's
  certificate cannot pose as a region's;
* the HMAC handshake then runs inside TLS as usual.

A peer with a certificate from another CA, or of the wrong role, is dropped
with a clear log line. ``maas-rpc tls-init DIR`` (:func:`makeTestPKI`) makes
a CA and region and cluster certificates for a test or demo installation.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import ssl

from provisioningserver.config import ConfigError
from provisioningserver.security import (
    SecretError,
    ensure_private_directory,
    read_private_file,
)

__all__ = [
    "CLUSTER_ROLE",
    "REGION_ROLE",
    "TLSConfig",
    "certificateRole",
    "makeTestPKI",
]

#: The organisational unit of a region event-loop's certificate.
REGION_ROLE = "maas-rpc region"

#: The organisational unit of a cluster's certificate.
CLUSTER_ROLE = "maas-rpc cluster"

#: The largest certificate or private key file read.
MAX_PEM_BYTES = 1 << 20


def certificateRole(certificate: Any) -> str | None:
    """Return the role a certificate carries.

    :param certificate: a :class:`twisted.internet.ssl.Certificate` (or a
        pyOpenSSL ``X509``).
    :return: :data:`REGION_ROLE`, :data:`CLUSTER_ROLE`, another
        organisational unit, or ``None`` when it has none.
    """
    from cryptography.x509.oid import NameOID

    x509 = getattr(certificate, "original", certificate)
    if hasattr(x509, "to_cryptography"):
        x509 = x509.to_cryptography()
    units = x509.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return str(units[0].value) if units else None


@dataclass(frozen=True)
class TLSConfig:
    """A process's TLS material.

    :ivar authority: the CA certificate peers must be signed by.
    :ivar certificate: this process's certificate, with its private key.
    :ivar role: this process's role (:data:`REGION_ROLE` or
        :data:`CLUSTER_ROLE`).
    """

    authority: ssl.Certificate
    certificate: ssl.PrivateCertificate
    role: str

    @property
    def peerRole(self) -> str:
        """The role a peer's certificate must carry."""
        return CLUSTER_ROLE if self.role == REGION_ROLE else REGION_ROLE

    @classmethod
    def load(
        cls,
        ca: str | os.PathLike[str],
        cert: str | os.PathLike[str],
        key: str | os.PathLike[str],
        role: str,
    ) -> TLSConfig:
        """Load PEM files and check that the certificate fits ``role``.

        :param ca: the CA certificate file.
        :param cert: this process's certificate file.
        :param key: its private key file.
        :param role: the role this process plays.
        :return: the configuration.
        :raises ConfigError: when a file is missing or malformed, or the
            certificate carries another role.
        """
        try:
            keyPEM = read_private_file(key, limit=MAX_PEM_BYTES, what="a TLS key")
            caPEM, certPEM = (
                read_private_file(
                    path, limit=MAX_PEM_BYTES, what="a certificate", private=False
                )
                for path in (ca, cert)
            )
            authority = ssl.Certificate.loadPEM(caPEM)
            certificate = ssl.PrivateCertificate.loadPEM(certPEM + b"\n" + keyPEM)
        except SecretError as error:
            raise ConfigError(str(error)) from None
        except OSError as error:
            raise ConfigError(f"cannot read TLS material: {error}") from None
        except Exception as error:  # noqa: BLE001 - pyOpenSSL raises many types
            raise ConfigError(f"malformed TLS material: {error}") from None
        found = certificateRole(certificate)
        if found != role:
            raise ConfigError(
                f"MAAS_RPC_TLS_CERT={str(cert)!r} carries the role {found!r}; this "
                f"process needs a certificate for {role!r}"
            )
        return cls(authority=authority, certificate=certificate, role=role)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None, role: str) -> TLSConfig | None:
        """Read ``MAAS_RPC_TLS_CA``, ``MAAS_RPC_TLS_CERT`` and
        ``MAAS_RPC_TLS_KEY``.

        :param environ: the environment; ``os.environ`` when ``None``.
        :param role: the role this process plays.
        :return: the configuration, or ``None`` when none of the three is set.
        :raises ConfigError: when only some are set, or the material is bad.
        """
        env = os.environ if environ is None else environ
        names = ("MAAS_RPC_TLS_CA", "MAAS_RPC_TLS_CERT", "MAAS_RPC_TLS_KEY")
        values = [(env.get(name) or "").strip() for name in names]
        if not any(values):
            return None
        missing = [name for name, value in zip(names, values, strict=True) if not value]
        if missing:
            raise ConfigError(
                f"TLS needs all of {', '.join(names)}; {', '.join(missing)} is not set"
            )
        return cls.load(values[0], values[1], values[2], role)


def makeTestPKI(directory: str | os.PathLike[str], days: int = 365) -> dict[str, Path]:
    """Make a CA, and a region and a cluster certificate signed by it.

    Meant for tests and demonstrations, not production: keys are written
    unencrypted (mode 0600). Each file is written to a new temporary file and
    renamed into place, so a symlink planted where a file goes is replaced,
    never followed, and existing files end with the modes above; the
    directory is created mode 0700 if it does not exist.

    :param directory: where to write ``ca.pem``, ``ca-key.pem``,
        ``region.pem``, ``region-key.pem``, ``cluster.pem`` and
        ``cluster-key.pem``.
    :param days: how long the certificates are valid.
    :return: the files written, by name (``"ca"``, ``"region"``,
        ``"region-key"``, ...).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    out = ensure_private_directory(directory)
    now = datetime.datetime.now(datetime.UTC)
    written: dict[str, Path] = {}

    def name(common: str, unit: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "maas-rpc"),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
                x509.NameAttribute(NameOID.COMMON_NAME, common),
            ]
        )

    def write(stem: str, data: bytes, private: bool = False) -> None:
        # A new file beside the target (O_EXCL and O_NOFOLLOW: nothing
        # planted there is followed), its mode set whatever the umask, then
        # renamed over the target: a symlink planted at the target is
        # replaced, not followed, and an old file's mode does not survive.
        path = out / f"{stem}.pem"
        temp = out / f".{stem}.pem.{os.getpid()}.{os.urandom(4).hex()}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temp, flags, 0o600)
        try:
            os.fchmod(fd, 0o600 if private else 0o644)
            with os.fdopen(fd, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        written[stem] = path

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("maas-rpc test CA", "maas-rpc authority")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    write("ca", ca_cert.public_bytes(serialization.Encoding.PEM))
    write("ca-key", key_pem(ca_key), private=True)

    for stem, role in (("region", REGION_ROLE), ("cluster", CLUSTER_ROLE)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(f"maas-rpc {stem}", role))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(
                x509.BasicConstraints(ca=False, path_length=None), critical=True
            )
            .sign(ca_key, hashes.SHA256())
        )
        write(stem, cert.public_bytes(serialization.Encoding.PEM))
        write(f"{stem}-key", key_pem(key), private=True)
    return written
