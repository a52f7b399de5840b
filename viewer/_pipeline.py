"""The worker pool of ``actrec render`` and ``actrec tensorboard``: per-layer jobs, in this process or in workers.

Per-layer work is a plain-data :class:`LayerJob`, run in this process or in ``spawn``-ed worker
processes (one layer at a time each), each
worker opening the recording itself. What a job draws was decided by :mod:`actrec.viewer.plan`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from actrec.console import Progress
from actrec.recording import Recording
from actrec.viewer import writers
from actrec.viewer.errors import ViewerError
from actrec.viewer.frames import FrameLayout
from actrec.viewer.output import atomic_path, discard_unfinished, safe_filename
from actrec.viewer.plan import LayerPlan, card_groups, frame_layout, layer_frames, layer_rows, row_title, sheet_frame

TB_TAG = "activations"
TB_OVERVIEW_TAG = "overview"
_REPORT_EVERY = 16  # frames per progress message from a worker
_WORKERS_FROM_FRAMES = 300  # below this many frames, starting workers (~0.5 s each) does not pay


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def choose_jobs(jobs: int | None, num_layers: int, num_rows: int, *, cpus_per_job: int = 1) -> int:
    """Worker processes for ``num_layers`` layers of ``num_rows`` frames: ``jobs``, or for large renders
    (``None``) one per ``cpus_per_job`` CPUs, never more than one per layer.

    ``cpus_per_job`` is 2 for animated PNGs: a process drawing on one thread keeps another CPU busy with its
    encoder threads (:class:`~actrec.viewer.writers.ApngWriter`), and a worker costs ~0.4 s of CPU to start.
    On 2 CPUs the article-shaped render takes 3.0 CPU s in one process against 4.2 in two.

    Raises:
        ViewerError: ``jobs`` is not positive.
    """
    if jobs is not None and jobs < 1:
        raise ViewerError(f"jobs must be a positive integer, got {jobs}.")
    if jobs is None:
        jobs = 1 if num_rows * num_layers < _WORKERS_FROM_FRAMES else available_cpus() // max(1, cpus_per_job)
    return max(1, min(jobs, num_layers))


def progress_bar(total: int, enabled: bool | None, description: str) -> Progress:
    """The one progress rule (:class:`actrec.console.Progress`): a bar on a terminal, a plain line every
    ``ACTREC_PROGRESS_EVERY`` seconds (30) when output goes to a log; ``enabled=False`` shows nothing."""
    return Progress(total=total, description=description, unit="frames", enabled=enabled)


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
    video_format: str = "apng"
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
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops its workers on Ctrl-C (SIGTERM)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
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
    discard_unfinished()
    os._exit(128 + int(signal.SIGTERM))


JobResult = tuple[list[Path], list[str]]
"""What one layer job wrote, and its notes for the user (damaged steps)."""


def run_jobs(
    job_list: Sequence[LayerJob], jobs: int, progress: bool | None, description: str, recording: Recording
) -> list[JobResult]:
    """Run layer jobs in this process (reading ``recording``) or in ``jobs`` worker processes; results in job order."""
    total = sum(len(job.rows) for job in job_list)
    with progress_bar(total, progress, description) as bar:
        if jobs <= 1:
            background: list[Future[None]] = []
            outcomes = [_run_job(job, bar.update, recording, background) for job in job_list]
            for written in background:
                written.result()
            return outcomes
        import multiprocessing
        import queue as queue_module
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        # spawn, not fork: forking a process that holds an open HDF5 file is unsafe.
        context = multiprocessing.get_context("spawn")
        _start_quiet_resource_tracker()
        counts = context.Queue()
        with ProcessPoolExecutor(
            jobs, mp_context=context, initializer=_init_worker, initargs=(counts, os.getpid())
        ) as pool:
            # Biggest layers first, so the last one to finish is a small one.
            size = {job.layer: int(np.prod(job.plan.drawn_shape)) for job in job_list}
            order = sorted(range(len(job_list)), key=lambda i: -size[job_list[i].layer])
            futures: dict[Any, int] = {}
            try:
                # The pool starts its workers in these submits. Ctrl-C is held back meanwhile: arriving while a
                # worker still read its start-up data from this process, it made the worker print an EOFError
                # traceback. The workers inherit the held signal and then ignore Ctrl-C (this process stops
                # them, below); here it is delivered once the submits are done.
                with _ctrl_c_held():
                    futures = {pool.submit(_run_in_worker, job_list[i]): i for i in order}
                pending = set(futures)
                while pending:
                    done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                    for future in done:
                        future.result()  # a worker's error surfaces here, as if raised in this process
                    with contextlib.suppress(queue_module.Empty):
                        while True:
                            bar.update(counts.get_nowait())
            except BaseException:
                # Ctrl-C and SIGTERM (turned into KeyboardInterrupt by the command) reach only this process:
                # stop the workers now rather than wait for their current layer.
                for process in list(getattr(pool, "_processes", {}).values()):
                    process.terminate()
                pool.shutdown(wait=True, cancel_futures=True)  # layers not yet started never start
                raise
            results: list[JobResult] = [([], []) for _ in job_list]
            for future, index in futures.items():
                results[index] = future.result()
            return results


@contextlib.contextmanager
def _ctrl_c_held() -> Iterator[None]:
    """Hold Ctrl-C back until the block ends, then act on it as it would have been acted on.

    Two parts, both needed: Python's handler is swapped for one that only notes the signal (another thread
    may take SIGINT and make the main thread raise mid-spawn, whatever its own mask), and SIGINT is blocked
    on this thread, so processes started in the block inherit it blocked and a terminal's Ctrl-C to the
    whole group cannot interrupt their start-up either.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: noted.append(signum))
    masking = hasattr(signal, "pthread_sigmask")
    if masking:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        if masking:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # a held one is noted now
        signal.signal(signal.SIGINT, previous)
    if noted and callable(previous):
        previous(signal.SIGINT, None)  # Python's default raises KeyboardInterrupt here


