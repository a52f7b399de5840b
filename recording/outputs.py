"""How a run's probe inputs and outputs are drawn, decided once from the task and the stored shapes.

The store keeps the probe inputs as they were fed (``/probes/images``: images, token ids, vectors) and
each step's output flattened per probe (``/steps/logits``, ``(P, K)``), with the output's shape before
flattening in the optional ``output_shape`` attribute. Every reader that draws them asks these rules:

- inputs: :func:`input_kind`: ``image`` (``(C, H, W)`` or ``(H, W)``), ``ids`` (whole non-negative
  numbers in a ``(T,)`` row: token ids), ``vector`` (anything else of one axis: a noise vector);
- outputs: :func:`output_drawing`: ``classes`` (a classifier: the predicted class, marked right or
  wrong), ``image`` (an output of the input image's size, or a generated ``(C, H, W)`` / ``(H, W)``
  map: drawn as a picture), ``tokens`` (language-model scores ``(T, V)`` over token-id inputs: the
  predicted next token id at each position), ``values`` (anything else: the values themselves on a
  red-blue scale, never a fake class).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from actrec.names import TASK_CLASSIFICATION, TASK_RECONSTRUCTION
from actrec.recording.scale import sample_rows

INPUT_IMAGE = "image"
"""Probe inputs drawn as pictures."""
INPUT_IDS = "ids"
"""Probe inputs drawn as the numbers they are (token ids)."""
INPUT_VECTOR = "vector"
"""Probe inputs drawn as a red-blue strip (a noise vector, features)."""

OUTPUT_CLASSES = "classes"
OUTPUT_IMAGE = "image"
OUTPUT_TOKENS = "tokens"
OUTPUT_VALUES = "values"
OUTPUT_MODES = (OUTPUT_CLASSES, OUTPUT_IMAGE, OUTPUT_TOKENS, OUTPUT_VALUES)

_MAX_IMAGE_CHANNELS = 4  # a generated (C, H, W) with more channels than this is not a picture


def input_kind(inputs: np.ndarray) -> str:
    """How probe inputs ``(P, ...)`` are drawn: :data:`INPUT_IMAGE`, :data:`INPUT_IDS` or :data:`INPUT_VECTOR`.

    Two or three axes per probe are a picture (``(H, W)`` or ``(C, H, W)``); one axis of whole
    non-negative numbers is token ids; anything else (a noise vector, features) is a vector.
    """
    inputs = np.asarray(inputs)
    if inputs.ndim in (3, 4):
        return INPUT_IMAGE
    if inputs.ndim == 2 and inputs.size and _whole_numbers(inputs):
        return INPUT_IDS
    return INPUT_VECTOR


def _whole_numbers(values: np.ndarray) -> bool:
    if np.issubdtype(values.dtype, np.integer):
        return bool((values >= 0).all())
    finite = np.isfinite(values).all()
    return bool(finite and (values >= 0).all() and (np.rint(values) == values).all())


def finite_range(values: np.ndarray) -> tuple[float, float]:
    """``(low, high)`` of the finite values (``(0, 1)`` when none are)."""
    values = np.asarray(values, dtype=np.float32)
    finite = values[np.isfinite(values)]
    return (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)


def largest_magnitude(values: np.ndarray) -> float:
    """The largest finite ``|value|`` (1.0 when there is none, or it is 0): a strip's colour scale."""
    values = np.asarray(values, dtype=np.float32)
    finite = np.abs(values[np.isfinite(values)])
    peak = float(finite.max()) if finite.size else 0.0
    return peak if peak > 0 else 1.0


