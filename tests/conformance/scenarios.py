"""Commands, responders and protocol subclasses, built the same way on any
base class, and the runner that plays one scenario between two peers.

A :class:`Scenario` says what the caller calls and how the responder
behaves; :func:`run` plays it with a given caller class and responder class
(stock-based :class:`~reference.ReferenceAMP` or ``RPCProtocol``) and returns
an :class:`Outcome`. Two runs of one scenario compare equal exactly when
their peers were indistinguishable.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pprint import pformat
from typing import Any

from provisioningserver.rpc.common import RPCProtocol
from twisted.internet.defer import Deferred, fail, succeed
from twisted.protocols import amp
from twisted.python.failure import Failure

from . import harness
from .reference import ReferenceAMP

__all__ = [
    "BASES",
    "assertConforms",
    "Behaviour",
    "DeclaredError",
    "FatalError",
    "KINDS",
    "Outcome",
    "ROLES",
    "Scenario",
    "makeCommand",
    "newProtocol",
    "play",
    "responderClass",
    "run",
]


class DeclaredError(Exception):
    """An error a command declares (wire code ``DECLARED``)."""


class FatalError(Exception):
    """An error a command declares as fatal (wire code ``FATAL``)."""


class Undeclared(Exception):
    """An error no command declares."""


#: The peers: ``stock`` is stock AMP with the deliberate differences
#: (:class:`ReferenceAMP`), ``rpc`` is the protocol under test, ``plain`` is
#: stock AMP as Twisted ships it (to show each deliberate difference).
BASES: dict[str, type[amp.AMP]] = {
    "stock": ReferenceAMP,
    "rpc": RPCProtocol,
    "plain": amp.AMP,
}

#: (caller, responder) pairs compared with ``("stock", "stock")``.
ROLES = [
    ("stock", "rpc"),  # RPCProtocol answers a stock caller.
    ("rpc", "stock"),  # RPCProtocol calls a stock responder.
    ("rpc", "rpc"),
]


def makeCommand(
    name: bytes = b"Probe",
    arguments: list[tuple[bytes, amp.Argument]] | None = None,
    response: list[tuple[bytes, amp.Argument]] | None = None,
    *,
    errors: dict[type[Exception], bytes] | None = None,
    fatalErrors: dict[type[Exception], bytes] | None = None,
    requiresAnswer: bool = True,
    base: type[amp.Command] = amp.Command,
    **classmethods: Callable[..., Any],
) -> type[amp.Command]:
    """Declare a command class, as a user would with a ``class`` statement.

    :param classmethods: overrides such as ``makeArguments``, given as plain
        functions ``(cls, ...)``; they become classmethods.
    """
    namespace: dict[str, Any] = {
        "commandName": name,
        "arguments": list(arguments or []),
        "response": list(response or []),
        "errors": dict(errors or {}),
        "fatalErrors": dict(fatalErrors or {}),
        "requiresAnswer": requiresAnswer,
    }
    for attr, function in classmethods.items():
        namespace[attr] = classmethod(function)
    return types.new_class(
        name.decode("ascii").replace("-", "_").replace(".", "_"),
        (base,),
        {},
        lambda ns: ns.update(namespace),
    )


#: How a responder answers.
KINDS = (
    "sync",  # returns the answer
    "succeed",  # returns a fired Deferred
    "later",  # returns a Deferred fired after the call has been delivered
    "coroutine",  # async def, returns the answer
    "coroutine-await",  # async def, awaits a later Deferred first
    "coroutine-object",  # a plain function returning a coroutine
    "raise",  # raises
    "fail",  # returns a failed Deferred
    "later-fail",  # returns a Deferred failed later
    "failure",  # returns a Failure
    "coroutine-raise",  # async def, raises
    "coroutine-await-raise",  # async def, awaits, then raises
)

RAISING = frozenset(
    {
        "raise",
        "fail",
        "later-fail",
        "failure",
        "coroutine-raise",
        "coroutine-await-raise",
    }
)


@dataclass(frozen=True)
class Behaviour:
    """What a responder does.

    :ivar kind: one of :data:`KINDS`.
    :ivar answer: what it answers (not always a valid answer).
    :ivar error: what it raises, a zero-argument factory.
    """

    kind: str = "sync"
    answer: Any = field(default_factory=dict)
    error: Callable[[], BaseException] = Undeclared

    def function(self) -> Callable[..., Any]:
        """A responder method behaving so (it records its arguments in
        ``self.observed``)."""
        kind, answer, error = self.kind, self.answer, self.error

        def later(proto: Any, fire: Callable[[Deferred[Any]], None]) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            proto.later.append(lambda: fire(d))
            return d

        if kind.startswith("coroutine") and kind != "coroutine-object":

            async def respondAsync(self: Any, **kw: Any) -> Any:
                self.observed.append(("called", harness.canon(kw)))
                if "await" in kind:
                    await later(self, lambda d: d.callback(None))
                if "raise" in kind:
                    raise error()
                return answer

            return respondAsync

        def respond(self: Any, **kw: Any) -> Any:
            self.observed.append(("called", harness.canon(kw)))
            if kind == "sync":
                return answer
            if kind == "succeed":
                return succeed(answer)
            if kind == "later":
                return later(self, lambda d: d.callback(answer))
            if kind == "coroutine-object":

                async def body() -> Any:
                    return answer

                return body()
            if kind == "raise":
                raise error()
            if kind == "fail":
                return fail(error())
            if kind == "later-fail":
                return later(self, lambda d: d.errback(error()))
            if kind == "failure":
                return Failure(error())
            raise AssertionError(f"unknown responder kind {kind!r}")

        return respond


def responderClass(
    base: type[amp.AMP],
    responders: dict[type[amp.Command], Behaviour] | None = None,
    mixins: tuple[type, ...] = (),
) -> type[amp.AMP]:
    """Subclass ``base`` (and ``mixins``) with responders, declared with
    ``Command.responder`` as a user declares them.

    :param responders: command -> behaviour of its responder.
    """
    namespace: dict[str, Any] = {}
    for n, behaviour in enumerate((responders or {}).values()):
        function = behaviour.function()
        function.__name__ = f"respond{n}"
        namespace[function.__name__] = function
    # Command.responder records (command, function) for the next class the
    # locator metaclass creates: register, then create the class at once.
    for (command, _), function in zip(
        (responders or {}).items(), namespace.values(), strict=True
    ):
        command.responder(function)
    return types.new_class(
        f"Responder_{base.__name__}",
        (*mixins, base),
        {},
        lambda ns: ns.update(namespace),
    )


def newProtocol(cls: type[amp.AMP], *args: Any, **kwargs: Any) -> Any:
    """Instantiate a protocol and give it what the responders record into."""
    proto = cls(*args, **kwargs)
    proto.observed = []
    proto.later = []
    return proto


@dataclass(frozen=True)
class Outcome:
    """What one run of a scenario did, in comparable form.

    :ivar callerWrote: the boxes (and trailing bytes) the caller wrote.
    :ivar responderWrote: the same for the responder.
    :ivar results: what each call gave its caller (see :class:`harness.Call`).
    :ivar fate: ``"open"``, ``"closed by caller"`` or ``"closed by
        responder"``.
    :ivar observed: what the responder's code saw (arguments, hooks run).
    :ivar notes: for the reader of a failure only: exceptions that escaped
        ``dataReceived`` (which the reactor would log).
    """

    callerWrote: Any
    responderWrote: Any
    results: tuple[Any, ...]
    fate: str
    observed: tuple[Any, ...]
    notes: tuple[Any, ...] = field(default=(), compare=False)


@dataclass
class Scenario:
    """One exchange: the caller makes ``calls`` (pipelined) with
    ``callerCommand``; the responder answers ``responders``.

    :ivar calls: keyword arguments of each call.
    :ivar handled: whether the caller handles failures.
    :ivar mixins: protocol mixins for the responder class (hook overrides).
    :ivar callerMixins: the same for the caller class.
    """

    callerCommand: type[amp.Command]
    responders: dict[type[amp.Command], Behaviour] = field(default_factory=dict)
    calls: tuple[dict[str, Any], ...] = ({},)
    handled: bool = True
    mixins: tuple[type, ...] = ()
    callerMixins: tuple[type, ...] = ()


def run(scenario: Scenario, caller: str, responder: str) -> Outcome:
    """Play ``scenario`` between a ``caller`` and a ``responder`` peer.

    :param caller: a key of :data:`BASES`.
    :param responder: a key of :data:`BASES`.
    """
    responderProto = newProtocol(
        responderClass(BASES[responder], scenario.responders, scenario.mixins)
    )
    callerProto = newProtocol(responderClass(BASES[caller], {}, scenario.callerMixins))
    return play(scenario, callerProto, responderProto)


def play(scenario: Scenario, callerProto: Any, responderProto: Any) -> Outcome:
    """Play ``scenario``'s calls between two protocols already built.

    :param callerProto: the caller (from :func:`newProtocol`).
    :param responderProto: the responder (from :func:`newProtocol`).
    """
    link = harness.Link(responderProto, callerProto)
    calls = [
        harness.Call.make(
            callerProto, scenario.callerCommand, handled=scenario.handled, **kw
        )
        for kw in scenario.calls
    ]
    settle(link, responderProto)
    return finish(link, calls, responderProto)


def assertConforms(
    scenario: Scenario, role: tuple[str, str], what: object = None
) -> Outcome:
    """Play ``scenario`` between stock peers and between ``role``'s peers,
    and fail, showing both, unless the outcomes are equal.

    :param role: ``(caller, responder)``, keys of :data:`BASES`.
    :param what: a description of the scenario for the failure message.
    :return: the (common) outcome.
    """
    expected = run(scenario, "stock", "stock")
    actual = run(scenario, *role)
    if actual != expected:
        differing = [
            name
            for name in ("callerWrote", "responderWrote", "results", "fate", "observed")
            if getattr(actual, name) != getattr(expected, name)
        ]
        raise AssertionError(
            f"{role[0]} caller -> {role[1]} responder differs from stock AMP in "
            f"{', '.join(differing)}"
            + (f" for {what}" if what is not None else "")
            + f"\n--- stock -> stock:\n{pformat(expected)}"
            + f"\n--- {role[0]} -> {role[1]}:\n{pformat(actual)}"
        )
    return actual


def settle(link: harness.Link, *protos: Any) -> None:
    """Flush, fire what responders left for later, and flush again, until
    nothing is left to do."""
    link.flush()
    while any(proto.later for proto in protos):
        for proto in protos:
            pending = list(proto.later)
            proto.later.clear()
            for fire in pending:
                fire()
        link.flush()


def finish(link: harness.Link, calls: list[harness.Call], responder: Any) -> Outcome:
    """Reduce a finished exchange to an :class:`Outcome`."""
    outcome = Outcome(
        callerWrote=harness.normaliseStream(bytes(link.caller.wrote)),
        responderWrote=harness.normaliseStream(bytes(link.responder.wrote)),
        results=tuple(call.seen(link) for call in calls),
        fate=link.fate,
        observed=tuple(getattr(responder, "observed", ())),
        notes=tuple(
            (end.name, failure.getErrorMessage())
            for end in (link.caller, link.responder)
            for failure in end.crashed
        ),
    )
    for call in calls:
        call.settle()
    return outcome