def _start_quiet_resource_tracker() -> None:
    """Start multiprocessing's resource tracker with its stderr on /dev/null.

    The pool's queues hold semaphores the tracker removes when this process dies; after a SIGKILL it also
    warns "There appear to be 8 leaked semaphore objects" on the user's terminal, about a cleanup that went as
    it should. Started here with no stderr, it cleans up just the same, silently. (A no-op when it runs.)
    """
    from multiprocessing import resource_tracker

    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        resource_tracker.ensure_running()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


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
        background: list[Future[None]] = []
        with Recording.open(job.store_path, announce=None) as recording:
            result = _run_job(job, report, recording, background)
        for written in background:
            written.result()
        return result
    finally:
        if pending:
            _worker_progress.put(pending)


def _run_job(
    job: LayerJob, report: Callable[[int], Any], recording: Recording, background: list[Future[None]]
) -> JobResult:
    # The caller's recording, never a second one on the same file: HDF5 shares one open file per
    # process, and two readers refreshing their own handles of a dataset corrupt its chunk index.
    # Files still being written when this returns are in `background`; the caller waits for them.
    layout = frame_layout(recording, job.plan, job.rows)
    damaged: list[int] = []
    if job.kind == "tensorboard":
        paths = [_export_layer(recording, job, layout, report, damaged)]
        return paths, _damage_notes(recording, job.layer, damaged)
    stem = job.stem or safe_filename(job.layer)
    animation = job.out_dir / f"{stem}{writers.ANIMATION_SUFFIXES[job.video_format]}"
    # An APNG's still picture (what viewers that do not animate show) is the last step, the trained state:
    # drawn first, as the file wants it before the first frame.
    still = None
    if job.video_format == "apng":
        last = list(layer_frames(recording, job.plan, layout, job.rows[-1:], []))
        still = last[0][1] if last else None
    with (
        atomic_path(animation) as partial,
        writers.animation_writer(
            job.video_format, partial, fps=job.fps, num_frames=len(job.rows), still=still
        ) as writer,
    ):
        # One array redrawn at every step: the writers copy each frame they are given.
        for _, frame in layer_frames(recording, job.plan, layout, job.rows, damaged, reuse=True):
            writer.append(frame)
            report(1)
        if writer.frames_written == 0:
            raise ViewerError(f"every chosen step of layer {job.layer!r} is damaged; nothing to draw.")
    sheet = job.out_dir / f"{stem}.sheet.png"
    if job.sheet_rows is None:
        raise RuntimeError("render() gives its jobs the contact sheet's rows")
    left_out = set(damaged)
    sheet_rows = np.asarray([row for row in job.sheet_rows.tolist() if row not in left_out], dtype=np.int64)
    if sheet_rows.size:
        # Encoded and written beside the next layer's frames: this thread would otherwise deflate it while the
        # encoder threads wait for that layer's first frames.
        pixels = sheet_frame(recording, job.plan, layout, sheet_rows)
        background.append(writers.run_on_encoders(_write_sheet, sheet, pixels))
    return [animation, sheet], _damage_notes(recording, job.layer, damaged)


