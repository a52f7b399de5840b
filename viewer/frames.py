"""Frames: one layer's activations at one step, tiled, coloured and labelled, as palette indices.

A frame, top to bottom: a header (``layer · step N · epoch E`` and the colour bar with its
``-s, 0, +s`` labels), each probe's true class, the probe inputs in grey, one row of tiles per
channel (one tile per probe, nearest-neighbour upscaled to ``tile_size``), and each probe's
predicted class at that step with a green tick when right or a red cross when wrong.

:class:`FrameLayout` computes everything that does not change between steps once (geometry, the
static pixels, a gather map from activation elements to frame pixels), so a frame costs one
quantisation of the small activation array and one gather. Functions here take arrays and return
new arrays; nothing is written to disk and no input is modified.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from actrec.viewer import _text, colors

TILE_SIZE = 56
"""Default tile edge in pixels: 28x28 maps are doubled, 14x14 quadrupled, 7x7 drawn 8x."""

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


def frame_title(layer: str, step: int, epoch: int) -> str:
    """The label burned into every frame: ``"net.conv1 · step 120 · epoch 2"``."""
    return f"{layer} · step {step} · epoch {epoch}"


def format_scale(scale: float) -> str:
    """How the colour bar labels ``scale``: ``"1"`` for tanh layers, else 3 significant digits."""
    if float(scale).is_integer() and abs(scale) < 1e6:
        return str(int(scale))
    return f"{scale:.3g}"


def tile_shape(height: int, width: int, tile_size: int) -> tuple[int, int]:
    """Pixel ``(height, width)`` of a ``height x width`` map whose longer side is drawn ``tile_size``."""
    longest = max(height, width)
    return max(1, round(tile_size * height / longest)), max(1, round(tile_size * width / longest))


def upscale_nearest(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of the last two axes of ``image`` to ``height x width`` (a new array)."""
    rows = np.arange(height) * image.shape[-2] // height
    cols = np.arange(width) * image.shape[-1] // width
    return image[..., rows[:, None], cols[None, :]]


def _as_maps(shape: Sequence[int]) -> tuple[int, int, int, int]:
    """``(channels, map_height, map_width, elements)`` for one probe's activation of ``shape``.

    Convolutional ``(C, H, W)`` maps are drawn as they are; ``(C, L)`` sequences as ``1 x L`` strips;
    flat ``(F,)`` features (a linear layer) wrapped into one near-square map.
    """
    if len(shape) == 3:
        return shape[0], shape[1], shape[2], shape[1] * shape[2]
    if len(shape) == 2:
        return shape[0], 1, shape[1], shape[1]
    if len(shape) == 1:
        side = math.ceil(math.sqrt(shape[0]))
        return 1, math.ceil(shape[0] / side), side, shape[0]
    raise ValueError(f"cannot draw activations of per-probe shape {tuple(shape)}; expected (C, H, W), (C, L) or (F,).")


