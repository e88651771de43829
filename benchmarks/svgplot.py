"""Line charts as SVG text, with nothing but the standard library.

:func:`lineChart` draws series of ``(x, y)`` points as polylines on linear
axes with "nice" ticks, a legend, and optional horizontal goal lines.
:func:`scaleCharts` turns a ``python -m benchmarks --scale`` result into one
chart per figure; the docs build draws the performance page's figures with
it from a checked-in result, so the page needs no plotting library and no
network.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from html import escape
from typing import Any

__all__ = ["Series", "lineChart", "scaleCharts"]

#: Colours of the series, in order (distinguishable, also in grey).
COLOURS = ("#1f5fbf", "#d95f02", "#1b9e77", "#7570b3", "#a6761d", "#e7298a")


class Series:
    """One line of a chart.

    :param name: its legend.
    :param points: ``(x, y)`` pairs; ``y`` may be ``None`` (a gap).
    :param dashed: drawn dashed (baselines, references).
    """

    def __init__(
        self,
        name: str,
        points: Sequence[tuple[float, float | None]],
        dashed: bool = False,
    ) -> None:
        self.name = name
        self.points = [(x, y) for x, y in points if y is not None and math.isfinite(y)]
        self.dashed = dashed


def _nice(top: float) -> tuple[float, list[float]]:
    """An axis maximum at or above ``top`` and its ticks (4 to 8 of them)."""
    if top <= 0:
        return 1.0, [0.0, 0.5, 1.0]
    raw = top / 5
    magnitude = 10 ** math.floor(math.log10(raw))
    for step in (1, 2, 2.5, 5, 10):
        if raw <= step * magnitude:
            step *= magnitude
            break
    end = math.ceil(top / step - 1e-9) * step
    ticks = [i * step for i in range(int(round(end / step)) + 1)]
    return end, ticks


def _label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10 or float(value).is_integer():
        return f"{value:g}"
    return f"{value:.2g}"


def lineChart(
    title: str,
    xLabel: str,
    yLabel: str,
    series: Sequence[Series],
    goals: Sequence[tuple[float, str]] = (),
    width: int = 640,
    height: int = 380,
) -> str:
    """Draw ``series`` as an SVG line chart.

    :param title: the chart's title.
    :param xLabel: the horizontal axis' label.
    :param yLabel: the vertical axis' label (with the unit).
    :param series: the lines.
    :param goals: horizontal lines ``(y, label)``, drawn dotted.
    :param width: in pixels.
    :param height: in pixels.
    :return: the SVG document, as text.
    """
    left, right, top, bottom = 70, 190, 40, 50
    plotW, plotH = width - left - right, height - top - bottom
    xs = [x for s in series for x, _ in s.points] or [0.0, 1.0]
    ys = [y for s in series for _, y in s.points] + [g for g, _ in goals]
    xMax, xTicks = _nice(max(xs))
    yMax, yTicks = _nice(max(ys or [1.0]) * 1.05)

    def px(x: float) -> float:
        return left + plotW * x / xMax

    def py(y: float) -> float:
        return top + plotH * (1 - y / yMax)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" '
        'font-family="sans-serif" font-size="12" role="img" '
        f'aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="22" font-size="14" font-weight="bold">'
        f"{escape(title)}</text>",
    ]
    for y in yTicks:
        out.append(
            f'<line x1="{left}" y1="{py(y):.1f}" x2="{left + plotW}" '
            f'y2="{py(y):.1f}" stroke="#e0e0e0"/>'
        )
        out.append(
            f'<text x="{left - 6}" y="{py(y) + 4:.1f}" text-anchor="end">'
            f"{_label(y)}</text>"
        )
    for x in xTicks:
        out.append(
            f'<text x="{px(x):.1f}" y="{top + plotH + 18}" '
            f'text-anchor="middle">{_label(x)}</text>'
        )
    out.append(
        f'<rect x="{left}" y="{top}" width="{plotW}" height="{plotH}" '
        'fill="none" stroke="#555"/>'
    )
    out.append(
        f'<text x="{left + plotW / 2:.1f}" y="{height - 10}" '
        f'text-anchor="middle">{escape(xLabel)}</text>'
    )
    out.append(
        f'<text transform="translate(18 {top + plotH / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle">{escape(yLabel)}</text>'
    )
    for y, label in goals:
        out.append(
            f'<line x1="{left}" y1="{py(y):.1f}" x2="{left + plotW}" '
            f'y2="{py(y):.1f}" stroke="#c00" stroke-dasharray="2 3"/>'
        )
        out.append(
            f'<text x="{left + plotW - 4}" y="{py(y) - 4:.1f}" '
            f'text-anchor="end" fill="#c00">{escape(label)}</text>'
        )
    legendY = top + 6
    for i, s in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        if s.points:
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in s.points)
            out.append(
                f'<polyline points="{path}" fill="none" stroke="{colour}" '
                f'stroke-width="2"{dash}/>'
            )
            for x, y in s.points:
                out.append(
                    f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}"/>'
                )
        lx = left + plotW + 12
        out.append(
            f'<line x1="{lx}" y1="{legendY}" x2="{lx + 22}" y2="{legendY}" '
            f'stroke="{colour}" stroke-width="2"{dash}/>'
        )
        out.append(f'<text x="{lx + 28}" y="{legendY + 4}">{escape(s.name)}</text>')
        legendY += 20
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _median(values: Any) -> float | None:
    if isinstance(values, list):
        return statistics.median(values) if values else None
    return values


def scaleCharts(result: dict[str, Any]) -> dict[str, str]:
    """One chart per scale figure, from a ``--scale`` result.

    :param result: the ``scale`` part of ``python -m benchmarks --scale
        --json-out``'s document.
    :return: file stem (``p8-formation``, ...) -> SVG text.
    """
    byN = {int(n): v for n, v in result["byN"].items()}
    sizes = sorted(byN)
    loops = result.get("eventloops", 4)

    def line(name: str, get: Any, dashed: bool = False) -> Series:
        points = []
        for n in sizes:
            try:
                points.append((n, _median(get(byN[n]))))
            except (KeyError, TypeError):
                continue
        return Series(name, points, dashed)

    # Raw AMP over TLS (the secure channel's crypto) where the run measured
    # it, as well as over plain TCP.
    tls = any("rawTLS" in v for v in byN.values())
    tcpName = "raw AMP/TCP" if tls else "raw AMP"

    def raws(name: str, get: Any) -> list[Series]:
        """The baselines: ``get(raw formation or P9 quantile, key)``."""
        out = [line(f"{tcpName} {name}(baseline)", lambda r: get(r, "raw"), True)]
        if tls:
            out.insert(
                0,
                line(
                    f"raw AMP/TLS {name}(baseline)",
                    lambda r: get(r, "rawTLS"),
                    True,
                ),
            )
        return out

    charts: dict[str, str] = {}
    first = sizes[0] if sizes else 1
    fresh0 = byN[first]["fresh"]["seconds"] if sizes else 0
    charts["p8-formation"] = lineChart(
        f"P8: formation of N clusters x {loops} event-loops",
        "clusters (N)",
        "seconds",
        [
            line("maas-rpc, fresh", lambda r: r["fresh"]["seconds"]),
            line("maas-rpc, warm", lambda r: r["warm"]["seconds"]),
            *raws("", lambda r, k: r[k]["seconds"]),
            Series(
                f"linear from N={first}",
                [(n, fresh0 * n / first) for n in sizes],
                True,
            ),
        ],
        goals=[(15.0, "goal at N=1,000: 15 s")],
    )
    charts["p9-gather"] = lineChart(
        "P9: gather() of one call to each of N clusters",
        "clusters (N)",
        "milliseconds",
        [
            line("maas-rpc p50", lambda r: r["P9"]["p50"]["ours"]),
            line("maas-rpc p99", lambda r: r["P9"]["p99"]["ours"]),
            *raws("p50 ", lambda r, k: r["P9"]["p50"][k]),
            *raws("p99 ", lambda r, k: r["P9"]["p99"][k]),
        ],
    )
    for side, ours, raw, rawName in (
        ("region", "rssRegionKiB", "rssServerKiB", "server "),
        ("cluster", "rssClusterKiB", "rssClientKiB", "client "),
    ):
        charts[f"p10-memory-{side}"] = lineChart(
            f"P10: RSS per authenticated connection, {side} side",
            "clusters (N)",
            "KiB per connection",
            [
                line("maas-rpc, fresh", lambda r, k=ours: r["fresh"][k]),
                line("maas-rpc, warm", lambda r, k=ours: r["warm"][k]),
                *raws(rawName, lambda r, key, k=raw: r[key][k]),
            ],
            goals=[(16.0, "goal: 16 KiB")],
        )
    charts["p11-discovery"] = lineChart(
        "P11: discovery and advertisement load in steady state",
        "clusters (N)",
        "% of one core",
        [
            line("discovery, region CPU", lambda r: r["P11"]["discoveryCorePercent"]),
            line(
                "same requests as 404s (baseline)",
                lambda r: r["P11"]["httpPerSecond"] * r["P11"]["notFoundCpuMs"] / 10,
                True,
            ),
            line("region, all CPU", lambda r: r["P11"]["regionCorePercent"]),
            line("PostgreSQL, all CPU", lambda r: r["P11"]["postgresCorePercent"]),
        ],
        goals=[(2.0, "goal: 2 %")],
    )
    charts["handshake-cpu"] = lineChart(
        "Handshake: CPU per authenticated connection",
        "clusters (N)",
        "ms of CPU per connection",
        [
            line("region side", lambda r: r["fresh"]["cpuRegionMs"]),
            line("cluster side", lambda r: r["fresh"]["cpuClusterMs"]),
            *raws("server ", lambda r, k: r[k]["cpuServerMs"]),
            *raws("client ", lambda r, k: r[k]["cpuClientMs"]),
        ],
    )
    return charts
