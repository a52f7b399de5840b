"""``actrec runs``: one row per run, from summary.json and file sizes only (never the stores)."""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from actrec.errors import UserError, run_guarded, terminal_safe
from actrec.runs._layout import Run, RunError, find_runs

__all__ = ["COLUMNS", "RunRow", "format_table", "run_row", "runs_main"]


@dataclass(frozen=True)
class RunRow:
    """What ``actrec runs`` shows of one run; ``None`` where the run does not say."""

    run: str
    path: str
    model: str | None
    dataset: str | None
    seed: int | None
    recorded_steps: int | None
    global_step: int | None
    max_steps: int | None
    epoch: int | None
    max_epochs: int | None
    val_acc: float | None
    test_acc: float | None
    store_bytes: int | None
    wall_time_s: float | None
    status: str
    error: str | None


#: Table columns: (heading, RunRow field, formatter).
COLUMNS: tuple[tuple[str, str], ...] = (
    ("run", "run"),
    ("model", "model"),
    ("dataset", "dataset"),
    ("seed", "seed"),
    ("steps", "global_step"),
    ("rows", "recorded_steps"),
    ("val acc", "val_acc"),
    ("test acc", "test_acc"),
    ("store", "store_bytes"),
    ("wall", "wall_time_s"),
    ("status", "status"),
)

#: ``--sort`` keys, each a RunRow field.
SORT_KEYS = {
    "run": "run",
    "model": "model",
    "dataset": "dataset",
    "seed": "seed",
    "steps": "global_step",
    "rows": "recorded_steps",
    "val": "val_acc",
    "test": "test_acc",
    "size": "store_bytes",
    "wall": "wall_time_s",
    "status": "status",
}


def _number(value: Any, kind: type) -> Any:
    return kind(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def run_row(run: Run, now: float | None = None) -> RunRow:
    """Describe ``run`` from its summary.json (a config.yaml and a file size at most when it has none)."""
    status = run.status()
    try:
        summary = run.summary() or {}
    except RunError:
        summary = {}
    metrics = _section(summary.get("metrics"))
    model, dataset, seed = summary.get("model"), summary.get("dataset"), summary.get("seed")
    if not summary:
        model, dataset, seed = _from_config(run)
    store_bytes = _number(summary.get("store_bytes"), int)
    if store_bytes is None:
        store_bytes = run.store_bytes()
    wall = _number(summary.get("wall_time_s"), float)
    started = _number(summary.get("started"), float)
    if wall is None and started is not None and status == "running":
        wall = (now if now is not None else time.time()) - started
    recorded, global_step = _number(summary.get("recorded_steps"), int), _number(summary.get("global_step"), int)
    epoch = _number(summary.get("epoch"), int)
    max_steps = max_epochs = None
    if status == "running" or (recorded is None and status in ("crashed", "interrupted")):
        # Training has not written its final numbers yet: the store says how far it got, and its limits.
        progress = store_progress(run)
        if progress is not None:
            recorded, global_step, epoch, max_steps, max_epochs = progress
    error = summary.get("error") if isinstance(summary.get("error"), str) else None
    if status == "corrupt":
        error = f"{run.summary_path.name} cannot be parsed"
    elif status == "crashed" and not error:
        error = "the process ended without a final summary" if summary else "no summary.json"
    return RunRow(
        run=run.name,
        path=str(run.path),
        model=model if isinstance(model, str) else None,
        dataset=dataset if isinstance(dataset, str) else None,
        seed=_number(seed, int),
        recorded_steps=recorded,
        global_step=global_step,
        max_steps=max_steps,
        epoch=epoch,
        max_epochs=max_epochs,
        val_acc=_number(metrics.get("val/acc"), float),
        test_acc=_number(metrics.get("test/acc"), float),
        store_bytes=store_bytes,
        wall_time_s=wall,
        status=status,
        error=error,
    )


def store_progress(run: Run) -> tuple[int, int | None, int | None, int | None, int | None] | None:
    """``(recorded rows, last training step, its epoch, max_steps, max_epochs)`` from a run's store as flushed so
    far (a run still training), the limits from the trainer settings the recorder stored; ``None`` without a
    readable store. Limits Lightning leaves open (``max_steps=-1``) are ``None``."""
    if not run.store_path.is_file():
        return None
    from actrec.store import StoreReader  # only here: listing finished runs never opens HDF5

    try:
        with StoreReader(run.store_path) as store:
            rows = store.refresh()
            steps = store.steps() if rows else {}
            config = store.config if isinstance(store.config, dict) else {}
    except (UserError, OSError, KeyError, ValueError):
        return None
    trainer = _section(config.get("trainer"))
    step = int(steps["global_step"][rows - 1]) if rows else None
    epoch = int(steps["epoch"][rows - 1]) if rows else None
    return rows, step, epoch, _positive(trainer.get("max_steps")), _positive(trainer.get("max_epochs"))


def _section(value: Any) -> dict[str, Any]:
    """``value`` if it is a dict, else an empty one: a summary's or config's section may be missing or malformed."""
    return value if isinstance(value, dict) else {}


def _positive(value: Any) -> int | None:
    number = _number(value, int)
    return number if number is not None and number > 0 else None


def progress_text(row: RunRow) -> str:
    """How far a running run is: ``"step 120 of 1,890"``, ``"epoch 3 of 30"`` or ``"step 120"``; ``""`` if unknown."""
    if row.global_step is None:
        return ""
    if row.max_steps is not None:
        return f"step {row.global_step:,} of {row.max_steps:,}"
    if row.max_epochs is not None and row.epoch is not None:
        # Epochs count from 0: during epoch 2 of a 30-epoch run, the third of 30 is running.
        return f"epoch {min(row.epoch, row.max_epochs - 1) + 1} of {row.max_epochs}, step {row.global_step:,}"
    return f"step {row.global_step:,}"


def _from_config(run: Run) -> tuple[Any, Any, Any]:
    """Model, dataset and seed from config.yaml, for a run that never wrote a summary."""
    try:
        config = run.config()
    except RunError:
        return None, None, None
    model = _section(config.get("model"))
    data = _section(config.get("data"))
    return model.get("model"), data.get("dataset"), config.get("seed_everything")


def _size(num_bytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.1f} {unit}"
    return f"{num_bytes} B"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} m {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} m"


