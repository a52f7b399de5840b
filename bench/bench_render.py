"""How fast ``actrec render`` draws a run, against the matplotlib approach of the source tutorials.

A: build a synthetic store shaped like the article's run (295 recorded steps; six tanh conv layers
of shapes (4,28,28), (4,28,28), (8,14,14), (8,14,14), (16,7,7), (16,7,7); 10 probes; smooth
tanh activations that sharpen and drift as "training" goes on), then time ``render_run`` end to
end (every layer's GIF and contact sheet, plus the curves PNG), with worker processes (the
``actrec render`` default) and in one process. Target: at most 10 s on 2 CPU cores.

B: per-frame time for a 10-probe x 8-channel grid (the (8,14,14) layer): ours (draw the frame, then
encode it as PNG, or append it to a GIF) against the tutorials' matplotlib loop (a new figure, one
``imshow`` per tile, ``savefig`` to PNG, close), alternating frame by frame in one process so both
see the same machine. Target: ours at least 100x faster. Needs matplotlib, which is not an actrec
dependency: without it that part is skipped, saying so.

C: the size of each layer's GIF.

D (with ``--baseline-python PY``): the same render by another checkout's interpreter (e.g. a script that
runs python with an older tree on ``PYTHONPATH``) and by this one, alternating in child processes so both
see the same load; reports wall and CPU seconds, their ratios, and whether every decoded GIF frame and
every PNG is pixel-identical.

    python bench/bench_render.py
    python bench/bench_render.py --baseline-python /tmp/old-python --rounds 3
"""

from __future__ import annotations

import argparse
import io
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from actrec.store import LayerSpec, ProbeSet, StepRecord, StoreReader, StoreWriter
from actrec.viewer import FrameLayout, GifWriter, encode_png, frame_title, render_run

ARTICLE_SHAPES = [(4, 28, 28), (4, 28, 28), (8, 14, 14), (8, 14, 14), (16, 7, 7), (16, 7, 7)]
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
_TARGET_SECONDS = 10.0
_TARGET_RATIO = 100.0


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=295, help="recorded steps in the synthetic store")
    parser.add_argument("--repeats", type=int, default=2, help="timed renders per setting (best is reported)")
    parser.add_argument("--mpl-frames", type=int, default=5, help="frames drawn by each side in part B")
    parser.add_argument("--keep", type=Path, help="also copy the renders here, to look at them")
    parser.add_argument("--baseline-python", help="an interpreter that imports the baseline actrec (part D)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds in part D")
    parser.add_argument("--jobs", type=int, default=2, help="render worker processes in part D")
    parser.add_argument("--only-d", action="store_true", help="run part D only (needs --baseline-python)")
    args = parser.parse_args()
    if args.steps < 2 or args.repeats < 1 or args.mpl_frames < 1:
        parser.error("--steps must be at least 2, --repeats and --mpl-frames at least 1.")
    if args.only_d and not args.baseline_python:
        parser.error("--only-d needs --baseline-python.")
    return args


def _smooth_fields(rng: np.random.Generator, shape: tuple[int, ...], width: float) -> np.ndarray:
    """Unit-variance random fields, smoothed over ``width`` pixels (Gaussian low-pass by FFT)."""
    noise = rng.normal(size=shape)
    height, breadth = shape[-2:]
    frequency_y, frequency_x = np.fft.fftfreq(height)[:, None], np.fft.fftfreq(breadth)[None, :]
    kernel = np.exp(-2 * (np.pi * width) ** 2 * (frequency_y**2 + frequency_x**2))
    fields = np.real(np.fft.ifft2(np.fft.fft2(noise) * kernel))
    return fields / fields.std(axis=(-2, -1), keepdims=True)


