"""How a layer is drawn, decided before any frame is: the plan ``actrec render``, ``tensorboard`` and ``compare`` share.

Everything the user can get wrong (layers, steps, channels, sizes) is checked by :func:`make_plan`
before anything is written. Rows come from the recording's one thinning rule, channels and colour
scales from its layer views; this module adds the pixel-size decisions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from actrec.recording import ChannelChoice, LayerView, Recording, channel_axis, choose_probes, parse_channels
from actrec.recording.scale import ColourScale
from actrec.store import KIND_MAPS
from actrec.viewer.errors import ViewerError
from actrec.viewer.frames import (
    MAX_FRAME_WIDTH,
    FrameLayout,
    card_split,
    fit_tile_size,
    frame_height_width,
    frame_title,
)

MAX_TILE_SIZE = 512
"""Largest ``--tile-size``: a 28x28 map drawn 18x; beyond that frames only grow."""
MAX_FRAME_PIXELS = 40_000_000
"""Largest frame (or contact sheet) in pixels: 40 MB of palette indices, 120 MB as RGB."""
LARGE_RENDER_BYTES = 100_000_000
"""Estimated output size above which a render warns before it starts."""
_BYTES_PER_PIXEL = 0.1  # GIF frame deltas: measured ~10 frame pixels per byte on real runs

__all__ = [
    "LARGE_RENDER_BYTES",
    "MAX_FRAME_PIXELS",
    "MAX_TILE_SIZE",
    "LayerPlan",
    "Plan",
    "card_groups",
    "check_tile_size",
    "frame_layout",
    "layer_frames",
    "make_plan",
    "plan_layer",
    "layer_rows",
    "row_title",
    "sheet_frame",
]


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
        drawn_shape: one probe's drawn activation shape (after the channel choice).
        text_scale: multiplies every font size of the frames.
        probes: positions into the probe set of the probes drawn (:func:`actrec.recording.choose_probes`),
            or ``None`` for all.
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
    probes: tuple[int, ...] | None = None

    @property
    def axis(self) -> int:
        """The channel (maps) or unit axis of an array ending in the per-probe shape."""
        return channel_axis(self.kind)

    def selected(self, activations: np.ndarray) -> np.ndarray:
        """The drawn probes and channels of an array ending in ``(P, *per-probe shape)`` (a new array if any
        are left out)."""
        if self.probes is not None:
            activations = np.take(activations, self.probes, axis=-len(self.drawn_shape) - 1)
        if self.select is None:
            return activations
        return np.take(activations, self.select, axis=self.axis)

    def drawn_predictions(self, predictions: np.ndarray) -> np.ndarray:
        """The drawn probes' entries of an array ending in the probe axis (predictions, labels)."""
        return predictions if self.probes is None else np.take(predictions, self.probes, axis=-1)

    def drawn_outputs(self, outputs: np.ndarray) -> np.ndarray:
        """The drawn probes' entries of stored outputs ``(..., P, K)``."""
        return outputs if self.probes is None else np.take(outputs, self.probes, axis=-2)


def check_tile_size(tile_size: int) -> int:
    """Return ``tile_size`` if it lies in ``4 .. MAX_TILE_SIZE``.

    Raises:
        ViewerError: it does not.
    """
    if not 4 <= tile_size <= MAX_TILE_SIZE:
        raise ViewerError(f"tile_size must be between 4 and {MAX_TILE_SIZE} pixels, got {tile_size}.")
    return tile_size


