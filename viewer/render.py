"""``actrec render``: per layer an animation and a contact sheet, per run a training-curves PNG.

Every file is written under a temporary name and moved into place when complete, so a failed
render never leaves a half-written file where a previous good one was; nothing is written before
the store, layers, range and output folder have all been checked.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from actrec.recording import Recording, nearest_rows
from actrec.runs import Run
from actrec.viewer import writers
from actrec.viewer._pipeline import LayerJob, choose_jobs, run_jobs
from actrec.viewer.curves import training_curves
from actrec.viewer.errors import ViewerError
from actrec.viewer.frames import TILE_SIZE
from actrec.viewer.output import atomic_path, prepare_out_dir, safe_filename, unique_stems
from actrec.viewer.plan import make_plan

RENDERS_DIRNAME = "renders"
VIDEO_FORMATS = tuple(writers.ANIMATION_SUFFIXES)
"""Animation formats of :func:`render_run`: ``"apng"`` (the default), ``"gif"``, ``"mp4"``."""
_SHEET_PANELS = 6


@dataclass(frozen=True)
class RenderResult:
    """What a render produced.

    Args:
        out_dir: the folder the files were written to.
        files: every file written, in order.
        global_steps: the training step of each animation frame (every layer has these frames).
        layers: the layers rendered.
        sheet_steps: the training steps shown on the contact sheets.
        notes: sentences for the user: channels left out, non-finite or damaged steps, a large render.
    """

    out_dir: Path
    files: tuple[Path, ...]
    global_steps: np.ndarray
    layers: tuple[str, ...]
    sheet_steps: tuple[int, ...]
    notes: tuple[str, ...] = ()


def parse_step_range(text: str) -> tuple[int | None, int | None]:
    """Parse ``"START:STOP"`` (either side may be empty) into training steps, STOP exclusive.

    Raises:
        ViewerError: the text is not of that form, or STOP is not after START.
    """
    match = re.fullmatch(r"\s*(\d*)\s*:\s*(\d*)\s*", text)
    if match is None:
        raise ViewerError(f"--steps takes START:STOP in training steps (either may be empty), got {text!r}.")
    start = int(match[1]) if match[1] else None
    stop = int(match[2]) if match[2] else None
    if start is not None and stop is not None and stop <= start:
        raise ViewerError(f"--steps {text} is empty: STOP must be greater than START.")
    return start, stop


def default_sheet_steps(global_steps: np.ndarray, panels: int = _SHEET_PANELS) -> list[int]:
    """The first step, log-spaced steps in between, and the last step (at most ``panels``, no repeats)."""
    first, last = int(global_steps[0]), int(global_steps[-1])
    wanted = [first, *np.geomspace(max(first, 1), max(last, 1), panels - 1).tolist()]
    rows = nearest_rows(global_steps, wanted)
    return [int(global_steps[row]) for row in dict.fromkeys(rows.tolist())]


def _curves_png(steps: dict[str, np.ndarray], scalars: dict[str, tuple[np.ndarray, np.ndarray]], title: str) -> bytes:
    return writers.encode_png(training_curves(steps, scalars, title=title))


def render_run(
    run: str | os.PathLike | Run,
    *,
    out_dir: str | os.PathLike | None = None,
    layers: Sequence[str] | None = None,
    start: int | None = None,
    stop: int | None = None,
    stride: int = 1,
    fps: float = 10.0,
    tile_size: int = TILE_SIZE,
    video_format: str = "apng",
    sheet_steps: Sequence[int] | None = None,
    jobs: int | None = 1,
    progress: bool | None = None,
    channels: str | None = None,
    probes: str | None = None,
    notify: Callable[[str], object] | None = None,
) -> RenderResult:
    """Render every chosen layer's animation and contact sheet, and the run's training curves.

    A store that is still being written renders the rows flushed when this starts.

    Args:
        run: a run folder, an experiment folder (its newest version), a store file, or a resolved
            :class:`~actrec.runs.Run`; renders go to its run folder.
        out_dir: where to write; default ``renders/`` in the run folder. Files there with the same
            names (``<layer>.png``, or ``.gif``/``.mp4``, ``<layer>.sheet.png``, ``curves.png``) are replaced.
        layers: layer names to render; all recorded layers when ``None``.
        start: first training step to render.
        stop: training step to stop before.
        stride: render every ``stride``-th recorded step of the range.
        fps: animation frames per second.
        tile_size: pixels of a tile's longer side.
        video_format: ``"apng"`` (an animated PNG, ``<layer>.png``: exact colours, small, browsers play it),
            ``"gif"`` (exact colours, plays everywhere: slides, chat; ~3x larger and slower to write) or
            ``"mp4"`` (needs ``imageio-ffmpeg``; colours close, not exact).
        sheet_steps: training steps for the contact sheets (nearest recorded step each); default
            the first, a few log-spaced and the last of the rendered steps.
        jobs: worker processes, each rendering one layer at a time; 1 renders in this process;
            ``None`` picks one per CPU (up to one per layer) for large renders. Workers are started
            with ``spawn``, so a script that passes ``jobs != 1`` needs the usual
            ``if __name__ == "__main__":`` guard (the ``actrec`` command has it).
        progress: show progress (:class:`actrec.console.Progress`): a bar on a terminal, a plain line every
            ``ACTREC_PROGRESS_EVERY`` seconds otherwise; ``False`` shows nothing.
        channels: which channels (maps) or units (tokens, vectors) to draw: ``"0,3,7"``, ``"top:K"``
            (the K that vary most over training) or ``"all"``; default: all up to 16, else the 16
            that vary most (a note says so).
        probes: which probes to draw: indices into the probe set (``"0,3,7"``, ``"10-19"``) or ``"all"``;
            default all up to ten, else the first ten (a note says so); frames and sheets draw the same ones.
        notify: called with each note as soon as it is known (before the long work starts).

    Returns:
        What was written, and which steps.

    Raises:
        StoreError: the store is missing, damaged, foreign or too new.
        ViewerError: the store has no steps, a layer is unknown, the range holds no step, an option is
            out of range, MP4 support is missing, or the output folder is not writable.
    """
    if video_format not in VIDEO_FORMATS:
        raise ViewerError(f"--format must be one of {', '.join(VIDEO_FORMATS)}, got {video_format!r}.")
    if video_format == "mp4":
        writers.Mp4Writer.check_available()
    writers.check_fps(fps)
    with Recording.open(run) as recording:
        plan = make_plan(
            recording,
            layers,
            start,
            stop,
            stride,
            tile_size,
            channels,
            probes=probes,
            bytes_per_pixel=writers.ANIMATION_BYTES_PER_PIXEL[video_format],
        )
        notes = list(plan.notes)
        for note in notes:
            if notify is not None:
                notify(note)
        shown = list(sheet_steps) if sheet_steps else default_sheet_steps(plan.global_steps[plan.rows])
        drawn = plan.global_steps[plan.rows]
        outside = [step for step in shown if not drawn[0] <= step <= drawn[-1]]
        if outside:  # refused as --steps is: the nearest recorded step of 7777 is no picture of step 7777
            raise ViewerError(
                f"--sheet-steps {', '.join(map(str, outside))} lies outside the drawn steps "
                f"{drawn[0]}..{drawn[-1]}; choose steps within them."
            )
        sheet_rows = plan.rows[nearest_rows(plan.global_steps[plan.rows], shown)]
        sheet_rows = np.asarray(list(dict.fromkeys(sheet_rows.tolist())), dtype=np.int64)
        out = prepare_out_dir(Path(out_dir) if out_dir is not None else recording.run_dir / RENDERS_DIRNAME)
        # An animated PNG is <layer>.png: a layer named "curves", or "x.sheet" beside a layer "x", must not take
        # the curves' or a contact sheet's file name.
        suffix = writers.ANIMATION_SUFFIXES[video_format]
        reserved = ["curves", *(f"{safe_filename(name)}.sheet" for name in plan.layers)] if suffix == ".png" else []
        stems = unique_stems(plan.layers, reserved)
        job_list = [
            LayerJob(
                store_path=recording.store_path,
                layer=name,
                num_rows=plan.num_rows,
                rows=plan.rows,
                plan=plan.layer_plans[name],
                stem=stems[name],
                kind="render",
                out_dir=out,
                video_format=video_format,
                fps=fps,
                sheet_rows=sheet_rows,
            )
            for name in plan.layers
        ]
        workers = choose_jobs(jobs, len(plan.layers), len(plan.rows), cpus_per_job=2 if video_format == "apng" else 1)
        timeline = recording.timeline
        # The run's folder names it for people (quickstart/version_0); the id is for machines.
        title = f"{recording.name} · {plan.num_rows} recorded steps"
        with ThreadPoolExecutor(1, thread_name_prefix="actrec-curves") as beside:
            # Drawn while the layers render, in the time this thread waits for encoders (or workers), rather than
            # after them with every other CPU idle. Its data is read here: only this thread touches the store.
            curves_png = beside.submit(_curves_png, timeline.steps_dict(), timeline.scalars, title)
            results = run_jobs(job_list, workers, progress, "rendering", recording)
            files = [path for paths, _ in results for path in paths if path.exists()]
            for _, job_notes in results:
                notes.extend(job_notes)
                for note in job_notes:
                    if notify is not None:
                        notify(note)
            curves = out / "curves.png"
            with atomic_path(curves) as partial:
                partial.write_bytes(curves_png.result())
        files.append(curves)
    return RenderResult(
        out_dir=out,
        files=tuple(files),
        global_steps=plan.global_steps[plan.rows],
        layers=tuple(plan.layers),
        sheet_steps=tuple(int(step) for step in plan.global_steps[sheet_rows]),
        notes=tuple(notes),
    )
