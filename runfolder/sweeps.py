"""A sweep's plan file and its trials' state: where ``actrec sweep`` writes, and what ``--sweep`` reads.

A sweep lives beside its runs: ``<runs_dir>/<experiment>/sweep-<id>.json`` (the plan, written before the
first trial starts and rewritten as trials start and end), ``sweep-<id>-logs/trial-NNN.log`` (each trial's
output), and one ordinary run folder ``version_N`` per trial attempt, whose ``summary.json`` names the sweep
(``sweep``: name, id, trial) and the trial's ``overrides``.

A trial's state joins the two: the newest run folder of the trial when it belongs to the latest attempt
(its own summary says finished, failed, interrupted, running or crashed), else the plan's record (a trial
refused before training made no run folder; one never started is ``pending``).

Nothing here imports torch, Lightning or h5py.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actrec.runs._layout import Run, RunError, find_runs, process_start_ticks, read_summary, writer_alive
from actrec.runs._summary import SWEEP_TRIAL_ENV
from actrec.runs.atomic import atomic_path

__all__ = [
    "PLAN_FORMAT",
    "PLAN_PREFIX",
    "SWEEP_TRIAL_ENV",
    "TRIAL_STATES",
    "SweepError",
    "SweepRecord",
    "TrialState",
    "driver_fields",
    "find_plans",
    "new_sweep_id",
    "plan_path",
    "read_plan",
    "resolve_sweep",
    "status_counts",
    "sweep_run_folders",
    "sweep_main",
    "sweep_rows",
    "sweep_table",
    "trial_states",
    "value_text",
    "write_plan",
]

PLAN_FORMAT = "actrec-sweep-plan"
PLAN_VERSION = 1
PLAN_PREFIX = "sweep-"
#: What a trial can be, in the order ``actrec runs --sweep`` counts them.
TRIAL_STATES = ("finished", "running", "failed", "crashed", "interrupted", "pending")


class SweepError(RunError):
    """A sweep that cannot be found, read or run, in one sentence for the user."""


def value_text(value: Any) -> str:
    """An override's value as ``actrec train`` reads it on its command line (``true``, ``0.001``, ``lenet``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def driver_fields() -> dict[str, Any]:
    """This process as the one driving a sweep (the same fields a running summary names its writer by)."""
    return {
        "pid": os.getpid(),
        "hostname": socket.gethostname(),
        "process_start_ticks": process_start_ticks(os.getpid()),
    }


def plan_path(experiment_dir: Path, sweep_id: str) -> Path:
    return experiment_dir / f"{PLAN_PREFIX}{sweep_id}.json"


def write_plan(path: str | os.PathLike, plan: dict[str, Any]) -> Path:
    """Write a sweep's plan atomically (a temporary file, then a rename); returns its path."""
    path = Path(path)
    with atomic_path(path) as partial:
        partial.write_text(json.dumps(plan, indent=2, default=str) + "\n")
    return path


def read_plan(path: str | os.PathLike) -> dict[str, Any]:
    """A sweep's plan.

    Raises:
        SweepError: the file cannot be read or is not an actrec sweep plan.
    """
    path = Path(path)
    try:
        plan = json.loads(path.read_text())
    except OSError as error:
        raise SweepError(f"{path} cannot be read ({error.strerror or error}).") from None
    except (ValueError, UnicodeDecodeError):
        raise SweepError(f"{path} is not valid JSON; the sweep's plan is damaged.") from None
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT or not isinstance(plan.get("trials"), list):
        raise SweepError(f"{path} is not an actrec sweep plan.")
    if plan.get("format_version", 0) > PLAN_VERSION:
        raise SweepError(f"{path} was written by a newer actrec (plan version {plan.get('format_version')}).")
    for trial in plan["trials"]:
        if not isinstance(trial, dict) or not isinstance(trial.get("overrides"), dict):
            raise SweepError(f"{path} holds a trial without overrides; the sweep's plan is damaged.")
    return plan


