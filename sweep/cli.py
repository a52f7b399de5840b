"""``actrec sweep``: plan a sweep, write the plan, run its trials on an executor; ``--resume ID`` finishes one."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from actrec.errors import run_guarded
from actrec.runs.sweeps import (
    PLAN_FORMAT,
    SweepError,
    SweepRecord,
    new_sweep_id,
    plan_path,
    resolve_sweep,
    sweep_table,
    write_plan,
)
from actrec.sweep.launch import Launcher, LocalLauncher, run_sweep
from actrec.sweep.space import expand_trials, parse_grid, parse_space

__all__ = ["EXECUTORS", "new_plan", "sweep_main"]

EXECUTORS = ("local", "ray", "slurm")
PLAN_VERSION = 1


def _train_args(passthrough: list[str], config: str | None) -> list[str]:
    """``actrec train``'s flags for every trial: ``--config`` (a file made absolute) first, then the rest."""
    args = []
    if config is not None:
        args += ["--config", str(Path(config).resolve()) if Path(config).is_file() else config]
    for flag in ("--experiment", "--runs_dir"):
        if any(arg == flag or arg.startswith(flag + "=") for arg in passthrough):
            raise SweepError(f"{flag} belongs to actrec sweep here; it was given twice.")
    return args + passthrough


def new_plan(
    *,
    name: str,
    experiment: str,
    runs_dir: Path,
    overrides: list[dict[str, Any]],
    train_args: list[str],
    metric: str,
    mode: str,
    executor: dict[str, Any],
    sweep_id: str | None = None,
) -> dict[str, Any]:
    """A sweep's plan: what every trial runs, before any of them starts."""
    sweep_id = sweep_id or new_sweep_id()
    varied = list(dict.fromkeys(key for trial in overrides for key in trial))
    return {
        "format": PLAN_FORMAT,
        "format_version": PLAN_VERSION,
        "id": sweep_id,
        "name": name,
        "experiment": experiment,
        "runs_dir": str(runs_dir.resolve()),
        "cwd": os.getcwd(),
        "created": time.time(),
        "train_args": train_args,
        "varied": varied,
        "metric": metric,
        "mode": mode,
        "executor": executor,
        "trials": [
            {
                "index": index,
                "overrides": trial,
                "state": "pending",
                "attempts": 0,
                "log": f"sweep-{sweep_id}-logs/trial-{index:03d}.log",
            }
            for index, trial in enumerate(overrides)
        ],
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="actrec sweep",
        allow_abbrev=False,
        description=(
            "Run many `actrec train` trials over a grid, random draws or seeds. The plan is written first to "
            "<runs_dir>/<experiment>/sweep-<id>.json; every trial is an ordinary run folder whose summary.json "
            "names the sweep and its overrides. Any other flag is passed to every trial's actrec train."
        ),
        epilog="example: actrec sweep --grid model.lr=0.001,0.01 --seeds 2 --parallel 2 --trainer.max_epochs=3",
    )
    parser.add_argument("--config", metavar="NAME|FILE", help="actrec train's --config for every trial")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="values to cross")
    parser.add_argument("--random", type=int, default=0, metavar="N", help="draw N trials from the --space ranges")
    parser.add_argument("--space", action="append", default=[], metavar="KEY=LOW:HIGH[:log]", help="a range to draw")
    parser.add_argument("--seeds", type=int, default=0, metavar="N", help="repeat each trial with seeds 0..N-1")
    parser.add_argument(
        "--parallel",
        type=int,
        metavar="N",
        help="trials at once (local default 1; ray and slurm: as many as the cluster schedules)",
    )
    parser.add_argument("--executor", choices=EXECUTORS, help="where trials run (default local)")
    parser.add_argument("--experiment", default="sweep", help="runs go to <runs_dir>/<experiment>/ (default sweep)")
    parser.add_argument("--runs_dir", default="runs", help="root folder of all runs (default runs)")
    parser.add_argument("--name", help="the sweep's name (default: the experiment's)")
    parser.add_argument("--metric", default="test/acc", help="the metric 'best so far' means (default test/acc)")
    parser.add_argument("--mode", choices=("max", "min"), help="best is the max or min (default: min for a loss)")
    parser.add_argument("--resume", metavar="ID|NAME", help="run the trials of this sweep that did not finish")
    parser.add_argument("--dry-run", action="store_true", help="write the plan and list the trials; run nothing")
    ray = parser.add_argument_group("ray executor (pip install -e '.[ray]')")
    ray.add_argument("--address", help="join this Ray cluster (default: start a local Ray instance)")
    ray.add_argument("--cpus-per-trial", type=float, help="Ray CPUs per trial (default 1)")
    ray.add_argument("--gpus-per-trial", type=float, help="Ray GPUs per trial (default 0)")
    ray.add_argument("--ray-num-cpus", type=int, help="CPUs of the local Ray instance (default: all of them)")
    slurm = parser.add_argument_group("slurm executor, through submitit (pip install -e '.[slurm]')")
    slurm.add_argument("--slurm-partition", help="the partition to submit to")
    slurm.add_argument("--slurm-time", type=int, metavar="MINUTES", help="time limit per trial")
    slurm.add_argument("--slurm-cpus-per-task", type=int, help="CPUs per trial (default 1)")
    slurm.add_argument("--slurm-gpus-per-node", type=int, help="GPUs per trial (default 0)")
    slurm.add_argument("--slurm-array", action="store_true", default=None, help="submit the trials as one job array")
    slurm.add_argument(
        "--slurm-cluster",
        choices=("slurm", "local", "debug"),
        help="submitit's cluster: slurm, or local/debug to run the same jobs on this machine",
    )
    return parser


