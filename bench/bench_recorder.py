"""What recording activations at every step costs, as a share of training wall time.

Runs the same short training (real ``pl.Trainer``, ``ImageClassifier``, ``ImageDataModule``, TensorBoard
logging on, as ``actrec train`` does) with the recorder off and in several configurations, interleaved
round by round so that machine noise hits every variant alike. Three views of the cost, per step:

- wall: training wall time against "off" (the number that matters, and the noisiest: on a shared
  2-core VM single runs vary by +-20%, so read it as a median over rounds);
- hooks: time the training thread spends inside the recorder's hooks (probe pass, copies, hand-off),
  as a share of the step: what recording adds to the critical path, measured precisely;
- CPU: CPU seconds of the training process against "off" (a writer process's own CPU is not in it; the
  writer-alone timing below shows that work);

It also reports the store's bytes per step against the raw float16 size of the activations.

It also prints how often training waited for a free ring slot ("waits"), and times the store writer
alone for each compression, with and without the Fletcher-32 checksums.

    python bench/bench_recorder.py                          # article schedule: Fashion-MNIST, batch 1024
    python bench/bench_recorder.py --dataset mnist-sample --batch-size 64 --steps 60 --every-n-steps 5  # quickstart
    python bench/bench_recorder.py --accelerator gpu        # on a CUDA machine (CUDA-graph probe pass)
"""

from __future__ import annotations

import argparse
import logging
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytorch_lightning as pl
import torch

from actrec.callbacks import ActivationRecorder
from actrec.store import LayerSpec, StepRecord, StoreReader, StoreWriter
from actrec.trainer import ImageClassifier, ImageDataModule

VARIANTS: dict[str, dict | None] = {
    "off": None,
    "on (default: process, none)": {},
    "process, lzf": {"compression": "lzf"},
    "process, gzip-1": {"compression": "gzip"},
    "thread, none": {"writer_mode": "thread"},
    "thread, lzf": {"writer_mode": "thread", "compression": "lzf"},
    "sync, none": {"background_writes": False},
}


