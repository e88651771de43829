"""The table of settings: parsers, flags generated from it, typo warnings, and
defaults that match the code's."""

from __future__ import annotations

import argparse
import dataclasses
import io

import pytest

from maasserver.config import RegionConfig
from maasserver.web import HTTPLimits
from provisioningserver import settings
from provisioningserver.config import ClusterConfig, ConfigError
from provisioningserver.rpc.discovery import DiscoveryLimits
from provisioningserver.rpc.limits import Limits


def test_names_are_unique_and_prefixed():
    names = [s.name for s in settings.SETTINGS]
    assert len(names) == len(set(names))
    for s in settings.SETTINGS:
        assert s.name.startswith(("MAAS_RPC_", "MAAS_URL")), s.name
        assert s.roles and s.roles <= set(settings.ROLES), s.name
        assert s.help.strip() and "``" not in s.help, s.name


def test_flags_are_unique_per_command():
    for roles in (("region", "supervisor"), ("region",), ("cluster",)):
        options = [s.option for s in settings.settingsFor(*roles) if s.option]
        assert len(options) == len(set(options)), roles


def test_internal_and_development_settings_have_no_flag():
    for s in settings.SETTINGS:
        if s.roles <= {"internal", "development"}:
            assert s.option == ""


@pytest.mark.parametrize(
    ("name", "field", "config"),
    [
        ("MAAS_RPC_HTTP_PORT", "http_port", RegionConfig),
        ("MAAS_RPC_HANDSHAKE_TIMEOUT", "handshake_timeout", RegionConfig),
        ("MAAS_RPC_ADVERTISE_INTERVAL", "advertise_interval", RegionConfig),
        ("MAAS_RPC_ADVERTISE_EXPIRY", "advertise_expiry", RegionConfig),
        ("MAAS_RPC_IDLE_TIMEOUT", "idle_timeout", RegionConfig),
        ("MAAS_RPC_DRAIN_TIMEOUT", "drain_timeout", RegionConfig),
        ("MAAS_RPC_CONNECT_TIMEOUT", "connect_timeout", ClusterConfig),
        ("MAAS_RPC_POLL_DISCONNECTED", "poll_disconnected", ClusterConfig),
        ("MAAS_RPC_POLL_PARTIAL", "poll_partial", ClusterConfig),
        ("MAAS_RPC_POLL_CONNECTED", "poll_connected", ClusterConfig),
        ("MAAS_RPC_KEEPALIVE_INTERVAL", "keepalive_interval", ClusterConfig),
        ("MAAS_RPC_KEEPALIVE_TIMEOUT", "keepalive_timeout", ClusterConfig),
    ],
)
def test_documented_defaults_are_the_codes(name, field, config):
    s = settings.setting(name)
    documented = s.parse(s.default.split()[0])
    fields = {f.name: f.default for f in dataclasses.fields(config)}
    assert documented == fields[field], name


def _documentedDefaults():
    """Every setting whose documented default parses, set to it."""
    env = {}
    for s in settings.SETTINGS:
        if not s.default:
            continue
        try:
            s.parse(s.default.split()[0])
        except settings.InvalidValue:
            continue
        env[s.name] = s.default.split()[0]
    return env


@pytest.mark.parametrize("limits", [Limits, HTTPLimits, DiscoveryLimits])
def test_limits_documented_defaults_are_the_codes(limits):
    # Each variable set to the table's documented default gives the
    # dataclass's own defaults; a default changed in one place only fails.
    env = _documentedDefaults()
    assert {"MAAS_RPC_MAX_BOX", "MAAS_RPC_HTTP_TIMEOUT"} <= env.keys()
    assert limits.from_env(env) == limits()


@pytest.mark.parametrize(
    ("limits", "name", "field", "text", "value", "refused"),
    [
        (
            Limits,
            "MAAS_RPC_MAX_UNAUTHENTICATED_LIST_ITEMS",
            "maxUnauthenticatedListItems",
            "7",
            7,
            "0",
        ),
        (HTTPLimits, "MAAS_RPC_HTTP_TIMEOUT", "timeout", "2.5", 2.5, "-1"),
        (
            DiscoveryLimits,
            "MAAS_RPC_CONNECT_CONCURRENCY",
            "connectConcurrency",
            "3",
            3,
            "x",
        ),
    ],
)
def test_limits_read_through_the_table(limits, name, field, text, value, refused):
    assert getattr(limits.from_env({name: text}), field) == value
    with pytest.raises(ConfigError, match=name):
        limits.from_env({name: refused})


