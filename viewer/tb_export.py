"""Export a run's activation frames to TensorBoard image summaries, and the command to browse them.

The export goes to its own folder inside the run folder, ``<run>/activations/``, which TensorBoard
shows as a run of its own beside the Lightning logger's (``version_0`` and
``version_0/activations`` when TensorBoard is pointed at the parent folder). Owning a folder is
what makes re-exporting safe: the new export is written to a staging folder and swapped in whole,
so images are never duplicated and the run's own event files are never touched.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from actrec.recording import Recording, nearest_rows
from actrec.runs import Run
from actrec.store import KIND_MAPS, StoreReader
from actrec.viewer._events import EVENTS_PREFIX, STAGED_PREFIX, publish_staged
from actrec.viewer._pipeline import TB_TAG, LayerJob, choose_jobs, run_jobs
from actrec.viewer.errors import ViewerError
from actrec.viewer.frames import CARD_CHANNELS, CARD_FRAME_WIDTH, CARD_TEXT_SCALE, TILE_SIZE
from actrec.viewer.output import remove_leftovers, unique_stems
from actrec.viewer.plan import LayerPlan, card_groups, make_plan
from actrec.viewer.render import default_sheet_steps

EXPORT_DIRNAME = "activations"
OVERVIEW_STEPS = 10
"""Steps under ``overview/<layer>``: TensorBoard keeps 10 images per tag unless told otherwise."""
_MARKER = ".actrec-tensorboard-export"  # proves a folder is an export we may replace


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote.

    Args:
        log_dir: the folder to point TensorBoard at (the run folder).
        export_dir: the folder holding the exported event files.
        tags: one ``activations/<layer>`` tag per layer.
        global_steps: the training steps exported under every tag.
        samples_per_plugin: the ``images=N`` value that lets TensorBoard show every exported step.
    """

    log_dir: Path
    export_dir: Path
    tags: tuple[str, ...]
    global_steps: np.ndarray
    samples_per_plugin: int
    notes: tuple[str, ...] = ()


def at_least_own_resolution(layer_plan: LayerPlan) -> LayerPlan:
    """``layer_plan`` with its maps drawn no smaller than their own resolution.

    Fitting a frame to a TensorBoard card shrinks its tiles; a 28 x 28 map drawn in 19 pixels loses
    rows and columns. TensorBoard scales a wide image down to its card by itself (and shows it whole
    at "actual size"), so a map is never drawn smaller than one pixel per value here.
    """
    if layer_plan.kind != KIND_MAPS:
        return layer_plan  # token and vector heatmaps draw every unit in at least one pixel already
    native = max(layer_plan.drawn_shape[1:])
    return layer_plan if layer_plan.tile_size >= native else dataclasses.replace(layer_plan, tile_size=native)


def images_to_keep(num_images: int) -> int:
    """The ``--samples_per_plugin images=N`` value that shows ``num_images`` images per tag.

    TensorBoard keeps 10 images per tag unless told otherwise. Its help text once said ``images=0``
    keeps all, but 0 shows none: the images plugin passes the value on as the number of samples to
    return, and ``tensorboard/backend/event_processing/data_provider.py:_downsample`` returns an empty
    list for ``k == 0`` (tensorflow/tensorboard#5550, "`--samples_per_plugin "images=0"` is
    documented to show all images, but shows no images at all", open; the flag's help in
    TensorBoard 2.21 no longer mentions 0). So we ask for an explicit count, never 0.
    """
    return max(1, int(num_images))


def logdir_arguments(run_dir: Path) -> list[str]:
    """TensorBoard arguments that show ``run_dir`` as a run named after it, never ``"."``.

    TensorBoard names a run by its folder's path below ``--logdir``, so the run folder itself
    would be ``"."``. A run in actrec's layout (``<experiment>/version_N``) is shown from its
    experiment folder, as ``version_N`` and ``version_N/activations`` (beside the experiment's other
    versions, which is what comparing runs needs), under the window title ``<experiment>/version_N``.
    Any other folder is named by ``--logdir_spec`` (TensorBoard then shows ``<name>/.``).
    """
    run_dir = Path(run_dir).resolve()
    if re.fullmatch(r"version_\d+", run_dir.name) and run_dir.parent != run_dir:
        return ["--logdir", str(run_dir.parent), "--window_title", f"{run_dir.parent.name}/{run_dir.name}"]
    return ["--logdir_spec", f"{run_dir.name.replace(':', '_')}:{run_dir}"]


