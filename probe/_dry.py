"""A dry probe pass: which modules of a model actually run on a probe batch."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from actrec.probe._batch import ProbeForward, run_forward
from actrec.probe._capture import eval_mode
from actrec.probe._layers import ProbeError, torch_reason


def modules_that_ran(model: nn.Module, batch: Any, forward: ProbeForward | None = None) -> set[str]:
    """The names of the modules that ran in one probe pass (eval mode, ``no_grad``, flags restored).

    Raises:
        ProbeError: the model cannot run the batch.
    """
    ran: set[str] = set()
    handles = []

    def hook_for(name: str):  # noqa: ANN202
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            ran.add(name)

        return hook

    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(hook_for(name)))
        with eval_mode(model), torch.no_grad():
            try:
                run_forward(model, batch, forward)
            except ProbeError:
                raise
            except (RuntimeError, TypeError, ValueError, IndexError, KeyError, AttributeError) as error:
                raise ProbeError(f"the model could not run the probe images: {torch_reason(error)}.") from None
    finally:
        for handle in handles:
            handle.remove()
    return ran
