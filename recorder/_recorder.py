"""The plain-loop recorder: one probe pass per optimizer step, appended to an activation store."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from torch import nn

from actrec.errors import UserError
from actrec.names import TASK_CHOICES, TASK_CLASSIFICATION
from actrec.probe import (
    SMALL_MODEL_PARAMETERS,
    ProbeEngine,
    ProbeError,
    ProbeForward,
    decide_task,
    modules_that_ran,
    probes_from_batch,
    resolve_layers,
    scale_kinds,
)
from actrec.runs import STORE_FILENAME, finished_summary, running_summary, write_summary
from actrec.store import LayerSpec, ProbeSet, StoreError, StoreWriter, check_compression, check_dtype, column_key


class RecorderError(UserError):
    """A recorder that cannot start or write, in one sentence."""


class Recorder:
    """Record chosen layers of ``model`` on fixed probes, once per optimizer step of your own loop.

    The probe pass runs the model in eval mode under ``torch.no_grad()`` and restores every submodule's
    ``training`` flag, so training is not changed. The store is the one the Lightning callback writes:
    ``actrec render``, ``report``, ``dynamics`` and ``tensorboard`` read it the same way.

    Args:
        model: the model being trained (any ``nn.Module``).
        probes: the probe batch as the model takes it: a tensor, a tuple ``(inputs, labels)`` or a dict
            (``input_ids``, ``attention_mask``, ``labels`` ...).
        path: a run folder (the store is ``<path>/activations.h5`` beside a ``summary.json`` that
            ``actrec runs`` lists) or a path ending in ``.h5``.
        layers: module names or glob patterns; ``None``: the default layers among the modules that run.
        probe_forward: ``probe_forward(model, batch) -> output``; default: ``forward`` with the batch's
            input part (a dict as keyword arguments without its labels).
        task: ``"auto"`` (decided from shapes, said once), ``"classification"``, ``"reconstruction"``,
            ``"generation"``, ``"regression"`` or ``"none"``.
        every_n_steps: record every this many steps (the first step given is always recorded).
        start_step: record the model as it is on entering, as this step (``None``: do not).
        dtype: ``"float16"`` or ``"float32"`` for stored activations.
        record_weights: also store the layers' parameters; ``None`` does so under one million parameters.
        class_names: names of the classes, by label.
        overwrite: replace an existing store at the path.
        compression: ``"none"``, ``"lzf"`` or ``"gzip"``.
        max_channels: keep at most this many channels or units per layer.
        flush_every: flush the store every this many recorded steps.
        verbose: print where the store is on entering and leaving.

    Raises:
        RecorderError: an argument is out of range, a layer is unknown, the probes cannot run, or the
            store cannot be created.
    """

    def __init__(
        self,
        model: nn.Module,
        probes: Any,
        path: str | os.PathLike,
        layers: list[str] | None = None,
        *,
        probe_forward: ProbeForward | None = None,
        task: str = "auto",
        every_n_steps: int = 1,
        start_step: int | None = 0,
        dtype: str = "float16",
        record_weights: bool | None = None,
        class_names: list[str] | None = None,
        overwrite: bool = False,
        compression: str = "none",
        max_channels: int | None = None,
        flush_every: int = 1,
        verbose: bool = True,
    ) -> None:
        if not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise RecorderError(f"every_n_steps must be an integer >= 1, got {every_n_steps!r}.")
        if task not in TASK_CHOICES:
            raise RecorderError(f"task must be one of {', '.join(TASK_CHOICES)}, got {task!r}.")
        try:
            check_dtype(dtype)
            check_compression(compression)
            self._probes = probes_from_batch(probes)
        except (StoreError, ProbeError) as error:
            raise RecorderError(str(error)) from None
        given = Path(path).expanduser().absolute()
        self.run_folder: Path | None = None if given.suffix == ".h5" else given
        self.store_path = given if self.run_folder is None else given / STORE_FILENAME
        self.model = model
        self.layers = layers
        self.probe_forward = probe_forward
        self.task = task
        self.every_n_steps = every_n_steps
        self.start_step = start_step
        self.dtype = dtype
        self.record_weights = record_weights
        self.class_names = list(class_names) if class_names is not None else None
        self.overwrite = overwrite
        self.compression = compression
        self.max_channels = max_channels
        self.flush_every = flush_every
        self.verbose = verbose
        self._engine: ProbeEngine | None = None
        self._writer: StoreWriter | None = None
        self._started: float | None = None
        self._recorded = 0
        self._last_step: int | None = None
        self._metrics: dict[str, float] = {}  # the last value of each scalar() series, for summary.json

    @property
    def recorded_steps(self) -> int:
        """How many steps this recorder has written."""
        return self._recorded

    def __enter__(self) -> Recorder:
        self.open()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if error is None:
            self.close("finished")
        elif isinstance(error, KeyboardInterrupt):
            self.close("interrupted")
        else:
            message = str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
            self.close("failed", error=message)

    def open(self) -> None:
        """Choose the layers, create the store and record ``start_step``.

        Raises:
            RecorderError: see the class.
        """
        model, batch, forward = self.model, self._probes.model_batch, self.probe_forward
        try:
            ran = modules_that_ran(model, batch, forward) if self.layers is None else None
            names = resolve_layers(model, self.layers, ran)
            kinds = scale_kinds(model, batch, names, forward)
            weights = self.record_weights
            if weights is None:
                weights = sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMETERS
            engine = ProbeEngine(
                model, batch, names, dtype=self.dtype, max_channels=self.max_channels, record_params=weights,
                cuda_graph=False, forward=forward,
            )  # fmt: skip
        except ProbeError as error:
            raise RecorderError(str(error)) from None
        task = self.task
        if task == "auto":
            task, why = decide_task(self._probes, engine.output_full_shape)
            self._say(f"task {task} ({why}); pass task= to choose another")
        classes = self.class_names
        if classes is None:
            classes = [str(k) for k in range(engine.output_shape[1])] if task == TASK_CLASSIFICATION else []
        probes = self._probes
        layers = [LayerSpec.from_layout(layout, kinds[name]) for name, layout in engine.layouts.items()]
        config = {
            "model_class": type(model).__qualname__,
            "recorder": {"layers": self.layers, "every_n_steps": self.every_n_steps, "dtype": self.dtype},
            "probes": {"source": probes.source, "count": int(probes.images.shape[0])},
            "task": task,
            "written_by": "actrec.recorder.Recorder",
        }
        try:
            if self.run_folder is not None:
                self.run_folder.mkdir(parents=True, exist_ok=True)
            self._writer = StoreWriter.create(
                self.store_path,
                run_id=uuid.uuid4().hex,
                config=config,
                probes=ProbeSet(
                    images=probes.images.float().numpy(),
                    labels=probes.labels.numpy(),
                    indices=probes.indices.numpy(),
                    class_names=classes,
                ),
                layers=layers,
                num_classes=engine.output_shape[1],
                dtype=engine.dtype,  # float32 when layers compute in bfloat16 (beyond float16's range)
                compression=self.compression,
                overwrite=self.overwrite,
                flush_every=self.flush_every,
                background=False,
                task=task,
                output_shape=engine.output_full_shape[1:],
            )
        except (StoreError, OSError) as error:
            raise RecorderError(str(error)) from None
        self._engine = engine
        self._started = time.time()
        try:
            if self.run_folder is not None:
                write_summary(self.run_folder, running_summary(**self._facts()))
            self._say(f"recording {len(names)} layers to {self.store_path}")
            if self.start_step is not None:
                self.step(self.start_step)
        except BaseException as error:  # the store is open: close it and say how the run ended, then go on failing
            self.__exit__(type(error), error, error.__traceback__)
            raise

    def step(
        self,
        global_step: int,
        loss: torch.Tensor | float | None = None,
        acc: torch.Tensor | float | None = None,
        epoch: int = 0,
    ) -> bool:
        """Record the model as it is after optimizer step ``global_step`` (when it is due).

        Args:
            global_step: optimizer steps taken so far; steps must increase.
            loss: the loss of the batch behind this step (a tensor or a number), stored as ``batch_loss``.
            acc: its accuracy, stored as ``batch_acc``.
            epoch: the current epoch.

        Returns:
            Whether the step was recorded (``False`` between ``every_n_steps``).

        Raises:
            RecorderError: the recorder is not open, or the step does not increase.
        """
        if self._engine is None or self._writer is None:
            raise RecorderError("the recorder is not open; use it as `with Recorder(...) as rec:` or call open().")
        if self._last_step is not None and global_step <= self._last_step:
            raise RecorderError(f"step {global_step} does not follow the last recorded step {self._last_step}.")
        if self._recorded and global_step % self.every_n_steps:
            return False
        host = self._engine.run(loss, acc).cpu()
        values = {column_key(key): view.numpy() for key, view in self._engine.host_views(host).items()}
        try:
            self._writer.append_columns(values, global_step, epoch, time.time())
        except (StoreError, OSError) as error:
            raise RecorderError(f"the store {self.store_path} could not be written: {error}") from None
        self._last_step = global_step
        self._recorded += 1
        return True

    def scalar(self, name: str, global_step: int, value: float) -> None:
        """Store one value of a series (``"val/loss"``, ``"val/acc"``) at ``global_step``."""
        if self._writer is None:
            raise RecorderError("the recorder is not open; use it as `with Recorder(...) as rec:` or call open().")
        self._writer.append_scalar(name, global_step, float(value))
        self._metrics[name] = float(value)

    def close(self, state: str = "finished", error: str | None = None) -> None:
        """Flush and close the store, and write the run's outcome into ``summary.json`` (a run folder only)."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        writer.close()
        if self.run_folder is not None and self._started is not None:
            summary = finished_summary(
                self._facts(),
                state=state,
                started=self._started,
                error=error,
                global_step=self._last_step,
                metrics=self._metrics,
                store_path=self.store_path,
                recorded_steps=self._recorded,
            )
            write_summary(self.run_folder, summary)
        self._say(f"{state}; the store is {self.store_path}")

    def _facts(self) -> dict[str, Any]:
        folder = self.run_folder
        return {
            "experiment": folder.parent.name if folder is not None else None,
            "version": folder.name if folder is not None else None,
            "model": type(self.model).__name__,
            "store_path": str(self.store_path),
            "written_by": "actrec.recorder.Recorder",
        }

    def _say(self, line: str) -> None:
        if self.verbose:
            print(f"actrec recorder: {line}", flush=True)
