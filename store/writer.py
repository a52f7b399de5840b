"""Write activation stores: create, append one step at a time, resume after a checkpoint.

The file is written in HDF5's single-writer/multiple-reader (SWMR) mode: every object is created up
front, then rows are appended and flushed. SWMR orders its writes so that the file on disk is
readable at every instant, which is what makes a store survive ``SIGKILL`` and lets the viewer read
it while training runs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from actrec.store._chunks import DIRECT_FILTERS, FILTER_FLETCHER32, encode_chunk, fletcher32
from actrec.store._integrity import _hdf5_reason, check_schema, latest_format_access, open_swmr
from actrec.store._schema import (
    FIXED_SCALES,
    FORMAT_NAME,
    FORMAT_VERSION,
    SCALAR_NAMES,
    SCALE_KINDS,
    STEP_FIELDS,
    StoreError,
    check_compression,
    check_dtype,
    chunk_rows,
    kind_of,
)
from actrec.store._types import LayerSpec, ProbeSet, StepRecord

log = logging.getLogger("actrec")

__all__ = ["LayerSpec", "ProbeSet", "StepRecord", "StoreWriter", "check_writable"]

_COPY_BLOCK_ROWS = 1024
"""Rows copied at a time when resuming, so memory stays bounded whatever the store's size."""

BLOCK_ROWS = 16
"""Rows written (and flushed) together by default: SWMR's flush costs ~1 ms whatever it carries, and a
dataset's ``set_extent`` and ``write`` cost the same for one row as for sixteen. Activation and weight chunks
hold 1 to 8 rows (:func:`~actrec.store._schema.chunk_rows`), a power of two, so a full block fills whole
chunks; the timed flush writes whole chunks where it can (:func:`rows_due`)."""
_FLUSH_SECONDS = 1.0
"""A block waiting this long is written and flushed whatever its length: a killed writer loses at most the
rows of the last second (or of one block), and a live reader sees rows within a second."""
_MIN_FREE_BYTES = 1 << 20
"""Stop recording cleanly once a row would leave less than this free on the store's disk."""
_FLETCHER32 = True
"""Checksum every chunk (the bench turns it off to measure what it costs; stores always have it)."""
_DIRECT_CHUNKS = os.environ.get("ACTREC_DIRECT_CHUNKS", "1") != "0"
"""Write whole chunks past HDF5's pipeline (:class:`_Column`); ``ACTREC_DIRECT_CHUNKS=0`` leaves every row to HDF5
(the bench sets it in writer processes to measure what writing chunks here saves)."""
_DISK_GUARD = os.environ.get("ACTREC_DISK_GUARD", "1") != "0"
"""``ACTREC_DISK_GUARD=0`` turns the free-space check off (tests use it to make HDF5 itself meet ENOSPC)."""


def _growable(group: h5py.Group, name: str, row_shape: tuple[int, ...], dtype: Any, **kwargs: Any) -> None:
    # Fletcher-32 on every chunk: a reader can tell a damaged row from data.
    group.create_dataset(
        name, shape=(0, *row_shape), maxshape=(None, *row_shape), dtype=dtype, fletcher32=_FLETCHER32, **kwargs
    )


def _per_step_chunks(key: str) -> bool:
    """Whether a column is chunked by :func:`chunk_rows` (activations, weights), not in fixed long chunks."""
    return key.startswith("layers/") and (key.endswith("/activations") or "/params/" in key)


