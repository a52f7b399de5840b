"""The colour-scale rule: which value a layer's full colour means. The one place actrec decides it.

Used by ``actrec render``, ``actrec tensorboard`` and the recorder's live TensorBoard images, so the
same layer at the same step is drawn in the same colours everywhere (live logging excepted where it
cannot know the future; its colour bar then prints the numbers it used).

The rule, by the layer's ``scale_kind`` (stored per layer by the recorder):

- ``"tanh"``: the fixed range -1 .. +1 on the diverging red-white-blue ramp.
- ``"sigmoid"``: the fixed range 0 .. 1 on the one-sided white-to-blue ramp.
- A declared kind is checked against the values: a "tanh" or "sigmoid" layer whose finite values leave
  its range (a gate the recorder guessed from the module's name, a module that multiplies after its
  activation) is drawn on the ``"symmetric"`` rule below, and the scale's ``note`` says so in a line.
- ``"nonnegative"`` (ReLU-like): one-sided, 0 white up to ``limit`` dark blue.
- ``"symmetric"`` (anything else): diverging, ``-limit`` red, 0 white, ``+limit`` blue; but when
  none of the finite values is negative, one-sided as for ``"nonnegative"``. v1 stores mark every
  non-tanh layer "symmetric", ReLU layers included, and a symmetric scale on data that is never
  negative leaves the red half of the palette unused and the maps washed out.

For data-derived scales ``limit`` is the 99.5th percentile of ``|activation|`` over the finite
values of evenly sampled rows: a handful of outliers (or a single diverged step) cannot wash out the
rest, and values beyond it are drawn at full colour. NaN and infinities never enter a scale; they are
drawn in their own colour (:data:`actrec.recording.colors.NONFINITE_INDEX`).

All functions are pure: arrays in, new values out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from actrec.recording import colors
from actrec.store import SCALE_KINDS, SCALE_NONNEGATIVE, SCALE_SIGMOID, SCALE_TANH

PERCENTILE = 99.5
"""Percentile of ``|activation|`` drawn at full colour on data-derived scales."""
SAMPLE_ROWS = 32
"""Rows read (evenly spaced over the run) to fix a data-derived scale."""


@dataclass(frozen=True)
class ColourScale:
    """How one layer's values map to palette colours.

    Args:
        one_sided: ``True``: 0 white up to ``+limit`` dark blue (negatives drawn white);
            ``False``: ``-limit`` red, 0 white, ``+limit`` blue.
        limit: the positive, finite value drawn at full colour.
        rule: a few words on where ``limit`` came from, e.g. ``"fixed (tanh)"``.
        note: empty, or why the layer's declared kind was not used (one line for the user, without the
            layer's name).
    """

    one_sided: bool
    limit: float
    rule: str = ""
    note: str = ""

    def __post_init__(self) -> None:
        if not np.isfinite(self.limit) or self.limit <= 0:
            raise ValueError(f"a colour scale's limit must be a positive finite number, got {self.limit!r}.")

    def indices(self, values: np.ndarray) -> np.ndarray:
        """Palette indices of ``values`` (a new uint8 array of the same shape)."""
        if self.one_sided:
            return colors.one_sided_indices(values, self.limit)
        return colors.diverging_indices(values, self.limit)

    def bar_indices(self, width: int) -> np.ndarray:
        """``(width,)`` palette indices of the colour bar, from the lowest value to ``+limit``."""
        low = 0.0 if self.one_sided else -self.limit
        return self.indices(np.linspace(low, self.limit, width))

    def bar_labels(self) -> tuple[tuple[str, float], ...]:
        """``(text, position 0..1)`` of the colour bar's labels: the numbers this scale uses."""
        text = format_limit(self.limit)
        if self.one_sided:
            return (("0", 0.0), (text, 1.0))
        return ((f"-{text}", 0.0), ("0", 0.5), (f"+{text}", 1.0))


def format_limit(limit: float) -> str:
    """How a colour bar labels ``limit``: ``"1"`` for fixed ranges, else 3 significant digits."""
    if float(limit).is_integer() and abs(limit) < 1e6:
        return str(int(limit))
    return f"{limit:.3g}"


def check_scale_kind(scale_kind: str) -> str:
    """Return ``scale_kind`` if it is one of :data:`SCALE_KINDS`.

    Raises:
        ValueError: it is not.
    """
    if scale_kind not in SCALE_KINDS:
        raise ValueError(f"scale_kind must be one of {', '.join(SCALE_KINDS)}, got {scale_kind!r}.")
    return scale_kind


def sample_rows(num_rows: int, count: int = SAMPLE_ROWS) -> np.ndarray:
    """Up to ``count`` evenly spaced row indices over ``0 .. num_rows - 1``, first and last included."""
    if num_rows <= 0:
        return np.zeros(0, np.int64)
    rows = np.rint(np.linspace(0, num_rows - 1, min(count, num_rows))).astype(np.int64)
    # Sorted already, so repeats are neighbours. Not np.unique: numpy 2 imports numpy.ma for it (~25 ms), which
    # nothing else of `actrec render` needs.
    return rows[np.concatenate(([True], rows[1:] != rows[:-1]))]


def _robust_limit(magnitudes: np.ndarray) -> float:
    """The percentile of finite ``|values|``; the largest if that is 0 (sparse layers); 1 if all are 0."""
    if magnitudes.size == 0:
        return 1.0
    limit = float(np.percentile(magnitudes, PERCENTILE))
    if limit <= 0:
        limit = float(magnitudes.max())
    return limit if limit > 0 else 1.0


