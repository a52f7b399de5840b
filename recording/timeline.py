"""A recording's rows in time: training steps, epochs, samples seen, predictions, and the one thinning rule.

Every command that shows a run over time (render, tensorboard, report, compare, dynamics) picks its
rows with :meth:`Timeline.thin`, so ``--stride 10`` shows the same steps everywhere, the last one included.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from actrec import names
from actrec.errors import UserError
from actrec.recording.epochs import row_epochs

STEP_COLUMNS = ("global_step", "epoch", "batch_loss", "batch_acc", "wall_time")
"""The per-row columns every store holds (see :meth:`actrec.store.StoreReader.steps`)."""
SCALAR_SERIES = ("train/loss", "train/acc", "val/loss", "val/acc")
"""The logged series a timeline carries (empty where a store never logged one)."""


class RecordingError(UserError):
    """A recording cannot be opened or read as asked; the message is one sentence for the user."""


TASK_CLASSIFICATION = names.TASK_CLASSIFICATION
"""The task of a store written without a ``task`` attribute (every store before the attribute existed)."""


def shows_predictions(task: str) -> bool:
    """Whether a run of this ``task`` has predictions to draw: only a classifier's output is class scores.

    Every reader (render, the report, the dashboard, the TensorBoard export) asks this one rule; for
    reconstruction, generation, regression or ``none`` the argmax of the output means nothing.
    """
    return task == TASK_CLASSIFICATION


def predicted_classes(logits: np.ndarray) -> np.ndarray:
    """The predicted class of each row of ``(..., K)`` logits; ``-1`` (drawn "?") where a row is not finite.

    A diverged network's NaN logits have no predicted class: ``argmax`` would call it class 0.
    """
    logits = np.asarray(logits)
    predicted = logits.argmax(axis=-1)
    return np.where(np.isfinite(logits).all(axis=-1), predicted, -1)


def auto_stride(count: int, max_rows: int | None) -> int:
    """The smallest stride that keeps at most ``max_rows`` of ``count`` rows (plus the last): ``stride=None``.

    Raises:
        RecordingError: ``max_rows`` is not a positive integer.
    """
    if max_rows is None or max_rows < 1:
        raise RecordingError(f"max_rows must be a positive integer when stride is None, got {max_rows}.")
    return max(1, math.ceil(count / max_rows))


def thin_rows(
    global_steps: np.ndarray,
    *,
    start: int | None = None,
    stop: int | None = None,
    stride: int | None = 1,
    max_rows: int | None = None,
) -> np.ndarray:
    """The one thinning rule: rows whose step lies in ``[start, stop)``, every ``stride``-th, the last kept.

    Args:
        global_steps: ``(N,)`` training step of every recorded row, ascending.
        start: first training step to keep (``None``: from the first row).
        stop: training step to stop before (``None``: through the last row).
        stride: keep every ``stride``-th row of the range, counted from its first; ``None`` picks the
            smallest stride that keeps at most ``max_rows`` rows (plus the last).
        max_rows: the bound ``stride=None`` aims for.

    Returns:
        Row indices, ascending; the last row of the range is always among them (so a thinned run
        still ends where training ended). Empty when no row lies in the range.

    Raises:
        RecordingError: ``stride`` is not a positive integer, or ``stride=None`` without ``max_rows``.
    """
    in_range = np.ones(len(global_steps), dtype=bool)
    if start is not None:
        in_range &= np.asarray(global_steps) >= start
    if stop is not None:
        in_range &= np.asarray(global_steps) < stop
    candidates = np.flatnonzero(in_range)
    if stride is None:
        stride = auto_stride(len(candidates), max_rows)
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise RecordingError(f"stride must be a positive integer, got {stride}.")
    rows = candidates[::stride]
    if candidates.size and rows[-1] != candidates[-1]:
        rows = np.append(rows, candidates[-1])
    return rows.astype(np.int64)


def nearest_rows(global_steps: np.ndarray, wanted: Sequence[float]) -> np.ndarray:
    """For each wanted training step, the index of the recorded row nearest to it (the earlier on a tie)."""
    wanted_array = np.asarray(wanted, dtype=np.float64)
    steps = np.asarray(global_steps, dtype=np.float64)
    if steps.size == 0:
        return np.zeros(len(wanted_array), np.int64)
    return np.abs(steps[None, :] - wanted_array[:, None]).argmin(axis=1)


@dataclass(frozen=True)
class Timeline:
    """The first ``num_rows`` rows of a recording: when each was recorded, and what the probes were called.

    Args:
        num_rows: rows in the recording when it was (re)read.
        global_steps: ``(N,)`` training step of each row.
        epochs: ``(N,)`` epoch of each row, by :func:`actrec.recording.epochs.row_epochs` (the row
            recorded after the last epoch ended belongs to the last epoch).
        wall_times: ``(N,)`` seconds since the Unix epoch.
        batch_size: the training batch size when the run's config names it, else ``None``.
        columns: every per-row column (``batch_loss``, ``batch_acc``, ... as stored; ``epoch`` corrected).
        scalars: logged series by name, ``(steps, values)`` each.
        read_logits: reads the ``(N, P, K)`` probe logits; called once, on first use of :attr:`predictions`
            (while the recording is open: logits are the largest per-row column, and most readers never need them).
        max_steps: the run's step limit from its config, when known.
        max_epochs: the run's epoch limit from its config, when known.
        read_logit_rows: reads the ``(n, P, K)`` probe logits of a slice of rows, for :meth:`predictions_at`
            (``None``: it uses :attr:`predictions`).
    """

    num_rows: int
    global_steps: np.ndarray
    epochs: np.ndarray
    wall_times: np.ndarray
    batch_size: int | None
    columns: dict[str, np.ndarray]
    scalars: dict[str, tuple[np.ndarray, np.ndarray]] = field(repr=False)
    read_logits: Callable[[], np.ndarray] = field(repr=False, compare=False)
    max_steps: int | None = None
    max_epochs: int | None = None
    read_logit_rows: Callable[[slice], np.ndarray] | None = field(default=None, repr=False, compare=False)

    @cached_property
    def predictions(self) -> np.ndarray:
        """``(N, P)`` predicted class of each probe at each row (``-1``: logits not finite)."""
        return predicted_classes(self.read_logits()[: self.num_rows])

    def predictions_at(self, row: int) -> np.ndarray:
        """``(P,)`` predicted class of each probe at ``row``: :attr:`predictions`' row, reading that row's logits only.

        For a reader that shows one row at a time (the dashboard): :attr:`predictions` reads every row's
        logits, the largest per-row column (40 MB for 100,000 rows of 10 probes and 10 classes).
        """
        if not 0 <= row < self.num_rows:
            raise IndexError(f"row {row} is not among the {self.num_rows} rows")
        if self.read_logit_rows is None or "predictions" in self.__dict__:
            return self.predictions[row]
        return predicted_classes(self.read_logit_rows(slice(row, row + 1))[0])

    @property
    def samples_seen(self) -> np.ndarray | None:
        """``(N,)`` training samples seen at each row (``step x batch_size``), or ``None`` without a batch size."""
        if self.batch_size is None:
            return None
        return self.global_steps.astype(np.int64) * int(self.batch_size)

    @property
    def last_step(self) -> int:
        """The training step of the last recorded row."""
        return int(self.global_steps[-1]) if self.num_rows else 0

    def thin(
        self,
        start: int | None = None,
        stop: int | None = None,
        stride: int | None = 1,
        *,
        max_rows: int | None = None,
    ) -> np.ndarray:
        """Rows to show: :func:`thin_rows` over this timeline's steps (every ``stride``-th, the last included).

        Raises:
            RecordingError: ``stride`` is not positive, or no recorded step lies in ``[start, stop)``.
        """
        rows = thin_rows(self.global_steps, start=start, stop=stop, stride=stride, max_rows=max_rows)
        if rows.size == 0:
            raise RecordingError(
                "no recorded step lies in the chosen range; the store holds steps "
                f"{int(self.global_steps[0])} to {int(self.global_steps[-1])}."
            )
        return rows

    def nearest_rows(self, steps: Sequence[float]) -> np.ndarray:
        """For each training step, the index of the recorded row nearest to it."""
        return nearest_rows(self.global_steps, steps)

    def rows_at_or_before(self, steps: Sequence[int] | np.ndarray) -> np.ndarray:
        """For each training step, the last row recorded at or before it (``-1``: none yet)."""
        return np.searchsorted(self.global_steps, np.asarray(steps), side="right") - 1

    def series(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of a series: a logged scalar (``"val/acc"``) or a per-row column (``"batch_loss"``).

        A series never logged is empty, so it is simply not drawn.
        """
        if name in self.scalars:
            return self.scalars[name]
        if name in self.columns:
            return self.global_steps, np.asarray(self.columns[name], np.float64)
        return np.zeros(0, np.int64), np.zeros(0, np.float64)

    def steps_dict(self) -> dict[str, np.ndarray]:
        """Every per-row column by name, ``epoch`` corrected: what the training-curve drawing takes."""
        return dict(self.columns)


