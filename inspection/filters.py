"""Every conv kernel of a layer as a grid (output channels down, input channels across), and over training."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from torch import nn

from actrec.inspection import drawing
from actrec.inspection.errors import InspectError
from actrec.inspection.reference import layer_plan

if TYPE_CHECKING:
    from actrec.store import StoreReader

__all__ = ["conv_kernels", "draw_kernels", "kernel_scale", "pick_convs", "stored_kernels"]


def conv_kernels(model: nn.Module) -> dict[str, np.ndarray]:
    """``{conv module name: (out, in, F, F) weight}`` for every conv, in forward order."""
    return {stage.name: stage.weights for stage in layer_plan(model) if stage.kind == "conv"}


def pick_convs(kernels: dict[str, np.ndarray], layer: str | None) -> dict[str, np.ndarray]:
    """The convs ``layer`` names: all when ``None``; a conv module (``net.conv3.0``) or its block (``net.conv3``).

    Raises:
        InspectError: ``layer`` names no conv.
    """
    if layer is None:
        return kernels
    chosen = {name: weight for name, weight in kernels.items() if name == layer or name.startswith(layer + ".")}
    if not chosen:
        raise InspectError(f"{layer!r} holds no convolution; the model's convs are: {', '.join(kernels) or 'none'}.")
    return chosen


def kernel_scale(weights: np.ndarray) -> float:
    """The symmetric colour scale of a layer's kernels: their largest magnitude (1 if all are 0)."""
    peak = float(np.nanmax(np.abs(weights))) if weights.size else 0.0
    return peak if peak > 0 else 1.0


def _kernel_tile_size(in_channels: int, kernel: int) -> int:
    """Pixels per kernel: large for a few kernels, small enough that 32 input channels stay on a screen."""
    return int(np.clip(900 // max(in_channels, 1), max(kernel * 2, 10), kernel * 12))


def draw_kernels(weight: np.ndarray, *, title: str, subtitle: str = "", scale: float | None = None) -> np.ndarray:
    """One conv's ``(out, in, F, F)`` kernels as a red-white-blue grid with a colour bar.

    Args:
        weight: the kernels.
        title: e.g. ``"net.conv3.0 kernels · step 504"``.
        subtitle: a muted second line.
        scale: the colour scale; defaults to :func:`kernel_scale` of ``weight`` (pass one fixed scale for every
            frame of an animation).

    Returns:
        A new ``(H, W)`` uint8 canvas of palette indices.
    """
    out_channels, in_channels, kernel, _ = weight.shape
    colour = drawing.symmetric(kernel_scale(weight) if scale is None else scale, "largest |weight|")
    tiles = drawing.value_tiles(weight, colour, _kernel_tile_size(in_channels, kernel))
    grid = drawing.tile_grid(
        tiles,
        row_labels=[f"out {o}" for o in range(out_channels)],
        column_labels=[f"in {i}" for i in range(in_channels)] if in_channels <= 16 else (),
        gutter=4,  # wide enough to tell one kernel from the next when neighbours share colours
    )
    shape = f"{out_channels} out x {in_channels} in x {kernel}x{kernel}"
    bar = drawing.colorbar(colour, caption="weight")
    return drawing.titled(title, grid, subtitle=f"{shape}{' · ' + subtitle if subtitle else ''}", bar=bar)


def stored_kernels(store: StoreReader, conv: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``(global steps (N,), kernels (N, out, in, F, F))`` of conv module ``conv`` as the store recorded them.

    Args:
        store: an open :class:`actrec.store.StoreReader`.
        conv: the conv module's name, e.g. ``"net.conv3.0"``; the recorder keeps its weight as parameter
            ``"0.weight"`` of layer ``"net.conv3"``.

    Returns:
        ``None`` when the store holds no per-step weights for it.
    """
    for layer in store.layer_names:
        if not conv.startswith(layer + "."):
            continue
        param = conv[len(layer) + 1 :] + ".weight"
        if param in store.layer(layer).param_names:
            return store.global_steps(), store.params(layer)[param]
    return None
