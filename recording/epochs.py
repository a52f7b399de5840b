"""Which epoch a recorded step belongs to, and where epochs begin: one rule for frames, sheets and curves.

Epochs count from 0, as Lightning's ``current_epoch`` does. Two things in a store need care:

- The recorder records the final state once more at the end of training, after Lightning has
  already counted the last epoch as done, so that row says ``epoch == max_epochs`` (e.g. "epoch 3"
  at the last step of a 3-epoch run, whose epochs are 0, 1, 2). It belongs to the last epoch.
- Rows are recorded every N steps, so the first row of an epoch is not where the epoch began.
  Validation runs at each epoch's end, at the step where the next epoch begins: when its steps
  fall between the rows on either side of every epoch change, they mark the boundaries exactly.
"""

from __future__ import annotations

import numpy as np


def row_epochs(
    global_steps: np.ndarray, epochs: np.ndarray, epoch_ends: np.ndarray, max_epochs: int | None = None
) -> np.ndarray:
    """Each row's epoch (a new array), with the end-of-training row moved back into the last epoch.

    Args:
        global_steps: ``(N,)`` training step of each row.
        epochs: ``(N,)`` epoch the recorder stored with each row.
        epoch_ends: training steps at which validation ran (``val/loss``'s steps), possibly empty.
        max_epochs: the run's epoch limit, when known.
    """
    corrected = np.asarray(epochs, dtype=np.int64).copy()
    if max_epochs is not None and max_epochs > 0:
        np.minimum(corrected, max_epochs - 1, out=corrected)
    ends = set(np.asarray(epoch_ends, dtype=np.int64).tolist())
    # A row recorded at a validation step (an epoch's last step) carrying the next epoch's number
    # can only be the end-of-training row: the next epoch's first batch ends one step later.
    for row in range(1, len(corrected)):
        if int(global_steps[row]) in ends and corrected[row] > corrected[row - 1]:
            corrected[row] = corrected[row - 1]
    return corrected


def epoch_starts(global_steps: np.ndarray, epochs: np.ndarray, epoch_ends: np.ndarray) -> list[tuple[int, int]]:
    """``(epoch, step)`` where each epoch after the first began: at validation steps when they bracket
    every change of epoch, else at the first recorded row of the epoch.
    """
    steps = np.asarray(global_steps, dtype=np.int64)
    epochs = np.asarray(epochs, dtype=np.int64)
    # Sorted without np.unique, which imports numpy.ma in numpy 2 (~25 ms of `actrec render`'s start-up).
    ends = np.array(sorted(set(np.asarray(epoch_ends, dtype=np.int64).tolist())), dtype=np.int64)
    changes = np.flatnonzero(np.diff(epochs)) + 1 if epochs.size else np.zeros(0, np.int64)
    starts = []
    for row in changes:
        between = ends[(ends >= steps[row - 1]) & (ends <= steps[row])]
        starts.append((int(epochs[row]), int(between[-1]) if between.size == 1 else None, int(steps[row])))
    exact = [(epoch, step) for epoch, step, _ in starts if step is not None]
    if len(exact) == len(starts):
        return exact
    return [(epoch, first_row) for epoch, _, first_row in starts]
