"""``actrec compare``: one layer of several runs side by side as one animation, and their curves overlaid.

Each run's panel is the viewer's own frame (:class:`~actrec.viewer.frames.FrameLayout`: header,
probes, tiles, predictions) on its own colour scale; the panels are set side by side on one canvas
of palette indices and streamed into the viewer's animation writer (APNG by default, as ``actrec render`` writes).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from actrec.compare.align import ALIGNMENTS, aligned_positions, fractional_epochs, rows_at, shared_timeline
from actrec.dynamics import Dynamics, compute_dynamics
from actrec.dynamics.plots import log10_or_nan, panel_figure
from actrec.errors import UserError
from actrec.recording import ChannelChoice, Recording, colors
from actrec.viewer import writers
from actrec.viewer.curves import Series, faint, smooth
from actrec.viewer.frames import FrameLayout, frame_height_width
from actrec.viewer.output import atomic_path, prepare_out_dir, safe_filename
from actrec.viewer.plan import MAX_FRAME_PIXELS, LayerPlan, check_tile_size, plan_layer
from actrec.viewer.render import RENDERS_DIRNAME

DEFAULT_MAX_FRAMES = 600
_PANEL_GAP = 16
_ROWS_PER_READ = 64
RUN_COLORS = ((33, 102, 172), (230, 97, 1), (26, 133, 60), (118, 42, 131), (178, 24, 43), (90, 90, 90))
_X_LABELS = {"step": "training step", "epoch": "epoch", "samples": "training samples seen"}


class CompareError(UserError):
    """Runs cannot be compared; the message is one sentence for the user."""


@dataclass(frozen=True)
class CompareResult:
    """What :func:`compare_runs` wrote: the animation, the curves, and the shared timeline."""

    animation: Path
    curves: Path
    timeline: np.ndarray
    labels: tuple[str, ...]
    layers: tuple[str, ...]
    notes: tuple[str, ...] = ()


def parse_layers(specs: Sequence[str], count: int) -> list[str]:
    """One layer name per run from ``--layer`` values: ``L`` for every run, or ``A=L1 B=L2 ...`` per run.

    Letters name the runs in the order given (A the first). Every run needs a layer.

    Raises:
        CompareError: a letter names no run, a run has no layer, or the forms are mixed.
    """
    if not specs:
        raise CompareError("name the layer to compare: layer_specs=['L'] (or ['A=L1', 'B=L2'] per run).")
    letters = [chr(ord("A") + index) for index in range(count)]
    plain = [spec for spec in specs if "=" not in spec]
    if plain:
        if len(specs) > 1:
            raise CompareError("give layer_specs either one layer for every run or one LETTER=NAME per run.")
        return [plain[0]] * count
    chosen: dict[str, str] = {}
    for spec in specs:
        letter, _, name = spec.partition("=")
        letter = letter.strip().upper()
        if letter not in letters or not name:
            raise CompareError(f"layer spec {spec!r} names no run; use A to {letters[-1]} for the runs in order.")
        chosen[letter] = name.strip()
    missing = [letter for letter in letters if letter not in chosen]
    if missing:
        raise CompareError(f"no layer for run {', '.join(missing)}; give one LETTER=NAME layer spec per run.")
    return [chosen[letter] for letter in letters]


def side_by_side(panels: Sequence[np.ndarray], gap: int = _PANEL_GAP) -> np.ndarray:
    """Palette-index panels left to right on a white canvas, top-aligned, ``gap`` pixels apart (a new array)."""
    height = max(panel.shape[0] for panel in panels)
    width = sum(panel.shape[1] for panel in panels) + gap * (len(panels) - 1)
    canvas = np.full((height, width), colors.ZERO_INDEX, np.uint8)
    left = 0
    for panel in panels:
        canvas[: panel.shape[0], left : left + panel.shape[1]] = panel
        left += panel.shape[1] + gap
    return canvas


@dataclass
class _Panel:
    """One run's part of the comparison: its recording, the layer shown, and where its rows fall."""

    label: str
    recording: Recording
    layer: str
    positions: np.ndarray
    plan: LayerPlan | None = None


