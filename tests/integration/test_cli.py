"""The ``maas-rpc`` command line, run for real in a subprocess.

Every configuration mistake stops a command with one line that names the
variable or the flag; ``--help`` works whatever the environment holds; and
``--version`` and each subcommand's usage say what they are.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from provisioningserver.security import install_shared_secret

SECRET = bytes(range(16))


def env(**settings: str) -> dict[str, str]:
    """This process's environment without ``MAAS_*``, plus ``settings``."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MAAS_RPC_", "MAAS_URL"))
    }
    clean["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    clean.update(settings)
    return clean


def run(
    args: list[str], module: str = "maasserver.cli", **settings: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env=env(**settings),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def oneLine(result: subprocess.CompletedProcess[str]) -> str:
    """The single line a failed command printed (and nothing else)."""
    assert result.returncode != 0, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_version_names_this_package_and_twisted():
    result = run(["--version"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("maas-rpc ")
    assert "Twisted " in result.stdout


def test_help_survives_a_malformed_variable():
    result = run(["--help"], MAAS_RPC_WORKERS="two")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: maas-rpc ")
    result = run(["region", "--help"], MAAS_RPC_WORKERS="two")
    assert result.returncode == 0, result.stderr
    assert "--workers" in result.stdout


@pytest.mark.parametrize(
    ("args", "module", "usage"),
    [
        (["eventloop", "--help"], "maasserver.cli", "usage: maas-rpc eventloop"),
        (["cluster", "--help"], "maasserver.cli", "usage: maas-rpc cluster"),
        (["cluster", "--help"], "provisioningserver.cli", "usage: maas-rpc cluster"),
        (["region", "--help"], "maasserver.cli", "usage: maas-rpc region"),
        (["status", "--help"], "maasserver.cli", "usage: maas-rpc status"),
        (["call", "--help"], "maasserver.cli", "usage: maas-rpc call"),
    ],
)
def test_help_is_written_for_users(args, module, usage):
    result = run(args, module)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(usage), result.stdout
    # No raw reST.
    for markup in ("``", ":class:", ":mod:", ":func:", ":param"):
        assert markup not in result.stdout


def test_every_setting_of_a_role_has_a_flag():
    from provisioningserver.settings import settingsFor

    for command, roles in (
        ("region", ("region", "supervisor")),
        ("eventloop", ("region",)),
        ("cluster", ("cluster",)),
    ):
        text = run([command, "--help"]).stdout
        for s in settingsFor(*roles):
            assert f"--{s.option} " in text, (command, s.name)
            assert s.name in text.replace("\n", " ").replace("  ", " ") or (
                s.name[:20] in text
            ), (command, s.name)


def test_malformed_variable_is_one_line(tmp_path):
    line = oneLine(
        run(["region"], MAAS_RPC_WORKERS="two", MAAS_RPC_DATA_DIR=str(tmp_path))
    )
    assert "MAAS_RPC_WORKERS='two'" in line and "whole number" in line


def test_malformed_flag_is_one_line_naming_the_flag(tmp_path):
    line = oneLine(run(["region", "--workers", "two"]))
    assert "--workers" in line and "'two'" in line
    line = oneLine(run(["cluster", "--poll-partial", "soon"]))
    assert "--poll-partial" in line and "MAAS_RPC_POLL_PARTIAL" in line


def test_malformed_secret_under_region_is_one_line(tmp_path):
    (tmp_path / "secret").write_text("not hex\n")
    for command in ("region", "eventloop"):
        line = oneLine(
            run([command], MAAS_RPC_DATA_DIR=str(tmp_path), MAAS_RPC_HTTP_PORT="0")
        )
        assert "malformed" in line and str(tmp_path / "secret") in line, line


def test_secret_path_that_is_a_directory_is_one_line(tmp_path):
    (tmp_path / "region" / "secret").mkdir(parents=True)
    line = oneLine(run(["region"], MAAS_RPC_DATA_DIR=str(tmp_path / "region")))
    assert "is a directory" in line and "MAAS_RPC_DATA_DIR" in line
    line = oneLine(
        run(
            ["cluster"],
            MAAS_RPC_DATA_DIR=str(tmp_path / "cluster"),
            MAAS_RPC_SECRET_FILE=str(tmp_path),
        )
    )
    assert "MAAS_RPC_SECRET_FILE" in line and "is a directory" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_secret_is_one_line(tmp_path):
    secret = tmp_path / "secret"
    install_shared_secret(secret, SECRET)
    secret.chmod(0)
    line = oneLine(
        run(
            ["cluster"],
            MAAS_RPC_DATA_DIR=str(tmp_path / "cluster"),
            MAAS_RPC_SECRET_FILE=str(secret),
        )
    )
    assert "MAAS_RPC_SECRET_FILE" in line and "cannot be read" in line


def test_data_dir_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    line = oneLine(run(["eventloop"], MAAS_RPC_DATA_DIR=str(tmp_path / "file")))
    assert "MAAS_RPC_DATA_DIR" in line and "not a directory" in line


def test_unknown_variable_names_the_closest_setting(tmp_path):
    result = run(
        ["status", "--data-dir", str(tmp_path)], MAAS_RPC_DATADIR=str(tmp_path)
    )
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1, result.stderr
    assert "MAAS_RPC_DATADIR" in warnings[0]
    assert "did you mean MAAS_RPC_DATA_DIR?" in warnings[0]


def test_status_without_a_region_says_where_it_looked(tmp_path):
    line = oneLine(run(["status", "--data-dir", str(tmp_path)]))
    assert str(tmp_path / "control") in line


def test_second_region_on_the_same_http_port_is_refused(tmp_path):
    # Anything listening on the port: another region, or anything else.
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        line = oneLine(
            run(
                ["region", "--http-port", str(port), "--bind", "127.0.0.1"],
                MAAS_RPC_DATA_DIR=str(tmp_path),
            )
        )
    assert f"127.0.0.1:{port} is in use" in line
    assert "MAAS_RPC_HTTP_PORT" in line


def test_cluster_protocol_flag_is_checked(tmp_path):
    install_shared_secret(tmp_path / "secret", SECRET)
    line = oneLine(
        run(
            ["cluster", "--protocol", "provisioningserver.rpc.common:Client"],
            MAAS_RPC_DATA_DIR=str(tmp_path),
        )
    )
    assert "not a subclass of ClusterClient" in line


def test_call_needs_name_value_arguments(tmp_path):
    line = oneLine(run(["call", "EatCheez", "Brie", "--data-dir", str(tmp_path)]))
    assert "'Brie' is not NAME=VALUE" in line


def test_tls_init_writes_files(tmp_path: Path):
    result = run(["tls-init", str(tmp_path / "pki")])
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "pki" / "ca.pem").exists()
