"""Any Lightning training records correctly: accumulation, clipping, manual optimisation, any logger or none,
probes of any structure, compiled models and a plain PyTorch loop. Each test trains a tiny model for real
and checks the store against a fresh forward pass of the trained model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers.logger import Logger
from recorder_fixtures import NUM_CLASSES, TinyData, TinyNet
from torch import nn

from actrec.callbacks import ActivationRecorder
from actrec.probe import capture
from actrec.runs import Run, find_runs
from actrec.store import StoreReader


class MemoryLogger(Logger):
    """A real Lightning logger that keeps what it is given and has no folder of its own (like W&B, MLflow)."""

    def __init__(self) -> None:
        super().__init__()
        self.logged: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.logged.append((step, dict(metrics)))

    def series(self, name: str) -> list[float]:
        return [metrics[name] for _, metrics in self.logged if name in metrics]


def _trainer(root: Path, **options: Any) -> pl.Trainer:
    settings = {
        "default_root_dir": str(root),
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "log_every_n_steps": 1,
        "deterministic": True,
    }
    settings.update(options)
    return pl.Trainer(**settings)


def _assert_last_row_is_a_fresh_pass(store: StoreReader, model: nn.Module, **capture_options: Any) -> None:
    probes = torch.from_numpy(store.probes.images)
    fresh = capture(model, probes, store.layer_names, **capture_options)
    for layer in store.layer_names:
        np.testing.assert_array_equal(store.activations(layer)[-1], fresh.activations[layer].numpy().astype(np.float16))
    np.testing.assert_allclose(store.logits()[-1], fresh.output.reshape(probes.shape[0], -1).numpy(), rtol=1e-6)


# -- 1. the stored batch loss is the logged loss under every Trainer setting ------------------------


class LoggingNet(TinyNet):
    """TinyNet that logs its loss every step and keeps every micro-batch's loss."""

    def __init__(self) -> None:
        super().__init__(dropout=0.0)
        self.losses: list[float] = []

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        out = super().training_step(batch, batch_idx)
        self.losses.append(float(out["loss"]))
        self.log("train_loss", out["loss"])
        return out


