"""The machinery shared by ``actrec render`` and ``actrec tensorboard``: plan, frames, workers.

Everything the user can get wrong (store, layers, steps, output folder) is checked by :func:`make_plan`
before anything is written. Per-layer work is a plain-data :class:`LayerJob`, run in this process or
in ``spawn``-ed worker processes (one layer at a time each: GIF encoding holds the GIL, so threads
would not help), each worker opening the store itself.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from actrec.store import StoreReader
from actrec.viewer import writers
from actrec.viewer.errors import ViewerError
from actrec.viewer.frames import FrameLayout, frame_title

_ROWS_PER_READ = 64  # bounded memory on long runs; one chunk is one HDF5 read per layer
_REPORT_EVERY = 16  # frames per progress message from a worker
_WORKERS_FROM_FRAMES = 300  # below this many frames, starting workers (~0.5 s each) does not pay


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
        raise ViewerError(f"--stride must be a positive integer, got {stride}.")
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
    return out_dir


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; move it over ``final`` only if the block succeeds."""
    partial = final.with_name(f".{final.stem}.partial-{os.getpid()}{final.suffix}")
    try:
        yield partial
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)


def safe_filename(layer: str) -> str:
    """A file-name stem for a layer (module names are already safe; anything else becomes ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", layer)


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


def make_plan(
    store: StoreReader,
    layers: Sequence[str] | None,
    start: int | None,
    stop: int | None,
    stride: int,
    tile_size: int,
    jobs: int | None,
) -> Plan:
    """Check everything a render or export depends on, and fix the rows to draw.

    Raises:
        ViewerError: an option is out of range, the store has no steps, a layer is unknown, or no
            recorded step lies in ``[start, stop)``.
    """
    if tile_size < 4:
        raise ViewerError(f"--tile-size must be at least 4 pixels, got {tile_size}.")
    if jobs is not None and jobs < 1:
        raise ViewerError(f"--jobs must be a positive integer, got {jobs}.")
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
    return Plan(num_rows, global_steps, rows, names, min(jobs, len(names)))


@dataclass(frozen=True)
class LayerJob:
    """One layer's share of a render or export; plain data, so it can go to a worker process."""

    store_path: Path
    layer: str
    num_rows: int
    rows: np.ndarray
    tile_size: int
    kind: str  # "render" or "tensorboard"
    out_dir: Path
    video_format: str = "gif"
    fps: float = 10.0
    sheet_rows: np.ndarray | None = None


_worker_progress: Any = None  # a worker process's queue for progress counts


def _init_worker(queue: Any) -> None:
    global _worker_progress
    _worker_progress = queue


def run_jobs(
    job_list: Sequence[LayerJob], jobs: int, progress: bool | None, description: str, store: StoreReader
) -> list[list[Path]]:
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
        with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker, initargs=(counts,)) as pool:
            # Biggest layers first, so the last one to finish is a small one.
            channels = {job.layer: store.layer(job.layer).sample_shape[0] for job in job_list}
            order = sorted(range(len(job_list)), key=lambda i: -channels[job_list[i].layer])
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
                pool.shutdown(wait=True, cancel_futures=True)  # layers not yet started never start
                raise
            results: list[list[Path]] = [[] for _ in job_list]
            for future, index in futures.items():
                results[index] = future.result()
            return results


def _run_in_worker(job: LayerJob) -> list[Path]:
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


def _run_job(job: LayerJob, report: Callable[[int], Any], store: StoreReader) -> list[Path]:
    # The caller's reader, never a second one on the same file: HDF5 shares one open file per
    # process, and two readers refreshing their own handles of a dataset corrupt its chunk index.
    context = RunContext.read(store, job.num_rows)
    layout = context.layout(store, job.layer, job.tile_size, job.rows)
    if job.kind == "tensorboard":
        return [_export_layer(store, job, layout, context, report)]
    stem = safe_filename(job.layer)
    animation = job.out_dir / f"{stem}.{job.video_format}"
    with atomic_path(animation) as partial:
        writer_class = writers.GifWriter if job.video_format == "gif" else writers.Mp4Writer
        with writer_class(partial, fps=job.fps) as writer:
            for _, frame in layer_frames(store, job.layer, layout, context, job.rows):
                writer.append(frame)
                report(1)
    sheet = job.out_dir / f"{stem}.sheet.png"
    with atomic_path(sheet) as partial:
        writers.write_png(sheet_frame(store, job.layer, layout, context, job.sheet_rows), partial)
    return [animation, sheet]


def _export_layer(
    store: StoreReader, job: LayerJob, layout: FrameLayout, context: RunContext, report: Callable[[int], Any]
) -> Path:
    """Write one layer's frames as image summaries into their own event file in ``job.out_dir``.

    TensorBoard reads every event file of a folder as one run, so one file per layer (and per
    worker process) needs no coordination.
    """
    tag = f"activations/{job.layer}"
    with writers.TensorBoardImageWriter(job.out_dir, filename_suffix=f".{safe_filename(job.layer)}") as writer:
        for row, frame in layer_frames(store, job.layer, layout, context, job.rows):
            writer.add_image(tag, frame, int(context.global_steps[row]), wall_time=float(context.wall_times[row]))
            report(1)
    return job.out_dir


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
        steps = store.steps()
        return cls(
            probe_images=probes.images,
            labels=np.asarray(probes.labels),
            class_names=list(probes.class_names),
            global_steps=steps["global_step"][:num_rows],
            epochs=steps["epoch"][:num_rows],
            wall_times=steps["wall_time"][:num_rows],
            predictions=store.logits(slice(0, num_rows)).argmax(axis=-1),
            num_rows=num_rows,
        )

    def title(self, layer: str, row: int) -> str:
        return frame_title(layer, int(self.global_steps[row]), int(self.epochs[row]))

    def layout(self, store: StoreReader, layer: str, tile_size: int, rows: np.ndarray) -> FrameLayout:
        # The scale is fixed over every row flushed so far, not just the rendered range, so renders
        # of different ranges of one run share their colours.
        scale = store.symmetric_scale(layer, slice(0, self.num_rows))
        longest = max((self.title(layer, row) for row in (rows[0], rows[-1])), key=len)
        return FrameLayout(
            store.layer(layer).sample_shape,
            num_probes=len(self.labels),
            scale=scale,
            probe_images=self.probe_images,
            labels=self.labels,
            class_names=self.class_names,
            tile_size=tile_size,
            longest_title=longest,
        )


def layer_frames(
    store: StoreReader, layer: str, layout: FrameLayout, context: RunContext, rows: np.ndarray
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(row, frame)`` for each row, reading the store in bounded chunks."""
    for chunk_start in range(0, len(rows), _ROWS_PER_READ):
        chunk = rows[chunk_start : chunk_start + _ROWS_PER_READ]
        # A contiguous run of rows is one slice read; strided rows need an index read.
        contiguous = chunk[-1] - chunk[0] == len(chunk) - 1
        activations = store.activations(layer, slice(int(chunk[0]), int(chunk[-1]) + 1) if contiguous else chunk)
        for row, values in zip(chunk.tolist(), activations, strict=True):
            yield row, layout.frame(values, title=context.title(layer, row), predictions=context.predictions[row])


def sheet_frame(
    store: StoreReader, layer: str, layout: FrameLayout, context: RunContext, sheet_rows: np.ndarray
) -> np.ndarray:
    activations = store.activations(layer, sheet_rows)
    captions = [f"step {int(context.global_steps[row])} · epoch {int(context.epochs[row])}" for row in sheet_rows]
    return layout.sheet(activations, captions=captions, title=layer, predictions=context.predictions[sheet_rows])
