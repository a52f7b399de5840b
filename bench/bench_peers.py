"""actrec against what people use instead, recording every layer at every training step.

The same short training (real ``pl.Trainer``, the six-conv ``ImageClassifier``, TensorBoard logging on, as
``actrec train`` does) runs with:

- off: no recording;
- probe pass only: the floor, the probe images through the model in eval mode under ``no_grad`` after every step,
  nothing kept: what any recorder of these activations pays before it copies or stores a byte;
- actrec: the ``ActivationRecorder`` with its defaults (writer process, blocks of rows, the store's default
  compression), recording the six conv blocks of ten probe images;
- hooks + h5py: the thirty lines a user writes by hand: forward hooks on the same layers, a probe pass under
  ``no_grad`` in eval mode, float16 copies appended to growable h5py datasets and flushed, synchronously;
- TensorBoard: the same probe pass, each layer's channels logged with ``SummaryWriter.add_images``;
- torchlens: ``torchlens.trace`` of the probe pass saving the same layers (skipped when not installed:
  ``pip install torchlens``).

Variants run interleaved round by round, so machine noise hits them alike; the table gives each one's median
ms per step and its median ratio to "off" of the same round. The machine line names the CPU count and the load
average before and after, since on a shared VM the load decides how far the figures can be trusted.

    python bench/bench_peers.py                                              # mnist-sample, batch 64
    python bench/bench_peers.py --batch-size 1024 --steps 20                 # the article's batch
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytorch_lightning as pl
import torch

from actrec.callbacks import ActivationRecorder
from actrec.probe import resolve_layers
from actrec.trainer import ImageClassifier, ImageDataModule

_NUM_PROBES = 10
_FLOOR = "probe pass only (floor)"


class _Clock(pl.Callback):
    """Wall time from the end of the first optimizer step to on_train_end: steady state, final flush included,
    one-time start-up (opening files, starting a writer process, step 0) left out for every variant alike."""

    def __init__(self, edge: str, times: dict[str, float]) -> None:
        self.edge, self.times = edge, times

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if self.edge == "end" and trainer.global_step == 1 and "start" not in self.times:
            self.times["start"] = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.edge == "end":
            self.times["end"] = time.perf_counter()


def _eval_forward(pl_module: pl.LightningModule, images: torch.Tensor) -> None:
    """The probe images through the model in eval mode under ``no_grad``, its own ``training`` flag restored."""
    was_training = pl_module.training
    try:
        pl_module.eval()
        with torch.no_grad():
            pl_module(images)
    finally:
        pl_module.train(was_training)


class _ProbePass(pl.Callback):
    """A hand-written recorder: hooks on ``layers``, a probe pass every step, ``keep(step, {layer: tensor})``."""

    def __init__(self, images: torch.Tensor, layers: list[str]) -> None:
        self.images, self.layers = images, layers

    def keep(self, trainer: pl.Trainer, outputs: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: object) -> None:
        outputs: dict[str, torch.Tensor] = {}
        modules = dict(pl_module.named_modules())
        handles = [
            modules[name].register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o.detach()))
            for name in self.layers
        ]
        try:
            _eval_forward(pl_module, self.images)
        finally:
            for handle in handles:
                handle.remove()
        self.keep(trainer, outputs)


class _ForwardOnly(pl.Callback):
    """The floor: the probe images through the model after every step, in eval mode, nothing hooked or kept."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: object) -> None:
        _eval_forward(pl_module, self.images)


class _HooksH5py(_ProbePass):
    def __init__(self, images: torch.Tensor, layers: list[str], path: Path) -> None:
        super().__init__(images, layers)
        self.path = path
        self.file: h5py.File | None = None

    def keep(self, trainer: pl.Trainer, outputs: dict[str, torch.Tensor]) -> None:
        if self.file is None:
            self.file = h5py.File(self.path, "w")
            for name, value in outputs.items():
                shape = tuple(value.shape)
                self.file.create_dataset(name, (0, *shape), maxshape=(None, *shape), dtype="f2", chunks=(1, *shape))
        for name, value in outputs.items():
            dataset = self.file[name]
            dataset.resize(dataset.shape[0] + 1, axis=0)
            dataset[-1] = value.cpu().numpy().astype(np.float16)
        self.file.flush()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.file is not None:
            self.file.close()


class _TensorBoardImages(_ProbePass):
    def keep(self, trainer: pl.Trainer, outputs: dict[str, torch.Tensor]) -> None:
        experiment = trainer.logger.experiment
        for name, value in outputs.items():
            # Every probe's channels as grey images in [0, 1] (tanh outputs: -1..1).
            images = ((value.reshape(-1, 1, *value.shape[-2:]) + 1) / 2).clamp(0, 1)
            experiment.add_images(f"activations/{name}", images, trainer.global_step)


