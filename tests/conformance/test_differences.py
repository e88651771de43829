"""Each deliberate difference from stock AMP, shown on its own.

Every test shows what stock AMP (``plain``: Twisted's ``amp.AMP`` as it
ships) does, what the reference model does (stock AMP with the differences
applied through public hooks, ``stock``), and that ``RPCProtocol`` does the
latter. The list, with the reasons, is in ``README.rst`` and in the
docstring of ``reference.py``; nothing else may differ.
"""

from __future__ import annotations

import os
import re
import socket
from typing import Any

import crochet
import pytest
from provisioningserver.rpc.common import Client, RPCProtocol
from provisioningserver.rpc.exceptions import (
    ArgumentTooLarge,
    CallTimedOut,
    NotAuthenticated,
)
from provisioningserver.rpc.limits import Limits
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.logger import formatEvent
from twisted.protocols import amp

from maas_rpc_conformance import harness
from maas_rpc_conformance.reference import (
    HAVE_REMOTE_RESPONDER_FAILED,
    MAX_VALUE,
    RemoteResponderFailed,
)
from maas_rpc_conformance.scenarios import (
    BASES,
    ROLES,
    Behaviour,
    DeclaredError,
    Scenario,
    Undeclared,
    assertConforms,
    makeCommand,
    newProtocol,
    responderClass,
    run,
)

Probe = makeCommand(
    b"Probe",
    [(b"n", amp.Integer())],
    [(b"n", amp.Integer()), (b"text", amp.Unicode(optional=True))],
    errors={DeclaredError: b"DECLARED"},
)
NeedsMore = makeCommand(
    b"Probe", [(b"n", amp.Integer()), (b"more", amp.Integer())], [(b"n", amp.Integer())]
)
AsString = makeCommand(b"Probe", [(b"n", amp.String())], [(b"n", amp.Integer())])

REFERENCE = re.compile(
    r"Unknown Error \[(?P<host>[^\]:]+):pid=(?P<pid>\d+):cmd=(?P<cmd>[^:\]]+)"
    r":ask=(?P<ask>[^\]]+)\]"
)


def wroteBoxes(end: harness.End) -> list[dict[bytes, bytes]]:
    boxes, rest = harness.parseBoxes(bytes(end.wrote))
    assert rest == b""
    return [dict(box) for box in boxes]


def exchange(
    caller: str,
    responder: str,
    behaviour: Behaviour,
    calls: list[dict[str, Any]],
    callerCommand: type[amp.Command] = Probe,
    responderCommand: type[amp.Command] = Probe,
    handled: bool = True,
) -> tuple[harness.Link, list[harness.Call], Any]:
    responderProto = newProtocol(
        responderClass(BASES[responder], {responderCommand: behaviour})
    )
    link = harness.Link(responderProto, newProtocol(BASES[caller]))
    made = [
        harness.Call.make(link.caller.proto, callerCommand, handled=handled, **kw)
        for kw in calls
    ]
    link.flush()
    while responderProto.later:
        pending = list(responderProto.later)
        responderProto.later.clear()
        for fire in pending:
            fire()
        link.flush()
    return link, made, responderProto


def brief(boxes: list[dict[bytes, bytes]]) -> list[dict[bytes, Any]]:
    """Boxes with long values shown by their length."""
    return [
        {k: v if len(v) <= 80 else f"<{len(v)} bytes>" for k, v in box.items()}
        for box in boxes
    ]


# (a) Undeclared errors are non-fatal: UNHANDLED, "Unknown Error [ref]".

#: What makes a responder fail without a declared error, and how to provoke
#: it: (caller's view of the command, responder's, responder's behaviour).
UNDECLARED = {
    "undeclared-exception": (Probe, Probe, Behaviour("raise", {}, Undeclared)),
    "async-undeclared-exception": (
        Probe,
        Probe,
        Behaviour("coroutine-await-raise", {}, Undeclared),
    ),
    "argument-does-not-parse": (AsString, Probe, Behaviour("sync", {"n": 1})),
    "argument-missing": (Probe, NeedsMore, Behaviour("sync", {"n": 1})),
    "answer-not-serialisable": (Probe, Probe, Behaviour("sync", {"n": "one"})),
    "async-answer-not-serialisable": (Probe, Probe, Behaviour("later", {})),
    "answer-too-long": (
        Probe,
        Probe,
        Behaviour("sync", {"n": 1, "text": "x" * (MAX_VALUE + 1)}),
    ),
}