@dataclass
class SweepRecord:
    """A sweep found on disk: its plan file and the plan."""

    path: Path
    plan: dict[str, Any]

    @property
    def sweep_id(self) -> str:
        return str(self.plan.get("id"))

    @property
    def name(self) -> str:
        return str(self.plan.get("name"))

    @property
    def experiment_dir(self) -> Path:
        return self.path.parent

    @property
    def varied(self) -> list[str]:
        """The keys the sweep varies, in the plan's order."""
        return [str(key) for key in self.plan.get("varied", [])]

    def driver_alive(self) -> bool:
        """Whether the process that last drove this sweep still runs."""
        driver = self.plan.get("driver")
        return isinstance(driver, dict) and writer_alive(driver)


def find_plans(root: str | os.PathLike) -> list[Path]:
    """Every sweep plan in ``root`` (an experiment folder) or one level down (a runs folder), oldest first."""
    root = Path(root)
    if not root.is_dir():
        raise SweepError(f"no runs folder at {root}.")
    found = list(root.glob(f"{PLAN_PREFIX}*.json")) + list(root.glob(f"*/{PLAN_PREFIX}*.json"))
    return sorted(found, key=lambda path: (path.stat().st_mtime, path.name))


def resolve_sweep(root: str | os.PathLike, name_or_id: str) -> SweepRecord:
    """The sweep under ``root`` whose id (or id prefix) is ``name_or_id``, else the newest of that name.

    Raises:
        SweepError: no sweep matches, or an id prefix matches several.
    """
    plans = []
    for path in find_plans(root):
        try:
            plans.append(SweepRecord(path, read_plan(path)))
        except SweepError:
            continue  # a damaged plan is not this sweep; one that matches by name is reported below
    by_id = [record for record in plans if record.sweep_id == name_or_id]
    if not by_id:
        by_id = [record for record in plans if record.sweep_id.startswith(name_or_id)]
        if len({record.sweep_id for record in by_id}) > 1:
            raise SweepError(f"sweep id {name_or_id} is ambiguous under {root}; give more of it.")
    if by_id:
        return by_id[-1]
    by_name = [record for record in plans if record.name == name_or_id]
    if by_name:
        return max(by_name, key=lambda record: float(record.plan.get("created") or 0))
    known = sorted({f"{record.name} ({record.sweep_id})" for record in plans})
    hint = f"; sweeps there: {', '.join(known[:6])}" if known else "; there are no sweeps there"
    raise SweepError(f"no sweep named or with id {name_or_id} under {root}{hint}.")


@dataclass
class TrialState:
    """One trial of a sweep as it stands: its plan entry, its latest run folder and its status."""

    index: int
    overrides: dict[str, Any]
    status: str
    run: Run | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    log: Path | None = None

    @property
    def folder(self) -> Run:
        """:attr:`run`, for a trial known to have one (as every trial :func:`sweep_run_folders` returns).

        Raises:
            SweepError: the trial has no run folder yet.
        """
        if self.run is None:
            raise SweepError(f"trial {self.index} has no run folder yet.")
        return self.run

    @property
    def metrics(self) -> dict[str, float]:
        metrics = self.summary.get("metrics")
        return metrics if isinstance(metrics, dict) else {}

    def label(self, keys: list[str] | None = None) -> str:
        """``model.lr=0.01 seed_everything=1``: the trial's values of ``keys`` (default: all overrides)."""
        shown = keys if keys is not None else list(self.overrides)
        return " ".join(f"{key}={value_text(self.overrides[key])}" for key in shown if key in self.overrides)

    def short_label(self, keys: list[str] | None = None) -> str:
        """``lr=0.01 seed=1``: :meth:`label` with each key's last part (``seed`` for ``seed_everything``)."""
        shown = keys if keys is not None else list(self.overrides)
        return " ".join(
            f"{_short_key(key)}={value_text(self.overrides[key])}" for key in shown if key in self.overrides
        )


def _short_key(key: str) -> str:
    return "seed" if key == "seed_everything" else key.rsplit(".", 1)[-1]


