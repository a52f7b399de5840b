"""Choose the fixed probe images: from images given, a dataset, or the first batches of a loader."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import default_collate

from actrec.names import TASK_CLASSIFICATION, TASK_GENERATION, TASK_NONE, TASK_RECONSTRUCTION, TASK_REGRESSION
from actrec.probe._batch import batch_size, concatenate, label_part, map_tensors, shown_inputs, take
from actrec.probe._layers import ProbeError, torch_reason

SMALL_MODEL_PARAMETERS = 1_000_000
"""Below this many parameters, recording the weights every step costs little: the recorders' default."""

_IMAGE_KEYS = ("image", "images", "img", "input", "inputs", "x", "pixel_values")
_LABEL_KEYS = ("label", "labels", "target", "targets", "y", "class", "classes")
UNLABELED = -1
"""The label stored for probes that came without one."""


@dataclass(frozen=True)
class ProbeSelection:
    """The chosen probes.

    Args:
        images: ``(P, ...)`` float tensor on the CPU, exactly as they will be fed to the model.
        labels: ``(P,)`` int64 tensor; :data:`UNLABELED` (-1) where no label was known.
        indices: ``(P,)`` int64 tensor, each probe's position in its source (dataset index, or position
            in the loader's batches).
        source: where they came from, in words ("the images given", "val_dataset", "the validation loader").
        batch: the probes as the model's own step sees them: a tensor, a tuple or a dict (labels included),
            ``None`` when that is ``images`` itself.
    """

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    source: str
    batch: Any = None

    @property
    def labeled(self) -> bool:
        return bool((self.labels != UNLABELED).all())

    @property
    def model_batch(self) -> Any:
        """The probes as the model's step sees them (a tensor, tuple or dict); ``images`` when none was kept."""
        return self.images if self.batch is None else self.batch


def split_sample(sample: Any) -> tuple[torch.Tensor, Any]:
    """``(input, label or None)`` of one dataset item or loader batch: a tensor, a tuple/list, or a dict."""
    if isinstance(sample, torch.Tensor):
        return sample, None
    if isinstance(sample, dict):
        image = next((sample[k] for k in _IMAGE_KEYS if k in sample), None)
        label = next((sample[k] for k in _LABEL_KEYS if k in sample), None)
        if image is None:  # token ids and the like: the first tensor of the input part
            return torch.as_tensor(shown_inputs(sample)), label
        return torch.as_tensor(image), label
    if isinstance(sample, (tuple, list)) and sample:
        return torch.as_tensor(sample[0]), (sample[1] if len(sample) > 1 else None)
    raise ProbeError(f"cannot tell the input in a sample of type {type(sample).__name__}.")


def _label_of(label: Any) -> int:
    if label is None:
        return UNLABELED
    try:
        value = torch.as_tensor(label)
    except (TypeError, ValueError, RuntimeError):
        return UNLABELED
    if value.numel() != 1 or value.is_floating_point() or value.is_complex():
        return UNLABELED
    return int(value)


def _pick(labels: Sequence[int], per_class: int, max_probes: int) -> list[int]:
    """Positions of the first ``per_class`` of every class, classes in order; else the first ``max_probes``."""
    if not labels:
        return []
    if any(label == UNLABELED for label in labels):
        return list(range(min(max_probes, len(labels))))
    chosen: dict[int, list[int]] = {}
    for position, label in enumerate(labels):
        picks = chosen.setdefault(label, [])
        if len(picks) < per_class:
            picks.append(position)
    return [p for label in sorted(chosen) for p in chosen[label]][:max_probes]


