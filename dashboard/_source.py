"""What the dashboard reads from one run: a thin, cached layer over the read side, no rules of its own.

Each run under TensorBoard's logdir that holds an activation store becomes one :class:`RunSource`.
It answers the plugin's routes with plain data (JSON-ready dicts) and PNG bytes: the run's layers,
timeline and scalars, and one layer's tiles at one row at the maps' own resolution. Colours come from
the one colour-scale rule, the tile grid from the frames' layout rule; the store is opened read-only
(SWMR), so a run that is still training can be followed, and nothing is ever written to the run folder.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from actrec.errors import UserError
from actrec.recording import ColourScale, LayerView, Recording, colors, thin_rows
from actrec.store import KIND_MAPS, STORE_FILENAME
from actrec.viewer import encode_png
from actrec.viewer.curves import smooth
from actrec.viewer.frames import drawn_maps

GUTTER = 1
"""Pixels between tiles in a served grid, at the maps' own resolution (the tab scales the whole image)."""
FRAME_CACHE_SIZE = 512
"""PNG frames kept per plugin (a few hundred kilobytes of small PNGs): stepping back and forth is free."""
CURVE_POINTS = 2000
"""Most points of a loss/accuracy curve sent to the tab; longer series are thinned evenly."""
_SKIP_DIRS = {"checkpoints", "renders", ".git", "__pycache__"}


class DashboardError(UserError):
    """A request the dashboard refuses (unknown run or layer, a row out of range), in one sentence."""


def find_runs(logdir: str | os.PathLike, group: str | None = None) -> dict[str, Path]:
    """Every folder under ``logdir`` holding an activation store, by TensorBoard's name for it.

    TensorBoard names a run by its folder relative to the logdir (``"."`` for the logdir itself), or,
    for a ``--logdir_spec`` entry ``group:path``, by ``group`` joined with that relative folder
    (``"version_0/."``). An actrec run folder holds both the event files and the store, so the names
    agree with TensorBoard's own.
    """
    root = Path(logdir)
    found: dict[str, Path] = {}
    for folder, subfolders, files in os.walk(root, followlinks=False):
        subfolders[:] = sorted(name for name in subfolders if name not in _SKIP_DIRS and not name.startswith("."))
        if STORE_FILENAME in files:
            relative = Path(folder).relative_to(root).as_posix() or "."
            found[os.path.join(group, relative) if group else relative] = Path(folder) / STORE_FILENAME
    return found


def runs_of_spec(logdir_spec: str) -> dict[str, Path]:
    """The runs of TensorBoard's ``--logdir_spec`` (``group:path,...`` or plain paths), named as it names them."""
    found: dict[str, Path] = {}
    for entry in filter(None, logdir_spec.split(",")):
        group, path = None, entry
        if ":" in entry and not entry.startswith("/") and "://" not in entry:
            group, path = entry.split(":", 1)
        found.update(find_runs(os.path.expanduser(path), group))
    return found


def _hex(rgb: np.ndarray) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in rgb))


def scale_json(scale: ColourScale, width: int = 64) -> dict[str, Any]:
    """The colour bar of ``scale`` as the tab draws it: its colours and its labelled numbers."""
    return {
        "one_sided": scale.one_sided,
        "limit": scale.limit,
        "rule": scale.rule,
        "bar": [_hex(rgb) for rgb in colors.to_rgb(scale.bar_indices(width))],
        "labels": [[text, position] for text, position in scale.bar_labels()],
        "nonfinite": _hex(colors.PALETTE[colors.NONFINITE_INDEX]),
    }


def grid_indices(activations: np.ndarray, scale: ColourScale) -> np.ndarray:
    """Palette indices of one step's tiles at the maps' own resolution: one row per drawn channel, one column per probe.

    Args:
        activations: ``(P, *drawn_shape)`` activations of the drawn channels (units) at one step.
        scale: the layer's colour scale.

    Returns:
        A new ``(rows * (h + 1) + 1, P * (w + 1) + 1)`` uint8 array: tiles separated by a one-pixel gutter.
    """
    activations = np.asarray(activations)
    probes = activations.shape[0]
    rows, height, width = drawn_maps(activations.shape[1:])
    tiles = scale.indices(activations).reshape(probes, rows, height, width)
    grid = np.full(
        (rows * (height + GUTTER) + GUTTER, probes * (width + GUTTER) + GUTTER), colors.GUTTER_INDEX, np.uint8
    )
    inner = grid[GUTTER:, GUTTER:].reshape(rows, height + GUTTER, probes, width + GUTTER)
    inner[:, :height, :, :width] = tiles.transpose(1, 2, 0, 3)
    return grid


