"""Any Lightning training records correctly: accumulation, clipping, manual optimisation, any logger or none,
probes of any structure, compiled models and a plain PyTorch loop. Each test trains a tiny model for real
and checks the store against a fresh forward pass of the trained model."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers.logger import Logger
from recorder_fixtures import NUM_CLASSES, TinyData, TinyNet
from torch import nn

from actrec.callbacks import ActivationRecorder
from actrec.errors import UserError
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
        self.losses.append(float(out["loss"].detach()))
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
            "ActivationRecorder: task classification (3 scores per probe); pass task= to choose another.",
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


class LogsLossOnEvenBatches(TinyNet):
    """Logs its training loss on even batches only."""

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        out = super().training_step(batch, batch_idx)
        if batch_idx % 2 == 0:
            self.log("train/loss", out["loss"])
            self.logged_losses.append(float(out["loss"]))
        return out["loss"]

    def on_fit_start(self) -> None:
        self.logged_losses: list[float] = []


def test_a_loss_logged_on_some_batches_is_nan_on_the_others_not_stale(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    model = LogsLossOnEvenBatches()
    recorder = ActivationRecorder(path=str(tmp_path / "activations.h5"), batch_loss_names=["train/loss"])
    _trainer(tmp_path, logger=False, callbacks=[recorder]).fit(model, TinyData())
    with StoreReader(tmp_path / "activations.h5") as store:
        assert store.global_steps().tolist() == list(range(7))
        stored = store.steps()["batch_loss"]
    # Step k is batch k-1: batches 0, 2, 4 logged their loss; the others (and step 0) have none.
    assert np.isnan(stored[[0, 2, 4, 6]]).all()
    np.testing.assert_allclose(stored[[1, 3, 5]], model.logged_losses, rtol=1e-6)


class LogsEpochMetrics(TinyNet):
    """Logs its training loss per step and per epoch with sync_dist, and fails in epoch 2 when told to."""

    fail_in_epoch: int | None = None

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if self.current_epoch == self.fail_in_epoch and batch_idx == 1:
            raise RuntimeError("broke in epoch 2")
        out = super().training_step(batch, batch_idx)
        self.log("train/loss", out["loss"], on_step=True, on_epoch=True, sync_dist=True)
        return out


@pytest.mark.parametrize("fail", [False, True])
def test_the_summary_metrics_never_read_callback_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: bool
) -> None:
    """trainer.callback_metrics computes sync_dist epoch metrics (an all_reduce); the recorder reads it on rank 0
    alone when the run ends (teardown, on_exception), so it must not read it at all: it keeps the values
    Lightning had already computed."""
    reads: list[str] = []
    original = pl.Trainer.callback_metrics

    def counting(trainer: pl.Trainer) -> Any:
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code.co_filename.endswith("activation_recorder.py"):
                reads.append(frame.f_code.co_name)
                break
            frame = frame.f_back
        return original.fget(trainer)

    monkeypatch.setattr(pl.Trainer, "callback_metrics", property(counting))
    model = LogsEpochMetrics()
    model.fail_in_epoch = 1 if fail else None
    recorder = ActivationRecorder(background_writes=False)
    trainer = _trainer(tmp_path, logger=False, callbacks=[recorder], max_epochs=2)
    if fail:
        with pytest.raises(RuntimeError, match="broke in epoch 2"):
            trainer.fit(model, TinyData(size=24))
    else:
        trainer.fit(model, TinyData(size=24))
    monkeypatch.undo()
    assert reads == []
    summary = Run(tmp_path / "actrec" / "version_0").summary()
    assert summary["state"] == ("failed" if fail else "finished")
    metrics = summary["metrics"]
    # The last validation's loss, and the training loss (epoch mean when computed, else the last step's).
    assert metrics["val/loss"] == pytest.approx(float(trainer.callback_metrics["val/loss"]), rel=1e-6)
    assert metrics["train/loss"] == pytest.approx(float(trainer.callback_metrics["train/loss"]), rel=1e-6)


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


# -- 3. probes of any structure, one overridable forward, only layers that ran -----------------------


def _store_attribute(path: Path, name: str) -> str:
    with h5py.File(path, "r") as file:
        return str(file.attrs[name])


class AutoEncoder(pl.LightningModule):
    """Lightning's autoencoder example in small: ``forward`` takes flat vectors; the step flattens images."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(36, 8), nn.ReLU(), nn.Linear(8, 4))
        self.decoder = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 36))

    def forward(self, flat: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(flat))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, _ = batch
        flat = images.view(images.size(0), -1)
        loss = nn.functional.mse_loss(self(flat), flat)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, _ = batch
        flat = images.view(images.size(0), -1)
        self.log("val/loss", nn.functional.mse_loss(self(flat), flat))

    def probe_forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        images, _ = batch
        return self(images.view(images.size(0), -1))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=0.01)


