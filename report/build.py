"""Build one self-contained HTML report of a run: every layer on one step slider, curves, dynamics, probes.

The page needs no server and no network: every picture is inlined. Each layer's frames are its tiles
at the map's own resolution (a 7x7 map is 49 pixels) as palette indices, every shown step's minus the
step before's (modulo 256), deflated together (:func:`encode_frames`): the page inflates them once
(the browser's ``DecompressionStream``), paints a step into a canvas through the palette, and the
browser scales it up without smoothing; gutters between tiles are drawn by CSS, so they cost nothing per
frame. Consecutive steps differ little, so this is ~5x smaller than a PNG per frame (the quickstart's
379 steps: 5.6 MB against 28.9 MB). The probes' labels and predictions are text, the curves inline SVG.
"""

from __future__ import annotations

import base64
import html
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from actrec.dynamics import (
    DEFAULT_THRESHOLD,
    DYNAMICS_FILENAME,
    Dynamics,
    DynamicsError,
    compute_dynamics,
    read_dynamics,
)
from actrec.dynamics.plots import layer_colors, log10_or_nan
from actrec.errors import UserError
from actrec.recording import (
    OUTPUT_IMAGE,
    OUTPUT_TOKENS,
    Recording,
    Timeline,
    auto_stride,
    choose_probes,
    colors,
    finite_range,
)
from actrec.recording.scale import ColourScale
from actrec.report.charts import Line, css_color, svg_chart
from actrec.report.page import render_page
from actrec.viewer import encode_png
from actrec.viewer.curves import smooth
from actrec.viewer.frames import as_colour_scale, drawn_maps
from actrec.viewer.output import atomic_path, prepare_out_dir

REPORT_FILENAME = "report.html"
DEFAULT_MAX_FRAMES = 600
"""More recorded steps than this are thinned to every k-th (the last is always kept), bounding the file."""


class ReportError(UserError):
    """A report cannot be made; the message is one sentence for the user."""


@dataclass(frozen=True)
class ReportResult:
    """What :func:`build_report` wrote."""

    path: Path
    global_steps: np.ndarray
    layers: tuple[str, ...]
    stride: int
    size_bytes: int
    notes: tuple[str, ...] = ()


def unit_maps(sample_shape: Sequence[int]) -> tuple[int, int, int]:
    """``(rows, height, width)`` each probe's activation is drawn as, by the viewer's frames' rule
    (:func:`actrec.viewer.frames.drawn_maps`): ``(C, H, W)`` maps as they are, ``(T, D)`` as one ``T x D``
    heatmap, ``(D,)`` as one row.

    Raises:
        ReportError: the shape cannot be drawn.
    """
    try:
        return drawn_maps(sample_shape)
    except ValueError as error:
        raise ReportError(str(error)) from None


def tile_grid(activations: np.ndarray, scale: ColourScale | float) -> np.ndarray:
    """Palette indices of one step's tiles: channels down, probes across, each at its map's resolution.

    Args:
        activations: ``(P, *sample_shape)``.
        scale: the layer's colour scale (a number means the diverging ``-scale .. +scale``).

    Returns:
        A new ``(C * H, P * W)`` uint8 array (see :mod:`actrec.recording.colors`).
    """
    probes = activations.shape[0]
    channels, height, width = unit_maps(activations.shape[1:])
    maps = np.asarray(activations).reshape(probes, channels, height, width)
    indices = as_colour_scale(scale).indices(maps)
    return np.ascontiguousarray(indices.transpose(1, 2, 0, 3).reshape(channels * height, probes * width))


