"""Fixtures of the attack tests: every process a test starts is stopped by
that test, and a failed test's report carries the tail of every process's
log (the attacker's events included)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent


def _harness() -> Any:
    name = "maas_rpc_attack_harness"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "harness.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture
def harness() -> Any:
    """The attack harness module (``harness.py``)."""
    return _harness()


@pytest.fixture
def processes(tmp_path: Path, harness: Any):
    """Every process the test starts; all stopped, by PID, at the end."""
    processes = harness.Processes(tmp_path)
    try:
        yield processes
    finally:
        processes.stopAll()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    report = yield
    if report.failed:
        processes = getattr(item, "funcargs", {}).get("processes")
        describe = getattr(processes, "describe", None)
        if describe is not None:
            report.sections.append(("maas-rpc process logs", describe()))
            for process in processes.started:
                events = process.logPath.with_suffix(".jsonl")
                if events.exists():
                    tail = events.read_text(errors="replace").splitlines()[-40:]
                    report.sections.append((f"events of {process!r}", "\n".join(tail)))
    return report