@pytest.mark.parametrize("responder", ["stock", "rpc"])
@pytest.mark.parametrize("cause", sorted(UNDECLARED))
def test_a_undeclared_error_is_non_fatal_unhandled(
    cause: str, responder: str, logged
) -> None:
    callerCommand, responderCommand, behaviour = UNDECLARED[cause]
    value = b"x" if callerCommand is AsString else 1
    calls = [{"n": value}, {"n": value}]

    # Stock AMP: fatal UNKNOWN / "Unknown Error", and the connection closes.
    link, _, _ = exchange(
        "plain", "plain", behaviour, calls, callerCommand, responderCommand
    )
    # (An answer too long to write is not even reported: stock AMP's
    # _safeEmit lets TooLong through, and the connection is dropped.)
    for box in wroteBoxes(link.responder):
        assert box[amp.ERROR_CODE] == amp.UNKNOWN_ERROR_CODE
        assert box[amp.ERROR_DESCRIPTION] == b"Unknown Error"
    assert link.fate == "closed by responder"

    # Here: UNHANDLED, "Unknown Error [<host>:pid=<pid>:cmd=Probe:ask=<n>]",
    # non-fatal: every call is answered and the connection stays open.
    link, made, _ = exchange(
        "stock", responder, behaviour, calls, callerCommand, responderCommand
    )
    boxes = wroteBoxes(link.responder)
    assert [box.get(amp.ERROR) for box in boxes] == [b"1", b"2"], brief(boxes)
    for box in boxes:
        assert box[amp.ERROR_CODE] == amp.UNHANDLED_ERROR_CODE
        description = box[amp.ERROR_DESCRIPTION].decode("utf-8")
        match = REFERENCE.fullmatch(description)
        assert match, description
        assert match["host"] == socket.gethostname()
        assert match["pid"] == str(os.getpid())
        assert match["cmd"] == "Probe"
        assert match["ask"] == box[amp.ERROR].decode("ascii")
        if responder == "rpc":
            # Logged with the same reference, so the two can be matched.
            reference = description[len("Unknown Error [") : -1]
            assert any(reference in formatEvent(event) for event in logged), reference
    assert link.fate == "open"
    for call in made:
        assert call.result[:2] == ("failed", RemoteResponderFailed)


# (b) The authentication gate, only when handshakeCommands is set.


class Hello(amp.Command):
    arguments: list = []
    response = [(b"hello", amp.Unicode())]


class Gated(RPCProtocol):
    handshakeCommands = frozenset({b"Hello"})

    @Hello.responder
    def hello(self) -> dict:
        self.observed.append("hello")
        return {"hello": "there"}

    @Probe.responder
    def probe(self, n: int) -> dict:
        self.observed.append(("probe", n))
        return {"n": n}


Nobody = makeCommand(b"Nobody", [], [])


@pytest.mark.parametrize("caller", ["stock", "rpc", "plain"])
def test_b_auth_gate_only_with_handshake_commands(caller: str) -> None:
    gated = newProtocol(Gated)
    link = harness.Link(gated, newProtocol(BASES[caller]))
    calls = [
        harness.Call.make(link.caller.proto, Probe, n=1),
        harness.Call.make(link.caller.proto, Hello),
        harness.Call.make(link.caller.proto, Nobody),
    ]
    link.flush()
    boxes = wroteBoxes(link.responder)
    refused, hello, nobody = boxes
    # A known command outside the handshake: refused, non-fatal, never run.
    assert refused[amp.ERROR_CODE] == b"NOT_AUTHENTICATED"
    assert ("probe", 1) not in gated.observed
    # A handshake command: answered.
    assert hello[b"hello"] == b"there"
    # A command nobody answers: UNHANDLED, exactly as stock AMP.
    assert nobody[amp.ERROR_CODE] == amp.UNHANDLED_ERROR_CODE
    assert nobody[amp.ERROR_DESCRIPTION] == b"Unhandled Command: b'Nobody'"
    assert link.fate == "open"
    expected = NotAuthenticated if caller != "plain" else amp.UnknownRemoteError
    assert calls[0].result[:2] == ("failed", expected)
    # Once the peer is authenticated, everything is dispatched.
    gated.peerAuthenticated = True
    again = harness.Call.make(link.caller.proto, Probe, n=2)
    link.flush()
    assert again.result == ("answer", harness.canon({"n": 2, "text": None}))
    # And a bare RPCProtocol has no gate at all: it is stock AMP.
    bare = Scenario(Probe, {Probe: Behaviour("sync", {"n": 1})}, calls=({"n": 1},))
    assertConforms(bare, ("stock", "rpc"))


