"""Run fixed probe images through any PyTorch model and capture what chosen layers compute.

Torch only: no Lightning, no h5py. The recorder (:mod:`actrec.callbacks`) and the inspection commands
both go through this package.

Example::

    import torch
    from torch import nn
    from actrec.probe import capture, resolve_layers

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    layers = resolve_layers(model, None)          # ['2']: the conv's output after batch norm and ReLU
    seen = capture(model, torch.rand(8, 1, 28, 28), layers)
    seen.activations["2"].shape                   # torch.Size([8, 4, 26, 26])
    seen.output.shape                             # torch.Size([8, 10]): the model's own output

Layer names are qualified module names (``"layer1.0"``) or glob patterns (``"net.conv*"``), optionally
followed by an output selector for modules that return tuples, lists, dicts or dataclasses:
``"lstm[0]"`` (the output sequence of an LSTM), ``"attn[1]"``, ``"block['hidden']"``. Without a
selector the first tensor of the output is taken.
"""

from actrec.probe._batch import LABEL_KEYS, ProbeForward, default_forward, input_part, label_part, shown_inputs
from actrec.probe._capture import (
    SCALE_NONNEGATIVE,
    SCALE_SIGMOID,
    SCALE_SYMMETRIC,
    SCALE_TANH,
    Capture,
    capture,
    eval_mode,
    run_hooked,
    scale_kinds,
)
from actrec.probe._dry import modules_that_ran
from actrec.probe._engine import ProbeEngine
from actrec.probe._layers import ProbeError, default_layers, resolve_layers, select_output, split_selector
from actrec.probe._ring import HostRing
from actrec.probe._select import (
    SMALL_MODEL_PARAMETERS,
    UNLABELED,
    ProbeSelection,
    decide_task,
    probes_from_batch,
    probes_from_dataset,
    probes_from_loader,
    probes_from_tensors,
    split_sample,
)

__all__ = [
    "SMALL_MODEL_PARAMETERS",
    "decide_task",
    "LABEL_KEYS",
    "ProbeForward",
    "default_forward",
    "input_part",
    "label_part",
    "modules_that_ran",
    "probes_from_batch",
    "shown_inputs",
    "SCALE_NONNEGATIVE",
    "SCALE_SIGMOID",
    "SCALE_SYMMETRIC",
    "SCALE_TANH",
    "UNLABELED",
    "Capture",
    "HostRing",
    "ProbeEngine",
    "ProbeError",
    "ProbeSelection",
    "capture",
    "default_layers",
    "eval_mode",
    "probes_from_dataset",
    "probes_from_loader",
    "probes_from_tensors",
    "resolve_layers",
    "run_hooked",
    "scale_kinds",
    "select_output",
    "split_sample",
    "split_selector",
]
