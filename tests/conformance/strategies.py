"""Hypothesis strategies for the conformance matrix: commands of every AMP
argument type, calls with good, missing and bad values, responders of every
kind, and the hooks a user may override.

Everything drawn is plain data or a function of it, so that the same
scenario can be built on stock AMP and on ``RPCProtocol``.
"""

from __future__ import annotations

import binascii
import keyword
from datetime import UTC, timedelta, timezone
from typing import Any

from hypothesis import strategies as st
from twisted.internet.defer import fail
from twisted.protocols import amp
from twisted.python.filepath import FilePath

from .scenarios import (
    KINDS,
    Behaviour,
    DeclaredError,
    FatalError,
    Scenario,
    Undeclared,
    makeCommand,
)

__all__ = ["Big", "Hexed", "scenarios", "pythonName"]


class Hexed(amp.Argument):
    """A user-defined argument type: bytes, hex-encoded on the wire."""

    def toString(self, inObject: bytes) -> bytes:
        return binascii.hexlify(inObject)

    def fromString(self, inString: bytes) -> bytes:
        return binascii.unhexlify(inString)


def pythonName(wire: bytes) -> str:
    """The keyword a caller passes for a wire name (AMP's rule)."""
    name = wire.decode("ascii").replace("-", "_")
    return name.title() if keyword.iskeyword(name) else name


_text = st.text(max_size=12)
_zones = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
)

#: name -> (argument factory taking ``optional``, value strategy).
TYPES: dict[str, tuple[Any, st.SearchStrategy[Any]]] = {
    "String": (amp.String, st.binary(max_size=24)),
    "Unicode": (amp.Unicode, _text),
    "Integer": (amp.Integer, st.integers()),
    "Float": (amp.Float, st.floats()),
    "Boolean": (amp.Boolean, st.booleans()),
    "Path": (
        amp.Path,
        st.text("abc/. ", min_size=1, max_size=8).map(lambda s: FilePath("/" + s)),
    ),
    "Decimal": (amp.Decimal, st.decimals(places=None)),
    "DateTime": (amp.DateTime, st.datetimes(timezones=_zones)),
    "ListOf(Integer)": (
        lambda optional=False: amp.ListOf(amp.Integer(), optional=optional),
        st.lists(st.integers(), max_size=4),
    ),
    "ListOf(Unicode)": (
        lambda optional=False: amp.ListOf(amp.Unicode(), optional=optional),
        st.lists(_text, max_size=4),
    ),
    "AmpList": (
        lambda optional=False: amp.AmpList(
            [(b"n", amp.Integer()), (b"s", amp.Unicode(optional=True))],
            optional=optional,
        ),
        st.lists(
            st.fixed_dictionaries({"n": st.integers()}, optional={"s": _text}),
            max_size=3,
        ),
    ),
    "Hexed": (Hexed, st.binary(max_size=12)),
    "Descriptor": (amp.Descriptor, st.integers(0, 64)),
}


class Big(bytes):
    """A value too long for one AMP value, that prints briefly."""

    def __repr__(self) -> str:
        return f"Big({len(self)} bytes)"


#: Values of the wrong kind a caller or responder may pass (row 8 of the
#: issue: ``amp.String`` given ``[104, 105]``).
_BAD = st.sampled_from(
    [[104, 105], 3, "hi", bytearray(b"hi"), None, 1.5, Big(b"x" * 65536), object()]
)

#: Argument wire names: plain, with a dash, a Python keyword, and a pair that
#: looks like a chunk of another key (a stock peer may use such names).
_NAMES = [b"a", b"bee", b"with-dash", b"from", b"v", b"v.2"]

_ERRORS = [
    DeclaredError("declared"),
    FatalError("fatal"),
    Undeclared("boom"),
    ValueError("bad value"),
    KeyError("key"),
    TypeError("type"),
    amp.RemoteAmpError(b"CUSTOM", "custom code"),
]


@st.composite
def arglists(draw: st.DrawFn, maxSize: int) -> list[tuple[bytes, str, bool]]:
    """``(wire name, type name, optional)`` for up to ``maxSize`` arguments."""
    names = draw(st.lists(st.sampled_from(_NAMES), max_size=maxSize, unique=True))
    return [
        (name, draw(st.sampled_from(sorted(TYPES))), draw(st.booleans()))
        for name in names
    ]


def declare(args: list[tuple[bytes, str, bool]]) -> list[tuple[bytes, amp.Argument]]:
    """Build the ``arguments`` (or ``response``) list of a command."""
    return [(name, TYPES[typ][0](optional=optional)) for name, typ, optional in args]


