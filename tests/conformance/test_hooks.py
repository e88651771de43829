"""Hooks a Twisted user may override run as under stock AMP.

* a protocol subclass overriding ``dispatchCommand`` (as MAAS 3.x's
  ``SecuredRPCProtocol`` does for its authentication check),
  ``locateResponder`` or ``_commandReceived``, or answering through a
  separate locator or a low-level ``amp_NAME`` responder;
* a command overriding the classmethods ``makeArguments``,
  ``parseResponse`` (caller side), ``parseArguments`` or ``makeResponse``
  (responder side).

Rows of issue 10 caught here: 1 (``dispatchCommand`` override ignored on
the fast path) and 4 (classmethod overrides ignored).
"""

from __future__ import annotations

import pytest
from twisted.protocols import amp

from maas_rpc_conformance.scenarios import (
    BASES,
    ROLES,
    Behaviour,
    Scenario,
    assertConforms,
    makeCommand,
    newProtocol,
    play,
)
from maas_rpc_conformance.strategies import (
    CALLER_OVERRIDES,
    MIXINS,
    RESPONDER_OVERRIDES,
)

ARGUMENTS = [(b"n", amp.Integer()), (b"s", amp.Unicode())]
RESPONSE = [(b"total", amp.Integer())]
CALLS = ({"n": 1, "s": "one"}, {"n": 2, "s": "two"})
ANSWER = Behaviour("sync", {"total": 3})


def probe(**classmethods) -> type[amp.Command]:
    return makeCommand(b"Probe", ARGUMENTS, RESPONSE, **classmethods)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("kind", ["sync", "later", "coroutine"])
@pytest.mark.parametrize("mixin", sorted(set(MIXINS) - {"none"}))
def test_protocol_hook_override(mixin: str, kind: str, role: tuple[str, str]) -> None:
    command = probe()
    scenario = Scenario(
        command,
        {command: Behaviour(kind, {"total": 3})},
        calls=CALLS,
        mixins=MIXINS[mixin],
    )
    assertConforms(scenario, role, f"a responder class with {mixin}")


@pytest.mark.parametrize("role", ROLES)
def test_locate_responder_override_answers_another_name(role) -> None:
    command = probe()
    alias = makeCommand(b"Alias", ARGUMENTS, RESPONSE)
    scenario = Scenario(
        alias, {command: ANSWER}, calls=CALLS, mixins=MIXINS["LocateAlias"]
    )
    assertConforms(scenario, role, "Alias answered by Probe's responder")


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("name", sorted(CALLER_OVERRIDES))
def test_caller_side_classmethod_override(name: str, role: tuple[str, str]) -> None:
    caller = probe(**{name: CALLER_OVERRIDES[name]})
    responder = probe()
    assertConforms(Scenario(caller, {responder: ANSWER}, calls=CALLS), role, name)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("name", sorted(RESPONDER_OVERRIDES))
def test_responder_side_classmethod_override(name: str, role: tuple[str, str]) -> None:
    caller = probe()
    responder = probe(**{name: RESPONDER_OVERRIDES[name]})
    answer = Behaviour("sync", {"total": 3})
    assertConforms(Scenario(caller, {responder: answer}, calls=CALLS), role, name)


class SeparateLocator(amp.CommandLocator):
    """Responders that live outside the protocol (``AMP(locator=...)``)."""

    def __init__(self, proto) -> None:
        self.observed = proto.observed
        self.later = proto.later

    @probe().responder
    def probe(self, n: int, s: str) -> dict:
        self.observed.append(("locator", n, s))
        return {"total": n + len(s)}


@pytest.mark.parametrize("role", ROLES)
def test_responders_in_a_separate_locator(role: tuple[str, str]) -> None:
    command = SeparateLocator._commandDispatch[b"Probe"][0]

    def outcome(caller: str, responder: str):
        responderProto = newProtocol(BASES[responder])
        responderProto.locator = SeparateLocator(responderProto)
        return play(
            Scenario(command, calls=CALLS), newProtocol(BASES[caller]), responderProto
        )

    assert outcome(*role) == outcome("stock", "stock")


def lowLevel(base: type[amp.AMP]) -> type[amp.AMP]:
    class LowLevel(base):
        """Answers Probe with a low-level ``amp_PROBE`` responder (stock
        AMP's ``SimpleStringLocator``), box in, box out."""

        def amp_PROBE(self, box: amp.AmpBox) -> amp.AmpBox:
            self.observed.append(("amp_PROBE", dict(box)))
            return amp.AmpBox(total=b"%d" % (int(box[b"n"]) + 1))

    return LowLevel


@pytest.mark.parametrize("role", ROLES)
def test_low_level_responder(role: tuple[str, str]) -> None:
    def outcome(caller: str, responder: str):
        return play(
            Scenario(probe(), calls=CALLS),
            newProtocol(BASES[caller]),
            newProtocol(lowLevel(BASES[responder])),
        )

    assert outcome(*role) == outcome("stock", "stock")
