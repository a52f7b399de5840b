"""How fast ``actrec render`` draws a run, in its default format (animated PNG) and as GIF, against the
matplotlib approach of the source tutorials and against an older checkout.

A: build a synthetic store shaped like the article's run (295 recorded steps; six tanh conv layers
of shapes (4,28,28), (4,28,28), (8,14,14), (8,14,14), (16,7,7), (16,7,7); 10 probes; smooth
tanh activations that sharpen and drift as "training" goes on), or take a real run (``--run``), then
time ``render_run`` end to end (every layer's animation and contact sheet, plus the curves PNG) as
``actrec render`` runs it (``jobs=None``), APNG and GIF alternating; wall and CPU seconds (children
included) and bytes written. Target: 6 x 295 frames in at most 2 s wall on 2 CPU cores.

B: per-frame time for a 10-probe x 8-channel grid (the (8,14,14) layer): ours (draw the frame, then
encode it as PNG, or append it to an APNG or a GIF) against the tutorials' matplotlib loop (a new
figure, one ``imshow`` per tile, ``savefig`` to PNG, close), alternating frame by frame in one
process so both see the same machine. Target: ours at least 100x faster. Needs matplotlib, which is
not an actrec dependency: without it that part is skipped, saying so.

C: the size of each layer's animation, APNG and GIF.

D (with ``--baseline-python PY``): the same render by another checkout's interpreter and by this one
(APNG, the default, and GIF), alternating in child processes so all see the same load; reports wall
and CPU seconds, their ratios, bytes, and whether every decoded frame of this checkout's APNG and GIF
equals the baseline's (its GIF), and every contact sheet and curves PNG too. A baseline interpreter
of main at c887402 (before APNG)::

    git -C /work/main archive c887402 | tar -x -C /tmp/baseline
    python3 -m venv /tmp/baseline-venv    # its dependencies from the shared environment, not this actrec:
    echo /work/.venv-base/lib/python3.11/site-packages > /tmp/baseline-venv/lib/python3.11/site-packages/zz.pth
    /tmp/baseline-venv/bin/pip install -q --no-deps -e /tmp/baseline

    python bench/bench_render.py
    python bench/bench_render.py --baseline-python /tmp/baseline-venv/bin/python --rounds 3
    python bench/bench_render.py --run runs/quickstart/version_0 --only-d --baseline-python PY
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
from actrec.viewer import ApngWriter, FrameLayout, GifWriter, encode_png, frame_title, render_run

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
_TARGET_SECONDS = 2.0
_TARGET_RATIO = 100.0


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=295, help="recorded steps in the synthetic store")
    parser.add_argument("--run", type=Path, help="render this run (a copy is not needed: renders go to a temp folder)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating timed renders per format in part A")
    parser.add_argument("--mpl-frames", type=int, default=5, help="frames drawn by each side in part B")
    parser.add_argument("--keep", type=Path, help="also copy the renders here, to look at them")
    parser.add_argument("--baseline-python", help="an interpreter that imports the baseline actrec (part D)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds in part D")
    parser.add_argument("--jobs", default="auto", help="render worker processes in part D (auto: as actrec render)")
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


FORMATS = ("apng", "gif")
SUFFIX = {"apng": ".png", "gif": ".gif"}


def _animations(folder: Path, video_format: str) -> list[Path]:
    """The animations of a render folder (APNG: the .png files that are neither sheets nor the curves)."""
    if video_format == "gif":
        return sorted(folder.glob("*.gif"))
    return sorted(p for p in folder.glob("*.png") if not p.name.endswith(".sheet.png") and p.name != "curves.png")


def _render_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.iterdir() if path.is_file())


def _time_renders(run: Path, out: Path, repeats: int) -> dict[str, list[tuple[float, float]]]:
    """``(wall, CPU)`` of ``repeats`` renders per format as ``actrec render`` runs them, formats alternating."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in FORMATS}
    for _ in range(repeats):
        for video_format in FORMATS:
            started, cpu_started = time.perf_counter(), _cpu_seconds()
            render_run(run, out_dir=out / video_format, jobs=None, progress=False, video_format=video_format)
            times[video_format].append((time.perf_counter() - started, _cpu_seconds() - cpu_started))
    return times


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
    writers = {"apng": ApngWriter(io.BytesIO()), "gif": GifWriter(io.BytesIO())}
    _matplotlib_frame(activations[0], plt)  # warm up fonts and caches on both sides
    encode_png(layout.frame(activations[0], title="warm-up"))
    ours: dict[str, list[float]] = {"png": [], "apng": [], "gif": []}
    theirs = []
    inner = 20  # ours is too quick to time once
    for index in range(frames):  # alternate: ours, matplotlib, ours, matplotlib, ...
        title = frame_title(layer, index, 0)
        started = time.perf_counter()
        for _ in range(inner):
            encode_png(layout.frame(activations[index], title=title, predictions=predictions[index]))
        ours["png"].append((time.perf_counter() - started) / inner)
        for name, writer in writers.items():  # appended: the encoder threads keep up or the append waits
            started = time.perf_counter()
            for _ in range(inner):
                writer.append(layout.frame(activations[index], title=title, predictions=predictions[index]))
            ours[name].append((time.perf_counter() - started) / inner)
        started = time.perf_counter()
        _matplotlib_frame(activations[index], plt)
        theirs.append(time.perf_counter() - started)
    for writer in writers.values():
        writer.close()
    return {
        **{f"ours_{name}": statistics.median(values) for name, values in ours.items()},
        "matplotlib": statistics.median(theirs),
        "matplotlib_version": matplotlib.__version__,
    }