class FrameLayout:
    """The geometry and static pixels of one layer's frames, computed once per layer.

    Args:
        sample_shape: one probe's activation shape, e.g. ``(8, 14, 14)``.
        num_probes: number of probes (columns).
        scale: the fixed symmetric colour scale: ``-scale`` red, 0 white, ``+scale`` blue.
        probe_images: ``(P, C, H, W)`` probe inputs, drawn in grey above the activations (channels
            are averaged); ``None`` to leave them out.
        labels: ``(P,)`` true classes, written above each column and used to mark predictions.
        class_names: names indexed by class; class numbers are shown when ``None``.
        tile_size: pixels of a tile's longer side.
        longest_title: the longest title the frames will carry, to size the header.
        show_predictions: reserve the row of predicted classes under the tiles.

    Raises:
        ValueError: an argument is out of range or shapes disagree.
    """

    def __init__(
        self,
        sample_shape: Sequence[int],
        *,
        num_probes: int,
        scale: float,
        probe_images: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        class_names: Sequence[str] | None = None,
        tile_size: int = TILE_SIZE,
        longest_title: str = "",
        show_predictions: bool = True,
    ) -> None:
        if tile_size < 4:
            raise ValueError(f"tile_size must be at least 4 pixels, got {tile_size}.")
        if num_probes < 1:
            raise ValueError(f"num_probes must be at least 1, got {num_probes}.")
        if not np.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a positive finite number, got {scale!r}.")
        if probe_images is not None and len(probe_images) != num_probes:
            raise ValueError(f"probe_images holds {len(probe_images)} images for {num_probes} probes.")
        if labels is not None and len(labels) != num_probes:
            raise ValueError(f"labels holds {len(labels)} entries for {num_probes} probes.")
        self.sample_shape = tuple(int(n) for n in sample_shape)
        self.num_probes = num_probes
        self.scale = float(scale)
        self.tile_size = tile_size
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64).copy()
        self.class_names = None if class_names is None else list(class_names)
        self.show_predictions = show_predictions
        self.channels, self._map_height, self._map_width, self._elements = _as_maps(self.sample_shape)
        self.tile_height, self.tile_width = tile_shape(self._map_height, self._map_width, tile_size)
        self._input_tiles = None if probe_images is None else _probe_tiles(probe_images, tile_size)
        self.column_width = max(self.tile_width, 0 if self._input_tiles is None else self._input_tiles.shape[2])
        self._row_label_width = max(_text.text_size(label, _LABEL_SIZE)[0] for label in self._row_labels()) + 8
        self._label_height = _text.text_size("Ag", _LABEL_SIZE)[1]
        self._body_with_labels = self._static_body(row_labels=True)
        self._body_plain = self._static_body(row_labels=False)
        title_width = _text.text_size(longest_title, _TITLE_SIZE)[0] if longest_title else 0
        self._header_height, header_width = self._header_extent(title_width)
        self.width = max(self._body_with_labels.shape[1], header_width)
        self.height = self._header_height + self._body_with_labels.shape[0]
        self._static_frame = np.full((self.height, self.width), colors.ZERO_INDEX, np.uint8)
        self._draw_header(self._static_frame, self.width)
        self._static_frame[self._header_height :, : self._body_with_labels.shape[1]] = self._body_with_labels
        self._gather = self._gather_map()
        self._prediction_stamps: dict[tuple[int, bool | None], np.ndarray] = {}

    # -- geometry --------------------------------------------------------------------------------

    def _row_labels(self) -> list[str]:
        labels = [f"ch {channel}" for channel in range(self.channels)]
        if self._input_tiles is not None:
            labels.append("input")
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

    def _rows_top(self) -> tuple[int, int, int, int]:
        """Body-relative tops of: the label row, the input row, the channel grid, the predictions row."""
        top = 4
        label_top = top
        if self.labels is not None:
            top += self._label_height + 4
        input_top = top
        if self._input_tiles is not None:
            top += self._input_tiles.shape[1] + _SECTION_GAP
        grid_top = top
        top += self._grid_height + 4
        return label_top, input_top, grid_top, top

    @property
    def _grid_height(self) -> int:
        # A one-pixel gutter-coloured border frames the grid, so white (zero) tiles keep their edges.
        return self.channels * (self.tile_height + _GUTTER) - _GUTTER + 2

    @property
    def _grid_width(self) -> int:
        return self.num_probes * self._pitch - _GUTTER + 2

    def tile_box(self, channel: int, probe: int) -> tuple[int, int, int, int]:
        """Frame pixel box ``(left, top, right, bottom)`` (exclusive) of one activation tile."""
        _, _, grid_top, _ = self._rows_top()
        left = self._grid_left(True) + 1 + probe * self._pitch
        top = self._header_height + grid_top + 1 + channel * (self.tile_height + _GUTTER)
        return left, top, left + self.tile_width, top + self.tile_height

    def prediction_box(self, probe: int) -> tuple[int, int, int, int]:
        """Frame pixel box of one probe's predicted-class label."""
        _, _, _, predictions_top = self._rows_top()
        left = self._grid_left(True) + 1 + probe * self._pitch
        top = self._header_height + predictions_top
        return left, top, left + self.column_width, top + self._label_height

    @property
    def title_box(self) -> tuple[int, int, int, int]:
        """Frame pixel box of the title."""
        return _MARGIN, _MARGIN, self.width - _MARGIN - _COLORBAR_WIDTH - 16, self._header_height

    # -- static pixels ---------------------------------------------------------------------------

    def _header_extent(self, title_width: int) -> tuple[int, int]:
        label_height = self._label_height
        bar_block = _COLORBAR_HEIGHT + 4 + label_height
        title_height = _text.text_size("Ag", _TITLE_SIZE)[1]
        height = _MARGIN + max(title_height, bar_block) + 8
        width = _MARGIN + title_width + 24 + _COLORBAR_WIDTH + _MARGIN
        return height, width

    def _draw_header(self, canvas: np.ndarray, width: int) -> None:
        left, top = width - _MARGIN - _COLORBAR_WIDTH, _MARGIN + 2
        bar = np.rint(np.linspace(colors.NEGATIVE_INDEX, colors.POSITIVE_INDEX, _COLORBAR_WIDTH)).astype(np.uint8)
        canvas[top : top + _COLORBAR_HEIGHT, left : left + _COLORBAR_WIDTH] = bar
        # Outline and tick marks in the gutter grey: the white middle would vanish into the background.
        outline = colors.GUTTER_INDEX
        canvas[top - 1, left - 1 : left + _COLORBAR_WIDTH + 1] = outline
        canvas[top + _COLORBAR_HEIGHT, left - 1 : left + _COLORBAR_WIDTH + 1] = outline
        canvas[top - 1 : top + _COLORBAR_HEIGHT + 1, left - 1] = outline
        canvas[top - 1 : top + _COLORBAR_HEIGHT + 1, left + _COLORBAR_WIDTH] = outline
        scale = format_scale(self.scale)
        label_top = top + _COLORBAR_HEIGHT + 3
        for text, anchor in ((f"-{scale}", 0.0), ("0", 0.5), (f"+{scale}", 1.0)):
            text_width = _text.text_size(text, _LABEL_SIZE)[0]
            x = left + round(anchor * (_COLORBAR_WIDTH - 1) - anchor * text_width)
            _text.draw_text(canvas, x, label_top, text, size=_LABEL_SIZE, ink="muted")

    def _static_body(self, row_labels: bool) -> np.ndarray:
        grid_left = self._grid_left(row_labels)
        width = grid_left + self._grid_width + _MARGIN
        label_top, input_top, grid_top, predictions_top = self._rows_top()
        height = predictions_top + (self._label_height + 2 if self.show_predictions else 0) + _MARGIN // 2
        body = np.full((height, width), colors.ZERO_INDEX, np.uint8)
        body[grid_top : grid_top + self._grid_height, grid_left : grid_left + self._grid_width] = colors.GUTTER_INDEX

        def row_label(text: str, top: int, row_height: int) -> None:
            if row_labels:
                text_width, text_height = _text.text_size(text, _LABEL_SIZE)
                x = grid_left - 6 - text_width
                _text.draw_text(body, x, top + (row_height - text_height) // 2, text, size=_LABEL_SIZE, ink="muted")

        if self.labels is not None:
            row_label("label", label_top, self._label_height)
            for probe, label in enumerate(self.labels):
                self._centred_text(
                    body, grid_left + 1 + probe * self._pitch, label_top, self._class_name(label), "text"
                )
        if self._input_tiles is not None:
            tiles = self._input_tiles
            row_label("input", input_top, tiles.shape[1])
            for probe in range(self.num_probes):
                left = grid_left + 1 + probe * self._pitch + (self.column_width - tiles.shape[2]) // 2
                body[input_top : input_top + tiles.shape[1], left : left + tiles.shape[2]] = tiles[probe]
        for channel in range(self.channels):
            row_label(f"ch {channel}", grid_top + 1 + channel * (self.tile_height + _GUTTER), self.tile_height)
        if self.show_predictions:
            row_label("predicted", predictions_top, self._label_height)
        return body

    def _gather_map(self) -> np.ndarray:
        """For each grid pixel, the flat index of the activation element it shows (or the gutter)."""
        inner_rows = np.arange(self._grid_height) - 1
        inner_cols = np.arange(self._grid_width) - 1
        channel, tile_y = np.divmod(inner_rows, self.tile_height + _GUTTER)
        probe, tile_x = np.divmod(inner_cols, self._pitch)
        row_valid = (inner_rows >= 0) & (channel < self.channels) & (tile_y < self.tile_height)
        col_valid = (inner_cols >= 0) & (probe < self.num_probes) & (tile_x < self.tile_width)
        source_y = tile_y * self._map_height // self.tile_height
        source_x = tile_x * self._map_width // self.tile_width
        element = source_y[:, None] * self._map_width + source_x[None, :]
        flat = (probe[None, :] * self.channels + channel[:, None]) * self._elements + element
        valid = row_valid[:, None] & col_valid[None, :] & (element < self._elements)
        gutter = self.num_probes * self.channels * self._elements  # one extra element: the gutter
        return np.where(valid, flat, gutter).astype(np.intp)

    # -- per-step pixels -------------------------------------------------------------------------

    def _class_name(self, label: int) -> str:
        label = int(label)
        if self.class_names is not None and 0 <= label < len(self.class_names):
            return str(self.class_names[label])
        return str(label)

    def _centred_text(self, canvas: np.ndarray, left: int, top: int, text: str, ink: str) -> None:
        text = _text.fit_text(text, _LABEL_SIZE, self.column_width + _GUTTER - 1)
        text_width = _text.text_size(text, _LABEL_SIZE)[0]
        _text.draw_text(canvas, left + (self.column_width - text_width) // 2, top, text, size=_LABEL_SIZE, ink=ink)

    def _check_activations(self, activations: np.ndarray) -> np.ndarray:
        activations = np.asarray(activations)
        expected = (self.num_probes, *self.sample_shape)
        if activations.shape != expected:
            raise ValueError(f"activations have shape {activations.shape}, expected {expected}.")
        return activations

    def _draw_body(
        self, canvas: np.ndarray, top: int, row_labels: bool, activations: np.ndarray, predictions: np.ndarray | None
    ) -> None:
        """Fill the channel grid and the predictions of a body whose static pixels are in place."""
        activations = self._check_activations(activations)
        grid_left = self._grid_left(row_labels)
        _, _, grid_top, predictions_top = self._rows_top()
        quantised = np.append(colors.diverging_indices(activations, self.scale).ravel(), colors.GUTTER_INDEX)
        grid = canvas[top + grid_top : top + grid_top + self._grid_height, grid_left : grid_left + self._grid_width]
        np.take(quantised, self._gather, out=grid)
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
            room = stamp.shape[1] - _MARK_SIZE - 2
            name = _text.fit_text(name, _LABEL_SIZE, room)
            text_width, text_height = _text.text_size(name, _LABEL_SIZE)
            x = max(0, (self.column_width - (_MARK_SIZE + 2 + text_width)) // 2)
            _text.draw_mark(stamp, x, (text_height - _MARK_SIZE) // 2 + 1, kind, size=_MARK_SIZE)
            _text.draw_text(stamp, x + _MARK_SIZE + 2, 0, name, size=_LABEL_SIZE, ink=kind)
        stamp.setflags(write=False)
        self._prediction_stamps[key] = stamp
        return stamp

    def frame(self, activations: np.ndarray, *, title: str, predictions: np.ndarray | None = None) -> np.ndarray:
        """Draw one frame.

        Args:
            activations: ``(P, *sample_shape)`` activations of the layer at one step.
            title: the label burned into the header, usually :func:`frame_title`.
            predictions: ``(P,)`` predicted class of each probe at that step, or ``None``.

        Returns:
            A new ``(height, width)`` uint8 array of palette indices (see :mod:`.colors`).

        Raises:
            ValueError: ``activations`` or ``predictions`` do not match the layout.
        """
        canvas = self._static_frame.copy()
        self._draw_body(canvas, self._header_height, True, activations, predictions)
        left, top, right, _ = self.title_box
        _text.draw_text(canvas, left, top, _text.fit_text(title, _TITLE_SIZE, right - left), size=_TITLE_SIZE)
        return canvas

    def sheet(
        self,
        activations: np.ndarray,
        *,
        captions: Sequence[str],
        title: str,
        predictions: np.ndarray | None = None,
    ) -> np.ndarray:
        """Draw a contact sheet: several steps of the layer side by side under one colour bar.

        Args:
            activations: ``(n, P, *sample_shape)`` activations at the ``n`` chosen steps.
            captions: one caption per panel, e.g. ``"step 120 · epoch 2"``.
            title: the sheet's title, e.g. the layer name.
            predictions: ``(n, P)`` predicted classes, or ``None``.

        Returns:
            A new ``(height, width)`` uint8 array of palette indices.

        Raises:
            ValueError: the arrays and captions disagree in length or shape.
        """
        count = len(activations)
        if count == 0 or len(captions) != count or (predictions is not None and len(predictions) != count):
            raise ValueError(f"a sheet needs one caption (and prediction row) per panel; got {count} panels.")
        caption_height = _text.text_size("Ag", _CAPTION_SIZE)[1] + 4
        panels = [self._body_with_labels] + [self._body_plain] * (count - 1)
        body_width = sum(panel.shape[1] for panel in panels) + _PANEL_GAP * (count - 1)
        title_width = _text.text_size(title, _TITLE_SIZE)[0]
        header_height, header_width = self._header_extent(title_width)
        width = max(body_width, header_width)
        height = header_height + caption_height + self._body_with_labels.shape[0]
        canvas = np.full((height, width), colors.ZERO_INDEX, np.uint8)
        self._draw_header(canvas, width)
        _text.draw_text(canvas, _MARGIN, _MARGIN, title, size=_TITLE_SIZE)
        left = 0
        for index, panel in enumerate(panels):
            row_labels = index == 0
            top = header_height + caption_height
            canvas[top : top + panel.shape[0], left : left + panel.shape[1]] = panel
            grid_left = left + self._grid_left(row_labels)
            _text.draw_text(canvas, grid_left, header_height, captions[index], size=_CAPTION_SIZE)
            view = canvas[:, left : left + panel.shape[1]]
            self._draw_body(
                view, top, row_labels, activations[index], None if predictions is None else predictions[index]
            )
            left += panel.shape[1] + _PANEL_GAP
        return canvas


def _probe_tiles(probe_images: np.ndarray, tile_size: int) -> np.ndarray:
    """``(P, h, w)`` grey palette tiles of the probe inputs, on one brightness scale for all probes."""
    images = np.asarray(probe_images, dtype=np.float32)
    if images.ndim == 4:
        images = images.mean(axis=1)  # colour inputs: the fixed palette has no room for RGB, show luminance
    elif images.ndim != 3:
        raise ValueError(f"probe_images must be (P, C, H, W) or (P, H, W), got shape {images.shape}.")
    finite = images[np.isfinite(images)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    height, width = tile_shape(images.shape[1], images.shape[2], tile_size)
    return upscale_nearest(colors.grey_indices(images, low, high), height, width)


def activation_frame(
    activations: np.ndarray,
    *,
    scale: float,
    title: str,
    probe_images: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    predictions: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    tile_size: int = TILE_SIZE,
) -> np.ndarray:
    """Draw one layer's activations at one step as an RGB image (for TensorBoard and the recorder).

    Args:
        activations: ``(P, C, H, W)`` activations of the layer for the ``P`` probes.
        scale: the fixed symmetric colour scale (1 for tanh layers): ``-scale`` red, 0 white,
            ``+scale`` blue.
        title: the label burned into the frame, usually :func:`frame_title`.
        probe_images: ``(P, C, H, W)`` probe inputs shown in grey above the tiles, or ``None``.
        labels: ``(P,)`` true classes, or ``None``.
        predictions: ``(P,)`` predicted classes at this step, or ``None``.
        class_names: names indexed by class, or ``None`` to show class numbers.
        tile_size: pixels of a tile's longer side.

    Returns:
        A new ``(height, width, 3)`` uint8 RGB array.

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
    )
    return colors.to_rgb(layout.frame(activations, title=title, predictions=predictions))
