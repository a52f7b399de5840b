"""ActivationRecorder: watch chosen layers on fixed probe images at every training step."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks.callback import Callback
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from torch import nn
from typing_extensions import override

from actrec.probe import ProbeError, resolve_layers, run_hooked, scale_kinds, select_output, split_selector
from actrec.store import (
    SCALE_SYMMETRIC,
    SCALE_TANH,
    STORE_FILENAME,
    LayerSpec,
    ProbeSet,
    StepRecord,
    StoreError,
    StoreWriter,
    check_writable,
)

_SMALL_MODEL = 1_000_000  # parameters; below this, recording weights every step costs little
_SCALARS = ("val/loss", "val/acc")


class ActivationRecorder(Callback):
    r"""Record the activations of chosen layers for fixed probe images, at every training step.

    Everything lands in one HDF5 store per run (see :mod:`actrec.store`): the probe images, then per
    recorded step each layer's activations, the probes' logits, the step, epoch and training batch
    loss and accuracy, and optionally the layers' weights. The store is readable while training
    runs, survives a killed process, and continues when training resumes from a checkpoint.

    The probe pass never changes what it observes: it runs the unwrapped LightningModule under
    ``torch.no_grad()`` in eval mode, restores every submodule's ``training`` flag, and consumes no
    random numbers. Only global rank 0 records; it never enters a collective while doing so.

    Args:
        layers: qualified module names or glob patterns (``"net.conv*"``) to record. ``None`` records
            every convolutional block (the outermost module holding exactly one convolution, i.e.
            its post-activation output).
        every_n_steps: record every this many optimizer steps (step 0 is always recorded).
        probes_per_class: how many probe images to take per class from the validation split.
        probe_indices: explicit indices into the validation split; overrides ``probes_per_class``.
        dtype: ``"float16"`` (half the size) or ``"float32"`` for stored activations.
        record_weights: also store the recorded layers' parameters each step; ``None`` does so for
            models under one million parameters.
        path: the store's path; default ``activations.h5`` in the logger's ``log_dir``, else in the
            trainer's ``default_root_dir``.
        overwrite: replace an existing store at the path instead of refusing to start.
        compression: ``"lzf"`` (default: about 0.7x the raw size for little CPU), ``"gzip"`` (level 1,
            about 0.55x, more CPU on the writer thread) or ``"none"`` for the activations.
        flush_every_n_steps: flush the store to disk every this many recorded steps.
        log_images_every_n_steps: also log every layer's red-blue activation grid to TensorBoard
            every this many steps (``0``: off).
        background_writes: write the store on a worker thread, so training only waits for the probe
            pass; ``False`` writes synchronously (slower, simpler to debug).

    Raises:
        MisconfigurationException: an argument is out of range; at setup, an unknown layer name,
            no probe images to be had, or an unusable store path.

    Example::

        trainer = Trainer(callbacks=[ActivationRecorder(layers=["net.conv*"])])
    """

    def __init__(
        self,
        layers: list[str] | None = None,
        every_n_steps: int = 1,
        probes_per_class: int = 1,
        probe_indices: list[int] | None = None,
        dtype: Literal["float16", "float32"] = "float16",
        record_weights: bool | None = None,
        path: str | None = None,
        overwrite: bool = False,
        compression: Literal["none", "lzf", "gzip"] = "lzf",
        flush_every_n_steps: int = 1,
        log_images_every_n_steps: int = 0,
        background_writes: bool = True,
    ) -> None:
        for name, value, minimum in (
            ("every_n_steps", every_n_steps, 1),
            ("probes_per_class", probes_per_class, 1),
            ("flush_every_n_steps", flush_every_n_steps, 1),
            ("log_images_every_n_steps", log_images_every_n_steps, 0),
        ):
            if not isinstance(value, int) or value < minimum:
                raise MisconfigurationException(
                    f"ActivationRecorder: {name} must be an integer >= {minimum}, got {value!r}."
                )
        if dtype not in ("float16", "float32"):
            raise MisconfigurationException(f"ActivationRecorder: dtype must be 'float16' or 'float32', got {dtype!r}.")
        if compression not in ("none", "lzf", "gzip"):
            raise MisconfigurationException(
                f"ActivationRecorder: compression must be 'none', 'lzf' or 'gzip', got {compression!r}."
            )
        if probe_indices is not None and not probe_indices:
            raise MisconfigurationException("ActivationRecorder: probe_indices must name at least one image.")
        if layers is not None and not layers:
            raise MisconfigurationException("ActivationRecorder: layers must name at least one module, or be None.")

        self.layers = list(layers) if layers is not None else None
        self.every_n_steps = every_n_steps
        self.probes_per_class = probes_per_class
        self.probe_indices = list(probe_indices) if probe_indices is not None else None
        self.dtype = dtype
        self.record_weights = record_weights
        self.path = path
        self.overwrite = overwrite
        self.compression = compression
        self.flush_every_n_steps = flush_every_n_steps
        self.log_images_every_n_steps = log_images_every_n_steps
        self.background_writes = background_writes

        self._layer_names: list[str] = []
        self._layer_modules: dict[str, nn.Module] = {}
        self._probes: ProbeSet | None = None
        self._probe_images: torch.Tensor | None = None
        self._num_classes = 0
        self._tanh_layers: dict[str, bool] = {}
        self._image_scales: dict[str, float] = {}
        self._record_weights = False
        self._store_path: Path | None = None
        self._writer: StoreWriter | None = None
        self._run_id = uuid.uuid4().hex
        self._last_recorded_step = -1
        self._resume_state: dict[str, Any] | None = None

    @property
    def store_path(self) -> Path | None:
        """Where this run's store is (known from ``setup``; a resumed run keeps its checkpoint's store)."""
        return self._store_path

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(layers=self.layers, path=self.path)

    # -- setup -----------------------------------------------------------------------------------

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Resolve layers, probe images and the store path; fail here, before any training."""
        if stage != "fit":
            return
        try:
            self._layer_names = resolve_layers(pl_module, self.layers)
        except ProbeError as error:
            raise MisconfigurationException(f"ActivationRecorder: {error}") from None
        modules = dict(pl_module.named_modules())
        self._layer_modules = {name: modules[split_selector(name)[0]] for name in self._layer_names}
        self._probes = self._select_probes(trainer)
        kinds = scale_kinds(pl_module, self._probe_images, self._layer_names)
        self._tanh_layers = {name: kind == SCALE_TANH for name, kind in kinds.items()}
        num_parameters = sum(p.numel() for p in pl_module.parameters())
        self._record_weights = num_parameters < _SMALL_MODEL if self.record_weights is None else self.record_weights
        self._store_path = Path(self.path) if self.path else Path(_default_folder(trainer)) / STORE_FILENAME
        _on_rank_zero_or_raise(trainer, lambda: check_writable(self._store_path))

    def _select_probes(self, trainer: pl.Trainer) -> ProbeSet:
        dataset = getattr(trainer.datamodule, "val_dataset", None)
        if dataset is None:
            raise MisconfigurationException(
                "ActivationRecorder picks its probe images from the data module's `val_dataset`; train with a "
                "LightningDataModule that sets it in setup()."
            )
        class_names = [str(name) for name in getattr(trainer.datamodule, "classes", None) or []]
        if self.probe_indices is not None:
            indices = self.probe_indices
            for index in indices:
                if not 0 <= index < len(dataset):
                    raise MisconfigurationException(
                        f"ActivationRecorder: probe index {index} is outside the validation split "
                        f"of {len(dataset)} images."
                    )
        else:
            indices = _first_per_class(dataset, self.probes_per_class, len(class_names) or None)
        samples = [dataset[i] for i in indices]
        images = torch.stack([torch.as_tensor(image) for image, _ in samples]).float()
        labels = np.array([int(label) for _, label in samples], dtype=np.int64)
        if not class_names:
            class_names = [str(k) for k in range(int(labels.max()) + 1)]
        self._probe_images = images
        return ProbeSet(images.numpy(), labels, np.asarray(indices, dtype=np.int64), class_names)

    # -- the store's lifetime --------------------------------------------------------------------

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Open the store (new, or resumed up to the restored step) and record the current step."""
        step = trainer.global_step
        _on_rank_zero_or_raise(trainer, lambda: self._open_store(trainer, pl_module, step))
        if trainer.is_global_zero and step != self._last_recorded_step:
            self._record(trainer, pl_module, batch_loss=float("nan"), batch_acc=float("nan"))

    def _open_store(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        options = {"flush_every": self.flush_every_n_steps, "background": self.background_writes}
        resume = self._resume_state
        if resume is not None and not self.overwrite:
            self._run_id = resume["run_id"]
            self._store_path = Path(resume["store_path"])
            if not self._store_path.exists():
                raise StoreError(
                    f"the checkpoint's activation store {self._store_path} is missing; restore it, or set the "
                    "recorder's overwrite option to start a new store."
                )
            self._writer = StoreWriter.resume(self._store_path, run_id=self._run_id, keep_through_step=step, **options)
            self._last_recorded_step = self._writer.last_global_step
            return
        specs = self._layer_specs(pl_module)
        self._writer = StoreWriter.create(
            self._store_path,
            run_id=self._run_id,
            config=self._run_config(trainer, pl_module),
            probes=self._probes,
            layers=specs,
            num_classes=self._num_classes,
            dtype=self.dtype,
            compression=None if self.compression == "none" else self.compression,
            overwrite=self.overwrite,
            **options,
        )

    def _layer_specs(self, pl_module: pl.LightningModule) -> list[LayerSpec]:
        # One probe pass tells every layer's output shape and the number of classes.
        activations, _, logits = self._probe_pass(pl_module)
        self._num_classes = int(logits.shape[-1])
        specs = []
        for name, module in self._layer_modules.items():
            params = {p: tuple(v.shape) for p, v in module.named_parameters()} if self._record_weights else {}
            specs.append(
                LayerSpec(
                    name=name,
                    sample_shape=tuple(activations[name].shape[1:]),
                    module_type=type(module).__name__,
                    scale_kind=SCALE_TANH if self._tanh_layers[name] else SCALE_SYMMETRIC,
                    params=params,
                )
            )
        return specs

    def _run_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        datamodule = trainer.datamodule
        return {
            "model": dict(getattr(pl_module, "hparams", {}) or {}),
            "data": dict(getattr(datamodule, "hparams", {}) or {}) if datamodule is not None else {},
            "model_class": type(pl_module).__qualname__,
            "recorder": {key: value for key, value in vars(self).items() if not key.startswith("_")},
            "trainer": {"max_epochs": trainer.max_epochs, "max_steps": trainer.max_steps},
        }

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Record once per optimizer step that is due (micro-batches of accumulation are skipped)."""
        step = trainer.global_step
        if not trainer.is_global_zero or step == self._last_recorded_step or step % self.every_n_steps:
            return
        loss, acc = _batch_metrics(outputs)
        self._record(trainer, pl_module, batch_loss=loss, batch_acc=acc)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Keep the epoch's validation loss and accuracy beside the activations."""
        if trainer.sanity_checking or not trainer.is_global_zero or self._writer is None:
            return
        for name in _SCALARS:
            value = trainer.callback_metrics.get(name)
            if value is not None:
                self._writer.append_scalar(name, trainer.global_step, float(value))

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Record the final state even when it falls between ``every_n_steps``, then flush."""
        if not trainer.is_global_zero or self._writer is None:
            return
        if trainer.global_step != self._last_recorded_step:
            self._record(trainer, pl_module, batch_loss=float("nan"), batch_acc=float("nan"))
        self._writer.flush()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Close the store."""
        self._close()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Keep every step recorded so far when training fails."""
        self._close()

    def _close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "run_id": self._run_id,
            "store_path": str(self._store_path) if self._store_path else None,
            "last_recorded_step": self._last_recorded_step,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_state = dict(state_dict) if state_dict.get("store_path") else None

    # -- recording -------------------------------------------------------------------------------

    def _record(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch_loss: float, batch_acc: float) -> None:
        activations, peaks, logits = self._probe_pass(pl_module)
        params = {}
        if self._record_weights:
            params = {name: _parameters(module) for name, module in self._layer_modules.items()}
        step = trainer.global_step
        self._writer.append(
            StepRecord(
                global_step=step,
                epoch=trainer.current_epoch,
                batch_loss=batch_loss,
                batch_acc=batch_acc,
                logits=logits,
                activations=activations,
                params=params,
                wall_time=time.time(),
                peaks=peaks,
            )
        )
        self._last_recorded_step = step
        if self.log_images_every_n_steps and step % self.log_images_every_n_steps == 0:
            self._log_images(trainer, activations, peaks, logits, step)

    def _probe_pass(self, pl_module: pl.LightningModule) -> tuple[dict[str, np.ndarray], dict[str, float], np.ndarray]:
        """Run the probes through the unwrapped module in eval mode; return activations, their peaks, logits."""
        dtype = torch.float16 if self.dtype == "float16" else torch.float32
        activations: dict[str, np.ndarray] = {}
        peaks: dict[str, float] = {}

        def keep(name: str, output: torch.Tensor) -> None:
            activations[name] = output.detach().to("cpu", dtype, copy=True).numpy()
            peaks[name] = float(output.detach().abs().max()) if output.numel() else 0.0

        try:
            logits = run_hooked(pl_module, self._probe_images, self._layer_names, keep)
        except ProbeError as error:
            raise MisconfigurationException(f"ActivationRecorder: {error}") from None
        logits = select_output(logits, "", "the model's output")
        return activations, peaks, logits.detach().float().cpu().numpy()

    def _log_images(
        self,
        trainer: pl.Trainer,
        activations: dict[str, np.ndarray],
        peaks: dict[str, float],
        logits: np.ndarray,
        step: int,
    ) -> None:
        from actrec.viewer import activation_frame, frame_title

        experiment = getattr(trainer.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_image"):
            return
        predictions = logits.argmax(axis=-1)
        for name, values in activations.items():
            # Tanh layers keep the fixed +-1 scale; others use the largest |activation| seen so far,
            # which only grows, so a colour never comes to mean a smaller value later in the run.
            self._image_scales[name] = max(self._image_scales.get(name, 0.0), peaks[name])
            scale = 1.0 if self._tanh_layers.get(name) else (self._image_scales[name] or 1.0)
            frame = activation_frame(
                values,
                scale=scale,
                probe_images=self._probes.images,
                labels=self._probes.labels,
                predictions=predictions,
                class_names=list(self._probes.class_names),
                title=frame_title(name, step, trainer.current_epoch),
            )
            experiment.add_image(f"activations/{name}", frame, step, dataformats="HWC")


# -- helpers ---------------------------------------------------------------------------------------


def _parameters(module: nn.Module) -> dict[str, np.ndarray]:
    return {
        name: value.detach().to("cpu", torch.float32, copy=True).numpy() for name, value in module.named_parameters()
    }


def _first_per_class(dataset: Any, per_class: int, num_classes: int | None) -> list[int]:
    """The first ``per_class`` indices of every class, in class order; reads labels only as needed."""
    targets = getattr(dataset, "targets", None)
    tensors = getattr(dataset, "tensors", None)
    if targets is None and tensors is not None and len(tensors) > 1:
        targets = tensors[1]
    labels = (int(t) for t in targets) if targets is not None else (int(dataset[i][1]) for i in range(len(dataset)))
    chosen: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        picks = chosen.setdefault(label, [])
        if len(picks) < per_class:
            picks.append(index)
        if num_classes and len(chosen) == num_classes and all(len(p) == per_class for p in chosen.values()):
            break
    short = sorted(label for label, picks in chosen.items() if len(picks) < per_class)
    if not chosen or short:
        raise MisconfigurationException(
            f"ActivationRecorder: the validation split has fewer than probes_per_class={per_class} images "
            f"of class(es) {short}; lower probes_per_class or pass probe_indices."
        )
    return [index for label in sorted(chosen) for index in chosen[label]]


def _batch_metrics(outputs: Any) -> tuple[float, float]:
    def number(value: Any) -> float:
        return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)

    if isinstance(outputs, torch.Tensor):
        return number(outputs), float("nan")
    if isinstance(outputs, dict):
        loss, acc = outputs.get("loss"), outputs.get("acc")
        return (number(loss) if loss is not None else float("nan")), (number(acc) if acc is not None else float("nan"))
    return float("nan"), float("nan")


def _default_folder(trainer: pl.Trainer) -> str:
    logger = trainer.logger
    log_dir = getattr(logger, "log_dir", None) if logger is not None else None
    return log_dir or trainer.default_root_dir


def _on_rank_zero_or_raise(trainer: pl.Trainer, action: Callable[[], None]) -> None:
    """Run ``action`` on global rank 0 and raise its error on every rank, so no rank waits forever."""
    message = None
    if trainer.is_global_zero:
        try:
            action()
        except (StoreError, MisconfigurationException) as error:
            message = str(error)
    message = trainer.strategy.broadcast(message, src=0)
    if message is not None:
        raise MisconfigurationException(message)
