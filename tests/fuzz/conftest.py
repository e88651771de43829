"""Report what the wire fuzzing did (cases per target, resources) at the end
of the run, whether or not pytest shows captured output; and append the live
processes' logs to a failed fuzz test's report."""

from __future__ import annotations

from typing import Any

import pytest

_REPORT = pytest.StashKey[list[str]]()


@pytest.fixture(scope="session")
def fuzz_report(request: pytest.FixtureRequest) -> list[str]:
    """Lines to print in the terminal summary."""
    return request.config.stash.setdefault(_REPORT, [])


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    lines = config.stash.get(_REPORT, None)
    if lines:
        terminalreporter.write_sep("-", "maas-rpc wire fuzzing")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    """Append the live processes' logs to a failed fuzz test's report."""
    report = yield
    if report.failed:
        for name in ("region", "cluster"):
            live = getattr(item, "funcargs", {}).get(name)
            describe = getattr(live, "describe", None)
            if describe is not None:
                report.sections.append((f"maas-rpc {name} logs", describe()))
    return report