def encode_frames(grids: Sequence[np.ndarray]) -> str:
    """A layer's frames as the page holds them: each ``(H, W)`` grid of palette indices minus the one
    before (modulo 256; the first as it is), stacked, deflated, in base64.

    Between steps most tiles keep their colours, so the differences are mostly runs of zeros: zlib's
    run-length strategy takes them nearly as well as level 9 and ~75x faster (the quickstart's 6 layers x
    379 steps: 5.6 MB in 0.19 s; level 1 7.1 MB / 0.20 s, level 6 5.4 MB / 1.3 s, level 9 5.1 MB / 14.6 s).
    """
    if not len(grids):
        return ""
    stacked = np.stack([np.asarray(grid, dtype=np.uint8) for grid in grids])
    deltas = stacked.copy()
    np.subtract(stacked[1:], stacked[:-1], out=deltas[1:])  # uint8: modulo 256
    compressor = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    return base64.b64encode(compressor.compress(deltas.tobytes()) + compressor.flush()).decode("ascii")


def decode_frames(text: str, count: int, height: int, width: int) -> np.ndarray:
    """``(count, height, width)`` palette indices from :func:`encode_frames` (what the page's script does)."""
    if count == 0:
        return np.zeros((0, height, width), np.uint8)
    deltas = np.frombuffer(zlib.decompress(base64.b64decode(text)), np.uint8).reshape(count, height, width)
    return np.cumsum(deltas, axis=0, dtype=np.uint8)


def _b64_png(indices: np.ndarray) -> str:
    # Level 1: 40% faster to encode than 6 for 4% more bytes on these small frames.
    return base64.b64encode(encode_png(indices, compress_level=1)).decode("ascii")


def _is_picture(images: np.ndarray) -> bool:
    """Whether probe inputs can be drawn: ``(P, H, W)`` or ``(P, C, H, W)``, as the viewer's frames decide."""
    return np.ndim(images) in (3, 4)


def probe_strip(images: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Pictures side by side in grey (channels averaged), ``low`` black and ``high`` white (default: their
    finite range): the probe inputs, and a reconstruction or generated picture on its own fixed scale."""
    images = np.asarray(images, np.float32)
    if images.ndim == 4:
        images = images.mean(axis=1)
    if low is None or high is None:
        low, high = finite_range(images)
    grey = colors.grey_indices(images, low, high)
    return np.ascontiguousarray(grey.transpose(1, 0, 2).reshape(images.shape[1], -1))


_OUTPUT_VALUES_SHOWN = 6
"""Output values listed per probe in the report (more end in an ellipsis; ``actrec render`` draws them all)."""


def _output_data(recording: Recording, rows: np.ndarray, drawn: tuple[int, ...] | None) -> dict[str, Any]:
    """What the report shows of a non-classifier's outputs at each shown row: its pictures (one PNG a row, the
    probes side by side) or, per probe, a line of text (the predicted next token ids, or the output values).

    Read one row at a time: a language model's (T, V) scores per probe are too large to read at once.
    """
    drawing = recording.output_drawing
    frames: list[str] = []
    texts: list[list[str]] = []
    for row in rows.tolist():
        values = drawing.drawn(_pick(recording.outputs([row])[0], drawn))
        if drawing.mode == OUTPUT_IMAGE:
            frames.append(_b64_png(probe_strip(values, drawing.low, drawing.high)))
        elif drawing.mode == OUTPUT_TOKENS:
            texts.append([" ".join(str(i) if i >= 0 else "?" for i in ids) for ids in values.tolist()])
        else:
            texts.append([_values_text(probe_values) for probe_values in values])
    if drawing.mode == OUTPUT_IMAGE:
        return {"label": drawing.label, "frames": frames, "shape": list(drawing.shape[-2:])}
    return {"label": drawing.label, "texts": texts}


def _values_text(values: np.ndarray) -> str:
    shown = " ".join(f"{float(v):.3g}" for v in values[:_OUTPUT_VALUES_SHOWN])
    return shown + (" …" if len(values) > _OUTPUT_VALUES_SHOWN else "")


def _layer_frames(
    recording: Recording, name: str, rows: np.ndarray, scale: ColourScale, drawn: tuple[int, ...] | None = None
) -> list[np.ndarray]:
    """Each row's tiles of the ``drawn`` probes (``None``: all) as palette indices."""
    return [tile_grid(_pick(values, drawn), scale) for _, values in recording.layer(name).iter_rows(rows)]