_CHILD = """
import os, sys, time
if __name__ == "__main__":
    started = time.perf_counter()
    from actrec.viewer import render_run
    jobs = None if sys.argv[3] == "auto" else int(sys.argv[3])
    options = {} if sys.argv[4] == "default" else {"video_format": sys.argv[4]}
    render_run(sys.argv[1], out_dir=sys.argv[2], jobs=jobs, progress=False, **options)
    wall = time.perf_counter() - started
    t = os.times()
    print(wall, t.user + t.system + t.children_user + t.children_system)
"""


def _child_render(python: list[str], run: Path, out: Path, jobs: str, video_format: str) -> tuple[float, float]:
    """Wall and CPU seconds of one render in a child process, imports included (CPU includes its workers)."""
    script = out.parent / "bench_child.py"
    script.write_text(_CHILD)
    command = [*python, str(script), str(run), str(out), jobs, video_format]
    # As on a user's machine: Python caches compiled modules. (The project's VMs set PYTHONDONTWRITEBYTECODE,
    # which made every render compile the ~9,000 lines it imports, ~0.1 s, before drawing anything.)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"the render failed:\n{done.stderr}")
    wall, cpu = map(float, done.stdout.split()[-2:])
    return wall, cpu


def _decoded(path: Path) -> list[np.ndarray]:
    """Every frame of an image as Pillow composes it, in RGB; an APNG's still picture (its frame 0 in Pillow,
    outside the animation) is left out."""
    with Image.open(path) as image:
        first = 1 if image.info.get("default_image") else 0
        frames = []
        for index in range(first, getattr(image, "n_frames", 1)):
            image.seek(index)
            frames.append(np.asarray(image.convert("RGB")))
    return frames


def _identical_renders(baseline: Path, this: Path, video_format: str) -> tuple[int, list[str]]:
    """Frames compared, and what differs: each baseline file (GIFs, sheets, curves) against this render's file
    of the same picture (``<layer>.gif`` against ``<layer>.png`` for APNG), every decoded frame."""
    compared, different = 0, []
    for path in sorted(baseline.iterdir()):
        if path.suffix not in (".gif", ".png"):
            continue
        name = path.name
        if path.suffix == ".gif":
            name = path.with_suffix(SUFFIX[video_format]).name
        other = this / name
        if not other.exists():
            different.append(f"{name} missing")
            continue
        old, new = _decoded(path), _decoded(other)
        if len(old) != len(new):
            different.append(f"{name}: {len(new)} frames, baseline {len(old)}")
            continue
        for index, (mine, theirs) in enumerate(zip(new, old, strict=True)):
            compared += 1
            if not np.array_equal(mine, theirs):
                different.append(f"{name} frame {index}")
                break
    return compared, different