def _trial_runs(record: SweepRecord) -> dict[int, list[tuple[Run, dict[str, Any]]]]:
    """The run folders of each trial of ``record``, oldest attempt first."""
    found: dict[int, list[tuple[Run, dict[str, Any]]]] = {}
    try:
        runs = find_runs(record.experiment_dir)
    except RunError:
        return found
    for run in runs:
        try:
            summary = read_summary(run.summary_path)
        except RunError:
            continue
        sweep = summary.get("sweep") if summary else None
        if (
            summary is not None
            and isinstance(sweep, dict)
            and sweep.get("id") == record.sweep_id
            and isinstance(sweep.get("trial"), int)
        ):
            found.setdefault(sweep["trial"], []).append((run, summary))
    for attempts in found.values():
        attempts.sort(key=lambda pair: float(pair[1].get("started") or 0))
    return found


def trial_states(record: SweepRecord) -> list[TrialState]:
    """Every trial of the sweep with its status, in the plan's order."""
    by_trial = _trial_runs(record)
    driver_alive = record.driver_alive()
    states = []
    for position, trial in enumerate(record.plan["trials"]):
        index = int(trial.get("index", position))
        log = record.experiment_dir / trial["log"] if isinstance(trial.get("log"), str) else None
        attempt_started = float(trial.get("started") or 0)
        attempts = by_trial.get(index, [])
        # The newest run folder speaks for the trial unless the plan started a later attempt that made none.
        latest = attempts[-1] if attempts else None
        if latest is not None and float(latest[1].get("started") or 0) + 1.0 >= attempt_started:
            run, summary = latest
            status = run.status()
            error = summary.get("error") if isinstance(summary.get("error"), str) else None
            if status == "crashed" and not error:
                error = "the trial's process ended without a final summary"
            states.append(TrialState(index, trial["overrides"], status, run, summary, error, log))
            continue
        state = trial.get("state", "pending")
        if state == "running" and not driver_alive:
            state = "crashed"
        elif state not in TRIAL_STATES:
            state = "pending"
        error = trial.get("error") if isinstance(trial.get("error"), str) else None
        earlier_run, earlier_summary = latest if latest is not None else (None, {})
        states.append(TrialState(index, trial["overrides"], state, earlier_run, earlier_summary, error, log))
    return states


def new_sweep_id() -> str:
    """A short id, unique enough within one runs folder: the time, then four random hex digits."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + os.urandom(2).hex()


def status_counts(states: list[TrialState]) -> str:
    """``4 trials: 3 finished, 1 failed``: every status that occurs, in :data:`TRIAL_STATES` order."""
    counts = [(status, sum(state.status == status for state in states)) for status in TRIAL_STATES]
    return f"{len(states)} trial(s): " + ", ".join(f"{count} {status}" for status, count in counts if count)


def sweep_rows(record: SweepRecord, states: list[TrialState]) -> list[dict[str, Any]]:
    """One plain dict per trial: its index, its varied values, its run's row of ``actrec runs``, its error."""
    from actrec.runs.table import run_row

    rows = []
    for state in states:
        row: dict[str, Any] = {"trial": state.index, **{key: state.overrides.get(key) for key in record.varied}}
        if state.run is not None:
            found = run_row(state.run)
            row.update(
                run=found.run,
                path=found.path,
                recorded_steps=found.recorded_steps,
                global_step=found.global_step,
                val_acc=found.val_acc,
                test_acc=found.test_acc,
                store_bytes=found.store_bytes,
                wall_time_s=found.wall_time_s,
            )
        row.update(status=state.status, error=state.error, metrics=state.metrics)
        rows.append(row)
    return rows


