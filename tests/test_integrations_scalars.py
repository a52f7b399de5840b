"""The stored scalars equal what Lightning logged, read back from the CSVLogger's ``metrics.csv``, when validation
runs mid-epoch (``val_check_interval=0.5``) and when training resumes from a checkpoint saved mid-epoch."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from recorder_fixtures import TinyData, TinyNet

from actrec.callbacks import ActivationRecorder
from actrec.probe import capture
from actrec.store import StoreReader


class LoggingNet(TinyNet):
    """TinyNet without dropout that logs its training loss every step."""

    def __init__(self) -> None:
        super().__init__(dropout=0.0)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        out = super().training_step(batch, batch_idx)
        self.log("train_loss", out["loss"])
        return out


def _trainer(root: Path, logger: CSVLogger, callbacks: list[Any], **options: Any) -> pl.Trainer:
    settings: dict[str, Any] = {
        "default_root_dir": str(root),
        "logger": logger,
        "callbacks": callbacks,
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 1,
        "log_every_n_steps": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "deterministic": True,
    }
    settings.update(options)
    return pl.Trainer(**settings)


def _logged(logger: CSVLogger, name: str) -> dict[int, float]:
    """``{step: value}`` of one metric in a CSVLogger's ``metrics.csv``, as Lightning wrote it."""
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as file:
        return {int(row["step"]): float(row[name]) for row in csv.DictReader(file) if row.get(name)}


def _stored_batch_losses(store: StoreReader) -> dict[int, float]:
    losses = store.steps()["batch_loss"]
    return {int(step): float(loss) for step, loss in zip(store.global_steps(), losses, strict=True)}


def _assert_last_row_is_a_fresh_pass(store: StoreReader, model: torch.nn.Module) -> None:
    probes = torch.from_numpy(store.probes.images)
    fresh = capture(model, probes, store.layer_names)
    for layer in store.layer_names:
        np.testing.assert_array_equal(store.activations(layer)[-1], fresh.activations[layer].numpy().astype(np.float16))
    np.testing.assert_allclose(store.logits()[-1], fresh.output.numpy(), rtol=1e-6)


def test_validation_mid_epoch_keeps_batch_losses_and_validation_series_equal_to_the_logged(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    model, logger = LoggingNet(), CSVLogger(str(tmp_path), name="logs")
    recorder = ActivationRecorder(background_writes=False)
    trainer = _trainer(tmp_path, logger, [recorder], val_check_interval=0.5, max_epochs=2)
    trainer.fit(model, TinyData(batch_size=4))  # 12 batches an epoch: validation after batches 6 and 12
    logged = _logged(logger, "train_loss")
    logged_val = _logged(logger, "val/loss")
    with StoreReader(recorder.store_path) as store:
        stored = _stored_batch_losses(store)
        assert sorted(stored) == list(range(25))
        assert np.isnan(stored[0])  # recorded before any batch
        # Lightning logs the batch behind optimizer step s under its step s - 1 (it counts steps after logging).
        assert sorted(logged) == list(range(24))
        for step in range(1, 25):
            assert stored[step] == np.float32(logged[step - 1]), step
        # Four validations, each stored at the step it followed, with the value Lightning logged.
        val_steps, val_values = store.scalars("val/loss")
        assert val_steps.tolist() == [6, 12, 18, 24]
        np.testing.assert_allclose(val_values, [logged_val[s] for s in sorted(logged_val)], rtol=1e-6)
        assert sorted(logged_val) == [5, 11, 17, 23]  # the same four, on Lightning's count
        _assert_last_row_is_a_fresh_pass(store, model)


@pytest.mark.filterwarnings("ignore:.*resuming from a checkpoint that ended before the epoch ended")  # the point
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
@pytest.mark.parametrize("every", [1, 2])
def test_a_resume_from_a_mid_epoch_checkpoint_stores_the_losses_each_run_logged(tmp_path: Path, every: int) -> None:
    store_path = tmp_path / "activations.h5"
    pl.seed_everything(0, verbose=False)
    first_logger = CSVLogger(str(tmp_path), name="logs", version=0)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=5, save_top_k=-1)
    first = _trainer(
        tmp_path,
        first_logger,
        [ActivationRecorder(path=str(store_path), every_n_steps=every, background_writes=False), checkpoints],
        max_epochs=2,
        enable_checkpointing=True,
    )
    first.fit(LoggingNet(), TinyData(batch_size=4))  # 24 steps; checkpoints at steps 5, 10, 15, 20
    # The same checkpoint callback again (Lightning asks for it); its checkpoints overwrite the first run's.
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=5, save_top_k=-1)
    mid_epoch = tmp_path / "ckpt" / "epoch=0-step=5.ckpt"
    assert mid_epoch.exists()

    pl.seed_everything(1, verbose=False)
    model, second_logger = LoggingNet(), CSVLogger(str(tmp_path), name="logs", version=1)
    second = _trainer(
        tmp_path,
        second_logger,
        [ActivationRecorder(path=str(store_path), every_n_steps=every, background_writes=False), checkpoints],
        max_epochs=2,
        enable_checkpointing=True,
    )
    second.fit(model, TinyData(batch_size=4), ckpt_path=str(mid_epoch))  # resumes at batch 5 of epoch 0

    first_logged, second_logged = _logged(first_logger, "train_loss"), _logged(second_logger, "train_loss")
    assert sorted(second_logged) == list(range(5, 24))  # Lightning continues its own step count
    with StoreReader(store_path) as store:
        stored = _stored_batch_losses(store)
        assert sorted(stored) == list(range(0, 25, every))  # no step lost, none twice, on the schedule
        for step in range(every, 6, every):  # the first run's, kept up to the checkpoint's step
            assert stored[step] == np.float32(first_logged[step - 1]), step
        for step in range(6, 25, every):  # the resumed run's, from the step after the checkpoint's
            assert stored[step] == np.float32(second_logged[step - 1]), step
        epochs = dict(zip(store.global_steps().tolist(), store.steps()["epoch"].tolist(), strict=True))
        assert epochs[4] == 0
        assert epochs[6] == 0  # still epoch 0 after the resume: the rest of the interrupted epoch
        assert epochs[24] == 1
        _assert_last_row_is_a_fresh_pass(store, model)