def _tensorboard_program() -> list[str]:
    """TensorBoard's command: the script beside this Python first, so actrec's own TensorBoard (with its tab) runs."""
    script = Path(sys.executable).with_name("tensorboard")
    if script.exists():
        return [str(script)]
    if shutil.which("tensorboard"):
        return ["tensorboard"]
    return [sys.executable, "-m", "tensorboard.main"]


def tensorboard_command(log_dir: Path, samples: int, extra_args: Sequence[str] = ()) -> list[str]:
    """The command that starts TensorBoard on the run folder ``log_dir`` keeping ``samples`` images per tag.

    Prefers the ``tensorboard`` script installed beside this Python, so the command uses the
    TensorBoard of actrec's environment even when another one comes first on ``PATH``.
    """
    return [
        *_tensorboard_program(),
        *logdir_arguments(log_dir),
        "--samples_per_plugin",
        f"images={samples}",
        *extra_args,
    ]


def dashboard_command(run: Run, *, all_runs: bool = False, extra_args: Sequence[str] = ()) -> list[str]:
    """The command that starts TensorBoard with the actrec tab on ``run``; nothing is exported or written.

    Only that run is shown, as ``<experiment>/version_N/.`` (TensorBoard's name for a ``--logdir_spec``
    folder): its scalars, and its activations in the actrec tab, read from the store. ``all_runs`` shows
    the whole experiment folder instead (every version, to compare them).

    Raises:
        StoreError: the run's store cannot be read (checked now, not later in TensorBoard's log).
    """
    with StoreReader(run.store_path):
        pass
    run_dir = Path(run.path).resolve()
    versioned = re.fullmatch(r"version_\d+", run_dir.name) is not None and run_dir.parent != run_dir
    title = f"{run_dir.parent.name}/{run_dir.name}" if versioned else run_dir.name
    if all_runs:
        logdir = ["--logdir", str(run_dir.parent if versioned else run_dir)]
    elif "," in str(run_dir):
        raise ViewerError(f"TensorBoard cannot show {run_dir} alone (its path holds a comma); use --all.")
    else:
        logdir = ["--logdir_spec", f"{title.replace(':', '_')}:{run_dir}"]
    return [*_tensorboard_program(), *logdir, "--window_title", title, *extra_args]


def format_command(command: Sequence[str]) -> str:
    """``command`` as one line a POSIX shell runs as is."""
    return shlex.join(command)


