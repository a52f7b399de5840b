"""Read activation stores, including ones still being written or left behind by a killed run."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np

from actrec.names import STORE_FILENAME
from actrec.store._integrity import (
    _hdf5_reason,
    check_schema,
    format_version,
    json_attribute,
    open_swmr,
    read_checked,
    text_attribute,
)
from actrec.store._schema import FORMAT_NAME, FORMAT_VERSION, STEP_FIELDS, StoreError, kind_of
from actrec.store._types import LayerInfo, ProbeSet


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
        version = format_version(self._file, self.path)
        if version > FORMAT_VERSION:
            raise StoreError(
                f"{self.path} uses store format version {version}, newer than this actrec reads "
                f"({FORMAT_VERSION}); upgrade actrec to read it."
            )
        check_schema(self._file, self.path)

    # -- whole-run facts -------------------------------------------------------------------------

    @property
    def run_id(self) -> str:
        return text_attribute(self._file, self.path, "run_id")

    @property
    def format_version(self) -> int:
        return format_version(self._file, self.path)

    @property
    def config(self) -> dict[str, Any]:
        return json_attribute(self._file, self.path, "config", dict)

    @property
    def task(self) -> str | None:
        """The root ``task`` attribute (what the model's output is), or ``None`` for stores written without one."""
        if "task" not in self._file.attrs:
            return None
        return text_attribute(self._file, self.path, "task")

    @property
    def output_shape(self) -> tuple[int, ...] | None:
        """One probe's output shape before flattening (the root ``output_shape`` attribute), or ``None`` for
        stores written without one (their outputs are only known flattened, ``(K,)``); also ``None`` when the
        attribute is not a row of positive integers (a foreign or damaged file: not trusted, never a traceback)."""
        value = self._file.attrs.get("output_shape")
        if value is None:
            return None
        value = np.atleast_1d(np.asarray(value))
        if value.ndim != 1 or not np.issubdtype(value.dtype, np.integer):
            return None
        shape = tuple(int(n) for n in value.tolist())
        return shape if all(n > 0 for n in shape) else None

    @property
    def class_names(self) -> list[str]:
        return json_attribute(self._file, self.path, "class_names", list)

    @property
    def probes(self) -> ProbeSet:
        images, labels, indices = (self._whole(f"probes/{name}") for name in ("images", "labels", "indices"))
        return ProbeSet(images=images, labels=labels, indices=indices, class_names=self.class_names)

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
        attrs = group.attrs
        sample_shape = tuple(int(n) for n in attrs["sample_shape"])
        channels = attrs.get("channels")
        return LayerInfo(
            name=name,
            sample_shape=sample_shape,
            module_type=str(attrs["module_type"]),
            scale_kind=str(attrs["scale_kind"]),
            param_names=tuple(group["params"]),
            kind=str(attrs.get("kind", kind_of(sample_shape))),
            output=str(attrs.get("output", "")),
            channels=tuple(int(c) for c in channels) if channels is not None else None,
            full_shape=tuple(int(n) for n in attrs.get("full_shape", sample_shape)),
        )

    # -- per-step data ---------------------------------------------------------------------------

    @property
    def num_steps(self) -> int:
        """Number of complete rows as of the last :meth:`refresh`."""
        if self._num_steps is None:
            return self.refresh()
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

    def nonfinite(self, name: str, rows: slice | np.ndarray | None = None) -> np.ndarray:
        """``(n,)`` number of NaN/inf values of layer ``name`` in each chosen row (zeros for version 1 stores)."""
        group = self._layer_group(name)
        if "nonfinite" not in group:
            return np.zeros(len(self._rows(self._dataset("steps/global_step"), rows)), dtype=np.int64)
        return self._rows(self._dataset(f"layers/{name}/nonfinite"), rows)

    def params(self, name: str, rows: slice | np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The recorded parameters of layer ``name`` at the chosen rows, by parameter name."""
        group = self._layer_group(name)["params"]
        return {param: self._rows(self._dataset(f"layers/{name}/params/{param}"), rows) for param in group}

    def scalars(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(global_steps, values)`` of a scalar series such as ``val/loss`` (empty if never logged, or if
        the store has no such series: version 2 stores no longer create ``train/loss`` and ``train/acc``)."""
        if name not in self._file["scalars"]:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        dataset = self._dataset(f"scalars/{name}")
        dataset.refresh()
        data = self._whole(f"scalars/{name}")
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
        return self._rows(self._dataset(f"steps/{name}"), None)

    def _whole(self, key: str) -> np.ndarray:
        """A dataset read whole (probes, scalars); a checksum failure names its first row."""
        dataset = self._dataset(key)
        rows = np.arange(dataset.shape[0] if dataset.shape else 1)
        return read_checked(lambda: dataset[()], dataset, rows, lambda row: None)

    def _step_of_row(self, row: int) -> int | None:
        try:
            return int(self._dataset("steps/global_step")[row])
        except (OSError, IndexError):
            return None

    def _rows(self, dataset: h5py.Dataset, rows: slice | np.ndarray | None) -> np.ndarray:
        """Read rows of a per-step dataset; a row that fails its checksum raises DamagedDataError."""
        dataset.refresh()
        n = self.num_steps
        if rows is None:
            return read_checked(lambda: dataset[:n], dataset, np.arange(n), self._step_of_row)
        if isinstance(rows, slice):
            start, stop, stride = rows.indices(n)

            def read() -> np.ndarray:
                return dataset[start:stop:stride] if stride > 0 else dataset[:n][rows]

            return read_checked(read, dataset, np.arange(start, stop, stride), self._step_of_row)
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise StoreError(f"row index out of range: the store has {n} complete rows.")
        # h5py wants increasing indices; read sorted and unique, then put back in the asked order.
        unique, inverse = np.unique(rows, return_inverse=True)
        if not unique.size:
            return dataset[:0]

        def read_runs() -> np.ndarray:
            # One slice read per run of consecutive rows: h5py's point selection of 32 spread rows is 20-40x
            # slower than 32 one-row slices (the colour-scale samples of every render and report).
            runs = np.split(unique, np.flatnonzero(np.diff(unique) != 1) + 1)
            return np.concatenate([dataset[int(run[0]) : int(run[-1]) + 1] for run in runs])[inverse]

        return read_checked(read_runs, dataset, unique, self._step_of_row)


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
        h5py.File(path, "r", locking=False).close()  # no lock: see open_swmr
    except OSError as error:
        # Older HDF5 refuses plain opens of files flagged "open for writing"; SWMR read takes them.
        if "already open" not in str(error):
            raise StoreError(f"{path} cannot be read; it may be truncated or damaged ({error}).") from None
    try:
        # SWMR read follows a writer that is still running and opens files left flagged "open for
        # writing" by a killed run, with no h5clear step; open_swmr bounds HDF5's retries on damaged
        # metadata (which otherwise take ~40 minutes per object) and walks the structure once.
        return open_swmr(path)
    except OSError as error:
        try:
            return h5py.File(path, "r", locking=False)  # a foreign HDF5 file too old for SWMR; rejected later
        except OSError as plain:
            if "already open" in str(plain):  # actrec's own writers are always in SWMR mode, so another program's
                raise StoreError(
                    f"{path} is marked open for writing by a program that does not share it (not in SWMR mode): "
                    "wait for it to close the file, or, if it died, clear the mark with `h5clear -s`."
                ) from None
            raise StoreError(f"{path} cannot be read ({_hdf5_reason(error)}).") from None