def _write_sheet(path: Path, pixels: np.ndarray) -> None:
    with atomic_path(path) as partial:
        # The fast deflate of the animations: ~5x faster than Pillow's level 6, for ~0.2 MB more per render.
        partial.write_bytes(writers.encode_indexed_png(pixels))


def _damage_notes(recording: Recording, layer: str, damaged: list[int]) -> list[str]:
    steps = recording.timeline.global_steps
    return [
        f"step {int(steps[row])} of layer {layer} is damaged (it failed its integrity check) and was left out."
        for row in damaged
    ]


def _export_layer(
    recording: Recording,
    job: LayerJob,
    layout: FrameLayout,
    report: Callable[[int], Any],
    damaged: list[int],
) -> Path:
    """Write one layer's frames as image summaries into their own event file in ``job.out_dir``.

    TensorBoard reads every event file of a folder as one run, so one file per layer (and per
    worker process) needs no coordination.
    """
    timeline = recording.timeline
    groups = card_groups(job.plan, job.channels_per_image)
    layouts = [layout if len(groups) == 1 else frame_layout(recording, plan, job.rows) for plan, _ in groups]

    def add_frames(writer: writers.TensorBoardImageWriter, rows: np.ndarray, prefix: str, bad: list[int] | None) -> int:
        written = 0
        for row, values in layer_rows(recording, job.plan, rows, bad):
            title, step = row_title(recording, job.layer, row), int(timeline.global_steps[row])
            # A classifier's predictions, or the outputs of any other task (a picture, next ids, values).
            drawn_outputs = None if recording.shows_predictions else job.plan.drawn_outputs(recording.outputs([row])[0])
            for (plan, suffix), group_layout in zip(groups, layouts, strict=True):
                frame = group_layout.frame(
                    values if plan is job.plan else plan.selected(values),
                    title=title,
                    predictions=job.plan.drawn_predictions(timeline.predictions[row])
                    if recording.shows_predictions
                    else None,
                    outputs=drawn_outputs,
                )
                tag = f"{prefix}/{job.layer}{suffix}"
                writer.add_image(tag, frame, step, wall_time=float(timeline.wall_times[row]))
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
        if job.sheet_rows is None:
            raise RuntimeError("export_tensorboard() gives its jobs the overview's rows")
        left_out = set(damaged)
        overview = np.asarray([row for row in job.sheet_rows.tolist() if row not in left_out], dtype=np.int64)
        if overview.size:
            add_frames(writer, overview, TB_OVERVIEW_TAG, None)
    return job.out_dir