class _Torchlens(pl.Callback):
    def __init__(self, images: torch.Tensor, layers: list[str], torchlens: object) -> None:
        from torchlens.options import CaptureOptions

        self.images, self.layers, self.torchlens = images, layers, torchlens
        # Unwrapped after each trace, so training's own forward runs on plain torch functions.
        self.options = CaptureOptions(layers_to_save=list(layers), unwrap_when_done=True)
        self.kept = 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: object) -> None:
        was_training = pl_module.training
        try:
            pl_module.eval()
            with torch.no_grad():
                trace = self.torchlens.trace(pl_module, self.images, capture=self.options)
        finally:
            pl_module.train(was_training)
        self.kept += 1
        del trace


def _torchlens() -> object | None:
    try:
        import torchlens
    except ImportError:
        return None
    return torchlens


def _variants(images: torch.Tensor, layers: list[str], root: Path) -> dict[str, Callable[[], pl.Callback | None]]:
    variants: dict[str, Callable[[], pl.Callback | None]] = {
        "off": lambda: None,
        _FLOOR: lambda: _ForwardOnly(images),
        "actrec (default)": lambda: ActivationRecorder(path=str(root / "actrec.h5"), overwrite=True),
        "hooks + h5py (sync)": lambda: _HooksH5py(images, layers, root / "hooks.h5"),
        "TensorBoard add_images": lambda: _TensorBoardImages(images, layers),
    }
    torchlens = _torchlens()
    if torchlens is not None:
        variants["torchlens trace"] = lambda: _Torchlens(images, layers, torchlens)
    return variants


def _run(callback: pl.Callback | None, data: ImageDataModule, steps: int, root: Path) -> float:
    pl.seed_everything(0, verbose=False)
    times: dict[str, float] = {}
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        limit_val_batches=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=pl.loggers.TensorBoardLogger(str(root), name="tb"),
        log_every_n_steps=1,
        callbacks=[_Clock("start", times), *([callback] if callback is not None else []), _Clock("end", times)],
        default_root_dir=str(root),
    )
    trainer.fit(ImageClassifier(init="article"), datamodule=data)
    return (times["end"] - times["start"]) / (steps - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist-sample")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60, help="training steps per timed run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all variants")
    args = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("actrec").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    print("$ python " + shlex.join(sys.argv))
    load_before = os.getloadavg()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} "
        f"threads), lightning {pl.__version__}; load average before {load_before[0]:.2f} (1 min), "
        f"{load_before[1]:.2f} (5 min)"
    )

    data = ImageDataModule(dataset=args.dataset, batch_size=args.batch_size)
    data.prepare_data()
    data.setup("fit")
    images = torch.stack([data.val_dataset[index][0] for index in range(_NUM_PROBES)])
    layers = resolve_layers(ImageClassifier(init="article"), None)
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        variants = _variants(images, layers, Path(tmp))
        results = {name: [] for name in variants}
        for round_index in range(args.rounds):
            for index, (name, make) in enumerate(variants.items()):
                root = Path(tmp) / f"round{round_index}-variant{index}"
                seconds = _run(make(), data, args.steps, root)
                results[name].append(seconds)
                print(
                    f"  round {round_index + 1}: {name:24s} {seconds * 1000:8.1f} ms/step", file=sys.stderr, flush=True
                )
    load_after = os.getloadavg()

    print(
        f"\n{args.dataset}, batch {args.batch_size}, every layer of {len(layers)} at every step, {_NUM_PROBES} probes, "
        f"{args.steps} steps x {args.rounds} rounds; load average after {load_after[0]:.2f} (1 min)"
    )
    print(
        f"{'variant':24s} {'ms/step':>9s} {'x off':>7s} {'x floor':>8s}  "
        "(ratios: medians of the variant over the same round's off, and over its probe pass only)"
    )
    floor = results[_FLOOR]
    for name, runs in results.items():
        ratio = statistics.median(a / b for a, b in zip(runs, results["off"], strict=True))
        over_floor = statistics.median(a / b for a, b in zip(runs, floor, strict=True))
        print(f"{name:24s} {statistics.median(runs) * 1000:9.1f} {ratio:6.2f}x {over_floor:7.2f}x")
    if "torchlens trace" not in results:
        print("torchlens: not installed (pip install torchlens), left out")


if __name__ == "__main__":
    main()