def rows_due(arrivals: Sequence[float], written: int, now: float, *, block: int, chunk: int, wait: float) -> int:
    """How many of the rows held for writing to write now, oldest first (0: keep holding them).

    A full block (``block`` rows) is written whole. Otherwise nothing is written until the oldest row has
    waited ``wait`` seconds; then the rows that complete whole chunks (``written`` rows are already in the
    file, chunks are ``chunk`` rows), and the rest too once the oldest of *them* has waited as long. So a row
    is on disk within about ``wait`` seconds, and chunks are written partly filled only when rows come slower
    than ``chunk`` per ``wait``: under SWMR, HDF5 never reuses the space a rewritten compressed chunk leaves.
    """
    count = len(arrivals)
    if count >= block:
        return count
    if not count or now - arrivals[0] < wait:
        return 0
    whole = max((written + count) // chunk * chunk - written, 0)
    if whole < count and now - arrivals[whole] >= wait:
        return count
    return whole


_Pipeline = tuple[tuple[int, tuple[int, ...]], ...]
"""A dataset's filters in HDF5's order: ``(filter id, parameters)`` each."""


class _Column:
    """Appends rows to one growable dataset through h5py's low-level API, any number of rows per call.

    The high-level ``resize`` and ``__setitem__`` cost ~0.3 ms of Python each; a step appends ~30 rows.
    Here a block of rows costs one ``set_extent`` per dataset, whatever its length, and the rows that fill whole
    chunks go straight to the file: each chunk is filtered here (:func:`~actrec.store._chunks.encode_chunk`) and
    written with ``write_direct_chunk``, past HDF5's chunk cache, selections and filter pipeline (which copy every
    byte twice more on its way). Rows that start or end inside a chunk (a timed flush, a resumed store) go
    through HDF5, which merges them with the chunk's rows already on disk.
    """

    def __init__(self, dataset: h5py.Dataset) -> None:
        self._id = dataset.id
        self._dtype = dataset.dtype
        self._row_shape = tuple(dataset.shape[1:])
        self._rows = dataset.shape[0]
        self.chunk_rows = dataset.chunks[0] if dataset.chunks else 1
        self.compressed = dataset.compression is not None
        self.row_bytes = int(np.prod(self._row_shape, dtype=np.int64)) * self._dtype.itemsize
        self._pipeline = _direct_pipeline(dataset)
        """The dataset's filters when whole chunks can be written here (``None``: HDF5 writes every row)."""
        self._chunk_buffer = np.empty((0, 0), dtype=np.uint8)
        """Kept from block to block: HDF5 has written a chunk by the time ``write_direct_chunk`` returns."""
        # Made once, not per write (h5py makes both anew unless given them): 9 of a write's 22 us.
        self._memory_type = h5py.h5t.py_create(self._dtype)
        self._memory_spaces: dict[tuple[int, ...], h5py.h5s.SpaceID] = {}

    def open_chunk_bytes(self) -> int:
        """Bytes the file holds for a compressed chunk that the next rows will complete (0: none is open).

        Completing it writes the whole chunk anew elsewhere in the file; under SWMR these bytes are never reused.
        """
        if not self.compressed or not self._rows % self.chunk_rows:
            return 0
        first = self._rows - self._rows % self.chunk_rows
        # Asking writes the chunk out of HDF5's cache first, so the size is the chunk's as it stands.
        return int(self._id.get_chunk_info_by_coord((first,) + (0,) * len(self._row_shape)).size)

    def append(self, value: Any) -> None:
        self.append_rows(np.expand_dims(np.asarray(value), 0))

    def append_rows(self, values: Any) -> None:
        """Append ``values`` of shape ``(n, *row_shape)`` (any dtype that converts to the column's)."""
        rows = np.asarray(values)
        count = rows.shape[0]
        rows = rows.reshape((count, *self._row_shape))
        start = self._rows
        self._id.set_extent((start + count, *self._row_shape))
        pipeline = self._pipeline if _DIRECT_CHUNKS else None
        head = whole = 0
        if pipeline is not None:
            chunk = self.chunk_rows
            head = min(-start % chunk, count)
            whole = (count - head) // chunk * chunk
        if head:
            self._write_through_hdf5(rows[:head], start)
        if whole and pipeline is not None:
            self._write_chunks(rows[head : head + whole], start + head, pipeline)
        if head + whole < count:
            self._write_through_hdf5(rows[head + whole :], start + head + whole)
        self._rows += count

    def _write_through_hdf5(self, values: np.ndarray, first_row: int) -> None:
        with np.errstate(over="ignore", invalid="ignore"):  # values float16 cannot hold become inf, as stored
            rows = np.ascontiguousarray(values, dtype=self._dtype)
        file_space = self._id.get_space()
        file_space.select_hyperslab((first_row,) + (0,) * len(self._row_shape), rows.shape)
        memory_space = self._memory_spaces.get(rows.shape)
        if memory_space is None:
            memory_space = self._memory_spaces[rows.shape] = h5py.h5s.create_simple(rows.shape)
        self._id.write(memory_space, file_space, rows, mtype=self._memory_type)

    def _write_chunks(self, values: np.ndarray, first_row: int, pipeline: _Pipeline) -> None:
        """Write ``values``, whole chunks from row ``first_row`` on, filtered here by ``pipeline`` (the dataset's)."""
        chunks = values.shape[0] // self.chunk_rows
        chunk_bytes = self.chunk_rows * self.row_bytes
        # Fletcher-32 alone (or no filter): the chunks keep their bytes, so they are checksummed all at once, in place.
        checksum_only = all(filter_id == FILTER_FLETCHER32 for filter_id, _ in pipeline)
        # Each chunk in its own row of one buffer, with room for the checksum after it (rows 64-byte aligned):
        # the one copy the chunk's bytes make on their way to the file.
        stride = -(-(chunk_bytes + 4) // 64) * 64
        if self._chunk_buffer.shape[0] < chunks or self._chunk_buffer.shape[1] != stride:
            self._chunk_buffer = np.empty((chunks, stride), dtype=np.uint8)
        buffer = self._chunk_buffer[:chunks]
        data = buffer[:, :chunk_bytes]
        target = data.view(self._dtype).reshape((chunks, self.chunk_rows, *self._row_shape))
        with np.errstate(over="ignore", invalid="ignore"):  # values float16 cannot hold become inf, as stored
            np.copyto(target, values.reshape(target.shape), casting="unsafe")
        zeros = (0,) * len(self._row_shape)
        if checksum_only:
            end = chunk_bytes
            if pipeline:
                buffer[:, end : end + 4] = fletcher32(data).astype("<u4").view(np.uint8).reshape(chunks, 4)
                end += 4
            for index in range(chunks):
                self._id.write_direct_chunk((first_row + index * self.chunk_rows, *zeros), buffer[index, :end])
            return
        for index in range(chunks):
            encoded = encode_chunk(data[index], pipeline)
            self._id.write_direct_chunk((first_row + index * self.chunk_rows, *zeros), encoded)


def _direct_pipeline(dataset: h5py.Dataset) -> _Pipeline | None:
    """The filters of a dataset whose whole chunks :class:`_Column` may write itself, in HDF5's order, or ``None``.

    Whole rows per chunk (a chunk's bytes are its rows' bytes, row after row), a numeric type, and only filters
    :func:`~actrec.store._chunks.encode_chunk` reproduces: lzf, for one, exists only inside HDF5.
    """
    if dataset.chunks is None or tuple(dataset.chunks[1:]) != tuple(dataset.shape[1:]):
        return None
    if dataset.dtype.kind not in "iuf":
        return None
    plist = dataset.id.get_create_plist()
    pipeline = []
    for index in range(plist.get_nfilters()):
        filter_id, _flags, parameters, _name = plist.get_filter(index)
        if filter_id not in DIRECT_FILTERS:
            return None
        pipeline.append((int(filter_id), tuple(int(value) for value in parameters)))
    return tuple(pipeline)


class StoreWriter:
    """Appends steps to one store. Use :meth:`create` or :meth:`resume`, not the constructor.

    With ``background=True`` every write runs on one worker thread, in order, so the training loop
    only pays for handing over arrays; an error on the worker is raised by the next call.
    """

    def __init__(self, file: h5py.File, path: Path, flush_every: int = BLOCK_ROWS, background: bool = True) -> None:
        self._file = file
        self.path = path
        steps = file["steps"]["global_step"]
        self.last_global_step = int(steps[-1]) if steps.shape[0] else -1
        """The step of the last row already in the file when it was opened (-1: none)."""
        self._columns: dict[str, _Column] = {}
        file.visititems(self._add_column)
        self.flush_every = flush_every
        self.flush_seconds = _FLUSH_SECONDS
        self._row_bytes: int | None = None
        self._unflushed = 0
        self._pending: list[tuple[dict[str, np.ndarray], int, int, float]] = []
        self._last_flush = time.monotonic()
        self.chunk_rows = max(
            (column.chunk_rows for key, column in self._columns.items() if _per_step_chunks(key)), default=1
        )
        """Rows per chunk of the store's largest per-step chunks: blocks end on multiples of it where they can."""
        self._compressed = any(column.compressed for key, column in self._columns.items() if _per_step_chunks(key))
        self.rewritten_chunks = 0
        """Blocks that began inside a compressed chunk: each left that chunk's earlier version behind as dead space
        (under SWMR, HDF5 never reuses freed space); :meth:`close` compacts the file if it adds up."""
        self.dead_bytes = 0
        """The bytes of those earlier versions, as HDF5 gave their sizes before each was written anew."""
        self._closed = False
        self._queue: queue.Queue | None = None
        self._worker: threading.Thread | None = None
        self._worker_error: BaseException | None = None
        if background:
            # Bounded, so a slow disk applies back-pressure instead of growing memory without limit.
            self._queue = queue.Queue(maxsize=64)
            self._worker = threading.Thread(target=self._drain, name="actrec-store-writer", daemon=True)
            self._worker.start()

    @property
    def rows(self) -> int:
        """Rows in the file, written or resumed (flushed or not)."""
        return self._columns["steps/global_step"]._rows

    def _add_column(self, name: str, obj: h5py.HLObject) -> None:
        if isinstance(obj, h5py.Dataset) and obj.maxshape and obj.maxshape[0] is None:
            self._columns[name] = _Column(obj)

    # -- opening ---------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        run_id: str,
        config: Mapping[str, Any],
        probes: ProbeSet,
        layers: Sequence[LayerSpec],
        num_classes: int,
        dtype: str = "float16",
        compression: str = "none",
        overwrite: bool = False,
        flush_every: int = BLOCK_ROWS,
        background: bool = True,
        task: str | None = None,
        output_shape: Sequence[int] | None = None,
        rows_per_chunk: int | None = None,
    ) -> StoreWriter:
        """Create a new store and start SWMR writing.

        Args:
            path: where to write the file.
            run_id: identifies the run; a resumed run must present the same id.
            config: the run's configuration, stored as JSON.
            probes: the probe images, labels and indices.
            layers: the layers that will be recorded.
            num_classes: number of logits per probe.
            dtype: ``"float16"`` or ``"float32"`` for activations.
            compression: ``"none"``, ``"lzf"`` or ``"gzip"`` (level 1) for activations.
            overwrite: replace an existing file at ``path``.
            flush_every: write and flush rows in blocks of this many (and at least once a second).
            background: write on a worker thread.
            task: what the model's output is (``"classification"``, ``"reconstruction"``, ``"generation"``,
                ``"regression"``, ``"none"``), stored as the file's ``task`` attribute for the viewer.
            output_shape: one probe's output shape before it is flattened into ``num_classes`` logits
                (e.g. ``(1, 28, 28)`` for an autoencoder, ``(T, V)`` for a language model), stored as the
                ``output_shape`` attribute so readers can draw the output by its shape.
            rows_per_chunk: steps per chunk of activations and weights; ``None`` (default) picks 1 to 8 by the
                row's size (:func:`~actrec.store._schema.chunk_rows`). A damaged chunk costs all its rows, so 1
                keeps damage to single steps, at about 1.15x the compressed bytes.

        Raises:
            StoreError: the file exists (and ``overwrite`` is False), its folder is not writable, it
                cannot be written (e.g. a full disk), or an argument is invalid.
        """
        path = Path(path)
        check_dtype(dtype)
        check_compression(compression)
        if rows_per_chunk is not None and (not isinstance(rows_per_chunk, int) or rows_per_chunk < 1):
            raise StoreError(f"rows_per_chunk must be a positive whole number, got {rows_per_chunk!r}.")
        for spec in layers:
            if spec.scale_kind not in SCALE_KINDS:
                raise StoreError(
                    f"scale_kind of layer {spec.name!r} must be one of {', '.join(SCALE_KINDS)}, "
                    f"got {spec.scale_kind!r}."
                )
        check_new_path(path, overwrite)
        check_writable(path)
        tmp = path.with_name(path.name + ".creating")
        # Build the file under a temporary name: a crash during creation never leaves a half-made
        # store where a finished one is expected, and an overwrite never destroys the old one early.
        try:
            file = h5py.File(tmp, "w", libver="latest")
            try:
                _write_layout(file, run_id, config, probes, layers, num_classes, dtype, compression, rows_per_chunk)
                if task is not None:
                    file.attrs["task"] = task
                if output_shape is not None:
                    file.attrs["output_shape"] = np.asarray(tuple(output_shape), dtype=np.int64)
            finally:
                file.close()
            os.replace(tmp, path)
        except OSError as error:
            raise StoreError(f"{path} could not be created ({_hdf5_reason(error)}).") from None
        finally:
            tmp.unlink(missing_ok=True)
        return cls._open_for_append(path, flush_every, background)

    @classmethod
    def resume(
        cls,
        path: str | os.PathLike,
        *,
        run_id: str,
        keep_through_step: int,
        layers: Sequence[LayerSpec] | None = None,
        flush_every: int = BLOCK_ROWS,
        background: bool = True,
    ) -> StoreWriter:
        """Reopen a store to continue its run, dropping every row after ``keep_through_step``.

        The kept rows are copied into a fresh file that then replaces the old one atomically, so the
        store is never half-truncated, and a file left "open for writing" by a killed process is
        handled without any external tool.

        Args:
            path: the store to continue.
            run_id: the resuming run's id; it must match the store's.
            keep_through_step: the last global step to keep.
            layers: the layers the resumed run will record; when given they must match the store's
                (name, sample shape, channels), since rows of a changed layer set cannot be appended.
            flush_every: write and flush rows in blocks of this many (and at least once a second).
            background: write on a worker thread.

        Raises:
            StoreError: no store at ``path``, it is damaged or incomplete, it belongs to another run, its
                layers differ from ``layers``, or its kept rows cannot be copied (damaged chunk, full disk).
        """
        path = Path(path)
        check_writable(path)
        if not path.is_file():
            raise StoreError(f"no activation store at {path} to resume.")
        tmp = path.with_name(path.name + ".resuming")
        # Bounded open and schema check: a damaged or incomplete store is refused in one sentence.
        old = open_swmr(path)
        try:
            if old.attrs.get("format") != FORMAT_NAME:
                raise StoreError(f"{path} is not an actrec activation store; choose another output path.")
            check_schema(old, path)
            old_run = str(old.attrs.get("run_id", ""))
            if old_run != run_id:
                raise StoreError(
                    f"{path} belongs to run {old_run}, not to the checkpoint's run {run_id}; "
                    "choose another output path or pass overwrite to replace it."
                )
            if layers is not None:
                _check_same_layers(old, path, layers)
            lengths = [
                old[key].shape[0]
                for key in (
                    *(f"steps/{name}" for name in ("global_step", *STEP_FIELDS, "logits")),
                    *(f"layers/{name}/activations" for name in old["layers"]),
                )
            ]
            complete = min(lengths)
            steps = old["steps/global_step"][:complete]
            keep = int(np.searchsorted(steps, keep_through_step, side="right"))
            with h5py.File(tmp, "w", libver="latest") as new:
                _copy_rows(old, new, keep, keep_through_step)
            os.replace(tmp, path)
        except OSError as error:
            # A damaged chunk in the kept rows, or a full disk while copying them.
            raise StoreError(
                f"{path} could not be copied to resume it ({_hdf5_reason(error)}); free disk space, or restore "
                "the store or choose another output path."
            ) from None
        finally:
            old.close()
            tmp.unlink(missing_ok=True)
        return cls._open_for_append(path, flush_every, background)

    @classmethod
    def open_for_append(
        cls, path: str | os.PathLike, *, flush_every: int = BLOCK_ROWS, background: bool = True
    ) -> StoreWriter:
        """Reopen an existing store (made by :meth:`create` or kept by :meth:`resume`) to append rows, in SWMR
        mode so readers can follow it.

        Args:
            path: the store.
            flush_every: flush to disk after this many steps.
            background: write on a worker thread.
        """
        return cls._open_for_append(Path(path), flush_every, background)

    @classmethod
    def _open_for_append(cls, path: Path, flush_every: int, background: bool) -> StoreWriter:
        # Opened for writing and SWMR at once: h5py's "r+" then `swmr_mode = True` leaves a moment in which
        # the file is open for plain writing, and a reader opening it then is refused ("already open").
        flags = h5py.h5f.ACC_RDWR | h5py.h5f.ACC_SWMR_WRITE
        file = h5py.File(h5py.h5f.open(os.fsencode(path), flags, fapl=latest_format_access()))
        return cls(file, path, flush_every=flush_every, background=background)

    # -- writing ---------------------------------------------------------------------------------

    def append(self, record: StepRecord) -> None:
        """Append one step (asynchronously when the writer runs in the background)."""
        self._submit(self._write_step, record)

    def append_scalar(self, name: str, global_step: int, value: float) -> None:
        """Append ``(global_step, value)`` to one of the store's scalar series (``val/loss`` ...)."""
        if f"scalars/{name}" not in self._columns:
            raise StoreError(f"unknown scalar {name!r}; the store keeps {', '.join(SCALAR_NAMES)}.")
        self._submit(self._write_scalar, name, global_step, value)

    def flush(self) -> None:
        """Block until everything submitted so far is on disk."""
        self._submit(self._flush_now)
        self._wait()

    def close(self, *, compact_if_needed: bool = True) -> None:
        """Write what is pending, flush and close the file. Safe to call twice.

        Args:
            compact_if_needed: rewrite the file without its dead chunk versions when they add up (see
                :attr:`dead_bytes`). The writer of a killed run passes False: a resumed run may already have
                replaced the store, and a compaction would put the old one back over it.
        """
        if self._closed:
            return
        try:
            if self._queue is not None:
                assert self._worker is not None, "the worker thread starts with its queue"
                self._queue.put(None)
                self._worker.join()
        finally:
            self._closed = True
            if self._file.id.valid:
                try:
                    if self._worker_error is None:
                        self._flush_now()
                finally:
                    self._file.close()
        self._raise_worker_error()
        # Judged by the dead bytes themselves, not by the file's size against its data: that gap also holds the
        # chunk indexes and headers, ~3% for a long store of small rows, which no copy removes.
        if compact_if_needed and self.dead_bytes > _DEAD_SHARE * self.path.stat().st_size + (1 << 20):
            try:
                compact(self.path)
            except StoreError as error:  # the store is whole, only larger than it need be
                log.warning("actrec: %s", error)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def append_columns(self, values: Mapping[str, Any], global_step: int, epoch: int, wall_time: float) -> None:
        """Append one step given as arrays by column key (``"layers/<name>/activations"``, ``"steps/logits"``,
        ``"steps/batch_loss"`` ...); synchronously, on the calling thread. Keys the store lacks (a version 1
        store has no ``nonfinite``) are skipped.

        The row is kept in memory (a copy) and written with the others of its block: once ``flush_every``
        rows wait, or ``flush_seconds`` after the last flush, the block is written and flushed together.
        """
        self._pending.append(({key: np.array(value) for key, value in values.items()}, global_step, epoch, wall_time))
        if len(self._pending) >= self.flush_every or time.monotonic() - self._last_flush >= self.flush_seconds:
            self._flush_now()

    def append_block(
        self,
        values: Mapping[str, Any],
        global_steps: Sequence[int],
        epochs: Sequence[int],
        wall_times: Sequence[float],
    ) -> None:
        """Append ``n`` steps at once: ``values`` maps column keys to arrays of ``n`` rows; nothing is flushed.

        Each dataset grows once per block; ``steps/global_step`` grows last, so a reader never counts a row
        that some dataset does not hold yet.
        """
        count = len(global_steps)
        if not count:
            return
        self._check_space(count)
        columns = self._columns
        if self._compressed and self.rows % self.chunk_rows:
            self.rewritten_chunks += 1  # the last block ended inside a chunk: HDF5 writes that chunk anew
            self.dead_bytes += sum(columns[key].open_chunk_bytes() for key in values if key in columns)
        for key, rows in values.items():
            column = columns.get(key)
            if column is not None:
                column.append_rows(rows)
        columns["steps/epoch"].append_rows(np.asarray(epochs, dtype=np.int64))
        columns["steps/wall_time"].append_rows(np.asarray(wall_times, dtype=np.float64))
        # Last: its length is what readers trust as the number of complete rows.
        columns["steps/global_step"].append_rows(np.asarray(global_steps, dtype=np.int64))
        self._unflushed += count

    def _write_pending(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        keys = pending[0][0].keys()
        self.append_block(
            {key: np.stack([row[key] for row, *_ in pending]) for key in keys},
            [step for _, step, _, _ in pending],
            [epoch for _, _, epoch, _ in pending],
            [wall for _, _, _, wall in pending],
        )

    def _check_space(self, rows: int = 1) -> None:
        # Refuse a row the disk cannot hold before HDF5 meets ENOSPC halfway through it: HDF5 does not
        # recover from a failed write (its file state is lost, and it may crash at exit).
        if not _DISK_GUARD:
            return
        try:
            stats = os.statvfs(self.path.parent)
        except OSError as error:
            raise StoreError(f"the folder of {self.path} is gone ({error.strerror}).") from None
        if self._row_bytes is None:
            self._row_bytes = sum(column.row_bytes for column in self._columns.values())
        free = stats.f_bavail * stats.f_frsize
        if free < (rows + 1) * self._row_bytes + _MIN_FREE_BYTES:
            raise StoreError(f"the disk holding {self.path} is full ({free // 1024} KiB free).")

    def _write_step(self, record: StepRecord) -> None:
        values: dict[str, Any] = {}
        for name, array in record.activations.items():
            values[f"layers/{name}/activations"] = array
            peak = record.peaks.get(name)
            nonfinite = record.nonfinite.get(name)
            if peak is None or nonfinite is None:
                with np.errstate(over="ignore", invalid="ignore"):
                    stored = np.asarray(array, dtype=self._columns[f"layers/{name}/activations"]._dtype)
                finite = np.isfinite(stored)
                nonfinite = int(stored.size - np.count_nonzero(finite))
                peak = float(np.abs(stored[finite]).max()) if nonfinite < stored.size else 0.0
            values[f"layers/{name}/abs_max"] = peak
            values[f"layers/{name}/nonfinite"] = nonfinite
            for param_name, value in record.params.get(name, {}).items():
                values[f"layers/{name}/params/{param_name}"] = value
        values["steps/logits"] = record.logits
        values["steps/batch_loss"] = record.batch_loss
        values["steps/batch_acc"] = record.batch_acc
        self.append_columns(values, record.global_step, record.epoch, record.wall_time)

    def _write_scalar(self, name: str, global_step: int, value: float) -> None:
        self._columns[f"scalars/{name}"].append((global_step, value))
        self._flush_now()

    def _flush_now(self) -> None:
        self._write_pending()
        self._file.flush()
        self._unflushed = 0
        self._last_flush = time.monotonic()

    # -- the worker ------------------------------------------------------------------------------

    def _submit(self, fn: Callable[..., None], *args: Any) -> None:
        if self._closed:
            raise StoreError(f"the store writer for {self.path} is closed.")
        self._raise_worker_error()
        if self._queue is None:
            fn(*args)
        else:
            self._queue.put((fn, args))

    def _wait(self) -> None:
        if self._queue is not None:
            self._queue.join()
        self._raise_worker_error()

    def _drain(self) -> None:
        work = self._queue
        assert work is not None, "the worker thread runs only with its queue"
        while True:
            item = work.get()
            try:
                if item is None:
                    return
                if self._worker_error is None:
                    fn, args = item
                    fn(*args)
            except BaseException as error:  # handed to the training thread by the next call
                self._worker_error = error
            finally:
                work.task_done()

    def _raise_worker_error(self) -> None:
        if self._worker_error is not None:
            error, self._worker_error = self._worker_error, None
            raise StoreError(f"writing {self.path} failed: {error}") from error


_DEAD_SHARE = 0.02
"""A writer compacts its store at close when the chunk versions it left dead pass this share of the file (and 1 MiB);
:func:`compact` itself rewrites a store larger than its data by this share (and 1 MiB). The copy is cheap (0.06 s
for the quickstart's 53 MB), so a little dead space is enough: the quickstart, whose rows come a little slower
than a chunk a second, left 12% (a 52.8 MB file for 47.2 MB of data) under the 10% this was."""


def compact(path: str | os.PathLike) -> bool:
    """Rewrite a closed store without the dead space rewritten chunks left, if there is enough of it.

    Under SWMR, HDF5 never reuses the space of a chunk it wrote anew (a reader may still be reading it), so
    blocks that end inside a compressed chunk, when rows come slower than a chunk a second, leave its earlier
    versions behind. The copy takes the chunks as they are (no recompression: a 50 MB store in well under a
    second), goes to a temporary name and replaces the store in one rename, so a crash leaves the original;
    a reader that has the store open keeps reading the old file. Returns whether it rewrote the file.

    Raises:
        StoreError: the copy could not be written (a full disk); the store is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".compacting")
    try:
        with h5py.File(path, "r", libver="latest", swmr=True) as source:
            data = 0

            def add(name: str, obj: h5py.HLObject) -> None:
                nonlocal data
                if isinstance(obj, h5py.Dataset):
                    data += obj.id.get_storage_size()

            source.visititems(add)
            if path.stat().st_size <= data * (1 + _DEAD_SHARE) + (1 << 20):
                return False
            with h5py.File(tmp, "w", libver="latest") as target:
                for key, value in source.attrs.items():
                    target.attrs[key] = value
                for name in source:
                    source.copy(source[name], target, name=name)
        os.replace(tmp, path)
    except OSError as error:
        raise StoreError(f"{path} could not be compacted ({_hdf5_reason(error)}); it is kept as it was.") from None
    finally:
        tmp.unlink(missing_ok=True)
    return True


def check_writable(path: str | os.PathLike) -> None:
    """Make sure a store can be written at ``path`` (creating its folder), without touching ``path``.

    Raises:
        StoreError: the folder cannot be created or written, or an existing file there is read-only.
    """
    path = Path(path)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StoreError(f"cannot create the folder {folder} for the activation store: {error.strerror}.") from None
    # Try it rather than ask os.access, which answers "yes" to root on read-only mounts.
    probe = folder / f".actrec-write-test-{os.getpid()}-{threading.get_ident()}"
    try:
        probe.touch()
        probe.unlink()
    except OSError:
        raise StoreError(f"cannot write the activation store into {folder}: permission denied.") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise StoreError(f"cannot write the activation store {path}: permission denied.")


def check_new_path(path: str | os.PathLike, overwrite: bool) -> None:
    """Make sure a new store may be created at ``path``: nothing there, or a file ``overwrite`` may replace.

    Raises:
        StoreError: a folder is there, or a file and ``overwrite`` is False, or the folder is not writable.
    """
    path = Path(path)
    if path.is_dir():
        raise StoreError(f"{path} is a folder; name a file for the activation store, e.g. {path / 'activations.h5'}.")
    if path.exists() and not overwrite:
        raise StoreError(f"{path} already exists; resume its run, or pass overwrite to replace it.")
    check_writable(path)


def _check_same_layers(file: h5py.File, path: Path, layers: Sequence[LayerSpec]) -> None:
    """Refuse, in one sentence naming every difference, to resume a store with a different layer set.

    Appending rows of other layers would silently lose data: a new layer is never written, a dropped
    one stops the row count, and a changed shape cannot be appended at all.
    """
    stored = file["layers"]
    wanted = {spec.name: spec for spec in layers}
    differences = [f"layer {name!r} is new" for name in wanted if name not in stored]
    differences += [f"layer {name!r} is no longer recorded" for name in stored if name not in wanted]
    for name, spec in wanted.items():
        if name not in stored:
            continue
        attrs = stored[name].attrs
        old_shape = tuple(int(n) for n in attrs.get("sample_shape", ()))
        if old_shape != tuple(spec.sample_shape):
            differences.append(f"layer {name!r} has sample shape {tuple(spec.sample_shape)}, not {old_shape}")
        old_channels = attrs.get("channels")
        old_channels = tuple(int(c) for c in old_channels) if old_channels is not None else None
        new_channels = tuple(int(c) for c in spec.channels) if spec.channels is not None else None
        if old_channels != new_channels:
            differences.append(f"layer {name!r} keeps other channels")
    if differences:
        raise StoreError(
            f"{path} was recorded with other layers than this run's ({'; '.join(differences)}); "
            "record with the store's layer settings, or choose another output path."
        )


def _write_layout(
    file: h5py.File,
    run_id: str,
    config: Mapping[str, Any],
    probes: ProbeSet,
    layers: Sequence[LayerSpec],
    num_classes: int,
    dtype: str,
    compression: str,
    rows_per_chunk: int | None = None,
) -> None:
    num_probes = len(probes.labels)
    file.attrs["format"] = FORMAT_NAME
    file.attrs["format_version"] = FORMAT_VERSION
    file.attrs["run_id"] = run_id
    file.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    file.attrs["config"] = json.dumps(config, default=str, sort_keys=True)
    file.attrs["num_probes"] = num_probes
    file.attrs["num_classes"] = num_classes
    file.attrs["class_names"] = json.dumps(list(probes.class_names))

    group = file.create_group("probes")
    # Checksummed like every row (a chunked layout; an empty array cannot be chunked): damage to a probe
    # image is then refused by the reader instead of being drawn as data.
    for name, values in (
        ("images", np.asarray(probes.images, dtype=np.float32)),
        ("labels", np.asarray(probes.labels, dtype=np.int64)),
        ("indices", np.asarray(probes.indices, dtype=np.int64)),
    ):
        group.create_dataset(name, data=values, fletcher32=values.size > 0)

    steps = file.create_group("steps")
    _growable(steps, "global_step", (), "int64", chunks=(1024,))
    for name, column_dtype in STEP_FIELDS.items():
        _growable(steps, name, (), column_dtype, chunks=(1024,))
    _growable(steps, "logits", (num_probes, num_classes), "float32", chunks=(64, num_probes, num_classes))

    scalars = file.create_group("scalars")
    for name in SCALAR_NAMES:
        _growable(scalars, name, (2,), "float64", chunks=(256, 2))

    all_layers = file.create_group("layers")
    for order, spec in enumerate(layers):
        if "/" in spec.name:
            raise StoreError(f"layer name {spec.name!r} may not contain '/'.")
        layer = all_layers.create_group(spec.name)
        layer.attrs["order"] = order  # HDF5 lists names alphabetically; readers restore model order
        layer.attrs["module_type"] = spec.module_type
        layer.attrs["scale_kind"] = spec.scale_kind
        layer.attrs["scale"] = FIXED_SCALES.get(spec.scale_kind, 0.0)
        layer.attrs["sample_shape"] = np.asarray(spec.sample_shape, dtype=np.int64)
        layer.attrs["kind"] = spec.kind or kind_of(tuple(spec.sample_shape))
        layer.attrs["output"] = spec.output
        layer.attrs["full_shape"] = np.asarray(spec.full_shape or spec.sample_shape, dtype=np.int64)
        if spec.channels is not None:
            layer.attrs["channels"] = np.asarray(spec.channels, dtype=np.int64)
        row = (num_probes, *spec.sample_shape)
        # Chunks of several steps (chunk_rows): HDF5's cost is per chunk, and gzip finds the same pixels at
        # neighbouring steps. A damaged chunk costs its rows (at most 8), which readers report and read around.
        # gzip at level 1: nearly all of gzip's saving on activations for a fraction of its time. HDF5's
        # byte shuffle first (any HDF5 reader undoes it): float16 activations' sign-and-exponent bytes repeat
        # far more than their mantissa bytes, so shuffled they compress to 0.84 of raw with lzf instead of
        # 0.96, and to 0.75 with gzip-1 instead of 0.82, at no extra time (measured on a six-conv run's rows).
        # Recorded weights take the same filters: shuffled float32 kernels of 8 steps gzip to 0.78 of raw.
        presets: dict[str, dict[str, Any]] = {
            "none": {},
            "lzf": {"compression": "lzf", "shuffle": True},
            "gzip": {"compression": "gzip", "compression_opts": 1, "shuffle": True},
        }
        options = presets[compression]
        row_bytes = math.prod(row) * np.dtype(dtype).itemsize
        rows = rows_per_chunk or chunk_rows(row_bytes)
        _growable(layer, "activations", row, dtype, chunks=(rows, *row), **options)
        _growable(layer, "abs_max", (), "float32", chunks=(1024,))
        _growable(layer, "nonfinite", (), "int64", chunks=(1024,))
        params = layer.create_group("params")
        for param_name, shape in spec.params.items():
            param_rows = rows_per_chunk or chunk_rows(math.prod(shape) * 4)
            _growable(params, param_name, tuple(shape), "float32", chunks=(param_rows, *shape), **options)


def _copy_rows(source: h5py.File, target: h5py.File, keep: int, keep_through_step: int) -> None:
    """Copy a store's layout, the first ``keep`` step rows, and the scalars up to ``keep_through_step``."""
    for key, value in source.attrs.items():
        target.attrs[key] = value

    def copy(name: str, obj: h5py.HLObject) -> None:
        if isinstance(obj, h5py.Group):
            group = target.require_group(name)
            for key, value in obj.attrs.items():
                group.attrs[key] = value
            return
        growable = obj.maxshape and obj.maxshape[0] is None
        if not growable:
            target.create_dataset(name, data=obj[()], fletcher32=obj.fletcher32)
            return
        scalars = obj[()] if name.startswith("scalars/") else None  # (N, 2): small
        if scalars is not None:
            scalars = scalars[scalars[:, 0] <= keep_through_step]
        rows = len(scalars) if scalars is not None else keep
        dataset = target.create_dataset(
            name,
            shape=(rows, *obj.shape[1:]),
            maxshape=obj.maxshape,
            chunks=obj.chunks,
            compression=obj.compression,
            compression_opts=obj.compression_opts,
            shuffle=obj.shuffle,
            fletcher32=obj.fletcher32,
            dtype=obj.dtype,
        )
        if scalars is not None:
            dataset[...] = scalars
        else:
            # In blocks: an activation dataset can be far larger than memory.
            for start in range(0, rows, _COPY_BLOCK_ROWS):
                stop = min(start + _COPY_BLOCK_ROWS, rows)
                dataset[start:stop] = obj[start:stop]
        for key, value in obj.attrs.items():
            dataset.attrs[key] = value

    source.visititems(copy)
