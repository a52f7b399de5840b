"""The LightningModule: a zoo model trained with Adam and cross-entropy."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from typing_extensions import override

from actrec.trainer.models import InitName, ModelName, build_model

__all__ = ["ImageClassifier"]


_LARGEST_ADAM_LR = float(torch.finfo(torch.float32).max) * (1 - 0.9)


class ImageClassifier(pl.LightningModule):
    """Classify 28x28 grayscale images with a model from the zoo.

    Logs ``train/loss`` and ``train/acc`` every step, ``val/loss`` and ``val/acc`` every epoch and ``test/loss``
    and ``test/acc`` after testing. ``training_step`` returns ``{"loss": loss, "acc": acc}`` so callbacks can read
    both in ``on_train_batch_end``.

    Args:
        model: Zoo model: ``six_conv_tanh`` (the article's network), ``lenet`` or ``mlp``.
        init: Weight initialisation, ``"default"`` (PyTorch's) or ``"article"`` (normal(0, 0.01), zero biases).
        lr: Adam learning rate.

    Raises:
        ValueError: If ``model`` or ``init`` is unknown, or ``lr`` is not a positive number Adam can step with.
    """

    def __init__(self, model: ModelName = "six_conv_tanh", init: InitName = "default", lr: float = 1e-3) -> None:
        super().__init__()
        if not 0 < lr < _LARGEST_ADAM_LR:
            # Adam's first step moves each weight by up to lr / (1 - beta1); past float32's range torch
            # cannot even apply it. Anything below still trains (and may diverge, which the recorder shows).
            raise ValueError(
                f"lr must be a positive number below {_LARGEST_ADAM_LR:.3g} (Adam's first step, 10 x lr, must fit "
                f"in float32), got {lr}."
            )
        self.save_hyperparameters()
        self.lr = lr
        self.net = build_model(model, init)
        self.example_input_array = torch.zeros(1, 1, 28, 28)

    @override
    def forward(self, images: Tensor) -> Tensor:
        """Map images ``(B, 1, 28, 28)`` in ``[0, 1]`` to logits ``(B, 10)``."""
        return self.net(images)

    def _loss_and_accuracy(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        return loss, accuracy

    @override
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Log and return the batch's loss and accuracy."""
        loss, accuracy = self._loss_and_accuracy(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/acc", accuracy, on_step=True, on_epoch=False, prog_bar=True)
        return {"loss": loss, "acc": accuracy.detach()}

    @override
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Accumulate the epoch's validation loss and accuracy."""
        self._log_evaluation("val", batch)

    @override
    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Accumulate the test loss and accuracy."""
        self._log_evaluation("test", batch)

    def _log_evaluation(self, split: str, batch: tuple[Tensor, Tensor]) -> None:
        loss, accuracy = self._loss_and_accuracy(batch)
        # Weight by batch size so a short last batch counts for what it holds.
        batch_size = batch[1].shape[0]
        self.log(f"{split}/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=batch_size)
        self.log(f"{split}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True, batch_size=batch_size)

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over every parameter at ``lr``."""
        return torch.optim.Adam(self.parameters(), lr=self.lr)