def probes_from_tensors(images: torch.Tensor, labels: torch.Tensor | Sequence[int] | None) -> ProbeSelection:
    """All the given images, in order, as probes.

    Raises:
        ProbeError: the labels do not match the images one for one, or no images are given.
    """
    try:
        images = torch.as_tensor(images).detach().cpu()
    except (RuntimeError, TypeError, ValueError) as error:
        raise ProbeError(f"probe_images cannot be made into one tensor: {torch_reason(error)}.") from None
    if images.ndim < 1 or images.shape[0] == 0:
        raise ProbeError("probe_images must hold at least one image, with the batch dimension first.")
    if labels is None:
        label_tensor = torch.full((images.shape[0],), UNLABELED, dtype=torch.int64)
    else:
        try:
            label_tensor = torch.as_tensor(labels, dtype=torch.int64).reshape(-1).cpu()
        except (RuntimeError, TypeError, ValueError) as error:
            raise ProbeError(f"probe_labels cannot be made into integer labels: {torch_reason(error)}.") from None
        if label_tensor.shape[0] != images.shape[0]:
            raise ProbeError(f"probe_labels has {label_tensor.shape[0]} labels for {images.shape[0]} probe images.")
    indices = torch.arange(images.shape[0], dtype=torch.int64)
    return ProbeSelection(_as_float(images), label_tensor, indices, "the images given")


def probes_from_dataset(
    dataset: Any, per_class: int = 1, max_probes: int = 64, indices: Sequence[int] | None = None
) -> ProbeSelection:
    """The first ``per_class`` items of every class (labels read as cheaply as the dataset allows).

    Args:
        dataset: a map-style dataset whose items are tensors, ``(input, label, ...)`` or dicts.
        per_class: items per class when labels exist.
        max_probes: at most this many probes (without labels: the first ``max_probes``).
        indices: explicit dataset indices instead.

    Raises:
        ProbeError: an index is outside the dataset, or it is empty.
    """
    size = len(dataset)
    if indices is not None:
        for index in indices:
            if not 0 <= index < size:
                raise ProbeError(f"probe index {index} is outside the validation split of {size} images.")
        chosen = list(indices)
    else:
        chosen = _pick(_dataset_labels(dataset, per_class, max_probes), per_class, max_probes)
    if not chosen:
        raise ProbeError("the validation dataset is empty, so there are no probe images to take.")
    items = [dataset[i] for i in chosen]
    samples = [split_sample(item) for item in items]
    images = _stacked([image for image, _ in samples], "the validation dataset")
    labels = torch.tensor([_label_of(label) for _, label in samples], dtype=torch.int64)
    try:
        batch = default_collate(items)  # what a DataLoader over the dataset hands the model's step
    except (RuntimeError, TypeError, ValueError):
        batch = None
    return ProbeSelection(
        _as_float(images), labels, torch.as_tensor(chosen, dtype=torch.int64), "val_dataset", batch=batch
    )


def _dataset_labels(dataset: Any, per_class: int, max_probes: int) -> list[int]:
    targets = getattr(dataset, "targets", None)
    tensors = getattr(dataset, "tensors", None)
    if targets is None and tensors is not None and len(tensors) > 1:
        targets = tensors[1]
    if targets is not None:
        return [_label_of(t) for t in targets]
    labels: list[int] = []
    counts: dict[int, int] = {}
    # Without a targets column every label costs a full item read: stop once the picture is complete
    # (the first max_probes items unlabeled, or a stretch with no new class after every class is full).
    since_new = 0
    for index in range(len(dataset)):
        label = _label_of(split_sample(dataset[index])[1])
        labels.append(label)
        if label == UNLABELED:
            if index + 1 >= max_probes:
                break
            continue
        since_new = 0 if label not in counts else since_new + 1
        counts[label] = counts.get(label, 0) + 1
        if all(c >= per_class for c in counts.values()) and since_new > 10 * max(len(counts), 1):
            break
    return labels


