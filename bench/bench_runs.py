"""Time ``actrec runs`` over many run folders (the target: over 100 runs in under 2 s).

Makes synthetic run folders as ``actrec train`` leaves them (summary.json, config.yaml, a sparse 60 MB
activations.h5, a checkpoint, TensorBoard files), some finished, some crashed (a "running" summary whose
process is gone), some still running (this process), some with a damaged summary or none, then times the
whole command in a fresh process (Python start-up included) and the listing alone in this one.

    python bench/bench_runs.py --runs 120 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from actrec.runs import CHECKPOINT_DIRNAME, CONFIG_FILENAME, STORE_FILENAME, SUMMARY_FILENAME, find_runs
from actrec.runs.table import format_table, run_row

_CONFIG = """seed_everything: {seed}
model:
  model: {model}
  init: default
  lr: 0.002
data:
  dataset: {dataset}
  batch_size: 64
trainer:
  max_epochs: 30
""" + "".join(f"  option_{k}: null\n" for k in range(120))  # a resolved config is ~150 lines


def make_runs(root: Path, count: int) -> dict[str, int]:
    """Write ``count`` run folders under ``root``; returns how many of each kind."""
    kinds: dict[str, int] = {}
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for index in range(count):
        model = ("six_conv_tanh", "lenet", "mlp")[index % 3]
        dataset = ("mnist-sample", "fashion-mnist")[index % 2]
        folder = root / f"exp{index % 6}" / f"version_{index // 6}"
        (folder / CHECKPOINT_DIRNAME).mkdir(parents=True)
        (folder / CONFIG_FILENAME).write_text(_CONFIG.format(seed=index, model=model, dataset=dataset))
        with open(folder / STORE_FILENAME, "wb") as store:
            store.truncate(60_000_000)  # sparse: its size, not its bytes
        (folder / CHECKPOINT_DIRNAME / "epoch=29-step=1890.ckpt").write_bytes(bytes(1000))
        (folder / f"events.out.tfevents.{index}.host.1.0").write_bytes(bytes(5000))
        kind = "finished"
        if index % 40 == 7:
            kind = "no summary"
        elif index % 40 == 9:
            kind = "corrupt"
        elif index % 10 == 3:
            kind = "crashed"
        elif index % 30 == 5:
            kind = "running"
        kinds[kind] = kinds.get(kind, 0) + 1
        summary = {
            "state": "finished",
            "pid": os.getpid(),
            "hostname": os.uname().nodename,
            "model": model,
            "dataset": dataset,
            "seed": index,
            "started": time.time() - 60,
            "wall_time_s": 57.0 + index,
            "global_step": 1890,
            "recorded_steps": 379,
            "metrics": {"val/acc": 0.95 + index / 10_000, "test/acc": 0.96, "train/loss": 0.1},
            "store_bytes": 60_000_000,
        }
        if kind in ("crashed", "running"):
            summary = {**summary, "state": "running", "wall_time_s": None, "metrics": {}}
            summary["pid"] = int(dead_pid.stdout) if kind == "crashed" else os.getpid()
        if kind == "corrupt":
            (folder / SUMMARY_FILENAME).write_text('{"state": "finis')
        elif kind != "no summary":
            (folder / SUMMARY_FILENAME).write_text(json.dumps(summary, indent=2))
    return kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    actrec = Path(sys.executable).with_name("actrec")
    command = [str(actrec)] if actrec.is_file() else [sys.executable, "-m", "actrec.cli"]
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        kinds = make_runs(root, args.runs)
        print(f"{args.runs} run folders: " + ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())))
        whole, listing, version = [], [], []
        for _ in range(args.repeats):
            # Interleaved: `actrec --version` is the start-up floor the listing sits on.
            start = time.perf_counter()
            subprocess.run([*command, "--version"], check=True, capture_output=True)
            version.append(time.perf_counter() - start)
            start = time.perf_counter()
            result = subprocess.run([*command, "runs", str(root)], check=True, capture_output=True, text=True)
            whole.append(time.perf_counter() - start)
            start = time.perf_counter()
            format_table([run_row(run) for run in find_runs(root)])
            listing.append(time.perf_counter() - start)
        statuses = [line.split()[-1] for line in result.stdout.splitlines()[1:]]
        print("statuses listed: " + ", ".join(f"{statuses.count(s)} {s}" for s in sorted(set(statuses))))
        print(f"actrec runs DIR, whole command: median {statistics.median(whole):.3f} s (min {min(whole):.3f})")
        print(f"actrec --version (start-up alone): median {statistics.median(version):.3f} s")
        print(f"listing in-process (find + rows + table): median {statistics.median(listing) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