def _before_after(run: Path, work: Path, baseline: str, rounds: int, jobs: str) -> None:
    print(
        f"D. baseline ({baseline}) against this checkout, jobs {jobs}, {rounds} alternating rounds after one untimed "
        "render each (compiled modules cached, as a user's second render)"
    )
    sides = {
        "baseline gif": (shlex.split(baseline), "default"),
        "this apng": ([sys.executable], "apng"),
        "this gif": ([sys.executable], "gif"),
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    loads = []
    folders = {name: work / f"renders-{name.replace(' ', '-')}" for name in sides}
    for name, (python, video_format) in sides.items():  # untimed: compiles and caches each side's modules
        _child_render(python, run, folders[name], jobs, video_format)
    for _ in range(rounds):
        for name, (python, video_format) in sides.items():
            times[name].append(_child_render(python, run, folders[name], jobs, video_format))
            loads.append(os.getloadavg()[0])
    print(f"   {'side':<14}{'wall s (median)':>16}{'CPU s (median)':>16}{'MB':>8}{'walls':>24}")
    medians = {}
    for name, samples in times.items():
        wall, cpu = statistics.median(w for w, _ in samples), statistics.median(c for _, c in samples)
        medians[name] = (wall, cpu)
        walls = " ".join(f"{w:.2f}" for w, _ in samples)
        print(f"   {name:<14}{wall:>16.2f}{cpu:>16.2f}{_render_bytes(folders[name]) / 1e6:>8.1f}  {walls:<30}")
    old_wall, old_cpu = medians["baseline gif"]
    for name in ("this apng", "this gif"):
        wall, cpu = medians[name]
        print(f"   {name} / baseline: wall {wall / old_wall:.2f}x, CPU {cpu / old_cpu:.2f}x")
    print(f"   load average during: {min(loads):.1f} to {max(loads):.1f} on {available_cpus()} CPUs")
    for name, video_format in (("this apng", "apng"), ("this gif", "gif")):
        compared, different = _identical_renders(folders["baseline gif"], folders[name], video_format)
        verdict = "pixel-identical" if not different else "DIFFERENT: " + ", ".join(different[:8])
        print(f"   {name}: {compared} decoded frames (animations, sheets, curves) against the baseline's: {verdict}")
    same_bytes = all(
        path.read_bytes() == (folders["this gif"] / path.name).read_bytes()
        for path in folders["baseline gif"].glob("*.gif")
    )
    print(f"   this gif's GIF files byte for byte the baseline's: {'yes' if same_bytes else 'NO'}")


def main() -> None:
    args = _parse_args()
    print("$ " + shlex.join([Path(sys.executable).name, *sys.argv]))
    print(f"CPUs available: {available_cpus()} (os.cpu_count {os.cpu_count()}); load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        if args.run is not None:
            run = args.run
            print(f"rendering {run}")
        else:
            run = work / "run"
            run.mkdir()
            started = time.perf_counter()
            build_article_store(run / "activations.h5", args.steps)
            print(
                f"built a {args.steps}-step article-shaped store in {time.perf_counter() - started:.1f} s "
                "(not timed below)"
            )
        if args.only_d:
            _before_after(run, work, args.baseline_python, args.rounds, args.jobs)
            return
        times = _time_renders(run, work / "renders", args.repeats)
        with StoreReader(run) as store:
            frames = store.num_steps * len(store.layer_names)
        print()
        print(f"A. render_run as actrec render runs it (jobs=None), {frames} frames, formats alternating, "
              f"median of {args.repeats}")  # fmt: skip
        print(
            f"   {'format':<8}{'wall s':>8}{'CPU s':>8}{'ms/frame':>10}{'MB':>8}   target <= {_TARGET_SECONDS:g} s wall"
        )
        for video_format, samples in times.items():
            wall, cpu = statistics.median(w for w, _ in samples), statistics.median(c for _, c in samples)
            verdict = "meets" if wall <= _TARGET_SECONDS else "MISSES"
            size = _render_bytes(work / "renders" / video_format) / 1e6
            print(f"   {video_format:<8}{wall:>8.2f}{cpu:>8.2f}{1000 * wall / frames:>10.2f}{size:>8.1f}   {verdict}")
        print(f"   load average after: {os.getloadavg()[0]:.2f} (other processes on the machine slow both formats)")

        print()
        comparison = _compare_per_frame(run, args.mpl_frames) if args.run is None else None
        if comparison is None:
            print("B. skipped: matplotlib is not installed (it is not an actrec dependency), or --run was given")
        else:
            print(f"B. one 10-probe x 8-channel frame, median of {args.mpl_frames} alternating frames")
            print(f"   {'method':<50}{'ms/frame':>10}{'matplotlib / this':>20}")
            rows = [
                ("ours: draw + append to APNG (what render does)", comparison["ours_apng"]),
                ("ours: draw + append to GIF (--format gif)", comparison["ours_gif"]),
                ("ours: draw + encode PNG (Pillow, zlib level 6)", comparison["ours_png"]),
                (f"matplotlib {comparison['matplotlib_version']}: imshow per tile + savefig", comparison["matplotlib"]),
            ]
            for label, seconds in rows:
                print(f"   {label:<50}{1000 * seconds:>10.2f}{comparison['matplotlib'] / seconds:>19.0f}x")
            ratio = comparison["matplotlib"] / comparison["ours_apng"]
            verdict = "meets" if ratio >= _TARGET_RATIO else "MISSES"
            print(f"   per animation frame: {ratio:.0f}x faster; target >= {_TARGET_RATIO:g}x: {verdict}")

        print()
        print("C. animation size per layer")
        print(f"   {'layer':<14}{'frame px':>12}{'APNG MB':>9}{'GIF MB':>9}{'APNG KB/frame':>15}")
        for path in _animations(work / "renders" / "apng", "apng"):
            gif = work / "renders" / "gif" / path.with_suffix(".gif").name
            with Image.open(path) as image:
                width, height = image.size
                frames_in_file = image.n_frames - (1 if image.info.get("default_image") else 0)
            size = path.stat().st_size
            print(
                f"   {path.stem:<14}{f'{width}x{height}':>12}{size / 1e6:>9.2f}{gif.stat().st_size / 1e6:>9.2f}"
                f"{size / 1e3 / frames_in_file:>15.1f}"
            )
        if args.baseline_python:
            print()
            _before_after(run, work, args.baseline_python, args.rounds, args.jobs)
        if args.keep:
            import shutil

            shutil.copytree(work / "renders", args.keep, dirs_exist_ok=True)
            print(f"\nrenders copied to {args.keep}")


if __name__ == "__main__":  # render_run starts worker processes with spawn
    main()