def _pick(values: np.ndarray, drawn: tuple[int, ...] | None, axis: int = 0) -> np.ndarray:
    """The drawn probes' entries along ``axis`` (``None``: every probe): the probes render draws."""
    return np.asarray(values) if drawn is None else np.take(values, drawn, axis=axis)


@dataclass(frozen=True)
class _Curves:
    """What the training charts draw of one run (plain data: its store may be closed by then)."""

    label: str
    timeline: Timeline
    dynamics: Dynamics


def _run_dynamics(recording: Recording, threshold: float) -> Dynamics:
    """The run's dynamics: saved by ``actrec dynamics`` for exactly these rows, else computed now."""
    return _saved_dynamics(recording, threshold) or compute_dynamics(recording, threshold=threshold)


def _saved_dynamics(recording: Recording, threshold: float) -> Dynamics | None:
    """``dynamics.npz`` in the run folder (where ``actrec dynamics`` writes it) when it was computed on
    exactly these rows with this threshold.

    Computing dynamics reads every row once (seconds for the article's run, minutes for 100,000 steps);
    ``actrec dynamics`` saves them, and a report of the same rows reuses them.
    """
    store, num_rows = recording.store, recording.num_rows
    path = recording.run_dir / DYNAMICS_FILENAME
    if not path.exists():
        return None
    try:
        saved = read_dynamics(path)
    except DynamicsError:
        return None
    fresh = (
        saved.run_id == store.run_id
        and len(saved.global_steps) == num_rows
        and saved.threshold == threshold
        and list(saved.layers) == store.layer_names
    )
    return saved if fresh else None


