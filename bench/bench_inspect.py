"""Time ``actrec inspect maximize`` on one six-conv layer (16 channels) and ``featuremaps`` on one image.

Targets: maximize under 20 s, featuremaps under 2 s, on 2 CPU cores. Each is timed in-process (the work itself,
after imports) ``--repeats`` times, then once end to end as ``actrec inspect ...`` in a fresh process, which adds
Python's, torch's and Lightning's import time. Medians are printed with the load average, because on a shared
machine single runs vary a lot.

    python bench/bench_inspect.py --run runs/quickstart          # a trained quickstart run
    python bench/bench_inspect.py                                # trains a one-epoch run in a temporary folder first
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _train(folder: Path) -> Path:
    from actrec.trainer.cli import TrainCLI

    args = ["--runs_dir", str(folder), "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false"]
    TrainCLI(args=args).fit_and_test()
    return folder / "quickstart" / "version_0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a six_conv_tanh run (default: train a one-epoch one)")
    parser.add_argument("--layer", default="net.conv5")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from actrec.inspection.featuremaps import draw_featuremaps, feature_stages
    from actrec.inspection.images import dataset_split
    from actrec.inspection.loading import load_run_model
    from actrec.inspection.maximize import layer_channels, maximize_channels
    from actrec.viewer import write_png

    with tempfile.TemporaryDirectory() as scratch:
        run = Path(args.run) if args.run else _train(Path(scratch) / "runs")
        loaded = load_run_model(run)
        channels = range(layer_channels(loaded.model, args.layer))
        images, _, _ = dataset_split(loaded.config)
        timings: dict[str, list[float]] = {"maximize": [], "featuremaps": []}
        for _ in range(args.repeats):
            start = time.perf_counter()
            maximize_channels(loaded.model, args.layer, channels)
            timings["maximize"].append(time.perf_counter() - start)
            start = time.perf_counter()
            stages = feature_stages(loaded.model, images[:1])
            write_png(draw_featuremaps(images[:1], stages, title="bench"), Path(scratch) / "featuremaps.png")
            timings["featuremaps"].append(time.perf_counter() - start)
        commands = {
            "maximize": ["maximize", str(run), "--layer", args.layer, "--out", scratch],
            "featuremaps": ["featuremaps", str(run), "--index", "0", "--out", scratch],
        }
        end_to_end = {}
        for name, command in commands.items():
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "actrec.cli", "inspect", *command], check=True, capture_output=True)
            end_to_end[name] = time.perf_counter() - start
        print(f"run: {loaded.label}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}")
        print(f"{'command':<13} {'work, median':>13} {'min':>7} {'max':>7} {'end to end':>11}")
        for name, values in timings.items():
            print(
                f"{name:<13} {statistics.median(values):>12.2f}s {min(values):>6.2f}s {max(values):>6.2f}s "
                f"{end_to_end[name]:>10.1f}s"
            )
        print(f"maximize: {len(channels)} channels of {args.layer}, 200 steps; featuremaps: {len(stages)} stages")


if __name__ == "__main__":
    main()
