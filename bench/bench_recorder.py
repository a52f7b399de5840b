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

It also prints how often training waited for a free slot ("waits"), and the writer process's own CPU time
per row for each compression (the real child process, its start-up taken out).

    python bench/bench_recorder.py                          # article schedule: Fashion-MNIST, batch 1024
    python bench/bench_recorder.py --dataset mnist-sample --batch-size 64 --steps 60 --every-n-steps 5  # quickstart
    python bench/bench_recorder.py --accelerator gpu        # on a CUDA machine (CUDA-graph probe pass)
    python bench/bench_recorder.py --writer-only            # the writer process's CPU per row, per compression
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
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
from actrec.probe import ProbeEngine, resolve_layers
from actrec.store import LayerSpec, ProbeSet, StoreWriter, WriterProcess, column_key
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


def _writer_process_ms_per_row(
    data: ImageDataModule, compression: str, rows: int = 256, rounds: int = 3
) -> tuple[float, float | None]:
    """CPU milliseconds the writer process spends per row, as the recorder runs it, and as it spends them when HDF5
    filters and writes every row itself (``ACTREC_DIRECT_CHUNKS=0``; ``None`` for lzf, which only HDF5 applies).

    Packed rows of the six-conv net (its six conv blocks, ten probes, float16, the default weights) go through a
    real :class:`WriterProcess` (blocks of 16 rows, Fletcher-32 checksums, the given compression); the child's CPU
    time comes from ``getrusage(RUSAGE_CHILDREN)`` once it has exited. Its start-up (interpreter, numpy, h5py, the
    store opened) is taken out by running it twice, with 16 rows and with ``16 + rows``, and taking the
    difference; the median over ``rounds``, the two ways of writing interleaved within each round.
    """
    model = ImageClassifier(init="article")
    images = torch.stack([data.val_dataset[index][0] for index in range(10)])
    layers = resolve_layers(model, None)
    engine = ProbeEngine(model, images, layers, record_params=True, params_cap=16_384, cuda_graph=False)
    specs = [LayerSpec.from_layout(layout, "tanh") for layout in engine.layouts.values()]
    fields = [(column_key(f.key), f.dtype, f.shape, f.offset) for f in engine.fields]
    packed = []
    generator = torch.Generator().manual_seed(0)
    for _ in range(32):  # rows that differ the way training makes them differ: the weights move a little
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.01)
        packed.append(engine.run(0.5, 0.5).numpy().copy())
    probes = ProbeSet(images=images.numpy(), labels=np.arange(10), indices=np.arange(10), class_names=[])

    def child_seconds(count: int, path: Path) -> float:
        StoreWriter.create(
            path, run_id="bench", config={}, probes=probes, layers=specs, num_classes=10,
            compression=compression, overwrite=True, background=False,
        ).close()  # fmt: skip
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        process = WriterProcess(path, fields, engine.nbytes, slots=2 * 16 + 4, flush_every=16)
        for row in range(count):
            process.submit(packed[row % len(packed)], row, 0, 0.0)
        process.close()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)

    ways = ("1", "0") if compression != "lzf" else ("1",)
    per_row: dict[str, list[float]] = {way: [] for way in ways}
    floor = []
    before = os.environ.get("ACTREC_DIRECT_CHUNKS")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for round_index in range(rounds):
                for way in ways if round_index % 2 == 0 else ways[::-1]:  # neither way always goes first
                    os.environ["ACTREC_DIRECT_CHUNKS"] = way  # read by the writer child at its start
                    short = child_seconds(16, Path(tmp) / "short.h5")
                    long = child_seconds(16 + rows, Path(tmp) / "long.h5")
                    per_row[way].append((long - short) / rows * 1000)
                floor.append(_file_write_ms_per_row(np.stack(packed[:16]).tobytes(), rows, Path(tmp) / "raw.bin"))
    finally:
        if before is None:
            os.environ.pop("ACTREC_DIRECT_CHUNKS", None)
        else:
            os.environ["ACTREC_DIRECT_CHUNKS"] = before
    _FLOOR_MS[compression] = statistics.median(floor)
    through_hdf5 = statistics.median(per_row["0"]) if "0" in per_row else None
    return statistics.median(per_row["1"]), through_hdf5


_FLOOR_MS: dict[str, float] = {}
"""The floor measured beside each compression's writer rounds: the same bytes written to a new file by hand."""


def _file_write_ms_per_row(block: bytes, rows: int, path: Path) -> float:
    """CPU milliseconds a row of plain ``os.write`` to a new file takes, 16 rows a call: what storing the rows
    costs before any HDF5: the kernel copying them into fresh page-cache pages."""
    start = time.process_time()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for _ in range(rows // 16):
            os.write(descriptor, block)
    finally:
        os.close(descriptor)
    return (time.process_time() - start) / (rows // 16 * 16) * 1000


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
    parser.add_argument("--writer-only", action="store_true", help="only time the writer process per row")
    args = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    print("$ python " + shlex.join(sys.argv))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, lightning {pl.__version__}, "
        f"{os.cpu_count()} CPUs; load average before {os.getloadavg()[0]:.2f} (1 min)"
    )
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
    # Uncompressed rows cost a tenth of compressed ones: 1024 of them keep the start-up's noise (+-20 ms of CPU,
    # taken out by difference) below the differences measured; 256 do for the compressed.
    writer_ms = {
        name: _writer_process_ms_per_row(data, name, rows=1024 if name == "none" else 256)
        for name in ("none", "lzf", "gzip")
    }
    if args.writer_only:
        _print_writer(writer_ms)
        return
    with tempfile.TemporaryDirectory() as tmp:
        _run({}, data, 3, Path(tmp) / "warmup", args.accelerator)
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
    _print_writer(writer_ms)


def _print_writer(writer_ms: dict[str, tuple[float, float | None]]) -> None:
    print(
        "\nthe writer process alone: CPU ms per row (its start-up taken out), blocks of 16 rows, Fletcher-32 on; "
        f"load average {os.getloadavg()[0]:.2f} (1 min)"
    )
    for name, (ms, through_hdf5) in writer_ms.items():
        beside = "" if through_hdf5 is None else f"  ({through_hdf5:.3f} ms with HDF5 filtering every chunk itself)"
        print(f"  {name:6s} {ms:6.3f} ms{beside}")
    floor = statistics.median(_FLOOR_MS.values())
    print(f"  floor  {floor:6.3f} ms  (os.write of the same uncompressed bytes to a new file, beside each round)")


if __name__ == "__main__":
    main()
