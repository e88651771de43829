"""Show the processes' logs in the report of a failed hostile test.

A test that uses a ``mesh`` (or ``secureMesh``, ``victim``) fixture fails
with the tail of every process's log appended to its report.
"""

from __future__ import annotations

from typing import Any

import pytest


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    report = yield
    if report.failed:
        for name in ("mesh", "secureMesh", "victim"):
            fixture = getattr(item, "funcargs", {}).get(name)
            describe = getattr(fixture, "describe", None)
            if describe is not None:
                report.sections.append((f"maas-rpc process logs ({name})", describe()))
    return report