def plan_layer(
    view: LayerView,
    choice: ChannelChoice | str | None,
    tile_size: int,
    num_probes: int,
    max_frame_width: int = MAX_FRAME_WIDTH,
    text_scale: float = 1.0,
    probes: tuple[int, ...] | None = None,
) -> tuple[LayerPlan, list[str]]:
    """Decide how one layer is drawn: kind, channels, colour scale and tile size; plus notes for the user.

    Raises:
        RecordingError: the layer's shape cannot be drawn, or the choice names a channel it lacks.
        ViewerError: a frame would be too large.
    """
    name, kind, shape = view.name, view.kind, view.sample_shape
    num_probes = num_probes if probes is None else len(probes)  # the drawn probes set the width
    channels = view.channel_plan(choice)
    notes = [channels.note] if channels.note else []
    scale = view.scale_for(channels.select)
    if scale.note:  # the declared scale kind did not fit the values: say which rule drew them
        notes.append(f"{name}: {scale.note}")
    labels = channels.labels
    drawn_shape = (len(labels), *shape[1:]) if kind == KIND_MAPS else (*shape[:-1], len(labels))
    fitted = fit_tile_size(kind, drawn_shape, num_probes, tile_size, max_frame_width, text_scale)
    height, frame_width = frame_height_width(kind, drawn_shape, num_probes, fitted, text_scale)
    if frame_width > max(max_frame_width, MAX_FRAME_WIDTH):
        if kind == KIND_MAPS:  # channels are rows: the width is the probes side by side
            cause = (
                f"from its {num_probes} probes side by side; "
                "fewer --probes or a smaller --tile-size make them narrower."
            )
        else:
            cause = (
                f"({num_probes} probes x {len(labels)} units); fewer --probes, fewer --channels or a smaller "
                "--tile-size help."
            )
        notes.append(f"{name}: frames are {frame_width} pixels wide, {cause}")
    if height * frame_width > MAX_FRAME_PIXELS:
        raise ViewerError(
            f"a frame of {name} would be {frame_width} x {height} pixels, over the {MAX_FRAME_PIXELS:,} pixel "
            "limit; choose fewer --channels or a smaller --tile-size."
        )
    nonfinite_steps = view.nonfinite_rows()
    if nonfinite_steps:
        notes.append(
            f"{name}: {nonfinite_steps} of {view.num_rows} recorded steps hold NaN or infinite values, drawn amber "
            '("NaN/inf" in the legend); colour scales come from the finite values.'
        )
    plan = LayerPlan(
        name, kind, channels.select, labels, scale, fitted, nonfinite_steps, drawn_shape, text_scale, probes
    )
    return plan, notes


@dataclass(frozen=True)
class Plan:
    """What a render or export will do, decided (and validated) before anything is written."""

    num_rows: int
    global_steps: np.ndarray
    rows: np.ndarray
    layers: list[str]
    layer_plans: dict[str, LayerPlan]
    notes: list[str]
    frame_pixels: int


def make_plan(
    recording: Recording,
    layers: Sequence[str] | None,
    start: int | None,
    stop: int | None,
    stride: int,
    tile_size: int,
    channels: str | None = None,
    frames_per_layer: int = 1,
    max_frame_width: int = MAX_FRAME_WIDTH,
    text_scale: float = 1.0,
    probes: str | None = None,
    bytes_per_pixel: float = _BYTES_PER_PIXEL,
) -> Plan:
    """Check everything a render or export depends on, and fix the rows, channels and colours to draw.

    Args:
        recording: the open run (its rows as of opening: rows flushed later belong to the next render).
        layers: layer names, or ``None`` for all.
        start: first training step; ``stop``: the step to stop before; ``stride``: every stride-th row
            (:meth:`actrec.recording.Timeline.thin`: the last row of the range included).
        tile_size: pixels of a tile's longer side.
        channels: the channel choice (see :func:`actrec.recording.parse_channels`).
        frames_per_layer: images written per layer and row (for the size estimate).
        max_frame_width: shrink tiles (down to a minimum) for frames to fit this many pixels across.
        text_scale: multiplies every font size of the frames.
        probes: the probes to draw (see :func:`actrec.recording.choose_probes`: indices into the probe
            set; default all up to ten, else the first ten, with a note naming ``--probes``).
        bytes_per_pixel: output bytes per frame pixel, for the size estimate (the format's; GIF's by default).

    Raises:
        ViewerError: an option is out of range, or a frame would be too large.
        RecordingError: a layer is unknown or cannot be drawn, or no recorded step lies in ``[start, stop)``.
    """
    check_tile_size(tile_size)
    choice = parse_channels(channels)
    names = recording.check_layers(list(layers) if layers else None)
    timeline = recording.timeline
    rows = timeline.thin(start, stop, stride)
    try:
        num_probes = recording.num_probes
    except (KeyError, OSError):
        raise ViewerError(f"{recording.store_path} has no readable probes, so its frames cannot be labelled.") from None
    drawn_probes, probe_note = choose_probes(probes, num_probes)
    layer_plans: dict[str, LayerPlan] = {}
    notes: list[str] = [probe_note] if probe_note else []
    pixels = 0
    for name in names:
        plan, layer_notes = plan_layer(
            recording.layer(name), choice, tile_size, num_probes, max_frame_width, text_scale, drawn_probes
        )
        layer_plans[name] = plan
        notes.extend(layer_notes)
        shown = num_probes if drawn_probes is None else len(drawn_probes)
        height, width = frame_height_width(plan.kind, plan.drawn_shape, shown, plan.tile_size)
        pixels += height * width * len(rows) * frames_per_layer
    estimate = pixels * bytes_per_pixel
    if estimate > LARGE_RENDER_BYTES:
        notes.insert(
            0,
            f"this will write roughly {estimate / 1e6:,.0f} MB ({len(names)} layer(s) x {len(rows)} step(s)); "
            "--stride, --steps, --layers or fewer --channels make it smaller.",
        )
    return Plan(timeline.num_rows, timeline.global_steps, rows, names, layer_plans, notes, pixels)


