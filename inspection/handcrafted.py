"""Four hand-made edge filters in a conv layer, and what they make of a digit: the tutorials' first picture.

A vertical-edge filter is the horizontal derivative ``[-1, 0, 1]`` repeated down three rows: it answers most where
brightness rises from left to right, that is along a vertical edge, and not at all on a horizontal one. The other
three are its negative (bright to dark) and the same pair turned a quarter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from actrec.inspection import drawing
from actrec.recording.scale import colour_scale
from actrec.store import SCALE_SYMMETRIC, SCALE_TANH

__all__ = ["EDGE_FILTERS", "HandcraftedResult", "apply_edge_filters", "draw_handcrafted"]

_VERTICAL = np.array([[-1.0, 0.0, 1.0]] * 3, dtype=np.float32)

EDGE_FILTERS: dict[str, np.ndarray] = {
    "vertical": _VERTICAL,
    "vertical, negated": -_VERTICAL,
    "horizontal": _VERTICAL.T.copy(),
    "horizontal, negated": -_VERTICAL.T,
}
"""The four filters, ``name -> (3, 3)``: each answers +3 on a full-contrast edge of its orientation and sign."""


@dataclass(frozen=True)
class HandcraftedResult:
    """Every stage of the hand-made conv layer for one image.

    Args:
        image: ``(28, 28)`` input.
        filters: ``(4, 3, 3)`` kernels, in :data:`EDGE_FILTERS` order.
        conv: ``(4, 28, 28)`` raw conv outputs (same padding, no bias).
        activation: ``(4, 28, 28)`` tanh of ``conv``.
        pooled: ``(4, 14, 14)`` 2x2 max-pool of ``activation``.
    """

    image: np.ndarray
    filters: np.ndarray
    conv: np.ndarray
    activation: np.ndarray
    pooled: np.ndarray


def apply_edge_filters(image: np.ndarray) -> HandcraftedResult:
    """Run one ``(1, 1, H, W)`` (or ``(H, W)``) image through a conv set to :data:`EDGE_FILTERS`, tanh, max-pool."""
    pixels = torch.as_tensor(np.asarray(image, dtype=np.float32)).reshape(1, 1, *np.shape(image)[-2:])
    filters = np.stack(list(EDGE_FILTERS.values()))
    with torch.no_grad():
        conv = F.conv2d(pixels, torch.from_numpy(filters)[:, None], padding=1)
        activation = torch.tanh(conv)
        pooled = F.max_pool2d(activation, 2)
    return HandcraftedResult(
        image=pixels[0, 0].numpy().copy(),
        filters=filters,
        conv=conv[0].numpy(),
        activation=activation[0].numpy(),
        pooled=pooled[0].numpy(),
    )


def draw_handcrafted(result: HandcraftedResult, *, title: str, tile_size: int = 84) -> np.ndarray:
    """The digit, then one row per filter: the kernel, its raw conv output, after tanh, after max-pool.

    Returns:
        A new ``(H, W)`` uint8 canvas of palette indices.
    """
    conv_scale = colour_scale(SCALE_SYMMETRIC, result.conv)
    tanh_scale = colour_scale(SCALE_TANH, result.activation)
    kernel_tiles = drawing.value_tiles(result.filters, drawing.symmetric(1.0), tile_size)
    columns = [
        ("kernel 3x3", kernel_tiles),
        ("conv 28x28", drawing.value_tiles(result.conv, conv_scale, tile_size)),
        ("tanh 28x28", drawing.value_tiles(result.activation, tanh_scale, tile_size)),
        ("max-pool 14x14", drawing.value_tiles(result.pooled, tanh_scale, tile_size)),
    ]
    tiles = np.stack([tile for _, tile in columns], axis=1)
    grid = drawing.tile_grid(tiles, row_labels=list(EDGE_FILTERS), column_labels=[name for name, _ in columns])
    digit = drawing.stack(
        [drawing.label("input 28x28"), drawing.tile_grid(drawing.grey_tiles(result.image[None], tile_size)[None])],
        gap=3,
    )
    body = drawing.stack([digit, grid], vertical=False, gap=24)
    bar = drawing.colorbar(tanh_scale)
    subtitle = (
        f"the vertical filter is [-1 0 1] in each row: it answers where brightness rises left to right; "
        f"conv outputs drawn on +-{conv_scale.limit:.3g}, the rest on +-1"
    )
    return drawing.titled(title, body, subtitle=subtitle, bar=bar)
