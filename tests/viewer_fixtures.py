"""Small real activation stores for the viewer tests, with values chosen so colours can be asserted."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from actrec.store import LayerSpec, ProbeSet, StepRecord, StoreWriter
from actrec.viewer import PALETTE

CLASS_NAMES = ["zero", "one", "two"]
NUM_PROBES = 3
LAYERS = [
    LayerSpec("net.conv1", (3, 8, 8), "Sequential", "tanh"),
    LayerSpec("net.conv2", (2, 4, 4), "Sequential", "symmetric"),
]
SYMMETRIC_MAX = 2.5
"""The largest |activation| of ``net.conv2`` over every step: its colour scale."""


def probe_set() -> ProbeSet:
    images = np.linspace(-0.5, 2.5, NUM_PROBES * 8 * 8, dtype=np.float32).reshape(NUM_PROBES, 1, 8, 8)
    return ProbeSet(images, np.arange(NUM_PROBES), np.arange(NUM_PROBES) * 10, CLASS_NAMES)


def exact_activations(step: int) -> dict[str, np.ndarray]:
    """Activations whose colours are known: per layer, channel 0 is 0, channel 1 is +max, channel 2 is -max.

    Probe 2 carries a step-dependent ramp, so consecutive frames differ in their tiles too.
    """
    conv1 = np.zeros((NUM_PROBES, 3, 8, 8), np.float32)
    conv1[:, 1] = 1.0
    conv1[:, 2] = -1.0
    conv1[2, 0] = np.tanh(np.linspace(-1, 1, 64).reshape(8, 8) * (step + 1) / 4)
    conv2 = np.zeros((NUM_PROBES, 2, 4, 4), np.float32)
    conv2[:, 0] = SYMMETRIC_MAX
    conv2[:, 1] = -SYMMETRIC_MAX
    conv2[2, 0] = SYMMETRIC_MAX * (step % 2)  # +max or 0
    return {"net.conv1": conv1, "net.conv2": conv2}


def predictions_at(step: int) -> np.ndarray:
    """Probe 0 always right; probe 1 right on even steps only; probe 2 always wrong (says 0)."""
    return np.array([0, 1 if step % 2 == 0 else 2, 0])


def logits_for(predictions: np.ndarray, num_classes: int = 3) -> np.ndarray:
    logits = np.zeros((len(predictions), num_classes), np.float32)
    logits[np.arange(len(predictions)), predictions] = 5.0
    return logits


def record(step: int, epoch: int | None = None) -> StepRecord:
    return StepRecord(
        global_step=step,
        epoch=step // 4 if epoch is None else epoch,
        batch_loss=float("nan") if step == 0 else 2.0 / (step + 1),
        batch_acc=float("nan") if step == 0 else min(1.0, 0.1 * step),
        logits=logits_for(predictions_at(step)),
        activations=exact_activations(step),
        wall_time=1_000_000.0 + step,
    )


def make_store(
    folder: Path,
    steps: list[int] | range = range(6),
    *,
    run_id: str = "viewer-test",
    record_fn: Callable[[int], StepRecord] = record,
    task: str | None = None,
    rows_per_chunk: int | None = 1,
) -> Path:
    """Write a finished store with one row per step into ``folder``; returns the store file.

    ``task`` is stored as the file's ``task`` attribute (``None``: none, as stores written before it existed).
    One step a chunk by default, so tests can damage a single step; ``rows_per_chunk=None`` chunks as the
    recorder's stores do (several steps a chunk).
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "activations.h5"
    writer = StoreWriter.create(
        path,
        run_id=run_id,
        config={"test": True},
        probes=probe_set(),
        layers=LAYERS,
        num_classes=3,
        background=False,
        task=task,
        rows_per_chunk=rows_per_chunk,
    )
    with writer:
        for step in steps:
            writer.append(record_fn(step))
        if len(steps):
            writer.append_scalar("val/loss", int(steps[-1]), 0.5)
            writer.append_scalar("val/acc", int(steps[-1]), 0.75)
    return path


def animation_frames(path: Path) -> list[np.ndarray]:
    """Every frame of an animation (animated PNG or GIF) as Pillow composes it, in RGB.

    An APNG's still picture, kept outside its animation (``actrec render`` makes it the last step), is
    Pillow's frame 0; it is left out, so the frames are the steps drawn, as in the GIF.
    """
    frames = []
    with Image.open(path) as image:
        first = 1 if image.info.get("default_image") else 0
        for index in range(first, image.n_frames):
            image.seek(index)
            frames.append(np.asarray(image.convert("RGB")))
    return frames


def animation_length(path: Path) -> int:
    """Frames of an animation's animation (an APNG's still picture not counted)."""
    with Image.open(path) as image:
        return image.n_frames - (1 if image.info.get("default_image") else 0)


_PALETTE_KEYS = PALETTE[:, 0].astype(np.int64) << 16 | PALETTE[:, 1].astype(np.int64) << 8 | PALETTE[:, 2]
_KEY_ORDER = np.argsort(_PALETTE_KEYS)


def rgb_to_indices(rgb: np.ndarray) -> np.ndarray:
    """Palette index of every pixel of an RGB image; fails if any pixel is not a palette colour."""
    rgb = np.asarray(rgb, dtype=np.int64)
    keys = rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]
    positions = np.searchsorted(_PALETTE_KEYS[_KEY_ORDER], keys).clip(0, len(PALETTE) - 1)
    found = _PALETTE_KEYS[_KEY_ORDER][positions] == keys
    assert found.all(), f"{(~found).sum()} pixels are not palette colours, e.g. {rgb[~found][:3].tolist()}"
    return _KEY_ORDER[positions].astype(np.uint8)


WRITER_SCRIPT = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests_dir!r})
from actrec.store import StoreWriter
import viewer_fixtures as fx

path = Path(sys.argv[1])
total = int(sys.argv[2])
writer = StoreWriter.create(path, run_id="live", config={{}}, probes=fx.probe_set(), layers=fx.LAYERS,
                            num_classes=3, background=False)
for step in range(total):
    writer.append(fx.record(step))
    writer.flush()
    print(step + 1, flush=True)  # rows on disk so far
    time.sleep(0.05)
writer.close()
"""
"""A writer process: creates a store, then appends and flushes one row every 50 ms, printing the count."""