def build_article_store(path: Path, steps: int, seed: int = 0) -> None:
    """A store shaped like the article's run, with tanh-like activations that evolve over training."""
    rng = np.random.default_rng(seed)
    num_probes = len(FASHION_CLASSES)
    rows, cols = np.mgrid[0:28, 0:28]
    blobs = [np.exp(-(((rows - 14) / (3 + p % 4)) ** 2) - ((cols - 14) / (5 + p % 3)) ** 2) for p in range(num_probes)]
    images = (np.stack(blobs)[:, None] * 2.8 - 0.42).astype(np.float32)  # about MNIST-normalised range
    probes = ProbeSet(images, np.arange(num_probes), np.arange(num_probes) * 1000, FASHION_CLASSES)
    names = [f"net.conv{index + 1}" for index in range(len(ARTICLE_SHAPES))]
    layers = [LayerSpec(name, shape, "Sequential", "tanh") for name, shape in zip(names, ARTICLE_SHAPES, strict=True)]
    start = [_smooth_fields(rng, (num_probes, *shape), shape[1] / 10) for shape in ARTICLE_SHAPES]
    learned = [_smooth_fields(rng, (num_probes, *shape), shape[1] / 10) for shape in ARTICLE_SHAPES]
    steps_per_epoch = 59  # 60,000 images at batch 1024
    with StoreWriter.create(
        path, run_id="bench-article", config={"synthetic": True}, probes=probes, layers=layers,
        num_classes=10, background=False, flush_every=64,
    ) as writer:  # fmt: skip
        for step in range(steps):
            progress = 1 - np.exp(-step / 70)  # fast early change, slow late change, as in training
            gain = 0.4 + 2.0 * progress
            activations = {}
            for name, first, target in zip(names, start, learned, strict=True):
                jitter = 0.08 * (1 - progress) * rng.normal(size=first.shape)  # SGD noise, fading
                activations[name] = np.tanh(gain * ((1 - progress) * first + progress * target + jitter))
            logits = rng.normal(size=(num_probes, 10)).astype(np.float32)
            logits[np.arange(num_probes), np.arange(num_probes)] += 4 * progress
            writer.append(
                StepRecord(
                    global_step=step,
                    epoch=step // steps_per_epoch,
                    batch_loss=float("nan") if step == 0 else float(0.35 + 2.0 * (1 - progress) + rng.normal(0, 0.05)),
                    batch_acc=float("nan") if step == 0 else float(0.9 * progress + rng.normal(0, 0.02)),
                    logits=logits,
                    activations={name: value.astype(np.float16) for name, value in activations.items()},
                    wall_time=1.7e9 + step,
                )
            )
            if step and step % steps_per_epoch == 0:
                writer.append_scalar("val/loss", step, float(0.4 + 1.5 * (1 - progress)))
                writer.append_scalar("val/acc", step, float(0.88 * progress))


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the render's worker processes)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def _time_renders(run: Path, out: Path, jobs: int, repeats: int) -> tuple[float, float, list[Path]]:
    """Best wall time over ``repeats`` renders, the CPU seconds of that render, and its files."""
    best, best_cpu, files = float("inf"), 0.0, []
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), _cpu_seconds()
        result = render_run(run, out_dir=out, jobs=jobs, progress=False)
        elapsed = time.perf_counter() - started
        if elapsed < best:
            best, best_cpu = elapsed, _cpu_seconds() - cpu_started
        files = list(result.files)
    return best, best_cpu, files


def _matplotlib_frame(activations: np.ndarray, plt: object) -> bytes:
    """The source tutorials' way: a new figure, one imshow per tile, savefig, close."""
    channels, probes = activations.shape[1], activations.shape[0]
    figure, axes = plt.subplots(channels, probes, figsize=(probes, channels))
    for channel in range(channels):
        for probe in range(probes):
            axes[channel, probe].imshow(activations[probe, channel], cmap="bwr", vmin=-1, vmax=1)
            axes[channel, probe].axis("off")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def _compare_per_frame(run: Path, frames: int) -> dict[str, float] | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    with StoreReader(run) as store:
        store.refresh()
        layer = "net.conv3"  # 8 channels x 10 probes
        activations = store.activations(layer, slice(0, frames))
        probes = store.probes
        predictions = store.logits(slice(0, frames)).argmax(axis=-1)
    layout = FrameLayout(
        activations.shape[2:], num_probes=activations.shape[1], scale=1.0, probe_images=probes.images,
        labels=probes.labels, class_names=probes.class_names, longest_title=frame_title(layer, 999, 9),
    )  # fmt: skip
    gif = GifWriter(io.BytesIO())
    _matplotlib_frame(activations[0], plt)  # warm up fonts and caches on both sides
    encode_png(layout.frame(activations[0], title="warm-up"))
    ours_png, ours_gif, theirs = [], [], []
    inner = 20  # ours is too quick to time once
    for index in range(frames):  # alternate: ours, matplotlib, ours, matplotlib, ...
        title = frame_title(layer, index, 0)
        started = time.perf_counter()
        for _ in range(inner):
            encode_png(layout.frame(activations[index], title=title, predictions=predictions[index]))
        ours_png.append((time.perf_counter() - started) / inner)
        started = time.perf_counter()
        for _ in range(inner):
            gif.append(layout.frame(activations[index], title=title, predictions=predictions[index]))
        ours_gif.append((time.perf_counter() - started) / inner)
        started = time.perf_counter()
        _matplotlib_frame(activations[index], plt)
        theirs.append(time.perf_counter() - started)
    return {
        "ours_png": statistics.median(ours_png),
        "ours_gif": statistics.median(ours_gif),
        "matplotlib": statistics.median(theirs),
        "matplotlib_version": matplotlib.__version__,
    }


