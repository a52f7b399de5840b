"""The first run of the recorder's GPU path, in one script: one verdict per line, under ten minutes on one GPU.

Each line starts with PASS, FAIL, SKIP (with the reason) or INFO (a measurement or a fact):

- versions, TF32 and ``cudnn.benchmark``;
- the engine adopts a CUDA graph on a CNN with BatchNorm and Dropout, and the default stream is current after;
- 5 SGD steps, the graph's replay bitwise equal to an eager pass after each;
- a forward with ``.item()`` falls back to eager, with the stream and the allocator as they were;
- an SWA-style BatchNorm buffer replacement is detected and the next pass reads the new buffer;
- the host ring: checksums over 50 puts of 200 MB, copy time and waits;
- a 50-step fit under ``torch.cuda.set_sync_debug_mode("warn")`` with no sync inside the recorder's hooks;
- the recorder's cost, off / graph / eager at batch 1024 and 64 (hook ms per step), and
  ``bench_recorder.py --accelerator gpu``;
- bf16-mixed: the probe pass's dtype and values match an autocast forward, and the graph is adopted.

On a machine without CUDA the CUDA-only lines say SKIP and why, and the rest run (small sizes), so the
tests run this script too. Exit code 1 when a line says FAIL.

    python bench/gpu_check.py
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from actrec.callbacks import ActivationRecorder
from actrec.probe import HostRing, ProbeEngine
from actrec.probe._graph import capture_failure

REPO = Path(__file__).resolve().parent.parent
CUDA = torch.cuda.is_available()
NO_CUDA = "no CUDA device here"
failures: list[str] = []


def say(status: str, name: str, detail: str) -> None:
    if status == "FAIL":
        failures.append(name)
    print(f"{status:4s}  {name}: {detail}", flush=True)


def check(name: str, cuda_only: bool = False, reason: str = NO_CUDA) -> Callable[[Callable[[], str]], None]:
    """Run a check now: its returned text is the PASS line; an AssertionError is a FAIL line."""

    def run(body: Callable[[], str]) -> None:
        if cuda_only and not CUDA:
            say("SKIP", name, reason)
            return
        start = time.perf_counter()
        try:
            detail = body()
        except AssertionError as error:
            say("FAIL", name, str(error) or "assertion failed")
        except Exception as error:  # a check that crashes is a failed check, and the next one still runs
            say("FAIL", name, f"{type(error).__name__}: {error}")
        else:
            say("PASS", name, f"{detail} ({time.perf_counter() - start:.1f} s)")

    return run


def cnn(device: torch.device) -> nn.Module:
    """A small CNN with BatchNorm and Dropout: what a graph could capture wrongly."""
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("block1", nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU()))
    model.add_module("block2", nn.Sequential(nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.BatchNorm2d(64), nn.ReLU()))
    model.add_module("drop", nn.Dropout(0.3))
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flat", nn.Flatten())
    model.add_module("head", nn.Linear(64, 10))
    return model.to(device)


LAYERS = ["block1", "block2", "head"]


def default_stream_is_current() -> bool:
    return torch.cuda.current_stream() == torch.cuda.default_stream()


class CNNModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = cnn(torch.device("cpu"))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        images, labels = batch
        logits = self(images)
        loss = nn.functional.cross_entropy(logits, labels)
        self.log("train/acc", (logits.argmax(-1) == labels).float().mean(), prog_bar=True)
        return {"loss": loss}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def loader(batch_size: int, steps: int) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size * steps, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (batch_size * steps,), generator=generator)
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size)


class TimedRecorder(ActivationRecorder):
    """The recorder, adding up its per-step hook's time and counting sync warnings raised inside its hooks."""

    def __init__(self, **kwargs) -> None:  # noqa: ANN003
        super().__init__(**kwargs)
        self.hook_seconds: list[float] = []
        self.syncs: list[str] = []

    def _hook(self, hook: Callable[..., None], *args: object) -> float:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            start = time.perf_counter()
            hook(*args)
            elapsed = time.perf_counter() - start
        self.syncs += [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
        return elapsed

    def on_train_batch_end(self, *args: object) -> None:
        self.hook_seconds.append(self._hook(super().on_train_batch_end, *args))

    def on_validation_end(self, *args: object) -> None:
        self._hook(super().on_validation_end, *args)


def fit(root: Path, batch_size: int, steps: int, recorder: ActivationRecorder | None) -> float:
    """Seconds per step of a real fit on the GPU (on the CPU without one), the first step left out."""
    marks: list[float] = []

    class Clock(pl.Callback):
        def on_train_batch_end(self, *args: object) -> None:
            if CUDA:
                torch.cuda.synchronize()
            marks.append(time.perf_counter())

    trainer = pl.Trainer(
        default_root_dir=str(root),
        accelerator="gpu" if CUDA else "cpu",
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Clock(), *([recorder] if recorder is not None else [])],
    )
    trainer.fit(CNNModule(), loader(batch_size, steps))
    return (marks[-1] - marks[0]) / (len(marks) - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ring-mb", type=int, default=200, help="size of one ring put on CUDA, in MB")
    args = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*(does not have many workers|log_every_n_steps|TF32).*")
    device = torch.device("cuda" if CUDA else "cpu")

    say(
        "INFO",
        "versions",
        f"torch {torch.__version__}, lightning {pl.__version__}, CUDA {torch.version.cuda}, "
        f"cuDNN {torch.backends.cudnn.version()}, python {sys.version.split()[0]}",
    )
    say("INFO", "device", torch.cuda.get_device_name(0) if CUDA else "CPU only")
    say(
        "INFO",
        "TF32 and cudnn.benchmark",
        f"matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}, cudnn.allow_tf32="
        f"{torch.backends.cudnn.allow_tf32}, float32_matmul_precision={torch.get_float32_matmul_precision()!r}, "
        f"cudnn.benchmark={torch.backends.cudnn.benchmark}",
    )
    images = torch.rand(16, 3, 32, 32)

    @check("graph adopted on a CNN with BatchNorm and Dropout", cuda_only=True)
    def _() -> str:
        engine = ProbeEngine(cnn(device), images, LAYERS, dtype="float32")
        assert engine.graph_note == "CUDA graph", f"probe pass: {engine.graph_note}"
        assert default_stream_is_current(), "the capture's side stream is still current"
        return "probe pass is a CUDA graph; the default stream is current"

    @check("graph replay bitwise equal to eager after each of 5 SGD steps", cuda_only=True)
    def _() -> str:
        model = cnn(device)
        graph = ProbeEngine(model, images, LAYERS, dtype="float32")
        eager = ProbeEngine(model, images, LAYERS, dtype="float32", cuda_graph=False)
        assert graph.graph_note == "CUDA graph", graph.graph_note
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        batch = torch.rand(64, 3, 32, 32, device=device)
        labels = torch.randint(0, 10, (64,), device=device)
        for step in range(5):
            model.train()
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(batch), labels).backward()
            optimizer.step()
            replayed = graph.run().clone()
            assert torch.equal(replayed, eager.run()), f"step {step + 1}: replay differs from eager"
        return "5 of 5 steps equal"

    @check("a forward with .item() falls back to eager, stream and allocator restored", cuda_only=True)
    def _() -> str:
        class Syncs(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = cnn(device)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                scale = 1.0 if x.abs().max().item() > 0 else 2.0  # a host sync
                return self.inner(x) * scale

        allocated = torch.cuda.memory_allocated()
        engine = ProbeEngine(Syncs(), images, ["inner.block1"], dtype="float32")
        assert engine.graph_note.startswith("eager"), engine.graph_note
        assert default_stream_is_current(), "the side stream is still current"
        assert capture_failure() is None, f"capture turned off: {capture_failure()}"
        assert torch.cuda.get_sync_debug_mode() == 0, "sync debug mode left on"
        later = ProbeEngine(cnn(device), images, LAYERS, dtype="float32")
        assert later.graph_note == "CUDA graph", f"a later capture: {later.graph_note}"
        grown = (torch.cuda.memory_allocated() - allocated) / 2**20
        return f"{engine.graph_note}; a later engine still captures; allocator +{grown:.1f} MB"

    @check("SWA-style BatchNorm buffer replacement detected")
    def _() -> str:
        model = cnn(device)
        engine = ProbeEngine(model, images, LAYERS, dtype="float32")
        engine.run()
        batch_norm = model.block2[1]
        batch_norm.running_mean = batch_norm.running_mean + 1.0  # a new tensor, as Lightning's SWA makes
        after = engine.run().clone()
        fresh = ProbeEngine(model, images, LAYERS, dtype="float32", cuda_graph=False)
        assert engine.model_changes == 1, f"changes seen: {engine.model_changes}"
        assert torch.equal(after, fresh.run()), "the pass after the change did not read the new buffer"
        return f"detected; next pass reads the new buffer ({engine.graph_note})"

    @check("host ring: checksums over 50 puts")
    def _() -> str:
        nbytes = args.ring_mb * 2**20 if CUDA else 2 * 2**20
        puts = 50
        got: dict[int, int] = {}

        def consume(host: torch.Tensor, step: int) -> None:
            got[step] = int(host.numpy().view(np.int32).sum(dtype=np.int64))

        ring = HostRing(nbytes, 3, device, consume)
        packed = torch.empty(nbytes, dtype=torch.uint8, device=device)
        expected = []
        put_seconds = 0.0
        start = time.perf_counter()
        for step in range(puts):
            packed.random_(0, 256)
            expected.append(packed.view(torch.int32).sum(dtype=torch.int64))  # stays on the device
            begin = time.perf_counter()
            assert ring.put(packed, step)
            put_seconds += time.perf_counter() - begin
        ring.drain()
        elapsed = time.perf_counter() - start
        ring.close()
        assert ring.error is None, f"consumer failed: {ring.error}"
        want = [int(value) for value in torch.stack(expected).cpu()]
        assert [got[step] for step in range(puts)] == want, "a slot's bytes differ from what was put"
        how = "staged D2D + copy stream" if CUDA else "CPU copies (synchronous)"
        return (
            f"{puts} x {nbytes / 2**20:.0f} MB, {how}: {puts * nbytes / 2**20 / elapsed:.0f} MB/s end to end, "
            f"put {put_seconds / puts * 1000:.2f} ms each on the training thread, {ring.waits} waits "
            f"({ring.wait_seconds:.2f} s), slot {ring.slot_bytes} bytes"
        )

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)

        @check(
            "50-step fit under set_sync_debug_mode('warn'): no sync in the recorder's hooks",
            cuda_only=True,
            reason=f"{NO_CUDA}; on a CPU tests/test_gpu_path.py counts .item() calls instead",
        )
        def _() -> str:
            layers = [f"net.{layer}" for layer in LAYERS]
            recorder = TimedRecorder(path=str(root / "sync.h5"), layers=layers, probe_images=images)
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fit(root / "sync", 64, 50, recorder)
            finally:
                torch.cuda.set_sync_debug_mode(0)
            assert recorder.syncs == [], f"{len(recorder.syncs)} syncs, first: {recorder.syncs[0]}"
            assert recorder.probe_pass == "CUDA graph", recorder.probe_pass
            return f"0 syncs in {len(recorder.hook_seconds)} recorded steps; probe pass: {recorder.probe_pass}"

        @check("recorder cost: off / graph / eager at batch 1024 and 64", cuda_only=True)
        def _() -> str:
            rows = []
            for batch_size in (1024, 64):
                off = fit(root / f"off{batch_size}", batch_size, 30, None)
                cells = [f"batch {batch_size}: off {off * 1000:.2f} ms/step"]
                for name, graphs in (("graph", True), ("eager", False)):
                    recorder = TimedRecorder(
                        path=str(root / f"{name}{batch_size}.h5"), cuda_graphs=graphs, probe_images=images
                    )
                    wall = fit(root / f"{name}{batch_size}", batch_size, 30, recorder)
                    hooks = statistics.median(recorder.hook_seconds[1:]) * 1000
                    cells.append(f"{name} {wall * 1000:.2f} ms/step, hook {hooks:.2f} ms ({recorder.probe_pass})")
                rows.append("; ".join(cells))
            return " | ".join(rows)

        @check("bench_recorder.py --accelerator gpu", cuda_only=True)
        def _() -> str:
            command = [
                sys.executable,
                str(REPO / "bench" / "bench_recorder.py"),
                "--accelerator",
                "gpu",
                "--dataset",
                "mnist-sample",
                "--steps",
                "20",
                "--rounds",
                "1",
                "--variants",
                "on (default: process, none)",
            ]
            result = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=REPO)
            assert result.returncode == 0, result.stderr.strip().splitlines()[-1] if result.stderr else "failed"
            table = [line for line in result.stdout.splitlines() if line.strip()][-3:]
            return " | ".join(" ".join(line.split()) for line in table)

        @check("bf16-mixed: probe dtype and values as autocast computes them")
        def _() -> str:
            model = cnn(device)

            def autocast() -> torch.autocast:
                return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)

            engine = ProbeEngine(model, images, LAYERS, dtype="float16", forward_context=autocast)
            views = engine.host_views(engine.run().cpu())
            model.eval()
            with torch.no_grad(), autocast():
                expected = model.block1(images.to(device))
            assert expected.dtype == torch.bfloat16, expected.dtype
            assert engine.dtype == "float32", f"stored as {engine.dtype}"
            assert torch.equal(views["block1/activations"], expected.float().cpu()), "values differ from autocast"
            if CUDA:
                assert engine.graph_note == "CUDA graph", engine.graph_note
            return f"layers compute in bfloat16, stored as {engine.dtype}; probe pass: {engine.graph_note}"

    threads = [t.name for t in threading.enumerate() if t.name == "actrec-ring"]
    if threads:
        say("FAIL", "ring threads", f"{len(threads)} left running")
    print(f"{'FAILED: ' + ', '.join(failures) if failures else 'all checks passed'}", flush=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