_BOUNDED_RANGES = {SCALE_TANH: (-1.0, 1.0), SCALE_SIGMOID: (0.0, 1.0)}
_RANGE_SLACK = 1e-3
"""How far past a bounded kind's range a value may lie and still count as inside (float16 rounding)."""


def _outside_declared_range(scale_kind: str, finite: np.ndarray) -> float | None:
    """The finite value farthest outside ``scale_kind``'s fixed range, or ``None`` if all lie inside."""
    if finite.size == 0:
        return None
    low, high = _BOUNDED_RANGES[scale_kind]
    smallest, largest = float(finite.min()), float(finite.max())
    below, above = low - smallest, largest - high
    if max(below, above) <= _RANGE_SLACK:
        return None
    return smallest if below >= above else largest


def colour_scale(scale_kind: str, samples: np.ndarray) -> ColourScale:
    """The fixed colour scale of a layer for a whole animation.

    Args:
        scale_kind: the layer's stored kind: ``"tanh"``, ``"sigmoid"``, ``"nonnegative"`` or
            ``"symmetric"``.
        samples: the layer's activations at evenly sampled rows (any shape; see :func:`sample_rows`);
            ignored for bounded kinds. NaN and infinities are left out.

    Returns:
        The scale: fixed ranges for bounded kinds whose samples lie in them, else a percentile of the
        finite ``|samples|`` (with a ``note`` when a bounded kind's samples left its range).

    Raises:
        ValueError: ``scale_kind`` is unknown.
    """
    check_scale_kind(scale_kind)
    samples = np.asarray(samples)
    # Stores hold float16: its values, and their extremes, are exact in float32, a quarter of float64's memory
    # traffic; the percentile below is taken in float64, as it always was.
    narrow = samples.dtype in (np.float16, np.float32)
    flat = np.asarray(samples, dtype=np.float32 if narrow else np.float64).ravel()
    mask = np.isfinite(flat)
    finite = flat if mask.all() else flat[mask]
    note = ""
    if scale_kind in _BOUNDED_RANGES:
        outlier = _outside_declared_range(scale_kind, finite)
        if outlier is None:
            one_sided = scale_kind == SCALE_SIGMOID
            return ColourScale(one_sided=one_sided, limit=1.0, rule=f"fixed ({scale_kind})")
        low, high = _BOUNDED_RANGES[scale_kind]
        note = f"declared {scale_kind} ({low:g} to {high:g}), but its values reach {outlier:.3g}"
    one_sided = scale_kind == SCALE_NONNEGATIVE or (finite.size > 0 and float(finite.min()) >= 0)
    rule = f"{PERCENTILE:g}th percentile of |a|"
    limit = _robust_limit(np.abs(finite, dtype=np.float64))
    if note:
        text = format_limit(limit)
        drawn = f"0 white to {text} blue" if one_sided else f"-{text} red to +{text} blue"
        note += f"; drawn on the symmetric rule, {drawn}."
    return ColourScale(one_sided=one_sided, limit=limit, rule=rule, note=note)


@dataclass(frozen=True)
class LiveScaleState:
    """What live logging remembers between steps of one layer (start with ``LiveScaleState()``).

    Args:
        limit: the largest per-step limit seen so far (0 before the first step).
        seen_negative: whether any finite value so far was negative.
    """

    limit: float = 0.0
    seen_negative: bool = False


def live_scale(
    scale_kind: str, activations: np.ndarray, state: LiveScaleState | None = None
) -> tuple[ColourScale, LiveScaleState]:
    """The colour scale for one step logged during training, where later steps are unknown.

    Bounded kinds use their fixed range, as :func:`colour_scale`, until a step's values leave it; from then
    on, and for every other kind, the limit is the running
    maximum of each step's percentile of finite ``|activation|``: it only grows, so a colour never
    comes to mean a smaller value later in the run; a layer stays one-sided until a negative value
    is seen. Frames carry their limit on the colour bar, so frames on different limits say so.

    Args:
        scale_kind: the layer's kind, as for :func:`colour_scale`.
        activations: this step's activations of the layer (any shape).
        state: what the previous call returned; ``None`` at the first step.

    Returns:
        The scale for this step, and the state to pass with the next step.

    Raises:
        ValueError: ``scale_kind`` is unknown.
    """
    check_scale_kind(scale_kind)
    state = state or LiveScaleState()
    flat = np.asarray(activations, dtype=np.float64).ravel()
    finite = flat[np.isfinite(flat)]
    if scale_kind in _BOUNDED_RANGES and state.limit == 0 and _outside_declared_range(scale_kind, finite) is None:
        return colour_scale(scale_kind, finite), state
    seen_negative = state.seen_negative or (finite.size > 0 and float(finite.min()) < 0)
    magnitudes = np.abs(finite)
    step_limit = _robust_limit(magnitudes) if magnitudes.size and magnitudes.max() > 0 else 0.0
    limit = max(state.limit, step_limit)
    one_sided = scale_kind == SCALE_NONNEGATIVE or not seen_negative
    scale = ColourScale(one_sided=one_sided, limit=limit if limit > 0 else 1.0, rule="running maximum (live)")
    return scale, LiveScaleState(limit=limit, seen_negative=seen_negative)