@dataclass(frozen=True)
class OutputDrawing:
    """How a run's outputs are drawn at every step.

    Args:
        mode: one of :data:`OUTPUT_MODES`.
        shape: one probe's output as drawn: ``(C, H, W)`` or ``(H, W)`` for an image, ``(T, V)`` for
            tokens, ``(K,)`` for values and classes.
        low: the value drawn black (image) / ``-limit`` of the strip (values).
        high: the value drawn white (image) / ``+limit`` of the strip (values).
    """

    mode: str
    shape: tuple[int, ...]
    low: float = 0.0
    high: float = 1.0

    @property
    def label(self) -> str:
        """The row label frames give the outputs."""
        return "next id" if self.mode == OUTPUT_TOKENS else "output"

    def drawn(self, outputs: np.ndarray) -> np.ndarray:
        """What is drawn of stored outputs ``(..., P, K)``: images ``(..., P, *shape)``, next-token ids
        ``(..., P, T)`` (int64; -1 where a position's scores are not finite) or the values ``(..., P, K)``."""
        outputs = np.asarray(outputs)
        lead = outputs.shape[:-1]
        if self.mode == OUTPUT_IMAGE:
            return outputs.reshape(*lead, *self.shape)
        if self.mode == OUTPUT_TOKENS:
            scores = outputs.reshape(*lead, *self.shape)
            finite = np.isfinite(scores).all(axis=-1)
            ids = np.argmax(np.where(np.isfinite(scores), scores, -np.inf), axis=-1)
            return np.where(finite, ids, -1).astype(np.int64)
        return outputs


def output_drawing(
    task: str,
    inputs: np.ndarray,
    num_outputs: int,
    output_shape: Sequence[int] | None,
    read_outputs: Callable[[np.ndarray], np.ndarray],
    num_rows: int,
) -> OutputDrawing:
    """Decide how a run's outputs are drawn, from its task and the stored shapes.

    Args:
        task: the store's task (:data:`actrec.names.TASKS`).
        inputs: the probe inputs ``(P, ...)``.
        num_outputs: ``K``, values per probe in the stored (flattened) outputs.
        output_shape: one probe's output shape before flattening, or ``None`` (older stores).
        read_outputs: reads stored outputs ``(n, P, K)`` of the given rows (for the brightness range of
            generated images and the colour scale of values).
        num_rows: rows recorded.
    """
    inputs = np.asarray(inputs)
    if task == TASK_CLASSIFICATION:
        return OutputDrawing(OUTPUT_CLASSES, (num_outputs,))
    shape = tuple(int(n) for n in output_shape) if output_shape is not None else None
    if shape is not None and math.prod(shape) != num_outputs:
        shape = None  # an attribute that disagrees with the stored values is not trusted
    kind, probe_shape = input_kind(inputs), tuple(inputs.shape[1:])
    if kind == INPUT_IMAGE and num_outputs == math.prod(probe_shape):
        low, high = finite_range(inputs)  # drawn like the inputs, on their brightness scale
        return OutputDrawing(OUTPUT_IMAGE, probe_shape, low, high)
    if kind == INPUT_IDS:
        length = probe_shape[0]
        if shape is None and num_outputs % length == 0 and num_outputs // length >= 2:
            shape = (length, num_outputs // length)
        if shape is not None and len(shape) == 2 and shape[0] == length and shape[1] >= 2:
            return OutputDrawing(OUTPUT_TOKENS, shape)
    samples = read_outputs(sample_rows(num_rows)) if num_rows else np.zeros((0, 1, num_outputs), np.float32)
    if shape is not None and _picture_shape(shape):
        low, high = finite_range(samples)
        return OutputDrawing(OUTPUT_IMAGE, shape, low, high)
    if task == TASK_RECONSTRUCTION and kind == INPUT_VECTOR and num_outputs == math.prod(probe_shape):
        limit = largest_magnitude(inputs)  # compared with the input strip, on its scale
    else:
        limit = largest_magnitude(samples)
    return OutputDrawing(OUTPUT_VALUES, (num_outputs,), -limit, limit)


def _picture_shape(shape: tuple[int, ...]) -> bool:
    """``(H, W)`` or ``(C, H, W)`` of a few channels, each side at least 4: a map worth drawing as a picture."""
    if len(shape) == 3 and shape[0] <= _MAX_IMAGE_CHANNELS:
        shape = shape[1:]
    return len(shape) == 2 and min(shape) >= 4
