"""The plain records that go into a store and come out of it, shared by the writer and the reader."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ProbeSet:
    """The fixed inputs every recorded step is computed on.

    Args:
        images: ``(P, ...)`` array, exactly as fed to the model (stored as float32).
        labels: ``(P,)`` integer class labels (-1: unknown).
        indices: ``(P,)`` index of each probe in the split it came from.
        class_names: one name per class, indexed by label.
    """

    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    class_names: Sequence[str]


@dataclass(frozen=True)
class LayerSpec:
    """What the store needs to know about one recorded layer before the first step.

    Args:
        name: the layer's name, e.g. ``net.conv1`` or ``lstm[0]``.
        sample_shape: stored shape of one probe's activation, e.g. ``(4, 28, 28)``.
        module_type: the module's class name, for display.
        scale_kind: ``"tanh"``, ``"sigmoid"``, ``"nonnegative"`` or ``"symmetric"``.
        params: shapes of the parameters to record each step, by name (empty: record none).
        kind: ``"maps"``, ``"tokens"`` or ``"vector"``; ``None`` derives it from ``sample_shape``.
        output: the output selector (``""``: the module's tensor).
        channels: indices of the kept channels or units into the full layer (``None``: all).
        full_shape: the per-probe shape before any cap and reshape (``None``: ``sample_shape``).
    """

    name: str
    sample_shape: tuple[int, ...]
    module_type: str
    scale_kind: str
    params: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    kind: str | None = None
    output: str = ""
    channels: tuple[int, ...] | None = None
    full_shape: tuple[int, ...] | None = None

    @classmethod
    def from_layout(cls, layout: Any, scale_kind: str) -> LayerSpec:
        """The spec of a layer as the probe pass laid it out (an :class:`actrec.probe.LayerLayout`, read by its
        fields, so the store needs no torch), with the colour scale's kind chosen for it."""
        return cls(
            name=layout.name,
            sample_shape=layout.sample_shape,
            module_type=layout.module_type,
            scale_kind=scale_kind,
            params=layout.params,
            kind=layout.kind,
            output=layout.output,
            channels=layout.channels,
            full_shape=layout.full_shape,
        )


@dataclass
class StepRecord:
    """Everything recorded at one training step.

    Args:
        global_step: ``trainer.global_step`` (optimizer steps taken so far).
        epoch: the current epoch.
        batch_loss: loss of the training batch behind this step (NaN when unknown).
        batch_acc: accuracy of that batch (NaN when unknown).
        logits: ``(P, K)`` logits of the probes.
        activations: ``(P, *sample_shape)`` array per layer name.
        params: per layer name, the parameter arrays declared in its :class:`LayerSpec`.
        wall_time: seconds since the Unix epoch.
        peaks: per layer name, the largest finite ``|activation|`` if already known.
        nonfinite: per layer name, the number of NaN/inf values if already known.
    """

    global_step: int
    epoch: int
    batch_loss: float
    batch_acc: float
    logits: np.ndarray
    activations: Mapping[str, np.ndarray]
    params: Mapping[str, Mapping[str, np.ndarray]] = field(default_factory=dict)
    wall_time: float = field(default_factory=time.time)
    peaks: Mapping[str, float] = field(default_factory=dict)
    nonfinite: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class LayerInfo:
    """Static description of one recorded layer.

    Args:
        name: the layer's name.
        sample_shape: stored shape of one probe's activation, e.g. ``(4, 28, 28)``.
        module_type: the module's class name.
        scale_kind: ``"tanh"``, ``"sigmoid"``, ``"nonnegative"`` or ``"symmetric"``.
        param_names: names of the recorded parameters (may be empty).
        kind: ``"maps"``, ``"tokens"`` or ``"vector"``.
        output: the output selector (``""``: the module's tensor).
        channels: indices of the kept channels into the full layer (``None``: all).
        full_shape: the per-probe shape before any cap.
    """

    name: str
    sample_shape: tuple[int, ...]
    module_type: str
    scale_kind: str
    param_names: tuple[str, ...]
    kind: str = "maps"
    output: str = ""
    channels: tuple[int, ...] | None = None
    full_shape: tuple[int, ...] = ()
