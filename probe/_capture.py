"""Run probe images through a model in eval mode and capture chosen layers' outputs."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from actrec.names import SCALE_NONNEGATIVE, SCALE_SIGMOID, SCALE_SYMMETRIC, SCALE_TANH
from actrec.probe._batch import ProbeForward, run_forward
from actrec.probe._layers import ProbeError, modules_of, select_output, torch_reason

_BOUNDED = {
    nn.Tanh: SCALE_TANH,
    nn.Hardtanh: SCALE_TANH,
    nn.Sigmoid: SCALE_SIGMOID,
    nn.Hardsigmoid: SCALE_SIGMOID,
    nn.ReLU: SCALE_NONNEGATIVE,
    nn.ReLU6: SCALE_NONNEGATIVE,
    nn.Softplus: SCALE_NONNEGATIVE,
    # An LSTM's output is o * tanh(c), a GRU's a mix of tanh values: both stay within (-1, 1).
    nn.LSTM: SCALE_TANH,
    nn.GRU: SCALE_TANH,
}
_RANGES = {
    SCALE_TANH: (-1.0, 1.0),
    SCALE_SIGMOID: (0.0, 1.0),
    SCALE_NONNEGATIVE: (0.0, float("inf")),
    SCALE_SYMMETRIC: (-float("inf"), float("inf")),
}
_RANGE_KEEPING = (
    nn.modules.dropout._DropoutNd,
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
)


@dataclass(frozen=True)
class Capture:
    """What one probe pass saw.

    Args:
        activations: per layer name, a detached copy of its output on the model's device, ``(P, ...)``.
        output: the model's own output (its first tensor when it returns several), detached.
    """

    activations: dict[str, torch.Tensor]
    output: torch.Tensor


@contextmanager
def eval_mode(module: nn.Module, submodules: Sequence[nn.Module] | None = None) -> Iterator[None]:
    """Switch every submodule to eval mode, then restore each one's own ``training`` flag.

    ``submodules``: ``list(module.modules())`` kept by a caller that switches every step (walking the tree
    costs more than setting the flags).
    """
    modules = list(module.modules()) if submodules is None else submodules
    flags = [(m, m.training) for m in modules]
    try:
        if type(module).eval is nn.Module.eval and all(type(m).train is nn.Module.train for m in modules):
            # What eval() does when no module overrides train(): training = False on each, without the recursive
            # calls and Module.__setattr__'s type checks (~0.1 ms a pass on a small net, every recorded step).
            for submodule in modules:
                object.__setattr__(submodule, "training", False)
        else:
            module.eval()  # a module's own train() may do more than set its flag
        yield
    finally:
        for submodule, flag in flags:
            # What Module.__setattr__ does for a plain attribute, without its per-call type checks: the
            # recorder restores every submodule's flag after every probe pass.
            object.__setattr__(submodule, "training", flag)


def _device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@contextmanager
def forked_rng(device: torch.device) -> Iterator[None]:
    """Restore the random number generator of ``device`` (and the CPU's) on exit: an observation pass
    through a model that draws random numbers in eval mode leaves training's sequence where it was."""
    if device.type == "cuda":
        with torch.random.fork_rng(devices=[device], device_type="cuda"):
            yield
        return
    # The CPU's generator alone: what fork_rng does for it, without its per-call device bookkeeping.
    state = torch.get_rng_state()
    try:
        yield
    finally:
        torch.set_rng_state(state)


def run_hooked(
    model: nn.Module,
    images: Any,
    layers: Sequence[str],
    on_output: Callable[[str, torch.Tensor], None],
    forward: ProbeForward | None = None,
    fork_rng: bool = True,
    modules: Mapping[str, tuple[nn.Module, str]] | None = None,
    submodules: Sequence[nn.Module] | None = None,
    placed: bool = False,
) -> Any:
    """One forward pass in eval mode under ``no_grad`` calling ``on_output(layer, tensor)`` once per layer.

    ``images`` is a probe batch of any structure; ``forward(model, batch)`` runs it (default: the model's
    ``forward`` with the batch's input part, see :func:`actrec.probe.default_forward`).

    Hooks are registered inside ``try`` and removed in ``finally``; each submodule's ``training`` flag is
    restored; the CPU's and the model's device's random numbers are restored unless ``fork_rng`` is false
    (a CUDA graph capture, which cannot read the generator). Returns the model's raw output.

    A caller that runs the pass every step resolves the rest beforehand: ``modules`` (:func:`modules_of`
    ``(model, layers)``) and ``submodules`` (``list(model.modules())``), and ``placed`` says ``images`` already is
    on the model's device in its dtype. Each of them otherwise walks the module tree again, every pass.

    Raises:
        ProbeError: a layer produced nothing, ran more than once, or its output holds no tensor.
    """
    if modules is None:
        modules = modules_of(model, layers)
    calls = dict.fromkeys(layers, 0)

    def hook_for(layer: str, selector: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            calls[layer] += 1
            if calls[layer] == 1:
                on_output(layer, select_output(output, selector, layer))

        return hook

    handles = []
    try:
        for layer, (module, selector) in modules.items():
            handles.append(module.register_forward_hook(hook_for(layer, selector)))
        forked = forked_rng(_device_of(model)) if fork_rng else nullcontext()
        with eval_mode(model, submodules), torch.no_grad(), forked:
            try:
                output = run_forward(model, images, forward, placed=placed)
            except ProbeError:
                raise
            except (RuntimeError, TypeError, ValueError, IndexError) as error:
                # A shape or dtype the model cannot take: the user's probe images, not a bug to trace back.
                raise ProbeError(f"the model could not run the probe images: {torch_reason(error)}.") from None
    finally:
        for handle in handles:
            handle.remove()
    for layer, count in calls.items():
        if count != 1:
            raise ProbeError(
                f"layer {layer!r} ran {count} times in one forward pass; record a module that runs exactly once."
            )
    return output


def capture(model: nn.Module, images: Any, layers: Sequence[str], forward: ProbeForward | None = None) -> Capture:
    """Run ``images`` through ``model`` without changing it and capture the named layers' outputs.

    The model runs in eval mode under ``torch.no_grad()``; every submodule's ``training`` flag is
    restored afterwards, and no random numbers are consumed by the pass itself.

    Args:
        model: any ``nn.Module``; the images are moved to its parameters' device and dtype.
        images: a batch, ``(P, ...)``.
        layers: names from :func:`resolve_layers` (selectors such as ``"lstm[0]"`` allowed).
        forward: ``forward(model, batch)``, how the batch reaches the model (default: its input part).

    Returns:
        A :class:`Capture` of detached copies on the model's device.

    Raises:
        ProbeError: a layer is unknown, produced nothing or ran more than once.

    Example::

        >>> from torch import nn
        >>> from actrec.probe import capture, resolve_layers
        >>> model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
        >>> layers = resolve_layers(model, None)
        >>> layers
        ['1']
        >>> seen = capture(model, torch.zeros(5, 1, 6, 6), layers)
        >>> tuple(seen.activations["1"].shape), tuple(seen.output.shape)
        ((5, 2, 4, 4), (5, 3))
    """
    activations: dict[str, torch.Tensor] = {}

    def keep(layer: str, tensor: torch.Tensor) -> None:
        activations[layer] = tensor.detach().clone()

    output = run_hooked(model, images, layers, keep, forward)
    return Capture(activations=activations, output=select_output(output, "", "the model's output").detach().clone())


def scale_kinds(
    model: nn.Module, images: Any, layers: Sequence[str], forward: ProbeForward | None = None
) -> dict[str, str]:
    """Each layer's value range, from the last activation module that ran inside it before it returned.

    Returns ``"tanh"`` (within +-1), ``"sigmoid"`` (within 0..1), ``"nonnegative"`` (ReLU-like) or
    ``"symmetric"`` (anything else) per layer name.
    """
    modules = modules_of(model, layers)
    owners: dict[nn.Module, list[str]] = {}
    for layer, (module, _) in modules.items():
        for inner in module.modules():
            owners.setdefault(inner, []).append(layer)
    last: dict[str, str] = dict.fromkeys(layers, SCALE_SYMMETRIC)
    last_shape: dict[str, tuple[int, ...] | None] = dict.fromkeys(layers)
    within: dict[str, bool] = {}

    def trace(module: nn.Module, inputs: Any, output: Any) -> None:
        kind = _BOUNDED.get(type(module))
        if kind is None and (isinstance(module, _RANGE_KEEPING) or list(module.children())):
            return  # dropout, pooling, reshaping and containers keep whatever range came in
        tensor = select_output(output, "") if kind is not None and module not in modules_by_layer else None
        for layer in owners.get(module, ()):
            last[layer] = kind or SCALE_SYMMETRIC
            last_shape[layer] = tuple(tensor.shape) if tensor is not None else None

    def check(layer: str, tensor: torch.Tensor) -> None:
        # The bounded function's output must be the layer's output: same shape (a squeeze-excite gate is
        # (C, 1, 1) inside a (C, H, W) block) and values in its range (x * sigmoid(...) is not a sigmoid).
        shape = last_shape[layer]
        low, high = _RANGES[last[layer]]
        finite = tensor[torch.isfinite(tensor)]
        in_range = not finite.numel() or (float(finite.min()) >= low and float(finite.max()) <= high)
        within[layer] = (shape is None or shape == tuple(tensor.shape)) and in_range

    modules_by_layer = {module for module, _ in modules.values()}
    handles = []
    try:
        for inner in owners:
            handles.append(inner.register_forward_hook(trace))
        # Leaves and recurrent modules report in the order they finish, so the last one decides.
        run_hooked(model, images, layers, check, forward)
    finally:
        for handle in handles:
            handle.remove()
    return {layer: kind if within.get(layer, True) else SCALE_SYMMETRIC for layer, kind in last.items()}
