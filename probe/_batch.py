"""A probe batch of any structure, as the model's own step sees it, and how it reaches the model.

A probe batch is what a loader yields: a tensor, a tuple or list (input first, then labels), or a dict
(``input_ids``, ``attention_mask``, ``labels`` ...). The default way to run it is the model's ``forward``
with the batch's input part: the tensor; the first element of a tuple or list; a dict as keyword
arguments, without its label keys. Anything else (an autoencoder that flattens in its step, a GAN's
generator) is one callable, ``probe_forward(model, batch)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from actrec.probe._layers import ProbeError, torch_reason

#: Keys of a dict batch that hold targets, not inputs: left out of the default forward's keyword arguments.
LABEL_KEYS = ("labels", "label", "y", "target", "targets")
#: Keys tried first for the inputs stored and drawn beside the activations.
_SHOWN_KEYS = ("pixel_values", "image", "images", "img", "input", "inputs", "x", "input_ids")

ProbeForward = Callable[[nn.Module, Any], Any]
"""``probe_forward(model, batch) -> output``: how a probe batch reaches the model."""


def input_part(batch: Any) -> Any:
    """The part of ``batch`` the model's ``forward`` takes: a tensor, a tuple's first element, a dict without
    its label keys.

    Raises:
        ProbeError: the batch is of another type, empty, or a dict of labels only.
    """
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, dict):
        inputs = {key: value for key, value in batch.items() if key not in LABEL_KEYS}
        if not inputs:
            raise ProbeError(f"the probe batch's keys {', '.join(map(repr, batch))} are all labels, no inputs.")
        return inputs
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0]
    raise ProbeError(
        f"cannot tell the input in a probe batch of type {type(batch).__name__}; pass probe_forward to say "
        "how it reaches the model."
    )


def label_part(batch: Any) -> Any:
    """The labels in ``batch``: a tuple's second element, a dict's first label key; ``None`` when none."""
    if isinstance(batch, dict):
        return next((batch[key] for key in LABEL_KEYS if key in batch), None)
    if isinstance(batch, (tuple, list)) and len(batch) > 1:
        return batch[1]
    return None


def default_forward(model: nn.Module, batch: Any) -> Any:
    """The model's ``forward`` with the batch's input part (a dict as keyword arguments)."""
    inputs = input_part(batch)
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


def shown_inputs(batch: Any) -> torch.Tensor:
    """The one tensor stored as the probes' inputs (drawn above the activations): the input part, or for a
    dict the first of ``pixel_values``, ``image``, ... ``input_ids``, else its first tensor.

    Raises:
        ProbeError: the input part holds no tensor.
    """
    inputs = input_part(batch)
    if isinstance(inputs, dict):
        named = next((inputs[key] for key in _SHOWN_KEYS if key in inputs), None)
        inputs = named if isinstance(named, torch.Tensor) else _first_tensor(inputs)
    elif not isinstance(inputs, torch.Tensor):
        inputs = _first_tensor(inputs)
    if not isinstance(inputs, torch.Tensor):
        raise ProbeError("the probe batch's input part holds no tensor to store as the probes.")
    return inputs


def batch_size(batch: Any) -> int:
    """The number of probes: the first dimension of the input part's first tensor.

    Raises:
        ProbeError: no tensor with a batch dimension is found.
    """
    found = _first_tensor(input_part(batch))
    if found is None or found.ndim == 0:
        raise ProbeError("the probe batch holds no tensor with the batch dimension first.")
    return int(found.shape[0])


def batch_to(batch: Any, device: torch.device, float_dtype: torch.dtype | None = None) -> Any:
    """``batch`` with every tensor on ``device`` (floating tensors in ``float_dtype`` when given); tensors
    already there are not copied."""

    def move(tensor: torch.Tensor) -> torch.Tensor:
        dtype = float_dtype if float_dtype is not None and tensor.is_floating_point() else tensor.dtype
        return tensor.to(device=device, dtype=dtype)

    return map_tensors(batch, move)


def batch_for(model: nn.Module, batch: Any) -> Any:
    """``batch`` on the model's device, floating tensors in its parameters' dtype."""
    parameter = next(model.parameters(), None)
    if parameter is None:
        return batch
    return batch_to(batch, parameter.device, parameter.dtype if parameter.is_floating_point() else None)


def run_forward(model: nn.Module, batch: Any, forward: ProbeForward | None = None, placed: bool = False) -> Any:
    """Run ``batch`` (moved to the model, unless ``placed`` says it is there) through ``forward(model, batch)``,
    by default :func:`default_forward`.

    The pass runs eagerly even where the model (or a part of it) is ``torch.compile``d: a compiled module
    calls its original module (``_orig_mod``), whose submodules are the ones hooked, and the values are
    the eager ones the original module computes; no graph is compiled for observation.
    """
    with _eager():
        return (forward or default_forward)(model, batch if placed else batch_for(model, batch))


def _eager() -> contextlib.AbstractContextManager[Any]:
    """Compiled code runs as its original Python (torch >= 2.6); older torch has no such switch."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


def map_tensors(batch: Any, function: Callable[[torch.Tensor], Any]) -> Any:
    """``batch`` with ``function`` applied to every tensor in it (tuples, lists and dicts rebuilt)."""
    if isinstance(batch, torch.Tensor):
        return function(batch)
    if isinstance(batch, dict):
        return {key: map_tensors(value, function) for key, value in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
        return type(batch)(*(map_tensors(value, function) for value in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(map_tensors(value, function) for value in batch)
    return batch


def take(batch: Any, positions: Sequence[int], size: int) -> Any:
    """The probes at ``positions`` of a batch of ``size``: every tensor whose first dimension is ``size`` is
    indexed; other values (a shared mask of another shape, a string) are kept as they are."""
    index = torch.as_tensor(list(positions), dtype=torch.long)

    def pick(tensor: torch.Tensor) -> torch.Tensor:
        return tensor[index] if tensor.ndim and tensor.shape[0] == size else tensor

    return map_tensors(batch, pick)


def concatenate(batches: Sequence[Any]) -> Any:
    """Loader batches joined along the batch dimension, structure kept (tensors concatenated).

    Raises:
        ProbeError: the batches differ in structure or in shape past the first dimension.
    """
    first = batches[0]
    try:
        if isinstance(first, torch.Tensor):
            return torch.cat([b.detach().cpu() for b in batches])
        if isinstance(first, dict):
            return {key: concatenate([b[key] for b in batches]) for key in first}
        if isinstance(first, (tuple, list)):
            joined = [concatenate([b[i] for b in batches]) for i in range(len(first))]
            return type(first)(*joined) if hasattr(first, "_fields") else type(first)(joined)
    except (RuntimeError, KeyError, IndexError, TypeError) as error:
        raise ProbeError(
            f"the validation loader's batches cannot be joined into one probe batch: {torch_reason(error)}."
        ) from None
    return first  # a value that is not a tensor (a string, a count) is the same in every batch, or not an input


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None
