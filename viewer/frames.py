"""Frames: one layer's activations at one step, tiled, coloured and labelled, as palette indices.

A frame, top to bottom: a header (``layer · step N · epoch E`` and the colour bar with its
``-s, 0, +s`` labels), each probe's true class, the probe inputs (pictures in grey or colour, token
ids as numbers, other vectors as a red-blue strip), the probes' outputs at that step when the run is
not a classifier (``output``: a reconstruction or generated picture drawn like the inputs, the
predicted next token ids of a language model, or the output values as a red-blue strip), one row of
tiles per channel (one tile per probe, nearest-neighbour upscaled to ``tile_size``), and, for a
classifier, each probe's predicted class with a green tick when right or a red cross when wrong.

:class:`FrameLayout` computes everything that does not change between steps once (geometry, the
static pixels, a gather map from activation elements to frame pixels), so a frame costs one
quantisation of the small activation array and one gather. Functions here take arrays and return
new arrays; nothing is written to disk and no input is modified.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from actrec.recording import (
    DEFAULT_MAX_CHANNELS,
    INPUT_IDS,
    INPUT_IMAGE,
    OUTPUT_IMAGE,
    OUTPUT_TOKENS,
    OUTPUT_VALUES,
    OutputDrawing,
    colors,
    finite_range,
    input_kind,
    largest_magnitude,
    layer_kind,
)
from actrec.recording.scale import ColourScale, LiveScaleState, format_limit, live_scale
from actrec.store import KIND_MAPS, KIND_TOKENS
from actrec.viewer import _text

TILE_SIZE = 56
"""Default tile edge in pixels: 28x28 maps are doubled, 14x14 quadrupled, 7x7 drawn 8x."""

MAX_FRAME_WIDTH = 1600
"""Frames are sized to fit this many pixels across (readable at 100% on a laptop screen) when possible."""
CARD_FRAME_WIDTH = 360
"""TensorBoard images shrink their tiles to fit this width: the Images tab's cards show about 350 px."""
CARD_TEXT_SCALE = 1.4
"""TensorBoard images' text is 1.4x the render's, so it stays legible shrunk to a Time Series card."""
CARD_CHANNELS = 4
"""Channels per TensorBoard image: Time Series cards fit images into about 220 px of height."""
MIN_TILE_SIZE = 8
MIN_UNIT_HEIGHT = 8
"""A vector layer's row is at least this many pixels high, however narrow its units: a strip stays visible."""
"""The smallest tile :func:`fit_tile_size` shrinks to for a frame to fit :data:`MAX_FRAME_WIDTH`."""

_GUTTER = 3
_MARGIN = 12
_TITLE_SIZE = 15
_LABEL_SIZE = 11
_CAPTION_SIZE = 13
_MARK_SIZE = 9
_COLORBAR_WIDTH = 151  # odd, so the middle pixel is the exact zero colour
_COLORBAR_HEIGHT = 10
_SECTION_GAP = 6  # between the probe inputs and the first channel row
_PANEL_GAP = 24  # between the panels of a contact sheet
MAX_SHEET_WIDTH = 1600
"""Widest contact sheet, in pixels, before its panels wrap: it still reads when fitted to a laptop screen."""


def frame_title(layer: str, step: int, epoch: int) -> str:
    """The label burned into every frame: ``"net.conv1 · step 120 · epoch 2"``."""
    return f"{layer} · step {step} · epoch {epoch}"


NONFINITE_LABEL = "NaN/inf"
"""The legend's name for the non-finite colour."""


def format_scale(scale: float) -> str:
    """How the colour bar labels ``scale``: ``"1"`` for tanh layers, else 3 significant digits."""
    return format_limit(scale)


def as_colour_scale(scale: ColourScale | float) -> ColourScale:
    """``scale`` as a :class:`ColourScale`; a plain number means the diverging ``-scale .. +scale``."""
    if isinstance(scale, ColourScale):
        return scale
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite number, got {scale!r}.")
    return ColourScale(one_sided=False, limit=float(scale))


def tile_shape(height: int, width: int, tile_size: int) -> tuple[int, int]:
    """Pixel ``(height, width)`` of a ``height x width`` map whose longer side is drawn ``tile_size``."""
    longest = max(height, width)
    return max(1, round(tile_size * height / longest)), max(1, round(tile_size * width / longest))


