"""Training curves (loss and accuracy against step) drawn with Pillow: no plotting library needed.

Drawn at twice the output size and downsampled, which anti-aliases lines and text.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from actrec.recording import epochs as epoch_rule

SUPERSAMPLE = 2
PANEL_SIZE = (560, 380)  # output pixels per panel
_BACKGROUND = (255, 255, 255)
_AXIS = (60, 60, 60)
_GRID = (232, 232, 232)
_TEXT = (30, 30, 30)
_MUTED = (120, 120, 120)
_EPOCH_LINE = (205, 205, 205)


@dataclass(frozen=True)
class Series:
    """One line of a panel.

    Args:
        label: legend text.
        steps: x values (global steps).
        values: y values; NaN points are skipped.
        color: RGB colour.
        width: line width in output pixels.
        markers: draw a dot at every point (for sparse series such as validation).
    """

    label: str
    steps: np.ndarray
    values: np.ndarray
    color: tuple[int, int, int]
    width: float = 1.5
    markers: bool = False


def nice_ticks(low: float, high: float, target: int = 6) -> list[float]:
    """About ``target`` round tick values (1, 2, 2.5 or 5 times a power of ten apart) enclosing ``[low, high]``."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high - low <= 1e-9 * max(abs(low), abs(high), 1.0):  # (near-)constant data, e.g. CKA of 1 +- 1e-16
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(1, target - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [round(index * step, 12) for index in range(first, last + 1)]


def _format_tick(value: float, step: float, percent: bool) -> str:
    if percent:
        value, step = value * 100, step * 100
    decimals = 0 if step >= 1 else -math.floor(math.log10(step) + 1e-9)
    if not math.isclose(round(step, decimals), step, rel_tol=1e-6):
        decimals += 1  # steps of 2.5, 0.25 ...
    return f"{value:.{decimals}f}" + ("%" if percent else "")


DEFAULT_SMOOTHING = 0.9
"""The smoothing weight every curve uses (about ten points of memory); one value for every run, so two
compared runs are smoothed alike."""


def smooth(values: np.ndarray, weight: float = DEFAULT_SMOOTHING) -> np.ndarray:
    """TensorBoard's debiased exponential moving average: causal, and its first point is the first value.

    ``s_t = m_t / (1 - weight**n_t)`` with ``m_t = weight * m_(t-1) + (1 - weight) * x_t`` over the ``n_t`` finite
    values so far. Non-finite points are left as they are and do not enter the average; a constant series is
    returned unchanged (as TensorBoard does).

    Args:
        values: the series, in order.
        weight: between 0 (no smoothing) and 1 (exclusive).

    Returns:
        A new float64 array of the same length.

    Raises:
        ValueError: if ``weight`` is not in ``[0, 1)``.
    """
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"weight must be in [0, 1), got {weight!r}")
    values = np.asarray(values, dtype=np.float64)
    smoothed = values.copy()
    finite = np.flatnonzero(np.isfinite(values))
    if finite.size == 0 or np.all(values[finite] == values[finite[0]]):
        return smoothed
    counts = np.arange(1, finite.size + 1, dtype=np.float64)
    smoothed[finite] = _moving_average(values[finite], weight) / (1.0 - weight**counts)
    return smoothed


_EMA_BLOCK = 256


def _moving_average(values: np.ndarray, weight: float) -> np.ndarray:
    """``m_t = weight * m_(t-1) + (1 - weight) * x_t`` from ``m_(-1) = 0``, a block of points at a time.

    Within a block ``m = (1 - weight) * W @ x + weight**(k + 1) * m_before`` (``W``: lower-triangular powers of
    ``weight``): the same numbers as the point-by-point recurrence to rounding, without a Python loop per
    point (a 100,000-step run's curve is a few milliseconds, not a sixth of a second).
    """
    lags = np.arange(_EMA_BLOCK)
    powers = np.tril(weight ** np.clip(lags[:, None] - lags[None, :], 0, None).astype(np.float64))
    carried = weight ** (lags + 1.0)
    averaged = np.empty_like(values)
    before = 0.0
    for start in range(0, values.size, _EMA_BLOCK):
        block = values[start : start + _EMA_BLOCK]
        size = block.size
        result = (1.0 - weight) * (powers[:size, :size] @ block) + carried[:size] * before
        averaged[start : start + size] = result
        before = float(result[-1])
    return averaged


def faint(color: tuple[int, int, int], strength: float = 0.35) -> tuple[int, int, int]:
    """``color`` mixed with white: the raw series drawn under its smoothed line."""
    red, green, blue = (round(255 - strength * (255 - channel)) for channel in color)
    return red, green, blue


