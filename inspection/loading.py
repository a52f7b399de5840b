"""Load a zoo model from a run folder: its ``config.yaml`` names the model, a checkpoint holds the weights.

Checkpoints are read with ``torch.load(..., weights_only=True)``: tensors and plain containers only, never a pickle
that runs code. Finding a run's files is :mod:`actrec.runs`'s job.
"""

from __future__ import annotations

import os
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn

from actrec.inspection.errors import InspectError
from actrec.runs import Run, RunError, resolve_run

if TYPE_CHECKING:
    from actrec.store import StoreReader

__all__ = ["LoadedModel", "load_run_model", "stored_weights", "zoo_model"]


@dataclass(frozen=True)
class LoadedModel:
    """A run's model with the weights of one checkpoint, in eval mode.

    Args:
        model: the zoo model wrapped under ``net`` as the training module holds it, so module names match the
            recorder's layer names (``net.conv1``).
        model_name: the zoo name, e.g. ``"six_conv_tanh"``.
        run_dir: the run's version folder.
        config: the run's resolved training config.
        checkpoint: the checkpoint file the weights came from.
        step: the checkpoint's global step.
        store_path: the run's activation store, or ``None`` if it has none.
    """

    model: nn.Module
    model_name: str
    run_dir: Path
    config: dict[str, Any]
    checkpoint: Path
    step: int
    store_path: Path | None

    @property
    def label(self) -> str:
        """``"<experiment>/version_N · step S"``, for picture titles."""
        return f"{self.run_dir.parent.name}/{self.run_dir.name} · step {self.step}"


def zoo_model(name: str, init: str = "default") -> nn.Module:
    """A fresh zoo model wrapped under ``net``, named as in a training run (``net.conv1``).

    Raises:
        InspectError: ``name`` is not a zoo model.
    """
    from actrec.trainer.models import MODEL_NAMES, InitName, ModelName, build_model

    if name not in MODEL_NAMES:
        raise InspectError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}.")
    # Names from a config file are plain strings; build_model checks both against its lists.
    return nn.Sequential(OrderedDict(net=build_model(cast("ModelName", name), cast("InitName", init))))


def _locate_run(run: str | os.PathLike) -> Run:
    """The run ``run`` names (see :func:`actrec.runs.resolve_run`), its choice of version said on stderr."""
    if not Path(run).exists():
        raise InspectError(f"{run} does not exist; pass a run folder, e.g. runs/quickstart/version_0.")
    try:
        found = resolve_run(run)
    except RunError as error:
        raise InspectError(str(error)) from error
    if found.note:
        print(found.note, file=sys.stderr)
    return found


def load_run_model(run: str | os.PathLike, checkpoint: str | os.PathLike | None = None) -> LoadedModel:
    """Build a run's model from its config and load a checkpoint's weights.

    Args:
        run: a run folder, an experiment folder (its newest version) or the run's store file.
        checkpoint: a checkpoint file, or the file name of one of the run's checkpoints; ``None`` takes the last.

    Raises:
        InspectError: the run or checkpoint is missing or unreadable, or the model is not in the zoo.
    """
    found = _locate_run(run)
    run_dir, checkpoints = found.path, found.checkpoints()
    try:
        config = found.config()
    except RunError as error:
        raise InspectError(str(error)) from error
    model_config = section if isinstance(section := config.get("model"), dict) else {}
    name, init = model_config.get("model"), model_config.get("init", "default")
    from actrec.trainer.models import MODEL_NAMES

    if name not in MODEL_NAMES:
        raise InspectError(
            f"{run_dir} was trained with model {name!r}, which is not in actrec's zoo ({', '.join(MODEL_NAMES)}); "
            "inspect a model of your own from Python by passing it to actrec.inspection's functions."
        )
    if checkpoint is None:
        if not checkpoints:
            raise InspectError(
                f"{run_dir} has no checkpoints in {found.checkpoint_dir}; train it to the end of an epoch."
            )
        checkpoint_path = checkpoints[-1]
    else:
        checkpoint_path = Path(checkpoint)
        if not checkpoint_path.is_file() and (found.checkpoint_dir / checkpoint_path).is_file():
            checkpoint_path = found.checkpoint_dir / checkpoint_path
        if not checkpoint_path.is_file():
            names = ", ".join(p.name for p in checkpoints) or "none"
            raise InspectError(f"checkpoint {checkpoint} does not exist; {run_dir}'s checkpoints: {names}.")
    try:
        saved = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        state = saved["state_dict"]
    except Exception as error:  # torch raises several types for a damaged or foreign file
        raise InspectError(f"{checkpoint_path} is not a readable Lightning checkpoint ({error}).") from error
    model = zoo_model(name, init)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise InspectError(f"{checkpoint_path} does not hold the weights of a {name} model.") from error
    model.eval()
    store = found.store_path
    return LoadedModel(
        model=model,
        model_name=name,
        run_dir=run_dir,
        config=config,
        checkpoint=checkpoint_path,
        step=int(saved.get("global_step", -1)),
        store_path=store if store.is_file() else None,
    )


def stored_weights(store: StoreReader, model: nn.Module) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The weights the recorder stored at every recorded step, keyed like ``model``'s state dict.

    Args:
        store: an open :class:`actrec.store.StoreReader` of the run (``/layers/<name>/params/<param>``).
        model: the run's model, to name the parameters (``net.conv3`` + ``0.weight`` = ``net.conv3.0.weight``).

    Returns:
        ``(global steps (N,), {state key: (N, ...) values})``; empty when the store holds no weights.
    """
    state_keys = set(model.state_dict())
    weights: dict[str, np.ndarray] = {}
    for layer in store.layer_names:
        for param, values in store.params(layer).items():
            key = f"{layer}.{param}"
            if key in state_keys:
                weights[key] = values
    return store.global_steps(), weights