def test_b_not_authenticated_raises_not_authenticated() -> None:
    """The caller's half: a stock caller sees an error its command does not
    declare (UnknownRemoteError); here it is NotAuthenticated."""
    for caller, expected in (
        ("plain", amp.UnknownRemoteError),
        ("stock", NotAuthenticated),
        ("rpc", NotAuthenticated),
    ):
        link = harness.Link(newProtocol(Gated), newProtocol(BASES[caller]))
        call = harness.Call.make(link.caller.proto, Probe, n=1)
        link.flush()
        assert call.result[:2] == ("failed", expected), caller


# (c) Cancelled calls and deadlines.


@pytest.mark.parametrize("caller", ["stock", "rpc"])
def test_c_cancelled_call_is_released_and_late_answer_dropped(caller: str) -> None:
    def cancelOne(base: str) -> tuple:
        behaviour = Behaviour("later", {"n": 1})
        responder = newProtocol(responderClass(BASES["stock"], {Probe: behaviour}))
        link = harness.Link(responder, newProtocol(BASES[base]))
        proto = link.caller.proto
        call = harness.Call.make(proto, Probe, n=1)
        link.flush()
        call.deferred.cancel()
        outstanding = dict(proto._outstandingRequests or {})
        for fire in responder.later:
            fire()  # The late answer.
        link.flush()
        after = harness.Call.make(proto, Probe, n=2) if link.fate == "open" else None
        link.flush()
        for fire in responder.later[1:]:
            fire()
        link.flush()
        return call.result, outstanding, link.fate, after and after.result

    # Stock AMP: the call fails with CancelledError but its entry stays
    # until the answer arrives (then Deferred.cancel's suppression of
    # AlreadyCalledError swallows it).
    result, outstanding, fate, _ = cancelOne("plain")
    assert result[:2] == ("failed", CancelledError)
    assert list(outstanding) == [b"1"] and fate == "open"
    # Here: the entry is released at once, the late answer dropped, the
    # connection open for the next call.
    result, outstanding, fate, after = cancelOne(caller)
    assert result[:2] == ("failed", CancelledError)
    assert outstanding == {}
    assert fate == "open"
    assert after == ("answer", harness.canon({"n": 1, "text": None}))


@crochet.wait_for(timeout=10)
def _deadline() -> tuple:
    clock = Clock()
    responder = newProtocol(
        responderClass(BASES["stock"], {Probe: Behaviour("later", {"n": 1})})
    )
    conn = newProtocol(RPCProtocol)
    link = harness.Link(responder, conn)
    d = Client(conn, clock=clock)(Probe, n=1, _timeout=5)
    link.flush()
    results: list = []
    d.addBoth(results.append)
    clock.advance(4.9)
    before = list(results)
    clock.advance(0.2)
    outstanding = dict(conn._outstandingRequests)
    for fire in responder.later:
        fire()  # The late answer.
    link.flush()
    return before, results, outstanding, link.fate, clock.getDelayedCalls()


def test_c_client_deadline(reactor_thread) -> None:
    """A call through a Client has a deadline (stock AMP has none): it fails
    with CallTimedOut, its entry is released, its late answer dropped."""
    before, results, outstanding, fate, delayed = _deadline()
    assert before == []
    assert len(results) == 1 and results[0].check(CallTimedOut)
    assert outstanding == {}
    assert fate == "open"
    assert delayed == []


# (d) No chunking without a peer that agreed to it.


