"""Show the processes' logs in the report of a failed fault test.

A test that uses the ``processes`` fixture fails with the tail of every
process's log appended to its report.
"""

from __future__ import annotations

from typing import Any

import pytest


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    report = yield
    if report.failed:
        processes = getattr(item, "funcargs", {}).get("processes")
        describe = getattr(processes, "describe", None)
        if describe is not None:
            report.sections.append(("maas-rpc process logs", describe()))
    return report
