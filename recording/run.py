"""Open a recorded run: the one way every command that reads a run gets at its folder, store, timeline and layers."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from actrec.recording.layers import LayerView
from actrec.recording.outputs import OutputDrawing, output_drawing
from actrec.recording.timeline import (
    SCALAR_SERIES,
    STEP_COLUMNS,
    TASK_CLASSIFICATION,
    RecordingError,
    Timeline,
    build_timeline,
    shows_predictions,
)
from actrec.runs import Run, RunError, resolve_run
from actrec.store import StoreError, StoreReader


def announce_on_stderr(text: str) -> None:
    """Print ``text`` on stderr: how a command says which version of an experiment folder it opened."""
    print(text, file=sys.stderr, flush=True)


class Recording:
    """A recorded run, open for reading: its folder, its store, its timeline and its layers.

    Open one with :meth:`open`; close it (or use ``with``) when done. A store still being written is
    read as far as it was flushed when opened; :meth:`refresh` picks up rows flushed since.

    Attributes:
        run: the run folder (:class:`actrec.runs.Run`).
        run_dir: the run folder's path (a store file's folder for a bare ``.h5``).
        store_path: the activation store.
        store: the open :class:`~actrec.store.StoreReader`.
    """

    def __init__(self, run: Run, store: StoreReader, *, allow_empty: bool = False) -> None:
        self.run = run
        self.run_dir = Path(run.path)  # never None: a bare .h5 gives its folder
        self.store_path = Path(store.path)
        self.store = store
        self._allow_empty = allow_empty
        self._layers: dict[str, LayerView] = {}
        self._timeline: Timeline | None = None
        self._known_batch_size: tuple[int | None] | None = None  # read once: a live run's refreshes parse no YAML
        self._output_drawing: OutputDrawing | None = None
        self.refresh()

    @classmethod
    def open(
        cls,
        path: str | os.PathLike | Run,
        *,
        allow_empty: bool = False,
        announce: Callable[[str], object] | None = announce_on_stderr,
    ) -> Recording:
        """Open the run ``path`` names: a run folder, an experiment folder (its newest version with a store)
        or an activation store file.

        Args:
            path: what the user typed, or a :class:`~actrec.runs.Run` already resolved.
            allow_empty: accept a store with no recorded row yet (a run that just started); otherwise
                that is the one "nothing recorded yet" error every command gives.
            announce: called with the sentence saying which version an experiment folder resolved to
                (default: printed on stderr); ``None`` says nothing.

        Raises:
            RunError: nothing there, not a run, or a run without a store.
            StoreError: the store is missing, damaged, foreign or too new.
            RecordingError: the store has no recorded step yet (unless ``allow_empty``).
        """
        run = path if isinstance(path, Run) else resolve_run(path, need_store=True)
        if run.note and announce is not None:
            announce(run.note)
        store = StoreReader(run.store_path)
        try:
            return cls(run, store, allow_empty=allow_empty)
        except BaseException:
            store.close()
            raise

    # -- what it holds ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """How people name the run: ``experiment/version_N`` (:attr:`actrec.runs.Run.name`)."""
        return self.run.name

    @property
    def num_rows(self) -> int:
        """Rows recorded when the recording was opened or last refreshed."""
        return self.timeline.num_rows

    @property
    def timeline(self) -> Timeline:
        """Steps, epochs, samples seen, predictions and scalars of every row (as of the last refresh)."""
        assert self._timeline is not None  # set by refresh() in __init__
        return self._timeline

    @property
    def layers(self) -> list[str]:
        """Every recorded layer's name, in recording order."""
        return self.store.layer_names

    @property
    def probes(self) -> Any:
        """The probe set (:class:`~actrec.store.ProbeSet`): images, labels, class names."""
        return self.store.probes

    @property
    def task(self) -> str:
        """What the model's output is (the store's ``task`` attribute; ``"classification"`` when absent)."""
        return self.store.task or TASK_CLASSIFICATION

    @property
    def shows_predictions(self) -> bool:
        """Whether readers draw the probes' predictions (:func:`~actrec.recording.shows_predictions`)."""
        return shows_predictions(self.task)

    @property
    def output_drawing(self) -> OutputDrawing:
        """How the probes' outputs are drawn (:func:`actrec.recording.output_drawing`): the predicted class
        for a classifier, else an image, next-token ids or the values themselves."""
        if self._output_drawing is None:
            store, num_rows = self.store, self.num_rows
            num_outputs = int(store.logits(slice(0, 1)).shape[-1]) if num_rows else 1
            self._output_drawing = output_drawing(
                self.task, store.probes.images, num_outputs, store.output_shape, store.logits, num_rows
            )
        return self._output_drawing

    def outputs(self, rows: np.ndarray | Sequence[int]) -> np.ndarray:
        """The probes' outputs ``(n, P, K)`` at ``rows``, as stored (flattened per probe)."""
        return self.store.logits(np.asarray(rows, dtype=np.int64))

    @property
    def num_probes(self) -> int:
        return len(self.store.probes.labels)

    def layer(self, name: str) -> LayerView:
        """The view of one recorded layer.

        Raises:
            RecordingError: the recording has no such layer (the message lists those it has).
        """
        if name not in self._layers:
            if name not in self.layers:
                raise RecordingError(f"{self.name} has no layer {name!r}; it records: {', '.join(self.layers)}.")
            self._layers[name] = LayerView(self.store, name, self.num_rows)
        return self._layers[name]

    def check_layers(self, names: list[str] | tuple[str, ...] | None) -> list[str]:
        """The layers to show: every recorded one for ``None`` (or empty), else ``names`` after checking each.

        Raises:
            RecordingError: a name is not recorded (the message lists the available ones).
        """
        available = self.layers
        if not names:
            return available
        unknown = [name for name in names if name not in available]
        if unknown:
            raise RecordingError(
                f"unknown layer {', '.join(map(repr, unknown))}; this store records: {', '.join(available)}."
            )
        return list(dict.fromkeys(names))

    @property
    def summary(self) -> dict[str, Any] | None:
        """The run's ``summary.json`` (``None`` when never written or unreadable)."""
        try:
            return self.run.summary()
        except RunError:
            return None

    @property
    def batch_size(self) -> int | None:
        """The training batch size: the run's ``config.yaml`` ``data.batch_size``, else the store's config's."""
        return self.timeline.batch_size

    # -- life cycle ------------------------------------------------------------------------------

    def refresh(self) -> int:
        """Re-read the store's rows (a run still being written flushes more); returns the number of rows.

        Layer views made before a refresh keep the rows they had; ask :meth:`layer` again for new ones.

        Raises:
            RecordingError: the store has no recorded step (unless opened with ``allow_empty``).
        """
        num_rows = self.store.refresh()
        if num_rows == 0 and not self._allow_empty:
            raise RecordingError(f"{self.store_path} has no recorded steps yet, so there is nothing to show.")
        config = _store_config(self.store)
        trainer = section if isinstance(section := config.get("trainer"), dict) else {}
        steps = self.store.steps() if num_rows else {key: _empty() for key in STEP_COLUMNS}
        scalars = {name: self.store.scalars(name) for name in SCALAR_SERIES}
        store = self.store

        def read_logits() -> np.ndarray:
            return store.logits(slice(0, num_rows)) if num_rows else np.zeros((0, len(store.probes.labels), 1))

        self._timeline = build_timeline(
            steps,
            scalars,
            read_logits,
            num_rows,
            batch_size=self._batch_size(config),
            max_epochs=_positive_int(trainer.get("max_epochs")),
            max_steps=_positive_int(trainer.get("max_steps")),
            read_logit_rows=store.logits,
        )
        self._layers.clear()
        return num_rows

    def close(self) -> None:
        """Close the store (idempotent)."""
        self.store.close()

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Recording({str(self.store_path)!r}, rows={self.num_rows}, layers={len(self.layers)})"

    def _batch_size(self, store_config: dict[str, Any]) -> int | None:
        if self._known_batch_size is None:
            self._known_batch_size = (self._read_batch_size(store_config),)
        return self._known_batch_size[0]

    def _read_batch_size(self, store_config: dict[str, Any]) -> int | None:
        run_config: dict[str, Any] = {}
        if self.run.config_path.exists():
            try:
                run_config = self.run.config()
            except RunError:
                run_config = {}
        for config in (run_config, store_config):
            data = config.get("data") if isinstance(config, dict) else None
            value = _positive_int(data.get("batch_size")) if isinstance(data, dict) else None
            if value is not None:
                return value
        return None


def _store_config(store: StoreReader) -> dict[str, Any]:
    try:
        config = store.config
    except (StoreError, KeyError, ValueError, TypeError):
        return {}  # a config we cannot read does not stop the pictures
    return config if isinstance(config, dict) else {}


def _positive_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _empty() -> np.ndarray:
    return np.zeros(0)