def compare_runs(
    runs: Sequence[str | os.PathLike],
    layer_specs: Sequence[str],
    *,
    align: str = "step",
    out_dir: str | os.PathLike | None = None,
    fps: float = 10.0,
    tile_size: int = 28,
    max_frames: int = DEFAULT_MAX_FRAMES,
    batch_sizes: Mapping[int, int] | None = None,
    labels: Sequence[str] | None = None,
    video_format: str = "apng",
) -> CompareResult:
    """Write ``compare-<layer>.png`` (an animated PNG; ``.gif``/``.mp4`` by ``video_format``) and
    ``compare-curves.png`` for two or more runs.

    Args:
        runs: run folders, experiment folders or store files, in order (A, B, ...).
        layer_specs: ``--layer`` values (see :func:`parse_layers`).
        align: ``"step"``, ``"epoch"`` or ``"samples"``.
        out_dir: where to write; default ``renders/`` of the first run.
        fps: animation speed.
        tile_size: pixels of a tile's longer side.
        max_frames: thin the shared timeline to at most this many frames.
        batch_sizes: per run index, a batch size overriding the run's config (for ``"samples"``).
        labels: each run's name in the panels and legends (default ``experiment/version_N``).
        video_format: ``"apng"`` (the default, as ``actrec render`` writes), ``"gif"`` or ``"mp4"``.

    Raises:
        CompareError, StoreError, RunError, ViewerError: one sentence each.
    """
    if len(runs) < 2:
        raise CompareError("compare needs at least two runs.")
    if align not in ALIGNMENTS:
        raise CompareError(f"align must be one of {', '.join(ALIGNMENTS)}, got {align!r}.")
    if max_frames < 1:
        raise CompareError(f"max_frames must be positive, got {max_frames}.")
    check_tile_size(tile_size)
    writers.check_fps(fps)
    if video_format not in writers.ANIMATION_SUFFIXES:
        raise CompareError(
            f"video_format must be one of {', '.join(writers.ANIMATION_SUFFIXES)}, got {video_format!r}."
        )
    layers = parse_layers(layer_specs, len(runs))
    with contextlib.ExitStack() as stack:
        opened = []
        for index, (run, layer) in enumerate(zip(runs, layers, strict=True)):
            recording = stack.enter_context(Recording.open(run))
            opened.append(_open_panel(recording, layer, align, (batch_sizes or {}).get(index)))
        labels = _unique_labels(list(labels) if labels is not None else [run.label for run in opened])
        for panel, label in zip(opened, labels, strict=True):
            panel.label = label
        _plan_panels(opened, tile_size)  # refuses frames too large to draw before anything is written
        timeline = shared_timeline([run.positions for run in opened], max_frames)
        first_run = opened[0].recording.run_dir
        out = prepare_out_dir(Path(out_dir) if out_dir is not None else first_run / RENDERS_DIRNAME)
        name = safe_filename(layers[0] if len(set(layers)) == 1 else "-".join(layers))
        if name == "curves" and video_format == "apng":  # compare-curves.png is the curves' file
            name = "layer-curves"
        animation = out / f"compare-{name}{writers.ANIMATION_SUFFIXES[video_format]}"
        with atomic_path(animation) as partial:
            notes = _write_animation(opened, timeline, partial, fps, video_format)
        curves = out / "compare-curves.png"
        with atomic_path(curves) as partial:
            writers.write_png(_curves(opened, align), partial)
    return CompareResult(animation, curves, timeline, tuple(labels), tuple(layers), tuple(notes))


def _unique_labels(labels: list[str]) -> list[str]:
    if len(set(labels)) == len(labels):
        return labels
    return [f"{chr(ord('A') + index)}: {label}" for index, label in enumerate(labels)]


def _open_panel(recording: Recording, layer: str, align: str, batch_size: int | None) -> _Panel:
    recording.layer(layer)  # refuses a layer the run did not record, naming those it did
    timeline = recording.timeline
    if align == "samples" and batch_size is None:
        batch_size = timeline.batch_size
        if batch_size is None:
            raise CompareError(
                f"{recording.name} has no batch size in its config.yaml, so samples seen are unknown; "
                "align by step or epoch."
            )
    positions = aligned_positions(timeline.global_steps, timeline.epochs, align, batch_size)
    return _Panel(recording.name, recording, layer, positions)


def _plan_panels(runs: Sequence[_Panel], tile_size: int) -> None:
    """Each run's panel planned as ``actrec render`` plans a layer (channels, colour scale, tile fit), and
    the side-by-side canvas checked against the render's frame limit.

    Raises:
        ViewerError: a layer cannot be drawn, or one panel is too large.
        CompareError: the panels together are too large.
    """
    height, width = 0, _PANEL_GAP * (len(runs) - 1)
    for run in runs:
        num_probes = run.recording.num_probes
        run.plan, _ = plan_layer(run.recording.layer(run.layer), ChannelChoice(), tile_size, num_probes)
        panel_height, panel_width = frame_height_width(
            run.plan.kind, run.plan.drawn_shape, num_probes, run.plan.tile_size
        )
        height, width = max(height, panel_height), width + panel_width
    if height * width > MAX_FRAME_PIXELS:
        raise CompareError(
            f"the compared frames would be {width} x {height} pixels, over the {MAX_FRAME_PIXELS:,} pixel limit; "
            "compare fewer runs or choose a smaller tile_size."
        )


