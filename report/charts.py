"""Line charts as inline SVG with a movable step cursor: crisp at any zoom, a few KB each, no JS library.

Each chart carries its x mapping (``data-x0``, ``data-x1`` in pixels for steps ``data-s0``, ``data-s1``)
so the page's script can move the cursor line to any step without knowing how the chart was drawn.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from actrec.viewer.curves import nice_ticks

_MAX_POINTS = 1500  # per line: more than a chart's pixels only adds bytes


@dataclass(frozen=True)
class Line:
    """One line of a chart: ``values`` against training ``steps``; NaN breaks the line."""

    label: str
    steps: np.ndarray
    values: np.ndarray
    color: str
    width: float = 1.5
    dashed: bool = False
    markers: bool = False


def css_color(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _thin(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(steps) <= _MAX_POINTS:
        return steps, values
    keep = np.unique(np.linspace(0, len(steps) - 1, _MAX_POINTS).astype(np.int64))
    return steps[keep], values[keep]


def _label(value: float, spacing: float, percent: bool) -> str:
    if percent:
        value, spacing = 100 * value, 100 * spacing
    decimals = 0 if spacing >= 1 else min(6, int(np.ceil(-np.log10(spacing) - 1e-9))) if spacing > 0 else 2
    text = f"{value:.{decimals}f}"
    return text + ("%" if percent else "")


def svg_chart(
    title: str,
    lines: Sequence[Line],
    *,
    width: int = 440,
    height: int = 230,
    percent: bool = False,
    y_range: tuple[float, float] | None = None,
    x_range: tuple[float, float] | None = None,
    x_label: str = "training step",
) -> str:
    """An SVG line chart with axes, ticks, a legend-free title and a cursor line (class ``cursor``).

    Args:
        title: drawn top left.
        lines: the lines; empty or all-NaN lines are skipped.
        width: pixels.
        height: pixels.
        percent: label the y axis in percent.
        y_range: fixed y limits (default: round ticks around the data).
        x_range: fixed step limits (default: the data's).
        x_label: the x axis's label.

    Returns:
        The ``<svg>`` element as a string.
    """
    left, right, top, bottom = 52, width - 12, 26, height - 34
    finite = [(np.asarray(line.steps, np.float64), np.asarray(line.values, np.float64)) for line in lines]
    finite = [(s[np.isfinite(v)], v[np.isfinite(v)]) for s, v in finite]
    xs = np.concatenate([s for s, _ in finite]) if finite else np.zeros(0)
    ys = np.concatenate([v for _, v in finite]) if finite else np.zeros(0)
    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}"',
    ]
    if xs.size == 0:
        parts[0] += ">"
        parts.append(f'<text x="{left}" y="16" class="chart-title">{html.escape(title)}</text>')
        parts.append(f'<text x="{(left + right) / 2}" y="{(top + bottom) / 2}" class="tick" '
                     'text-anchor="middle">no data</text></svg>')  # fmt: skip
        return "".join(parts)
    s0, s1 = x_range if x_range is not None else (float(xs.min()), float(xs.max()))
    s1 = s1 if s1 > s0 else s0 + 1
    if y_range is None:
        ticks = nice_ticks(float(ys.min()), float(ys.max()), target=5)
        y0, y1 = min(ticks[0], float(ys.min())), max(ticks[-1], float(ys.max()))
    else:
        y0, y1 = y_range
        ticks = [t for t in nice_ticks(y0, y1, target=5) if y0 - 1e-9 <= t <= y1 + 1e-9]
    y1 = y1 if y1 > y0 else y0 + 1

    def px(step: np.ndarray | float) -> np.ndarray:  # a NumPy scalar for a float
        return left + (np.asarray(step, np.float64) - s0) / (s1 - s0) * (right - left)

    def py(value: np.ndarray | float) -> np.ndarray:  # a NumPy scalar for a float
        return bottom - (np.asarray(value, np.float64) - y0) / (y1 - y0) * (bottom - top)

    parts[0] += f' data-x0="{left}" data-x1="{right}" data-s0="{s0:g}" data-s1="{s1:g}">'
    parts.append(f'<text x="{left}" y="16" class="chart-title">{html.escape(title)}</text>')
    spacing = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    for tick in ticks:
        y = float(py(tick))
        parts.append(f'<line x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">'
                     f"{_label(tick, spacing, percent)}</text>")  # fmt: skip
    x_ticks = [t for t in nice_ticks(s0, s1, target=6) if s0 <= t <= s1]
    x_spacing = x_ticks[1] - x_ticks[0] if len(x_ticks) > 1 else 1.0
    for tick in x_ticks:
        x = float(px(tick))
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{bottom}" y2="{bottom + 4}" class="axis"/>')
        parts.append(f'<text x="{x:.1f}" y="{bottom + 16}" class="tick" text-anchor="middle">'
                     f"{_label(tick, x_spacing, False)}</text>")  # fmt: skip
    parts.append(f'<line x1="{left}" x2="{right}" y1="{bottom}" y2="{bottom}" class="axis"/>')
    parts.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{bottom}" class="axis"/>')
    parts.append(f'<text x="{(left + right) / 2}" y="{height - 4}" class="tick" text-anchor="middle">'
                 f"{html.escape(x_label)}</text>")  # fmt: skip
    for line in lines:
        steps, values = _thin(np.asarray(line.steps, np.float64), np.asarray(line.values, np.float64))
        valid = np.isfinite(steps) & np.isfinite(values)
        style = f'stroke="{line.color}" stroke-width="{line.width}"' + (
            ' stroke-dasharray="5 3"' if line.dashed else ""
        )
        # One polyline per run of finite points: NaN breaks the line instead of bridging the gap.
        breaks = np.flatnonzero(np.diff(valid.astype(np.int8)) != 0) + 1
        for segment in np.split(np.arange(len(steps)), breaks):
            if segment.size == 0 or not valid[segment[0]]:
                continue
            points = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(px(steps[segment]), py(values[segment]), strict=True))
            if line.markers or segment.size == 1:
                for x, y in zip(px(steps[segment]), py(values[segment]), strict=True):
                    parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{line.color}"/>')
            if segment.size > 1:
                parts.append(f'<polyline fill="none" {style} points="{points}"><title>{html.escape(line.label)}'
                             "</title></polyline>")  # fmt: skip
    x = float(px(s0))
    parts.append(f'<line class="cursor" x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{bottom}"/>')
    parts.append("</svg>")
    return "".join(parts)