def build_timeline(
    steps: dict[str, np.ndarray],
    scalars: dict[str, tuple[np.ndarray, np.ndarray]],
    read_logits: Callable[[], np.ndarray],
    num_rows: int,
    *,
    batch_size: int | None = None,
    max_epochs: int | None = None,
    max_steps: int | None = None,
    read_logit_rows: Callable[[slice], np.ndarray] | None = None,
) -> Timeline:
    """A :class:`Timeline` from a store's columns (each at least ``num_rows`` long) and scalars."""
    columns = {key: np.asarray(value[:num_rows]) for key, value in steps.items()}
    validation_steps = scalars.get("val/loss", (np.zeros(0, np.int64), np.zeros(0)))[0]
    columns["epoch"] = row_epochs(columns["global_step"], columns["epoch"], validation_steps, max_epochs)
    return Timeline(
        num_rows=num_rows,
        global_steps=columns["global_step"].astype(np.int64),
        epochs=columns["epoch"],
        wall_times=np.asarray(columns.get("wall_time", np.zeros(num_rows)), np.float64),
        batch_size=batch_size,
        columns=columns,
        scalars=scalars,
        read_logits=read_logits,
        max_steps=max_steps,
        max_epochs=max_epochs,
        read_logit_rows=read_logit_rows,
    )