def _cell(field: str, value: Any) -> str:
    if value is None:
        return "-"
    if field in ("val_acc", "test_acc"):
        return f"{value:.1%}"
    if field == "store_bytes":
        return _size(value)
    if field == "wall_time_s":
        return _duration(value)
    return terminal_safe(str(value))  # summary.json's fields are anyone's text: escapes are shown, not obeyed


def _row_cell(row: RunRow, field: str) -> str:
    if field == "status" and row.status == "running" and progress_text(row):
        return f"running ({progress_text(row)})"
    return _cell(field, getattr(row, field))


def format_table(rows: Sequence[RunRow]) -> str:
    """The rows as an aligned text table, numbers right-aligned."""
    cells = [[_row_cell(row, field) for _, field in COLUMNS] for row in rows]
    widths = [max([len(heading)] + [len(line[i]) for line in cells]) for i, (heading, _) in enumerate(COLUMNS)]
    numeric = {"seed", "global_step", "recorded_steps", "val_acc", "test_acc", "store_bytes", "wall_time_s"}

    def line(values: Sequence[str]) -> str:
        parts = [
            value.rjust(width) if field in numeric else value.ljust(width)
            for value, width, (_, field) in zip(values, widths, COLUMNS, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line([heading for heading, _ in COLUMNS]), *(line(values) for values in cells)])


def _sorted(rows: list[RunRow], key: str, reverse: bool) -> list[RunRow]:
    field = SORT_KEYS[key]
    # Runs without the value go last whichever the direction.
    present = [row for row in rows if getattr(row, field) is not None]
    absent = [row for row in rows if getattr(row, field) is None]
    present.sort(key=lambda row: getattr(row, field), reverse=reverse)
    return present + absent


def _matches(value: str | None, patterns: Sequence[str] | None) -> bool:
    return not patterns or (value is not None and any(fnmatch.fnmatchcase(value, pattern) for pattern in patterns))


def _list(text: str) -> list[str]:
    return [item for item in text.split(",") if item]


def runs_main(argv: Sequence[str]) -> int:
    """``actrec runs [DIR]``: a table of runs; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="actrec runs",
        description=(
            "List runs: one row per run folder under DIR (a runs folder, an experiment or one run), read from "
            "each run's summary.json. Status: finished, failed, interrupted, running (its process is alive), "
            "crashed (its process is gone without a final summary, or there never was one) or corrupt."
        ),
    )
    parser.add_argument("dir", nargs="?", default="runs", metavar="DIR", help="where the runs are (default: runs)")
    parser.add_argument("--sort", choices=sorted(SORT_KEYS), default="run", help="sort by this column (default: run)")
    parser.add_argument("--reverse", action="store_true", help="sort in descending order")
    filters = (
        ("--experiment", "experiment names or globs"),
        ("--model", "model names or globs"),
        ("--dataset", "datasets or globs"),
        ("--status", "statuses"),
    )
    for flag, what in filters:
        parser.add_argument(flag, action="extend", type=_list, metavar="A[,B...]", help=f"keep only these {what}")
    parser.add_argument("--json", action="store_true", help="print a JSON list of runs instead of the table")
    parser.add_argument("--sweep", metavar="NAME|ID", help="one row per trial of this sweep (varied keys as columns)")
    args = parser.parse_args(argv)

    def action() -> int:
        if args.sweep is not None:
            from actrec.runs.sweeps import sweep_main

            return sweep_main(args.dir, args.sweep, sort=args.sort, reverse=args.reverse, as_json=args.json)
        runs = [run for run in find_runs(args.dir) if _matches(run.experiment, args.experiment)]
        now = time.time()
        rows = [run_row(run, now) for run in runs]
        rows = [
            row
            for row in rows
            if _matches(row.model, args.model)
            and _matches(row.dataset, args.dataset)
            and _matches(row.status, args.status)
        ]
        rows = _sorted(rows, args.sort, args.reverse)
        if args.json:
            print(json.dumps([asdict(row) for row in rows], indent=2))
        elif rows:
            print(format_table(rows))
        else:
            print(f"actrec runs: no runs under {args.dir}{' match' if len(runs) else ''}.", file=sys.stderr)
        return 0

    return run_guarded("actrec runs", action)
