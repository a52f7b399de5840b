"""``actrec.viewer.curves.smooth``: TensorBoard's debiased EMA, the same numbers as its point-by-point recurrence."""

from __future__ import annotations

import numpy as np
import pytest

from actrec.viewer.curves import smooth


def _recurrence(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard's smoothing as it is written: one point at a time over the finite values."""
    values = np.asarray(values, dtype=np.float64)
    smoothed = values.copy()
    finite = np.flatnonzero(np.isfinite(values))
    if finite.size == 0 or np.all(values[finite] == values[finite[0]]):
        return smoothed
    last = 0.0
    for count, index in enumerate(finite.tolist(), start=1):
        last = last * weight + (1.0 - weight) * values[index]
        smoothed[index] = last / (1.0 - weight**count)
    return smoothed


@pytest.mark.parametrize("weight", [0.0, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("size", [1, 2, 255, 256, 257, 5000])
def test_smooth_is_the_recurrence_to_rounding(size: int, weight: float) -> None:
    rng = np.random.default_rng(size)
    values = rng.normal(size=size) * 3 + 5
    values[rng.random(size) < 0.1] = np.nan
    values[rng.random(size) < 0.01] = np.inf
    got, expected = smooth(values, weight), _recurrence(values, weight)
    assert np.array_equal(np.isfinite(got), np.isfinite(expected))
    assert np.array_equal(got[~np.isfinite(got)], expected[~np.isfinite(expected)], equal_nan=True)
    assert got[np.isfinite(got)] == pytest.approx(expected[np.isfinite(expected)], rel=1e-12, abs=1e-12)