def upscale_nearest(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of the last two axes of ``image`` to ``height x width`` (a new array)."""
    rows = np.arange(height) * image.shape[-2] // height
    cols = np.arange(width) * image.shape[-1] // width
    return image[..., rows[:, None], cols[None, :]]


def heatmap_cell(units: int, tile_size: int) -> int:
    """Pixel width of one unit in a token or vector heatmap: the heatmap is about twice ``tile_size`` wide."""
    return max(1, min(tile_size // 4, round(2 * tile_size / max(units, 1))))


def _grid(kind: str, shape: Sequence[int], tile_size: int) -> tuple[int, int, int, int, int]:
    """``(rows, map_height, map_width, tile_height, tile_width)`` of one probe's activation of ``shape``.

    Maps ``(C, H, W)``: one row of tiles per channel, each map's longer side ``tile_size``. Tokens
    ``(T, D)``: one heatmap per probe, tokens down and units across, in square cells. Vectors ``(D,)``:
    one heatmap row per probe, units across.
    """
    if kind == KIND_MAPS:
        channels, height, width = shape
        return (channels, height, width, *tile_shape(height, width, tile_size))
    if kind == KIND_TOKENS:
        tokens, units = shape
        cell = heatmap_cell(units, tile_size)
        return 1, tokens, units, tokens * cell, units * cell
    (units,) = shape
    cell = heatmap_cell(units, tile_size)
    return 1, 1, units, max(cell, tile_size // 4, MIN_UNIT_HEIGHT), units * cell


def drawn_maps(sample_shape: Sequence[int]) -> tuple[int, int, int]:
    """``(rows, map_height, map_width)``: the grid one probe's activation of ``sample_shape`` is drawn as.

    The frames' layout rule (see :func:`_grid`): ``(C, H, W)`` as ``C`` rows of ``H x W`` maps, ``(T, D)``
    as one ``T x D`` heatmap, ``(D,)`` as one ``1 x D`` heatmap row.

    Raises:
        ValueError: the shape has no kind (e.g. 4-D); the message is one sentence.
    """
    shape = tuple(int(n) for n in sample_shape)
    rows, height, width, _, _ = _grid(layer_kind(shape), shape, 1)
    return rows, height, width


def fit_tile_size(
    kind: str,
    sample_shape: Sequence[int],
    num_probes: int,
    tile_size: int,
    max_width: int = MAX_FRAME_WIDTH,
    text_scale: float = 1.0,
) -> int:
    """The largest tile size up to ``tile_size`` whose frame fits ``max_width`` pixels across.

    Never below :data:`MIN_TILE_SIZE` (or ``tile_size`` if that is smaller): many probes of a wide
    heatmap may still be wider, which callers warn about.
    """
    room = (max_width - 2 * _MARGIN - round(80 * text_scale)) // max(num_probes, 1) - _GUTTER
    floor = min(tile_size, MIN_TILE_SIZE)
    for size in range(tile_size, floor - 1, -1):
        _, _, _, _, width = _grid(kind, sample_shape, size)
        if max(width, size) <= room:
            return size
    return floor


def frame_height_width(
    kind: str, sample_shape: Sequence[int], num_probes: int, tile_size: int, text_scale: float = 1.0
) -> tuple[int, int]:
    """About how many pixels ``(height, width)`` a frame of this layer will be, without drawing it."""
    rows, _, _, tile_height, tile_width = _grid(kind, sample_shape, tile_size)
    column = max(tile_width, tile_size) + _GUTTER
    width = 2 * _MARGIN + round(80 * text_scale) + num_probes * column
    height = round(120 * text_scale) + tile_size + rows * (tile_height + _GUTTER)
    return height, width


class FrameLayout:
    """The geometry and static pixels of one layer's frames, computed once per layer.

    Args:
        sample_shape: one probe's activation shape as drawn (after any channel selection), e.g.
            ``(8, 14, 14)``.
        num_probes: number of probes (columns).
        scale: the colour scale (:func:`actrec.recording.scale.colour_scale`); a plain number means the
            diverging ``-scale`` red, 0 white, ``+scale`` blue.
        probe_images: ``(P, ...)`` probe inputs, drawn above the activations: ``(P, C, H, W)`` or
            ``(P, H, W)`` pictures (RGB in colour, other channel counts averaged into grey), ``(P, T)``
            token ids as numbers, other ``(P, Z)`` vectors as a red-blue strip; ``None`` leaves them out.
        labels: ``(P,)`` true classes, written above each column and used to mark predictions.
        class_names: names indexed by class; class numbers are shown when ``None``.
        tile_size: pixels of a tile's longer side.
        longest_title: the longest title the frames will carry, to size the header.
        show_predictions: reserve the row of predicted classes under the tiles.
        kind: ``"maps"``, ``"tokens"`` or ``"vector"``; ``None`` takes it from the rank of ``sample_shape``.
        channel_labels: the original index of each drawn channel (maps) or unit (tokens, vectors),
            when a selection is drawn; ``None`` numbers them from 0.
        nonfinite_legend: name the non-finite colour beside the colour bar.
        text_scale: multiplies every font size (TensorBoard's cards shrink images; larger text survives).
        output: how the probes' outputs are drawn (:class:`actrec.recording.OutputDrawing`); a row of them
            (``output``, or ``next id`` for token predictions) goes under the inputs, filled by each frame's
            ``outputs``. ``None`` (or a classifier's ``classes``) draws no output row.

    Raises:
        ValueError: an argument is out of range or shapes disagree.
    """

    def __init__(
        self,
        sample_shape: Sequence[int],
        *,
        num_probes: int,
        scale: ColourScale | float,
        probe_images: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        class_names: Sequence[str] | None = None,
        tile_size: int = TILE_SIZE,
        longest_title: str = "",
        show_predictions: bool = True,
        kind: str | None = None,
        channel_labels: Sequence[int] | None = None,
        nonfinite_legend: bool = False,
        text_scale: float = 1.0,
        output: OutputDrawing | None = None,
    ) -> None:
        if tile_size < 4:
            raise ValueError(f"tile_size must be at least 4 pixels, got {tile_size}.")
        if num_probes < 1:
            raise ValueError(f"num_probes must be at least 1, got {num_probes}.")
        self.colour_scale = as_colour_scale(scale)
        if probe_images is not None and np.ndim(probe_images) not in (2, 3, 4):
            probe_images = None  # no rule draws inputs of more axes
        if probe_images is not None and len(probe_images) != num_probes:
            raise ValueError(f"probe_images holds {len(probe_images)} images for {num_probes} probes.")
        if labels is not None and len(labels) != num_probes:
            raise ValueError(f"labels holds {len(labels)} entries for {num_probes} probes.")
        self.sample_shape = tuple(int(n) for n in sample_shape)
        self.kind = layer_kind(self.sample_shape) if kind is None else kind
        if layer_kind(self.sample_shape) != self.kind:
            raise ValueError(f"a {self.kind} layer cannot have per-probe shape {self.sample_shape}.")
        self.num_probes = num_probes
        self.scale = self.colour_scale.limit
        self.tile_size = tile_size
        self.nonfinite_legend = nonfinite_legend
        self._title_size = round(_TITLE_SIZE * text_scale)
        self._label_size = round(_LABEL_SIZE * text_scale)
        self._caption_size = round(_CAPTION_SIZE * text_scale)
        self._mark_size = round(_MARK_SIZE * text_scale)
        self._colorbar_width = 2 * int(_COLORBAR_WIDTH * text_scale / 2) + 1
        self._colorbar_height = round(_COLORBAR_HEIGHT * text_scale)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64).copy()
        self.class_names = None if class_names is None else list(class_names)
        self.show_predictions = show_predictions
        self.channels, self._map_height, self._map_width, self.tile_height, self.tile_width = _grid(
            self.kind, self.sample_shape, tile_size
        )
        self._elements = self._map_height * self._map_width
        units = self.channels if self.kind == KIND_MAPS else self._map_width
        if channel_labels is not None and len(channel_labels) != units:
            raise ValueError(f"channel_labels names {len(channel_labels)} channels of {units}.")
        self.channel_labels = list(range(units)) if channel_labels is None else [int(c) for c in channel_labels]
        self.output = output
        self._label_height = _text.text_size("Ag", self._label_size)[1]
        self._input_row, self._output_row = self._probe_rows(probe_images, output)
        self._input_tiles = None if self._input_row is None else self._input_row.paint(np.asarray(probe_images))
        widths = [row.width for row in (self._input_row, self._output_row) if row is not None]
        self.column_width = max([self.tile_width, *widths])
        self._row_label_width = max(_text.text_size(label, self._label_size)[0] for label in self._row_labels()) + 8
        self._body_with_labels = self._static_body(row_labels=True)
        self._body_plain = self._static_body(row_labels=False)
        title_width = _text.text_size(longest_title, self._title_size)[0] if longest_title else 0
        self._header_height, header_width, self._stacked = self._header_extent(
            title_width, self._body_with_labels.shape[1]
        )
        self.width = max(self._body_with_labels.shape[1], header_width)
        self.height = self._header_height + self._body_with_labels.shape[0]
        self._static_frame = np.full((self.height, self.width), colors.ZERO_INDEX, np.uint8)
        self._draw_header(self._static_frame, self.width, self._stacked)
        self._static_frame[self._header_height :, : self._body_with_labels.shape[1]] = self._body_with_labels
        self._gather_rows, self._gather_cols = self._gather_map()
        self._float16_table: np.ndarray | None = None
        self._table: np.ndarray | None = None
        self._regions: list[tuple[int, int, int, int]] | None = None
        self._prediction_stamps: dict[tuple[int, bool | None], np.ndarray] = {}

    # -- geometry --------------------------------------------------------------------------------

    def _probe_rows(
        self, probe_images: np.ndarray | None, output: OutputDrawing | None
    ) -> tuple[_ProbeRow | None, _ProbeRow | None]:
        """The rows of per-probe pictures above the grid: the inputs, and the outputs when they are drawn."""
        tile_size, size, height = self.tile_size, self._label_size, self._label_height
        base_width = max(self.tile_width, tile_size)
        input_row = None
        if probe_images is not None:
            images = np.asarray(probe_images)
            kind = input_kind(images)
            if kind == INPUT_IMAGE:
                low, high = finite_range(images)
                input_row = _picture_row("input", images.shape[1:], low, high, tile_size)
            elif kind != INPUT_IDS:
                input_row = _strip_row("input", images.shape[1], largest_magnitude(images), tile_size, size, height)
        output_row = None
        if output is not None and output.mode == OUTPUT_IMAGE:
            output_row = _picture_row(output.label, output.shape, output.low, output.high, tile_size)
        elif output is not None and output.mode == OUTPUT_VALUES:
            output_row = _strip_row(output.label, output.shape[0], output.high, tile_size, size, height)
        widths = [row.width for row in (input_row, output_row) if row is not None]
        width = max([base_width, *widths])
        if probe_images is not None and input_kind(np.asarray(probe_images)) == INPUT_IDS:
            ids = np.asarray(probe_images)
            input_row = _ids_row("input", ids.shape[1], int(np.max(ids)), width, size, height)
        if output is not None and output.mode == OUTPUT_TOKENS:
            output_row = _ids_row(output.label, output.shape[0], output.shape[1] - 1, width, size, height)
        return input_row, output_row

    def _channel_row_label(self, row: int) -> str:
        if self.kind == KIND_MAPS:
            return f"ch {self.channel_labels[row]}"
        return "tokens" if self.kind == KIND_TOKENS else "units"

    def _row_labels(self) -> list[str]:
        labels = [self._channel_row_label(row) for row in range(self.channels)]
        labels.extend(row.label for row in (self._input_row, self._output_row) if row is not None)
        if self.labels is not None:
            labels.append("label")
        if self.show_predictions:
            labels.append("predicted")
        return labels

    @property
    def _pitch(self) -> int:
        return self.column_width + _GUTTER

    def _grid_left(self, row_labels: bool) -> int:
        return _MARGIN + (self._row_label_width if row_labels else 0)

    def _rows_top(self) -> tuple[int, int, int, int, int]:
        """Body-relative tops of: the label row, the input row, the output row, the channel grid, the
        predictions row."""
        top = 4
        label_top = top
        if self.labels is not None:
            top += self._label_height + 4
        input_top = top
        if self._input_row is not None:
            top += self._input_row.height + _SECTION_GAP
        output_top = top
        if self._output_row is not None:
            top += self._output_row.height + _SECTION_GAP
        grid_top = top
        top += self._grid_height + 4
        if self.kind != KIND_MAPS:  # which units the heatmap columns are
            top += self._label_height + 2
        return label_top, input_top, output_top, grid_top, top

    @property
    def _grid_height(self) -> int:
        # A one-pixel gutter-coloured border frames the grid, so white (zero) tiles keep their edges.
        return self.channels * (self.tile_height + _GUTTER) - _GUTTER + 2

    @property
    def _grid_width(self) -> int:
        return self.num_probes * self._pitch - _GUTTER + 2

    def tile_box(self, channel: int, probe: int) -> tuple[int, int, int, int]:
        """Frame pixel box ``(left, top, right, bottom)`` (exclusive) of one activation tile."""
        _, _, _, grid_top, _ = self._rows_top()
        left = self._grid_left(True) + 1 + probe * self._pitch
        top = self._header_height + grid_top + 1 + channel * (self.tile_height + _GUTTER)
        return left, top, left + self.tile_width, top + self.tile_height

    def prediction_box(self, probe: int) -> tuple[int, int, int, int]:
        """Frame pixel box of one probe's predicted-class label."""
        _, _, _, _, predictions_top = self._rows_top()
        left = self._grid_left(True) + 1 + probe * self._pitch
        top = self._header_height + predictions_top
        return left, top, left + self.column_width, top + self._label_height

    def input_box(self, probe: int) -> tuple[int, int, int, int]:
        """Frame pixel box of one probe's input (a picture, its token ids or its strip).

        Raises:
            ValueError: the frames draw no inputs.
        """
        if self._input_row is None:
            raise ValueError("these frames draw no probe inputs.")
        _, input_top, _, _, _ = self._rows_top()
        return self._row_box(self._input_row, input_top, probe)

    def output_box(self, probe: int) -> tuple[int, int, int, int]:
        """Frame pixel box of one probe's output (its picture, next token ids or value strip).

        Raises:
            ValueError: the frames draw no outputs (a classifier's are its predictions).
        """
        if self._output_row is None:
            raise ValueError("these frames draw no output row.")
        _, _, output_top, _, _ = self._rows_top()
        return self._row_box(self._output_row, output_top, probe)

    def _row_box(self, row: _ProbeRow, row_top: int, probe: int) -> tuple[int, int, int, int]:
        left = self._grid_left(True) + 1 + probe * self._pitch + (self.column_width - row.width) // 2
        top = self._header_height + row_top
        return left, top, left + row.width, top + row.height

    @property
    def title_box(self) -> tuple[int, int, int, int]:
        """Frame pixel box of the title."""
        if self._stacked:
            return _MARGIN, _MARGIN, self.width - _MARGIN, _MARGIN + self._title_height
        return _MARGIN, _MARGIN, self.width - _MARGIN - self._legend_width() - 16, self._header_height

    # -- static pixels ---------------------------------------------------------------------------

    @property
    def colorbar_box(self) -> tuple[int, int, int, int]:
        """Frame pixel box ``(left, top, right, bottom)`` (exclusive) of the colour bar."""
        left, top = self._colorbar_origin(self.width, self._stacked)
        return left, top, left + self._colorbar_width, top + self._colorbar_height

    @property
    def _title_height(self) -> int:
        return _text.text_size("Ag", self._title_size)[1]

    def _colorbar_origin(self, width: int, stacked: bool) -> tuple[int, int]:
        if stacked:  # narrow frames: the colour bar goes under the title, not beside it
            return _MARGIN, _MARGIN + self._title_height + 8
        return width - _MARGIN - self._legend_width(), _MARGIN + 2

    def _legend_width(self) -> int:
        """Width of the colour bar plus, when shown, the non-finite swatch and its name."""
        if not self.nonfinite_legend:
            return self._colorbar_width
        return (
            self._colorbar_width
            + 10
            + self._colorbar_height
            + 4
            + _text.text_size(NONFINITE_LABEL, self._label_size)[0]
        )

    def _header_extent(self, title_width: int, body_width: int) -> tuple[int, int, bool]:
        """``(height, width, stacked)`` of the header: title and colour bar side by side if they fit the body."""
        bar_block = self._colorbar_height + 4 + self._label_height
        side_by_side = _MARGIN + title_width + 24 + self._legend_width() + _MARGIN
        if side_by_side <= body_width or title_width == 0:
            return _MARGIN + max(self._title_height, bar_block) + 8, side_by_side, False
        width = _MARGIN + max(title_width, self._legend_width()) + _MARGIN
        return _MARGIN + self._title_height + 8 + bar_block + 8, width, True

    def _outline(self, canvas: np.ndarray, left: int, top: int, width: int, height: int) -> None:
        # Outlines in the gutter grey: a white part of a bar would vanish into the background.
        outline = colors.GUTTER_INDEX
        canvas[top - 1, left - 1 : left + width + 1] = outline
        canvas[top + height, left - 1 : left + width + 1] = outline
        canvas[top - 1 : top + height + 1, left - 1] = outline
        canvas[top - 1 : top + height + 1, left + width] = outline

    def _draw_header(self, canvas: np.ndarray, width: int, stacked: bool) -> None:
        bar_width, bar_height = self._colorbar_width, self._colorbar_height
        left, top = self._colorbar_origin(width, stacked)
        canvas[top : top + bar_height, left : left + bar_width] = self.colour_scale.bar_indices(bar_width)
        self._outline(canvas, left, top, bar_width, bar_height)
        label_top = top + bar_height + 3
        for text, anchor in self.colour_scale.bar_labels():
            text_width = _text.text_size(text, self._label_size)[0]
            x = left + round(anchor * (bar_width - 1) - anchor * text_width)
            _text.draw_text(canvas, x, label_top, text, size=self._label_size, ink="muted")
        if self.nonfinite_legend:
            swatch_left = left + bar_width + 10
            canvas[top : top + bar_height, swatch_left : swatch_left + bar_height] = colors.NONFINITE_INDEX
            self._outline(canvas, swatch_left, top, bar_height, bar_height)
            text_top = top + (bar_height - self._label_height) // 2
            x = swatch_left + bar_height + 4
            _text.draw_text(canvas, x, text_top, NONFINITE_LABEL, size=self._label_size, ink="muted")

    def _static_body(self, row_labels: bool) -> np.ndarray:
        grid_left = self._grid_left(row_labels)
        width = grid_left + self._grid_width + _MARGIN
        label_top, input_top, output_top, grid_top, predictions_top = self._rows_top()
        height = predictions_top + (self._label_height + 2 if self.show_predictions else 0) + _MARGIN // 2
        body = np.full((height, width), colors.ZERO_INDEX, np.uint8)
        body[grid_top : grid_top + self._grid_height, grid_left : grid_left + self._grid_width] = colors.GUTTER_INDEX

        def row_label(text: str, top: int, row_height: int) -> None:
            if row_labels:
                text_width, text_height = _text.text_size(text, self._label_size)
                x = grid_left - 6 - text_width
                _text.draw_text(
                    body, x, top + (row_height - text_height) // 2, text, size=self._label_size, ink="muted"
                )

        if self.labels is not None:
            row_label("label", label_top, self._label_height)
            for probe, label in enumerate(self.labels):
                self._centred_text(
                    body, grid_left + 1 + probe * self._pitch, label_top, self._class_name(label), "text"
                )
        if self._input_row is not None and self._input_tiles is not None:
            row_label(self._input_row.label, input_top, self._input_row.label_height(self._label_height))
            self._place_row(body, input_top, grid_left, self._input_row, self._input_tiles)
        if self._output_row is not None:
            row_label(self._output_row.label, output_top, self._output_row.label_height(self._label_height))
        for channel in range(self.channels):
            row_label(
                self._channel_row_label(channel),
                grid_top + 1 + channel * (self.tile_height + _GUTTER),
                self.tile_height,
            )
        if self.kind != KIND_MAPS:
            caption = _text.fit_text(
                f"units {_describe_indices(self.channel_labels)}", self._label_size, self._grid_width
            )
            top = grid_top + self._grid_height + 2
            _text.draw_text(body, grid_left, top, caption, size=self._label_size, ink="muted")
        if self.show_predictions:
            row_label("predicted", predictions_top, self._label_height)
        return body

    def _place_row(self, canvas: np.ndarray, top: int, grid_left: int, row: _ProbeRow, tiles: np.ndarray) -> None:
        """Put each probe's ``(height, width)`` pixels of a probe row in its column, centred."""
        for probe in range(self.num_probes):
            left = grid_left + 1 + probe * self._pitch + (self.column_width - row.width) // 2
            canvas[top : top + row.height, left : left + row.width] = tiles[probe]

    def _gather_map(self) -> tuple[np.ndarray, np.ndarray]:
        """Which source row and column of the tile table (:meth:`_tile_table`) each grid row and column shows.

        Every tile pixel shows one activation element, chosen by its row (channel, map row) and its column
        (probe, map column) independently, so the grid is the table's rows and columns repeated: the last
        row and column of the table are the gutter.
        """
        inner_rows = np.arange(self._grid_height) - 1
        inner_cols = np.arange(self._grid_width) - 1
        channel, tile_y = np.divmod(inner_rows, self.tile_height + _GUTTER)
        probe, tile_x = np.divmod(inner_cols, self._pitch)
        row_valid = (inner_rows >= 0) & (channel < self.channels) & (tile_y < self.tile_height)
        col_valid = (inner_cols >= 0) & (probe < self.num_probes) & (tile_x < self.tile_width)
        source_y = tile_y * self._map_height // self.tile_height
        source_x = tile_x * self._map_width // self.tile_width
        rows = np.where(row_valid, channel * self._map_height + source_y, self.channels * self._map_height)
        cols = np.where(col_valid, probe * self._map_width + source_x, self.num_probes * self._map_width)
        return rows.astype(np.intp), cols.astype(np.intp)

    def _tile_table(self, activations: np.ndarray) -> np.ndarray:
        """``(C * map_h + 1, P * map_w + 1)`` palette indices of ``activations``: channels down, probes across,
        gutter last.

        One array per layout, refilled each call: the caller gathers it into its frame before the next call.
        """
        if self._table is None:
            self._table = np.full(
                (self.channels * self._map_height + 1, self.num_probes * self._map_width + 1),
                colors.GUTTER_INDEX,
                np.uint8,
            )
        maps = activations.reshape(self.num_probes, self.channels, self._map_height, self._map_width)
        self._table[:-1, :-1].reshape(self.channels, self._map_height, self.num_probes, self._map_width)[...] = (
            self._quantise(maps.transpose(1, 2, 0, 3))
        )
        return self._table

    def _quantise(self, activations: np.ndarray) -> np.ndarray:
        """Palette indices of ``activations``: float16 (what stores hold) through a table of all 65,536 values.

        The table is the colour scale applied to every float16 value once, so the result is the scale's own,
        value for value; other dtypes go through the scale directly.
        """
        if activations.dtype != np.float16:
            return self.colour_scale.indices(activations)
        if self._float16_table is None:
            every_value = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
            with np.errstate(invalid="ignore", over="ignore"):  # NaN and infinities among them: non-finite colour
                self._float16_table = self.colour_scale.indices(every_value)
        # take, not indexing: twice as fast for a table lookup. A float16 array is its bits read as uint16.
        return self._float16_table.take(activations.view(np.uint16))

    # -- per-step pixels -------------------------------------------------------------------------

    def _class_name(self, label: int) -> str:
        label = int(label)
        if label < 0:  # no prediction (non-finite logits) or no label
            return "?"
        if self.class_names is not None and label < len(self.class_names):
            return str(self.class_names[label])
        return str(label)

    def _centred_text(self, canvas: np.ndarray, left: int, top: int, text: str, ink: str) -> None:
        text = _text.fit_text(text, self._label_size, self.column_width + _GUTTER - 1)
        text_width = _text.text_size(text, self._label_size)[0]
        _text.draw_text(canvas, left + (self.column_width - text_width) // 2, top, text, size=self._label_size, ink=ink)

    def _check_activations(self, activations: np.ndarray) -> np.ndarray:
        activations = np.asarray(activations)
        expected = (self.num_probes, *self.sample_shape)
        if activations.shape != expected:
            raise ValueError(f"activations have shape {activations.shape}, expected {expected}.")
        return activations

    def _draw_body(
        self,
        canvas: np.ndarray,
        top: int,
        row_labels: bool,
        activations: np.ndarray,
        predictions: np.ndarray | None,
        outputs: np.ndarray | None = None,
    ) -> None:
        """Fill the channel grid, the outputs and the predictions of a body whose static pixels are in place."""
        activations = self._check_activations(activations)
        grid_left = self._grid_left(row_labels)
        _, _, output_top, grid_top, predictions_top = self._rows_top()
        if outputs is not None and self._output_row is not None and self.output is not None:
            outputs = np.asarray(outputs)
            if outputs.ndim != 2 or outputs.shape[0] != self.num_probes:
                raise ValueError(f"outputs have shape {outputs.shape}, expected ({self.num_probes}, K).")
            tiles = self._output_row.paint(self.output.drawn(outputs))
            self._place_row(canvas, top + output_top, grid_left, self._output_row, tiles)
        table = self._tile_table(activations)
        grid = canvas[top + grid_top : top + grid_top + self._grid_height, grid_left : grid_left + self._grid_width]
        # Columns first on the small table, then whole rows: copying rows is far cheaper than a per-pixel gather.
        grid[...] = np.take(np.take(table, self._gather_cols, axis=1), self._gather_rows, axis=0)
        if predictions is None or not self.show_predictions:
            return
        predictions = np.asarray(predictions)
        if predictions.shape != (self.num_probes,):
            raise ValueError(f"predictions have shape {predictions.shape}, expected ({self.num_probes},).")
        y = top + predictions_top
        for probe, predicted in enumerate(predictions.tolist()):
            stamp = self._prediction_stamp(int(predicted), None if self.labels is None else int(self.labels[probe]))
            left = grid_left + 1 + probe * self._pitch
            canvas[y : y + stamp.shape[0], left : left + stamp.shape[1]] = stamp

    def _prediction_stamp(self, predicted: int, label: int | None) -> np.ndarray:
        """The pixels of one predicted-class label, cached: the same few repeat across thousands of frames."""
        key = (predicted, label if label is None else predicted == label)
        stamp = self._prediction_stamps.get(key)
        if stamp is not None:
            return stamp
        stamp = np.full((self._label_height + 2, self.column_width + _GUTTER - 1), colors.ZERO_INDEX, np.uint8)
        name = self._class_name(predicted)
        if label is None:
            self._centred_text(stamp, 0, 0, name, "text")
        else:
            kind = "right" if predicted == label else "wrong"
            room = stamp.shape[1] - self._mark_size - 2
            fitted = _text.fit_text(name, self._label_size, room)
            if not fitted:  # too narrow for a mark and the name: the name alone, in green or red
                self._centred_text(stamp, 0, 0, name, kind)
            else:
                text_width = _text.text_size(fitted, self._label_size)[0]
                x = max(0, (self.column_width - (self._mark_size + 2 + text_width)) // 2)
                mark_top = max(0, (self._label_height - self._mark_size) // 2 + 1)
                _text.draw_mark(stamp, x, mark_top, kind, size=self._mark_size)
                _text.draw_text(stamp, x + self._mark_size + 2, 0, fitted, size=self._label_size, ink=kind)
        stamp.setflags(write=False)
        self._prediction_stamps[key] = stamp
        return stamp

    def frame(
        self,
        activations: np.ndarray,
        *,
        title: str,
        predictions: np.ndarray | None = None,
        outputs: np.ndarray | None = None,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Draw one frame.

        Args:
            activations: ``(P, *sample_shape)`` activations of the layer at one step.
            title: the label burned into the header, usually :func:`frame_title`.
            predictions: ``(P,)`` predicted class of each probe at that step, or ``None``.
            outputs: ``(P, K)`` the probes' stored outputs at that step, drawn in the output row (when the
                layout has one); ``None`` leaves the row blank.
            out: a frame this layout drew, to draw this one into instead of a new array: only what differs
                between steps (title, tiles, outputs, predictions) is redrawn, which spares copying the whole
                frame. ``None``: a new array.

        Returns:
            A new ``(height, width)`` uint8 array of palette indices (see :mod:`.colors`), or ``out``.

        Raises:
            ValueError: ``activations`` or ``predictions`` do not match the layout, or ``out`` is not a frame of it.
        """
        if out is None:
            canvas = self._static_frame.copy()
        else:
            if out.shape != self._static_frame.shape or out.dtype != np.uint8:
                raise ValueError(f"out is a {out.dtype} {out.shape} array, not a frame of this layout.")
            canvas = out
            if self._regions is None:
                self._regions = self._step_regions()
            for top, bottom, left, right in self._regions:  # back to the static pixels, then redrawn
                canvas[top:bottom, left:right] = self._static_frame[top:bottom, left:right]
        self._draw_body(canvas, self._header_height, True, activations, predictions, outputs)
        left, top, right, _ = self.title_box
        _text.draw_text(canvas, left, top, _text.fit_text(title, self._title_size, right - left), size=self._title_size)
        return canvas

    def _step_regions(self) -> list[tuple[int, int, int, int]]:
        """``(top, bottom, left, right)`` of what a frame draws over the static pixels besides the tile grid (which
        it covers whole): the title, the output row and the predictions row, each across the frame."""
        _, _, output_top, _, predictions_top = self._rows_top()
        left, top, right, _ = self.title_box
        regions = [(top, top + self._title_height, left, right)]
        if self._output_row is not None:
            start = self._header_height + output_top
            regions.append((start, start + self._output_row.height, 0, self.width))
        if self.show_predictions:
            start = self._header_height + predictions_top
            regions.append((start, start + self._label_height + 2, 0, self.width))
        return regions

    def sheet(
        self,
        activations: np.ndarray,
        *,
        captions: Sequence[str],
        title: str,
        predictions: np.ndarray | None = None,
        max_width: int = MAX_SHEET_WIDTH,
        outputs: np.ndarray | None = None,
    ) -> np.ndarray:
        """Draw a contact sheet: several steps of the layer side by side under one colour bar.

        Args:
            activations: ``(n, P, *sample_shape)`` activations at the ``n`` chosen steps.
            captions: one caption per panel, e.g. ``"step 120 · epoch 2"``.
            title: the sheet's title, e.g. the layer name.
            predictions: ``(n, P)`` predicted classes, or ``None``.
            max_width: panels wrap onto further rows to keep the sheet this narrow (a single panel wider
                than this stands alone on its row).
            outputs: ``(n, P, K)`` the probes' stored outputs at the ``n`` steps, or ``None``.

        Returns:
            A new ``(height, width)`` uint8 array of palette indices.

        Raises:
            ValueError: the arrays and captions disagree in length or shape.
        """
        count = len(activations)
        if (
            count == 0
            or len(captions) != count
            or (predictions is not None and len(predictions) != count)
            or (outputs is not None and len(outputs) != count)
        ):
            raise ValueError(f"a sheet needs one caption (and prediction row) per panel; got {count} panels.")
        caption_height = _text.text_size("Ag", self._caption_size)[1] + 4
        labelled, plain = self._body_with_labels.shape[1], self._body_plain.shape[1]
        # Panels wrap onto rows no wider than max_width (at least one panel a row); each row starts
        # with the row labels, so every row reads on its own.
        per_row = max(1, 1 + (max_width - labelled) // (plain + _PANEL_GAP)) if max_width >= labelled else 1
        rows = [list(range(start, min(start + per_row, count))) for start in range(0, count, per_row)]
        body_width = labelled + (len(rows[0]) - 1) * (plain + _PANEL_GAP)
        title_width = _text.text_size(title, self._title_size)[0]
        header_height, header_width, stacked = self._header_extent(title_width, body_width)
        width = max(body_width, header_width)
        row_height = caption_height + self._body_with_labels.shape[0]
        height = header_height + len(rows) * row_height + (len(rows) - 1) * _PANEL_GAP
        canvas = np.full((height, width), colors.ZERO_INDEX, np.uint8)
        self._draw_header(canvas, width, stacked)
        _text.draw_text(canvas, _MARGIN, _MARGIN, title, size=self._title_size)
        for row_number, row in enumerate(rows):
            caption_top = header_height + row_number * (row_height + _PANEL_GAP)
            top = caption_top + caption_height
            left = 0
            for index in row:
                row_labels = index == row[0]
                panel = self._body_with_labels if row_labels else self._body_plain
                canvas[top : top + panel.shape[0], left : left + panel.shape[1]] = panel
                grid_left = left + self._grid_left(row_labels)
                _text.draw_text(canvas, grid_left, caption_top, captions[index], size=self._caption_size)
                view = canvas[:, left : left + panel.shape[1]]
                self._draw_body(
                    view,
                    top,
                    row_labels,
                    activations[index],
                    None if predictions is None else predictions[index],
                    None if outputs is None else outputs[index],
                )
                left += panel.shape[1] + _PANEL_GAP
        return canvas


def _describe_indices(indices: Sequence[int]) -> str:
    """``"0-15"`` for a contiguous run, else the indices listed: ``"3, 7, 12"``."""
    indices = list(indices)
    if indices and indices == list(range(indices[0], indices[0] + len(indices))) and len(indices) > 2:
        return f"{indices[0]}-{indices[-1]}"
    return ", ".join(map(str, indices))


@dataclass(frozen=True)
class _ProbeRow:
    """A row of per-probe pictures above the channel grid (the inputs, or the outputs at each step).

    ``paint`` turns the drawn values of every probe ``(P, ...)`` into ``(P, height, width)`` palette indices.
    """

    label: str
    height: int
    width: int
    paint: Callable[[np.ndarray], np.ndarray]
    picture: bool = False  # a row of pictures: its label is centred on their full height, as it always was

    def label_height(self, line_height: int) -> int:
        """The height the row's label is centred on: a picture's, else the first two lines' (tall text rows)."""
        return self.height if self.picture else min(self.height, 2 * line_height)


_MAX_STRIP_LINES = 16
"""Most lines of a wrapped value strip: a (T, V) output of a model that is not fed token ids stays a strip."""
_MAX_ID_LINES = 6
"""Most lines of token ids a probe's column shows; longer sequences end in an ellipsis."""


def _picture_row(label: str, shape: Sequence[int], low: float, high: float, tile_size: int) -> _ProbeRow:
    """Pictures ``(C, H, W)`` or ``(H, W)`` per probe, on the brightness scale ``low .. high``."""
    height, width = tile_shape(shape[-2], shape[-1], tile_size)
    return _ProbeRow(label, height, width, lambda images: picture_tiles(images, tile_size, low, high), picture=True)


def _strip_row(label: str, units: int, limit: float, tile_size: int, label_size: int, label_height: int) -> _ProbeRow:
    """Values ``(K,)`` per probe as a red-blue strip on ``-limit .. +limit`` (wrapped onto lines when long, at
    most :data:`_MAX_STRIP_LINES` of them: the first values, then ``"N of K"``), outlined in the gutter grey,
    with the number written under it when there is one value; its label names the scale (``"input ±2.41"``)."""
    per_line = min(units, 2 * tile_size)
    lines = min(_MAX_STRIP_LINES, math.ceil(units / per_line))
    shown = min(units, lines * per_line)
    cell = heatmap_cell(per_line, tile_size)
    line_height = max(cell, tile_size // 4, MIN_UNIT_HEIGHT) if lines == 1 else max(cell, 2)
    strip_height, strip_width = lines * line_height + 2, per_line * cell + 2  # a one-pixel outline around
    text_height = label_height + 2 if units == 1 or shown < units else 0
    width = max(strip_width, _text_width(_NUMBER_ROOM, label_size)) if units == 1 else strip_width

    def paint(values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float32).reshape(len(values), units)
        padded = np.zeros((len(values), lines * per_line), np.float32)  # the last line's unused end: white
        padded[:, :shown] = values[:, :shown]
        indices = colors.diverging_indices(padded, limit).reshape(len(values), lines, per_line)
        tiles = np.full((len(values), strip_height + text_height, width), colors.ZERO_INDEX, np.uint8)
        left = (width - strip_width) // 2
        tiles[:, :strip_height, left : left + strip_width] = colors.GUTTER_INDEX
        tiles[:, 1 : strip_height - 1, left + 1 : left + strip_width - 1] = upscale_nearest(
            indices, strip_height - 2, strip_width - 2
        )
        if units == 1:
            for probe, value in enumerate(values[:, 0].tolist()):
                text = _short_number(value, label_size, width)
                x = max(0, (width - _text_width(text, label_size)) // 2)
                _text.draw_text(tiles[probe], x, strip_height + 1, text, size=label_size, ink="text")
        elif shown < units:
            text = _text.fit_text(f"{shown:,} of {units:,}", label_size, width)
            for tile in tiles:
                _text.draw_text(tile, left, strip_height + 1, text, size=label_size, ink="muted")
        return tiles

    # The strip's own scale in its label: the colour bar above is the layer's.
    return _ProbeRow(f"{label} ±{format_limit(limit)}", strip_height + text_height, width, paint)


_NUMBER_ROOM = "-0.0000"
"""The width a single output value is given under its strip."""


def _short_number(value: float, size: int, width: int) -> str:
    """``value`` in 3 significant digits, fewer if that is too wide for ``width`` pixels."""
    for digits in (3, 2, 1):
        text = f"{value:.{digits}g}"
        if _text_width(text, size) <= width:
            return text
    return text


def _ids_row(label: str, length: int, largest: int, width: int, label_size: int, label_height: int) -> _ProbeRow:
    """Token ids ``(T,)`` per probe written as numbers in reading order, right-aligned in slots, as many a
    line as fit ``width``, each probe's block outlined in the gutter grey so neighbouring probes' numbers do
    not read as one sequence (``?``: no prediction)."""
    gap, pad = max(4, label_size // 2), 3
    slot = _text_width(str(max(largest, 9)), label_size) + gap
    per_line = max(1, (width - 2 * pad + gap) // slot)
    lines = min(_MAX_ID_LINES, math.ceil(length / per_line))
    shown = length if length <= lines * per_line else lines * per_line - 1
    line_height = label_height + 1
    height = lines * line_height + 2 * pad - 1
    width = max(width, per_line * slot - gap + 2 * pad)
    left = (width - (per_line * slot - gap)) // 2  # the numbers centred in the block

    def paint(ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids).reshape(len(ids), length)
        tiles = np.full((len(ids), height, width), colors.GUTTER_INDEX, np.uint8)
        tiles[:, 1:-1, 1:-1] = colors.ZERO_INDEX
        for probe, row in enumerate(ids.tolist()):
            for position in range(shown):
                line, column = divmod(position, per_line)
                token = int(row[position])
                text = str(token) if token >= 0 else "?"
                right = left + column * slot + slot - gap
                top = pad + line * line_height - 1
                _text.draw_text(tiles[probe], right - _text_width(text, label_size), top, text, size=label_size)
            if shown < length:
                line, column = divmod(shown, per_line)
                x, top = left + column * slot, pad + line * line_height - 1
                _text.draw_text(tiles[probe], x, top, "…", size=label_size, ink="muted")
        return tiles

    return _ProbeRow(label, height, width, paint)


def _text_width(text: str, size: int) -> int:
    """Pixel width of ``text`` at font ``size``."""
    return _text.text_size(text, size)[0]


def picture_tiles(
    images: np.ndarray, tile_size: int, low: float | None = None, high: float | None = None
) -> np.ndarray:
    """``(P, h, w)`` palette tiles of pictures ``(P, C, H, W)`` or ``(P, H, W)`` as the frames draw inputs
    and picture outputs: RGB in colour, other channel counts averaged into grey, ``low`` black and ``high``
    white (default: the finite range of ``images``), nearest-neighbour upscaled to ``tile_size``."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim not in (3, 4):
        raise ValueError(f"pictures must be (P, C, H, W) or (P, H, W), got shape {images.shape}.")
    if low is None or high is None:
        low, high = finite_range(images)
    height, width = tile_shape(images.shape[-2], images.shape[-1], tile_size)
    if images.ndim == 4 and images.shape[1] == 3:  # RGB: drawn in colour, on the palette's colour cube
        indices = colors.rgb_indices(np.moveaxis(images, 1, -1), low, high)
    else:  # one channel (or an unusual number): grey
        indices = colors.grey_indices(images.mean(axis=1) if images.ndim == 4 else images, low, high)
    return upscale_nearest(indices, height, width)


def activation_frame(
    activations: np.ndarray,
    *,
    scale: ColourScale | float,
    title: str,
    probe_images: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    predictions: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    tile_size: int = TILE_SIZE,
    kind: str | None = None,
    text_scale: float = 1.0,
) -> np.ndarray:
    """Draw one layer's activations at one step as an RGB image (for TensorBoard and the recorder).

    Args:
        activations: ``(P, *sample_shape)`` activations of the layer for the ``P`` probes.
        scale: the colour scale (:mod:`actrec.recording.scale`); a plain number means the diverging
            ``-scale`` red, 0 white, ``+scale`` blue.
        title: the label burned into the frame, usually :func:`frame_title`.
        probe_images: ``(P, C, H, W)`` probe inputs shown above the tiles, or ``None``.
        labels: ``(P,)`` true classes, or ``None``.
        predictions: ``(P,)`` predicted classes at this step, or ``None``.
        class_names: names indexed by class, or ``None`` to show class numbers.
        tile_size: pixels of a tile's longer side.
        kind: ``"maps"``, ``"tokens"`` or ``"vector"``; ``None`` takes it from the rank.
        text_scale: multiplies every font size.

    Returns:
        A new ``(height, width, 3)`` uint8 RGB array. Non-finite values are drawn amber and named
        in the legend.

    Raises:
        ValueError: shapes disagree, or ``scale`` is not positive.
    """
    activations = np.asarray(activations)
    layout = FrameLayout(
        activations.shape[1:],
        num_probes=activations.shape[0],
        scale=scale,
        probe_images=probe_images,
        labels=labels,
        class_names=class_names,
        tile_size=tile_size,
        longest_title=title,
        show_predictions=predictions is not None,
        kind=kind,
        nonfinite_legend=not bool(np.isfinite(activations).all()),
        text_scale=text_scale,
    )
    return colors.to_rgb(layout.frame(activations, title=title, predictions=predictions))


def card_split(kind: str, labels: Sequence[int], per_image: int = CARD_CHANNELS) -> list[tuple[tuple[int, ...], str]]:
    """How a layer's drawn channels are split into TensorBoard images: ``[(positions, tag suffix), ...]``.

    Maps layers wider than ``per_image`` channels get one image per ``per_image`` channels, tagged
    ``"/ch 4-7"`` by their channel labels (``"/ch 3,9,12"`` when not consecutive); anything else is one
    image with no suffix. The one rule for the export (``actrec tensorboard``) and live logging alike.

    Args:
        kind: the layer's kind.
        labels: each drawn channel's index in the full layer.
        per_image: channels per image; 0 puts them all in one.
    """
    count = len(labels)
    if kind != KIND_MAPS or per_image <= 0 or count <= per_image:
        return [(tuple(range(count)), "")]
    groups = []
    for start in range(0, count, per_image):
        positions = tuple(range(start, min(count, start + per_image)))
        chosen = [int(labels[i]) for i in positions]
        contiguous = chosen == list(range(chosen[0], chosen[0] + len(chosen)))
        name = f"{chosen[0]}-{chosen[-1]}" if contiguous else ",".join(map(str, chosen))
        groups.append((positions, f"/ch {name}"))
    return groups


def live_frames(
    scale_kind: str,
    activations: np.ndarray,
    state: LiveScaleState | None,
    *,
    title: str,
    probe_images: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    predictions: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    max_channels: int = DEFAULT_MAX_CHANNELS,
    output: OutputDrawing | None = None,
    outputs: np.ndarray | None = None,
) -> tuple[list[tuple[str, np.ndarray]], LiveScaleState]:
    """One layer's TensorBoard images for one step logged during training, on the live colour scale.

    What the recorder calls once per layer and logged step. The images are the ones ``actrec
    tensorboard`` exports, with the same tag suffixes: sized for TensorBoard's cards
    (:data:`CARD_FRAME_WIDTH`, :data:`CARD_TEXT_SCALE`), at most :data:`CARD_CHANNELS` channels each
    (suffix ``"/ch 0-3"``; ``""`` when one image holds the layer). Each colour bar prints the limit
    it used, which only grows over the run. Wide layers show their first ``max_channels`` channels (units).

    Args:
        scale_kind: the layer's stored scale kind (``"tanh"``, ``"sigmoid"``, ``"nonnegative"``, ``"symmetric"``).
        activations: ``(P, *sample_shape)`` activations of this step.
        state: what the previous call for this layer returned; ``None`` at its first logged step.
        title: the label burned into the images, usually :func:`frame_title`.
        probe_images: ``(P, C, H, W)`` probe inputs, or ``None``.
        labels: ``(P,)`` true classes, or ``None``.
        predictions: ``(P,)`` predicted classes, or ``None``.
        class_names: names indexed by class, or ``None``.
        max_channels: most channels (maps) or units (tokens, vectors) drawn.
        output: how a non-classifier's outputs are drawn (:func:`actrec.recording.output_drawing`), or ``None``.
        outputs: ``(P, K)`` the probes' outputs at this step, drawn in the output row when ``output`` is given.

    Returns:
        ``([(tag_suffix, image), ...], state)``: new ``(H, W, 3)`` uint8 RGB images, log each under
        ``f"activations/{layer}{tag_suffix}"``; and the state to pass with the layer's next step.

    Raises:
        ValueError: ``scale_kind`` is unknown or the shapes cannot be drawn.
    """
    activations = np.asarray(activations)
    scale, state = live_scale(scale_kind, activations, state)
    kind = layer_kind(activations.shape[1:])
    axis = 1 if kind == KIND_MAPS else activations.ndim - 1
    count = min(activations.shape[axis], max_channels)
    images = []
    for positions, suffix in card_split(kind, range(count)):
        channels = np.asarray(positions)
        part = np.take(activations, channels, axis=axis)
        layout = FrameLayout(
            part.shape[1:],
            num_probes=part.shape[0],
            scale=scale,
            probe_images=probe_images,
            labels=labels,
            class_names=class_names,
            tile_size=fit_tile_size(kind, part.shape[1:], part.shape[0], TILE_SIZE, CARD_FRAME_WIDTH, CARD_TEXT_SCALE),
            longest_title=title,
            show_predictions=predictions is not None,
            kind=kind,
            channel_labels=channels.tolist(),
            nonfinite_legend=not bool(np.isfinite(part).all()),
            text_scale=CARD_TEXT_SCALE,
            output=output,
        )
        frame = layout.frame(part, title=title, predictions=predictions, outputs=outputs)
        images.append((suffix, colors.to_rgb(frame)))
    return images, state
