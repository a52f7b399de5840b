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
from actrec.store import STORE_FILENAME, StoreError, StoreReader
from actrec.viewer import colors, encode_png
from actrec.viewer.frames import DEFAULT_MAX_CHANNELS, drawn_maps, layer_kind, predicted_classes
from actrec.viewer.scale import ColourScale, colour_scale, sample_rows

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
    """A layer's fixed drawing decisions: kind, drawn channels, colour scale (fixed when the run is opened)."""

    def __init__(
        self,
        name: str,
        kind: str,
        module_type: str,
        select: np.ndarray | None,
        labels: list[int],
        scale: ColourScale,
        drawn_shape: tuple[int, ...],
    ) -> None:
        self.name = name
        self.kind = kind
        self.module_type = module_type
        self.select = select
        self.labels = labels
        self.scale = scale
        self.drawn_shape = drawn_shape

    def selected(self, activations: np.ndarray) -> np.ndarray:
        if self.select is None:
            return activations
        return np.take(activations, self.select, axis=-3 if self.kind == "maps" else -1)


class RunSource:
    """One run's store, opened read-only, and everything the tab asks of it.

    Args:
        name: the run's name in TensorBoard.
        store_path: its ``activations.h5``.

    Raises:
        StoreError: the store cannot be opened (one sentence).
    """

    def __init__(self, name: str, store_path: Path) -> None:
        self.name = name
        self.store_path = store_path
        self._lock = threading.RLock()
        self._store = StoreReader(store_path)
        self._layers: dict[str, _LayerState] = {}
        self._num_rows = self._store.refresh()
        self._steps: np.ndarray | None = None

    def close(self) -> None:
        with self._lock:
            self._store.close()

    # -- whole-run facts -------------------------------------------------------------------------

    def refresh(self) -> int:
        """Pick up rows a training still running has flushed since (SWMR); returns the row count."""
        with self._lock:
            rows = self._store.refresh()
            if rows != self._num_rows:
                self._num_rows = rows
                self._steps = None
            return rows

    @property
    def num_rows(self) -> int:
        return self._num_rows

    def _columns(self) -> dict[str, np.ndarray]:
        with self._lock:
            if self._steps is None:
                steps = self._store.steps()
                self._steps = {key: np.asarray(value[: self._num_rows]) for key, value in steps.items()}
            return self._steps

    def _layer(self, name: str) -> _LayerState:
        with self._lock:
            state = self._layers.get(name)
            if state is not None:
                return state
            if name not in self._store.layer_names:
                raise DashboardError(f"run {self.name!r} has no layer {name!r}.")
            info = self._store.layer(name)
            kind = layer_kind(info)
            shape = tuple(info.sample_shape)
            width = shape[0] if kind == "maps" else shape[-1]
            full_labels = list(info.channels) if info.channels is not None else list(range(width))
            select = None if width <= DEFAULT_MAX_CHANNELS else np.arange(DEFAULT_MAX_CHANNELS)
            labels = full_labels if select is None else [full_labels[i] for i in select]
            samples = self._store.activations(name, sample_rows(self._num_rows)) if self._num_rows else np.zeros(1)
            state = _LayerState(
                name, kind, info.module_type, select, labels, colour_scale(info.scale_kind, np.zeros(1)), shape
            )
            samples = state.selected(samples)
            state.scale = colour_scale(info.scale_kind, samples if samples.size else np.zeros(1))
            state.drawn_shape = (len(labels), *shape[1:]) if kind == "maps" else (*shape[:-1], len(labels))
            self._layers[name] = state
            return state

    def info(self) -> dict[str, Any]:
        """The run's layers (kind, drawn grid, channel labels, colour bar), probes and row count."""
        with self._lock:
            probes = self._store.probes
            layers = []
            for name in self._store.layer_names:
                state = self._layer(name)
                grid_rows, height, width = drawn_maps(state.drawn_shape)
                layers.append(
                    {
                        "name": name,
                        "kind": state.kind,
                        "module_type": state.module_type,
                        "grid": {"rows": grid_rows, "height": height, "width": width, "gutter": GUTTER},
                        "channels": state.labels,
                        "scale": scale_json(state.scale),
                    }
                )
            class_names = [str(name) for name in probes.class_names]
            return {
                "run": self.name,
                "num_rows": self._num_rows,
                "layers": layers,
                "probes": {
                    "labels": [int(label) for label in probes.labels],
                    "class_names": class_names,
                    "images": np.ndim(probes.images) in (3, 4),
                },
            }

    def timeline(self) -> dict[str, Any]:
        """Every row's global step and epoch, and the loss/accuracy curves (thinned to :data:`CURVE_POINTS`)."""
        columns = self._columns()
        steps = columns["global_step"]
        thin = sample_rows(len(steps), CURVE_POINTS)
        curves = {
            "train/loss": [steps[thin].tolist(), _finite_list(columns["batch_loss"][thin])],
            "train/acc": [steps[thin].tolist(), _finite_list(columns["batch_acc"][thin])],
        }
        with self._lock:
            for name in ("val/loss", "val/acc"):
                try:
                    at, values = self._store.scalars(name)
                except StoreError:
                    continue
                if len(at):
                    curves[name] = [at.tolist(), _finite_list(values)]
        return {
            "num_rows": len(steps),
            "global_steps": steps.tolist(),
            "epochs": columns["epoch"].tolist(),
            "curves": curves,
        }

    def _check_row(self, row: int) -> int:
        if not 0 <= row < self._num_rows:
            raise DashboardError(f"run {self.name!r} has rows 0 to {self._num_rows - 1}, not row {row}.")
        return row

    def step(self, row: int) -> dict[str, Any]:
        """One row's step, epoch and each probe's predicted class."""
        with self._lock:
            row = self._check_row(row)
            columns = self._columns()
            logits = self._store.logits(np.asarray([row]))[0]
            return {
                "row": row,
                "global_step": int(columns["global_step"][row]),
                "epoch": int(columns["epoch"][row]),
                "predictions": [int(p) for p in predicted_classes(logits)],
            }

    def frame_png(self, layer: str, row: int) -> bytes:
        """PNG of ``layer``'s tiles at ``row``, at the maps' own resolution.

        Raises:
            DashboardError: unknown layer or row.
            StoreError: the row is damaged (the read side's sentence).
        """
        with self._lock:
            state = self._layer(layer)
            row = self._check_row(row)
            activations = state.selected(self._store.activations(layer, np.asarray([row]))[0])
        return encode_png(grid_indices(activations, state.scale), compress_level=1)

    def probe_png(self, index: int) -> bytes:
        """PNG of probe ``index``'s input image at its own resolution, grey (or colour for RGB)."""
        with self._lock:
            images = np.asarray(self._store.probes.images, dtype=np.float32)
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
    return [float(v) if np.isfinite(v) else None for v in np.asarray(values, dtype=np.float64)]


class FrameCache:
    """A small thread-safe LRU cache of PNG bytes."""

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

    def drop(self, run: str) -> None:
        with self._lock:
            for key in [key for key in self._items if key[0] == run]:
                del self._items[key]