class _LayerState:
    """A layer's drawing decisions, fixed when the tab first asks: the read side's channel plan and scale."""

    def __init__(self, view: LayerView) -> None:
        plan = view.channel_plan()
        shape = view.sample_shape
        self.name = view.name
        self.kind = view.kind
        self.module_type = str(view.info.module_type)
        self.select = plan.select
        self.labels = [int(label) for label in plan.labels]
        self.note = plan.note
        self.scale = view.scale_for(plan.select)
        self.drawn_shape = (len(plan.labels), *shape[1:]) if self.kind == KIND_MAPS else (*shape[:-1], len(plan.labels))
        self.axis = view.axis

    def selected(self, activations: np.ndarray) -> np.ndarray:
        return activations if self.select is None else np.take(activations, self.select, axis=self.axis)


class RunSource:
    """One run's recording, opened read-only, and everything the tab asks of it.

    Args:
        name: the run's name in TensorBoard.
        store_path: its ``activations.h5``.

    Raises:
        UserError: the store cannot be opened (the read side's sentence).
    """

    def __init__(self, name: str, store_path: Path) -> None:
        self.name = name
        self.store_path = store_path
        self._lock = threading.RLock()
        self._recording = Recording.open(store_path, allow_empty=True, announce=None)
        self._layers: dict[str, _LayerState] = {}
        self._planned_rows = 0
        self.generation = 0
        """Counts re-plans: the channel plans and colour scales were fixed anew (frames of another
        generation are drawn on other scales, so caches key on it)."""

    def close(self) -> None:
        with self._lock:
            self._recording.close()

    # -- whole-run facts -------------------------------------------------------------------------

    def refresh(self) -> int:
        """Pick up rows a training still running has flushed since (SWMR); returns the row count.

        Channel plans and colour scales are fixed from the rows there were when first asked for; once the
        run has twice as many, they are fixed anew from all of them (a new :attr:`generation`), so a live
        run's colours follow the read side's rule over what it has recorded, without changing every poll.
        """
        with self._lock:
            if self._recording.store.refresh() != self._recording.num_rows:
                self._recording.refresh()
                if self._layers and self._recording.num_rows >= 2 * self._planned_rows:
                    self._layers.clear()
                    self.generation += 1
            return self._recording.num_rows

    @property
    def num_rows(self) -> int:
        return self._recording.num_rows

    def _layer(self, name: str) -> _LayerState:
        with self._lock:
            state = self._layers.get(name)
            if state is None:
                if name not in self._recording.layers:
                    raise DashboardError(f"run {self.name!r} has no layer {name!r}.")
                if not self._recording.num_rows:
                    raise DashboardError(f"run {self.name!r} has no recorded step yet.")
                if not self._layers:
                    self._planned_rows = self._recording.num_rows
                state = self._layers[name] = _LayerState(self._recording.layer(name))
            return state

    def info(self) -> dict[str, Any]:
        """The run's layers (kind, drawn grid, channel labels, colour bar), probes and row count."""
        with self._lock:
            probes = self._recording.probes
            layers = []
            for name in self._recording.layers if self._recording.num_rows else []:
                state = self._layer(name)
                grid_rows, height, width = drawn_maps(state.drawn_shape)
                layers.append(
                    {
                        "name": name,
                        "kind": state.kind,
                        "module_type": state.module_type,
                        "grid": {"rows": grid_rows, "height": height, "width": width, "gutter": GUTTER},
                        "channels": state.labels,
                        "note": state.note,
                        "scale": scale_json(state.scale),
                    }
                )
            return {
                "run": self.name,
                "num_rows": self._recording.num_rows,
                "generation": self.generation,
                "layers": layers,
                "probes": {
                    "labels": [int(label) for label in probes.labels],
                    "class_names": [str(name) for name in probes.class_names],
                    "images": np.ndim(probes.images) in (3, 4),
                },
            }

    def timeline(self) -> dict[str, Any]:
        """Every row's global step and epoch, and the loss/accuracy curves (thinned to :data:`CURVE_POINTS`).

        Each curve is ``[steps, values]``; a training curve (one value per batch) also carries its
        :func:`actrec.viewer.curves.smooth` (TensorBoard's debiased EMA, weight 0.9) as a third list, the line
        the tab draws over the faint raw one, as ``actrec render``, ``compare`` and ``report`` draw them.
        """
        with self._lock:
            timeline = self._recording.timeline
            curves = {}
            for label, name in (("train/loss", "batch_loss"), ("train/acc", "batch_acc"), ("val/loss", "val/loss"),
                                ("val/acc", "val/acc")):  # fmt: skip
                steps, values = (np.asarray(column) for column in timeline.series(name))
                if len(steps):
                    keep = thin_rows(steps, stride=None, max_rows=CURVE_POINTS)
                    curves[label] = [steps[keep].tolist(), _finite_list(values[keep])]
                    if label.startswith("train/"):
                        # Every batch is noisy: smoothed as render, compare and report smooth it (over the
                        # whole series, then thinned), the raw series drawn faintly underneath.
                        curves[label].append(_finite_list(smooth(values)[keep]))
            return {
                "num_rows": timeline.num_rows,
                "generation": self.generation,
                "global_steps": timeline.global_steps.tolist(),
                "epochs": np.asarray(timeline.epochs).tolist(),
                "curves": curves,
            }

    def _check_row(self, row: int) -> int:
        if not 0 <= row < self._recording.num_rows:
            raise DashboardError(f"run {self.name!r} has rows 0 to {self._recording.num_rows - 1}, not row {row}.")
        return row

    def step(self, row: int) -> dict[str, Any]:
        """One row's step, epoch and each probe's predicted class."""
        with self._lock:
            row = self._check_row(row)
            timeline = self._recording.timeline
            return {
                "row": row,
                "global_step": int(timeline.global_steps[row]),
                "epoch": int(timeline.epochs[row]),
                "predictions": [int(p) for p in timeline.predictions_at(row)],  # this row's logits only
            }

    def frame_png(self, layer: str, row: int) -> tuple[int, bytes]:
        """``(generation, PNG)`` of ``layer``'s tiles at ``row``, at the maps' own resolution.

        Raises:
            DashboardError: unknown layer or row.
            UserError: the row is damaged (the read side's sentence).
        """
        with self._lock:
            state = self._layer(layer)
            row = self._check_row(row)
            ((_, values),) = self._recording.layer(layer).iter_rows([row], damaged=None)
            activations = state.selected(values)
            generation = self.generation
        return generation, encode_png(grid_indices(activations, state.scale), compress_level=1)

    def probe_png(self, index: int) -> bytes:
        """PNG of probe ``index``'s input image at its own resolution, grey (or colour for RGB)."""
        with self._lock:
            images = np.asarray(self._recording.probes.images, dtype=np.float32)
        if images.ndim not in (3, 4) or not 0 <= index < len(images):
            raise DashboardError(f"run {self.name!r} has no probe image {index}.")
        finite = images[np.isfinite(images)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        image = images[index]
        if image.ndim == 3 and image.shape[0] == 3:
            indices = colors.rgb_indices(np.moveaxis(image, 0, -1), low, high)
        else:
            indices = colors.grey_indices(image.mean(axis=0) if image.ndim == 3 else image, low, high)
        return encode_png(indices, compress_level=1)


def _finite_list(values: np.ndarray) -> list[float | None]:
    """A JSON-safe list: NaN and infinities become ``None`` (a gap in the curve)."""
    values = np.asarray(values, dtype=np.float64)
    listed: list[float | None] = values.tolist()
    for index in np.flatnonzero(~np.isfinite(values)).tolist():
        listed[index] = None
    return listed


class FrameCache:
    """A small thread-safe LRU cache of PNG bytes.

    The plugin keys a frame on ``(run, generation, layer, row)``: once a live run's scales are fixed anew,
    its older frames are never asked for again and age out.
    """

    def __init__(self, size: int = FRAME_CACHE_SIZE) -> None:
        self._size = size
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> bytes | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple, value: bytes) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)
