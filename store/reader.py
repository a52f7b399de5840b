"""Read activation stores, including ones still being written or left behind by a killed run."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np

from actrec.store._schema import FORMAT_NAME, FORMAT_VERSION, SCALE_TANH, STEP_FIELDS, StoreError
from actrec.store.writer import ProbeSet

STORE_FILENAME = "activations.h5"


@dataclass(frozen=True)
class LayerInfo:
    """Static description of one recorded layer.

    Args:
        name: the module's qualified name.
        sample_shape: shape of one probe's activation, e.g. ``(4, 28, 28)``.
        module_type: the module's class name.
        scale_kind: ``"tanh"`` or ``"symmetric"``.
        param_names: names of the recorded parameters (may be empty).
    """

    name: str
    sample_shape: tuple[int, ...]
    module_type: str
    scale_kind: str
    param_names: tuple[str, ...]


def resolve_store_path(path: str | os.PathLike) -> Path:
    """Return the store file for ``path``: the file itself, or the ``activations.h5`` in a folder holding one.

    Which run an experiment folder means (its newest version, ...) is :func:`actrec.runs.resolve_run`'s
    business: the store knows files, not run folders.
    """
    path = Path(path)
    return path / STORE_FILENAME if path.is_dir() and (path / STORE_FILENAME).exists() else path


class StoreReader:
    """Read-only view of one store. Opens in SWMR mode, so it works while the run is writing.

    Args:
        path: a store file, or a run folder holding ``activations.h5``.

    Raises:
        StoreError: the file is missing, not HDF5, damaged, not an actrec store, or newer than this
            version of actrec can read.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = resolve_store_path(path)
        self._shared = _SharedFile.acquire(self.path)
        self._file = self._shared.file
        try:
            self._check_format()
        except BaseException:
            self._shared.release()
            raise
        self._num_steps: int | None = None
        self._closed = False

    def _dataset(self, key: str) -> h5py.Dataset:
        return self._shared.dataset(key)

    def _check_format(self) -> None:
        attrs = self._file.attrs
        if attrs.get("format") != FORMAT_NAME:
            raise StoreError(f"{self.path} is an HDF5 file but not an actrec activation store.")
        version = int(attrs.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise StoreError(
                f"{self.path} uses store format version {version}, newer than this actrec reads "
                f"({FORMAT_VERSION}); upgrade actrec to read it."
            )

    # -- whole-run facts -------------------------------------------------------------------------

    @property
    def run_id(self) -> str:
        return str(self._file.attrs["run_id"])

    @property
    def format_version(self) -> int:
        return int(self._file.attrs["format_version"])

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(self._file.attrs["config"])

    @property
    def class_names(self) -> list[str]:
        return json.loads(self._file.attrs["class_names"])

    @property
    def probes(self) -> ProbeSet:
        group = self._file["probes"]
        return ProbeSet(
            images=group["images"][()],
            labels=group["labels"][()],
            indices=group["indices"][()],
            class_names=self.class_names,
        )

    @property
    def layer_names(self) -> list[str]:
        """Recorded layers, in the order the model computes them."""
        layers = self._file["layers"]
        return sorted(layers, key=lambda name: int(layers[name].attrs.get("order", 0)))

    def layer(self, name: str) -> LayerInfo:
        """Describe one layer.

        Raises:
            StoreError: the store has no layer ``name``.
        """
        group = self._layer_group(name)
        return LayerInfo(
            name=name,
            sample_shape=tuple(int(n) for n in group.attrs["sample_shape"]),
            module_type=str(group.attrs["module_type"]),
            scale_kind=str(group.attrs["scale_kind"]),
            param_names=tuple(group["params"]),
        )

    # -- per-step data ---------------------------------------------------------------------------

    @property
    def num_steps(self) -> int:
        """Number of complete rows as of the last :meth:`refresh`."""
        if self._num_steps is None:
            self.refresh()
        return self._num_steps

    def refresh(self) -> int:
        """Pick up rows flushed by a writer since the store was opened; returns :attr:`num_steps`."""
        keys = [f"steps/{name}" for name in ("global_step", *STEP_FIELDS, "logits")]
        keys += [f"layers/{name}/activations" for name in self._file["layers"]]
        lengths = []
        for key in keys:
            dataset = self._dataset(key)
            dataset.refresh()
            lengths.append(dataset.shape[0])
        # global_step is written last, but a row counts only once every dataset holds it.
        self._num_steps = min(lengths)
        return self._num_steps

    def global_steps(self) -> np.ndarray:
        """``(N,)`` global step of every row."""
        return self._column("global_step")

    def steps(self) -> dict[str, np.ndarray]:
        """Every per-step column (``global_step``, ``epoch``, ``batch_loss``, ``batch_acc``, ``wall_time``)."""
        return {name: self._column(name) for name in ("global_step", *STEP_FIELDS)}

    def logits(self, rows: slice | np.ndarray | None = None) -> np.ndarray:
        """``(n, P, K)`` probe logits of the chosen rows (all rows by default)."""
        return self._rows(self._dataset("steps/logits"), rows)

    def activations(self, name: str, rows: slice | np.ndarray | None = None) -> np.ndarray:
        """``(n, P, *sample_shape)`` activations of layer ``name`` at the chosen rows."""
        self._layer_group(name)
        return self._rows(self._dataset(f"layers/{name}/activations"), rows)

    def abs_max(self, name: str, rows: slice | np.ndarray | None = None) -> np.ndarray:
        """``(n,)`` largest absolute activation of layer ``name`` in each chosen row."""
        self._layer_group(name)
        return self._rows(self._dataset(f"layers/{name}/abs_max"), rows)

    def params(self, name: str, rows: slice | np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The recorded parameters of layer ``name`` at the chosen rows, by parameter name."""
        group = self._layer_group(name)["params"]
        return {param: self._rows(self._dataset(f"layers/{name}/params/{param}"), rows) for param in group}

    def symmetric_scale(self, name: str, rows: slice | np.ndarray | None = None) -> float:
        """The fixed colour scale of a layer: 1 for tanh layers, else the largest ``|activation|`` seen."""
        if self.layer(name).scale_kind == SCALE_TANH:
            return 1.0
        values = self.abs_max(name, rows)
        scale = float(values.max()) if values.size else 0.0
        return scale if scale > 0 else 1.0

    def scalars(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(global_steps, values)`` of a scalar series such as ``val/loss`` (empty if never logged)."""
        if name not in self._file["scalars"]:
            raise StoreError(f"{self.path} has no scalar series {name!r}.")
        dataset = self._dataset(f"scalars/{name}")
        dataset.refresh()
        data = dataset[()]
        return data[:, 0].astype(np.int64), data[:, 1]

    # -- plumbing --------------------------------------------------------------------------------

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._shared.release()

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _layer_group(self, name: str) -> h5py.Group:
        layers = self._file["layers"]
        if name not in layers:
            raise StoreError(f"{self.path} has no layer {name!r}; it has: {', '.join(self.layer_names)}.")
        return layers[name]

    def _column(self, name: str) -> np.ndarray:
        return self._dataset(f"steps/{name}")[: self.num_steps]

    def _rows(self, dataset: h5py.Dataset, rows: slice | np.ndarray | None) -> np.ndarray:
        dataset.refresh()
        n = self.num_steps
        if rows is None:
            return dataset[:n]
        if isinstance(rows, slice):
            start, stop, stride = rows.indices(n)
            return dataset[start:stop:stride] if stride > 0 else dataset[:n][rows]
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise StoreError(f"row index out of range: the store has {n} complete rows.")
        # h5py wants increasing indices; read sorted and unique, then put back in the asked order.
        unique, inverse = np.unique(rows, return_inverse=True)
        return dataset[unique][inverse] if unique.size else dataset[:0]


class _SharedFile:
    """One open file and one handle per dataset, shared by every reader of a path in this process.

    HDF5 shares an open file between all its opens in a process, and HDF5 2.0 corrupts its chunk
    lookups ("can't insert duplicate key") once two handles of one dataset have been refreshed in
    SWMR mode; so readers share handles instead of opening their own.
    """

    _open_files: ClassVar[dict[str, _SharedFile]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, key: str, file: h5py.File) -> None:
        self.key = key
        self.file = file
        self.users = 0
        self._datasets: dict[str, h5py.Dataset] = {}

    @classmethod
    def acquire(cls, path: Path) -> _SharedFile:
        key = os.path.realpath(path)
        with cls._lock:
            shared = cls._open_files.get(key)
            if shared is None or not shared.file.id.valid:
                shared = cls._open_files[key] = cls(key, _open(path))
            shared.users += 1
            return shared

    def release(self) -> None:
        with self._lock:
            self.users -= 1
            if self.users == 0:
                self._open_files.pop(self.key, None)
                self._datasets.clear()
                self.file.close()

    def dataset(self, key: str) -> h5py.Dataset:
        if key not in self._datasets:
            self._datasets[key] = self.file[key]
        return self._datasets[key]


def _open(path: Path) -> h5py.File:
    if not path.exists():
        raise StoreError(f"no activation store at {path}; pass a run folder or its activations.h5.")
    if path.is_dir():
        raise StoreError(f"{path} is a folder without an activations.h5 in it.")
    if not h5py.is_hdf5(path):
        raise StoreError(f"{path} is not an HDF5 file, so not an actrec activation store.")
    try:
        # A plain open checks the whole superblock against the file's size and fails at once on a
        # truncated file, where an SWMR open would keep retrying reads that can never succeed.
        h5py.File(path, "r").close()
    except OSError as error:
        # Older HDF5 refuses plain opens of files flagged "open for writing"; SWMR read takes them.
        if "already open" not in str(error):
            raise StoreError(f"{path} cannot be read; it may be truncated or damaged ({error}).") from None
    try:
        # SWMR read follows a writer that is still running and opens files left flagged "open for
        # writing" by a killed run, with no h5clear step.
        return h5py.File(path, "r", libver="latest", swmr=True)
    except OSError:
        return h5py.File(path, "r")  # a foreign HDF5 file too old for SWMR; rejected by the format check
