"""Shift sensitivity: how a model's class probabilities and accuracy change as a digit moves sideways.

The tutorials' argument for convolutions, made measurable: a perceptron has learned each digit at one place, so a
few pixels of shift change its answer; convolutions and pooling see the same strokes wherever they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from actrec.recording import colors
from actrec.recording.scale import colour_scale
from actrec.store import SCALE_SIGMOID

__all__ = [
    "DEFAULT_SHIFTS",
    "draw_accuracy_chart",
    "draw_heatmap",
    "shift_accuracy",
    "shift_images",
    "shift_probabilities",
]

DEFAULT_SHIFTS: tuple[int, ...] = tuple(range(-5, 6))
"""Horizontal shifts in pixels, left (negative) to right."""


def shift_images(images: np.ndarray, shift: int) -> np.ndarray:
    """``(N, C, H, W)`` images moved ``shift`` pixels right (left if negative); uncovered pixels are 0 (black)."""
    images = np.asarray(images)
    shifted = np.zeros_like(images)
    width = images.shape[-1]
    if abs(shift) >= width:
        return shifted
    if shift >= 0:
        shifted[..., shift:] = images[..., : width - shift]
    else:
        shifted[..., :shift] = images[..., -shift:]
    return shifted


def _probabilities(model: nn.Module, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    model.eval()
    chunks = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = torch.as_tensor(images[start : start + batch_size], dtype=torch.float32)
            chunks.append(torch.softmax(model(batch), dim=1).numpy())
    return np.concatenate(chunks).astype(np.float64)


def shift_probabilities(model: nn.Module, image: np.ndarray, shifts: Sequence[int] = DEFAULT_SHIFTS) -> np.ndarray:
    """``(len(shifts), K)`` class probabilities of one ``(1, 1, H, W)`` image at each shift; each row sums to 1."""
    batch = np.concatenate([shift_images(image, shift) for shift in shifts])
    return _probabilities(model, batch)


def shift_accuracy(
    model: nn.Module, images: np.ndarray, labels: np.ndarray, shifts: Sequence[int] = DEFAULT_SHIFTS
) -> np.ndarray:
    """``(len(shifts),)`` accuracy over ``(N, 1, H, W)`` images with ``(N,)`` labels, each set shifted alike."""
    labels = np.asarray(labels)
    return np.array([(_probabilities(model, shift_images(images, s)).argmax(1) == labels).mean() for s in shifts])


_TEXT = (30, 30, 30)
_MUTED = (120, 120, 120)
_LINE_COLORS = ((33, 102, 172), (230, 97, 1))
_CELL = (44, 22)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def draw_heatmap(
    probabilities: np.ndarray,
    shifts: Sequence[int],
    class_names: Sequence[str],
    *,
    title: str,
    subtitle: str = "",
    label: int | None = None,
) -> np.ndarray:
    """An annotated heatmap: one row per shift, one column per class, each cell its probability in percent.

    Colours are the viewer's one-sided scale for values in 0..1 (0 white, 1 dark blue); the true class's column is
    framed.

    Returns:
        A new ``(H, W, 3)`` uint8 RGB image.
    """
    rows, columns = probabilities.shape
    cell_w, cell_h = _CELL
    left, top = 64, 74 if subtitle else 58
    width, height = left + columns * cell_w + 16, top + rows * cell_h + 40
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.text((12, 10), title, font=_font(15), fill=_TEXT)
    if subtitle:
        draw.text((12, 30), subtitle, font=_font(11), fill=_MUTED)
    cells = colors.to_rgb(colour_scale(SCALE_SIGMOID, probabilities).indices(probabilities))
    for column, name in enumerate(class_names):
        draw.text(
            (left + column * cell_w + cell_w / 2, top - 4), str(name)[:6], font=_font(11), fill=_TEXT, anchor="md"
        )
    for row, shift in enumerate(shifts):
        y = top + row * cell_h
        draw.text(
            (left - 8, y + cell_h / 2), f"{shift:+d} px" if shift else "0 px", font=_font(11), fill=_TEXT, anchor="rm"
        )
        for column in range(columns):
            x = left + column * cell_w
            fill = tuple(int(v) for v in cells[row, column])
            draw.rectangle((x, y, x + cell_w - 1, y + cell_h - 1), fill=fill)
            value = probabilities[row, column] * 100
            text = f"{value:.0f}" if value >= 0.5 else ""
            ink = (255, 255, 255) if probabilities[row, column] > 0.55 else _TEXT
            draw.text((x + cell_w / 2, y + cell_h / 2), text, font=_font(11), fill=ink, anchor="mm")
    if label is not None:
        x = left + label * cell_w
        draw.rectangle((x - 1, top - 1, x + cell_w, top + rows * cell_h), outline=_TEXT, width=2)
    footer = "probability in % per shift (rows sum to 100); framed column: the true class"
    draw.text((12, top + rows * cell_h + 12), footer, font=_font(11), fill=_MUTED)
    return np.asarray(image)


def draw_accuracy_chart(
    shifts: Sequence[int], accuracies: dict[str, np.ndarray], *, title: str, subtitle: str = ""
) -> np.ndarray:
    """Accuracy against shift, one line per run, 0-100% on the y axis.

    Returns:
        A new ``(H, W, 3)`` uint8 RGB image.
    """
    legend_top = 52 if subtitle else 36
    width, height = 520, 300 + 18 * len(accuracies)
    left, top, right, bottom = 60, legend_top + 18 * len(accuracies) + 12, width - 20, height - 50
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.text((12, 10), title, font=_font(15), fill=_TEXT)
    if subtitle:
        draw.text((12, 30), subtitle, font=_font(11), fill=_MUTED)
    low, high = min(shifts), max(shifts)

    def x_of(shift: float) -> float:
        return left + (shift - low) / max(high - low, 1) * (right - left)

    def y_of(accuracy: float) -> float:
        return bottom - accuracy * (bottom - top)

    for tick in range(0, 101, 20):
        y = y_of(tick / 100)
        draw.line((left, y, right, y), fill=(232, 232, 232))
        draw.text((left - 6, y), f"{tick}%", font=_font(11), fill=_MUTED, anchor="rm")
    for shift in shifts:
        draw.text((x_of(shift), bottom + 6), f"{shift:+d}" if shift else "0", font=_font(11), fill=_MUTED, anchor="mt")
    draw.line((left, bottom, right, bottom), fill=(60, 60, 60))
    draw.line((left, top, left, bottom), fill=(60, 60, 60))
    draw.text(((left + right) / 2, bottom + 24), "horizontal shift (pixels)", font=_font(11), fill=_TEXT, anchor="mt")
    for index, ((name, values), color) in enumerate(zip(accuracies.items(), _LINE_COLORS * 4, strict=False)):
        points = [(x_of(s), y_of(float(a))) for s, a in zip(shifts, values, strict=True)]
        draw.line(points, fill=color, width=2)
        for x, y in points:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=color)
        legend_y = legend_top + 18 * index + 6
        draw.line((left, legend_y, left + 18, legend_y), fill=color, width=3)
        draw.text((left + 24, legend_y), name, font=_font(11), fill=_TEXT, anchor="lm")
    return np.asarray(image)
