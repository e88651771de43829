"""Summaries of trials, figures with their baselines, and the report.

A :class:`Figure` holds the trials of what is measured ("ours") and, where
there is one, of its baseline measured in the same run, interleaved with
ours. Its ratio is the median of the per-trial ratios (trial *i* of ours over
trial *i* of the baseline, taken back to back), with their min and max as
the spread; the ratio of the medians is reported as well.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Figure", "percentile", "render", "summary"]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, interpolated linearly."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max, quartiles and the values themselves."""
    if not values:
        return {"median": None, "min": None, "max": None, "trials": []}
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "q1": percentile(values, 25),
        "q3": percentile(values, 75),
        "trials": list(values),
    }


@dataclass
class Figure:
    """One line of the report.

    :ivar key: e.g. ``"P1"``.
    :ivar what: what is measured.
    :ivar unit: of the values (``calls/s``, ``ms``, ``s``, ``KiB``).
    :ivar higherIsBetter: whether a bigger value is better.
    :ivar ours: the trials of maas-rpc.
    :ivar baselineName: what the baseline is; empty when none.
    :ivar baseline: its trials, paired with ``ours`` by index.
    :ivar target: ``(op, value)`` on the ratio (or on ``ours`` when there is
        no baseline): ``(">=", 1.0)``, ``("<=", 5.0)``; ``None`` for none.
    :ivar absTarget: an extra ``(op, value)`` on ``ours`` itself.
    :ivar note: a remark shown under the table.
    """

    key: str
    what: str
    unit: str
    higherIsBetter: bool
    ours: list[float]
    baselineName: str = ""
    baseline: list[float] = field(default_factory=list)
    target: tuple[str, float] | None = None
    absTarget: tuple[str, float] | None = None
    note: str = ""

    @property
    def ratios(self) -> list[float]:
        return [o / b for o, b in zip(self.ours, self.baseline, strict=False) if b]

    @staticmethod
    def _meets(value: float | None, target: tuple[str, float] | None) -> bool | None:
        if target is None or value is None:
            return None
        op, bound = target
        return value >= bound if op == ">=" else value <= bound

    def met(self) -> bool | None:
        """Whether the target(s) are met; ``None`` when there is none."""
        if self.baseline:
            checks = [self._meets(summary(self.ratios)["median"], self.target)]
        else:
            checks = [self._meets(summary(self.ours)["median"], self.target)]
        checks.append(self._meets(summary(self.ours)["median"], self.absTarget))
        known = [c for c in checks if c is not None]
        return all(known) if known else None

    def asDict(self) -> dict[str, Any]:
        ours = summary(self.ours)
        result: dict[str, Any] = {
            "what": self.what,
            "unit": self.unit,
            "higher_is_better": self.higherIsBetter,
            "ours": ours,
        }
        if self.baseline:
            base = summary(self.baseline)
            result["baseline_name"] = self.baselineName
            result["baseline"] = base
            result["ratio"] = summary(self.ratios)
            result["ratio_of_medians"] = (
                ours["median"] / base["median"] if base["median"] else None
            )
        if self.target is not None:
            result["target"] = " ".join(map(str, self.target)) + (
                "x" if self.baseline else f" {self.unit}"
            )
        if self.absTarget is not None:
            result["abs_target"] = (
                f"{self.absTarget[0]} {self.absTarget[1]} {self.unit}"
            )
        result["met"] = self.met()
        if self.note:
            result["note"] = self.note
        return result


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell(values: list[float]) -> str:
    s = summary(values)
    if s["median"] is None:
        return "-"
    return f"{_fmt(s['median'])} [{_fmt(s['min'])}-{_fmt(s['max'])}]"


def render(figures: list[Figure], header: str = "") -> str:
    """The report as a text table: medians with [min-max] over trials."""
    rows = [("fig", "what", "unit", "maas-rpc", "baseline", "ratio", "target", "met")]
    notes = []
    for f in figures:
        ratio = "-"
        if f.baseline:
            r = summary(f.ratios)
            ratio = f"{r['median']:.2f}x [{r['min']:.2f}-{r['max']:.2f}]"
        targets = []
        if f.target is not None:
            targets.append(
                f"{f.target[0]} {f.target[1]:g}" + ("x" if f.baseline else f" {f.unit}")
            )
        if f.absTarget is not None:
            targets.append(f"{f.absTarget[0]} {f.absTarget[1]:g} {f.unit}")
        met = {True: "yes", False: "NO", None: ""}[f.met()]
        base = f"{_cell(f.baseline)} {f.baselineName}" if f.baseline else "-"
        rows.append(
            (
                f.key,
                f.what,
                f.unit,
                _cell(f.ours),
                base,
                ratio,
                ", ".join(targets) or "-",
                met,
            )
        )
        if f.note:
            notes.append(f"  {f.key}: {f.note}")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [header] if header else []
    for n, row in enumerate(rows):
        lines.append(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    if notes:
        lines.append("")
        lines.append("notes:")
        lines.extend(notes)
    return "\n".join(line.rstrip() for line in lines)
