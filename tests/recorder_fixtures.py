"""Tiny deterministic models and data for recorder tests; importable by the tests' subprocesses too."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

NUM_CLASSES = 3


class TinyData(pl.LightningDataModule):
    """48 random 1x6x6 images in 3 classes, in a fixed order (no shuffling, so resumes replay exactly)."""

    def __init__(self, batch_size: int = 8, size: int = 48) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.size = size
        self.classes = ["zero", "one", "two"]

    def setup(self, stage: str) -> None:
        generator = torch.Generator().manual_seed(1234)
        images = torch.rand(self.size, 1, 6, 6, generator=generator)
        labels = torch.arange(self.size) % NUM_CLASSES
        self.train_dataset = TensorDataset(images, labels)
        self.val_dataset = TensorDataset(images[:12].flip(0), labels[:12].flip(0))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_dataset, batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_dataset, batch_size=self.batch_size)


class TinyNet(pl.LightningModule):
    """conv+tanh block, conv+relu with batch norm, dropout and a linear head: everything a probe pass could disturb."""

    def __init__(self, lr: float = 0.05, dropout: float = 0.5) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential()
        self.net.add_module("conv1", nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Tanh()))
        self.net.add_module("conv2", nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU()))
        self.net.add_module("drop", nn.Dropout(dropout))
        self.net.add_module("flat", nn.Flatten())
        self.net.add_module("head", nn.Linear(3 * 6 * 6, NUM_CLASSES))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        images, labels = batch
        logits = self(images)
        loss = nn.functional.cross_entropy(logits, labels)
        acc = (logits.argmax(-1) == labels).float().mean()
        return {"loss": loss, "acc": acc.detach()}

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        self.log("val/loss", nn.functional.cross_entropy(logits, labels), sync_dist=True)
        self.log("val/acc", (logits.argmax(-1) == labels).float().mean(), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


def quiet_trainer(tmp_path, **kwargs) -> pl.Trainer:  # noqa: ANN001
    """A real Trainer with nothing printed, logging and checkpointing into ``tmp_path``."""
    options = {
        "default_root_dir": str(tmp_path),
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 2,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "logger": pl.loggers.TensorBoardLogger(str(tmp_path), name="logs"),
        "deterministic": True,
    }
    options.update(kwargs)
    return pl.Trainer(**options)
