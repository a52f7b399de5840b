"""Make the pictures of docs/recording.md: one contact sheet per way of recording a model, each from a real
tiny training on CPU (a minute or two in all).

    python tools/make_recording_pictures.py [--out docs] [--work /tmp/actrec-pictures] [--only classifier,...]

1. ``recording-classifier.png``: an image classifier (MNIST digits, the callback alone): inputs, maps, ✓/✗.
2. ``recording-tokens.png``: a language model fed dict batches (``input_ids``, ``attention_mask``): the
   token ids, the predicted next id at every position (it learns to count), token x feature heatmaps.
3. ``recording-autoencoder.png``: an autoencoder that flattens in its step, recorded through
   ``probe_forward``: the reconstruction as an ``output`` picture row under the inputs.
4. ``recording-gan.png``: a GAN trained in a plain PyTorch loop (``actrec.recorder.Recorder``): the noise
   probes as a red-blue strip, the generated digits as the ``output`` row.
"""

from __future__ import annotations

import argparse
import shutil
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import actrec.trainer
from actrec.callbacks import ActivationRecorder
from actrec.recorder import Recorder
from actrec.trainer.data import MNIST_SAMPLE_FILENAME
from actrec.viewer import render_run

PATTERNS = ("classifier", "tokens", "autoencoder", "gan")


def mnist(count: int = 5000) -> tuple[torch.Tensor, torch.Tensor]:
    """The MNIST sample actrec ships, in a fixed shuffled order (the file is sorted by digit): ``(N, 1, 28, 28)``
    floats in 0..1 and their labels."""
    data = np.load(Path(actrec.trainer.__file__).parent / MNIST_SAMPLE_FILENAME)
    order = np.random.default_rng(0).permutation(len(data["labels"]))[:count]
    images = torch.from_numpy(data["pixels"][order].astype(np.float32) / 255).reshape(-1, 1, 28, 28)
    return images, torch.from_numpy(data["labels"][order].astype(np.int64))


def loaders(batch_size: int = 64) -> tuple[DataLoader, DataLoader]:
    images, labels = mnist()
    train = TensorDataset(images[:4000], labels[:4000])
    val = TensorDataset(images[4000:], labels[4000:])
    return DataLoader(train, batch_size=batch_size, shuffle=True), DataLoader(val, batch_size=256)


def trainer(root: Path, recorder: ActivationRecorder, epochs: int) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=str(root),
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        callbacks=[recorder],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )


# -- 1. an image classifier ---------------------------------------------------------------------------


class DigitClassifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.conv2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 7 * 7, 10))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv2(self.conv1(images)))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        loss = nn.functional.cross_entropy(self(images), labels)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        self.log("val/loss", nn.functional.cross_entropy(self(images), labels))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def classifier(work: Path) -> tuple[Path, str, dict]:
    recorder = ActivationRecorder(every_n_steps=4)  # nothing else: probes are one validation digit per class
    trainer(work, recorder, epochs=1).fit(DigitClassifier(), *loaders())
    return recorder.store_path.parent, "conv1", {"channels": "0,1,2,3", "probes": "0-5"}


# -- 2. dict batches: a language model ----------------------------------------------------------------

VOCABULARY, LENGTH = 16, 8


def counting_sequences(count: int, seed: int) -> dict[str, torch.Tensor]:
    """Sequences that count up from a random start (mod 16), padded at the end: the next id is the last + 1."""
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(1, VOCABULARY, (count, 1), generator=generator)
    ids = (starts + torch.arange(LENGTH)) % VOCABULARY
    used = torch.randint(5, LENGTH + 1, (count, 1), generator=generator)
    mask = (torch.arange(LENGTH) < used).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