class _TimedRecorder(ActivationRecorder):
    """The recorder, with the time its per-step hook takes on the training thread added up.

    (Opening the store, starting the writer and recording step 0 happen once, in on_fit_start and
    on_train_start; they are counted in none of the columns, see ``_Clock``.)
    """

    hook_seconds = 0.0
    hook_cpu_seconds = 0.0

    def __init__(self, writer_mode: str = "process", **kwargs) -> None:  # noqa: ANN003
        super().__init__(**kwargs)
        self._writer_mode = writer_mode

    def on_train_batch_end(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        start, cpu_start = time.perf_counter(), time.thread_time()
        super().on_train_batch_end(*args, **kwargs)
        self.hook_seconds += time.perf_counter() - start
        self.hook_cpu_seconds += time.thread_time() - cpu_start


class _Clock(pl.Callback):
    """Wall time from the end of the first optimizer step (after the last callback's hook) to the last
    callback's on_train_end: steady state, final flush included, one-time start-up (opening the store,
    starting a writer process, step 0) left out for every variant alike."""

    def __init__(self, edge: str, times: dict[str, float]) -> None:
        self.edge, self.times = edge, times

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if self.edge == "end" and trainer.global_step == 1 and "start" not in self.times:
            self.times["start"] = time.perf_counter()
            self.times["cpu_start"] = time.process_time()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.edge == "end":
            self.times["end"] = time.perf_counter()
            self.times["cpu_end"] = time.process_time()


def _run(
    variant: dict | None, data: ImageDataModule, steps: int, root: Path, accelerator: str = "cpu"
) -> tuple[dict[str, float], Path | None]:
    pl.seed_everything(0, verbose=False)
    times: dict[str, float] = {}
    recorder = _TimedRecorder(path=str(root / "activations.h5"), **variant) if variant is not None else None
    callbacks = [_Clock("start", times), *([recorder] if recorder else []), _Clock("end", times)]
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
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
    wall = times["end"] - times["start"]
    measured = {
        "wall": wall / (steps - 1),
        "cpu": (times["cpu_end"] - times["cpu_start"]) / (steps - 1),
        "hooks": (recorder.hook_seconds / wall) if recorder else 0.0,
        "hook_ms": recorder.hook_seconds / steps * 1000 if recorder else 0.0,
        "hook_cpu_ms": recorder.hook_cpu_seconds / steps * 1000 if recorder else 0.0,
        "waits": recorder.ring_waits if recorder else 0,
    }
    if recorder is not None and accelerator == "gpu":
        print(f"    probe pass: {recorder.probe_pass}", file=sys.stderr)
    return measured, (recorder.store_path if recorder else None)


def _writer_ms_per_step(path: Path, compression: str, fletcher32: bool = True, steps: int = 60) -> float:
    """Time the store writer alone (synchronously) re-appending a recorded run's rows."""
    with StoreReader(path) as store:
        specs = [
            LayerSpec(
                name,
                store.layer(name).sample_shape,
                "",
                store.layer(name).scale_kind,
                params={p: v.shape[1:] for p, v in store.params(name, slice(0, 1)).items()},
            )
            for name in store.layer_names
        ]
        rows = min(steps, store.num_steps)
        records = [
            StepRecord(
                global_step=row,
                epoch=0,
                batch_loss=0.0,
                batch_acc=0.0,
                logits=store.logits(np.array([row]))[0],
                activations={name: store.activations(name, np.array([row]))[0] for name in store.layer_names},
                params={
                    name: {p: v[0] for p, v in store.params(name, np.array([row])).items()}
                    for name in store.layer_names
                },
            )
            for row in range(rows)
        ]
        probes, num_classes = store.probes, store.logits(slice(0, 1)).shape[-1]
    from actrec.store import writer as writer_module

    writer_module._FLETCHER32 = fletcher32
    with tempfile.TemporaryDirectory() as tmp:
        writer = StoreWriter.create(
            Path(tmp) / "a.h5",
            run_id="bench",
            config={},
            probes=probes,
            layers=specs,
            num_classes=num_classes,
            compression=compression,
            background=False,
        )
        start = time.perf_counter()
        for record in records:
            writer.append(record)
        seconds = time.perf_counter() - start
        writer.close()
    writer_module._FLETCHER32 = True
    return seconds / rows * 1000


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
    parser.add_argument("--every-n-steps", type=int, default=1, help="the recorder's every_n_steps")
    parser.add_argument("--accelerator", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--variants", default="", help="semicolon-separated subset of the variant names")
    args = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    print("$ python " + shlex.join(sys.argv))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, lightning {pl.__version__}")
    if args.accelerator == "gpu":
        print(f"device: {torch.cuda.get_device_name(0)}")
    chosen = [name.strip() for name in args.variants.split(";") if name.strip()]
    for name in list(VARIANTS):
        if chosen and name != "off" and name not in chosen:
            del VARIANTS[name]

    data = ImageDataModule(dataset=args.dataset, batch_size=args.batch_size)
    data.prepare_data()
    data.setup("fit")
    results: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    sizes: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        _, sample_store = _run({}, data, 3, Path(tmp) / "warmup", args.accelerator)
        writer_ms = {
            (name, checksums): _writer_ms_per_step(sample_store, name, checksums)
            for name in ("none", "lzf", "gzip")
            for checksums in (True, False)
        }
        for round_index in range(args.rounds):
            for index, (name, variant) in enumerate(VARIANTS.items()):
                root = Path(tmp) / f"round{round_index}-variant{index}"
                if variant is not None:
                    variant = {**variant, "every_n_steps": args.every_n_steps}
                measured, store = _run(variant, data, args.steps, root, args.accelerator)
                results[name].append(measured)
                if store is not None:
                    sizes[name] = _bytes_per_step(store)
                print(
                    f"  round {round_index + 1}: {name:36s} {measured['wall'] * 1000:8.1f} ms/step wall, "
                    f"{measured['cpu'] * 1000:8.1f} ms/step CPU, {measured['waits']} waits",
                    file=sys.stderr,
                    flush=True,
                )

    def median(name: str, key: str) -> float:
        return statistics.median(run[key] for run in results[name])

    def median_ratio(name: str, key: str) -> float:
        # Each round's variant against the same round's "off": pairs share the machine's mood.
        return statistics.median(a[key] / b[key] for a, b in zip(results[name], results["off"], strict=True))

    print(
        f"\n{args.dataset}, batch {args.batch_size}, recording every {args.every_n_steps} step(s), "
        f"{args.steps} steps x {args.rounds} rounds (medians)"
    )
    header = (
        f"{'variant':36s} {'ms/step':>8s} {'wall':>8s} {'hooks':>7s} {'hook ms':>8s} {'hookCPU':>8s} {'CPU':>8s} "
        f"{'KB/step':>8s} {'/raw f16':>8s} "
        f"{'waits':>6s}"
    )
    print(header)
    for name in VARIANTS:
        stored, raw = sizes.get(name, (float("nan"), float("nan")))
        if name == "off":
            print(f"{name:36s} {median(name, 'wall') * 1000:8.1f}")
            continue
        print(
            f"{name:36s} {median(name, 'wall') * 1000:8.1f} {(median_ratio(name, 'wall') - 1) * 100:+7.2f}% "
            f"{median(name, 'hooks') * 100:6.2f}% {median(name, 'hook_ms'):8.2f} {median(name, 'hook_cpu_ms'):8.2f} "
            f"{(median_ratio(name, 'cpu') - 1) * 100:+7.2f}% "
            f"{stored / 1024:8.1f} {stored / raw:8.2f} {max(run['waits'] for run in results[name]):6d}"
        )
    print("\nstore writer alone (the writer process's work), ms per recorded step, blocks of 16 rows (flush_every):")
    for (name, checksums), ms in writer_ms.items():
        print(f"  {name:6s} {'fletcher32' if checksums else 'no checksums':14s} {ms:6.2f} ms")


if __name__ == "__main__":
    main()
