"""Every command is documented and carries ``:since:``; the declared
commands keep their wire contract."""

from __future__ import annotations

import importlib
import inspect

import pytest

from provisioningserver.rpc.exceptions import CannotRegisterCluster, NoSuchCheese
from provisioningserver.twisted.protocols import amp

COMMAND_MODULES = [
    "provisioningserver.rpc.common",
    "provisioningserver.rpc.cluster",
    "provisioningserver.rpc.region",
]


def all_commands():
    seen = {}
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, amp.Command)
                and value.__module__.startswith("provisioningserver.")
            ):
                seen[value.__qualname__] = value
    return sorted(seen.values(), key=lambda c: c.__name__)


def test_there_are_commands():
    names = {c.__name__ for c in all_commands()}
    assert {"Identify", "Authenticate", "EatCheez", "Register"} <= names


@pytest.mark.parametrize("command", all_commands(), ids=lambda c: c.__name__)
def test_command_docstring_has_since(command):
    doc = inspect.getdoc(command) or ""
    assert doc.strip(), f"{command.__name__} has no docstring"
    assert ":since:" in doc, f"{command.__name__} has no :since: field"


def test_eatcheez_contract():
    from provisioningserver.rpc.cluster import EatCheez

    assert EatCheez.commandName == b"EatCheez"
    assert [(k, type(v)) for k, v in EatCheez.arguments] == [
        (b"name", amp.Unicode),
        (b"origin", amp.Unicode),
    ]
    assert [(k, type(v)) for k, v in EatCheez.response] == [(b"rating", amp.Integer)]
    assert EatCheez.errors == {NoSuchCheese: b"NoSuchCheese"}


def test_register_contract():
    from provisioningserver.rpc.arguments import ParsedURL
    from provisioningserver.rpc.region import Register

    args = dict(Register.arguments)
    assert type(args[b"uuid"]) is amp.Unicode and not args[b"uuid"].optional
    assert isinstance(args[b"networks"], amp.AmpList) and args[b"networks"].optional
    assert [k for k, _ in args[b"networks"].subargs] == [
        b"interface",
        b"ip",
        b"subnet_mask",
    ]
    assert isinstance(args[b"url"], ParsedURL) and args[b"url"].optional
    assert type(args[b"ip_addr_json"]) is amp.Unicode and args[b"ip_addr_json"].optional
    assert Register.response == []
    assert Register.errors == {CannotRegisterCluster: b"CannotRegisterCluster"}