class TinyLanguageModel(pl.LightningModule):
    """Embeddings, two causal transformer blocks and a head over the vocabulary, called with dict batches."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCABULARY, 32)
        self.position = nn.Parameter(torch.randn(LENGTH, 32) * 0.1)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.blocks = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, VOCABULARY)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        causal = nn.Transformer.generate_square_subsequent_mask(input_ids.shape[1])
        hidden = self.embed(input_ids) + self.position[: input_ids.shape[1]]
        return self.head(self.blocks(hidden, mask=causal, is_causal=True))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        scores = self(**batch)[:, :-1]
        targets = batch["input_ids"][:, 1:].masked_fill(batch["attention_mask"][:, 1:] == 0, -100)
        loss = nn.functional.cross_entropy(scores.reshape(-1, VOCABULARY), targets.reshape(-1), ignore_index=-100)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def tokens(work: Path) -> tuple[Path, str, dict]:
    train = counting_sequences(2048, seed=0)
    items = [{key: value[index] for key, value in train.items()} for index in range(2048)]
    probes = counting_sequences(4, seed=1)
    recorder = ActivationRecorder(probe_batch=probes, every_n_steps=4)  # task auto: next-token scores
    trainer(work, recorder, epochs=2).fit(TinyLanguageModel(), DataLoader(items, batch_size=64, shuffle=True))
    return recorder.store_path.parent, "blocks.layers.1", {"sheet_steps": (0, 8, 64)}


# -- 3. a custom probe_forward: an autoencoder that flattens in its step -----------------------------


class AutoEncoder(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 32))
        self.decoder = nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 784), nn.Sigmoid())

    def forward(self, flat: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(flat))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, _ = batch
        flat = images.view(len(images), -1)
        loss = nn.functional.mse_loss(self(flat), flat)
        self.log("train_loss", loss)
        return loss

    def probe_forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        images, _ = batch
        return self(images.view(len(images), -1))  # the probes are the loader's images: flatten as the step does

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def autoencoder(work: Path) -> tuple[Path, str, dict]:
    recorder = ActivationRecorder(every_n_steps=8)  # task auto: reconstruction (as many values out as in)
    trainer(work, recorder, epochs=6).fit(AutoEncoder(), *loaders())
    return recorder.store_path.parent, "decoder.1", {"probes": "0-5", "sheet_steps": (0, 16, 64, 376)}


# -- 4. a plain PyTorch loop: a GAN -----------------------------------------------------------------


def gan(work: Path) -> tuple[Path, str, dict]:
    torch.manual_seed(0)
    images, _ = mnist()
    real_images = images[:4000] * 2 - 1  # tanh's range
    generator = nn.Sequential(
        OrderedDict(
            linear=nn.Linear(16, 256),
            hidden=nn.ReLU(),
            out=nn.Linear(256, 784),
            tanh=nn.Tanh(),
            image=nn.Unflatten(1, (1, 28, 28)),
        )
    )
    discriminator = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.LeakyReLU(0.2), nn.Linear(256, 1))
    g_optimizer = torch.optim.Adam(generator.parameters(), lr=2e-3, betas=(0.5, 0.999))
    d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=2e-3, betas=(0.5, 0.999))
    bce = nn.functional.binary_cross_entropy_with_logits
    noise = torch.randn(6, 16, generator=torch.Generator().manual_seed(1))
    folder = work / "gan" / "version_0"
    with Recorder(generator, noise, folder, every_n_steps=25, overwrite=True) as rec:
        for step in range(1, 2001):
            real = real_images[torch.randint(0, len(real_images), (64,))]
            fake = generator(torch.randn(64, 16))
            d_loss = bce(discriminator(real), torch.ones(64, 1)) + bce(discriminator(fake.detach()), torch.zeros(64, 1))
            d_optimizer.zero_grad()
            d_loss.backward()
            d_optimizer.step()
            g_loss = bce(discriminator(fake), torch.ones(64, 1))
            g_optimizer.zero_grad()
            g_loss.backward()
            g_optimizer.step()
            rec.step(step, loss=g_loss.detach())
    return folder, "hidden", {"sheet_steps": (0, 100, 500, 2000)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs")
    parser.add_argument("--work", type=Path, default=Path("/tmp/actrec-pictures"))
    parser.add_argument("--only", default=",".join(PATTERNS), help="comma-separated: " + ", ".join(PATTERNS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    makers = {"classifier": classifier, "tokens": tokens, "autoencoder": autoencoder, "gan": gan}
    for name in args.only.split(","):
        pl.seed_everything(0, verbose=False)
        work = args.work / name
        shutil.rmtree(work, ignore_errors=True)
        run, layer, options = makers[name](work)
        result = render_run(run, layers=[layer], tile_size=28, progress=False, **options)
        steps = result.sheet_steps
        picture = args.out / f"recording-{name}.png"
        shutil.copyfile(result.out_dir / f"{layer}.sheet.png", picture)
        print(f"{picture}: {layer} of {run}, steps {', '.join(map(str, steps))}")


if __name__ == "__main__":
    main()
