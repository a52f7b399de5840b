"""ActivationRecorder: watch chosen layers on fixed probe images at every training step."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks.callback import Callback
from pytorch_lightning.utilities.exceptions import MisconfigurationException, SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_info, rank_zero_warn
from typing_extensions import override

from actrec.callbacks._loggers import logger_run_folder, record_run_end, record_run_start
from actrec.errors import UserError
from actrec.names import TASK_CHOICES, TASK_CLASSIFICATION, TASKS
from actrec.probe import (
    SMALL_MODEL_PARAMETERS,
    HostRing,
    ProbeEngine,
    ProbeError,
    ProbeForward,
    ProbeSelection,
    decide_task,
    modules_that_ran,
    probes_from_batch,
    probes_from_dataset,
    probes_from_loader,
    probes_from_tensors,
    resolve_layers,
    scale_kinds,
)
from actrec.runs import (
    SUMMARY_FILENAME,
    VERSION_PREFIX,
    Run,
    RunError,
    finished_summary,
    running_summary,
    store_for_resume,
    write_summary,
)
from actrec.store import (
    STORE_FILENAME,
    LayerSpec,
    ProbeSet,
    StoreError,
    StoreWriter,
    WriterChild,
    WriterProcess,
    check_compression,
    check_dtype,
    check_new_path,
    check_writable,
    column_key,
)

log = logging.getLogger("actrec")

_WEIGHTS_CAP = 16_384  # parameter values; by default a layer's weights are recorded only if a conv or this small
_VAL_LOSS_NAMES = ["val/loss", "val_loss", "valid/loss", "valid_loss", "validation/loss", "validation_loss"]
_VAL_ACC_NAMES = ["val/acc", "val_acc", "val/accuracy", "val_accuracy", "valid/acc", "valid_acc"]
_BATCH_LOSS_NAMES = ["loss", "train/loss", "train_loss"]
_BATCH_ACC_NAMES = ["acc", "accuracy", "train/acc", "train_acc", "train/accuracy"]
_CONFIG_KEYS = (
    "layers",
    "task",
    "every_n_steps",
    "probes_per_class",
    "probe_indices",
    "max_probes",
    "dtype",
    "record_weights",
    "path",
    "overwrite",
    "compression",
    "flush_every",
    "log_images_every_n_steps",
    "background_writes",
    "max_channels",
    "cuda_graphs",
    "ring_slots",
    "batch_loss_names",
    "batch_acc_names",
    "val_loss_names",
    "val_acc_names",
)


class RecorderConfigError(UserError, MisconfigurationException):
    """An :class:`ActivationRecorder` argument or setup that cannot work, in one sentence.

    Both an actrec refusal (:class:`actrec.errors.UserError`, printed as one sentence by every ``actrec`` command)
    and Lightning's :class:`MisconfigurationException`, which is what Lightning users catch for a bad callback.
    """


@dataclass(frozen=True)
class _Row:
    step: int
    epoch: int
    wall_time: float
    log_images: bool


class ActivationRecorder(Callback):
    r"""Record the activations of chosen layers for fixed probe images, at every training step.

    Everything lands in one HDF5 store per run (see :mod:`actrec.store`): the probe images, then per
    recorded step each layer's activations (with their finite peak and a count of NaN/inf values), the
    probes' logits, the step, epoch and training batch loss and accuracy, and optionally the layers'
    weights. The store is readable while training runs, survives a killed process, and continues when
    training resumes from a checkpoint.

    The probe pass never changes what it observes: it runs the unwrapped LightningModule under
    ``torch.no_grad()`` in eval mode, restores every submodule's ``training`` flag, and consumes no
    random numbers. Only global rank 0 records; it never enters a collective while doing so. The
    training thread never waits for the device: the pass writes into device buffers, one non-blocking
    copy moves a step into a small ring of host slots, and a writer process appends it to the store.

    When the store cannot be written (a full disk, a vanished folder), recording stops with one warning,
    everything flushed so far stays readable, and training continues without recording.

    Args:
        layers: module names or glob patterns (``"net.conv*"``), each optionally with an output selector
            (``"lstm[0]"``); ``None`` takes :func:`actrec.probe.default_layers` (blocks after their
            nonlinearity, residual blocks, transformer encoder layers, recurrent layers).
        every_n_steps: record every this many optimizer steps (step 0 is always recorded).
        probes_per_class: how many probes to take per class when labels are known.
        probe_indices: explicit indices into the data module's ``val_dataset``.
        probe_images: the probe inputs themselves, ``(P, ...)``; first choice when given.
        probe_labels: their labels, ``(P,)`` (optional).
        probe_batch: the probes as the model's own step sees a batch: a tensor, a tuple ``(inputs, labels)``
            or a dict (``input_ids``, ``attention_mask``, ``labels`` ...); first choice when given. By default
            probes come from the data module's ``val_dataset`` or the validation loader, in their structure.
        probe_forward: ``probe_forward(module, batch) -> output``, how a probe batch reaches the model (an
            autoencoder that flattens in its step, a GAN's generator). ``None`` uses the LightningModule's own
            ``probe_forward(batch)`` method when it has one, else its ``forward`` with the batch's input part
            (the tensor; a tuple's first element; a dict as keyword arguments without ``labels``, ``label``,
            ``y``, ``target``).
        task: what the model's output is, stored for the viewer: ``"classification"`` (predictions kept and
            marked right or wrong), ``"reconstruction"`` (the output has the input's shape),
            ``"generation"`` (an output drawn from a vector), ``"regression"``, ``"none"``; ``"auto"``
            decides from the shapes and says its decision once.
        max_probes: at most this many probes (without labels: the first this many).
        dtype: ``"float16"`` (half the size) or ``"float32"`` for stored activations.
        record_weights: also store the recorded layers' parameters each step; ``None`` does so for
            models under one million parameters, and there only for layers holding a convolution (the
            kernels ``actrec inspect filters`` draws) or at most 16,384 parameter values (dense layers'
            weights, most of an MLP's bytes, are left out); ``True`` stores every recorded layer's.
        path: the store's path; default ``activations.h5`` in the logger's ``log_dir``, else in the
            trainer's ``default_root_dir``.
        overwrite: replace an existing store at the path instead of refusing to start.
        compression: ``"none"`` (default), ``"lzf"`` or ``"gzip"`` (level 1) for the activations.
        flush_every: write and flush the store in blocks of this many recorded steps, and at least once a
            second: a killed run loses at most the steps of its last second (or block).
        log_images_every_n_steps: also log every layer's activation grid to TensorBoard every this many
            steps (``0``: off).
        background_writes: hand steps to a writer process through a ring of host slots (``False``:
            copy and write synchronously on the training thread; slower, simpler to debug).
        max_channels: keep at most this many channels (maps) or units (tokens, vectors) per layer,
            evenly spaced; the kept indices are stored. ``None`` keeps all.
        cuda_graphs: on CUDA, replay the probe pass as a CUDA graph (checked bitwise against an eager
            pass when captured; falls back to eager with one log line).
        ring_slots: recorded steps that may be in flight between training and the writer.
        batch_loss_names: where to find the batch loss: keys of ``training_step``'s returned dict,
            then names of logged metrics.
        batch_acc_names: the same for the batch accuracy.
        val_loss_names: logged metric names stored as the ``val/loss`` series (first found wins).
        val_acc_names: logged metric names stored as the ``val/acc`` series.

    Raises:
        RecorderConfigError: (a ``MisconfigurationException`` too) an argument is out of range; at setup, an
            unknown layer name, no probe images to be had, or an unusable store path.

    Example::

        trainer = Trainer(callbacks=[ActivationRecorder(layers=["net.conv*"])])
    """

    _writer_mode = "process"
    """With ``background_writes``: ``"process"`` (a writer process) or ``"thread"`` (HDF5 on the ring's
    consumer thread, in this process); the bench compares the two."""

    def __init__(
        self,
        layers: list[str] | None = None,
        every_n_steps: int = 1,
        probes_per_class: int = 1,
        probe_indices: list[int] | None = None,
        probe_images: torch.Tensor | None = None,
        probe_labels: list[int] | None = None,
        probe_batch: Any = None,
        probe_forward: Callable[[torch.nn.Module, Any], Any] | None = None,
        task: Literal["auto", "classification", "reconstruction", "generation", "regression", "none"] = "auto",
        max_probes: int = 64,
        dtype: Literal["float16", "float32"] = "float16",
        record_weights: bool | None = None,
        path: str | None = None,
        overwrite: bool = False,
        compression: Literal["none", "lzf", "gzip"] = "none",
        flush_every: int = 16,
        log_images_every_n_steps: int = 0,
        background_writes: bool = True,
        max_channels: int | None = None,
        cuda_graphs: bool = True,
        ring_slots: int = 3,
        batch_loss_names: list[str] | None = None,
        batch_acc_names: list[str] | None = None,
        val_loss_names: list[str] | None = None,
        val_acc_names: list[str] | None = None,
    ) -> None:
        for name, value, minimum in (
            ("every_n_steps", every_n_steps, 1),
            ("probes_per_class", probes_per_class, 1),
            ("max_probes", max_probes, 1),
            ("flush_every", flush_every, 1),
            ("log_images_every_n_steps", log_images_every_n_steps, 0),
            ("ring_slots", ring_slots, 1),
            ("max_channels", 1 if max_channels is None else max_channels, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise RecorderConfigError(f"ActivationRecorder: {name} must be an integer >= {minimum}, got {value!r}.")
        try:
            check_dtype(dtype)
            check_compression(compression)
        except StoreError as error:
            raise RecorderConfigError(f"ActivationRecorder: {error}") from None
        if probe_indices is not None and not probe_indices:
            raise RecorderConfigError("ActivationRecorder: probe_indices must name at least one image.")
        if layers is not None and not layers:
            raise RecorderConfigError("ActivationRecorder: layers must name at least one module, or be None.")
        if task not in TASK_CHOICES:
            raise RecorderConfigError(
                f"ActivationRecorder: task must be one of auto, {', '.join(TASKS)}, got {task!r}."
            )
        if probe_forward is not None and not callable(probe_forward):
            raise RecorderConfigError(
                f"ActivationRecorder: probe_forward must be a callable (module, batch), got {probe_forward!r}."
            )
        self._given_probes: ProbeSelection | None = None
        if probe_batch is not None:
            if probe_images is not None:
                raise RecorderConfigError("ActivationRecorder: pass probe_batch or probe_images, not both.")
            try:
                self._given_probes = probes_from_batch(probe_batch)
            except ProbeError as error:
                raise RecorderConfigError(f"ActivationRecorder: {error}") from None
        elif probe_images is not None:
            try:
                self._given_probes = probes_from_tensors(probe_images, probe_labels)
            except ProbeError as error:
                raise RecorderConfigError(f"ActivationRecorder: {error}") from None
        elif probe_labels is not None:
            raise RecorderConfigError("ActivationRecorder: probe_labels needs probe_images.")

        self.layers = list(layers) if layers is not None else None
        self.probe_forward = probe_forward
        self.task = task
        self.every_n_steps = every_n_steps
        self.probes_per_class = probes_per_class
        self.probe_indices = list(probe_indices) if probe_indices is not None else None
        self.max_probes = max_probes
        self.dtype = dtype
        self.record_weights = record_weights
        self.path = path
        self.overwrite = overwrite
        self.compression = compression
        self.flush_every = flush_every
        self.log_images_every_n_steps = log_images_every_n_steps
        self.background_writes = background_writes
        self.max_channels = max_channels
        self.cuda_graphs = cuda_graphs
        self.ring_slots = ring_slots
        self.batch_loss_names = list(batch_loss_names or _BATCH_LOSS_NAMES)
        self.batch_acc_names = list(batch_acc_names or _BATCH_ACC_NAMES)
        self.val_loss_names = list(val_loss_names or _VAL_LOSS_NAMES)
        self.val_acc_names = list(val_acc_names or _VAL_ACC_NAMES)

        self._layer_names: list[str] = []
        self._forward: ProbeForward | None = None
        self._task: str = task
        self._probes: ProbeSelection | None = None
        self._class_names: list[str] = []
        self._scale_kinds: dict[str, str] = {}
        self._live_scales: dict[str, Any] = {}
        self._live_output: Any = None  # how live TensorBoard images draw a non-classifier's outputs
        self._record_weights = False
        self._store_path: Path | None = None
        self._engine: ProbeEngine | None = None
        self._ring: HostRing | None = None
        self._process: WriterProcess | None = None
        self._spare_child: WriterChild | None = None  # a writer process started in setup, before its store
        self._writer: StoreWriter | None = None
        self._stopped: str | None = None
        self._run_id = uuid.uuid4().hex
        self._last_recorded_step = -1
        self._resume_state: dict[str, Any] | None = None
        self._resumed = False
        self._val_written: dict[str, bool] = {"val/loss": False, "val/acc": False}
        self._batch_metrics_found: dict[str, bool] = {"batch_loss": False, "batch_acc": False}
        self._batch_metrics_looked_up = False
        self._step_values_seen: dict[str, torch.Tensor] = {}  # logged step tensors at the last lookup
        self._validated = False
        self._own_folder: Path | None = None
        self._claim_folder = False
        self._writes_summary = False
        self._started: float | None = None
        self._finished = False
        self._recorded_rows = 0
        self._logged_with: list[str] = []  # the W&B or MLflow runs the store's path was recorded with

    @property
    def store_path(self) -> Path | None:
        """Where this run's store is (known from ``setup``; a resumed run keeps its checkpoint's store)."""
        return self._store_path

    @property
    def ring_waits(self) -> int:
        """How often training waited because every slot of the ring (or of the writer) was in flight."""
        waits = self._ring.waits if self._ring is not None else 0
        return waits + (self._process.waits if self._process is not None else 0)

    @property
    def probe_pass(self) -> str:
        """How the probe pass runs: ``"CUDA graph"`` or ``"eager (...)"`` with the reason."""
        return self._engine.graph_note if self._engine is not None else "not started"

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
        refusal = sharded_strategy_refusal(trainer.strategy)
        if refusal is not None:
            raise RecorderConfigError(refusal)
        try:
            self._probes = self._select_probes(trainer, pl_module)
            self._forward = _probe_forward(pl_module, self.probe_forward)
            batch = self._probes.model_batch
            # Only modules that run on the probes can be defaults (not a GAN's discriminator under its
            # generator's probes); named layers are checked by the engine's first pass instead.
            ran = modules_that_ran(pl_module, batch, self._forward) if self.layers is None else None
            self._layer_names = resolve_layers(pl_module, self.layers, ran)
            self._scale_kinds = scale_kinds(pl_module, batch, self._layer_names, self._forward)
        except ProbeError as error:
            raise RecorderConfigError(f"ActivationRecorder: {error}") from None
        num_parameters = sum(p.numel() for p in pl_module.parameters())
        self._record_weights = (
            num_parameters < SMALL_MODEL_PARAMETERS if self.record_weights is None else self.record_weights
        )
        if self.path:
            path, self._own_folder, self._claim_folder = Path(self.path), None, False
        else:
            folder, self._claim_folder = _default_folder(trainer)
            path = folder / STORE_FILENAME
            self._own_folder = folder.expanduser().absolute()
        self._store_path = path.expanduser().absolute()
        # A version folder still to be claimed is made with the store; until then its parent is checked.
        writable = self._store_path
        if self._claim_folder:
            if self._own_folder is None:
                raise RuntimeError("ActivationRecorder: a version folder to claim is the recorder's own folder")
            writable = self._own_folder.parent / STORE_FILENAME
        _on_rank_zero_or_raise(trainer, lambda: check_writable(writable))
        if trainer.is_global_zero and self.background_writes and self._writer_mode == "process":
            # Its interpreter and imports (~0.2 s of CPU) then overlap Lightning's own setup, not training steps.
            self._discard_spare_child()
            self._spare_child = WriterChild()

    def _select_probes(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> ProbeSelection:
        """Probes from, in order: the images given; ``val_dataset``; the first batches of the validation loader."""
        datamodule = _datamodule(trainer)
        dataset = getattr(datamodule, "val_dataset", None)
        self._class_names = [str(n) for n in getattr(datamodule, "classes", None) or getattr(dataset, "classes", [])]
        if self._given_probes is not None:
            return self._given_probes
        if dataset is not None:
            return probes_from_dataset(dataset, self.probes_per_class, self.max_probes, self.probe_indices)
        if self.probe_indices is not None:
            raise ProbeError("probe_indices index the data module's val_dataset, and there is none.")
        source = getattr(getattr(getattr(trainer.fit_loop, "epoch_loop", None), "val_loop", None), "_data_source", None)
        if source is not None and source.is_defined():
            loaders = source.dataloader()
            loader = loaders[0] if isinstance(loaders, (list, tuple)) and loaders else loaders
            if isinstance(loader, dict) and loader:
                loader = next(iter(loader.values()))
            if loader is not None:
                self._class_names = self._class_names or [
                    str(n) for n in getattr(getattr(loader, "dataset", None), "classes", None) or []
                ]
                return probes_from_loader(loader, self.probes_per_class, self.max_probes)
        raise ProbeError(
            "found no probe images: pass probe_images to the recorder, give the data module a val_dataset, "
            "or give the trainer a validation loader."
        )

    # -- the store's lifetime --------------------------------------------------------------------

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Create a new store, or check the checkpoint's one: after the checkpoint's callback state is
        restored, before the logger writes anything into the run's folder."""
        _on_rank_zero_or_raise(trainer, lambda: self._prepare_store(trainer, pl_module))

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start writing (a resumed store is cut back to the restored step here, once it is known) and
        record the starting step: step 0 of a new run, or a resumed step that is on the schedule."""
        _on_rank_zero_or_raise(trainer, lambda: self._start_writing(trainer, pl_module))
        step = trainer.global_step
        due = not self._resumed or step % self.every_n_steps == 0
        if trainer.is_global_zero and due and step != self._last_recorded_step:
            self._record(trainer, None, None)

    def _prepare_store(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        claimed = self._claim_version_folder() if self._claim_folder else None
        try:
            self._open_store(trainer, pl_module)
        except BaseException:
            if claimed is not None and not any(claimed.iterdir()):
                claimed.rmdir()  # a run refused before its first step leaves no empty version folder
            raise
        self._start_summary(trainer, pl_module)

    @property
    def _built_engine(self) -> ProbeEngine:
        if self._engine is None:
            raise RuntimeError("ActivationRecorder: the probe engine is built before anything is recorded")
        return self._engine

    def _open_store(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        resume = self._resume_state
        if resume is not None and not self.overwrite:
            self._run_id = resume["run_id"]
            stored = _resolve_checkpoint_path(resume["store_path"], self._store_path)
            # A copied run's checkpoint still names the original's store: continue the copy's own (actrec.runs).
            if trainer.ckpt_path is not None:
                try:
                    stored = store_for_resume(trainer.ckpt_path, stored, explicit=self.path)
                except RunError as error:
                    raise StoreError(str(error)) from None
            self._store_path = stored
            if not self._store_path.exists():
                raise StoreError(
                    f"the checkpoint's activation store {self._store_path} is missing; restore it, or set the "
                    "recorder's overwrite option to start a new store."
                )
            check_writable(self._store_path)
            self._resumed = True
            return
        if self._store_path is None:
            raise RuntimeError("ActivationRecorder: setup() chose the store's path")
        check_new_path(self._store_path, self.overwrite)
        self._build_engine(trainer, pl_module)
        if self._engine is None:
            raise RuntimeError("ActivationRecorder: built just above")
        StoreWriter.create(
            self._store_path,
            run_id=self._run_id,
            config=self._run_config(trainer, pl_module),
            probes=self._probe_set(),
            layers=self._layer_specs(),
            num_classes=self._engine.output_shape[1],
            dtype=self._engine.dtype,  # float32 when layers compute in bfloat16
            compression=self.compression,
            overwrite=self.overwrite,
            background=False,
            task=self._task,
            output_shape=self._engine.output_full_shape[1:],
        ).close()
        self._open_writer(wait=False)

    def _claim_version_folder(self) -> Path:
        """Create this run's ``actrec/version_N`` (the next free N: a folder made by another run meanwhile
        is skipped), so two runs in one folder never share a store."""
        if self._own_folder is None:
            raise RuntimeError("ActivationRecorder: only the recorder's own folder is claimed")
        parent = self._own_folder.parent
        number = int(self._own_folder.name.removeprefix(VERSION_PREFIX))
        parent.mkdir(parents=True, exist_ok=True)
        while True:
            folder = parent / f"{VERSION_PREFIX}{number}"
            try:
                folder.mkdir()
                break
            except FileExistsError:
                number += 1
        self._own_folder = folder
        self._store_path = folder / STORE_FILENAME
        self._claim_folder = False
        return folder

    # -- summary.json ----------------------------------------------------------------------------

    def _start_summary(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write ``summary.json`` ("running") into the run folder the recorder chose, unless this process
        already wrote one there (``actrec train`` does, with more to say), and say where the store is."""
        self._started = time.time()
        folder = self._own_folder
        if folder is not None:
            try:
                existing = Run(folder).summary()
            except RunError:
                existing = None
            ours = existing is not None and existing.get("state") == "running" and existing.get("pid") == os.getpid()
            self._writes_summary = not ours
            if self._writes_summary:
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                    write_summary(folder, running_summary(**self._summary_facts(trainer, pl_module)))
                except OSError as error:  # the store is what matters; a summary that cannot be written is said
                    self._writes_summary = False
                    rank_zero_warn(f"ActivationRecorder: cannot write {folder / 'summary.json'}: {error.strerror}.")
        if self._store_path is None:
            raise RuntimeError("ActivationRecorder: the store's path is chosen before its summary is written")
        facts = {"run_id": self._run_id, "task": self._task, "layer_count": len(self._layer_names)}
        # A W&B or MLflow run records the path now, so a run that dies still names its store.
        self._logged_with = record_run_start(trainer.loggers, self._store_path, facts)
        rank_zero_info(f"ActivationRecorder: recording to {self._store_path}{self._where_logged()}")

    def _where_logged(self) -> str:
        return f" (path recorded with the {', '.join(self._logged_with)})" if self._logged_with else ""

    def _summary_facts(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        folder = self._own_folder
        return {
            "experiment": folder.parent.name if folder is not None else None,
            "version": folder.name if folder is not None else None,
            "model": type(pl_module).__name__,
            "dataset": type(_datamodule(trainer)).__name__ if _datamodule(trainer) is not None else None,
            "store_path": str(self._store_path),
            "written_by": "ActivationRecorder",
        }

    def _finish_summary(self, trainer: pl.Trainer, state: str, error: str | None = None) -> None:
        """Rewrite ``summary.json`` with how the run ended, once, and say where the store is."""
        if self._finished or self._started is None or not trainer.is_global_zero:
            return
        self._finished = True
        self._write_finished_summary(trainer, state, error, self._started)
        if self._store_path is not None and self._logged_with:
            folder = self._own_folder
            record_run_end(trainer.loggers, self._store_path, [folder / SUMMARY_FILENAME] if folder else [])
        rank_zero_info(f"ActivationRecorder: {state}; the store is {self._store_path}{self._where_logged()}")

    def _write_finished_summary(self, trainer: pl.Trainer, state: str, error: str | None, started: float) -> None:
        if not self._writes_summary or self._own_folder is None or not self._own_folder.is_dir():
            return
        summary = finished_summary(
            self._summary_facts(trainer, trainer.lightning_module),
            state=state,
            started=started,
            error=error,
            global_step=int(trainer.global_step),
            epoch=int(trainer.current_epoch),
            # Values Lightning had already computed: trainer.callback_metrics, read here on rank 0 alone,
            # would compute sync_dist epoch metrics with an all_reduce the other ranks never join.
            metrics=computed_metrics(trainer),
            store_path=self._store_path,
            recorded_steps=self._recorded_rows,
        )
        try:
            write_summary(self._own_folder, summary)
        except OSError as error:
            rank_zero_warn(f"ActivationRecorder: cannot write {self._own_folder / 'summary.json'}: {error.strerror}.")

    def _start_writing(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._store_path is None:
            raise RuntimeError("ActivationRecorder: setup() chose the store's path")
        if self._resumed:
            self._build_engine(trainer, pl_module)
            StoreWriter.resume(
                self._store_path,
                run_id=self._run_id,
                keep_through_step=trainer.global_step,
                layers=self._layer_specs(),
                background=False,
            ).close()
            self._open_writer(wait=True)
        log.info(
            "actrec: recording %d layers to %s (probe pass: %s)",
            len(self._layer_names),
            self._store_path,
            self._built_engine.graph_note,
        )

    def _open_writer(self, wait: bool) -> None:
        """Open the store for appending: a writer process (started without waiting for a new store, so its
        start-up overlaps Lightning's), HDF5 on the ring's thread, or synchronous writes."""
        if self._store_path is None:
            raise RuntimeError("ActivationRecorder: setup() chose the store's path")
        engine = self._built_engine
        if self.background_writes and self._writer_mode == "process":
            fields = [(column_key(f.key), f.dtype, f.shape, f.offset) for f in engine.fields]
            child, self._spare_child = self._spare_child, None
            self._process = WriterProcess(
                self._store_path,
                fields,
                engine.nbytes,
                # The writer holds a block's slots until the block is on disk; room for a second block beside
                # it, so training waits for a slot only when the writer falls a block behind (on a CPU no ring
                # sits in front of it).
                slots=self.ring_slots + 2 * self.flush_every + 1,
                flush_every=self.flush_every,
                wait=wait,
                child=child,
            )
            self._last_recorded_step = self._process.last_global_step if wait else -1
        else:
            self._writer = StoreWriter.open_for_append(self._store_path, flush_every=self.flush_every, background=False)
            self._last_recorded_step = self._writer.last_global_step
        # On a CPU the packed step already is host memory and the writer process takes it with one copy:
        # a ring thread would only add a hand-off (and a thread contending for the GIL) to every step.
        if self.background_writes and (self._process is None or engine.device.type != "cpu"):
            self._ring = HostRing(engine.nbytes, self.ring_slots, engine.device, self._consume)

    def _build_engine(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._probes is None:
            raise RuntimeError("ActivationRecorder: setup() selected the probes")
        try:
            self._engine = ProbeEngine(
                pl_module,
                self._probes.model_batch,
                self._layer_names,
                dtype=self.dtype,
                max_channels=self.max_channels,
                record_params=self._record_weights,
                cuda_graph=self.cuda_graphs,
                forward_context=trainer.precision_plugin.forward_context,
                forward=self._forward,
                params_cap=_WEIGHTS_CAP if self.record_weights is None else None,
            )
        except ProbeError as error:
            raise RecorderConfigError(f"ActivationRecorder: {error}") from None
        if self._task == "auto":
            self._task, why = decide_task(self._probes, self._engine.output_full_shape)
            rank_zero_info(f"ActivationRecorder: task {self._task} ({why}); pass task= to choose another.")
        if self._task == TASK_CLASSIFICATION and not self._class_names:
            self._class_names = [str(k) for k in range(self._engine.output_shape[1])]
        elif self._task != TASK_CLASSIFICATION:
            self._class_names = []  # no fake classes for outputs that are not class scores

    def _probe_set(self) -> ProbeSet:
        probes = self._probes
        if probes is None:
            raise RuntimeError("ActivationRecorder: setup() selects the probes")
        return ProbeSet(
            images=probes.images.float().numpy(),
            labels=probes.labels.numpy(),
            indices=probes.indices.numpy(),
            class_names=self._class_names,
        )

    def _layer_specs(self) -> list[LayerSpec]:
        return [
            LayerSpec.from_layout(layout, self._scale_kinds[name])
            for name, layout in self._built_engine.layouts.items()
        ]

    def _run_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        if self._probes is None:
            raise RuntimeError("ActivationRecorder: setup() selected the probes")
        datamodule = _datamodule(trainer)
        return {
            "model": dict(getattr(pl_module, "hparams", {}) or {}),
            "data": dict(getattr(datamodule, "hparams", {}) or {}) if datamodule is not None else {},
            "model_class": type(pl_module).__qualname__,
            "recorder": {key: getattr(self, key) for key in _CONFIG_KEYS},
            "probes": {
                "source": self._probes.source,
                "count": int(self._probes.images.shape[0]),
                "forward": _callable_name(self._forward) if self._forward is not None else "forward(input part)",
            },
            "task": self._task,
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
        loss = _find_metric(outputs, trainer, self.batch_loss_names, self._step_values_seen)
        if loss is not None and _is_step_loss(outputs, loss, pl_module):
            # Lightning divides the loss training_step returned by accumulate_grad_batches before handing
            # it back (the part each micro-batch adds to the gradient); the batch's own loss is N times it.
            loss = loss * trainer.accumulate_grad_batches
        acc = _find_metric(outputs, trainer, self.batch_acc_names, self._step_values_seen)
        self._batch_metrics_found["batch_loss"] |= loss is not None
        self._batch_metrics_found["batch_acc"] |= acc is not None
        self._batch_metrics_looked_up = True
        self._record(trainer, loss, acc)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Keep the epoch's validation loss and accuracy beside the activations."""
        # Here, after Lightning has computed (and, under sync_dist, all-reduced) the epoch's metrics on every
        # rank, reading them is a lookup. In on_validation_epoch_end the same read would compute them on rank 0
        # alone: an all_reduce that the other ranks never join, or one that meets the module's own collective.
        if trainer.sanity_checking or not trainer.is_global_zero or self._stopped:
            return
        self._validated = True
        for series, names in (("val/loss", self.val_loss_names), ("val/acc", self.val_acc_names)):
            value = logged_tensor(trainer, names, on_step=False)
            if value is not None:
                self._val_written[series] = True
                self._write_scalar(series, trainer.global_step, value)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Record the final state even when it falls between ``every_n_steps``, then flush."""
        if not trainer.is_global_zero:
            return
        if trainer.global_step != self._last_recorded_step:
            self._record(trainer, None, None)
        self._flush()
        # Only once a due step looked for them: a run shorter than every_n_steps records step 0 (no batch yet)
        # and its last step (from on_train_end, which sees no outputs), and logged them all the same.
        if self._last_recorded_step > 0 and self._batch_metrics_looked_up:
            for column, names in (("batch_loss", self.batch_loss_names), ("batch_acc", self.batch_acc_names)):
                if not self._batch_metrics_found[column]:
                    rank_zero_warn(
                        f"ActivationRecorder: training_step returned and logged none of {', '.join(names)}, so "
                        f"the store's {column} column is empty (NaN); set {column}_names to the name you use."
                    )
        if self._validated:
            for series, names in (("val/loss", self.val_loss_names), ("val/acc", self.val_acc_names)):
                if not self._val_written[series]:
                    rank_zero_warn(
                        f"ActivationRecorder: no metric named {', '.join(names)} was logged during validation, so "
                        f"the store's {series} series is empty; set {series.replace('/', '_')}_names to the name "
                        "your validation_step logs."
                    )

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Close the store and write the run's outcome into ``summary.json``."""
        self._close()
        if stage == "fit":
            self._finish_summary(trainer, "interrupted" if trainer.interrupted else "finished")

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Keep every step recorded so far when training fails, and say how it ended in ``summary.json``."""
        self._close()
        if isinstance(exception, (KeyboardInterrupt, SIGTERMException)):  # Ctrl-C, or SIGTERM (a scheduler)
            self._finish_summary(trainer, "interrupted")
        else:
            message = str(exception) if isinstance(exception, UserError) else f"{type(exception).__name__}: {exception}"
            self._finish_summary(trainer, "failed", error=message)

    def _discard_spare_child(self) -> None:
        child, self._spare_child = self._spare_child, None
        if child is not None:
            child.discard()

    def _close(self) -> None:
        self._discard_spare_child()
        ring, self._ring = self._ring, None
        if ring is not None:
            ring.close()
        process, self._process = self._process, None
        if process is not None:
            process.close()
            self._check_failure(process)
        writer, self._writer = self._writer, None
        if writer is not None and not self._stopped:
            try:
                writer.close()
            except StoreError as error:
                self._stop(str(error))

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Put every recorded row on disk before the checkpoint that counts them is written.

        A run resumed from this checkpoint keeps the store's rows through its step; rows still in the writer's
        hands when training is killed would otherwise reach the disk only as its writer finishes, which can be
        after the resumed run has copied the store.
        """
        if trainer.is_global_zero:
            self._flush()

    def _flush(self) -> None:
        """Put every row recorded so far on disk; a writer that fails stops recording, never training."""
        if self._ring is not None:
            self._ring.drain()
        if self._process is not None:
            if not self._process.flush() and self._process.error is None and not self._stopped:
                rank_zero_warn(
                    f"ActivationRecorder: the store writer did not confirm its rows were on disk in {self._store_path} "
                    "within two minutes (a very slow disk?); a checkpoint saved now may count rows the store lacks."
                )
        elif self._writer is not None and not self._stopped:
            try:
                self._writer.flush()
            except (StoreError, OSError, RuntimeError) as error:
                self._stop(str(error))
        self._check_failure()

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

    def _record(self, trainer: pl.Trainer, batch_loss: Any, batch_acc: Any) -> None:
        step = trainer.global_step
        self._last_recorded_step = step
        if self._stopped or self._engine is None:
            return
        self._check_failure()
        packed = self._engine.run(batch_loss, batch_acc)
        self._recorded_rows += 1
        log_images = bool(self.log_images_every_n_steps) and step % self.log_images_every_n_steps == 0
        row = _Row(step, trainer.current_epoch, time.time(), log_images)
        if self._ring is not None:
            self._ring.put(packed, (trainer, row))
        else:
            self._consume(packed.cpu(), (trainer, row))

    def _consume(self, host: torch.Tensor, item: tuple[pl.Trainer, _Row]) -> None:
        """Hand one host copy of a packed step to the store (on the ring's thread, or synchronously)."""
        trainer, row = item
        if self._process is not None:
            self._process.submit(host.numpy(), row.step, row.epoch, row.wall_time)
        elif self._writer is not None and not self._stopped:
            values = {column_key(key): view.numpy() for key, view in self._built_engine.host_views(host).items()}
            try:
                self._writer.append_columns(values, row.step, row.epoch, row.wall_time)
            except (StoreError, OSError, RuntimeError) as error:
                self._stop(str(error))
        if row.log_images:
            views = self._built_engine.host_views(host)
            self._log_images(trainer, views, row.step, row.epoch)

    def _write_scalar(self, series: str, step: int, value: Any) -> None:
        def write() -> None:
            number = float(value)  # on the ring's thread: a device value waits there, not in training
            if self._process is not None:
                self._process.scalar(series, step, number)
            elif self._writer is not None and not self._stopped:
                try:
                    self._writer.append_scalar(series, step, number)
                except (StoreError, OSError, RuntimeError) as error:
                    self._stop(str(error))

        if self._ring is not None:
            self._ring.call(write)
        else:
            write()

    def _check_failure(self, process: WriterProcess | None = None) -> None:
        process = process or self._process
        if process is not None and process.error and not self._stopped:
            self._stop(process.error)
        if self._ring is not None and self._ring.error is not None and not self._stopped:
            self._stop(f"{type(self._ring.error).__name__}: {self._ring.error}")

    def _stop(self, reason: str) -> None:
        self._stopped = reason.rstrip(".")
        rank_zero_warn(
            f"ActivationRecorder stopped recording: {self._stopped}. Training continues without recording; "
            f"the steps stored so far in {self._store_path} stay readable."
        )

    def _log_images(self, trainer: pl.Trainer, views: dict[str, torch.Tensor], step: int, epoch: int) -> None:
        from actrec.recording import output_drawing, shows_predictions
        from actrec.viewer import frame_title, live_frames, predicted_classes

        experiment = getattr(trainer.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_image"):
            return
        probes = self._probes
        if probes is None:
            raise RuntimeError("ActivationRecorder: setup() selects the probes")
        logits = views["logits"].numpy()
        probe_images = probes.images.float().numpy()  # the same for every layer drawn
        # A classifier's predictions marked right or wrong; any other task draws its outputs, never a fake class.
        classifier = shows_predictions(self._task)
        predictions = predicted_classes(logits) if classifier else None
        if not classifier:
            # Decided from this step's outputs; the range only grows over the run, as a layer's limit does,
            # so outputs that grow later are not pinned to the colour scale's ends.
            drawing = output_drawing(
                self._task,
                probe_images,
                logits.shape[-1],
                self._built_engine.output_full_shape[1:],
                lambda rows: logits[None],
                1,
            )
            previous = self._live_output
            if previous is not None and previous.mode == drawing.mode:
                drawing = dataclasses.replace(
                    drawing, low=min(previous.low, drawing.low), high=max(previous.high, drawing.high)
                )
            self._live_output = drawing
        labels = probes.labels.numpy()
        for name in self._built_engine.layouts:
            # The viewer's one colour-scale rule: bounded layers on their fixed range, others on a limit
            # that only grows over the run and is printed on every image's colour bar.
            images, self._live_scales[name] = live_frames(
                self._scale_kinds[name],
                views[f"{name}/activations"].numpy(),
                self._live_scales.get(name),
                title=frame_title(name, step, epoch),
                probe_images=probe_images,
                labels=labels if (labels >= 0).any() else None,
                predictions=predictions,
                class_names=self._class_names,
                output=self._live_output,
                outputs=None if classifier else logits,
            )
            for suffix, image in images:
                experiment.add_image(f"activations/{name}{suffix}", image, step, dataformats="HWC")


# -- helpers ---------------------------------------------------------------------------------------


def _find_metric(outputs: Any, trainer: pl.Trainer, names: Sequence[str], seen: dict[str, torch.Tensor]) -> Any:
    """A batch metric as a tensor or number, never converted here (that would wait for the device)."""
    if isinstance(outputs, torch.Tensor) and names and names[0] == "loss":
        return outputs
    if isinstance(outputs, dict):
        for name in names:
            if name in outputs:
                return outputs[name]
    return logged_tensor(trainer, names, on_step=True, seen=seen)


def logged_tensor(
    trainer: pl.Trainer, names: Sequence[str], on_step: bool, seen: dict[str, torch.Tensor] | None = None
) -> torch.Tensor | None:
    """The first of ``names`` that the LightningModule logged, as the tensor Lightning already holds.

    ``trainer.callback_metrics`` is not read: it converts progress-bar metrics with ``.item()`` (a host sync
    per call) and computes epoch metrics that are not computed yet (under ``sync_dist`` an all_reduce, which
    on rank 0 alone hangs the run). Lightning's own cache is read instead: a step value (``on_step``) as
    ``self.log`` stored it, an epoch value only once Lightning has computed it on every rank. Lightning keeps
    both on private attributes of its result collection; when they are missing this finds nothing, and the
    recorder warns at the end of training that the column is empty.

    Lightning keeps a step value until the metric is logged again, so a metric logged on some batches only
    would be found, stale, on the others. With ``seen`` (the caller's dict, kept between lookups) a step value
    that is the very tensor found at the previous lookup counts as not logged since (``None``: NaN stored).
    """
    results = getattr(trainer, "_results", None)
    if results is None or not hasattr(results, "valid_items"):
        return None
    found: dict[str, torch.Tensor] = {}
    for _, metric in results.valid_items():
        meta = getattr(metric, "meta", None)
        if meta is None:
            continue
        if on_step:
            value = getattr(metric, "_forward_cache", None) if meta.on_step else None
        else:
            value = getattr(metric, "_computed", None) if meta.on_epoch else None
        if isinstance(value, torch.Tensor) and value.numel() == 1 and meta.name not in found:
            if seen is not None and on_step:
                stale = seen.get(meta.name) is value
                seen[meta.name] = value
                if stale:
                    continue
            found[meta.name] = value.detach()
    return next((found[name] for name in names if name in found), None)


def computed_metrics(trainer: pl.Trainer) -> dict[str, Any]:
    """The metrics Lightning has already computed (what ``trainer.callback_metrics`` last returned), read as is.

    ``trainer.callback_metrics`` itself computes the epoch metrics not computed yet; under ``sync_dist`` that is
    an all_reduce, which read on rank 0 alone (when the run ends, in ``teardown`` or ``on_exception``) waits for
    ranks that never join. Lightning keeps the computed values in a private dict of its logger connector; when
    that is missing, the summary has no metrics.
    """
    connector = getattr(trainer, "_logger_connector", None)
    metrics = getattr(connector, "_callback_metrics", None)
    return dict(metrics) if isinstance(metrics, dict) else {}


_SHARDED_STRATEGIES = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy", "XLAFSDPStrategy")


def sharded_strategy_refusal(strategy: Any) -> str | None:
    """The one sentence refusing a strategy that shards the model across ranks, or ``None`` for any other.

    The probe pass runs the module on global rank 0 alone; a sharded module all-gathers its parameters in
    forward, so rank 0 would wait forever for ranks that never join. Classes are matched by name along the
    class hierarchy, so ``lightning.pytorch``'s, ``pytorch_lightning``'s and subclasses are all refused.
    """
    names = [cls.__name__ for cls in type(strategy).__mro__]
    sharded = next((name for name in _SHARDED_STRATEGIES if name in names), None)
    if sharded is None:
        return None
    return (
        f"ActivationRecorder: {sharded} shards the model across ranks and the recorder's probe pass runs on "
        "rank 0 alone, where the sharded layers' all-gathers would wait forever; record with strategy='ddp' "
        "or on one device."
    )


def _probe_forward(pl_module: pl.LightningModule, given: ProbeForward | None) -> ProbeForward | None:
    """The callable given, else the module's own ``probe_forward(batch)`` method, else ``None`` (the default)."""
    if given is not None:
        return given
    if callable(getattr(pl_module, "probe_forward", None)):
        return _call_probe_forward_method
    return None


def _call_probe_forward_method(module: torch.nn.Module, batch: Any) -> Any:
    # nn.Module's attribute lookup is typed as returning tensors or modules; this one is the model's method.
    return cast(Callable[[Any], Any], module.probe_forward)(batch)


def _callable_name(function: Callable[..., Any]) -> str:
    if function is _call_probe_forward_method:
        return "the module's probe_forward method"
    return getattr(function, "__qualname__", None) or type(function).__name__


def _is_step_loss(outputs: Any, loss: Any, pl_module: pl.LightningModule) -> bool:
    """Whether ``loss`` is the loss ``training_step`` returned, which automatic optimisation normalises."""
    if not pl_module.automatic_optimization:
        return False
    returned = outputs.get("loss") if isinstance(outputs, dict) else outputs
    return returned is loss


def _datamodule(trainer: pl.Trainer) -> pl.LightningDataModule | None:
    """The trainer's data module (``None`` when it was given loaders)."""
    return trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning's DataConnector, not declared on Trainer


def _resolve_checkpoint_path(stored: str, fallback: Path | None) -> Path:
    """The checkpoint's store path; a relative one (older checkpoints) is tried against this run's folder."""
    path = Path(stored)
    if path.is_absolute() or path.exists() or fallback is None:
        return path.absolute()
    candidate = fallback.parent / path.name
    return candidate if candidate.exists() else path.absolute()


def _default_folder(trainer: pl.Trainer) -> tuple[Path, bool]:
    """The run's folder and whether it is still to be claimed: the logger's ``log_dir`` when it has one; for
    a W&B or MLflow run, the folder Lightning gives that run's checkpoints, unless it already holds a store;
    else ``<default_root_dir>/actrec/version_N`` with the next free N (claimed when the store is created)."""
    logger = trainer.logger
    log_dir = getattr(logger, "log_dir", None) if logger is not None else None
    if log_dir:
        return Path(log_dir), False
    run_folder = logger_run_folder(trainer.loggers, trainer.default_root_dir)
    if run_folder is not None and not (run_folder / STORE_FILENAME).exists():
        return run_folder, False
    parent = Path(trainer.default_root_dir) / "actrec"
    suffixes = [p.name.removeprefix(VERSION_PREFIX) for p in parent.glob(f"{VERSION_PREFIX}*")]
    taken = [int(suffix) for suffix in suffixes if suffix.isdigit()]
    return parent / f"{VERSION_PREFIX}{max(taken, default=-1) + 1}", True


def _on_rank_zero_or_raise(trainer: pl.Trainer, action: Callable[[], None]) -> None:
    """Run ``action`` on global rank 0 and raise its error on every rank, so no rank waits forever."""
    message = None
    if trainer.is_global_zero:
        try:
            action()
        except (StoreError, MisconfigurationException) as error:
            message = str(error)
        except ProbeError as error:
            message = f"ActivationRecorder: {error}"
    message = trainer.strategy.broadcast(message, src=0)
    if message is not None:
        raise RecorderConfigError(message)
