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

Files that hold secrets (the ``secret`` file, TLS private keys) are read
with :func:`read_private_file`, which refuses, with one line saying how to
fix it:

* a file that group or others may read or write (any of the mode bits
  ``0o077``): it is refused, not repaired, whoever owns it, because a secret
  others could read may already be known to them, and one others could
  write may not be ours; ``chmod 600`` it (and, if it was exposed, replace
  the secret) and start again;
* anything but a regular file (a directory, a device such as ``/dev/zero``,
  a pipe) and a file larger than the limit (4 KiB for the secret), which
  cannot hold what it should: it is never read whole.

Whatever this module creates is private: files mode 0600, written to a
temporary file beside their target and renamed into place, and the
directories holding them (the data directory) mode 0700.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import os
import stat
from pathlib import Path

__all__ = [
    "MAX_SECRET_FILE_BYTES",
    "SECRET_BYTES",
    "SECRET_FILENAME",
    "InsecureFile",
    "MalformedSecret",
    "MissingSecret",
    "SecretError",
    "UnreadableFile",
    "calculate_digest",
    "digests_match",
    "ensure_private_directory",
    "get_or_create_shared_secret",
    "install_shared_secret",
    "read_private_file",
    "read_shared_secret",
    "to_bin",
    "to_hex",
]

#: How many random bytes a secret has.
SECRET_BYTES = 16

#: The name of the file that holds the secret in a data directory.
SECRET_FILENAME = "secret"

#: The largest ``secret`` file read: 32 hex digits, and room for whitespace.
MAX_SECRET_FILE_BYTES = 4096


class SecretError(Exception):
    """The shared secret cannot be used."""


class MissingSecret(SecretError):
    """There is no secret file where one was expected."""


class MalformedSecret(SecretError):
    """The secret file does not hold a secret in the expected form."""


class InsecureFile(SecretError):
    """A file holding a secret may be read or written by group or others."""


class UnreadableFile(SecretError):
    """A file holding a secret cannot be read: it is not a regular file, it
    is too large, or reading it fails."""


def read_private_file(
    path: str | os.PathLike[str],
    *,
    limit: int = MAX_SECRET_FILE_BYTES,
    what: str = "the shared secret",
    private: bool = True,
) -> bytes:
    """Read a small file that holds a secret, checking it first.

    The file is opened without blocking (a pipe cannot stall it) and
    checked through its open descriptor, so what is checked is what is read.

    :param path: the file.
    :param limit: the most bytes it may hold.
    :param what: what it holds, for messages.
    :param private: whether to refuse a file group or others may read or
        write (``False`` for public material such as certificates, which
        are still bounded and checked to be regular files).
    :return: its content.
    :raises MissingSecret: when it does not exist.
    :raises InsecureFile: when ``private`` and group or others may read or
        write it.
    :raises UnreadableFile: when it is not a regular file, is larger than
        ``limit``, or cannot be read.
    """
    path = Path(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        noun = what.split(" ", 1)[1] if what.startswith(("the ", "a ")) else what
        raise MissingSecret(f"no {noun} at {path}") from None
    except OSError as error:
        raise UnreadableFile(
            f"cannot read {what} at {path}: {error.strerror}"
        ) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise UnreadableFile(f"{path} is a directory, not a file holding {what}")
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableFile(
                f"{path} is not a regular file (a device, pipe or socket), not a "
                f"file holding {what}"
            )
        mode = stat.S_IMODE(info.st_mode)
        if private and mode & 0o077:
            access = " and ".join(
                word
                for bits, word in ((0o044, "readable"), (0o022, "writable"))
                if mode & bits
            )
            raise InsecureFile(
                f"{path} holds {what} but is {access or 'executable'} by group or "
                f"others (mode {mode:04o}): run 'chmod 600 {path}'"
            )
        if info.st_size > limit:
            raise UnreadableFile(
                f"{path} is {info.st_size} bytes, more than {what} can be "
                f"({limit} bytes at most)"
            )
        chunks = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise UnreadableFile(
                f"{path} holds more than {what} can be ({limit} bytes at most)"
            )
        return b"".join(chunks)
    except OSError as error:
        raise UnreadableFile(
            f"cannot read {what} at {path}: {error.strerror}"
        ) from None
    finally:
        os.close(fd)


def ensure_private_directory(path: str | os.PathLike[str]) -> Path:
    """Create a directory for secrets, mode 0700, unless it exists.

    Missing parents are created as ``mkdir -p`` would; an existing directory
    is left as it is.

    :param path: the directory.
    :return: it, as a :class:`~pathlib.Path`.
    :raises OSError: when it cannot be created.
    """
    path = Path(path)
    if path.is_dir():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        return path  # Another process made it meanwhile.
    os.chmod(path, 0o700)  # Whatever the umask.
    return path


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
    """Read the secret from a ``secret`` file (see :func:`read_private_file`
    for what is refused).

    :param path: the file.
    :return: the raw secret.
    :raises MissingSecret: when the file does not exist.
    :raises InsecureFile: when group or others may read or write it.
    :raises UnreadableFile: when it is not a regular file, is larger than
        :data:`MAX_SECRET_FILE_BYTES`, or cannot be read.
    :raises MalformedSecret: when it does not hold a secret.
    """
    path = Path(path)
    data = read_private_file(path)
    try:
        return to_bin(data)
    except MalformedSecret as error:
        raise MalformedSecret(f"{path}: {error}") from None


def _write_temp(path: Path, secret: bytes) -> Path:
    """Write ``secret`` to a new temporary file beside ``path``.

    The file is created with ``O_CREAT | O_EXCL | O_NOFOLLOW``, mode 0600
    whatever the umask, and synced to disk before this returns; the
    directory is created mode 0700 if it does not exist.

    :return: the temporary file's path.
    """
    text = to_hex(secret) + "\n"
    ensure_private_directory(path.parent)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
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
    :raises SecretError: when an existing file cannot be used (see
        :func:`read_shared_secret`).
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
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
