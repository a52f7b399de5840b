"""The machinery shared by ``actrec render`` and ``actrec tensorboard``: plan, frames, workers.

Everything the user can get wrong (store, layers, steps, output folder) is checked by :func:`make_plan`
before anything is written. Per-layer work is a plain-data :class:`LayerJob`, run in this process or
in ``spawn``-ed worker processes (one layer at a time each: GIF encoding holds the GIL, so threads
would not help), each worker opening the store itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from actrec.store import StoreError, StoreReader
from actrec.viewer import writers
from actrec.viewer._steps import row_epochs
from actrec.viewer.errors import ViewerError
from actrec.viewer.frames import (
    DEFAULT_MAX_CHANNELS,
    KIND_MAPS,
    MAX_FRAME_WIDTH,
    FrameLayout,
    fit_tile_size,
    frame_height_width,
    frame_title,
    layer_kind,
    predicted_classes,
)
from actrec.viewer.scale import ColourScale, colour_scale, sample_rows

_DAMAGE = (StoreError, OSError)
"""What reading a damaged row raises: the reader's DamagedDataError (a StoreError) for a failed checksum,
h5py's OSError for a chunk its filter cannot decode (e.g. damaged lzf data in a store without checksums)."""
TB_TAG = "activations"
TB_OVERVIEW_TAG = "overview"
_ROWS_PER_READ = 64  # bounded memory on long runs; one chunk is one HDF5 read per layer
_REPORT_EVERY = 16  # frames per progress message from a worker
_WORKERS_FROM_FRAMES = 300  # below this many frames, starting workers (~0.5 s each) does not pay
MAX_TILE_SIZE = 512
"""Largest ``--tile-size``: a 28x28 map drawn 18x; beyond that frames only grow."""
MAX_FRAME_PIXELS = 40_000_000
"""Largest frame (or contact sheet) in pixels: 40 MB of palette indices, 120 MB as RGB."""
LARGE_RENDER_BYTES = 100_000_000
"""Estimated output size above which a render warns before it starts."""
_BYTES_PER_PIXEL = 0.1  # GIF frame deltas: measured ~10 frame pixels per byte on real runs
_SCALE_SAMPLE_ELEMENTS = 8_000_000  # activations read to fix a layer's colour scale and channel choice


def select_rows(
    global_steps: np.ndarray, *, start: int | None = None, stop: int | None = None, stride: int = 1
) -> np.ndarray:
    """Rows whose training step lies in ``[start, stop)``, keeping every ``stride``-th of them.

    Args:
        global_steps: ``(N,)`` training step of every recorded row.
        start: first training step to keep (``None``: from the first row).
        stop: training step to stop before (``None``: through the last row).
        stride: keep every ``stride``-th recorded row of the range.

    Raises:
        ViewerError: ``stride`` is not positive.
    """
    if stride < 1:
        raise ViewerError(f"stride must be a positive integer, got {stride}.")
    keep = np.ones(len(global_steps), dtype=bool)
    if start is not None:
        keep &= global_steps >= start
    if stop is not None:
        keep &= global_steps < stop
    return np.flatnonzero(keep)[::stride]


def nearest_rows(global_steps: np.ndarray, wanted: Sequence[float]) -> np.ndarray:
    """For each wanted training step, the index of the recorded row nearest to it."""
    wanted_array = np.asarray(wanted, dtype=np.float64)
    return np.abs(global_steps[None, :].astype(np.float64) - wanted_array[:, None]).argmin(axis=1)


@dataclass(frozen=True)
class ChannelChoice:
    """Which channels (maps) or units (tokens, vectors) to draw: ``indices``, or the ``top`` most varying, or all."""

    indices: tuple[int, ...] | None = None
    top: int | None = None
    everything: bool = False


def parse_channels(text: str | None) -> ChannelChoice:
    """Parse ``--channels``: ``"0,3,7"``, ``"top:K"`` (the K that vary most over training) or ``"all"``.

    Raises:
        ViewerError: the text is none of these.
    """
    if text is None:
        return ChannelChoice()
    text = text.strip()
    if text == "all":
        return ChannelChoice(everything=True)
    match = re.fullmatch(r"top:(\d+)", text)
    if match:
        if int(match[1]) < 1:
            raise ViewerError(f"--channels top:K needs K of at least 1, got {text!r}.")
        return ChannelChoice(top=int(match[1]))
    try:
        indices = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        indices = ()
    if not indices or min(indices) < 0:
        raise ViewerError(f"--channels takes indices ('0,3,7'), 'top:K' or 'all', got {text!r}.")
    return ChannelChoice(indices=tuple(dict.fromkeys(indices)))


