"""One image through every stage of a model: each conv's raw output, its activation, each pooling output."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from actrec.inspection import drawing
from actrec.inspection.reference import layer_plan
from actrec.probe import capture
from actrec.recording import colors
from actrec.recording.scale import ColourScale, colour_scale
from actrec.store import SCALE_SYMMETRIC, SCALE_TANH

__all__ = ["FeatureStage", "draw_featuremaps", "feature_stages"]

_ROLES = {"conv": "raw conv output", "tanh": "after tanh", "relu": "after ReLU", "pool": "after max-pool"}
_TILES_PER_ROW = 16


@dataclass(frozen=True)
class FeatureStage:
    """One stage's output for the image.

    Args:
        name: the module's qualified name, e.g. ``"net.conv1.0"``.
        module_type: its class name.
        kind: ``"conv"``, ``"tanh"``, ``"relu"`` or ``"pool"``.
        values: ``(C, H, W)`` output.
    """

    name: str
    module_type: str
    kind: str
    values: np.ndarray

    @property
    def role(self) -> str:
        """What the stage is, in words: ``"raw conv output"``, ``"after tanh"``, ..."""
        return _ROLES[self.kind]


def feature_stages(model: nn.Module, image: np.ndarray) -> list[FeatureStage]:
    """Capture every conv, activation and pool output with a map shape, in forward order, for one image.

    Args:
        model: a sequential model (every zoo model).
        image: ``(1, C, H, W)`` input.
    """
    stages = [stage for stage in layer_plan(model) if stage.kind in _ROLES]
    seen = capture(model, torch.as_tensor(np.asarray(image, dtype=np.float32)), [stage.name for stage in stages])
    found = []
    for stage in stages:
        values = seen.activations[stage.name][0].cpu().numpy()
        if values.ndim == 3:  # activations of dense layers are vectors, not maps
            found.append(FeatureStage(stage.name, stage.module_type, stage.kind, values))
    return found


def _scale(stage: FeatureStage) -> ColourScale:
    """The viewer's colour-scale rule for one stage: fixed after tanh, else from the stage's own values."""
    return colour_scale(SCALE_TANH if stage.kind == "tanh" else SCALE_SYMMETRIC, stage.values)


def draw_featuremaps(
    image: np.ndarray, stages: list[FeatureStage], *, title: str, subtitle: str = "", tile_size: int = 56
) -> np.ndarray:
    """The input, then one labelled section per stage (name, type, shape, colour bar), channels side by side.

    Returns:
        A new ``(H, W)`` uint8 canvas of palette indices.
    """
    sections = []
    pixels = np.asarray(image, dtype=np.float32).reshape(-1, *np.shape(image)[-2:])[:1]
    heading = drawing.label(f"input · {pixels.shape[-2]}x{pixels.shape[-1]}", size=drawing.LABEL_SIZE + 1)
    sections.append(drawing.stack([heading, drawing.tile_grid(drawing.grey_tiles(pixels, tile_size)[None])], gap=3))
    for stage in stages:
        scale = _scale(stage)
        channels, height, width = stage.values.shape
        heading = drawing.label(
            f"{stage.name} · {stage.module_type} · {stage.role} · {channels}x{height}x{width}",
            size=drawing.LABEL_SIZE + 1,
        )
        bar = drawing.colorbar(scale)
        tiles = drawing.value_tiles(stage.values, scale, tile_size)
        rows = -(-channels // _TILES_PER_ROW)
        padded = np.full((rows * _TILES_PER_ROW, *tiles.shape[1:]), colors.ZERO_INDEX, np.uint8)
        padded[:channels] = tiles
        grid = drawing.tile_grid(
            padded.reshape(rows, _TILES_PER_ROW, *tiles.shape[1:])[:, : min(channels, _TILES_PER_ROW)],
            row_labels=[f"ch {row * _TILES_PER_ROW}" for row in range(rows)] if rows > 1 else (),
            column_labels=[f"ch {c}" for c in range(min(channels, _TILES_PER_ROW))] if rows == 1 else (),
        )
        sections.append(drawing.stack([drawing.stack([heading, bar], vertical=False, gap=16), grid], gap=3))
    return drawing.titled(title, drawing.stack(sections, gap=14), subtitle=subtitle)
