"""Responders of every kind answer as under stock AMP, on both paths.

A responder may return a value, a Deferred (fired or not), a coroutine
(``async def``), or a ``Failure``; it may raise a declared, fatal or
undeclared error, or return an answer that cannot be serialised. Each is
played between stock peers and with ``RPCProtocol`` in each role, for a
command of plain arguments (``RPCProtocol``'s fast path) and one with a
``ListOf`` argument (stock AMP's path).

Rows of issue 10 caught here: 2 (``async def`` responder), 3 (``Failure``
returned), 7 (an asynchronous answer that cannot be serialised).
"""

from __future__ import annotations

import pytest
from twisted.protocols import amp

from maas_rpc_conformance.scenarios import (
    KINDS,
    RAISING,
    ROLES,
    Behaviour,
    DeclaredError,
    FatalError,
    Scenario,
    Undeclared,
    assertConforms,
    makeCommand,
)


class LongText(str):
    """Text too long for one AMP value, that prints briefly."""

    def __repr__(self) -> str:
        return f"LongText({len(self)} characters)"


ERRORS = {DeclaredError: b"DECLARED"}
FATAL = {FatalError: b"FATAL"}

#: A command of AMP's plain types only, and one with a ListOf argument.
COMMANDS = {
    "plain": makeCommand(
        b"Probe",
        [(b"n", amp.Integer()), (b"s", amp.Unicode())],
        [
            (b"total", amp.Integer()),
            (b"echo", amp.Unicode(optional=True)),
            (b"raw", amp.String(optional=True)),
        ],
        errors=ERRORS,
        fatalErrors=FATAL,
    ),
    "listof": makeCommand(
        b"Probe",
        [(b"n", amp.Integer()), (b"s", amp.ListOf(amp.Unicode()))],
        [
            (b"total", amp.Integer()),
            (b"echo", amp.Unicode(optional=True)),
            (b"raw", amp.String(optional=True)),
        ],
        errors=ERRORS,
        fatalErrors=FATAL,
    ),
    # A returned Failure must not pass for an empty answer.
    "empty-response": makeCommand(
        b"Probe",
        [(b"n", amp.Integer()), (b"s", amp.Unicode())],
        [],
        errors=ERRORS,
        fatalErrors=FATAL,
    ),
}
CALL = {
    "plain": {"n": 7, "s": "seven"},
    "listof": {"n": 7, "s": ["seven"]},
    "empty-response": {"n": 7, "s": "seven"},
}

#: What a raising responder raises.
RAISES = {
    "declared": lambda: DeclaredError("no such thing"),
    "fatal": lambda: FatalError("cannot go on"),
    "undeclared": lambda: Undeclared("crashed"),
    "remote-amp-error": lambda: amp.RemoteAmpError(b"CUSTOM", "a custom code"),
}

#: Answers that cannot be serialised.
UNSERIALISABLE = {
    "missing-key": {},
    "wrong-type": {"total": "seven"},
    "not-a-dict": None,
    "too-long": {"total": 1, "echo": LongText("x" * 70000)},
    "text-for-string": {"total": 1, "raw": "text, not bytes"},
}


def scenario(path: str, behaviour: Behaviour, calls: int = 2) -> Scenario:
    command = COMMANDS[path]
    return Scenario(command, {command: behaviour}, calls=(CALL[path],) * calls)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("path", sorted(COMMANDS))
@pytest.mark.parametrize("kind", [k for k in KINDS if k not in RAISING])
def test_answering_responder(kind: str, path: str, role: tuple[str, str]) -> None:
    assertConforms(scenario(path, Behaviour(kind, {"total": 14})), role, kind)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("path", sorted(COMMANDS))
@pytest.mark.parametrize("error", sorted(RAISES))
@pytest.mark.parametrize("kind", sorted(RAISING))
def test_failing_responder(
    kind: str, error: str, path: str, role: tuple[str, str]
) -> None:
    behaviour = Behaviour(kind, {"total": 14}, RAISES[error])
    assertConforms(scenario(path, behaviour), role, f"{kind} {error}")


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("path", sorted(COMMANDS))
@pytest.mark.parametrize("answer", sorted(UNSERIALISABLE))
@pytest.mark.parametrize("kind", ["sync", "later", "coroutine-await"])
def test_unserialisable_answer(
    kind: str, answer: str, path: str, role: tuple[str, str]
) -> None:
    behaviour = Behaviour(kind, UNSERIALISABLE[answer])
    assertConforms(scenario(path, behaviour), role, f"{kind} answering {answer}")


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("handled", [True, False], ids=["handled", "unhandled"])
@pytest.mark.parametrize("error", sorted(RAISES))
def test_caller_that_does_not_handle_errors(
    error: str, handled: bool, role: tuple[str, str]
) -> None:
    command = COMMANDS["plain"]
    s = Scenario(
        command,
        {command: Behaviour("raise", {}, RAISES[error])},
        calls=(CALL["plain"],) * 2,
        handled=handled,
    )
    assertConforms(s, role, f"a {error} error, {handled=}")


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("kind", ["sync", "raise", "later-fail", "coroutine"])
def test_command_that_wants_no_answer(kind: str, role: tuple[str, str]) -> None:
    command = makeCommand(
        b"Notify", [(b"n", amp.Integer())], [], errors=ERRORS, requiresAnswer=False
    )
    behaviour = Behaviour(kind, {}, lambda: DeclaredError("declared"))
    s = Scenario(command, {command: behaviour}, calls=({"n": 1}, {"n": 2}))
    assertConforms(s, role, kind)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("wanted", [True, False], ids=["ask", "no-ask"])
def test_unknown_command(wanted: bool, role: tuple[str, str]) -> None:
    command = makeCommand(b"Nobody", [(b"n", amp.Integer())], requiresAnswer=wanted)
    assertConforms(Scenario(command, {}, calls=({"n": 1}, {"n": 2})), role)