@dataclass(frozen=True)
class LayerPlan:
    """How one layer is drawn, fixed before any frame is: plain data, so it can go to a worker process.

    Args:
        name: the layer.
        kind: ``"maps"``, ``"tokens"`` or ``"vector"``.
        select: positions along the channel (maps) or unit (tokens, vectors) axis of the stored
            activations to draw, or ``None`` for all.
        labels: the index of each drawn channel in the full layer (what the row labels say).
        scale: the colour scale for every frame.
        tile_size: the tile size, shrunk from the requested one if needed to fit the frame width.
        nonfinite_steps: recorded steps holding NaN or infinite values (of the whole store).
    """

    name: str
    kind: str
    select: tuple[int, ...] | None
    labels: tuple[int, ...]
    scale: ColourScale
    tile_size: int
    nonfinite_steps: int

    drawn_shape: tuple[int, ...]
    text_scale: float = 1.0

    @property
    def axis(self) -> int:
        """The channel (maps) or unit axis of an array ending in the per-probe shape."""
        return -3 if self.kind == KIND_MAPS else -1

    def selected(self, activations: np.ndarray) -> np.ndarray:
        """The drawn channels of an array ending in the layer's per-probe shape (a new array if any are left out)."""
        if self.select is None:
            return activations
        return np.take(activations, self.select, axis=-3 if self.kind == KIND_MAPS else -1)


def read_rows(store: StoreReader, layer: str, rows: np.ndarray) -> tuple[np.ndarray | None, list[int]]:
    """Read ``rows`` of a layer; rows that fail their integrity check are left out and returned apart.

    Returns:
        ``(activations of the good rows or None, bad rows)``.
    """
    try:
        return store.activations(layer, rows), []
    except _DAMAGE:
        good, bad = [], []
        for row in rows.tolist():
            try:
                good.append(store.activations(layer, np.asarray([row]))[0])
            except _DAMAGE:
                bad.append(row)
        return (np.stack(good) if good else None), bad