def build_report(
    run: str | os.PathLike,
    *,
    compare: Sequence[str | os.PathLike] = (),
    out: str | os.PathLike | None = None,
    stride: int | None = None,
    max_frames: int = DEFAULT_MAX_FRAMES,
    threshold: float = DEFAULT_THRESHOLD,
    fps: float = 10.0,
    probes: str | None = None,
) -> ReportResult:
    """Write ``RUN/report.html`` (or ``out``): one page, no server or network needed to view it.

    Args:
        run: a run folder, an experiment folder (its newest version) or a store file.
        compare: other runs whose layers of the same names are shown beside this run's, aligned by
            training step (the latest of their steps at or before the shown one), and whose curves
            are drawn dashed over this run's.
        out: the HTML file to write (default: ``report.html`` in the run folder).
        stride: show every ``stride``-th recorded step (default: every step up to ``max_frames``).
        max_frames: the most steps shown when ``stride`` is not given.
        threshold: CKA level for the settling steps.
        fps: play speed in steps per second.
        probes: the probes to show, chosen as ``actrec render`` chooses them
            (:func:`actrec.recording.choose_probes`: default all up to ten, else the first ten).

    Raises:
        StoreError: a store is missing, damaged, foreign or too new.
        ReportError: a store has no steps, or an option is out of range.
        ViewerError: the output folder is not writable.
        RunError: a run cannot be resolved.
    """
    if max_frames < 2:
        raise ReportError(f"max_frames must be at least 2, got {max_frames}.")
    if not 0 < fps <= 60:
        raise ReportError(f"fps must be in (0, 60], got {fps:g}.")
    with Recording.open(run) as recording:
        timeline = recording.timeline
        if stride is None:  # the one rule's stride=None: at most max_frames rows, plus the last
            stride = auto_stride(timeline.num_rows, max_frames)
        rows = timeline.thin(stride=stride)  # the one thinning rule: ``actrec render --stride`` shows these steps
        primary = _Curves(recording.name, timeline, _run_dynamics(recording, threshold))
        target = Path(out) if out is not None else recording.run_dir / REPORT_FILENAME
        prepare_out_dir(target.parent)
        probe_set = recording.probes
        drawn, probe_note = choose_probes(probes, recording.num_probes)
        # The read side's rule: a damaged row is left out and named. The page shows one step for every layer,
        # so a step damaged in any layer is left out of the whole page.
        frames: dict[str, dict[int, np.ndarray]] = {}
        damaged: dict[int, list[str]] = {}
        for name in recording.layers:
            view = recording.layer(name)
            missing: list[int] = []
            frames[name] = {
                row: tile_grid(_pick(values, drawn), view.scale) for row, values in view.iter_rows(rows, missing)
            }
            for row in missing:
                damaged.setdefault(row, []).append(name)
        notes = [probe_note] if probe_note else []
        notes += [
            f"step {int(timeline.global_steps[row])} of layer {', '.join(names)} is damaged (it failed its integrity "
            "check) and was left out."
            for row, names in sorted(damaged.items())
        ]
        rows = np.asarray([row for row in rows.tolist() if row not in damaged], dtype=np.int64)
        if rows.size == 0:
            raise ReportError("every shown step is damaged (it failed its integrity check); nothing to report.")
        predictions = _pick(timeline.predictions[rows], drawn, axis=-1)
        layers: list[dict[str, Any]] = []
        for name in recording.layers:
            channels, height, width = unit_maps(recording.layer(name).sample_shape)
            layers.append(
                {
                    "name": name,
                    "channels": channels,
                    "height": height,
                    "width": width,
                    "scaleLabel": _scale_label(recording.layer(name).scale),
                    "frameCount": len(rows),
                    "frames": encode_frames([frames[name][row] for row in rows.tolist()]),
                }
            )
        shown_steps = timeline.global_steps[rows]
        compared = [_compare_data(path, shown_steps, threshold, drawn) for path in compare]
        data = {
            "run": primary.label,
            "fps": fps,
            "stride": stride,
            "recordedSteps": int(timeline.num_rows),
            "steps": shown_steps.tolist(),
            "epochs": timeline.epochs[rows].tolist(),
            "classNames": list(probe_set.class_names),
            "labels": _pick(probe_set.labels, drawn).tolist(),
            # The recording's one rule: only a classifier's output has predictions (no row, no ✓/✗ otherwise).
            "predictions": predictions.tolist() if recording.shows_predictions else None,
            # Any other task shows its outputs themselves: pictures, next token ids or values.
            "outputs": None if recording.shows_predictions else _output_data(recording, rows, drawn),
            # Token ids, feature vectors and volumes are not pictures: their predictions are still listed.
            "probeImage": _b64_png(probe_strip(_pick(probe_set.images, drawn)))
            if _is_picture(probe_set.images)
            else None,
            "probeShape": list(np.asarray(probe_set.images).shape[-2:]) if _is_picture(probe_set.images) else None,
            "layers": layers,
            # RGB of every palette index: the page paints frames' indices through it.
            "palette": colors.PALETTE.tolist(),
            "dynamics": _dynamics_rows(primary.dynamics, rows),
            "compare": [entry for entry, _ in compared],
        }
        charts = _charts(primary, [run_data for _, run_data in compared])
        page = render_page(data, charts=charts, title=f"actrec report · {primary.label}")
    with atomic_path(target) as partial:
        partial.write_text(page, encoding="utf-8")
    names = tuple(layer["name"] for layer in layers)
    return ReportResult(target, shown_steps, names, stride, target.stat().st_size, tuple(notes))


def _scale_label(scale: ColourScale) -> str:
    """The colour bar in words: ``"-1 .. +1, fixed (tanh)"`` or ``"0 .. 2.5, 99.5th percentile of |a|"``."""
    labels = [text for text, _ in scale.bar_labels()]
    mismatch = f" ({scale.note.split(';')[0]})" if scale.note else ""  # the declared kind did not fit
    return f"{labels[0]} .. {labels[-1]}" + (f", {scale.rule}" if scale.rule else "") + mismatch


def _dynamics_rows(dynamics: Dynamics, rows: np.ndarray) -> list[dict]:
    def listed(values: np.ndarray) -> list[float | None]:
        return [None if not np.isfinite(v) else round(float(v), 4) for v in values[rows]]

    return [
        {
            "name": layer.name,
            "settling": layer.settling_step,
            "dead": list(layer.always_constant),
            "channels": layer.channels,
            "ckaFinal": listed(layer.cka_to_final),
            "ckaFirst": listed(layer.cka_to_first),
            "change": listed(layer.relative_change),
            "saturated": listed(layer.saturated_fraction),
        }
        for layer in dynamics.layers.values()
    ]