def _executor_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The executor flags given on this command line (a resumed sweep keeps its plan's for the others)."""
    given = {
        "kind": args.executor,
        "parallel": args.parallel,
        "address": args.address,
        "cpus_per_trial": args.cpus_per_trial,
        "gpus_per_trial": args.gpus_per_trial,
        "num_cpus": args.ray_num_cpus,
        "partition": args.slurm_partition,
        "time_min": args.slurm_time,
        "cpus_per_task": args.slurm_cpus_per_task,
        "gpus_per_node": args.slurm_gpus_per_node,
        "array": args.slurm_array,
        "cluster": args.slurm_cluster,
    }
    return {key: value for key, value in given.items() if value is not None}


def make_launcher(record: SweepRecord, settings: dict[str, Any]) -> Launcher:
    """The launcher for ``settings["kind"]``; Ray and SLURM are imported only when chosen."""
    kind = settings.get("kind", "local")
    if kind == "ray":
        from actrec.sweep.executors import RayLauncher

        return RayLauncher(record, settings)
    if kind == "slurm":
        from actrec.sweep.executors import SlurmLauncher

        return SlurmLauncher(record, settings)
    return LocalLauncher(settings.get("parallel"))


def _sweep(args: argparse.Namespace, passthrough: list[str]) -> int:
    if args.parallel is not None and args.parallel < 1:
        raise SweepError(f"--parallel must be at least 1, got {args.parallel}.")
    if args.resume is not None:
        changed = [flag for flag, value in (("--grid", args.grid), ("--space", args.space)) if value]
        changed += ["--random"] * bool(args.random) + ["--seeds"] * bool(args.seeds) + passthrough[:1]
        if changed:
            raise SweepError(
                f"--resume runs the sweep's plan as written; {changed[0]} cannot change it (edit the plan, or start "
                "a new sweep)."
            )
        record = resolve_sweep(args.runs_dir, args.resume)
        settings = {**record.plan.get("executor", {}), **_executor_settings(args)}
        record.plan["executor"] = settings
    else:
        sweep_id = new_sweep_id()
        overrides = expand_trials(
            parse_grid(args.grid), parse_space(args.space), args.random, args.seeds, rng_seed=sweep_id
        )
        runs_dir = Path(args.runs_dir)
        if runs_dir.exists() and not runs_dir.is_dir():
            raise SweepError(f"--runs_dir {runs_dir} is not a folder; pass a folder for the runs.")
        mode = args.mode or ("min" if "loss" in args.metric else "max")
        plan = new_plan(
            name=args.name or args.experiment,
            experiment=args.experiment,
            runs_dir=runs_dir,
            overrides=overrides,
            train_args=_train_args(passthrough, args.config),
            metric=args.metric,
            mode=mode,
            executor={"kind": "local", **_executor_settings(args)},
            sweep_id=sweep_id,
        )
        experiment_dir = runs_dir / args.experiment
        created = [folder for folder in (experiment_dir, runs_dir) if not folder.exists()]
        experiment_dir.mkdir(parents=True, exist_ok=True)
        record = SweepRecord(plan_path(experiment_dir, sweep_id), plan)
        try:  # an executor that cannot start (an extra not installed, no sbatch) leaves nothing behind
            launcher = None if args.dry_run else make_launcher(record, plan["executor"])
        except BaseException:
            for folder in created:
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise
        write_plan(record.path, plan)
        print(f"sweep {record.name} ({record.sweep_id}): {len(overrides)} trial(s), plan {record.path}")
    if args.dry_run:
        for trial in record.plan["trials"]:
            shown = " ".join(f"{key}={value}" for key, value in trial["overrides"].items())
            print(f"  trial {trial['index']}: {shown}")
        return 0
    if args.resume is not None:
        launcher = make_launcher(record, record.plan["executor"])
    assert launcher is not None, "made above for every sweep that is not a --dry-run"
    outcome = run_sweep(record, launcher)
    print(sweep_table(record, outcome.states))
    if outcome.unfinished:
        shown = ", ".join(f"trial {state.index} {state.status}" for state in outcome.unfinished[:4])
        raise SweepError(
            f"{len(outcome.unfinished)} of {len(outcome.states)} trial(s) did not finish ({shown}); their logs are in "
            f"{record.experiment_dir / f'sweep-{record.sweep_id}-logs'}; fix the cause and run actrec sweep --resume "
            f"{record.sweep_id} --runs_dir {args.runs_dir}."
        )
    return 0


def sweep_main(argv: Sequence[str]) -> int:
    """``actrec sweep``; returns the exit code."""
    parser = _parser()
    args, passthrough = parser.parse_known_args(list(argv))
    if passthrough and not passthrough[0].startswith("--"):
        print(f"actrec sweep: unexpected argument {passthrough[0]!r}; train flags start with --.", file=sys.stderr)
        return 2
    return run_guarded("actrec sweep", lambda: _sweep(args, passthrough))
