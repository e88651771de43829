"""The conformance suite's shared pieces, importable by its test modules.

pytest runs in ``importlib`` mode, which puts nothing on ``sys.path``; the
helper modules beside this file (``harness``, ``reference``, ``scenarios``,
``strategies``) are made importable as the package ``maas_rpc_conformance``.
"""

from __future__ import annotations

import gc
import logging
import sys
import types
import warnings
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

if "maas_rpc_conformance" not in sys.modules:
    package = types.ModuleType("maas_rpc_conformance")
    package.__path__ = [str(HERE)]
    package.__doc__ = "The conformance suite's helpers (tests/conformance/)."
    sys.modules["maas_rpc_conformance"] = package


def pytest_make_parametrize_id(config: pytest.Config, val: object, argname: str):
    # ("stock", "rpc") reads as "stock->rpc": caller, then responder.
    if (
        argname == "role"
        and isinstance(val, tuple)
        and len(val) == 2
        and all(isinstance(v, str) for v in val)
    ):
        return f"{val[0]}->{val[1]}"
    return None


@pytest.fixture(autouse=True)
def _quiet():
    """Keep what a conformance run logs out of pytest's report.

    Each scenario makes peers crash, drop connections and leave failures
    unhandled on purpose, and Twisted logs all of it (through crochet, to
    the ``twisted`` logger); the comparison, not the log, is the result.
    Tests that check a log line use the ``logged`` fixture, which listens to
    Twisted's log directly.
    """
    twisted = logging.getLogger("twisted")
    propagate = twisted.propagate
    null = logging.NullHandler()
    twisted.addHandler(null)
    twisted.propagate = False
    try:
        yield
    finally:
        twisted.removeHandler(null)
        twisted.propagate = propagate


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    # Unhandled failures and never-awaited coroutines report themselves when
    # collected. Left to the collector, that may happen inside pytest's own
    # formatting of a failure, where CPython 3.11's ast.parse then fails with
    # "SystemError: AST constructor recursion depth mismatch": collect first.
    if call.excinfo is not None and item.path.parent == HERE:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gc.collect()
    return (yield)
