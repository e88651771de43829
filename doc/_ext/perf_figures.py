"""The performance page's figures and table, drawn from a reference run.

``doc/performance-reference.json`` is what ``python -m benchmarks --scale
--json-out FILE`` wrote on a reference machine. These directives read it
during the build, offline, with nothing but :mod:`benchmarks.svgplot` and
:mod:`benchmarks.scale` (plain Python):

``.. perf-figure:: p8-formation``
    The chart of that figure, as inline SVG (HTML builders; other builders
    show the caption only), with the directive's content as its caption.
``.. perf-table::``
    The table of every figure at every N, against its baseline, with the
    goal and whether the run met it.
``.. perf-meta::``
    One paragraph: the commit, the machine's limits, the run's length and
    load.
``.. perf-defaults::``
    The table of the default run's figures (P0-P7, ``python -m benchmarks
    --json-out FILE``), from ``doc/performance-default.json``: each against
    its baseline, with the goal and whether the run met it.
"""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import Directive
from docutils.statemachine import StringList

HERE = Path(__file__).resolve().parent
REFERENCE = HERE.parent / "performance-reference.json"
DEFAULT = HERE.parent / "performance-default.json"


@cache
def _reference() -> dict[str, Any]:
    document = json.loads(REFERENCE.read_text())
    return document.get("scale", document)


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


_COLUMNS = ("Figure", "What", "Unit", "maas-rpc", "Baseline", "Ratio", "Goal met")


def _figureTable(rows: list[tuple[str, ...]], widths: str) -> list[str]:
    """A ``list-table`` of figures: one row per figure, in :data:`_COLUMNS`."""
    lines = [".. list-table::", "   :header-rows: 1", f"   :widths: {widths}", ""]
    for row in [_COLUMNS, *rows]:
        lines += [f"   * - {row[0]}", *(f"     - {cell}" for cell in row[1:])]
    return lines


def _goal(met: bool | None, goals: list[str]) -> str:
    mark = {True: "yes", False: "**no**", None: ""}[met]
    return f"{mark} ({', '.join(goals)})" if goals else "-"


class PerfFigure(Directive):
    required_arguments = 1
    has_content = True

    def run(self) -> list[nodes.Node]:
        from benchmarks.svgplot import scaleCharts

        env = self.state.document.settings.env
        env.note_dependency(str(REFERENCE))
        charts = scaleCharts(_reference())
        name = self.arguments[0]
        if name not in charts:
            raise self.error(f"no figure {name!r}; there are {sorted(charts)}")
        figure = nodes.figure(classes=["perf-figure"])
        figure += nodes.raw("", charts[name], format="html")
        if self.content:
            caption = nodes.caption()
            inner = nodes.paragraph()
            self.state.nested_parse(self.content, self.content_offset, inner)
            for child in inner.children:
                caption += (
                    child.children if isinstance(child, nodes.paragraph) else child
                )
            figure += caption
        return [figure]


class PerfTable(Directive):
    has_content = False

    def run(self) -> list[nodes.Node]:
        from benchmarks.scale import figures
        from benchmarks.stats import summary

        env = self.state.document.settings.env
        env.note_dependency(str(REFERENCE))
        rows = []
        for f in figures(_reference()):
            ours = summary(f.ours)["median"]
            if f.baseline:
                base = f"{_fmt(summary(f.baseline)['median'])} ({f.baselineName})"
                ratio = f"{summary(f.ratios)['median']:.2f}x"
            else:
                base, ratio = "-", "-"
            goals = []
            if f.target is not None:
                goals.append(
                    f"{f.target[0]} {f.target[1]:g}" + ("x" if f.baseline else "")
                )
            if f.absTarget is not None:
                goals.append(f"{f.absTarget[0]} {f.absTarget[1]:g} {f.unit}")
            what = f.what.replace("*", "×")
            goal = _goal(f.met(), goals)
            rows.append((f.key, what, f.unit, _fmt(ours), base, ratio, goal))
        lines = _figureTable(rows, "14 40 8 12 18 10 10")
        container = nodes.container()
        self.state.nested_parse(StringList(lines, "<perf-table>"), 0, container)
        return container.children


class PerfMeta(Directive):
    has_content = False

    def run(self) -> list[nodes.Node]:
        result = _reference()
        meta = result.get("meta", {})
        limits = result["limits"]
        text = (
            f"Reference run: commit ``{meta.get('commit')}``, "
            f"{limits['cpus']} CPUs, {limits['memory_bytes'] / 2**30:.0f} GiB, "
            f"{limits['nofile_soft']} open files per process, listen backlog "
            f"cap (``somaxconn``) {limits['somaxconn']}; the run took "
            f"{meta.get('total_seconds')} s, load average "
            f"{meta.get('loadavg_before', ['?'])[0]} before and "
            f"{meta.get('loadavg_after', ['?'])[0]} after."
        )
        container = nodes.container()
        self.state.nested_parse(StringList([text], "<perf-meta>"), 0, container)
        return container.children


class PerfDefaults(Directive):
    has_content = False

    def run(self) -> list[nodes.Node]:
        env = self.state.document.settings.env
        env.note_dependency(str(DEFAULT))
        document = json.loads(DEFAULT.read_text())
        meta = document.get("meta", {})
        lines = [
            f"Run of commit ``{meta.get('commit')}``, {meta.get('trials')} trials "
            f"each (the median shown), {meta.get('total_seconds')} s in all, load "
            f"average {meta.get('loadavg_before', ['?'])[0]} before.",
        ]
        rows = []
        for key, figure in document["figures"].items():
            ours = figure["ours"]["median"]
            base = "-"
            if figure.get("baseline"):
                median = _fmt(figure["baseline"]["median"])
                base = f"{median} ({figure['baseline_name']})"
            ratio = f"{figure['ratio']['median']:.2f}x" if figure.get("ratio") else "-"
            goals = [figure[k] for k in ("target", "abs_target") if figure.get(k)]
            what = figure["what"].replace("*", "×")
            goal = _goal(figure.get("met"), goals)
            rows.append((key, what, figure["unit"], _fmt(ours), base, ratio, goal))
        lines += ["", *_figureTable(rows, "12 40 10 12 20 10 12")]
        container = nodes.container()
        self.state.nested_parse(StringList(lines, "<perf-defaults>"), 0, container)
        return container.children


def setup(app: Any) -> dict[str, Any]:
    """Register the directives."""
    app.add_directive("perf-figure", PerfFigure)
    app.add_directive("perf-table", PerfTable)
    app.add_directive("perf-meta", PerfMeta)
    app.add_directive("perf-defaults", PerfDefaults)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