def sweep_table(record: SweepRecord, states: list[TrialState], sort: str = "run", reverse: bool = False) -> str:
    """``actrec runs --sweep``'s text: a header line, one row per trial with the varied keys, the counts."""
    from actrec.runs.table import SORT_KEYS
    from actrec.runs.table import _cell as cell_text  # the same package's cell format

    rows = sweep_rows(record, states)
    field_name = "trial" if sort == "run" else SORT_KEYS.get(sort, sort)
    present = [row for row in rows if row.get(field_name) is not None]
    absent = [row for row in rows if row.get(field_name) is None]
    present.sort(key=lambda row: row[field_name], reverse=reverse)
    rows = present + absent
    columns = [("trial", "trial"), *((key, key) for key in record.varied)]
    columns += [("run", "run"), ("steps", "global_step"), ("rows", "recorded_steps")]
    columns += [("val acc", "val_acc"), ("test acc", "test_acc")]
    columns += [("wall", "wall_time_s"), ("status", "status")]
    texts = [[_cell(field_name, row.get(field_name), cell_text) for _, field_name in columns] for row in rows]
    widths = [max([len(heading)] + [len(line[i]) for line in texts]) for i, (heading, _) in enumerate(columns)]
    left = {"run", "status"}

    def line(values: list[str]) -> str:
        parts = [
            value.ljust(width) if field_name in left else value.rjust(width)
            for value, width, (_, field_name) in zip(values, widths, columns, strict=True)
        ]
        return "  ".join(parts).rstrip()

    header = f"sweep {record.name} ({record.sweep_id}), {record.path}"
    lines = [header, line([heading for heading, _ in columns]), *(line(values) for values in texts)]
    failed = [row for row in rows if row["status"] in ("failed", "crashed") and row.get("error")]
    lines += [f"  trial {row['trial']}: {row['error']}" for row in failed]
    lines.append(status_counts(states))
    return "\n".join(lines)


def _cell(field_name: str, value: Any, cell_text: Any) -> str:
    if isinstance(value, float) and field_name not in ("val_acc", "test_acc", "wall_time_s"):
        return f"{value:g}"
    if isinstance(value, bool):
        return value_text(value)
    return cell_text(field_name, value)


def sweep_main(root: str, name_or_id: str, *, sort: str = "run", reverse: bool = False, as_json: bool = False) -> int:
    """``actrec runs DIR --sweep NAME|ID``: the sweep's trials as a table (or JSON); returns the exit code."""
    from actrec.errors import run_guarded

    def action() -> int:
        record = resolve_sweep(root, name_or_id)
        states = trial_states(record)
        if as_json:
            rows = sweep_rows(record, states)
            print(json.dumps({"sweep": record.name, "id": record.sweep_id, "trials": rows}, indent=2, default=str))
        else:
            print(sweep_table(record, states, sort=sort, reverse=reverse))
        return 0

    return run_guarded("actrec runs", action)


def sweep_run_folders(
    root: str | os.PathLike, name_or_id: str, *, limit: int = 16, need_store: bool = True
) -> tuple[SweepRecord, list[TrialState], str | None]:
    """The finished trials of a sweep that have a run folder (and a store), at most ``limit`` of them.

    With more than ``limit``, the best ``limit`` by the sweep's metric are kept, in trial order.

    Returns:
        The sweep, the chosen trials, and a note saying which were left out (``None`` when none were).

    Raises:
        SweepError: no such sweep, or no finished trial with a store.
    """
    record = resolve_sweep(root, name_or_id)
    states = [state for state in trial_states(record) if state.status == "finished" and state.run is not None]
    if need_store:
        states = [state for state in states if state.folder.store_path.is_file()]
    if not states:
        raise SweepError(f"sweep {record.name} ({record.sweep_id}) has no finished trial with an activation store yet.")
    note = None
    if len(states) > limit:
        metric, mode = str(record.plan.get("metric", "test/acc")), str(record.plan.get("mode", "max"))
        scored = [state for state in states if isinstance(state.metrics.get(metric), int | float)]
        unscored = [state for state in states if state not in scored]
        scored.sort(key=lambda state: state.metrics[metric], reverse=mode == "max")
        kept = (scored + unscored)[:limit]
        note = (
            f"sweep {record.name}: showing {limit} of {len(states)} finished trials, the best by {metric} ({mode}); "
            f"left out: trials {', '.join(str(state.index) for state in states if state not in kept)}."
        )
        states = sorted(kept, key=lambda state: state.index)
    return record, states, note
