"""Tests for :mod:`provisioningserver.security`."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import provisioningserver
from provisioningserver import security
from provisioningserver.security import (
    MAX_SECRET_FILE_BYTES,
    SECRET_BYTES,
    SECRET_FILENAME,
    InsecureFile,
    MalformedSecret,
    MissingSecret,
    SecretError,
    UnreadableFile,
    calculate_digest,
    digests_match,
    ensure_private_directory,
    get_or_create_shared_secret,
    install_shared_secret,
    read_private_file,
    read_shared_secret,
    to_bin,
    to_hex,
)

# RFC 4231, section 4.2 (test case 1).
RFC4231_KEY = b"\x0b" * 20
RFC4231_DIGEST = bytes.fromhex(
    "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
)

# Computed with `openssl dgst -sha256 -mac HMAC` (and checked with the
# stdlib's hmac module) over message followed by salt.
VECTOR_SECRET = bytes.fromhex("00112233445566778899aabbccddeeff")
VECTOR_MESSAGE = b"challenge-012345"
VECTOR_SALT = b"salt-abcdefghijk"
VECTOR_DIGEST = bytes.fromhex(
    "57fb357fa6e1406ac0e1a6e2602dfd2e447a446c1c2e7e1a24f29e343e54101d"
)

secrets = st.binary(min_size=SECRET_BYTES, max_size=SECRET_BYTES)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write_private(path: Path, content: bytes) -> None:
    """Write a file as a secret file must be: mode 0600."""
    path.write_bytes(content)
    path.chmod(0o600)


def test_constants_and_exception_hierarchy():
    assert SECRET_BYTES == 16
    assert SECRET_FILENAME == "secret"
    assert issubclass(MissingSecret, SecretError)
    assert issubclass(MalformedSecret, SecretError)


# Digests


def test_calculate_digest_rfc4231_test_case_1():
    digest = calculate_digest(RFC4231_KEY, b"Hi Th", b"ere")
    assert digest == RFC4231_DIGEST
    assert calculate_digest(RFC4231_KEY, b"Hi There", b"") == RFC4231_DIGEST
    assert calculate_digest(RFC4231_KEY, b"", b"Hi There") == RFC4231_DIGEST


def test_calculate_digest_independent_vector():
    assert len(VECTOR_SECRET) == len(VECTOR_MESSAGE) == len(VECTOR_SALT) == 16
    expected = hmac.new(
        VECTOR_SECRET, VECTOR_MESSAGE + VECTOR_SALT, hashlib.sha256
    ).digest()
    assert expected == VECTOR_DIGEST
    digest = calculate_digest(VECTOR_SECRET, VECTOR_MESSAGE, VECTOR_SALT)
    assert digest == VECTOR_DIGEST
    assert isinstance(digest, bytes)


def test_calculate_digest_depends_on_every_input():
    base = calculate_digest(VECTOR_SECRET, VECTOR_MESSAGE, VECTOR_SALT)
    other_secret = bytes([VECTOR_SECRET[0] ^ 1]) + VECTOR_SECRET[1:]
    assert calculate_digest(other_secret, VECTOR_MESSAGE, VECTOR_SALT) != base
    assert calculate_digest(VECTOR_SECRET, b"challenge-012346", VECTOR_SALT) != base
    assert calculate_digest(VECTOR_SECRET, VECTOR_MESSAGE, b"salt-abcdefghijl") != base


@given(secret=secrets, message=st.binary(max_size=64), salt=st.binary(max_size=64))
def test_calculate_digest_is_hmac_sha256_of_message_and_salt(secret, message, salt):
    digest = calculate_digest(secret, message, salt)
    assert len(digest) == 32
    assert digest == hmac.new(secret, message + salt, hashlib.sha256).digest()


def test_digests_match():
    digest = calculate_digest(VECTOR_SECRET, VECTOR_MESSAGE, VECTOR_SALT)
    assert digests_match(digest, bytes(digest)) is True
    # Same length, one bit different.
    assert digests_match(digest, digest[:-1] + bytes([digest[-1] ^ 1])) is False
    assert digests_match(digest, bytes(32)) is False
    # Different lengths.
    assert digests_match(digest, digest[:-1]) is False
    assert digests_match(digest, digest + b"\0") is False
    assert digests_match(digest, b"") is False
    assert digests_match(b"", b"") is True


def test_digests_match_uses_compare_digest(monkeypatch):
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", spy)
    assert digests_match(b"a" * 32, b"a" * 32) is True
    assert digests_match(b"a" * 32, b"b" * 32) is False
    assert digests_match(b"a" * 32, b"a" * 31) is False
    assert calls == [
        (b"a" * 32, b"a" * 32),
        (b"a" * 32, b"b" * 32),
        (b"a" * 32, b"a" * 31),
    ]


# Hex forms


@given(secret=secrets)
def test_to_hex_to_bin_round_trip(secret):
    text = to_hex(secret)
    assert text == text.lower()
    assert len(text) == 2 * SECRET_BYTES
    assert to_bin(text) == secret
    assert to_bin(text.encode("ascii")) == secret
    assert to_bin(text.upper()) == secret
    assert to_bin(f" \t{text}\r\n\n") == secret


@pytest.mark.parametrize(
    "text",
    [
        "",
        "zz" * 16,
        "0" * 31,  # Odd length.
        "00" * 15,
        "00" * 17,
        "00" * 8 + " " + "00" * 8,  # Whitespace inside.
        "é" * 32,
        b"\xff" * 32,
        b"00" * 15 + b"\xc3\xa9",
    ],
)
def test_to_bin_refuses_malformed(text):
    with pytest.raises(MalformedSecret):
        to_bin(text)


# Reading and creating the secret file


def test_get_or_create_creates_file(tmp_path):
    path = tmp_path / SECRET_FILENAME
    secret = get_or_create_shared_secret(path)
    assert isinstance(secret, bytes)
    assert len(secret) == SECRET_BYTES
    assert path.read_bytes() == secret.hex().encode("ascii") + b"\n"
    assert mode_of(path) == 0o600
    assert sorted(os.listdir(tmp_path)) == [SECRET_FILENAME]
    assert get_or_create_shared_secret(path) == secret
    assert get_or_create_shared_secret(str(path)) == secret
    assert read_shared_secret(path) == secret


def test_get_or_create_mode_ignores_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        get_or_create_shared_secret(tmp_path / "secret")
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "secret") == 0o600


def test_get_or_create_creates_parent_directories(tmp_path):
    path = tmp_path / "a" / "b" / "secret"
    secret = get_or_create_shared_secret(path)
    assert read_shared_secret(path) == secret


def test_get_or_create_makes_a_fresh_secret_per_file(tmp_path):
    one = get_or_create_shared_secret(tmp_path / "one")
    two = get_or_create_shared_secret(tmp_path / "two")
    assert one != two


def test_get_or_create_keeps_existing_file(tmp_path):
    path = tmp_path / "secret"
    write_private(path, b"00112233445566778899AABBCCDDEEFF")
    before = path.read_bytes()
    assert get_or_create_shared_secret(path) == VECTOR_SECRET
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    "content",
    [
        b"00112233445566778899aabbccddeeff",
        b"00112233445566778899aabbccddeeff\n",
        b"  \t00112233445566778899aabbccddeeff\r\n\n  ",
        b"\n\n00112233445566778899aabbccddeeff",
    ],
)
def test_read_ignores_surrounding_whitespace(tmp_path, content):
    path = tmp_path / "secret"
    write_private(path, content)
    assert read_shared_secret(path) == VECTOR_SECRET
    assert get_or_create_shared_secret(path) == VECTOR_SECRET


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\n",
        b"not hex at all, not hex at all!!",
        b"00112233445566778899aabbccddeeffgg",
        b"00112233445566778899aabbccddee",  # 15 bytes.
        b"00112233445566778899aabbccddeeff00",  # 17 bytes.
        b"00112233445566778899aabbccddeef",  # Odd number of digits.
        b"0011223344556677 8899aabbccddeeff",
        "00112233445566778899aabbccddeeé".encode(),
        b"\xff\xfe" + b"00" * 16,
    ],
)
def test_malformed_file_raises_with_path(tmp_path, content):
    path = tmp_path / "secret"
    write_private(path, content)
    with pytest.raises(MalformedSecret) as info:
        read_shared_secret(path)
    assert str(path) in str(info.value)
    with pytest.raises(MalformedSecret) as info:
        get_or_create_shared_secret(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == content  # Left alone.


def test_read_missing_file_raises(tmp_path):
    path = tmp_path / "secret"
    with pytest.raises(MissingSecret) as info:
        read_shared_secret(path)
    assert str(path) in str(info.value)
    assert not path.exists()


# Several processes racing to create the secret.

RACER = """
import sys
from provisioningserver.security import get_or_create_shared_secret
print("ready", flush=True)
sys.stdin.read()  # Wait until every racer is ready.
print(get_or_create_shared_secret(sys.argv[1]).hex(), flush=True)
"""


def race(path: Path, count: int = 8) -> list[str]:
    """Run ``count`` processes that call get_or_create_shared_secret at once.

    :return: what each printed (the secret's hex), after checking they all
        exited successfully.
    """
    root = Path(provisioningserver.__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(root), env.get("PYTHONPATH")) if p
    )
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        for _ in range(count)
    ]
    try:
        for racer in racers:
            assert racer.stdout.readline() == "ready\n"
        assert not path.exists()
        for racer in racers:  # Release them all at (nearly) the same time.
            racer.stdin.close()
        outputs = [racer.stdout.read().strip() for racer in racers]
        for racer in racers:
            racer.wait(timeout=30)
    finally:
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
                racer.wait()
            racer.stdout.close()
            if not racer.stdin.closed:
                racer.stdin.close()
    assert [racer.returncode for racer in racers] == [0] * count
    return outputs


@pytest.mark.parametrize("attempt", range(3))
def test_get_or_create_race_agrees(tmp_path, attempt):
    path = tmp_path / "secret"
    outputs = race(path)
    assert len(outputs) == 8
    assert len(set(outputs)) == 1, outputs
    assert read_shared_secret(path).hex() == outputs[0]
    assert sorted(os.listdir(tmp_path)) == [SECRET_FILENAME]
    assert mode_of(path) == 0o600


# Installing a copy


@given(secret=secrets)
def test_install_writes_copy(tmp_path_factory, secret):
    directory = tmp_path_factory.mktemp("install")
    path = directory / "secret"
    install_shared_secret(path, secret)
    assert path.read_bytes() == to_hex(secret).encode("ascii") + b"\n"
    assert read_shared_secret(path) == secret
    assert mode_of(path) == 0o600
    assert os.listdir(directory) == ["secret"]


def test_install_replaces_existing_file(tmp_path):
    path = tmp_path / "secret"
    path.write_text("something else entirely\n")
    path.chmod(0o644)
    install_shared_secret(path, VECTOR_SECRET)
    assert read_shared_secret(path) == VECTOR_SECRET
    assert mode_of(path) == 0o600
    install_shared_secret(str(path), RFC4231_KEY[:16])
    assert read_shared_secret(path) == RFC4231_KEY[:16]
    assert sorted(os.listdir(tmp_path)) == ["secret"]


def test_install_then_get_or_create_keeps_it(tmp_path):
    path = tmp_path / "secret"
    install_shared_secret(path, VECTOR_SECRET)
    assert get_or_create_shared_secret(path) == VECTOR_SECRET


@pytest.mark.parametrize("length", [0, 1, 15, 17, 32])
def test_install_refuses_wrong_length(tmp_path, length):
    path = tmp_path / "secret"
    write_private(path, to_hex(VECTOR_SECRET).encode())
    with pytest.raises(MalformedSecret, match=str(length)):
        install_shared_secret(path, b"\x01" * length)
    assert read_shared_secret(path) == VECTOR_SECRET
    assert sorted(os.listdir(tmp_path)) == ["secret"]


def test_install_refuses_text_and_leaves_nothing_behind(tmp_path):
    """A str of the right length is refused cleanly.

    BUG: it fails with AttributeError (``str.hex``) from inside
    ``_write_temp``, after the temporary file was created, which is then left
    in the directory.
    """
    path = tmp_path / "secret"
    with pytest.raises((TypeError, MalformedSecret)):
        install_shared_secret(path, "0123456789abcdef")
    assert os.listdir(tmp_path) == []


# Files that hold secrets (issue 13, row 15).


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666, 0o620, 0o602])
def test_a_secret_that_group_or_others_may_read_or_write_is_refused(tmp_path, mode):
    path = tmp_path / "secret"
    write_private(path, to_hex(VECTOR_SECRET).encode())
    path.chmod(mode)
    with pytest.raises(InsecureFile) as info:
        read_shared_secret(path)
    message = str(info.value)
    assert "\n" not in message
    assert f"mode {mode:04o}" in message
    assert f"chmod 600 {path}" in message
    assert ("readable" in message) == bool(mode & 0o044)
    assert ("writable" in message) == bool(mode & 0o022)
    # Refused, not repaired: the operator is told, the file is left alone.
    assert mode_of(path) == mode
    with pytest.raises(InsecureFile):
        get_or_create_shared_secret(path)


def test_a_directory_is_refused_in_one_line(tmp_path):
    with pytest.raises(UnreadableFile, match="is a directory") as info:
        read_shared_secret(tmp_path)
    assert "\n" not in str(info.value)
    with pytest.raises(UnreadableFile, match="is a directory"):
        get_or_create_shared_secret(tmp_path)


def test_a_device_is_refused_without_reading_it():
    with pytest.raises(UnreadableFile, match="not a regular file"):
        read_shared_secret("/dev/zero")


def test_a_pipe_is_refused_without_blocking(tmp_path):
    path = tmp_path / "secret"
    os.mkfifo(path, 0o600)
    with pytest.raises(UnreadableFile, match="not a regular file"):
        read_shared_secret(path)


def test_a_large_file_is_refused_without_reading_it_whole(tmp_path):
    path = tmp_path / "secret"
    write_private(path, b" " * MAX_SECRET_FILE_BYTES + b"00" * 16)
    with pytest.raises(UnreadableFile, match=str(MAX_SECRET_FILE_BYTES)):
        read_shared_secret(path)
    # Whitespace within the limit is fine.
    write_private(path, b" " * 100 + to_hex(VECTOR_SECRET).encode())
    assert read_shared_secret(path) == VECTOR_SECRET


def test_an_unreadable_file_is_one_line(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    path = tmp_path / "secret"
    write_private(path, to_hex(VECTOR_SECRET).encode())
    path.chmod(0)
    with pytest.raises(UnreadableFile, match="Permission denied"):
        read_shared_secret(path)


def test_read_private_file_takes_its_own_limit_and_name(tmp_path):
    path = tmp_path / "key.pem"
    write_private(path, b"x" * 100)
    assert read_private_file(path, limit=100, what="a key") == b"x" * 100
    with pytest.raises(UnreadableFile, match="a key"):
        read_private_file(path, limit=99, what="a key")
    with pytest.raises(MissingSecret, match="no key at"):
        read_private_file(tmp_path / "nothing", what="a key")


def test_a_new_data_directory_is_private(tmp_path):
    old = os.umask(0o022)
    try:
        data = tmp_path / "a" / "data"
        get_or_create_shared_secret(data / "secret")
    finally:
        os.umask(old)
    assert mode_of(data) == 0o700
    assert mode_of(data / "secret") == 0o600
    # An existing directory is left as it is.
    other = tmp_path / "other"
    other.mkdir(mode=0o755)
    ensure_private_directory(other)
    assert mode_of(other) == 0o755


def test_the_secret_file_is_0600_whatever_the_umask(tmp_path):
    old = os.umask(0o777)
    try:
        install_shared_secret(tmp_path / "secret", VECTOR_SECRET)
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "secret") == 0o600
    assert read_shared_secret(tmp_path / "secret") == VECTOR_SECRET


def test_a_dangling_symlink_is_not_followed_to_create_a_secret(tmp_path):
    target = tmp_path / "elsewhere"
    path = tmp_path / "secret"
    path.symlink_to(target)
    with pytest.raises(MissingSecret):
        get_or_create_shared_secret(path)
    assert not target.exists()