def test_d_oversized_argument_refused_without_chunking() -> None:
    big = "x" * (MAX_VALUE + 1)
    calls = [{"n": 1}, {"n": 2}]

    def tooBig(base: str) -> tuple:
        responder = newProtocol(
            responderClass(BASES["stock"], {Probe: Behaviour("sync", {"n": 1})})
        )
        link = harness.Link(responder, newProtocol(BASES[base]))
        Text = makeCommand(b"Probe", [(b"n", amp.Integer()), (b"text", amp.Unicode())])
        oversized = harness.Call.make(link.caller.proto, Text, n=0, text=big)
        made = [harness.Call.make(link.caller.proto, Probe, **kw) for kw in calls]
        link.flush()
        return oversized, made, link

    oversized, _, link = tooBig("plain")
    assert oversized.result[:2] == ("raised", amp.TooLong)
    for base in ("stock", "rpc"):
        oversized, made, link = tooBig(base)
        assert oversized.result[0] == "raised", base
        assert oversized.result[1] is ArgumentTooLarge, oversized.result
        # Nothing of it was sent: only the two good calls are on the wire.
        assert [box[amp.COMMAND] for box in wroteBoxes(link.caller)] == [b"Probe"] * 2
        assert all(c.result[0] == "answer" for c in made)
        assert link.fate == "open"
    assert oversized.result[2:] == (b"Probe", b"text", MAX_VALUE + 1, MAX_VALUE)


# (e) An error answer left unhandled does not drop the connection.


@pytest.mark.parametrize("caller", ["stock", "rpc"])
def test_e_unhandled_error_answer_keeps_connection(caller: str) -> None:
    behaviour = Behaviour("raise", {}, lambda: DeclaredError("no"))
    calls = [{"n": 1}]
    link, made, _ = exchange("plain", "stock", behaviour, calls, handled=False)
    assert made[0].result[:2] == ("failed", DeclaredError)
    assert link.fate == "closed by caller"
    link, made, _ = exchange(caller, "stock", behaviour, calls, handled=False)
    assert made[0].result[:2] == ("failed", DeclaredError)
    assert link.fate == "open"
    for call in made:
        call.settle()


# (f) A box with no command, answer or error: one short log line.


@pytest.mark.parametrize("base", ["plain", "rpc"])
def test_f_box_without_command_answer_or_error(base: str, logged) -> None:
    value = b"Z" * 60_000
    box = amp.AmpBox({b"junk": value}).serialize()
    responder = newProtocol(responderClass(BASES[base], {}))
    raw = harness.RawPeer()
    link = harness.Link(responder, raw)
    raw.transport.write(box)
    link.flush()
    assert link.fate == "closed by responder"
    logged_text = "\n".join(formatEvent(event) for event in logged)
    failures = "\n".join(f.getErrorMessage() for f in link.responder.crashed)
    if base == "plain":
        # Stock AMP raises NoEmptyBoxes with the whole box in its message,
        # and the reactor logs it.
        assert "Z" * 1000 in failures
    else:
        assert "Z" * 100 not in logged_text + failures
        lines = [
            formatEvent(e) for e in logged if "no command" in formatEvent(e).lower()
        ]
        assert len(lines) == 1 and len(lines[0]) < 500, lines


# (g) A crashed responder raises RemoteResponderFailed on the caller.


@pytest.mark.parametrize("caller", ["stock", "rpc"])
def test_g_unknown_error_raises_remote_responder_failed(caller: str) -> None:
    assert issubclass(RemoteResponderFailed, amp.UnhandledCommand)
    raw = harness.RawPeer()
    link = harness.Link(raw, newProtocol(BASES[caller]))
    crashed = harness.Call.make(link.caller.proto, Probe, n=1)
    unknown = harness.Call.make(link.caller.proto, Probe, n=2)
    link.flush()
    reference = "host:pid=1:cmd=Probe:ask=1"
    raw.transport.write(
        amp.AmpBox(
            _error=b"1",
            _error_code=b"UNHANDLED",
            _error_description=f"Unknown Error [{reference}]".encode(),
        ).serialize()
        + amp.AmpBox(
            _error=b"2",
            _error_code=b"UNHANDLED",
            _error_description=b"Unhandled Command: b'Probe'",
        ).serialize()
    )
    link.flush()
    # An unknown command stays plain UnhandledCommand (version fallback
    # depends on telling the two apart).
    assert type(unknown.error) is amp.UnhandledCommand
    if not HAVE_REMOTE_RESPONDER_FAILED:
        pytest.xfail("provisioningserver.rpc.exceptions.RemoteResponderFailed missing")
    assert type(crashed.error) is RemoteResponderFailed
    assert crashed.error.reference == reference
    assert crashed.error.description == f"Unknown Error [{reference}]"