@pytest.mark.parametrize(("accumulate", "clip"), [(3, None), (1, 0.05), (3, 0.05)])
def test_stored_batch_loss_is_the_logged_loss(tmp_path: Path, accumulate: int, clip: float | None) -> None:
    pl.seed_everything(0, verbose=False)
    model, logger = LoggingNet(), MemoryLogger()
    recorder = ActivationRecorder(background_writes=False)
    trainer = _trainer(
        tmp_path, logger=logger, callbacks=[recorder], accumulate_grad_batches=accumulate, gradient_clip_val=clip
    )
    trainer.fit(model, TinyData(batch_size=4, size=36))  # 9 batches: 9 // accumulate optimizer steps
    with StoreReader(recorder.store_path) as store:
        steps = store.global_steps().tolist()
        assert steps == list(range(9 // accumulate + 1))
        stored = store.steps()["batch_loss"]
        assert np.isnan(stored[0])  # step 0 is recorded before any batch
        # The batch behind optimizer step s is micro-batch s * N - 1; Lightning logs that one's loss.
        expected = [model.losses[s * accumulate - 1] for s in steps[1:]]
        np.testing.assert_allclose(stored[1:], expected, rtol=1e-6)
        np.testing.assert_allclose(stored[1:], logger.series("train_loss"), rtol=1e-6)
        _assert_last_row_is_a_fresh_pass(store, model)


class TwoOptimizerNet(TinyNet):
    """Manual optimisation with two optimisers (the body, then the head) on every batch, as a GAN steps."""

    def __init__(self) -> None:
        super().__init__(dropout=0.0)
        self.automatic_optimization = False
        self.losses: list[float] = []

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        body, head = self.optimizers()
        images, labels = batch
        for optimizer in (body, head):
            loss = nn.functional.cross_entropy(self(images), labels)
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
        self.losses.append(float(loss))
        self.log("loss", loss)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        head = list(self.net.head.parameters())
        body = [p for p in self.parameters() if all(p is not q for q in head)]
        return [torch.optim.SGD(body, lr=0.05), torch.optim.SGD(head, lr=0.05)]


def test_manual_optimisation_with_two_optimisers(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    model, logger = TwoOptimizerNet(), MemoryLogger()
    recorder = ActivationRecorder(background_writes=False)
    trainer = _trainer(tmp_path, logger=logger, callbacks=[recorder])
    trainer.fit(model, TinyData(batch_size=8, size=32))
    assert trainer.global_step == 8  # Lightning counts a global step per optimizer step
    with StoreReader(recorder.store_path) as store:
        assert store.global_steps().tolist() == [0, 2, 4, 6, 8]
        stored = store.steps()["batch_loss"][1:]
        np.testing.assert_allclose(stored, model.losses, rtol=1e-6)  # the last loss of each batch, not halved
        np.testing.assert_allclose(stored, logger.series("loss"), rtol=1e-6)
        _assert_last_row_is_a_fresh_pass(store, model)


# -- 2. any logger or none: a versioned folder of its own, summary.json, never refused twice ---------


def test_without_a_logger_every_run_gets_its_own_version_folder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stores = []
    for number in range(2):
        pl.seed_everything(number, verbose=False)
        recorder = ActivationRecorder(background_writes=False)
        with caplog.at_level("INFO"):
            _trainer(tmp_path, logger=False, callbacks=[recorder]).fit(TinyNet(), TinyData(size=24))
        assert recorder.store_path == tmp_path / "actrec" / f"version_{number}" / "activations.h5"
        lines = [r.getMessage() for r in caplog.records if "ActivationRecorder" in r.getMessage()]
        assert lines == [
            f"ActivationRecorder: recording to {recorder.store_path}",
            f"ActivationRecorder: finished; the store is {recorder.store_path}",
        ]
        caplog.clear()
        stores.append(recorder.store_path)
    runs = find_runs(tmp_path / "actrec")
    assert [run.name for run in runs] == ["actrec/version_0", "actrec/version_1"]
    for run, store_path in zip(runs, stores, strict=True):
        assert run.status() == "finished"
        summary = run.summary()
        assert summary["store_path"] == str(store_path)
        assert summary["global_step"] == 3
        assert summary["recorded_steps"] == 4
        assert summary["metrics"]["val/loss"] > 0
        assert run.store_path == store_path
        with StoreReader(store_path) as store:
            assert store.global_steps().tolist() == [0, 1, 2, 3]


def test_a_logger_without_a_folder_and_a_failed_run_say_so_in_the_summary(tmp_path: Path) -> None:
    class Exploding(TinyNet):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            if batch_idx == 2:
                raise RuntimeError("the loss went to the moon")
            return super().training_step(batch, batch_idx)

    recorder = ActivationRecorder(background_writes=False)
    with pytest.raises(RuntimeError, match="moon"):
        _trainer(tmp_path, logger=MemoryLogger(), callbacks=[recorder]).fit(Exploding(), TinyData())
    run = Run(tmp_path / "actrec" / "version_0")
    assert run.status() == "failed"
    assert run.summary()["error"] == "RuntimeError: the loss went to the moon"
    with StoreReader(run.store_path) as store:
        assert store.global_steps().tolist() == [0, 1, 2]


def test_actrec_train_keeps_writing_its_own_summary(tmp_path: Path) -> None:
    from actrec.runs import running_summary, write_summary

    folder = tmp_path / "logs" / "version_0"
    folder.mkdir(parents=True)
    write_summary(folder, running_summary(model="six_conv_tanh", dataset="mnist"))  # as actrec train does
    recorder = ActivationRecorder(background_writes=False)
    logger = pl.loggers.CSVLogger(str(tmp_path), name="logs", version=0)
    _trainer(tmp_path, logger=logger, callbacks=[recorder], max_steps=2).fit(TinyNet(), TinyData())
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["state"] == "running"  # the launcher's to finish, not the recorder's
    assert summary["model"] == "six_conv_tanh"
    assert recorder.store_path == folder / "activations.h5"
    assert NUM_CLASSES == 3