def test_ports_default_is_the_codes():
    s = settings.setting("MAAS_RPC_PORTS")
    assert s.parse(s.default) == RegionConfig.ports


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("MAAS_RPC_WORKERS", "two", "is not a whole number"),
        ("MAAS_RPC_WORKERS", "0", "out of range"),
        ("MAAS_RPC_HANDSHAKE_TIMEOUT", "-1", "greater than zero"),
        ("MAAS_RPC_HANDSHAKE_TIMEOUT", "nan", "finite"),
        ("MAAS_RPC_BIND", "localhost", "not an IP address"),
        ("MAAS_URL", "ftp://x", "http://"),
        ("MAAS_RPC_CLUSTER_UUID", "nope", "not a UUID"),
        ("MAAS_RPC_STATUS", "maybe", "not 0 or 1"),
        ("MAAS_RPC_LOG_LEVEL", "loud", "not one of"),
        ("MAAS_RPC_REGION_PROTOCOL", "nocolon", "module:Class"),
    ],
)
def test_a_malformed_value_names_its_variable(name, value, reason):
    with pytest.raises(ConfigError) as caught:
        settings.setting(name).value({name: value})
    assert str(caught.value).startswith(f"{name}={value!r}")
    assert reason in str(caught.value)


def test_a_database_url_is_not_repeated():
    with pytest.raises(ConfigError) as caught:
        settings.setting("MAAS_RPC_DATABASE_URL").value(
            {"MAAS_RPC_DATABASE_URL": "mysql://u:hunter2@db/x"}
        )
    assert "hunter2" not in str(caught.value)


def test_unknown_variables_suggest_the_closest():
    found = settings.unknownVariables(
        {"MAAS_RPC_DATADIR": "/x", "MAAS_RPC_WIBBLE": "1", "MAAS_RPC_PORTS": "0"}
    )
    assert found == [
        ("MAAS_RPC_DATADIR", "MAAS_RPC_DATA_DIR"),
        ("MAAS_RPC_WIBBLE", None),
    ]
    out = io.StringIO()
    settings.warnUnknown({"MAAS_RPC_DATADIR": "/x"}, "maas-rpc x", out)
    assert out.getvalue() == (
        "maas-rpc x: warning: MAAS_RPC_DATADIR is not a maas-rpc setting "
        "(ignored); did you mean MAAS_RPC_DATA_DIR?\n"
    )


def test_flags_store_text_under_the_variable_and_check_it():
    parser = argparse.ArgumentParser()
    settings.addArguments(parser, "cluster")
    parsed = parser.parse_args(["--poll-partial", "0.5", "--maas-url", "http://r/M"])
    assert settings.overrides(parsed) == {
        "MAAS_RPC_POLL_PARTIAL": "0.5",
        "MAAS_URL": "http://r/M",
    }
    with pytest.raises(SystemExit):
        parser.parse_args(["--poll-partial", "soon"])


def test_twistd_flags_name_the_flag_when_malformed():
    options = {"ports": "abc"}
    with pytest.raises(ConfigError, match=r"^--ports='abc' \(MAAS_RPC_PORTS\)"):
        settings.optionOverrides(options, "region")


def test_check_environment_checks_only_the_roles_settings():
    settings.checkEnvironment({"MAAS_RPC_POLL_PARTIAL": "x"}, ["region"])
    with pytest.raises(ConfigError, match="MAAS_RPC_POLL_PARTIAL"):
        settings.checkEnvironment({"MAAS_RPC_POLL_PARTIAL": "x"}, ["cluster"])


@pytest.mark.parametrize("role", ["region", "cluster"])
def test_config_documented_defaults_are_the_codes(role):
    # As for the limits: the settings a configuration reads straight into
    # its fields default, in the table's words, to the dataclass's defaults.
    import maasserver.config
    import provisioningserver.config

    config, fields = {
        "region": (maasserver.config.RegionConfig, maasserver.config._FIELDS),
        "cluster": (
            provisioningserver.config.ClusterConfig,
            provisioningserver.config._CLUSTER_FIELDS,
        ),
    }[role]
    documented = _documentedDefaults()
    assert "MAAS_RPC_DRAIN_TIMEOUT" in documented
    assert settings.readFields(config, documented, fields) == settings.readFields(
        config, {}, fields
    )