def _compare_data(
    run: str | os.PathLike, shown_steps: np.ndarray, threshold: float, drawn: tuple[int, ...] | None
) -> tuple[dict, _Curves]:
    with Recording.open(run) as recording:
        other = _Curves(recording.name, recording.timeline, _run_dynamics(recording, threshold))
        their_steps = other.timeline.global_steps
        # Aligned by training step: the latest of their rows at or before each shown step (-1: none yet).
        index = other.timeline.rows_at_or_before(shown_steps)
        used = np.unique(index[index >= 0])
        position = {int(row): i for i, row in enumerate(used.tolist())}
        layers = []
        for name in recording.layers:
            channels, height, width = unit_maps(recording.layer(name).sample_shape)
            scale = recording.layer(name).scale
            frames = _layer_frames(recording, name, used, scale, drawn) if used.size else []
            layers.append(
                {
                    "name": name,
                    "channels": channels,
                    "height": height,
                    "width": width,
                    "frameCount": len(frames),
                    "frames": encode_frames(frames),
                }
            )
        entry = {
            "run": other.label,
            "index": [position.get(int(i), -1) for i in index.tolist()],
            "steps": their_steps[used].tolist(),
            "layers": layers,
            "settling": {name: layer.settling_step for name, layer in other.dynamics.layers.items()},
        }
    return entry, other


_RUN_DASHES = (False, True, True, True)


def _charts(primary: _Curves, others: Sequence[_Curves]) -> dict[str, list[str]]:
    """The SVG charts: training curves (all runs), and the primary run's dynamics per layer."""
    training = []
    for kind, name, percent in (("loss", "loss", False), ("acc", "accuracy", True)):
        lines = []
        for index, run_data in enumerate([primary, *others]):
            dashed = index > 0
            suffix = "" if index == 0 else f" ({run_data.label})"
            steps, batch = run_data.timeline.series(f"batch_{kind}")
            if index == 0:
                lines.append(Line("train batch", steps, batch, "#b0cbe4", width=1.0))
            lines.append(Line("train batch, smoothed" + suffix, steps, smooth(batch), "#2166ac", 2.0, dashed))
            val_steps, val_values = run_data.timeline.series(f"val/{kind}")
            lines.append(Line("validation" + suffix, val_steps, val_values, "#e66101", 1.5, dashed, markers=True))
        y_range = (0.0, 1.0) if percent else None
        training.append(svg_chart(name, lines, percent=percent, y_range=y_range))
    layers = list(primary.dynamics.layers.values())
    palette = [css_color(rgb) for rgb in layer_colors(len(layers))]
    steps = primary.dynamics.global_steps
    dynamics = []
    for title, key, percent, fixed in (
        ("CKA to the final step", "cka_to_final", False, None),
        ("CKA to the first step", "cka_to_first", False, None),
        ("relative change per recorded step (log10)", "relative_change", False, None),
        ("saturated fraction (|a| > 0.99)", "saturated_fraction", True, None),
    ):
        lines = []
        for layer, color in zip(layers, palette, strict=True):
            values = getattr(layer, key)
            values = log10_or_nan(values) if key == "relative_change" else values
            lines.append(Line(layer.name, steps, values, color, 1.8))
        dynamics.append(svg_chart(title, lines, percent=percent, y_range=fixed))
    legend = "".join(
        f'<span class="swatch" style="background:{color}"></span>{html.escape(layer.name)} '
        for layer, color in zip(layers, palette, strict=True)
    )
    training_legend = (
        '<span class="swatch" style="background:#b0cbe4"></span>train batch'
        '<span class="swatch" style="background:#2166ac"></span>train batch, smoothed'
        '<span class="swatch" style="background:#e66101"></span>validation'
        + "".join(f" · dashed: {html.escape(other.label)}" for other in others)
    )
    return {"training": training, "dynamics": dynamics, "legend": [legend], "training_legend": [training_legend]}
