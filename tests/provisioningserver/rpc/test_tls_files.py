"""TLS key files: written safely by ``makeTestPKI`` (``maas-rpc tls-init``)
and refused when others may read them (issue 13, row 16)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from provisioningserver.config import ConfigError
from provisioningserver.rpc.tls import REGION_ROLE, TLSConfig, makeTestPKI

KEYS = ("ca-key", "region-key", "cluster-key")
CERTS = ("ca", "region", "cluster")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_keys_are_0600_and_certificates_0644_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        written = makeTestPKI(tmp_path / "pki")
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "pki") == 0o700
    assert {mode_of(written[k]) for k in KEYS} == {0o600}
    assert {mode_of(written[c]) for c in CERTS} == {0o644}
    assert sorted(p.name for p in (tmp_path / "pki").iterdir()) == sorted(
        f"{name}.pem" for name in KEYS + CERTS
    )


def test_existing_world_readable_keys_end_0600(tmp_path):
    for name in KEYS + CERTS:
        path = tmp_path / f"{name}.pem"
        path.write_text("old\n")
        path.chmod(0o644)
    written = makeTestPKI(tmp_path)
    assert {mode_of(written[k]) for k in KEYS} == {0o600}
    assert all(written[k].read_bytes().startswith(b"-----BEGIN") for k in KEYS)


def test_a_planted_symlink_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    out = tmp_path / "pki"
    out.mkdir()
    (out / "region-key.pem").symlink_to(victim)
    (out / "cluster-key.pem").symlink_to(tmp_path / "dangling")
    written = makeTestPKI(out)
    assert victim.read_text() == "precious\n"
    assert mode_of(victim) == 0o644
    assert not (tmp_path / "dangling").exists()
    for key in ("region-key", "cluster-key"):
        assert not written[key].is_symlink()
        assert mode_of(written[key]) == 0o600


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o660])
def test_a_key_others_may_read_is_refused_in_one_line(tmp_path, mode):
    written = makeTestPKI(tmp_path)
    written["region-key"].chmod(mode)
    with pytest.raises(ConfigError) as info:
        TLSConfig.load(
            written["ca"], written["region"], written["region-key"], REGION_ROLE
        )
    message = str(info.value)
    assert "\n" not in message
    assert f"chmod 600 {written['region-key']}" in message


def test_a_key_that_is_a_device_or_directory_is_one_line(tmp_path):
    written = makeTestPKI(tmp_path)
    for key in ("/dev/zero", tmp_path):
        with pytest.raises(ConfigError, match="not a|directory"):
            TLSConfig.load(written["ca"], written["region"], key, REGION_ROLE)


def test_a_certificate_that_is_a_device_or_directory_is_one_line(tmp_path):
    written = makeTestPKI(tmp_path / "pki")
    for cert in ("/dev/zero", tmp_path):
        with pytest.raises(ConfigError, match="not a|directory") as info:
            TLSConfig.load(cert, written["region"], written["region-key"], REGION_ROLE)
        assert "\n" not in str(info.value)
    # Certificates are public: 0644 is fine for them.
    assert TLSConfig.load(
        written["ca"], written["region"], written["region-key"], REGION_ROLE
    )
