"""Layer dynamics as pure functions on arrays: how much a layer changes, and how like its end it is.

Every function takes activations of the probes at one recorded step, ``(P, *unit_shape)`` (probes
are the examples, the flattened units the features), or small per-step summaries of them, and
returns new arrays; nothing is read or written here.

Linear CKA (Kornblith et al. 2019) is computed from the probes' centred Gram matrices, ``P x P``:
with ``P`` probes and ``F`` units that costs ``P^2 F`` per step and lets a long run be compared
against its first and last step while holding only three ``P x P`` matrices.

Small probe counts: centring leaves ``P - 1`` dimensions. With one probe there is nothing left and
CKA is undefined; with two, every centred Gram matrix is a multiple of ``[[1, -1], [-1, 1]]``, so
CKA is exactly 1 between any two non-constant representations and says nothing. Both give NaN
here (as does a representation that is constant over the probes, e.g. a dead layer); a settling
step is then not defined. From three probes on CKA is meaningful, but with few probes it is biased
upwards (values near 1 come easily): read it as a trend within a run, not as an absolute.
"""

from __future__ import annotations

import numpy as np

MIN_CKA_PROBES = 3
"""Fewest probes for which linear CKA can differ from 1 (see the module docstring)."""

SATURATION_LEVEL = 0.99
"""A tanh unit with ``|a| > 0.99`` (a sigmoid unit below 0.01 or above 0.99) counts as saturated."""


def _flat(activations: np.ndarray) -> np.ndarray:
    array = np.asarray(activations, dtype=np.float64)
    if array.ndim < 1 or array.shape[0] < 1:
        raise ValueError(f"expected (P, ...) activations of at least one probe, got shape {array.shape}.")
    return array.reshape(array.shape[0], -1)


def _norm(array: np.ndarray) -> float:
    # Not np.linalg.norm: its BLAS dot hands a few thousand numbers to a thread pool, which on a
    # busy machine costs a millisecond a call; a plain sum of squares is microseconds.
    return float(np.sqrt(np.square(array).sum()))


def relative_change(previous: np.ndarray, current: np.ndarray) -> float:
    """``||A_t - A_{t-1}|| / ||A_t||`` (Frobenius norms over all probes and units).

    Returns 0 when both are zero and ``inf`` when only the current one is (the change is then
    undefined relative to nothing). NaN anywhere in the inputs gives NaN.

    Raises:
        ValueError: the shapes differ.
    """
    previous, current = _flat(previous), _flat(current)
    if previous.shape != current.shape:
        raise ValueError(f"activations of shapes {previous.shape} and {current.shape} cannot be compared.")
    change = _norm(current - previous)
    size = _norm(current)
    if size == 0.0:
        return 0.0 if change == 0.0 else float("inf")
    return change / size


def centered_gram(activations: np.ndarray) -> np.ndarray:
    """The probes' centred linear Gram matrix ``H X X^T H`` (``P x P``, float64) of ``(P, ...)`` activations.

    Centring each unit over the probes (``X - mean``) and then taking ``X X^T`` is the same matrix,
    computed in the ``P x F`` space where it is cheap.
    """
    features = _flat(activations)
    features = features - features.mean(axis=0, keepdims=True)
    return features @ features.T


def cka_from_grams(gram_x: np.ndarray, gram_y: np.ndarray) -> float:
    """Linear CKA from two centred Gram matrices (:func:`centered_gram`) of the same probes.

    ``<K, L> / (||K|| ||L||)``: 1 for representations equal up to rotation and isotropic scaling,
    towards 0 for unrelated ones. NaN when fewer than :data:`MIN_CKA_PROBES` probes, when either
    representation is constant over the probes, or when either holds NaN.

    Raises:
        ValueError: the matrices are not square and of the same size.
    """
    gram_x, gram_y = np.asarray(gram_x, dtype=np.float64), np.asarray(gram_y, dtype=np.float64)
    if gram_x.ndim != 2 or gram_x.shape[0] != gram_x.shape[1] or gram_x.shape != gram_y.shape:
        raise ValueError(f"CKA needs two square Gram matrices of one size, got {gram_x.shape} and {gram_y.shape}.")
    if gram_x.shape[0] < MIN_CKA_PROBES:
        return float("nan")
    norm_x, norm_y = _norm(gram_x), _norm(gram_y)
    # A representation constant over the probes centres to zero (up to float16 rounding): no CKA.
    if not (norm_x > 0.0 and norm_y > 0.0) or not (np.isfinite(norm_x) and np.isfinite(norm_y)):
        return float("nan")
    return float(np.clip((gram_x * gram_y).sum() / (norm_x * norm_y), 0.0, 1.0))


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA between two representations of the same ``P`` probes, ``(P, ...)`` each.

    The units of ``x`` and ``y`` may differ in number and shape (layers of different widths).

    Raises:
        ValueError: the probe counts differ.
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.shape[:1] != y.shape[:1]:
        raise ValueError(f"CKA compares the same probes; got {x.shape[0]} and {y.shape[0]} of them.")
    return cka_from_grams(centered_gram(x), centered_gram(y))