class _Panel:
    """One axes box: maps data coordinates to pixels of the supersampled canvas."""

    def __init__(
        self,
        draw: ImageDraw.ImageDraw,
        box: tuple[int, int, int, int],
        x_range: tuple[float, float],
        y_range: tuple[float, float],
    ) -> None:
        self.draw, self.box = draw, box
        self.x_low, self.x_high = x_range
        self.y_low, self.y_high = y_range

    def x(self, value: np.ndarray | float) -> np.ndarray:  # a NumPy scalar for a float
        left, _, right, _ = self.box
        return left + (np.asarray(value, dtype=np.float64) - self.x_low) / (self.x_high - self.x_low) * (right - left)

    def y(self, value: np.ndarray | float) -> np.ndarray:  # a NumPy scalar for a float
        _, top, _, bottom = self.box
        return bottom - (np.asarray(value, dtype=np.float64) - self.y_low) / (self.y_high - self.y_low) * (bottom - top)


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's default font at ``size`` output pixels (drawn on the supersampled canvas)."""
    try:
        return ImageFont.load_default(size=size * SUPERSAMPLE)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _data_range(series: Sequence[Series], axis: str) -> tuple[float, float] | None:
    arrays = [np.asarray(s.steps if axis == "x" else s.values, dtype=np.float64) for s in series]
    finite = [a[np.isfinite(a)] for a in arrays]
    finite = [a for a in finite if a.size]
    if not finite:
        return None
    return float(min(a.min() for a in finite)), float(max(a.max() for a in finite))


