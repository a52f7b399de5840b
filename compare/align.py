"""Put several runs on one timeline: by training step, by epoch, or by training samples seen. Pure functions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ALIGNMENTS = ("step", "epoch", "samples")


def aligned_positions(
    global_steps: np.ndarray, epochs: np.ndarray, align: str, batch_size: int | None = None
) -> np.ndarray:
    """Each recorded row's position on the shared axis.

    Args:
        global_steps: ``(N,)`` the rows' training steps.
        epochs: ``(N,)`` the rows' epochs.
        align: ``"step"`` (the training step), ``"epoch"`` (the epoch number: every row of an epoch
            shares it, the last row of the epoch stands for it), or ``"samples"`` (training samples
            seen, ``step x batch_size``; a smaller last batch of an epoch is not accounted for).
        batch_size: needed for ``"samples"``.

    Raises:
        ValueError: an unknown alignment, or ``"samples"`` without a batch size.
    """
    if align == "step":
        return np.asarray(global_steps, np.int64)
    if align == "epoch":
        return np.asarray(epochs, np.int64)
    if align == "samples":
        if not batch_size:
            raise ValueError("aligning by samples needs each run's batch size.")
        return np.asarray(global_steps, np.int64) * int(batch_size)
    raise ValueError(f"align must be one of {', '.join(ALIGNMENTS)}, got {align!r}.")


def shared_timeline(positions: Sequence[np.ndarray], max_frames: int) -> np.ndarray:
    """The positions to draw: every position any run recorded, thinned to at most ``max_frames`` (last kept)."""
    timeline = np.unique(np.concatenate([np.asarray(p, np.int64) for p in positions]))
    # Not recording.thin_rows: these are positions of several runs merged (no run's rows), and
    # --max-frames is a hard cap on the frames (the sheet and the animation are sized from it), while
    # thin_rows's stride keeps one row past its bound (the last); evenly spread with linspace instead.
    if len(timeline) > max_frames:
        keep = np.unique(np.linspace(0, len(timeline) - 1, max_frames).round().astype(np.int64))
        timeline = timeline[keep]
    return timeline


def rows_at(positions: np.ndarray, timeline: np.ndarray) -> np.ndarray:
    """For each timeline position, the run's last row at or before it (its first row before it started).

    With ``"epoch"`` positions this is the last recorded row of that epoch.
    """
    rows = np.searchsorted(np.asarray(positions), timeline, side="right") - 1
    return np.clip(rows, 0, len(positions) - 1)


def fractional_epochs(global_steps: np.ndarray, epochs: np.ndarray) -> np.ndarray:
    """Each row's epoch plus how far through that epoch it is (for curves, which want a continuous axis).

    An epoch's length in steps is the distance between the first recorded steps of it and the next
    epoch; the last epoch takes the length of the one before it (or its own recorded span).
    """
    global_steps = np.asarray(global_steps, np.float64)
    epochs = np.asarray(epochs, np.int64)
    if global_steps.size == 0:
        return global_steps.copy()
    numbers, first_rows = np.unique(epochs, return_index=True)
    starts = global_steps[first_rows]
    lengths = np.diff(starts)
    if lengths.size:
        lengths = np.append(lengths, lengths[-1])
    else:
        lengths = np.array([max(1.0, global_steps.max() - starts[0] + 1)])
    index = np.searchsorted(numbers, epochs)
    fraction = (global_steps - starts[index]) / np.maximum(lengths[index], 1.0)
    return epochs + np.clip(fraction, 0.0, 0.999)