def probes_from_loader(
    batches: Iterable[Any], per_class: int = 1, max_probes: int = 64, max_batches: int = 4
) -> ProbeSelection:
    """Probes from the first ``max_batches`` batches of a loader (iterated under a forked RNG, so the
    run's random numbers stay as they were).

    Raises:
        ProbeError: the loader yields nothing.
    """
    kept: list[Any] = []
    labels: list[int] = []
    with torch.random.fork_rng(devices=[]):
        for number, batch in enumerate(batches):
            kept.append(map_tensors(batch, lambda tensor: tensor.detach().cpu()))
            labels.extend(_labels_of(batch))
            if number + 1 >= max_batches:
                break
    chosen = _pick(labels, per_class, max_probes)
    if not chosen:
        raise ProbeError("the validation loader yielded no batches, so there are no probe images to take.")
    joined = take(concatenate(kept), chosen, len(labels))
    label_tensor = torch.tensor([labels[i] for i in chosen], dtype=torch.int64)
    return ProbeSelection(
        _as_float(shown_inputs(joined)),
        label_tensor,
        torch.as_tensor(chosen, dtype=torch.int64),
        "the validation loader",
        batch=joined,
    )


def probes_from_batch(batch: Any) -> ProbeSelection:
    """All the probes of one batch given as the model's step sees it (a tensor, a tuple or a dict).

    Raises:
        ProbeError: no input tensor with a batch dimension is found in it.
    """
    batch = map_tensors(batch, lambda tensor: torch.as_tensor(tensor).detach().cpu())
    labels = _labels_of(batch)
    return ProbeSelection(
        _as_float(shown_inputs(batch)),
        torch.tensor(labels, dtype=torch.int64),
        torch.arange(len(labels), dtype=torch.int64),
        "the batch given",
        batch=batch,
    )


def decide_task(probes: ProbeSelection, output_shape: Sequence[int]) -> tuple[str, str]:
    """What a model's output is, from shapes alone: ``(task, why in words)``, one of :data:`actrec.names.TASKS`.

    ``reconstruction``: floating inputs and an output with as many values per probe; ``generation``: a
    vector in, a map or sequence out, or token ids ``(T,)`` in and scores ``(T, V)`` out (a language
    model's next-token scores); ``classification``: two or more scores per probe; ``regression``: one
    value per probe; ``none``: anything else.
    """
    shown_in = tuple(probes.images.shape[1:])
    shown_out = tuple(output_shape[1:])
    values_in, values_out = math.prod(shown_in), math.prod(shown_out)
    floating = probes.images.is_floating_point()
    if floating and values_in > 1 and values_in == values_out:
        return TASK_RECONSTRUCTION, f"the output {shown_out} holds as many values as the input {shown_in}"
    if floating and len(shown_in) == 1 and len(shown_out) >= 2:
        return TASK_GENERATION, f"a vector of {values_in} in, {shown_out} out"
    if not floating and len(shown_in) == 1 and len(shown_out) == 2 and shown_out[0] == shown_in[0] > 0:
        return TASK_GENERATION, f"{shown_in[0]} token ids in, {shown_out[1]} scores per token out: next-token scores"
    if len(shown_out) == 1 and shown_out[0] >= 2:
        return TASK_CLASSIFICATION, f"{shown_out[0]} scores per probe"
    if values_out == 1:
        return TASK_REGRESSION, "one value per probe"
    return TASK_NONE, f"an output of {shown_out} per probe is not class scores"


def _labels_of(batch: Any) -> list[int]:
    """One label per item of a batch (:data:`UNLABELED` where an item has none, or a label per token)."""
    size = batch_size(batch)
    found = label_part(batch)
    if found is None:
        return [UNLABELED] * size
    try:
        rows = torch.as_tensor(found).reshape(size, -1)
    except (RuntimeError, TypeError, ValueError):
        return [UNLABELED] * size
    return [_label_of(label) for label in rows]


def _stacked(images: Sequence[torch.Tensor], source: str) -> torch.Tensor:
    """The probe images as one batch; images of different shapes are the data's problem, told in one sentence."""
    try:
        return torch.stack(list(images))
    except (RuntimeError, TypeError, ValueError) as error:
        raise ProbeError(
            f"the probe images from {source} cannot be stacked into one batch: {torch_reason(error)}."
        ) from None


def _as_float(images: torch.Tensor) -> torch.Tensor:
    # Integer inputs (token ids) stay integers; the model sees exactly what its loader would give it.
    return images.detach().clone()
