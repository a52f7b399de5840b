"""What recording activations at every step costs, as a share of training wall time.

Runs the same short training (real ``pl.Trainer``, ``ImageClassifier``, ``ImageDataModule``, TensorBoard
logging on, as ``actrec train`` does) with the recorder off and in several configurations, interleaved
round by round so that machine noise hits every variant alike. Reports the median seconds per step,
the overhead against "off", and the store's bytes per step against the raw float16 size.

    python bench/bench_recorder.py                          # article schedule: Fashion-MNIST, batch 1024
    python bench/bench_recorder.py --dataset mnist-sample --batch-size 64 --steps 60   # quickstart
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import pytorch_lightning as pl
import torch

from actrec.callbacks import ActivationRecorder
from actrec.trainer import ImageClassifier, ImageDataModule

VARIANTS: dict[str, dict | None] = {
    "off": None,
    "on (default: async, uncompressed)": {"compression": "none"},
    "async, lzf": {"compression": "lzf"},
    "async, gzip-1": {"compression": "gzip"},
    "naive: sync, gzip-1, flush/step": {"compression": "gzip", "background_writes": False},
}


class _Clock(pl.Callback):
    """Wall time from the first callback's on_train_start to the last callback's on_train_end."""

    def __init__(self, edge: str, times: dict[str, float]) -> None:
        self.edge, self.times = edge, times

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.edge == "start":
            self.times["start"] = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.edge == "end":
            self.times["end"] = time.perf_counter()


def _run(variant: dict | None, data: ImageDataModule, steps: int, root: Path) -> tuple[float, Path | None]:
    pl.seed_everything(0, verbose=False)
    times: dict[str, float] = {}
    recorder = ActivationRecorder(path=str(root / "activations.h5"), **variant) if variant is not None else None
    callbacks = [_Clock("start", times), *([recorder] if recorder else []), _Clock("end", times)]
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        limit_val_batches=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=pl.loggers.TensorBoardLogger(str(root), name="tb"),
        log_every_n_steps=1,
        callbacks=callbacks,
        default_root_dir=str(root),
    )
    trainer.fit(ImageClassifier(init="article"), datamodule=data)
    return (times["end"] - times["start"]) / steps, (recorder.store_path if recorder else None)


def _bytes_per_step(path: Path) -> tuple[float, float]:
    """Stored and raw float16 bytes of the activations, per recorded step."""
    with h5py.File(path, "r") as f:
        layers = f["layers"]
        stored = sum(layers[name]["activations"].id.get_storage_size() for name in layers)
        rows = f["steps/global_step"].shape[0]
        raw = sum(layers[name]["activations"][0].size * 2 for name in layers) * rows
    return stored / rows, raw / rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30, help="training steps per timed run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all variants")
    args = parser.parse_args()
    print("$ python " + shlex.join(sys.argv))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, lightning {pl.__version__}")

    data = ImageDataModule(dataset=args.dataset, batch_size=args.batch_size)
    data.prepare_data()
    data.setup("fit")
    results: dict[str, list[float]] = {name: [] for name in VARIANTS}
    sizes: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        _run(None, data, 3, Path(tmp) / "warmup")
        for round_index in range(args.rounds):
            for name, variant in VARIANTS.items():
                root = Path(tmp) / f"r{round_index}-{len(results[name])}-{abs(hash(name))}"
                seconds, store = _run(variant, data, args.steps, root)
                results[name].append(seconds)
                if store is not None:
                    sizes[name] = _bytes_per_step(store)
                print(f"  round {round_index + 1}: {name:36s} {seconds * 1000:8.1f} ms/step", flush=True)

    base = statistics.median(results["off"])
    print(f"\n{args.dataset}, batch {args.batch_size}, {args.steps} steps x {args.rounds} rounds (median)")
    print(f"{'variant':36s} {'ms/step':>9s} {'overhead':>9s} {'KB/step':>9s} {'vs raw f16':>10s}")
    for name in VARIANTS:
        seconds = statistics.median(results[name])
        stored, raw = sizes.get(name, (float("nan"), float("nan")))
        overhead = "" if name == "off" else f"{(seconds / base - 1) * 100:+8.2f}%"
        ratio = "" if name == "off" else f"{stored / raw:10.2f}"
        size = "" if name == "off" else f"{stored / 1024:9.1f}"
        print(f"{name:36s} {seconds * 1000:9.1f} {overhead:>9s} {size:>9s} {ratio:>10s}")


if __name__ == "__main__":
    main()