def scale_samples(store: StoreReader, name: str, num_rows: int, num_probes: int) -> np.ndarray:
    """Evenly spaced rows of a layer, bounded in size, that fix its colour scale and channel choice.

    Rows that fail their integrity check are left out (rendering names them); no good row gives an
    empty ``(0, P, *sample_shape)`` array.
    """
    shape = tuple(store.layer(name).sample_shape)
    per_row = num_probes * int(np.prod(shape))
    rows = sample_rows(num_rows, max(2, min(32, _SCALE_SAMPLE_ELEMENTS // max(per_row, 1))))
    samples, _ = read_rows(store, name, rows)
    return np.zeros((0, num_probes, *shape), np.float32) if samples is None else samples


def layer_colour_scale(
    store: StoreReader,
    name: str,
    num_rows: int,
    select: Sequence[int] | None = None,
    *,
    samples: np.ndarray | None = None,
) -> ColourScale:
    """A layer's colour scale for a whole run: the one rule render, report and compare draw with.

    :func:`~actrec.viewer.scale.colour_scale` of the layer's scale kind over :func:`scale_samples`,
    counting only the drawn channels (units), so hidden channels do not wash out the drawn ones.

    Args:
        store: the open store.
        name: the layer.
        num_rows: rows of the store to sample from.
        select: positions along the channel (maps) or unit axis that are drawn; ``None`` for all.
        samples: :func:`scale_samples` already read for this layer (saves reading them twice).
    """
    info = store.layer(name)
    if samples is None:
        num_probes = len(store.probes.labels)
        samples = scale_samples(store, name, num_rows, num_probes)
    if select is not None:
        axis = -3 if layer_kind(info) == KIND_MAPS else -1
        samples = np.take(samples, list(select), axis=axis)
    return colour_scale(info.scale_kind, samples if samples.size else np.zeros(1))


def _channel_variance(samples: np.ndarray, kind: str) -> np.ndarray:
    """Variance of each channel (unit) over sampled rows, probes and positions, from finite values."""
    axis = samples.ndim - 3 if kind == KIND_MAPS else samples.ndim - 1
    moved = np.moveaxis(np.asarray(samples, dtype=np.float64), axis, 0).reshape(samples.shape[axis], -1)
    moved = np.where(np.isfinite(moved), moved, np.nan)
    with np.errstate(all="ignore"):
        variance = np.nanvar(moved, axis=1)
    return np.nan_to_num(variance, nan=-1.0)


def plan_layer(
    store: StoreReader,
    name: str,
    num_rows: int,
    choice: ChannelChoice,
    tile_size: int,
    num_probes: int,
    max_frame_width: int = MAX_FRAME_WIDTH,
    text_scale: float = 1.0,
) -> tuple[LayerPlan, list[str]]:
    """Decide how one layer is drawn: kind, channels, colour scale and tile size; plus notes for the user.

    Raises:
        ViewerError: the layer's shape cannot be drawn, or ``--channels`` names a channel it lacks.
    """
    info = store.layer(name)
    try:
        kind = layer_kind(info)
    except ValueError as error:
        raise ViewerError(str(error)) from None
    shape = tuple(info.sample_shape)
    width = shape[0] if kind == KIND_MAPS else shape[-1]
    stored_labels = getattr(info, "channels", None)
    full_labels = tuple(int(c) for c in stored_labels) if stored_labels is not None else tuple(range(width))
    notes: list[str] = []
    samples = scale_samples(store, name, num_rows, num_probes)
    noun = "channels" if kind == KIND_MAPS else "units"
    select: tuple[int, ...] | None = None
    if choice.indices is not None:
        position = {label: i for i, label in enumerate(full_labels)}
        missing = [index for index in choice.indices if index not in position]
        if missing:
            raise ViewerError(
                f"layer {name!r} has no {noun[:-1]} {missing[0]}; it records {width} {noun}"
                + (f" ({', '.join(map(str, full_labels[:8]))}, ...)." if stored_labels is not None else ".")
            )
        select = tuple(position[index] for index in choice.indices)
    elif not choice.everything and (choice.top is not None or width > DEFAULT_MAX_CHANNELS):
        keep = min(width, choice.top or DEFAULT_MAX_CHANNELS)
        if keep < width:
            variance = _channel_variance(samples, kind) if samples.size else np.zeros(width)
            select = tuple(sorted(np.argsort(-variance, kind="stable")[:keep].tolist()))
            if choice.top is None:
                notes.append(
                    f"{name}: drawing {keep} of its {width} {noun}, the {keep} that vary most over training; "
                    f"--channels picks others (a list, top:K or all)."
                )
    labels = full_labels if select is None else tuple(full_labels[i] for i in select)
    scale = layer_colour_scale(store, name, num_rows, select, samples=samples)
    if scale.note:
        notes.append(f"{name}: {scale.note}")
    drawn_shape = (len(labels), *shape[1:]) if kind == KIND_MAPS else (*shape[:-1], len(labels))
    fitted = fit_tile_size(kind, drawn_shape, num_probes, tile_size, max_frame_width, text_scale)
    height, frame_width = frame_height_width(kind, drawn_shape, num_probes, fitted, text_scale)
    if frame_width > max(max_frame_width, MAX_FRAME_WIDTH):
        if kind == KIND_MAPS:  # channels are rows: the width is the probes side by side
            cause = f"from its {num_probes} probes side by side; a smaller --tile-size makes them narrower."
        else:
            cause = f"({num_probes} probes x {len(labels)} units); fewer --channels or a smaller --tile-size help."
        notes.append(f"{name}: frames are {frame_width} pixels wide, {cause}")
    if height * frame_width > MAX_FRAME_PIXELS:
        raise ViewerError(
            f"a frame of {name} would be {frame_width} x {height} pixels, over the {MAX_FRAME_PIXELS:,} pixel "
            "limit; choose fewer --channels or a smaller --tile-size."
        )
    nonfinite_steps = _nonfinite_steps(store, name, num_rows)
    if nonfinite_steps:
        notes.append(
            f"{name}: {nonfinite_steps} of {num_rows} recorded steps hold NaN or infinite values, drawn amber "
            '("NaN/inf" in the legend); colour scales come from the finite values.'
        )
    plan = LayerPlan(name, kind, select, labels, scale, fitted, nonfinite_steps, drawn_shape, text_scale)
    return plan, notes


def _nonfinite_steps(store: StoreReader, name: str, num_rows: int) -> int:
    """Rows of a layer holding NaN or infinities: the stored counts (v2), else a non-finite row maximum (v1)."""
    try:
        counts = getattr(store, "nonfinite", None)
        if counts is not None:
            stored = np.asarray(counts(name, slice(0, num_rows)))
            if stored.size and stored.any():
                return int((stored > 0).sum())
        peaks = np.asarray(store.abs_max(name, slice(0, num_rows)), dtype=np.float64)
    except (StoreError, KeyError):
        return 0
    return int((~np.isfinite(peaks)).sum())


def check_layers(store: StoreReader, layers: Sequence[str] | None) -> list[str]:
    """The layers to render: all recorded ones for ``None``, else ``layers`` after checking each exists.

    Raises:
        ViewerError: a requested layer is not in the store (the message lists the available ones).
    """
    available = store.layer_names
    if not layers:
        return available
    unknown = [name for name in layers if name not in available]
    if unknown:
        raise ViewerError(f"unknown layer {', '.join(map(repr, unknown))}; this store records: {', '.join(available)}.")
    return list(dict.fromkeys(layers))


def prepare_out_dir(out_dir: Path) -> Path:
    """Create ``out_dir`` if needed and prove it is writable.

    Raises:
        ViewerError: it cannot be created or written to.
    """
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as error:
        reason = (error.strerror or str(error)).lower()
        raise ViewerError(f"cannot write to the output folder {out_dir}: {reason}.") from None
    remove_leftovers(out_dir)  # what a killed render left behind
    return out_dir


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; move it over ``final`` only if the block succeeds."""
    partial = final.with_name(f".{final.stem}.partial-{os.getpid()}{final.suffix}")
    _open_partials.add(partial)
    try:
        yield partial
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
        _open_partials.discard(partial)


_open_partials: set[Path] = set()  # this process's unfinished files, removed if it is told to stop


_LEFTOVER = re.compile(r"^\..+\.(?:partial|old)-(\d+)(?:\.[A-Za-z0-9]+)?$")


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def remove_leftovers(folder: Path) -> list[Path]:
    """Delete the temporary files and folders a killed render or export left in ``folder``.

    They are named ``.<name>.partial-<pid>[.<ext>]`` or ``.<name>.old-<pid>``; only those whose
    process is gone are removed, so a render running beside this one keeps its files.

    Returns:
        What was removed.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _LEFTOVER.match(entry.name)
        if match is None or _process_alive(int(match[1])):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def safe_filename(layer: str) -> str:
    """A file-name stem for a layer (module names are already safe; anything else becomes ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", layer)


def unique_stems(layers: Sequence[str]) -> dict[str, str]:
    """A file-name stem per layer, distinct even where two names map to one safe name (``a b``, ``a_b``).

    Layers whose safe names collide get a short hash of their real name appended, so neither file
    overwrites the other and the same layer gets the same file name in every render.
    """
    stems = {name: safe_filename(name) for name in layers}
    counts: dict[str, int] = {}
    for stem in stems.values():
        counts[stem.lower()] = counts.get(stem.lower(), 0) + 1  # case-insensitive file systems too
    for name, stem in stems.items():
        if counts[stem.lower()] > 1:
            stems[name] = f"{stem}-{hashlib.sha1(name.encode()).hexdigest()[:6]}"
    return stems


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def progress_bar(total: int, enabled: bool | None, description: str) -> Any:
    from tqdm.auto import tqdm

    # enabled=None lets tqdm decide: a bar on a terminal, silence when output is piped or captured.
    return tqdm(
        total=total,
        unit="frame",
        desc=description,
        disable=None if enabled is None else not enabled,
        leave=False,
        dynamic_ncols=True,
    )


@dataclass(frozen=True)
class Plan:
    """What a render or export will do, decided (and validated) before anything is written."""

    num_rows: int
    global_steps: np.ndarray
    rows: np.ndarray
    layers: list[str]
    jobs: int
    layer_plans: dict[str, LayerPlan]
    notes: list[str]


def make_plan(
    store: StoreReader,
    layers: Sequence[str] | None,
    start: int | None,
    stop: int | None,
    stride: int,
    tile_size: int,
    jobs: int | None,
    channels: str | None = None,
    frames_per_layer: int = 1,
    max_frame_width: int = MAX_FRAME_WIDTH,
    text_scale: float = 1.0,
) -> Plan:
    """Check everything a render or export depends on, and fix the rows, channels and colours to draw.

    Args:
        frames_per_layer: images written per layer and row (for the size estimate).
        max_frame_width: shrink tiles (down to a minimum) for frames to fit this many pixels across.
        text_scale: multiplies every font size of the frames.

    Raises:
        ViewerError: an option is out of range, the store has no steps, a layer is unknown or cannot
            be drawn, a frame would be too large, or no recorded step lies in ``[start, stop)``.
    """
    if not 4 <= tile_size <= MAX_TILE_SIZE:
        raise ViewerError(f"tile_size must be between 4 and {MAX_TILE_SIZE} pixels, got {tile_size}.")
    choice = parse_channels(channels)
    if jobs is not None and jobs < 1:
        raise ViewerError(f"jobs must be a positive integer, got {jobs}.")
    num_rows = store.refresh()  # fixed here: rows flushed later belong to the next render
    if num_rows == 0:
        raise ViewerError(f"{store.path} has no recorded steps yet, so there is nothing to draw.")
    names = check_layers(store, layers)
    global_steps = store.global_steps()[:num_rows]
    rows = select_rows(global_steps, start=start, stop=stop, stride=stride)
    if rows.size == 0:
        raise ViewerError(
            f"no recorded step lies in the chosen range; the store holds steps "
            f"{int(global_steps[0])} to {int(global_steps[-1])}."
        )
    if jobs is None:
        jobs = 1 if rows.size * len(names) < _WORKERS_FROM_FRAMES else min(len(names), available_cpus())
    try:
        num_probes = len(store.probes.labels)
    except (KeyError, OSError):
        raise ViewerError(f"{store.path} has no readable probes, so its frames cannot be labelled.") from None
    layer_plans: dict[str, LayerPlan] = {}
    notes: list[str] = []
    pixels = 0
    for name in names:
        layer_plans[name], layer_notes = plan_layer(
            store, name, num_rows, choice, tile_size, num_probes, max_frame_width, text_scale
        )
        notes.extend(layer_notes)
        height, width = frame_height_width(
            layer_plans[name].kind, layer_plans[name].drawn_shape, num_probes, layer_plans[name].tile_size
        )
        pixels += height * width * len(rows) * frames_per_layer
    estimate = pixels * _BYTES_PER_PIXEL
    if estimate > LARGE_RENDER_BYTES:
        notes.insert(
            0,
            f"this will write roughly {estimate / 1e6:,.0f} MB ({len(names)} layer(s) x {len(rows)} step(s)); "
            "--stride, --steps, --layers or fewer --channels make it smaller.",
        )
    return Plan(num_rows, global_steps, rows, names, min(jobs, len(names)), layer_plans, notes)


@dataclass(frozen=True)
class LayerJob:
    """One layer's share of a render or export; plain data, so it can go to a worker process."""

    store_path: Path
    layer: str
    num_rows: int
    rows: np.ndarray
    plan: LayerPlan
    kind: str  # "render" or "tensorboard"
    out_dir: Path
    video_format: str = "gif"
    fps: float = 10.0
    sheet_rows: np.ndarray | None = None
    stem: str = ""  # the output file name stem; unique among the layers of one render
    channels_per_image: int = 0  # TensorBoard: channels per image (0: all in one)


_worker_progress: Any = None  # a worker process's queue for progress counts
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_WATCHDOG_INTERVAL_S = 0.5


def _init_worker(queue: Any, parent_pid: int) -> None:
    """Set up a worker: progress queue, and dying with the parent however the parent ends.

    A parent killed with SIGKILL cannot stop its workers, so each worker watches for itself: on
    Linux the kernel sends it SIGTERM when the parent dies (``PR_SET_PDEATHSIG``); everywhere a
    thread checks twice a second whether its parent is still the one that started it. Either way
    the worker deletes its unfinished files and exits.
    """
    global _worker_progress
    _worker_progress = queue
    signal.signal(signal.SIGTERM, _stop_worker)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent_pid:  # died before the line above took effect
        _stop_worker()

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(_WATCHDOG_INTERVAL_S)
        _stop_worker()

    threading.Thread(target=watch, name="actrec-parent-watchdog", daemon=True).start()


def _stop_worker(*_: object) -> None:
    """Remove this worker's unfinished files and exit at once (from a signal handler or the watchdog)."""
    for partial in list(_open_partials):
        with contextlib.suppress(OSError):
            partial.unlink()
    os._exit(128 + int(signal.SIGTERM))


JobResult = tuple[list[Path], list[str]]
"""What one layer job wrote, and its notes for the user (damaged steps)."""


def run_jobs(
    job_list: Sequence[LayerJob], jobs: int, progress: bool | None, description: str, store: StoreReader
) -> list[JobResult]:
    """Run layer jobs in this process (reading ``store``) or in ``jobs`` worker processes; results in job order."""
    total = sum(len(job.rows) for job in job_list)
    with progress_bar(total, progress, description) as bar:
        if jobs <= 1:
            return [_run_job(job, bar.update, store) for job in job_list]
        import multiprocessing
        import queue as queue_module
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        # spawn, not fork: forking a process that holds an open HDF5 file is unsafe.
        context = multiprocessing.get_context("spawn")
        counts = context.Queue()
        with ProcessPoolExecutor(
            jobs, mp_context=context, initializer=_init_worker, initargs=(counts, os.getpid())
        ) as pool:
            # Biggest layers first, so the last one to finish is a small one.
            size = {job.layer: int(np.prod(job.plan.drawn_shape)) for job in job_list}
            order = sorted(range(len(job_list)), key=lambda i: -size[job_list[i].layer])
            futures = {pool.submit(_run_in_worker, job_list[i]): i for i in order}
            pending = set(futures)
            try:
                while pending:
                    done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                    for future in done:
                        future.result()  # a worker's error surfaces here, as if raised in this process
                    with contextlib.suppress(queue_module.Empty):
                        while True:
                            bar.update(counts.get_nowait())
            except BaseException:
                # Ctrl-C reaches the workers too, SIGTERM (turned into KeyboardInterrupt by the
                # command) only this process: stop them now rather than wait for their current layer.
                for process in list(getattr(pool, "_processes", {}).values()):
                    process.terminate()
                pool.shutdown(wait=True, cancel_futures=True)  # layers not yet started never start
                raise
            results: list[JobResult] = [([], []) for _ in job_list]
            for future, index in futures.items():
                results[index] = future.result()
            return results


def _run_in_worker(job: LayerJob) -> JobResult:
    pending = 0

    def report(frames: int) -> None:
        # Batched: one queue message per frame would cost more than the progress bar is worth.
        nonlocal pending
        pending += frames
        if pending >= _REPORT_EVERY:
            _worker_progress.put(pending)
            pending = 0

    try:
        with StoreReader(job.store_path) as store:
            store.refresh()
            return _run_job(job, report, store)
    finally:
        if pending:
            _worker_progress.put(pending)


def _run_job(job: LayerJob, report: Callable[[int], Any], store: StoreReader) -> JobResult:
    # The caller's reader, never a second one on the same file: HDF5 shares one open file per
    # process, and two readers refreshing their own handles of a dataset corrupt its chunk index.
    context = RunContext.read(store, job.num_rows)
    layout = context.layout(job.plan, job.rows, job.plan.text_scale)
    damaged: list[int] = []
    if job.kind == "tensorboard":
        paths = [_export_layer(store, job, layout, context, report, damaged)]
        return paths, _damage_notes(job.layer, context, damaged)
    stem = job.stem or safe_filename(job.layer)
    animation = job.out_dir / f"{stem}.{job.video_format}"
    with atomic_path(animation) as partial:
        writer_class = writers.GifWriter if job.video_format == "gif" else writers.Mp4Writer
        with writer_class(partial, fps=job.fps) as writer:
            for _, frame in layer_frames(store, job.plan, layout, context, job.rows, damaged):
                writer.append(frame)
                report(1)
            if writer.frames_written == 0:
                raise ViewerError(f"every chosen step of layer {job.layer!r} is damaged; nothing to draw.")
    sheet = job.out_dir / f"{stem}.sheet.png"
    sheet_rows = np.asarray([row for row in job.sheet_rows.tolist() if row not in set(damaged)], dtype=np.int64)
    if sheet_rows.size:
        with atomic_path(sheet) as partial:
            writers.write_png(sheet_frame(store, job.plan, layout, context, sheet_rows), partial)
    return [animation, sheet], _damage_notes(job.layer, context, damaged)


def _damage_notes(layer: str, context: RunContext, damaged: list[int]) -> list[str]:
    return [
        f"step {int(context.global_steps[row])} of layer {layer} is damaged (it failed its integrity check) "
        "and was left out."
        for row in damaged
    ]


def _export_layer(
    store: StoreReader,
    job: LayerJob,
    layout: FrameLayout,
    context: RunContext,
    report: Callable[[int], Any],
    damaged: list[int],
) -> Path:
    """Write one layer's frames as image summaries into their own event file in ``job.out_dir``.

    TensorBoard reads every event file of a folder as one run, so one file per layer (and per
    worker process) needs no coordination.
    """
    groups = card_groups(job.plan, job.channels_per_image)
    layouts = [layout if len(groups) == 1 else context.layout(plan, job.rows, plan.text_scale) for plan, _ in groups]

    def add_frames(writer: writers.TensorBoardImageWriter, rows: np.ndarray, prefix: str, bad: list[int] | None) -> int:
        written = 0
        for row, values in layer_rows(store, job.plan, rows, bad):
            title, step = context.title(job.layer, row), int(context.global_steps[row])
            for (plan, suffix), group_layout in zip(groups, layouts, strict=True):
                frame = group_layout.frame(
                    values if plan is job.plan else np.take(values, plan.select, axis=plan.axis),
                    title=title,
                    predictions=context.predictions[row],
                )
                tag = f"{prefix}/{job.layer}{suffix}"
                writer.add_image(tag, frame, step, wall_time=float(context.wall_times[row]))
            written += 1
            if bad is not None:  # the overview's frames are extra; progress counts steps
                report(1)
        return written

    with writers.TensorBoardImageWriter(
        job.out_dir, filename_suffix=f".{job.stem or safe_filename(job.layer)}", staged=True
    ) as writer:
        add_frames(writer, job.rows, TB_TAG, damaged)
        # At most 10 steps under a second tag: TensorBoard's default keeps 10 images per tag, so a
        # plain `tensorboard --logdir runs` shows all of these, step 0 included.
        overview = np.asarray([row for row in job.sheet_rows.tolist() if row not in set(damaged)], dtype=np.int64)
        if overview.size:
            add_frames(writer, overview, TB_OVERVIEW_TAG, None)
    return job.out_dir


def card_groups(plan: LayerPlan, per_image: int) -> list[tuple[LayerPlan, str]]:
    """Split a maps layer's drawn channels into images of ``per_image`` channels, each with a tag suffix.

    Each group's plan selects from the drawn channels (its ``select`` indexes them, on ``axis``).
    One group (the plan itself, no suffix) when ``per_image`` is 0 or the layer is narrow enough.
    """
    count = len(plan.labels)
    if plan.kind != KIND_MAPS or per_image <= 0 or count <= per_image:
        return [(plan, "")]
    groups = []
    for start in range(0, count, per_image):
        positions = tuple(range(start, min(count, start + per_image)))
        labels = tuple(plan.labels[i] for i in positions)
        contiguous = labels == tuple(range(labels[0], labels[0] + len(labels)))
        name = f"{labels[0]}-{labels[-1]}" if contiguous else ",".join(map(str, labels))
        group = dataclasses.replace(
            plan, select=positions, labels=labels, drawn_shape=(len(positions), *plan.drawn_shape[1:])
        )
        groups.append((group, f"/ch {name}"))
    return groups


def read_steps(store: StoreReader, num_rows: int) -> dict[str, np.ndarray]:
    """The per-row columns of the first ``num_rows`` rows, with each row's epoch as :mod:`._steps` decides it."""
    steps = {key: value[:num_rows] for key, value in store.steps().items()}
    try:
        validation_steps = store.scalars("val/loss")[0]
    except StoreError:
        validation_steps = np.zeros(0, np.int64)
    try:
        trainer = store.config.get("trainer", {})
        max_epochs = int(trainer["max_epochs"]) if isinstance(trainer, dict) and trainer.get("max_epochs") else None
    except (ValueError, TypeError, KeyError, AttributeError, StoreError):
        max_epochs = None  # a config we cannot read does not stop the pictures
    steps["epoch"] = row_epochs(steps["global_step"], steps["epoch"], validation_steps, max_epochs)
    return steps


@dataclass(frozen=True)
class RunContext:
    """What every layer's frames share: probes, and per row the step, epoch and predictions."""

    probe_images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    global_steps: np.ndarray
    epochs: np.ndarray
    wall_times: np.ndarray
    predictions: np.ndarray
    num_rows: int

    @classmethod
    def read(cls, store: StoreReader, num_rows: int) -> RunContext:
        probes = store.probes
        steps = read_steps(store, num_rows)
        return cls(
            probe_images=probes.images,
            labels=np.asarray(probes.labels),
            class_names=list(probes.class_names),
            global_steps=steps["global_step"],
            epochs=steps["epoch"],
            wall_times=steps["wall_time"][:num_rows],
            predictions=predicted_classes(store.logits(slice(0, num_rows))),
            num_rows=num_rows,
        )

    def title(self, layer: str, row: int) -> str:
        return frame_title(layer, int(self.global_steps[row]), int(self.epochs[row]))

    def layout(self, plan: LayerPlan, rows: np.ndarray, text_scale: float = 1.0) -> FrameLayout:
        # The colour scale was fixed by the plan over the whole store, not just the rendered range,
        # so renders of different ranges of one run share their colours.
        longest = max((self.title(plan.name, row) for row in (rows[0], rows[-1])), key=len)
        return FrameLayout(
            plan.drawn_shape,
            num_probes=len(self.labels),
            scale=plan.scale,
            probe_images=self.probe_images,
            labels=self.labels,
            class_names=self.class_names,
            tile_size=plan.tile_size,
            longest_title=longest,
            kind=plan.kind,
            channel_labels=plan.labels,
            nonfinite_legend=plan.nonfinite_steps > 0,
            text_scale=text_scale,
        )


def layer_frames(
    store: StoreReader,
    plan: LayerPlan,
    layout: FrameLayout,
    context: RunContext,
    rows: np.ndarray,
    damaged: list[int] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(row, frame)`` for each row, reading the store in bounded chunks.

    Rows that fail the store's integrity check are never drawn: they are appended to ``damaged``
    (or the error is raised when ``damaged`` is ``None``).
    """
    for row, values in layer_rows(store, plan, rows, damaged):
        yield row, layout.frame(values, title=context.title(plan.name, row), predictions=context.predictions[row])


def layer_rows(
    store: StoreReader, plan: LayerPlan, rows: np.ndarray, damaged: list[int] | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(row, drawn channels of the row)``, reading in bounded chunks and skipping damaged rows."""
    for chunk_start in range(0, len(rows), _ROWS_PER_READ):
        chunk = rows[chunk_start : chunk_start + _ROWS_PER_READ]
        # A contiguous run of rows is one slice read; strided rows need an index read.
        contiguous = chunk[-1] - chunk[0] == len(chunk) - 1
        try:
            activations = store.activations(
                plan.name, slice(int(chunk[0]), int(chunk[-1]) + 1) if contiguous else chunk
            )
            readable = chunk.tolist()
        except _DAMAGE:
            if damaged is None:
                raise
            readable, values = [], []
            for row in chunk.tolist():
                try:
                    values.append(store.activations(plan.name, np.asarray([row]))[0])
                    readable.append(row)
                except _DAMAGE:
                    damaged.append(row)
            if not values:
                continue
            activations = np.stack(values)
        yield from zip(readable, plan.selected(activations), strict=True)


def sheet_frame(
    store: StoreReader, plan: LayerPlan, layout: FrameLayout, context: RunContext, sheet_rows: np.ndarray
) -> np.ndarray:
    activations = plan.selected(store.activations(plan.name, sheet_rows))
    captions = [f"step {int(context.global_steps[row])} · epoch {int(context.epochs[row])}" for row in sheet_rows]
    return layout.sheet(activations, captions=captions, title=plan.name, predictions=context.predictions[sheet_rows])