def export_tensorboard(
    run: str | os.PathLike | Run,
    *,
    layers: Sequence[str] | None = None,
    start: int | None = None,
    stop: int | None = None,
    stride: int = 1,
    tile_size: int = TILE_SIZE,
    jobs: int | None = 1,
    progress: bool | None = None,
    channels: str | None = None,
    probes: str | None = None,
    notify: Callable[[str], object] | None = None,
) -> ExportResult:
    """Write every chosen step of every chosen layer as an image summary under ``activations/<layer>``.

    The frames are the ones ``actrec render`` animates. A previous export in ``<run>/activations/``
    is replaced as a whole once the new one is complete.

    Args:
        run: a run folder, an experiment folder, a store file or a resolved :class:`~actrec.runs.Run`;
            the export goes into its run folder.
        layers: layer names to export; all recorded layers when ``None``.
        start: first training step to export.
        stop: training step to stop before.
        stride: export every ``stride``-th recorded step of the range.
        tile_size: pixels of a tile's longer side.
        jobs: worker processes, as for :func:`~actrec.viewer.render.render_run`.
        progress: show progress (:class:`actrec.console.Progress`): a bar on a terminal, a plain line every
            ``ACTREC_PROGRESS_EVERY`` seconds otherwise; ``False`` shows nothing.
        channels: which channels or units to draw, as for :func:`~actrec.viewer.render.render_run`.
        probes: which probes to draw, as for :func:`~actrec.viewer.render.render_run`.

    Returns:
        Where the export went, its tags and steps, and the ``samples_per_plugin`` value to use.

    Raises:
        StoreError: the store is missing, damaged, foreign or too new.
        ViewerError: the store has no steps, a layer is unknown, the range holds no step, the run
            folder is not writable, or ``<run>/activations`` exists and is not an actrec export.
    """
    with Recording.open(run) as recording:
        plan = make_plan(
            recording,
            layers,
            start,
            stop,
            stride,
            tile_size,
            channels,
            max_frame_width=CARD_FRAME_WIDTH,
            text_scale=CARD_TEXT_SCALE,
            probes=probes,
        )
        for name, layer_plan in plan.layer_plans.items():
            plan.layer_plans[name] = at_least_own_resolution(layer_plan)
        steps = plan.global_steps[plan.rows]
        overview_rows = plan.rows[nearest_rows(steps, default_sheet_steps(steps, OVERVIEW_STEPS))]
        overview_rows = np.unique(overview_rows)
        notes = list(plan.notes)
        for note in notes:
            if notify is not None:
                notify(note)
        log_dir = recording.run_dir
        final = log_dir / EXPORT_DIRNAME
        # A link is never replaced: renaming through it would move the files of the folder it points to.
        if final.is_symlink() or (final.exists() and not (final / _MARKER).is_file()):
            what = "is a symbolic link" if final.is_symlink() else "exists"
            raise ViewerError(f"{final} {what} and was not written by actrec tensorboard; move it away to export here.")
        remove_leftovers(log_dir)  # what a killed export left behind
        # Staged event files carry names TensorBoard ignores until the export is complete and in place,
        # so neither a running export nor a killed one ever shows up as a run.
        staging = log_dir / f".{EXPORT_DIRNAME}.partial-{os.getpid()}"
        try:
            staging.mkdir()
        except OSError as error:
            reason = (error.strerror or str(error)).lower()
            raise ViewerError(f"cannot write the TensorBoard export into {log_dir}: {reason}.") from None
        try:
            stems = unique_stems(plan.layers)
            job_list = [
                LayerJob(
                    store_path=recording.store_path,
                    layer=name,
                    num_rows=plan.num_rows,
                    rows=plan.rows,
                    plan=plan.layer_plans[name],
                    stem=stems[name],
                    kind="tensorboard",
                    out_dir=staging,
                    sheet_rows=overview_rows,
                    channels_per_image=CARD_CHANNELS,
                )
                for name in plan.layers
            ]
            workers = choose_jobs(jobs, len(plan.layers), len(plan.rows))
            for _, job_notes in run_jobs(job_list, workers, progress, "exporting", recording):
                notes.extend(job_notes)
                for note in job_notes:
                    if notify is not None:
                        notify(note)
            marker = {"run_id": recording.store.run_id, "layers": plan.layers, "steps": len(plan.rows)}
            (staging / _MARKER).write_text(json.dumps(marker) + "\n")
            _swap_in(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(
        log_dir=log_dir,
        export_dir=final,
        tags=tuple(
            f"{TB_TAG}/{name}{suffix}"
            for name in plan.layers
            for _, suffix in card_groups(plan.layer_plans[name], CARD_CHANNELS)
        ),
        global_steps=plan.global_steps[plan.rows],
        # Every recorded step, not only the exported ones: the run's own image tags (the recorder's
        # optional TensorBoard images) share the limit and may hold up to one image per step.
        samples_per_plugin=images_to_keep(max(len(plan.rows), plan.num_rows)),
        notes=tuple(notes),
    )


def _swap_in(staging: Path, final: Path) -> None:
    """Replace ``final`` (if any) with ``staging``; the old export is deleted only once the new one is in."""
    retired = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, retired)
        _unpublish(retired)  # hidden from TensorBoard before it is deleted, even if we are killed now
    try:
        os.replace(staging, final)
    except BaseException:
        if retired.exists():
            publish_staged(retired)
            os.replace(retired, final)
        raise
    publish_staged(final)
    shutil.rmtree(retired, ignore_errors=True)


def _unpublish(folder: Path) -> None:
    for entry in os.scandir(folder):
        if entry.name.startswith(EVENTS_PREFIX):
            os.replace(entry.path, folder / (STAGED_PREFIX + entry.name[len(EVENTS_PREFIX) :]))