# (h) Bounds on what a peer may cost.


def test_h_bounds_box_size() -> None:
    limits = Limits(maxBoxBytes=100_000)
    big = pairs = amp.AmpBox(
        _ask=b"1", _command=b"Probe", n=b"1", a=b"a" * 60_000, b=b"b" * 60_000
    ).serialize()
    del pairs
    for base, fate in (("stock", "open"), ("rpc", "closed by responder")):
        cls = responderClass(BASES[base], {Probe: Behaviour("sync", {"n": 1})})
        responder = (
            newProtocol(cls, limits=limits) if base == "rpc" else newProtocol(cls)
        )
        raw = harness.RawPeer()
        link = harness.Link(responder, raw)
        raw.transport.write(big)
        link.flush()
        assert link.fate == fate, base


def test_h_bounds_commands_in_progress() -> None:
    limits = Limits(maxOutstandingAsks=2)
    for base, fate in (("stock", "open"), ("rpc", "closed by responder")):
        cls = responderClass(BASES[base], {Probe: Behaviour("later", {"n": 1})})
        responder = (
            newProtocol(cls, limits=limits) if base == "rpc" else newProtocol(cls)
        )
        link = harness.Link(responder, newProtocol(BASES["stock"]))
        for n in range(3):
            harness.Call.make(link.caller.proto, Probe, n=n)
        link.flush()
        assert link.fate == fate, base


# (i) One bad call never costs the others.

#: Boxes a peer sends that stock AMP answers by closing the connection.
STRAY = {
    "command-without-ask-that-fails": amp.AmpBox(_command=b"Probe", n=b"seven"),
    "unknown-command-without-ask": amp.AmpBox(_command=b"Nope"),
    "command-name-not-ascii": amp.AmpBox(_command=b"Pr\xe9be", _ask=b"1"),
    "answer-never-asked": amp.AmpBox(_answer=b"99", n=b"1"),
    "error-never-asked": amp.AmpBox(
        _error=b"99", _error_code=b"X", _error_description=b"x"
    ),
}


@pytest.mark.parametrize("stray", sorted(STRAY))
def test_i_one_bad_call_never_closes_the_connection(stray: str) -> None:
    for base, fate in (("plain", "closed"), ("stock", "open"), ("rpc", "open")):
        responder = newProtocol(
            responderClass(BASES[base], {Probe: Behaviour("sync", {"n": 1})})
        )
        raw = harness.RawPeer()
        link = harness.Link(responder, raw)
        raw.transport.write(STRAY[stray].serialize())
        link.flush()
        assert link.fate.startswith(fate), (base, link.fate)


@pytest.mark.parametrize("caller", ["stock", "rpc"])
def test_i_a_malformed_error_answer_fails_its_call_only(caller: str) -> None:
    raw = harness.RawPeer()
    link = harness.Link(raw, newProtocol(BASES[caller]))
    call = harness.Call.make(link.caller.proto, Probe, n=1)
    link.flush()
    raw.transport.write(amp.AmpBox(_error=b"1").serialize())
    link.flush()
    assert call.result[0] == "failed"
    assert link.fate == "open"


# Nothing else: the same scenarios without any of the triggers above are
# indistinguishable from stock AMP (the rest of the suite), and the
# reference differs from Twisted's AMP only where listed.


@pytest.mark.parametrize("role", ROLES)
def test_no_difference_without_a_trigger(role: tuple[str, str]) -> None:
    s = Scenario(Probe, {Probe: Behaviour("sync", {"n": 1})}, calls=({"n": 1},) * 3)
    plain = run(s, "plain", "plain")
    assert run(s, "stock", "stock") == plain
    assert run(s, *role) == plain
