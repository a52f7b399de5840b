"""Seconds per training step of ``actrec train`` against a plain PyTorch loop over the same model and data.

A: ``actrec train --config configs/fashion.yaml`` itself (``train_main``, logger, progress bar, checkpointing and
all), stopped after ``--warmup + --steps`` steps; its per-step times are the wall times TensorBoard recorded with
each step's ``train/loss``. B: the same model, data module, batch, Adam and cross-entropy in a bare loop. A and B
alternate (A, B, A, B, ...) in one process, so both see the same machine state; the table reports each run's
median seconds per step after warmup and the ratio A / B, and the medians over all pairs.

    python bench/bench_train.py --steps 40 --repeats 5

The measured steps stay inside the first epoch (58 steps at batch 1024), so neither side pays for validation.
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from actrec.runs import resolve_run
from actrec.trainer import build_model
from actrec.trainer.cli import TrainCLI, train_main

_REPO = Path(__file__).resolve().parents[1]
_TARGET_RATIO = 1.05


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per run (after warmup)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps at the start of each run")
    parser.add_argument("--repeats", type=int, default=5, help="A/B pairs")
    parser.add_argument("--config", type=Path, default=_REPO / "configs" / "fashion.yaml", help="actrec train config")
    parser.add_argument(
        "--record",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also record activations on the actrec side (off: Lightning alone; bench_recorder.py times recording)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads for both loops (0: torch's default)")
    args = parser.parse_args()
    if args.steps < 2 or args.warmup < 1 or args.repeats < 1:
        parser.error("--steps must be at least 2, --warmup and --repeats at least 1.")
    return args


def _seconds_per_step(step_end_times: list[float], warmup: int) -> float:
    """Median step time after warmup, from the times at which consecutive steps finished.

    The median of single steps, rather than the mean over the run, shrugs off the bursts in which other
    processes take the CPU away.
    """
    timed = step_end_times[warmup - 1 :]  # the first timed step starts when the last warmup step ends
    return statistics.median(end - start for start, end in itertools.pairwise(timed))


def _lightning_run(config: Path, runs_dir: Path, total_steps: int, record: bool) -> list[float]:
    """Run ``actrec train`` for ``total_steps`` steps; return when each step's ``train/loss`` was logged."""
    argv = [
        "--config",
        str(config),
        "--runs_dir",
        str(runs_dir),
        "--experiment",
        "bench",
        f"--trainer.max_steps={total_steps}",
        "--trainer.limit_test_batches=0",  # the bench times training, not the final test pass
        f"--record={str(record).lower()}",
    ]
    exit_code = train_main(argv)
    if exit_code != 0:
        raise SystemExit(f"actrec train {shlex.join(argv)} failed with exit code {exit_code}")
    run_dir = resolve_run(runs_dir / "bench").path  # the newest version
    events = EventAccumulator(str(run_dir))
    events.Reload()
    step_events = events.Scalars("train/loss")
    if len(step_events) != total_steps:
        raise SystemExit(f"expected {total_steps} train/loss events in {run_dir}, found {len(step_events)}")
    return [event.wall_time for event in step_events]


def _plain_run(cli: TrainCLI, total_steps: int) -> list[float]:
    """The same model, data, batch and optimizer in a bare PyTorch loop; return when each step finished."""
    pl.seed_everything(cli.config.seed_everything, verbose=False)
    model = build_model(cli.model.hparams["model"], cli.model.hparams["init"])  # fresh, as configured
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cli.model.lr)
    loader = cli.datamodule.train_dataloader()
    step_end_times: list[float] = []
    for images, labels in loader:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        step_end_times.append(time.time())
        if len(step_end_times) == total_steps:
            break
    return step_end_times


def main() -> None:
    """Run the interleaved benchmark and print the table."""
    args = _parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print("$", shlex.join(sys.orig_argv), flush=True)

    total_steps = args.warmup + args.steps
    with tempfile.TemporaryDirectory(prefix="actrec-bench-") as runs_dir:
        cli = TrainCLI(args=["--config", str(args.config), "--runs_dir", runs_dir])
        cli.datamodule.prepare_data()
        cli.datamodule.setup("fit")
        steps_per_epoch = len(cli.datamodule.train_dataloader())
        if total_steps > steps_per_epoch:
            raise SystemExit(
                f"--warmup + --steps must fit in one epoch ({steps_per_epoch} steps) to leave out "
                "validation and checkpointing; lower them."
            )

        timings: list[tuple[float, float]] = []
        for repeat in range(args.repeats):
            lightning = _seconds_per_step(
                _lightning_run(args.config, Path(runs_dir), total_steps, args.record), args.warmup
            )
            plain = _seconds_per_step(_plain_run(cli, total_steps), args.warmup)
            timings.append((lightning, plain))
            print(f"pair {repeat + 1}: actrec train {lightning:.4f} s/step, plain loop {plain:.4f} s/step", flush=True)

    datamodule = cli.datamodule
    lightning_median = statistics.median(lightning for lightning, _ in timings)
    plain_median = statistics.median(plain for _, plain in timings)
    # Each A/B pair ran back to back, so its ratio cancels the slow drifts of a shared machine; the headline is
    # the median of the pairs' ratios.
    ratio = statistics.median(lightning / plain for lightning, plain in timings)
    print()
    print(f"$ {shlex.join(sys.orig_argv)}")
    print(
        f"{datamodule.dataset}, batch {datamodule.batch_size}, model {cli.model.hparams['model']}, "
        f"{args.steps} timed steps after {args.warmup} warmup, {args.repeats} A/B pairs, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), pytorch_lightning {pl.__version__}"
    )
    print(f"{'pair':>8} {'actrec train s/step':>20} {'plain loop s/step':>18} {'ratio':>7}")
    for repeat, (lightning, plain) in enumerate(timings, start=1):
        print(f"{repeat:>8} {lightning:>20.4f} {plain:>18.4f} {lightning / plain:>7.3f}")
    print(f"{'median':>8} {lightning_median:>20.4f} {plain_median:>18.4f} {ratio:>7.3f}")
    verdict = "within" if ratio <= _TARGET_RATIO else "NOT within"
    print(f"actrec train is {verdict} {(_TARGET_RATIO - 1):.0%} of the plain loop (median ratio {ratio:.3f}).")


if __name__ == "__main__":
    main()
