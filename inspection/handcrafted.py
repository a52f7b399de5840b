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

__all__ = ["EDGE_FILTERS", "HandcraftedResult", "apply_edge_filters"]

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
