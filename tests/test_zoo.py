"""A zoo of ordinary models, each trained a few steps with the recorder: records, reads back, resumes, and
changes nothing (weights bitwise equal with and without the recorder)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torchvision
from pytorch_lightning.callbacks import ModelCheckpoint
from recorder_fixtures import quiet_trainer
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from actrec.callbacks import ActivationRecorder
from actrec.probe import capture
from actrec.store import StoreReader
from actrec.trainer.models import build_model


class ZooModule(pl.LightningModule):
    def __init__(self, make_net: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.net = make_net()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.net(inputs)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        inputs, labels = batch
        logits = self(inputs)
        loss = nn.functional.cross_entropy(logits, labels)
        return {"loss": loss, "acc": (logits.argmax(-1) == labels).float().mean()}

    def validation_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        inputs, labels = batch
        self.log("val_loss", nn.functional.cross_entropy(self(inputs), labels))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


class ZooData(pl.LightningDataModule):
    def __init__(self, make_dataset: Callable[[], Dataset]) -> None:
        super().__init__()
        self.make_dataset = make_dataset

    def setup(self, stage: str) -> None:
        self.train_dataset = self.make_dataset()
        self.val_dataset = self.make_dataset()

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_dataset, batch_size=4)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_dataset, batch_size=4)


def _tensors(shape: tuple[int, ...], classes: int = 3, size: int = 8) -> Callable[[], Dataset]:
    def make() -> Dataset:
        generator = torch.Generator().manual_seed(0)
        return TensorDataset(torch.rand(size, *shape, generator=generator), torch.arange(size) % classes)

    return make


def _fake_images() -> Dataset:
    return torchvision.datasets.FakeData(
        size=8, image_size=(3, 32, 32), num_classes=3, transform=torchvision.transforms.ToTensor(), random_offset=0
    )


class LSTMClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 8, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, sequences: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(sequences)[0][:, -1])


class TinyTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)).mean(1))


ZOO = {
    "six_conv_tanh": (
        lambda: build_model("six_conv_tanh"),
        _tensors((1, 28, 28)),
        [f"net.conv{i}" for i in range(1, 7)],
    ),
    "lenet": (lambda: build_model("lenet"), _tensors((1, 28, 28)), ["net.conv1", "net.conv2"]),
    "mlp": (lambda: build_model("mlp"), _tensors((1, 28, 28)), ["net.fc1", "net.fc2"]),
    "resnet18": (
        lambda: torchvision.models.resnet18(num_classes=3),
        _fake_images,
        [f"net.layer{i}.{j}" for i in range(1, 5) for j in range(2)],
    ),
    "conv_bn_relu": (
        lambda: nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3)),
        _tensors((1, 8, 8)),
        ["net.2"],
    ),
    "transformer": (TinyTransformer, _tensors((5, 4)), ["net.encoder.layers.0", "net.encoder.layers.1"]),
    "lstm": (LSTMClassifier, _tensors((5, 4)), ["net.lstm[0]"]),
    "mlp_dropout": (
        lambda: nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3)),
        _tensors((1, 4, 4)),
        ["net.2"],
    ),
}


def _fit(root: Path, name: str, recorder: ActivationRecorder | None, ckpt: Path | None = None, **options) -> ZooModule:
    make_net, make_dataset, _ = ZOO[name]
    pl.seed_everything(3, verbose=False)
    model = ZooModule(make_net)
    callbacks = [recorder] if recorder is not None else []
    checkpoints = ModelCheckpoint(dirpath=root / "ckpt", save_top_k=-1, every_n_epochs=1)
    trainer = quiet_trainer(root, callbacks=[*callbacks, checkpoints], max_epochs=2, **options)
    trainer.fit(model, ZooData(make_dataset), ckpt_path=str(ckpt) if ckpt else None)
    return model


@pytest.mark.slow  # about 3 s a model on a quiet 2-core machine: three short fits each
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_records_reads_back_resumes_and_changes_nothing(tmp_path: Path, name: str) -> None:
    _, _, expected_layers = ZOO[name]
    plain = _fit(tmp_path / "off", name, None)
    # The writer process is covered elsewhere; here it would only add its start-up to every model but one.
    recorder = ActivationRecorder(path=str(tmp_path / "on.h5"), background_writes=name == "resnet18")
    recorded = _fit(tmp_path / "on", name, recorder)
    for (key, a), (_, b) in zip(plain.state_dict().items(), recorded.state_dict().items(), strict=True):
        assert torch.equal(a, b), key  # zero observer effect, batch-norm statistics included

    with StoreReader(tmp_path / "on.h5") as store:
        assert store.layer_names == expected_layers
        assert store.global_steps().tolist() == [0, 1, 2, 3, 4]
        probes = torch.from_numpy(store.probes.images)
        assert store.probes.labels.tolist() == [0, 1, 2]
        fresh = capture(recorded, probes, expected_layers)  # the trained model, seen afresh
        for layer in expected_layers:
            info = store.layer(layer)
            assert info.kind == {4: "maps", 3: "tokens", 2: "vector"}[fresh.activations[layer].ndim]
            assert info.output == ("[0]" if layer.endswith("[0]") else "")  # the selector, stored with the layer
            np.testing.assert_array_equal(
                store.activations(layer)[-1], fresh.activations[layer].numpy().astype(np.float16)
            )
        np.testing.assert_allclose(store.logits()[-1], fresh.output.numpy(), rtol=1e-6)
        assert store.scalars("val/loss")[0].tolist() == [2, 4]
        assert np.isfinite(store.steps()["batch_acc"][1:]).all()

    # Resume from the end of epoch 0: rows after step 2 are dropped and recorded again, none twice.
    again = ActivationRecorder(path=str(tmp_path / "on.h5"), background_writes=False)
    _fit(tmp_path / "resumed", name, again, ckpt=tmp_path / "on" / "ckpt" / "epoch=0-step=2.ckpt")
    with StoreReader(tmp_path / "on.h5") as store:
        assert store.global_steps().tolist() == [0, 1, 2, 3, 4]
