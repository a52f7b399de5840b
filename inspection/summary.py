"""The layer table: type, output shape, parameters and receptive field, with the output-size rule checked.

Shapes are worked out twice: on paper, with the rule ``(W - F + 2P) / S + 1`` for every conv and pool, and by a
real forward pass (:func:`actrec.probe.capture` on every leaf module). The table shows both and says where they
disagree, which for the zoo's models is nowhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from actrec.inspection.reference import layer_plan, output_size
from actrec.probe import capture

__all__ = ["SummaryRow", "format_table", "summarize"]


@dataclass(frozen=True)
class SummaryRow:
    """One leaf module.

    Args:
        name: qualified module name.
        module_type: class name.
        shape: output shape of one image as the rule predicts, e.g. ``(4, 28, 28)``.
        forward_shape: output shape of one image in a real forward pass.
        params: learned values.
        receptive_field: side in input pixels of the square one output pixel sees (``None`` after flattening).
        rule: the output-size rule with this layer's numbers, e.g. ``"(28 - 3 + 2*1)/1 + 1 = 28"`` (convs and
            pools; ``""`` otherwise).
    """

    name: str
    module_type: str
    shape: tuple[int, ...]
    forward_shape: tuple[int, ...]
    params: int
    receptive_field: int | None
    rule: str

    @property
    def agrees(self) -> bool:
        """Whether the predicted shape is the forward pass's."""
        return self.shape == self.forward_shape


def summarize(model: nn.Module, input_shape: Sequence[int] = (1, 28, 28)) -> list[SummaryRow]:
    """Work out every leaf module's output shape by the rule, and check it against a real forward pass.

    Args:
        model: a sequential model (every zoo model).
        input_shape: one input's ``(C, H, W)``.
    """
    plan = layer_plan(model)
    seen = capture(model, torch.zeros(1, *input_shape), [stage.name for stage in plan])
    shape: tuple[int, ...] = tuple(int(n) for n in input_shape)
    field: int | None = 1
    jump = 1
    rows = []
    for stage in plan:
        rule = ""
        if stage.kind in ("conv", "pool"):
            channels, height, width = shape
            size = output_size(height, stage.kernel, stage.padding, stage.stride)
            rule = f"({height} - {stage.kernel} + 2*{stage.padding})/{stage.stride} + 1 = {size}"
            out_channels = stage.weights.shape[0] if stage.kind == "conv" else channels
            shape = (out_channels, size, output_size(width, stage.kernel, stage.padding, stage.stride))
            field = None if field is None else field + (stage.kernel - 1) * jump
            jump *= stage.stride
        elif stage.kind == "flatten":
            shape, field = (int(np.prod(shape)),), None
        elif stage.kind == "dense":
            shape, field = (stage.weights.shape[0],), None
        forward_shape = tuple(int(n) for n in seen.activations[stage.name].shape[1:])
        rows.append(SummaryRow(stage.name, stage.module_type, shape, forward_shape, stage.num_params, field, rule))
    return rows


def format_table(rows: Sequence[SummaryRow], *, title: str = "") -> str:
    """The rows as a plain-text table, with a line saying whether every rule matched the forward pass."""
    header = ("layer", "type", "output shape", "params", "receptive field", "output size (W - F + 2P)/S + 1", "")
    lines = [
        (
            row.name,
            row.module_type,
            "×".join(str(n) for n in row.shape),
            f"{row.params:,}" if row.params else "",
            f"{row.receptive_field}×{row.receptive_field}" if row.receptive_field else "",
            row.rule,
            ("ok" if row.agrees else f"forward pass: {'×'.join(str(n) for n in row.forward_shape)}")
            if row.rule
            else "",
        )
        for row in rows
    ]
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]
    out = [title] if title else []
    out += [
        "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()
        for cells in [header, *lines]
    ]
    total = sum(row.params for row in rows)
    bad = [row.name for row in rows if not row.agrees]
    checked = sum(1 for row in rows if row.rule)
    if bad:
        verdict = f"the rule disagrees with the forward pass at: {', '.join(bad)}"
    elif checked:
        verdict = f"every output shape equals the forward pass's; the rule matched all {checked} conv and pool layers"
    else:
        verdict = "every output shape equals the forward pass's (no conv or pool layer to apply the rule to)"
    out += [f"total parameters: {total:,}", verdict + "."]
    return "\n".join(out) + "\n"