_CHILD = """
import os, sys, time
from actrec.viewer import render_run
if __name__ == "__main__":
    started = time.perf_counter()
    render_run(sys.argv[1], out_dir=sys.argv[2], jobs=int(sys.argv[3]), progress=False)
    wall = time.perf_counter() - started
    t = os.times()
    print(wall, t.user + t.system + t.children_user + t.children_system)
"""


def _child_render(python: list[str], run: Path, out: Path, jobs: int) -> tuple[float, float]:
    """Wall and CPU seconds of one render in a child process (CPU includes its workers and imports)."""
    script = out.parent / "bench_child.py"
    script.write_text(_CHILD)
    done = subprocess.run([*python, str(script), str(run), str(out), str(jobs)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the render failed:\n{done.stderr}")
    wall, cpu = map(float, done.stdout.split()[-2:])
    return wall, cpu


def _identical_renders(first: Path, second: Path) -> tuple[int, list[str]]:
    """Frames compared, and the files whose decoded pixels differ."""
    compared, different = 0, []
    for path in sorted(first.iterdir()):
        other = second / path.name
        if path.suffix not in (".gif", ".png"):
            continue
        with Image.open(path) as mine, Image.open(other) as theirs:
            frames = getattr(mine, "n_frames", 1)
            if frames != getattr(theirs, "n_frames", 1):
                different.append(path.name)
                continue
            for index in range(frames):
                mine.seek(index)
                theirs.seek(index)
                compared += 1
                if not np.array_equal(np.asarray(mine.convert("RGB")), np.asarray(theirs.convert("RGB"))):
                    different.append(f"{path.name} frame {index}")
                    break
    return compared, different


def _before_after(run: Path, baseline: str, rounds: int, jobs: int) -> None:
    print(f"D. baseline ({baseline}) against this checkout, {jobs} render workers, {rounds} alternating rounds")
    sides = {"baseline": shlex.split(baseline), "this": [sys.executable]}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    loads = []
    for _ in range(rounds):
        for name, python in sides.items():
            times[name].append(_child_render(python, run, run / f"renders-{name}", jobs))
            loads.append(os.getloadavg()[0])
    print(f"   {'side':<10}{'wall s (median)':>16}{'CPU s (median)':>16}{'walls':>28}")
    medians = {}
    for name, samples in times.items():
        wall, cpu = statistics.median(w for w, _ in samples), statistics.median(c for _, c in samples)
        medians[name] = (wall, cpu)
        walls = " ".join(f"{w:.2f}" for w, _ in samples)
        print(f"   {name:<10}{wall:>16.2f}{cpu:>16.2f}{walls:>28}")
    (old_wall, old_cpu), (new_wall, new_cpu) = medians["baseline"], medians["this"]
    print(f"   this / baseline: wall {new_wall / old_wall:.2f}x, CPU {new_cpu / old_cpu:.2f}x; "
          f"load average during: {min(loads):.1f} to {max(loads):.1f} on {available_cpus()} CPUs")  # fmt: skip
    compared, different = _identical_renders(run / "renders-baseline", run / "renders-this")
    sizes = [sum(p.stat().st_size for p in (run / f"renders-{n}").glob("*.gif")) / 1e6 for n in sides]
    print(f"   GIF bytes: baseline {sizes[0]:.1f} MB, this {sizes[1]:.1f} MB")
    verdict = "pixel-identical" if not different else "DIFFERENT: " + ", ".join(different[:8])
    print(f"   {compared} decoded GIF frames, sheets and curves compared: {verdict}")
    for sheet in sorted((run / "renders-this").glob("*.sheet.png")):
        with Image.open(run / "renders-baseline" / sheet.name) as old, Image.open(sheet) as new:
            if old.size != new.size:
                print(
                    f"   {sheet.name}: {old.size[0]}x{old.size[1]} -> {new.size[0]}x{new.size[1]} (a different layout)"
                )


def main() -> None:
    args = _parse_args()
    print("$ " + shlex.join([Path(sys.executable).name, *sys.argv]))
    print(f"CPUs available: {available_cpus()} (os.cpu_count {os.cpu_count()}); load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder) / "run"
        run.mkdir()
        started = time.perf_counter()
        build_article_store(run / "activations.h5", args.steps)
        print(
            f"built a {args.steps}-step article-shaped store in {time.perf_counter() - started:.1f} s (not timed below)"
        )

        if args.only_d:
            _before_after(run, args.baseline_python, args.rounds, args.jobs)
            return
        jobs_auto = min(len(ARTICLE_SHAPES), available_cpus())
        parallel, parallel_cpu, files = _time_renders(run, run / "renders", jobs_auto, args.repeats)
        serial, serial_cpu, _ = _time_renders(run, run / "renders-serial", 1, args.repeats)
        frames = args.steps * len(ARTICLE_SHAPES)
        print()
        print("A. render_run: 6 GIFs + 6 contact sheets + curves, end to end (best of", args.repeats, "runs)")
        print(f"   {'setting':<22}{'wall s':>8}{'CPU s':>8}{'ms/frame':>10}   target <= {_TARGET_SECONDS:g} s wall")
        for label, wall, cpu in (
            (f"{jobs_auto} worker processes", parallel, parallel_cpu),  # what `actrec render` does here
            ("1 process", serial, serial_cpu),
        ):
            verdict = "meets" if wall <= _TARGET_SECONDS else "MISSES"
            print(f"   {label:<22}{wall:>8.2f}{cpu:>8.2f}{1000 * wall / frames:>10.2f}   {verdict}")
        print(f"   load average after: {os.getloadavg()[0]:.2f} (other processes on the machine slow both settings)")

        print()
        comparison = _compare_per_frame(run, args.mpl_frames)
        if comparison is None:
            print("B. skipped: matplotlib is not installed (it is not an actrec dependency); pip install matplotlib")
        else:
            gif_ratio = comparison["matplotlib"] / comparison["ours_gif"]
            png_ratio = comparison["matplotlib"] / comparison["ours_png"]
            print(f"B. one 10-probe x 8-channel frame, median of {args.mpl_frames} alternating frames")
            print(f"   {'method':<50}{'ms/frame':>10}{'matplotlib / this':>20}")
            rows = [
                ("ours: draw + append to GIF (what render does)", comparison["ours_gif"], f"{gif_ratio:.0f}x"),
                ("ours: draw + encode PNG (zlib level 6)", comparison["ours_png"], f"{png_ratio:.0f}x"),
                (
                    f"matplotlib {comparison['matplotlib_version']}: imshow per tile + savefig",
                    comparison["matplotlib"],
                    "1x",
                ),
            ]
            for label, seconds, ratio in rows:
                print(f"   {label:<50}{1000 * seconds:>10.2f}{ratio:>20}")
            verdict = "meets" if gif_ratio >= _TARGET_RATIO else "MISSES"
            print(f"   per animation frame: {gif_ratio:.0f}x faster; target >= {_TARGET_RATIO:g}x: {verdict}")

        print()
        print("C. GIF size per layer")
        print(f"   {'layer':<12}{'shape':<14}{'frame px':>12}{'MB':>8}{'KB/frame':>10}")
        with StoreReader(run) as store:
            for path in (file for file in files if file.suffix == ".gif"):
                layer = path.stem
                shape = store.layer(layer).sample_shape
                with Image.open(path) as image:
                    width, height = image.size
                    frames_in_file = image.n_frames
                size = path.stat().st_size
                print(
                    f"   {layer:<12}{'x'.join(map(str, shape)):<14}{f'{width}x{height}':>12}"
                    f"{size / 1e6:>8.2f}{size / 1e3 / frames_in_file:>10.1f}"
                )
        if args.baseline_python:
            print()
            _before_after(run, args.baseline_python, args.rounds, args.jobs)
        if args.keep:
            import shutil

            shutil.copytree(run / "renders", args.keep, dirs_exist_ok=True)
            print(f"\nrenders copied to {args.keep}")


if __name__ == "__main__":  # render_run starts worker processes with spawn
    main()