def card_groups(plan: LayerPlan, per_image: int) -> list[tuple[LayerPlan, str]]:
    """Split a maps layer's drawn channels into images of ``per_image`` channels, each with a tag suffix.

    Each group's plan selects from the drawn channels (its ``select`` indexes them, on ``axis``).
    One group (the plan itself, no suffix) when ``per_image`` is 0 or the layer is narrow enough.
    """
    split = card_split(plan.kind, plan.labels, per_image)
    if len(split) == 1:
        return [(plan, "")]
    groups = []
    for positions, suffix in split:
        labels = tuple(plan.labels[i] for i in positions)
        group = dataclasses.replace(
            plan, select=positions, labels=labels, drawn_shape=(len(positions), *plan.drawn_shape[1:])
        )
        groups.append((group, suffix))
    return groups


def row_title(recording: Recording, layer: str, row: int) -> str:
    """The label burned into a frame of ``layer`` at ``row``: layer, training step and epoch."""
    timeline = recording.timeline
    return frame_title(layer, int(timeline.global_steps[row]), int(timeline.epochs[row]))


def frame_layout(recording: Recording, plan: LayerPlan, rows: np.ndarray) -> FrameLayout:
    """The frame layout of a layer's plan over ``rows`` of a recording (titles sized for the longest)."""
    # The colour scale was fixed by the plan over the whole store, not just the drawn range,
    # so renders of different ranges of one run share their colours.
    probes = recording.probes
    longest = max((row_title(recording, plan.name, row) for row in (rows[0], rows[-1])), key=len)
    images = probes.images if plan.probes is None else np.take(probes.images, plan.probes, axis=0)
    labels = plan.drawn_predictions(np.asarray(probes.labels))
    output = recording.output_drawing
    return FrameLayout(
        plan.drawn_shape,
        num_probes=len(labels),
        scale=plan.scale,
        probe_images=images,
        labels=labels if (labels >= 0).any() else None,  # probes without labels (noise, prompts): no row of "?"
        class_names=list(probes.class_names),
        tile_size=plan.tile_size,
        longest_title=longest,
        kind=plan.kind,
        channel_labels=plan.labels,
        nonfinite_legend=plan.nonfinite_steps > 0,
        text_scale=plan.text_scale,
        show_predictions=recording.shows_predictions,
        output=None if recording.shows_predictions else output,
    )


def layer_rows(
    recording: Recording, plan: LayerPlan, rows: np.ndarray, damaged: list[int] | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(row, drawn channels of the row)``; damaged rows go to ``damaged`` (raised when it is ``None``)."""
    for row, values in recording.layer(plan.name).iter_rows(rows, damaged):
        yield row, plan.selected(values)


def layer_frames(
    recording: Recording,
    plan: LayerPlan,
    layout: FrameLayout,
    rows: np.ndarray,
    damaged: list[int] | None = None,
    *,
    reuse: bool = False,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(row, frame)`` for each readable row, reading the store in bounded chunks.

    ``reuse``: every frame is the same array, redrawn at each row (see ``FrameLayout.frame``'s ``out``), for a
    caller that copies what it keeps, as the animation writers do; a new array per frame otherwise.
    """
    predictions = recording.timeline.predictions if recording.shows_predictions else None
    draws_outputs = not recording.shows_predictions
    canvas = None
    for row, values in layer_rows(recording, plan, rows, damaged):
        predicted = None if predictions is None else plan.drawn_predictions(predictions[row])
        # One row of outputs a frame: a language model's (T, V) scores per probe are too large to read at once.
        outputs = plan.drawn_outputs(recording.outputs(np.asarray([row]))[0]) if draws_outputs else None
        title = row_title(recording, plan.name, row)
        frame = layout.frame(values, title=title, predictions=predicted, outputs=outputs, out=canvas)
        canvas = frame if reuse else None
        yield row, frame


def sheet_frame(recording: Recording, plan: LayerPlan, layout: FrameLayout, sheet_rows: np.ndarray) -> np.ndarray:
    """The contact sheet of a layer: its frames at ``sheet_rows`` side by side, captioned with step and epoch."""
    timeline = recording.timeline
    read = recording.layer(plan.name).read(sheet_rows)
    captions = [f"step {int(timeline.global_steps[row])} · epoch {int(timeline.epochs[row])}" for row in read.rows]
    predictions = plan.drawn_predictions(timeline.predictions[read.rows]) if recording.shows_predictions else None
    outputs = None if recording.shows_predictions else plan.drawn_outputs(recording.outputs(read.rows))
    return layout.sheet(
        plan.selected(read.values), captions=captions, title=plan.name, predictions=predictions, outputs=outputs
    )
