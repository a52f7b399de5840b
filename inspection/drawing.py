"""Pure drawing for the inspection pictures: tile grids with titles, labels and colour bars, as palette indices.

Everything is drawn in the viewer's fixed palette (:mod:`actrec.recording.colors`: red -scale, white 0, blue +scale;
greys for images and text), on the viewer's colour scales (:mod:`actrec.recording.scale`) and with its text
(:func:`actrec.viewer.draw_text`), so an inspection picture reads like a render of the same run. Functions take arrays
and return new ``(H, W)`` uint8 canvases of palette indices; :func:`actrec.viewer.write_png` writes them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from actrec.recording import colors
from actrec.recording.scale import ColourScale
from actrec.viewer import draw_text, fit_text, text_size
from actrec.viewer.frames import tile_shape, upscale_nearest

__all__ = ["colorbar", "grey_tiles", "label", "pad", "stack", "symmetric", "tile_grid", "titled", "value_tiles"]

TITLE_SIZE = 15
LABEL_SIZE = 11
GUTTER = 2
MARGIN = 12
_BAR_WIDTH = 121  # odd: the middle pixel is the exact zero colour
_BAR_HEIGHT = 9


def _blank(height: int, width: int) -> np.ndarray:
    return np.full((max(height, 0), max(width, 0)), colors.ZERO_INDEX, np.uint8)


def label(text: str, *, size: int = LABEL_SIZE, ink: str = "text") -> np.ndarray:
    """A canvas holding one line of text."""
    width, height = text_size(text, size)
    canvas = _blank(height, width)
    draw_text(canvas, 0, 0, text, size=size, ink=ink)
    return canvas


def pad(canvas: np.ndarray, top: int = 0, right: int = 0, bottom: int = 0, left: int = 0) -> np.ndarray:
    """``canvas`` with white borders added."""
    out = _blank(canvas.shape[0] + top + bottom, canvas.shape[1] + left + right)
    out[top : top + canvas.shape[0], left : left + canvas.shape[1]] = canvas
    return out


def stack(canvases: Sequence[np.ndarray], *, vertical: bool = True, gap: int = 8, align: str = "start") -> np.ndarray:
    """Place canvases below (``vertical``) or beside one another, ``gap`` pixels apart, on white.

    Args:
        canvases: the parts, in order.
        vertical: stack downwards; else left to right.
        gap: white pixels between parts.
        align: ``"start"`` (left or top edges aligned) or ``"center"``.
    """
    parts = [part for part in canvases if part.size]
    if not parts:
        return _blank(1, 1)
    along, across = (0, 1) if vertical else (1, 0)
    length = sum(part.shape[along] for part in parts) + gap * (len(parts) - 1)
    breadth = max(part.shape[across] for part in parts)
    out = _blank(length, breadth) if vertical else _blank(breadth, length)
    position = 0
    for part in parts:
        offset = (breadth - part.shape[across]) // 2 if align == "center" else 0
        if vertical:
            out[position : position + part.shape[0], offset : offset + part.shape[1]] = part
        else:
            out[offset : offset + part.shape[0], position : position + part.shape[1]] = part
        position += part.shape[along] + gap
    return out


def colorbar(scale: ColourScale, *, caption: str = "") -> np.ndarray:
    """A labelled colour bar of ``scale`` (the viewer's :class:`~actrec.recording.scale.ColourScale`).

    Args:
        scale: diverging (``-limit`` red, 0 white, ``+limit`` blue) or one-sided (0 white to ``+limit`` blue).
        caption: text after the bar, e.g. ``"weight"``.
    """
    bar = pad(np.repeat(scale.bar_indices(_BAR_WIDTH)[None, :], _BAR_HEIGHT, axis=0), 1, 1, 1, 1)
    bar[0, :] = bar[-1, :] = bar[:, 0] = bar[:, -1] = colors.GUTTER_INDEX
    label_height = text_size("0", LABEL_SIZE)[1]
    tick_row = _blank(label_height, bar.shape[1] + 24)
    for text, position in scale.bar_labels():
        x = 1 + round(position * (_BAR_WIDTH - 1))
        width = text_size(text, LABEL_SIZE)[0]
        draw_text(tick_row, min(max(x - width // 2, 0), tick_row.shape[1] - width), 0, text, size=LABEL_SIZE)
    body = stack([bar, tick_row], gap=1)
    if caption:
        body = stack([body, pad(label(caption, ink="muted"), top=1)], vertical=False, gap=8)
    return body


def value_tiles(maps: np.ndarray, scale: ColourScale, tile_size: int) -> np.ndarray:
    """``(..., h, w)`` values coloured on ``scale``, as tiles of longer side ``tile_size``."""
    height, width = tile_shape(maps.shape[-2], maps.shape[-1], tile_size)
    return upscale_nearest(scale.indices(maps), height, width)


def symmetric(limit: float, rule: str = "") -> ColourScale:
    """A diverging scale ``-limit .. +limit`` (``limit`` 0 or less is taken as 1), for signed values like weights."""
    return ColourScale(one_sided=False, limit=limit if limit > 0 else 1.0, rule=rule)


def grey_tiles(images: np.ndarray, tile_size: int, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """``(..., h, w)`` images as grey tiles (``low`` black, ``high`` white) of longer side ``tile_size``."""
    height, width = tile_shape(images.shape[-2], images.shape[-1], tile_size)
    return upscale_nearest(colors.grey_indices(images, low, high), height, width)


def tile_grid(
    tiles: np.ndarray,
    *,
    row_labels: Sequence[str] = (),
    column_labels: Sequence[str] = (),
    under_labels: Sequence[Sequence[str]] = (),
    gutter: int = GUTTER,
) -> np.ndarray:
    """Lay out ``(rows, columns, h, w)`` tiles (palette indices) in a grid with light-grey gutters.

    Args:
        tiles: the tiles, e.g. from :func:`value_tiles` or :func:`grey_tiles`.
        row_labels: one label per row, left of it (may be empty).
        column_labels: one label per column, above it (may be empty).
        under_labels: per row, one small label under each tile (may be empty), e.g. an activation value.
        gutter: light-grey pixels between tiles.
    """
    rows, columns, tile_h, tile_w = tiles.shape
    left = max((text_size(text, LABEL_SIZE)[0] for text in row_labels), default=-6) + 6
    top = text_size("Ag", LABEL_SIZE)[1] + 2 if column_labels else 0
    under = text_size("0", LABEL_SIZE - 1)[1] + 1 if under_labels else 0
    pitch_w, pitch_h = tile_w + gutter, tile_h + gutter + under
    canvas = _blank(top + rows * pitch_h + gutter, left + columns * pitch_w + gutter)
    canvas[top : top + rows * pitch_h + gutter, left:] = colors.GUTTER_INDEX
    for row in range(rows):
        y = top + gutter + row * pitch_h
        if under:
            canvas[y + tile_h : y + tile_h + under, left:] = colors.ZERO_INDEX
        for column in range(columns):
            x = left + gutter + column * pitch_w
            canvas[y : y + tile_h, x : x + tile_w] = tiles[row, column]
            if under and row < len(under_labels) and column < len(under_labels[row]):
                text = fit_text(under_labels[row][column], LABEL_SIZE - 1, tile_w)
                width = text_size(text, LABEL_SIZE - 1)[0]
                draw_text(canvas, x + (tile_w - width) // 2, y + tile_h, text, size=LABEL_SIZE - 1, ink="muted")
        if row < len(row_labels):
            width, height = text_size(row_labels[row], LABEL_SIZE)
            x = left - 6 - width  # right-aligned, next to its row
            draw_text(canvas, x, y + (tile_h - height) // 2, row_labels[row], size=LABEL_SIZE, ink="muted")
    for column, text in enumerate(column_labels):
        text = fit_text(text, LABEL_SIZE, pitch_w)
        width = text_size(text, LABEL_SIZE)[0]
        draw_text(
            canvas, left + gutter + column * pitch_w + (tile_w - width) // 2, 0, text, size=LABEL_SIZE, ink="muted"
        )
    return canvas


def titled(title: str, body: np.ndarray, *, subtitle: str = "", bar: np.ndarray | None = None) -> np.ndarray:
    """``body`` under a bold title (and a muted subtitle), with an optional colour bar right of the title."""
    heading = label(title, size=TITLE_SIZE)
    if subtitle:
        heading = stack([heading, label(subtitle, ink="muted")], gap=2)
    if bar is not None:
        heading = stack([heading, bar], vertical=False, gap=24)
    return pad(stack([heading, body], gap=8), MARGIN, MARGIN, MARGIN, MARGIN)
