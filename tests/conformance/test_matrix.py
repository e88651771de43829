"""The differential matrix: random scenarios, each played between stock
peers and again with ``RPCProtocol`` in each role; the outcomes must be equal.

A scenario draws a command (arguments and response of every AMP argument
type, a user-defined type and ``Descriptor``, optional or not, declared and
fatal errors, classmethod overrides on either side's view, views that
disagree), calls with good, missing and bad values, a responder of every
kind (sync, Deferred, ``async def``, raising, returning ``Failure``,
answering something that cannot be serialised), and hook overrides on the
responder's protocol class. See ``strategies.py``.

The named tests beside this one (``test_responders.py``, ``test_hooks.py``,
``test_arguments.py``, ...) pin each known case; this one looks for the
cases nobody thought of. It is derandomised, so CI sees the same examples on
every run; a failure prints the scenario drawn and both outcomes.
"""

from __future__ import annotations

from pprint import pformat

import pytest
from hypothesis import HealthCheck, given, settings

from maas_rpc_conformance.scenarios import ROLES, run
from maas_rpc_conformance.strategies import scenarios

MATRIX = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.parametrize("role", ROLES)
@MATRIX
@given(drawn=scenarios())
def test_matrix(role: tuple[str, str], drawn) -> None:
    scenario, summary = drawn
    expected = run(scenario, "stock", "stock")
    actual = run(scenario, *role)
    assert actual == expected, (
        f"caller={role[0]} responder={role[1]} differs from stock for\n"
        f"{pformat(summary)}\n"
        f"stock:\n{pformat(expected)}\n{role[0]}->{role[1]}:\n{pformat(actual)}"
    )
