"""The words every package agrees on, in one place that imports nothing: layer kinds, scale kinds, file names.

``probe`` (torch only: it may not import h5py), ``store`` (the HDF5 format), ``runs`` (the run folder) and
``recording`` all use these, so each constant is written once. This package imports nothing at all,
so importing it never pulls in torch, h5py or Lightning.
"""

from __future__ import annotations

__all__ = [
    "FIXED_SCALES",
    "KINDS_BY_RANK",
    "KIND_MAPS",
    "KIND_TOKENS",
    "KIND_VECTOR",
    "SCALE_KINDS",
    "SCALE_NONNEGATIVE",
    "SCALE_SIGMOID",
    "SCALE_SYMMETRIC",
    "SCALE_TANH",
    "STORE_FILENAME",
    "TASKS",
    "TASK_CHOICES",
    "TASK_CLASSIFICATION",
    "TASK_GENERATION",
    "TASK_NONE",
    "TASK_RECONSTRUCTION",
    "TASK_REGRESSION",
    "kind_of",
]

STORE_FILENAME = "activations.h5"
"""The activation store's file name in a run folder."""

TASK_CLASSIFICATION = "classification"
"""Class scores: readers mark each probe's argmax as a prediction, right or wrong."""
TASK_RECONSTRUCTION = "reconstruction"
"""The input again (an autoencoder): drawn as a picture like the inputs."""
TASK_GENERATION = "generation"
"""Something made from a vector or a prompt: a picture, or a language model's next tokens."""
TASK_REGRESSION = "regression"
"""Values to match: drawn as values."""
TASK_NONE = "none"
"""Just an output: drawn as values."""
TASKS = (TASK_CLASSIFICATION, TASK_RECONSTRUCTION, TASK_GENERATION, TASK_REGRESSION, TASK_NONE)
"""What a model's output is, as the store's ``task`` attribute says (decided by ``probe.decide_task``)."""
TASK_CHOICES = ("auto", *TASKS)
"""The recorders' ``task=`` values: ``auto`` decides from shapes."""

KIND_MAPS = "maps"
"""A layer whose per-probe activation is ``(C, H, W)``: channels of spatial maps."""
KIND_TOKENS = "tokens"
"""A layer whose per-probe activation is ``(T, D)``: a sequence of token vectors."""
KIND_VECTOR = "vector"
"""A layer whose per-probe activation is ``(D,)``: one vector."""
KINDS_BY_RANK: dict[int, str] = {3: KIND_MAPS, 2: KIND_TOKENS, 1: KIND_VECTOR}
"""The rank of a stored per-probe shape decides its kind: the one rank -> kind rule."""

SCALE_TANH = "tanh"
"""Values within -1 .. +1 (tanh, hardtanh, LSTM and GRU outputs)."""
SCALE_SIGMOID = "sigmoid"
"""Values within 0 .. 1 (sigmoid, hardsigmoid)."""
SCALE_NONNEGATIVE = "nonnegative"
"""Values never below 0 (ReLU-like), of no fixed upper bound."""
SCALE_SYMMETRIC = "symmetric"
"""Anything else."""
SCALE_KINDS: tuple[str, ...] = (SCALE_TANH, SCALE_SIGMOID, SCALE_NONNEGATIVE, SCALE_SYMMETRIC)
FIXED_SCALES: dict[str, float] = {SCALE_TANH: 1.0, SCALE_SIGMOID: 1.0}
"""Scale kinds whose colour scale is known in advance; the others derive it from the values."""


def kind_of(sample_shape: tuple[int, ...]) -> str:
    """The kind of a layer from the rank of its per-probe shape: :data:`KINDS_BY_RANK`, with a scalar per probe
    stored as a one-unit vector and anything of rank above 3 as maps (the probe engine folds the extra axes)."""
    return KINDS_BY_RANK.get(len(sample_shape), KIND_MAPS if len(sample_shape) > 3 else KIND_VECTOR)
