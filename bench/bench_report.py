"""How long ``actrec report`` takes on an article-shaped run, and how big the page is.

Builds the synthetic 295-step, six-layer store of ``bench_render.py`` (tanh activations that sharpen
and drift), then times ``build_report`` end to end (dynamics, every layer's frames, charts, page)
and ``compute_dynamics`` alone. Targets: the report in under 15 s and under 50 MB; the dynamics
in under 5 s.

    python bench/bench_report.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_render import build_article_store  # noqa: E402

from actrec.dynamics import compute_dynamics  # noqa: E402
from actrec.recording import Recording  # noqa: E402
from actrec.report import build_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=295)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="copy the report here, to look at it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder) / "article" / "version_0"
        run.mkdir(parents=True)
        build_article_store(run / "activations.h5", args.steps)
        load = os.getloadavg()[0]
        report_times, dynamics_times, report_cpu = [], [], []
        for _ in range(args.repeats):  # interleaved, so both see the same machine
            started = time.perf_counter()
            with Recording.open(run) as recording:
                compute_dynamics(recording)
            dynamics_times.append(time.perf_counter() - started)
            started, cpu_started = time.perf_counter(), time.process_time()
            result = build_report(run)
            report_times.append(time.perf_counter() - started)
            report_cpu.append(time.process_time() - cpu_started)
        print(f"{args.steps} steps x {len(result.layers)} layers, {os.cpu_count()} CPUs, load {load:.1f} at start")
        print(f"dynamics: median {statistics.median(dynamics_times):.2f} s (runs: "
              + ", ".join(f"{t:.2f}" for t in dynamics_times) + "; target < 5 s)")  # fmt: skip
        print(f"report:   median {statistics.median(report_times):.2f} s (runs: "
              + ", ".join(f"{t:.2f}" for t in report_times) + "; target < 15 s)")  # fmt: skip
        print(f"report CPU time: median {statistics.median(report_cpu):.2f} s (wall minus waiting for a core)")
        print(f"report size: {result.size_bytes / 1e6:.1f} MB (target < 50 MB)")
        if args.keep:
            args.keep.write_bytes(result.path.read_bytes())


if __name__ == "__main__":
    main()