def test_an_autoencoder_that_flattens_in_its_step_records_through_probe_forward(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    model = AutoEncoder()
    recorder = ActivationRecorder(background_writes=False)
    _trainer(tmp_path, logger=False, callbacks=[recorder]).fit(model, TinyData(batch_size=8, size=24))
    with StoreReader(recorder.store_path) as store:
        assert store.layer_names == ["encoder.1", "encoder.2", "decoder.1"]  # not the output layer
        assert store.probes.images.shape == (3, 1, 6, 6)  # one image per class, as the loader gives them
        assert store.probes.labels.tolist() == [0, 1, 2]
        assert store.logits().shape[1:] == (3, 36)  # the reconstruction, kept whole
        assert store.config["task"] == "reconstruction"
        assert store.class_names == []  # no fake classes
        batch = (torch.from_numpy(store.probes.images), torch.from_numpy(store.probes.labels))
        fresh = capture(model, batch, store.layer_names, forward=lambda module, b: module.probe_forward(b))
        for layer in store.layer_names:
            np.testing.assert_array_equal(
                store.activations(layer)[-1], fresh.activations[layer].numpy().astype(np.float16)
            )
        np.testing.assert_allclose(store.logits()[-1], fresh.output.numpy(), rtol=1e-6)
        np.testing.assert_allclose(store.steps()["batch_loss"][-1], float(model.trainer.callback_metrics["train_loss"]))
    assert _store_attribute(recorder.store_path, "task") == "reconstruction"


def test_without_probe_forward_the_autoencoder_is_refused_in_one_sentence(tmp_path: Path) -> None:
    class Plain(AutoEncoder):
        probe_forward = None

    trainer = _trainer(tmp_path, logger=False, callbacks=[ActivationRecorder(background_writes=False)])
    with pytest.raises(pl.utilities.exceptions.MisconfigurationException, match="could not run the probe images"):
        trainer.fit(Plain(), TinyData())
    assert not list((tmp_path / "actrec").glob("version_*"))  # refused before its first step: no empty folder


class GAN(pl.LightningModule):
    """Lightning's GAN template in small: manual optimisation, a generator and a discriminator."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.generator = nn.Sequential(
            nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 36), nn.Tanh(), nn.Unflatten(1, (1, 6, 6))
        )
        self.discriminator = nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return self.generator(noise)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, _ = batch
        generator_optimizer, discriminator_optimizer = self.optimizers()
        noise = torch.randn(images.shape[0], 8)
        real, fake = torch.ones(images.shape[0], 1), torch.zeros(images.shape[0], 1)
        bce = nn.functional.binary_cross_entropy_with_logits
        g_loss = bce(self.discriminator(self(noise)), real)
        generator_optimizer.zero_grad()
        self.manual_backward(g_loss)
        generator_optimizer.step()
        d_loss = (bce(self.discriminator(images), real) + bce(self.discriminator(self(noise).detach()), fake)) / 2
        discriminator_optimizer.zero_grad()
        self.manual_backward(d_loss)
        discriminator_optimizer.step()
        self.log("g_loss", g_loss)
        self.log("d_loss", d_loss)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [
            torch.optim.Adam(self.generator.parameters(), lr=0.01),
            torch.optim.Adam(self.discriminator.parameters(), lr=0.01),
        ]


def generate(module: GAN, noise: torch.Tensor) -> torch.Tensor:
    return module.generator(noise)


def test_a_manual_optimisation_gan_records_its_generator_on_noise_probes(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    model, logger = GAN(), MemoryLogger()
    noise = torch.randn(4, 8, generator=torch.Generator().manual_seed(5))
    recorder = ActivationRecorder(
        probe_batch=noise, probe_forward=generate, batch_loss_names=["g_loss"], background_writes=False
    )
    _trainer(tmp_path, logger=logger, callbacks=[recorder]).fit(model, TinyData(batch_size=8, size=24))
    with StoreReader(recorder.store_path) as store:
        # Only modules that ran on the probes: the discriminator never runs under the generator's probes.
        assert store.layer_names == ["generator.1"]
        assert store.global_steps().tolist() == [0, 2, 4, 6]  # two optimizer steps a batch
        np.testing.assert_array_equal(store.probes.images, noise.numpy())  # a noise vector, stored as it is
        assert store.config["task"] == "generation"
        assert store.probes.labels.tolist() == [-1] * 4
        np.testing.assert_allclose(store.steps()["batch_loss"][1:], logger.series("g_loss"), rtol=1e-6)
        fresh = capture(model, noise, store.layer_names, forward=generate)
        np.testing.assert_array_equal(
            store.activations("generator.1")[-1], fresh.activations["generator.1"].numpy().astype(np.float16)
        )
        np.testing.assert_allclose(store.logits()[-1], fresh.output.reshape(4, -1).numpy(), rtol=1e-6)


VOCABULARY, LENGTH = 20, 6


def _token_items(count: int = 24) -> list[dict[str, torch.Tensor]]:
    """HuggingFace-style items: token ids, an attention mask with padding at the end, a class label."""
    generator = torch.Generator().manual_seed(7)
    items = []
    for index in range(count):
        used = 3 + index % (LENGTH - 2)
        ids = torch.randint(1, VOCABULARY, (LENGTH,), generator=generator)
        mask = (torch.arange(LENGTH) < used).long()
        items.append({"input_ids": ids * mask, "attention_mask": mask, "labels": torch.tensor(index % 2)})
    return items


class TokenClassifier(pl.LightningModule):
    """A tiny nn.TransformerEncoder fed dict batches, called as model(input_ids=..., attention_mask=...)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCABULARY, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(self.embed(input_ids), src_key_padding_mask=attention_mask == 0)
        weights = attention_mask.unsqueeze(-1).float()
        return self.head((hidden * weights).sum(1) / weights.sum(1))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        loss = nn.functional.cross_entropy(logits, batch["labels"])
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        self.log("val/loss", nn.functional.cross_entropy(logits, batch["labels"]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=0.01)


def test_a_token_model_fed_dict_batches_with_an_attention_mask(tmp_path: Path) -> None:
    from torch.utils.data import DataLoader, default_collate

    pl.seed_everything(0, verbose=False)
    items = _token_items()
    model = TokenClassifier()
    recorder = ActivationRecorder(background_writes=False, probes_per_class=2)
    trainer = _trainer(tmp_path, logger=False, callbacks=[recorder])
    trainer.fit(model, DataLoader(items, batch_size=8), DataLoader(items[:12], batch_size=5))
    with StoreReader(recorder.store_path) as store:
        assert store.layer_names == ["encoder.layers.0", "encoder.layers.1"]
        assert store.probes.labels.tolist() == [0, 0, 1, 1]  # two per class, from the validation loader
        indices = store.probes.indices.tolist()
        assert indices == [0, 2, 1, 3]
        # The token ids are stored as they are (as numbers), not as an image.
        np.testing.assert_array_equal(store.probes.images, torch.stack([items[i]["input_ids"] for i in indices]))
        assert store.config["task"] == "classification"
        assert store.layer("encoder.layers.0").kind == "tokens"
        batch = default_collate([items[i] for i in indices])
        fresh = capture(model, batch, store.layer_names)  # the default forward: the dict without its labels
        for layer in store.layer_names:
            np.testing.assert_array_equal(
                store.activations(layer)[-1], fresh.activations[layer].numpy().astype(np.float16)
            )
        np.testing.assert_allclose(store.logits()[-1], fresh.output.numpy(), rtol=1e-6)


# -- 4. default layers that exist and mean something -----------------------------------------------


class Conv1D(nn.Module):
    """HuggingFace GPT-2's own linear layer: not an nn.Linear."""

    def __init__(self, features_in: int, features_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(features_in, features_out) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


class GPT2LikeBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(8)
        self.mlp = nn.Sequential(Conv1D(8, 16), nn.GELU(), Conv1D(16, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.ln(x))


class GPT2Like(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.transformer = nn.Module()
        self.transformer.wte = nn.Embedding(20, 8)
        self.transformer.h = nn.ModuleList([GPT2LikeBlock() for _ in range(3)])
        self.lm_head = Conv1D(8, 20)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.transformer.wte(input_ids)
        for block in self.transformer.h:
            hidden = block(hidden)
        return self.lm_head(hidden)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, 2, 1)
        self.act = nn.SiLU()
        self.conv_expand = nn.Conv2d(2, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.conv_expand(self.act(self.conv_reduce(scale))))


class DepthwiseSeparable(nn.Module):
    """timm's first EfficientNet block: the squeeze-excite gate sits inside, alone of its kind."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.SiLU()
        self.se = SqueezeExcite(channels)
        self.conv_pw = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_pw(self.se(self.act(self.bn(self.conv_dw(x)))))


class InvertedResidual(DepthwiseSeparable):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


class EfficientLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.SiLU())
        self.blocks = nn.Sequential(
            nn.Sequential(DepthwiseSeparable(4)), nn.Sequential(InvertedResidual(4), InvertedResidual(4))
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def test_blocks_of_a_module_list_are_found_whatever_their_layers_are() -> None:
    from actrec.probe import default_layers, modules_that_ran

    model = GPT2Like()
    ids = torch.randint(0, 20, (2, 5))
    assert default_layers(model, modules_that_ran(model, ids)) == [
        "transformer.h.0",
        "transformer.h.1",
        "transformer.h.2",
    ]


def test_a_squeeze_excite_gate_is_never_a_default_and_never_drawn_as_a_sigmoid() -> None:
    from actrec.probe import default_layers, modules_that_ran, scale_kinds

    model = EfficientLike()
    images = torch.rand(2, 1, 6, 6) * 4
    assert default_layers(model, modules_that_ran(model, images)) == ["blocks.1.0", "blocks.1.1"]
    kinds = scale_kinds(model, images, ["blocks.0.0.se", "blocks.0.0.se.gate", "stem"])
    # x * sigmoid(...) is not a sigmoid's output: its values leave 0..1; the gate itself is one.
    assert kinds == {"blocks.0.0.se": "symmetric", "blocks.0.0.se.gate": "sigmoid", "stem": "symmetric"}


def test_default_layers_are_only_modules_that_ran() -> None:
    from actrec.probe import default_layers, modules_that_ran

    model = GAN()
    noise = torch.randn(3, 8)
    assert default_layers(model) == ["generator.1", "generator.3", "discriminator.2"]  # everything it holds
    assert default_layers(model, modules_that_ran(model, noise, generate)) == ["generator.1"]


# -- 6. a plain PyTorch loop -------------------------------------------------------------------------


def test_a_plain_loop_records_the_same_store_and_renders(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from actrec.recorder import Recorder, RecorderError
    from actrec.viewer.cli import render_main

    torch.manual_seed(0)
    data = TinyData(batch_size=8, size=24)
    data.setup("fit")
    model = TinyNet(dropout=0.0).net
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    probes = (data.val_dataset.tensors[0][:4], data.val_dataset.tensors[1][:4])
    losses = []
    folder = tmp_path / "plain" / "version_0"
    with Recorder(model, probes, folder) as rec:
        for step, (images, labels) in enumerate(torch.utils.data.DataLoader(data.train_dataset, batch_size=8), 1):
            loss = nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            rec.step(step, loss=loss.detach())
        rec.scalar("val/loss", step, 0.5)
        with pytest.raises(RecorderError, match="does not follow"):
            rec.step(1)
    out = capsys.readouterr().out
    assert f"actrec recorder: finished; the store is {folder / 'activations.h5'}" in out
    run = Run(folder)
    assert run.status() == "finished"
    assert run.summary()["recorded_steps"] == 4
    assert run.summary()["metrics"] == {"val/loss": 0.5}  # the summary rule every writer shares
    with StoreReader(folder / "activations.h5") as store:
        assert store.layer_names == ["conv1", "conv2"]
        assert store.global_steps().tolist() == [0, 1, 2, 3]
        np.testing.assert_allclose(store.steps()["batch_loss"][1:], losses, rtol=1e-6)
        assert store.config["task"] == "classification"
        _assert_last_row_is_a_fresh_pass(store, model)
    assert render_main([str(folder), "--tile-size", "8", "--quiet"]) == 0
    assert {path.name for path in (folder / "renders").glob("*.png")} == {
        "conv1.png",
        "conv1.sheet.png",
        "conv2.png",
        "conv2.sheet.png",
        "curves.png",
    }


# -- 7. torch.compile ---------------------------------------------------------------------------------


class CompiledNet(TinyNet):
    """TinyNet whose network is compiled inside the module, as Lightning's docs suggest."""

    def __init__(self) -> None:
        super().__init__(dropout=0.0)
        self.net = torch.compile(self.net, backend="aot_eager")


@pytest.mark.slow  # torch.compile
def test_a_whole_compiled_lightning_module_records(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    model = TinyNet(dropout=0.0)
    recorder = ActivationRecorder(background_writes=False)
    trainer = _trainer(tmp_path, logger=False, callbacks=[recorder])
    trainer.fit(torch.compile(model, backend="aot_eager"), TinyData(batch_size=8, size=24))
    with StoreReader(recorder.store_path) as store:
        assert store.layer_names == ["net.conv1", "net.conv2"]  # Lightning unwraps it; the recorder sees the module
        assert store.global_steps().tolist() == [0, 1, 2, 3]
        _assert_last_row_is_a_fresh_pass(store, model)


@pytest.mark.slow  # torch.compile
def test_a_compiled_model_records_its_original_modules(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    model = CompiledNet()
    recorder = ActivationRecorder(background_writes=False)
    _trainer(tmp_path, logger=False, callbacks=[recorder]).fit(model, TinyData(batch_size=8, size=24))
    with StoreReader(recorder.store_path) as store:
        assert store.layer_names == ["net._orig_mod.conv1", "net._orig_mod.conv2"]  # the hooked original modules
        assert store.global_steps().tolist() == [0, 1, 2, 3]
        _assert_last_row_is_a_fresh_pass(store, model)  # eager values of the original module
        probes = torch.from_numpy(store.probes.images)
        model.eval()
        with torch.no_grad():
            through_the_graph = model(probes)  # the compiled graph gives the same logits
        np.testing.assert_allclose(store.logits()[-1], through_the_graph.numpy(), rtol=1e-5, atol=1e-6)


def test_a_compiler_error_keeps_its_cause_in_the_sentence() -> None:
    from actrec.probe._layers import torch_reason

    def broken(graph: torch.fx.GraphModule, inputs: list[torch.Tensor]) -> Any:
        raise RuntimeError("aot_autograd() does not yet handle input mutations on views with different dtypes")

    compiled = torch.compile(nn.Linear(2, 2), backend=broken)
    with pytest.raises(Exception) as caught:  # noqa: PT011 (torch's BackendCompilerFailed, whatever it is called)
        compiled(torch.ones(1, 2))
    reason = torch_reason(caught.value)
    assert "raised:" in reason
    assert "aot_autograd() does not yet handle input mutations on views with different dtypes" in reason


def test_a_plain_loop_recorder_failing_while_opening_closes_its_store_and_says_failed(tmp_path: Path) -> None:
    """A failure after the store is created (here: the probe pass of step 0) closes the store and leaves a
    "failed" summary, not an open HDF5 file and a run that looks running forever."""
    from actrec.recorder import Recorder

    calls = []

    def forward(model: nn.Module, batch: Any) -> torch.Tensor:
        calls.append(1)
        if fail_at is not None and len(calls) == fail_at:
            raise RuntimeError("probe pass broke")
        return model(batch)

    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    fail_at = None
    with Recorder(model, torch.ones(2, 4), tmp_path / "count", probe_forward=forward, start_step=None, verbose=False):
        pass
    fail_at, calls[:] = len(calls) + 1, []  # the first call after opening: the pass of step 0
    folder = tmp_path / "plain" / "version_0"
    rec = Recorder(model, torch.ones(2, 4), folder, probe_forward=forward, verbose=False)
    with pytest.raises(UserError, match="could not run the probe images: probe pass broke"):
        rec.open()
    summary = Run(folder).summary()
    assert summary["state"] == "failed"
    assert "probe pass broke" in summary["error"]
    with StoreReader(folder / "activations.h5") as store:  # closed, readable, no rows
        assert store.global_steps().tolist() == []
    with h5py.File(folder / "activations.h5", "r+"):  # no writer holds it open any more
        pass


def test_the_rules_both_recorders_share_are_written_once() -> None:
    """The column rule (store), the task list (names) and the small-model threshold (probe) have one home each;
    the Lightning callback and the plain-loop Recorder use them instead of copies."""
    import actrec.callbacks.activation_recorder as callback
    import actrec.recorder._recorder as plain
    from actrec.names import TASK_CHOICES
    from actrec.probe import SMALL_MODEL_PARAMETERS
    from actrec.store import column_key

    assert column_key("conv1/activations") == "layers/conv1/activations"
    assert [column_key(k) for k in ("logits", "batch_loss", "batch_acc")] == [
        "steps/logits",
        "steps/batch_loss",
        "steps/batch_acc",
    ]
    for module in (callback, plain):
        assert not {"_column_key", "_TASKS", "_SMALL_MODEL"} & set(vars(module))
        assert module.column_key is column_key
        assert module.TASK_CHOICES is TASK_CHOICES
        assert module.SMALL_MODEL_PARAMETERS is SMALL_MODEL_PARAMETERS


def test_one_summary_rule_for_every_writer(tmp_path: Path) -> None:
    """actrec.runs.finished_summary / scalar_metrics: one-number metrics as floats, never a bool or a string."""
    from actrec.runs import finished_summary, scalar_metrics

    metrics = {"b": torch.tensor(2.0), "a": 1, "flag": True, "name": "x", "vec": torch.ones(3), "c": np.float32(3)}
    assert scalar_metrics(metrics) == {"a": 1.0, "b": 2.0, "c": 3.0}
    store = tmp_path / "activations.h5"
    store.write_bytes(b"12345")
    summary = finished_summary(
        {"model": "M"}, state="failed", started=1.0, error="boom", metrics=metrics, store_path=store, recorded_steps=2
    )
    assert (summary["state"], summary["error"], summary["model"]) == ("failed", "boom", "M")
    assert summary["metrics"] == {"a": 1.0, "b": 2.0, "c": 3.0}
    assert (summary["store_bytes"], summary["store_path"], summary["recorded_steps"]) == (5, str(store), 2)
    assert summary["wall_time_s"] >= 0
