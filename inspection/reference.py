"""A plain-numpy forward pass of the zoo's models, used to check PyTorch and the recorded activations.

:func:`layer_plan` reads a model's leaf modules in the order the forward pass calls them (the zoo's models are
``nn.Sequential`` all the way down) into :class:`Stage` records holding plain numpy weights; :func:`numpy_forward`
runs those stages with the functions below and nothing from torch. The same plan gives ``actrec inspect summary``
its layer table and output-size rule.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from actrec.inspection.errors import InspectError

__all__ = [
    "Stage",
    "conv2d",
    "dense",
    "layer_plan",
    "max_pool2d",
    "numpy_forward",
    "output_size",
    "relu",
    "tanh",
]


def output_size(size: int, kernel: int, padding: int, stride: int) -> int:
    """The output-size rule of a conv or pool along one axis: ``(W - F + 2P) / S + 1``, rounded down."""
    return (size - kernel + 2 * padding) // stride + 1


def conv2d(images: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, stride: int, padding: int) -> np.ndarray:
    """Cross-correlate ``(N, C, H, W)`` images with ``(O, C, F, F)`` kernels, zero-padded by ``padding``.

    Computed as one matrix product over every ``F x F`` window (im2col), in the input's dtype.

    Returns:
        A new ``(N, O, H', W')`` array, ``H' = (H - F + 2P) / S + 1``.
    """
    padded = np.pad(images, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    kernel_h, kernel_w = weight.shape[2:]
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kernel_h, kernel_w), axis=(2, 3))
    windows = windows[:, :, ::stride, ::stride]  # (N, C, H', W', F, F)
    out = np.einsum("nchwij,ocij->nohw", windows, weight, optimize=True)
    if bias is not None:
        out += bias[None, :, None, None]
    return out


def max_pool2d(images: np.ndarray, kernel: int, stride: int, padding: int = 0) -> np.ndarray:
    """Max over ``kernel x kernel`` windows of ``(N, C, H, W)`` every ``stride`` pixels (padding counts as -inf)."""
    padded = np.pad(images, ((0, 0), (0, 0), (padding, padding), (padding, padding)), constant_values=-np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kernel, kernel), axis=(2, 3))
    return windows[:, :, ::stride, ::stride].max(axis=(4, 5))


def dense(features: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """``features @ weight.T + bias`` for ``(N, in)`` features and an ``(out, in)`` weight."""
    out = features @ weight.T
    return out + bias if bias is not None else out


def tanh(values: np.ndarray) -> np.ndarray:
    """Hyperbolic tangent."""
    return np.tanh(values)


def relu(values: np.ndarray) -> np.ndarray:
    """``max(0, x)``."""
    return np.maximum(values, 0)


@dataclass(frozen=True)
class Stage:
    """One leaf module of a model, as the numpy forward pass and the summary see it.

    Args:
        name: the module's qualified name, e.g. ``"net.conv1.0"``.
        kind: ``"conv"``, ``"pool"``, ``"dense"``, ``"tanh"``, ``"relu"``, ``"flatten"`` or ``"identity"``
            (dropout, which does nothing in eval mode).
        module_type: the module's class name, e.g. ``"Conv2d"``.
        kernel, stride, padding: for convs and pools (0 otherwise).
        weight, bias: float64 copies of the parameters of convs and dense layers (``None`` otherwise).
    """

    name: str
    kind: str
    module_type: str
    kernel: int = 0
    stride: int = 0
    padding: int = 0
    weight: np.ndarray | None = field(default=None, repr=False)
    bias: np.ndarray | None = field(default=None, repr=False)

    @property
    def weights(self) -> np.ndarray:
        """:attr:`weight` of a conv or dense stage, which always has one."""
        assert self.weight is not None, f"{self.name} is a {self.kind} stage, which has no weight"
        return self.weight

    @property
    def num_params(self) -> int:
        """Number of learned values (weights and biases)."""
        return sum(array.size for array in (self.weight, self.bias) if array is not None)


def _square(value: int | tuple[int, ...], what: str, name: str) -> int:
    values = (value, value) if isinstance(value, int) else tuple(value)
    if len(set(values)) != 1:
        raise InspectError(f"{name} has a non-square {what} {values}; the numpy reference handles square ones only.")
    return int(values[0])


def _leaves(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module]]:
    children = list(module.named_children())
    if not children:
        yield prefix, module
        return
    if not isinstance(module, nn.Sequential):
        raise InspectError(
            f"{prefix or 'the model'} is a {type(module).__name__}, not an nn.Sequential; the numpy reference "
            "follows sequential models only."
        )
    for child_name, child in children:
        yield from _leaves(child, f"{prefix}.{child_name}" if prefix else child_name)


def _array(tensor: torch.Tensor | None) -> np.ndarray | None:
    return None if tensor is None else tensor.detach().cpu().numpy().astype(np.float64)


def layer_plan(model: nn.Module) -> list[Stage]:
    """The model's leaf modules in forward order, with their settings and float64 weights.

    Args:
        model: a model built from ``nn.Sequential`` blocks of Conv2d, MaxPool2d, Linear, Tanh, ReLU, Flatten and
            Dropout, as every zoo model is (wrapped or not, e.g. under ``net``).

    Raises:
        InspectError: the model holds anything else (one sentence naming the module).
    """
    stages = []
    for name, module in _leaves(model, ""):
        if isinstance(module, nn.Conv2d):
            if module.groups != 1 or _square(module.dilation, "dilation", name) != 1:
                raise InspectError(f"{name} is a grouped or dilated convolution, which the numpy reference lacks.")
            if not isinstance(module.padding, (int, tuple)):
                raise InspectError(f"{name} uses padding={module.padding!r}; the numpy reference needs numbers.")
            stages.append(
                Stage(
                    name,
                    "conv",
                    "Conv2d",
                    kernel=_square(module.kernel_size, "kernel", name),
                    stride=_square(module.stride, "stride", name),
                    padding=_square(module.padding, "padding", name),
                    weight=_array(module.weight),
                    bias=_array(module.bias),
                )
            )
        elif isinstance(module, nn.MaxPool2d):
            kernel = _square(module.kernel_size, "kernel", name)
            stride = _square(module.stride if module.stride is not None else kernel, "stride", name)
            stages.append(Stage(name, "pool", "MaxPool2d", kernel, stride, _square(module.padding, "padding", name)))
        elif isinstance(module, nn.Linear):
            stages.append(Stage(name, "dense", "Linear", weight=_array(module.weight), bias=_array(module.bias)))
        elif isinstance(module, (nn.Tanh, nn.ReLU, nn.Flatten, nn.Dropout)):
            kind = {nn.Tanh: "tanh", nn.ReLU: "relu", nn.Flatten: "flatten"}.get(type(module), "identity")
            stages.append(Stage(name, kind, type(module).__name__))
        else:
            raise InspectError(f"{name} is a {type(module).__name__}, which the numpy reference does not implement.")
    return stages


def numpy_forward(stages: list[Stage], images: np.ndarray) -> dict[str, np.ndarray]:
    """Run ``images`` through ``stages`` in float64 numpy, keeping every stage's output.

    Args:
        stages: from :func:`layer_plan`.
        images: ``(N, C, H, W)`` input batch.

    Returns:
        ``{stage name: output}`` in forward order, plus each enclosing block's output under the block's name
        (a block's output is its last stage's, e.g. ``"net.conv1"`` = the tanh after ``net.conv1.0``), so keys
        match the recorder's layer names.
    """
    values = np.asarray(images, dtype=np.float64)
    outputs: dict[str, np.ndarray] = {}
    for stage in stages:
        if stage.kind == "conv":
            values = conv2d(values, stage.weights, stage.bias, stage.stride, stage.padding)
        elif stage.kind == "pool":
            values = max_pool2d(values, stage.kernel, stage.stride, stage.padding)
        elif stage.kind == "dense":
            values = dense(values, stage.weights, stage.bias)
        elif stage.kind == "tanh":
            values = tanh(values)
        elif stage.kind == "relu":
            values = relu(values)
        elif stage.kind == "flatten":
            values = values.reshape(len(values), -1)
        outputs[stage.name] = values
        parts = stage.name.split(".")
        for depth in range(1, len(parts)):  # later stages of a block overwrite earlier ones: the block's output
            outputs[".".join(parts[:depth])] = values
    return outputs
