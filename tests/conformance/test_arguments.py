"""Every AMP argument type, present, optional, missing, malformed or of the
wrong kind, behaves as under stock AMP.

Rows of issue 10 caught here: 6 (an argument that fails to parse, or a
missing one, answered with the command's declared error for
``ValueError``/``KeyError`` instead of an undeclared error) and 8
(``amp.String`` given a list ``[104, 105]`` sent as ``b"hi"``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from twisted.internet.defer import Deferred
from twisted.protocols import amp
from twisted.python.filepath import FilePath

from maas_rpc_conformance.scenarios import (
    ROLES,
    Behaviour,
    Scenario,
    assertConforms,
    makeCommand,
)
from maas_rpc_conformance.strategies import TYPES, Big, pythonName

#: A few values of each type, edge cases included.
SAMPLES = {
    "String": [b"", b"\x00\xffbytes"],
    "Unicode": ["", "caf\u00e9 \u2603"],
    "Integer": [0, -1, 2**70],
    "Float": [0.0, -1.5, float("inf"), float("nan")],
    "Boolean": [True, False],
    "Path": [FilePath("/var/lib/maas")],
    "Decimal": [Decimal("1.10"), Decimal("-Infinity"), Decimal("NaN")],
    "DateTime": [
        datetime(2015, 5, 1, 12, 30, 45, 123456, tzinfo=UTC),
        datetime(1999, 12, 31, 23, 59, 59, tzinfo=timezone(-timedelta(hours=5))),
    ],
    "ListOf(Integer)": [[], [1, -2, 3]],
    "ListOf(Unicode)": [[], ["a", "\u2603"]],
    "AmpList": [[], [{"n": 1}, {"n": 2, "s": "two"}]],
    "Hexed": [b"", b"\x01\x02"],
    "Descriptor": [5],
}

CASES = [
    pytest.param(typ, value, id=f"{typ}-{n}")
    for typ, values in sorted(SAMPLES.items())
    for n, value in enumerate(values)
]


def echo(typ: str, optional: bool = False) -> type[amp.Command]:
    """A command taking and answering one value of ``typ``."""
    make = TYPES[typ][0]
    return makeCommand(
        b"Echo", [(b"value", make(optional=optional))], [(b"value", make())]
    )


def echoed(value):
    return Behaviour("sync", {"value": value})


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("typ, value", CASES)
def test_argument_and_answer_of_each_type(typ, value, role) -> None:
    command = echo(typ)
    s = Scenario(command, {command: echoed(value)}, calls=({"value": value},))
    assertConforms(s, role, f"{typ} {value!r}")


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("given", ["omitted", "None", "present"])
@pytest.mark.parametrize("typ", sorted(SAMPLES))
def test_optional_argument(typ, given, role) -> None:
    command = makeCommand(
        b"Optional",
        [(b"value", TYPES[typ][0](optional=True)), (b"n", amp.Integer())],
        [(b"n", amp.Integer()), (b"value", TYPES[typ][0](optional=True))],
    )
    value = SAMPLES[typ][-1]
    kwargs = {"n": 1}
    if given == "None":
        kwargs["value"] = None
    elif given == "present":
        kwargs["value"] = value
    answer = dict(kwargs)
    s = Scenario(command, {command: Behaviour("sync", answer)}, calls=(kwargs,))
    assertConforms(s, role, f"optional {typ} {given}")


#: Values that are not bytes, given to ``amp.String`` (row 8).
NOT_BYTES = {
    "list-of-ints": [104, 105],
    "int": 3,
    "str": "hi",
    "bytearray": bytearray(b"hi"),
    "memoryview": memoryview(b"hi"),
    "None": None,
    "too-long": Big(b"x" * 65536),
}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("kind", ["sync", "later"])
@pytest.mark.parametrize("value", sorted(NOT_BYTES))
def test_string_given_something_else(value, kind, role) -> None:
    """As an argument (the caller's side) and as an answer (the
    responder's), followed by a good call: stock AMP raises (or refuses the
    answer) and the next call is unaffected."""
    command = makeCommand(
        b"Echo", [(b"value", amp.String())], [(b"value", amp.String())]
    )
    bad = NOT_BYTES[value]

    class Answer(Behaviour):
        """Answers ``bad`` when asked to, else echoes."""

        def function(self):
            def respond(proto, value):
                proto.observed.append(("called", value))
                answer = {"value": bad if value == b"answer badly" else value}
                if kind == "sync":
                    return answer
                d = Deferred()
                proto.later.append(lambda: d.callback(answer))
                return d

            return respond

    s = Scenario(
        command,
        {command: Answer()},
        calls=({"value": bad}, {"value": b"answer badly"}, {"value": b"fine"}),
    )
    assertConforms(s, role, f"amp.String given {value}")


#: (what the caller's view sends, what the responder's view expects), for
#: arguments that do not parse on the responder.
UNPARSABLE = {
    "ValueError": ((b"value", amp.String()), (b"value", amp.Integer()), b"seven"),
    "TypeError": ((b"value", amp.String()), (b"value", amp.Boolean()), b"yes"),
    "UnicodeDecodeError": (
        (b"value", amp.String()),
        (b"value", amp.Unicode()),
        b"\xff",
    ),
    "empty DateTime": ((b"value", amp.String()), (b"value", amp.DateTime()), b""),
    "bad ListOf": (
        (b"value", amp.String()),
        (b"value", amp.ListOf(amp.Integer())),
        b"\x00\x01x",
    ),
    "bad AmpList": (
        (b"value", amp.String()),
        (b"value", amp.AmpList([(b"n", amp.Integer())])),
        b"\x00\x01n\x00\x01x\x00\x00",
    ),
}

#: What a command may declare: nothing, or the very exceptions a parse
#: failure raises (stock AMP never maps a parse failure to them).
DECLARED = {
    "nothing": {},
    "ValueError,KeyError,TypeError": {
        ValueError: b"VALUE",
        KeyError: b"KEY",
        TypeError: b"TYPE",
    },
}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("declared", sorted(DECLARED))
@pytest.mark.parametrize("case", sorted(UNPARSABLE))
def test_argument_that_does_not_parse(case, declared, role) -> None:
    sent, expected, value = UNPARSABLE[case]
    errors = DECLARED[declared]
    caller = makeCommand(b"Parse", [sent], [(b"ok", amp.Boolean())], errors=errors)
    responder = makeCommand(
        b"Parse", [expected], [(b"ok", amp.Boolean())], errors=errors
    )
    s = Scenario(
        caller,
        {responder: Behaviour("sync", {"ok": True})},
        calls=({pythonName(sent[0]): value},),
    )
    assertConforms(s, role, f"{case}, declaring {declared}")


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("declared", sorted(DECLARED))
@pytest.mark.parametrize("path", ["plain", "listof"])
def test_missing_argument(path, declared, role) -> None:
    """The responder's view of the command needs an argument the caller's
    view does not send (version skew)."""
    errors = DECLARED[declared]
    extra = amp.Integer() if path == "plain" else amp.ListOf(amp.Integer())
    caller = makeCommand(
        b"Skew", [(b"n", amp.Integer())], [(b"ok", amp.Boolean())], errors=errors
    )
    responder = makeCommand(
        b"Skew",
        [(b"n", amp.Integer()), (b"needed", extra)],
        [(b"ok", amp.Boolean())],
        errors=errors,
    )
    s = Scenario(
        caller, {responder: Behaviour("sync", {"ok": True})}, calls=({"n": 1},)
    )
    assertConforms(s, role, f"a missing {path} argument, declaring {declared}")


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"n": 1, "unknown": 2}, {"n": "one"}],
    ids=["forgotten", "unknown-keyword", "wrong-type"],
)
def test_caller_passes_wrong_keywords(kwargs, role) -> None:
    command = makeCommand(b"Probe", [(b"n", amp.Integer())], [(b"n", amp.Integer())])
    s = Scenario(
        command, {command: Behaviour("sync", {"n": 1})}, calls=(kwargs, {"n": 1})
    )
    assertConforms(s, role, kwargs)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("where", ["argument", "response"])
def test_key_longer_than_255_bytes(where, role) -> None:
    long = b"k" * 256
    arguments = [(b"n", amp.Integer())] + (
        [(long, amp.Integer())] if where == "argument" else []
    )
    response = [(b"n", amp.Integer())] + (
        [(long, amp.Integer())] if where == "response" else []
    )
    command = makeCommand(b"Long", arguments, response)
    kwargs = {"n": 1} | ({pythonName(long): 2} if where == "argument" else {})
    answer = {"n": 1} | ({pythonName(long): 2} if where == "response" else {})
    s = Scenario(
        command,
        {command: Behaviour("sync", answer)},
        calls=(kwargs, {"n": 3} | {k: v for k, v in kwargs.items() if k != "n"}),
    )
    assertConforms(s, role, f"a 256-byte key in the {where}")


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("where", ["argument", "response"])
def test_names_that_look_like_chunks(where, role) -> None:
    """``v`` and ``v.2`` are two AMP keys like any other to a stock peer;
    nothing may join them (only a peer that agreed to chunking sends
    chunks)."""
    pair = [(b"v", amp.Unicode()), (b"v.2", amp.Unicode())]
    command = makeCommand(
        b"Chunky",
        pair if where == "argument" else [],
        pair if where == "response" else [(b"ok", amp.Boolean())],
    )
    values = {"v": "first", "v.2": "second"}
    s = Scenario(
        command,
        {command: Behaviour("sync", values if where == "response" else {"ok": True})},
        calls=(values if where == "argument" else {},),
    )
    assertConforms(s, role, f"keys v and v.2 in the {where}")
