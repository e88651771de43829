"""Configuration is parsed and checked before anything starts."""

from __future__ import annotations

import pytest

from maasserver.config import RegionConfig
from provisioningserver.config import (
    ClusterConfig,
    ConfigError,
    env_float,
    parse_maas_url,
    parse_ports,
)
from provisioningserver.security import install_shared_secret

SECRET = bytes(range(16))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("5250", range(5250, 5251)), ("5250-5259", range(5250, 5260)), ("0", range(1))],
)
def test_parse_ports(text, expected):
    assert parse_ports(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "5259-5250", "0-10", "70000", "-1", "1-x"])
def test_parse_ports_refuses(text):
    with pytest.raises(ConfigError, match="MAAS_RPC_PORTS"):
        parse_ports(text)


@pytest.mark.parametrize(
    "url", ["ftp://x/MAAS", "localhost:5240", "http:///MAAS", "http://h:port/MAAS"]
)
def test_parse_maas_url_refuses(url):
    with pytest.raises(ConfigError, match="MAAS_URL"):
        parse_maas_url(url)


def test_parse_maas_url_strips_trailing_slash():
    assert parse_maas_url("http://r:5240/MAAS/") == "http://r:5240/MAAS"


@pytest.mark.parametrize("text", ["x", "0", "-1", "nan", "inf"])
def test_env_float_refuses(text):
    with pytest.raises(ConfigError, match="MAAS_RPC_X"):
        env_float({"MAAS_RPC_X": text}, "MAAS_RPC_X", 1.0)


def test_cluster_config_from_env(tmp_path):
    install_shared_secret(tmp_path / "secret", SECRET)
    config = ClusterConfig.from_env(
        {
            "MAAS_RPC_DATA_DIR": str(tmp_path),
            "MAAS_URL": "http://127.0.0.1:5240/MAAS/",
            "MAAS_RPC_POLL_PARTIAL": "0.5",
        }
    )
    assert config.secret == SECRET
    assert config.maas_url == "http://127.0.0.1:5240/MAAS"
    assert config.poll_partial == 0.5
    # The UUID is generated once and kept.
    again = ClusterConfig.from_env({"MAAS_RPC_DATA_DIR": str(tmp_path)})
    assert again.cluster_uuid == config.cluster_uuid
    # Overrides (the CLI's flags) take precedence.
    flagged = ClusterConfig.from_env(
        {"MAAS_RPC_DATA_DIR": str(tmp_path)},
        MAAS_RPC_CLUSTER_UUID="5d0e8c1e-0bb4-4c55-9d54-6c1b7ad0b6a9",
    )
    assert flagged.cluster_uuid == "5d0e8c1e-0bb4-4c55-9d54-6c1b7ad0b6a9"


def test_cluster_config_without_secret_says_how_to_fix(tmp_path):
    with pytest.raises(ConfigError, match="MAAS_RPC_SECRET_FILE"):
        ClusterConfig.from_env({"MAAS_RPC_DATA_DIR": str(tmp_path)})


def test_cluster_config_refuses_bad_uuid(tmp_path):
    install_shared_secret(tmp_path / "secret", SECRET)
    with pytest.raises(ConfigError, match="not a UUID"):
        ClusterConfig.from_env(
            {"MAAS_RPC_DATA_DIR": str(tmp_path), "MAAS_RPC_CLUSTER_UUID": "nope"}
        )


def test_region_config_from_env(tmp_path):
    config = RegionConfig.from_env(
        {
            "MAAS_RPC_DATA_DIR": str(tmp_path),
            "MAAS_RPC_PORTS": "0",
            "MAAS_RPC_BIND": "127.0.0.1",
            "MAAS_RPC_HTTP_PORT": "0",
        }
    )
    assert config.ports == range(1)
    assert config.bind == "127.0.0.1"
    assert config.secret_path == tmp_path / "secret"
    assert RegionConfig.from_env({"MAAS_RPC_DATA_DIR": str(tmp_path)}).ports == range(
        5250, 5260
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAAS_RPC_BIND", "not-an-address"),
        ("MAAS_RPC_HTTP_PORT", "99999"),
        ("MAAS_RPC_PORTS", "abc"),
        ("MAAS_RPC_HANDSHAKE_TIMEOUT", "soon"),
        ("MAAS_RPC_STATUS", "maybe"),
    ],
)
def test_region_config_refuses(tmp_path, name, value):
    with pytest.raises(ConfigError, match=name):
        RegionConfig.from_env({"MAAS_RPC_DATA_DIR": str(tmp_path), name: value})


def refused(options, args, capsys) -> str:
    """Parse ``args`` as twistd would; return the one error line printed.

    The plugins' options exit 1 themselves on a configuration error (twistd
    before Twisted 26.10 would exit 0)."""
    with pytest.raises(SystemExit) as exited:
        options.parseOptions(args)
    assert exited.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_plugin_options_report_bad_configuration_in_one_line(
    tmp_path, monkeypatch, capsys
):
    from maasserver.plugin import Options as RegionOptions
    from provisioningserver.plugin import Options as ClusterOptions

    monkeypatch.setenv("MAAS_RPC_DATA_DIR", str(tmp_path))
    line = refused(ClusterOptions(), [], capsys)
    assert line.startswith("twistd maas-clusterd: error:") and "secret" in line
    line = refused(RegionOptions(), ["--ports", "abc"], capsys)
    assert line.startswith("twistd maas-regiond: error:")
    assert "MAAS_RPC_PORTS" in line
    assert "module:Class" in refused(RegionOptions(), ["--protocol", "x"], capsys)
    install_shared_secret(tmp_path / "secret", SECRET)
    line = refused(
        ClusterOptions(), ["--protocol", "provisioningserver.rpc.common:Client"], capsys
    )
    assert "not a subclass of ClusterClient" in line


def test_region_config_database_url(tmp_path):
    base = {"MAAS_RPC_DATA_DIR": str(tmp_path)}
    assert RegionConfig.from_env(base).database_url is None
    blank = {**base, "MAAS_RPC_DATABASE_URL": "  "}
    assert RegionConfig.from_env(blank).database_url is None
    for url in ("postgresql://maas:secret@db.example/maas", "postgres:///maas"):
        config = RegionConfig.from_env({**base, "MAAS_RPC_DATABASE_URL": f" {url}\n"})
        assert config.database_url == url


@pytest.mark.parametrize(
    "url", ["mysql://maas:hunter2@db/maas", "host=db password=hunter2", "db/maas"]
)
def test_region_config_refuses_other_database_urls(tmp_path, url):
    with pytest.raises(ConfigError, match="MAAS_RPC_DATABASE_URL") as caught:
        RegionConfig.from_env(
            {"MAAS_RPC_DATA_DIR": str(tmp_path), "MAAS_RPC_DATABASE_URL": url}
        )
    # The value may hold a password: the error does not repeat it.
    assert "hunter2" not in str(caught.value)


def test_plugin_database_url_flag_takes_precedence(tmp_path, monkeypatch, capsys):
    from maasserver.plugin import Options as RegionOptions

    monkeypatch.setenv("MAAS_RPC_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MAAS_RPC_DATABASE_URL", "postgresql://env.example/maas")
    options = RegionOptions()
    options.parseOptions([])
    assert options["config"].database_url == "postgresql://env.example/maas"
    options = RegionOptions()
    options.parseOptions(["--database-url", "postgresql://flag.example/maas"])
    assert options["config"].database_url == "postgresql://flag.example/maas"
    line = refused(RegionOptions(), ["--database-url", "sqlite:///eventloops"], capsys)
    assert "MAAS_RPC_DATABASE_URL" in line