def _write_animation(
    runs: Sequence[_Panel], timeline: np.ndarray, target: Path, fps: float, video_format: str
) -> list[str]:
    """Write the side-by-side animation; returns a note per damaged row, whose frames are left out.

    Raises:
        CompareError: every frame holds a damaged row.
    """
    layouts = []
    plans: list[LayerPlan] = []
    row_lists = [rows_at(run.positions, timeline) for run in runs]
    for run, rows in zip(runs, row_lists, strict=True):
        probes = run.recording.probes
        plan = run.plan
        assert plan is not None, "_plan_panels() planned every panel"
        plans.append(plan)
        title = _title(run, int(rows[-1]))
        layouts.append(
            FrameLayout(
                plan.drawn_shape,
                num_probes=len(probes.labels),
                scale=plan.scale,
                probe_images=probes.images,
                # As render draws them (viewer.plan.frame_layout): probes without labels get no row of "?".
                labels=probes.labels if (np.asarray(probes.labels) >= 0).any() else None,
                class_names=probes.class_names,
                tile_size=plan.tile_size,
                longest_title=max((_title(run, int(rows[0])), title), key=len) + "  ",
                kind=plan.kind,
                channel_labels=plan.labels,
                nonfinite_legend=plan.nonfinite_steps > 0,
                show_predictions=run.recording.shows_predictions,  # the recording's rule: classifiers only
                output=None if run.recording.shows_predictions else run.recording.output_drawing,  # others: outputs
            )
        )
    damaged: list[set[int]] = [set() for _ in runs]
    with writers.animation_writer(video_format, target, fps=fps, num_frames=len(timeline)) as animation:
        for start in range(0, len(timeline), _ROWS_PER_READ):
            block = slice(start, start + _ROWS_PER_READ)
            values = []
            for index, (run, rows, plan) in enumerate(zip(runs, row_lists, plans, strict=True)):
                # The read side's rule: a damaged row is left out (its frames are not drawn) and named.
                read = run.recording.layer(run.layer).read(np.unique(rows[block]))
                damaged[index].update(read.damaged)
                values.append(dict(zip(read.rows.tolist(), plan.selected(read.values), strict=True)))
            for offset in range(len(timeline[block])):
                frame_rows = [int(rows[start + offset]) for rows in row_lists]
                if any(row not in by_row for row, by_row in zip(frame_rows, values, strict=True)):
                    continue
                panels = []
                for run, row, layout, by_row in zip(runs, frame_rows, layouts, values, strict=True):
                    shown = run.recording.shows_predictions
                    predictions = run.recording.timeline.predictions[row] if shown else None
                    outputs = None if shown else run.recording.outputs([row])[0]
                    title = _title(run, row)
                    panels.append(layout.frame(by_row[row], title=title, predictions=predictions, outputs=outputs))
                animation.append(side_by_side(panels))
        if animation.frames_written == 0:
            raise CompareError("every compared frame holds a damaged step (it failed its integrity check).")
    return [
        f"step {int(run.recording.timeline.global_steps[row])} of {run.label}'s layer {run.layer} is damaged "
        "(it failed its integrity check); its frames were left out."
        for run, rows in zip(runs, damaged, strict=True)
        for row in sorted(rows)
    ]


def _title(run: _Panel, row: int) -> str:
    timeline = run.recording.timeline
    return f"{run.label} · {run.layer} · step {int(timeline.global_steps[row])} · epoch {int(timeline.epochs[row])}"


def _curves(runs: Sequence[_Panel], align: str) -> np.ndarray:
    dynamics: list[Dynamics] = [compute_dynamics(run.recording, [run.layer]) for run in runs]
    panels: dict[str, list[Series]] = {
        "training batch loss (smoothed)": [],
        "validation accuracy": [],
        "CKA of the layer to its final step": [],
        "relative change of the layer (log10)": [],
    }
    legend = []
    for index, (run, result) in enumerate(zip(runs, dynamics, strict=True)):
        color = RUN_COLORS[index % len(RUN_COLORS)]
        x = _curve_positions(run, align)
        timeline = run.recording.timeline
        raw_loss = timeline.series("batch_loss")[1]
        batch_loss = smooth(raw_loss)
        val_steps, val_acc = timeline.series("val/acc")
        val_x = np.interp(val_steps, timeline.global_steps, x) if len(val_steps) else np.zeros(0)
        layer = result.layers[run.layer]
        label = f"{run.label} ({run.layer})"
        panels["training batch loss (smoothed)"].insert(index, Series("", x, raw_loss, faint(color), width=1.0))
        panels["training batch loss (smoothed)"].append(Series(label, x, batch_loss, color, width=2.0))
        panels["validation accuracy"].append(Series(label, val_x, val_acc, color, width=1.5, markers=True))
        panels["CKA of the layer to its final step"].append(Series(label, x, layer.cka_to_final, color, width=2.0))
        panels["relative change of the layer (log10)"].append(
            Series(label, x, log10_or_nan(layer.relative_change), color, width=1.5)
        )
        legend.append(Series(label, x, batch_loss, color, width=2.0))
    return panel_figure(
        [(title, series, title == "validation accuracy") for title, series in panels.items()],
        title=f"compared by {_X_LABELS[align]}",
        legend=legend,
        x_label=None if align == "step" else _X_LABELS[align],
    )


def _curve_positions(run: _Panel, align: str) -> np.ndarray:
    """The rows on a continuous axis: by epoch, how far through the epoch each row is counts too."""
    if align == "epoch":
        return fractional_epochs(run.recording.timeline.global_steps, run.recording.timeline.epochs)
    return run.positions.astype(np.float64)
