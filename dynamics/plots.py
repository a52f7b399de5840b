"""Draw a run's dynamics (or several runs') as line panels, with the viewer's curve drawing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from actrec.viewer.curves import PANEL_SIZE, SUPERSAMPLE, Series, draw_legend, draw_panel, font

if TYPE_CHECKING:
    from actrec.dynamics.compute import Dynamics

_BACKGROUND = (255, 255, 255)
_TEXT = (30, 30, 30)
# Bottom layers dark, top layers light-warm (viridis-like), so "bottom up" reads as dark before light.
LAYER_COLORS: tuple[tuple[int, int, int], ...] = (
    (68, 1, 84),
    (65, 68, 135),
    (42, 120, 142),
    (34, 168, 132),
    (122, 209, 81),
    (220, 200, 30),
    (253, 141, 60),
    (215, 48, 39),
)


def layer_colors(count: int) -> list[tuple[int, int, int]]:
    """``count`` colours spread over :data:`LAYER_COLORS`, first layer darkest."""
    if count <= 1:
        return [LAYER_COLORS[0]] * count
    picks = np.rint(np.linspace(0, len(LAYER_COLORS) - 1, count)).astype(int)
    return [LAYER_COLORS[i] for i in picks]


def panel_figure(
    panels: Sequence[tuple[str, Sequence[Series], bool]],
    *,
    title: str = "",
    columns: int = 2,
    legend: Sequence[Series] | None = None,
    x_label: str | None = None,
) -> np.ndarray:
    """Draw line panels on a grid: ``(panel title, series, values are fractions)`` each.

    Args:
        panels: one entry per panel.
        title: the figure's title line.
        columns: panels per row.
        legend: series to list in the legend (default: every labelled series with data, once).
        x_label: the x-axis label, when it is not "training step".

    Returns:
        A new ``(H, W, 3)`` uint8 RGB image.
    """
    s = SUPERSAMPLE
    rows = -(-len(panels) // columns)
    title_height = 30
    width, height = columns * PANEL_SIZE[0], rows * PANEL_SIZE[1] + title_height
    image = Image.new("RGB", (width * s, height * s), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((16 * s, 10 * s), title, font=font(15), fill=_TEXT)
    shown: dict[str, Series] = {}
    for index, (name, series, percent) in enumerate(panels):
        origin = ((index % columns) * PANEL_SIZE[0] * s, (title_height + (index // columns) * PANEL_SIZE[1]) * s)
        visible = draw_panel(
            draw, origin, name, series, percent=percent, epoch_starts=(), x_label=x_label or "training step"
        )
        shown.update((item.label, item) for item in visible if item.label)
    items = list(legend) if legend is not None else list(shown.values())
    if items:
        draw_legend(draw, (width - 18) * s, 20 * s, items)
    return np.asarray(image.resize((width, height), Image.Resampling.LANCZOS))


def log10_or_nan(values: np.ndarray) -> np.ndarray:
    """``log10`` of positive values, NaN elsewhere (for relative change, which spans decades)."""
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(values > 0, np.log10(np.where(values > 0, values, 1.0)), np.nan)


def dynamics_panels(runs: Sequence[tuple[str, Dynamics]], *, x_key: str = "global_steps") -> list:
    """The four dynamics panels for one or more ``(label, Dynamics)``; lines per layer (and run).

    With one run, layers are coloured bottom (dark) to top (light); with several, each run keeps the
    layer colours and later runs are drawn thinner and listed by label in the legend.
    """
    panels: dict[str, list[Series]] = {
        "CKA to the final step": [],
        "CKA to the first step": [],
        "relative change per recorded step (log10)": [],
        "saturated fraction (|a| > 0.99)": [],
    }
    for run_index, (label, dynamics) in enumerate(runs):
        layers = list(dynamics.layers.values())
        for layer, color in zip(layers, layer_colors(len(layers)), strict=True):
            name = layer.name if len(runs) == 1 else f"{label}: {layer.name}"
            width = 2.0 if run_index == 0 else 1.0
            steps = getattr(dynamics, x_key)
            values = (layer.cka_to_final, layer.cka_to_first, log10_or_nan(layer.relative_change),
                      layer.saturated_fraction)  # fmt: skip
            for (_, series), value in zip(panels.items(), values, strict=True):
                series.append(Series(name, steps, value, color, width=width))
    return [(title, series, title.startswith("saturated")) for title, series in panels.items()]


def dynamics_figure(dynamics: Dynamics, *, title: str = "") -> np.ndarray:
    """The dynamics of one run: CKA to final and first, relative change, saturation; one line per layer."""
    return panel_figure(dynamics_panels([("", dynamics)]), title=title)