def saturated_fraction(activations: np.ndarray, scale_kind: str, level: float = SATURATION_LEVEL) -> float:
    """Fraction of all values (probes x units) that are saturated.

    Args:
        activations: ``(P, ...)`` activations at one step.
        scale_kind: the layer's scale kind: ``"tanh"`` counts ``|a| > level``; ``"sigmoid"`` counts
            ``a < 1 - level`` or ``a > level``; any other kind has no saturation and gives NaN.
        level: the saturation threshold.
    """
    values = np.asarray(activations)
    if values.size == 0:
        return float("nan")
    if scale_kind == "tanh":
        return float(np.count_nonzero(np.abs(values) > level) / values.size)
    if scale_kind == "sigmoid":
        return float(np.count_nonzero((values > level) | (values < 1.0 - level)) / values.size)
    return float("nan")


def channel_axis(unit_shape: tuple[int, ...]) -> int:
    """Which axis of one probe's activation holds the channels: ``(C, H, W)`` maps -> 0; ``(T, D)``
    tokens -> the features ``D`` (1); ``(D,)`` vectors -> each unit is a channel (0)."""
    return 1 if len(unit_shape) == 2 else 0


def constant_channels(activations: np.ndarray, tolerance: float = 0.0) -> np.ndarray:
    """Which channels carry no information about the probes at this step.

    A channel is constant when every one of its values is the same for every probe (to within
    ``tolerance``): a ReLU channel that never fires (all zeros) is one, a tanh channel pinned at
    +1 for every input another.

    Args:
        activations: ``(P, *unit_shape)`` activations at one step.
        tolerance: largest spread over probes still counted as constant.

    Returns:
        A new ``(channels,)`` bool array.
    """
    values = np.asarray(activations)
    if values.ndim < 2:
        raise ValueError(f"expected (P, *unit_shape) activations, got shape {values.shape}.")
    axis = channel_axis(values.shape[1:]) + 1
    spread = values.max(axis=0) - values.min(axis=0)  # (*unit_shape): spread over the probes
    spread = np.moveaxis(spread, axis - 1, 0).reshape(values.shape[axis], -1)
    # NaN spread (a diverged value) is not constant: it is reported by other means, never as dead.
    return ~(np.nan_to_num(spread, nan=np.inf) > tolerance).any(axis=1)


def settling_step(global_steps: np.ndarray, cka_to_final: np.ndarray, threshold: float = 0.9) -> int | None:
    """The first recorded step from which CKA to the final step stays at or above ``threshold``.

    A NaN CKA counts as below the threshold. Returns ``None`` when no such step exists (every CKA
    is NaN, e.g. fewer than three probes).

    Raises:
        ValueError: the arrays differ in length or the threshold is not in ``(0, 1]``.
    """
    global_steps = np.asarray(global_steps)
    cka = np.asarray(cka_to_final, dtype=np.float64)
    if global_steps.shape != cka.shape or global_steps.ndim != 1:
        raise ValueError(f"one CKA per step is needed; got {cka.shape} values for {global_steps.shape} steps.")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"the settling threshold must be in (0, 1], got {threshold!r}.")
    above = np.nan_to_num(cka, nan=-1.0) >= threshold
    if not above.any():
        return None
    below = np.flatnonzero(~above)
    first = 0 if below.size == 0 else int(below[-1]) + 1
    return None if first >= len(global_steps) else int(global_steps[first])