@st.composite
def values(
    draw: st.DrawFn,
    args: list[tuple[bytes, str, bool]],
    sloppy: bool,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """Keyword values for ``args``: usually good; optional ones sometimes
    left out; when ``sloppy``, sometimes a required one missing, a bad value
    or an unknown keyword (each noted in ``notes``)."""
    out: dict[str, Any] = {}
    for name, typ, optional in args:
        if optional and draw(st.booleans()):
            if draw(st.booleans()):
                out[pythonName(name)] = None
            continue
        if sloppy and draw(st.integers(0, 9)) == 0:
            if notes is not None:
                notes.append(f"missing {typ}")
            continue  # A required argument left out.
        if sloppy and draw(st.integers(0, 5)) == 0:
            bad = draw(_BAD)
            if notes is not None:
                notes.append(f"bad {typ}: {type(bad).__name__}")
            out[pythonName(name)] = bad
        else:
            out[pythonName(name)] = draw(TYPES[typ][1])
    if sloppy and draw(st.integers(0, 19)) == 0:
        if notes is not None:
            notes.append("unknown keyword")
        out["unknown"] = 1
    return out


# Command classmethod overrides (row 4), written as a user writes them.


def _makeArgumentsExtra(cls: Any, objects: dict[str, Any], proto: Any) -> amp.AmpBox:
    box = amp.Command.makeArguments.__func__(cls, objects, proto)
    box[b"extra"] = b"from makeArguments"
    return box


def _parseResponseCustom(cls: Any, box: amp.AmpBox, proto: Any) -> dict[str, Any]:
    response = amp.Command.parseResponse.__func__(cls, box, proto)
    response["custom"] = "from parseResponse"
    return response


def _parseArgumentsExtra(cls: Any, box: amp.AmpBox, proto: Any) -> dict[str, Any]:
    arguments = amp.Command.parseArguments.__func__(cls, box, proto)
    arguments["extra"] = box.get(b"extra")
    return arguments


def _makeResponseExtra(cls: Any, objects: dict[str, Any], proto: Any) -> amp.AmpBox:
    box = amp.Command.makeResponse.__func__(cls, objects, proto)
    box[b"extra"] = b"from makeResponse"
    return box


CALLER_OVERRIDES = {
    "makeArguments": _makeArgumentsExtra,
    "parseResponse": _parseResponseCustom,
}
RESPONDER_OVERRIDES = {
    "parseArguments": _parseArgumentsExtra,
    "makeResponse": _makeResponseExtra,
}


# Protocol hook overrides (row 1), as mixins.


class DispatchRecorder:
    """Overrides ``dispatchCommand`` to note every command it sees."""

    def dispatchCommand(self, box: amp.AmpBox) -> Any:
        self.observed.append(("dispatchCommand", box[amp.COMMAND]))
        return super().dispatchCommand(box)


class DispatchRefuser:
    """Overrides ``dispatchCommand`` to refuse everything (as MAAS 3.x's
    ``SecuredRPCProtocol`` refuses commands before authentication)."""

    def dispatchCommand(self, box: amp.AmpBox) -> Any:
        self.observed.append(("refused", box[amp.COMMAND]))
        return fail(amp.RemoteAmpError(b"REFUSED", "refused by dispatchCommand"))


class DispatchRewriter:
    """Overrides ``dispatchCommand`` to add a key to every answer."""

    def dispatchCommand(self, box: amp.AmpBox) -> Any:
        def rewrite(answer: amp.AmpBox) -> amp.AmpBox:
            answer[b"rewritten"] = b"yes"
            return answer

        return super().dispatchCommand(box).addCallback(rewrite)


class DispatchRaiser:
    """Overrides ``dispatchCommand`` and raises in it."""

    def dispatchCommand(self, box: amp.AmpBox) -> Any:
        self.observed.append(("dispatchCommand raised", box[amp.COMMAND]))
        raise RuntimeError("dispatchCommand crashed")


class LocateAlias:
    """Overrides ``locateResponder`` to answer ``Alias`` with ``Probe``'s
    responder and to record every lookup."""

    def locateResponder(self, name: bytes) -> Any:
        self.observed.append(("locateResponder", name))
        if name == b"Alias":
            name = b"Probe"
        return super().locateResponder(name)


class CommandReceivedRecorder:
    """Overrides ``_commandReceived`` (private, but a documented seam of
    this project's fast path) to note every command box."""

    def _commandReceived(self, box: amp.AmpBox) -> None:
        self.observed.append(("_commandReceived", box[amp.COMMAND]))
        super()._commandReceived(box)


MIXINS = {
    "none": (),
    "DispatchRecorder": (DispatchRecorder,),
    "DispatchRefuser": (DispatchRefuser,),
    "DispatchRewriter": (DispatchRewriter,),
    "DispatchRaiser": (DispatchRaiser,),
    "LocateAlias": (LocateAlias,),
    "CommandReceivedRecorder": (CommandReceivedRecorder,),
}


@st.composite
def answers(
    draw: st.DrawFn, response: list[tuple[bytes, str, bool]]
) -> tuple[Any, str]:
    """What a responder returns: usually a valid answer for ``response``;
    sometimes one that cannot be serialised (row 7); and which it is."""
    choice = draw(st.integers(0, 11))
    if choice == 0:
        return None, "not a dict"
    good = draw(values(response, sloppy=False))
    if choice == 1 and response:
        wire, typ, _ = draw(st.sampled_from(response))
        bad = draw(_BAD)
        good[pythonName(wire)] = bad  # A value of the wrong kind.
        return good, f"bad {typ}: {type(bad).__name__}"
    if choice == 2:
        good["unknown"] = 1  # A key the response does not declare.
        return good, "unknown key"
    return good, "good"


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Scenario, dict[str, Any]]:
    """One scenario of the matrix, and a summary of what was drawn (for the
    reader of a failure)."""
    args = draw(arglists(3))
    response = draw(arglists(2))
    errors: dict[type[Exception], bytes] = {}
    if draw(st.booleans()):
        errors[DeclaredError] = b"DECLARED"
    for builtin in draw(st.lists(st.sampled_from([ValueError, KeyError, TypeError]))):
        errors[builtin] = builtin.__name__.upper().encode("ascii")
    fatal = {FatalError: b"FATAL"} if draw(st.booleans()) else {}
    requiresAnswer = draw(st.integers(0, 7)) != 0

    callerOverrides = {
        k: v for k, v in CALLER_OVERRIDES.items() if draw(st.integers(0, 5)) == 0
    }
    responderOverrides = {
        k: v for k, v in RESPONDER_OVERRIDES.items() if draw(st.integers(0, 5)) == 0
    }

    # The caller's and the responder's views of the command usually agree;
    # sometimes the responder needs an argument the caller does not send, or
    # reads one as another type (parse failures, row 6), or the caller reads
    # the answer as another type.
    skew = draw(st.sampled_from(["none"] * 6 + ["extra", "argtype", "resptype"]))
    responderArgs = list(args)
    callerResponse = list(response)
    if skew == "extra":
        responderArgs.append((b"needed", "Integer", False))
    elif skew == "argtype" and args:
        name, _, optional = args[0]
        responderArgs[0] = (
            name,
            draw(st.sampled_from(["Integer", "Boolean"])),
            optional,
        )
    elif skew == "resptype" and response:
        name, _, optional = response[0]
        callerResponse[0] = (name, "Integer", optional)

    common = dict(errors=errors, fatalErrors=fatal, requiresAnswer=requiresAnswer)
    callerCommand = makeCommand(
        b"Probe", declare(args), declare(callerResponse), **common, **callerOverrides
    )
    responderCommand = makeCommand(
        b"Probe",
        declare(responderArgs),
        declare(response),
        **common,
        **responderOverrides,
    )

    kind = draw(st.sampled_from(KINDS))
    error = draw(st.sampled_from(_ERRORS))
    answer, answerIs = draw(answers(response))
    behaviour = Behaviour(kind, answer, lambda: _copy(error))
    mixin = draw(st.sampled_from(sorted(MIXINS)))
    known = draw(st.integers(0, 15)) != 0  # Else: nobody answers Probe.
    callNotes: list[str] = []
    calls = tuple(
        draw(values(args, sloppy=True, notes=callNotes))
        for _ in range(draw(st.integers(1, 2)))
    )
    handled = draw(st.integers(0, 3)) != 0
    scenario = Scenario(
        callerCommand=callerCommand,
        responders={responderCommand: behaviour} if known else {},
        calls=calls,
        handled=handled,
        mixins=MIXINS[mixin],
    )
    summary = {
        "arguments": args,
        "response": response,
        "errors": sorted(e.__name__ for e in errors),
        "fatal": bool(fatal),
        "requiresAnswer": requiresAnswer,
        "callerOverrides": sorted(callerOverrides),
        "responderOverrides": sorted(responderOverrides),
        "skew": skew,
        "responder": (kind, answer, error) if known else None,
        "answer": answerIs,
        "mixin": mixin,
        "calls": calls,
        "sloppy": callNotes,
        "handled": handled,
    }
    return scenario, summary


def _copy(error: BaseException) -> BaseException:
    # A fresh exception each time it is raised (tracebacks accumulate).
    if isinstance(error, amp.RemoteAmpError):
        return amp.RemoteAmpError(error.errorCode, error.description)
    return type(error)(*error.args)
