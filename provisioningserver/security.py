"""The shared secret, and the digests that prove a peer knows it.

Region and clusters authenticate each other with a secret they share: 16
random bytes, kept as lowercase hexadecimal text in a file named ``secret``
(mode 0600). The first region process on a host that finds no such file
creates it, atomically, so that several processes starting at once agree on
one secret. Clusters are given a copy of the file (:func:`install_shared_secret`).

A peer proves it knows the secret by answering a challenge ``message`` with
``HMAC-SHA256(secret, message ‖ salt)`` and a fresh ``salt``
(:func:`calculate_digest`); digests are compared in constant time
(:func:`digests_match`).
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import os
from pathlib import Path

__all__ = [
    "SECRET_BYTES",
    "SECRET_FILENAME",
    "MalformedSecret",
    "MissingSecret",
    "SecretError",
    "calculate_digest",
    "digests_match",
    "get_or_create_shared_secret",
    "install_shared_secret",
    "read_shared_secret",
    "to_bin",
    "to_hex",
]

#: How many random bytes a secret has.
SECRET_BYTES = 16

#: The name of the file that holds the secret in a data directory.
SECRET_FILENAME = "secret"


class SecretError(Exception):
    """The shared secret cannot be used."""


class MissingSecret(SecretError):
    """There is no secret file where one was expected."""


class MalformedSecret(SecretError):
    """The secret file does not hold a secret in the expected form."""


def to_hex(secret: bytes) -> str:
    """Render a secret as lowercase hexadecimal text.

    :param secret: the raw secret.
    :return: its hex form.
    """
    return secret.hex()


def to_bin(text: str | bytes) -> bytes:
    """Parse a secret's hex form; surrounding whitespace is ignored.

    :param text: hexadecimal text, as stored in a ``secret`` file.
    :return: the raw secret.
    :raises MalformedSecret: when the text is not hex, or not
        :data:`SECRET_BYTES` bytes long once decoded.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise MalformedSecret("the secret is not ASCII hex text") from None
    text = text.strip()
    try:
        secret = binascii.unhexlify(text)
    except (binascii.Error, ValueError):
        raise MalformedSecret("the secret is not hex text") from None
    if len(secret) != SECRET_BYTES:
        raise MalformedSecret(
            f"the secret is {len(secret)} bytes; expected {SECRET_BYTES}"
        )
    return secret


def read_shared_secret(path: str | os.PathLike[str]) -> bytes:
    """Read the secret from a ``secret`` file.

    :param path: the file.
    :return: the raw secret.
    :raises MissingSecret: when the file does not exist.
    :raises MalformedSecret: when it does not hold a secret.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MissingSecret(f"no shared secret at {path}") from None
    try:
        return to_bin(data)
    except MalformedSecret as error:
        raise MalformedSecret(f"{path}: {error}") from None


def _write_temp(path: Path, secret: bytes) -> Path:
    """Write ``secret`` to a new temporary file beside ``path``.

    The file is created with ``O_CREAT | O_EXCL`` and mode 0600, and synced
    to disk before this returns.

    :return: the temporary file's path.
    """
    text = to_hex(secret) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def _write_new(path: Path, secret: bytes) -> bool:
    """Create ``path`` holding ``secret`` unless it exists.

    The secret is written to a temporary file, then hard-linked into place.
    The link fails if ``path`` exists, so of several processes racing exactly
    one wins, and nobody can ever read a half-written file.

    :return: ``True`` when this call created the file.
    """
    temp = _write_temp(path, secret)
    try:
        os.link(temp, path)
    except FileExistsError:
        return False
    finally:
        temp.unlink(missing_ok=True)
    return True


def get_or_create_shared_secret(path: str | os.PathLike[str]) -> bytes:
    """Return the host's secret, creating the file if nobody has yet.

    This is what a region process calls when it starts.

    :param path: the ``secret`` file.
    :return: the raw secret (the one in the file, whoever wrote it).
    :raises MalformedSecret: when an existing file does not hold a secret.
    """
    path = Path(path)
    if not path.exists():
        _write_new(path, os.urandom(SECRET_BYTES))
    return read_shared_secret(path)


def install_shared_secret(path: str | os.PathLike[str], secret: bytes) -> None:
    """Write a copy of the secret, replacing any file already there.

    This is how a cluster is given the region's secret. The new file appears
    atomically (written beside ``path``, then renamed over it), mode 0600.

    :param path: where to write.
    :param secret: the raw secret.
    :raises TypeError: when ``secret`` is not :class:`bytes`.
    :raises MalformedSecret: when ``secret`` is not :data:`SECRET_BYTES` long.
    """
    if not isinstance(secret, bytes):
        raise TypeError(f"the secret must be bytes; not {type(secret).__name__}")
    if len(secret) != SECRET_BYTES:
        raise MalformedSecret(
            f"the secret is {len(secret)} bytes; expected {SECRET_BYTES}"
        )
    temp = _write_temp(Path(path), secret)
    try:
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def calculate_digest(secret: bytes, message: bytes, salt: bytes) -> bytes:
    """Compute the answer to an authentication challenge.

    :param secret: the raw shared secret (the HMAC key).
    :param message: the challenge the peer sent.
    :param salt: fresh random bytes chosen by the answering side.
    :return: the raw 32-byte ``HMAC-SHA256(secret, message ‖ salt)``.
    """
    return hmac.new(secret, message + salt, hashlib.sha256).digest()


def digests_match(expected: bytes, received: bytes) -> bool:
    """Compare two digests in constant time.

    :param expected: the digest computed locally.
    :param received: the digest the peer sent.
    :return: whether they are equal.
    """
    return hmac.compare_digest(expected, received)