def draw_panel(
    draw: ImageDraw.ImageDraw,
    origin: tuple[int, int],
    title: str,
    series: Sequence[Series],
    *,
    percent: bool,
    epoch_starts: Sequence[tuple[int, int]],
    x_label: str = "training step",
) -> list[Series]:
    """Draw one panel of ``PANEL_SIZE`` (times ``SUPERSAMPLE``) with its top left at ``origin``.

    Args:
        draw: the supersampled canvas.
        origin: the panel's top left, in canvas pixels.
        title: drawn above the axes.
        series: the lines, drawn in order (the first underneath); all-NaN ones are left out.
        percent: values are fractions, labelled in percent and clipped to 0..1.
        epoch_starts: ``(epoch, step)`` pairs marked by vertical lines.
        x_label: the x axis's label.

    Returns:
        The series that had data, for the legend.
    """
    s = SUPERSAMPLE
    width, height = PANEL_SIZE[0] * s, PANEL_SIZE[1] * s
    left, top = origin[0] + 64 * s, origin[1] + 40 * s
    right, bottom = origin[0] + width - 18 * s, origin[1] + height - 44 * s
    draw.text((left, origin[1] + 12 * s), title, font=font(15), fill=_TEXT)
    visible = [item for item in series if np.isfinite(np.asarray(item.values, dtype=np.float64)).any()]
    x_data, y_data = _data_range(visible, "x"), _data_range(visible, "y")
    if x_data is None or y_data is None:
        draw.rectangle((left, top, right, bottom), outline=_GRID, width=s)
        draw.text(
            ((left + right) // 2, (top + bottom) // 2), "no data recorded yet", font=font(12), fill=_MUTED, anchor="mm"
        )
        return []
    x_ticks = nice_ticks(*x_data)
    y_low, y_high = y_data
    if percent:
        y_low, y_high = max(0.0, y_low), min(1.0, y_high)
    y_ticks = nice_ticks(y_low, y_high, target=6)
    if percent:
        y_ticks = [tick for tick in y_ticks if -1e-9 <= tick <= 1 + 1e-9]
    # x ends at the data (a run is as long as it is); y ends at round ticks enclosing the data.
    x_ticks = [tick for tick in x_ticks if x_data[0] <= tick <= x_data[1]] or [x_data[0]]
    x_range = (x_data[0], max(x_data[1], x_data[0] + 1))
    y_range = (min(y_ticks[0], y_low), max(y_ticks[-1], y_high))
    panel = _Panel(draw, (left, top, right, bottom), x_range, y_range)
    label_font, small_font = font(11), font(10)
    for tick in y_ticks:
        y = float(panel.y(tick))
        draw.line((left, y, right, y), fill=_GRID, width=s)
        step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else 1.0
        draw.text((left - 8 * s, y), _format_tick(tick, step, percent), font=label_font, fill=_MUTED, anchor="rm")
    for epoch, step_value in epoch_starts:
        if x_range[0] < step_value < x_range[1]:
            x = float(panel.x(step_value))
            draw.line((x, top, x, bottom), fill=_EPOCH_LINE, width=s)
            draw.text((x + 3 * s, top + 2 * s), f"epoch {epoch}", font=small_font, fill=_MUTED)
    for tick in x_ticks:
        x = float(panel.x(tick))
        draw.line((x, bottom, x, bottom + 5 * s), fill=_AXIS, width=s)
        step = x_ticks[1] - x_ticks[0] if len(x_ticks) > 1 else 1.0
        draw.text((x, bottom + 8 * s), _format_tick(tick, step, False), font=label_font, fill=_MUTED, anchor="mt")
    draw.line((left, bottom, right, bottom), fill=_AXIS, width=s)
    draw.line((left, top, left, bottom), fill=_AXIS, width=s)
    draw.text(((left + right) // 2, bottom + 26 * s), x_label, font=label_font, fill=_TEXT, anchor="mt")
    for item in visible:
        xs, ys = np.asarray(item.steps, dtype=np.float64), np.asarray(item.values, dtype=np.float64)
        keep = np.isfinite(xs) & np.isfinite(ys)
        points = list(zip(panel.x(xs[keep]).tolist(), panel.y(ys[keep]).tolist(), strict=True))
        line_width = max(1, round(item.width * s))
        if len(points) > 1:
            draw.line(points, fill=item.color, width=line_width, joint="curve")
        if item.markers or len(points) == 1:
            radius = 2.5 * s
            for x, y in points:
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=item.color)
    return visible


def draw_legend(draw: ImageDraw.ImageDraw, right: int, middle: int, series: Sequence[Series]) -> None:
    """One horizontal legend, right-aligned at ``right``, centred on the line ``middle``."""
    s = SUPERSAMPLE
    legend_font = font(11)
    widths = [30 * s + int(draw.textlength(item.label, font=legend_font)) for item in series]
    x = right - sum(widths) - 16 * s * (len(series) - 1)
    for item, width in zip(series, widths, strict=True):
        draw.line((x, middle, x + 22 * s, middle), fill=item.color, width=max(s, round(item.width * s * 1.3)))
        if item.markers:
            radius = 2.5 * s
            draw.ellipse((x + 11 * s - radius, middle - radius, x + 11 * s + radius, middle + radius), fill=item.color)
        draw.text((x + 28 * s, middle), item.label, font=legend_font, fill=_TEXT, anchor="lm")
        x += width + 16 * s


_BATCH_RAW = (176, 203, 228)
_BATCH_SMOOTH = (33, 102, 172)
_TRAIN_EPOCH = (90, 90, 90)
_VALIDATION = (230, 97, 1)


def training_curves(
    steps: Mapping[str, np.ndarray],
    scalars: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    title: str = "",
) -> np.ndarray:
    """Draw loss and accuracy against training step, side by side.

    Args:
        steps: per-row columns as returned by ``StoreReader.steps()``: ``global_step``, ``epoch``,
            ``batch_loss``, ``batch_acc``.
        scalars: ``{"train/loss": (steps, values), "val/loss": ..., "train/acc": ..., "val/acc": ...}``;
            missing or empty series are left out.
        title: a line above both panels, e.g. the run id.

    Returns:
        A new ``(H, W, 3)`` uint8 RGB image.
    """
    s = SUPERSAMPLE
    title_height = 30  # also holds the legend
    width, height = 2 * PANEL_SIZE[0], PANEL_SIZE[1] + title_height
    image = Image.new("RGB", (width * s, height * s), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((16 * s, 10 * s), title, font=font(15), fill=_TEXT)
    global_step = np.asarray(steps.get("global_step", np.zeros(0)), dtype=np.int64)
    epochs = np.asarray(steps.get("epoch", np.zeros(0)), dtype=np.int64)
    validation_steps = np.asarray(scalars.get("val/loss", (np.zeros(0), np.zeros(0)))[0])
    starts = epoch_rule.epoch_starts(global_step, epochs, validation_steps)
    # Epoch lines help only while they are few enough to read.
    epoch_starts = starts if len(starts) <= 12 else []
    shown: dict[str, Series] = {}
    for column, (kind, name, percent) in enumerate((("loss", "Loss", False), ("acc", "Accuracy", True))):
        batch = np.asarray(steps.get(f"batch_{kind}", np.zeros(0)), dtype=np.float64)
        series = [
            Series("train batch", global_step, batch, _BATCH_RAW, width=1.0),
            Series("train batch (smoothed)", global_step, smooth(batch), _BATCH_SMOOTH, width=2.0),
        ]
        for prefix, label, color in (("train", "train (logged)", _TRAIN_EPOCH), ("val", "validation", _VALIDATION)):
            x, y = scalars.get(f"{prefix}/{kind}", (np.zeros(0), np.zeros(0)))
            series.append(Series(label, np.asarray(x), np.asarray(y), color, width=1.5, markers=True))
        visible = draw_panel(
            draw,
            (column * PANEL_SIZE[0] * s, title_height * s),
            name,
            series,
            percent=percent,
            epoch_starts=epoch_starts,
        )
        shown.update((item.label, item) for item in visible)
    if shown:
        draw_legend(draw, (width - 18) * s, 20 * s, list(shown.values()))
    return np.asarray(image.resize((width, height), Image.Resampling.LANCZOS))
