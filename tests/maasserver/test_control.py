"""maas-rpc call's region side: commands by name, arguments by declared type,
answers and errors as JSON."""

from __future__ import annotations

import datetime

import pytest
from twisted.python.failure import Failure

from maasserver.control import (
    ArgumentError,
    errorOf,
    findCommand,
    parseArguments,
    toJSON,
)
from provisioningserver.rpc.cluster import EatCheez
from provisioningserver.rpc.exceptions import (
    CallTimedOut,
    NoConnectionsAvailable,
    NoSuchCheese,
)
from provisioningserver.twisted.protocols import amp


class Everything(amp.Command):
    arguments = [
        (b"text", amp.Unicode()),
        (b"raw", amp.String()),
        (b"n", amp.Integer()),
        (b"x", amp.Float()),
        (b"yes", amp.Boolean()),
        (b"when", amp.DateTime()),
        (b"names", amp.ListOf(amp.Unicode())),
        (b"rows", amp.AmpList([(b"a", amp.Integer())])),
        (b"maybe", amp.Unicode(optional=True)),
    ]
    response = []


def test_find_command_by_name_or_module():
    assert findCommand("EatCheez") is EatCheez
    assert findCommand("provisioningserver.rpc.cluster:EatCheez") is EatCheez
    with pytest.raises(ArgumentError, match="no command 'Nope'"):
        findCommand("Nope")
    with pytest.raises(ArgumentError, match="cannot import"):
        findCommand("no.such.module:X")


def test_arguments_are_parsed_by_their_declared_types():
    parsed = parseArguments(
        Everything.arguments,
        {
            "text": "Brie",
            "raw": "bytes",
            "n": "7",
            "x": "2.5",
            "yes": "true",
            "when": "2026-01-02T03:04:05+00:00",
            "names": '["a", "b"]',
            "rows": '[{"a": "1"}, {"a": 2}]',
        },
    )
    assert parsed == {
        "text": "Brie",
        "raw": b"bytes",
        "n": 7,
        "x": 2.5,
        "yes": True,
        "when": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
        "names": ["a", "b"],
        "rows": [{"a": 1}, {"a": 2}],
    }


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"name": "Brie"}, "missing argument origin"),
        ({"name": "Brie", "origin": "x", "colour": "blue"}, "unknown argument colour"),
    ],
)
def test_wrong_arguments_are_refused(given, message):
    with pytest.raises(ArgumentError, match=message):
        parseArguments(EatCheez.arguments, given)


def test_a_value_its_type_refuses_names_the_argument():
    with pytest.raises(ArgumentError, match="n='seven'"):
        parseArguments([(b"n", amp.Integer())], {"n": "seven"})


def test_answers_become_json():
    assert toJSON({b"k": b"v", "when": datetime.date(2026, 1, 2), "raw": b"\xff"}) == {
        "k": "v",
        "when": "2026-01-02",
        "raw": "base64:/w==",
    }


def test_errors_carry_their_code():
    assert errorOf(Failure(NoSuchCheese("x is not cheese")), EatCheez) == {
        "code": "NoSuchCheese",
        "description": "x is not cheese",
    }
    assert errorOf(Failure(CallTimedOut()), EatCheez)["code"] == "TIMEOUT"
    assert errorOf(Failure(NoConnectionsAvailable("gone")), EatCheez)["code"] == (
        "NO_CONNECTION"
    )
    unhandled = amp.UnhandledCommand(b"UNHANDLED", "Unknown Error [ref]")
    assert errorOf(Failure(unhandled), EatCheez)["code"] == "UNHANDLED"
