"""Running a sweep's trials: each one ``python -m actrec.cli train`` with its overrides, on an executor.

Every trial is the same process ``actrec train`` is, told its sweep through
:data:`~actrec.runs.SWEEP_TRIAL_ENV`, its output in its own log file. One driver loop starts trials as
an executor has room, records each start and end in the plan (rewritten atomically, by this process
only), prints a progress line, and never lets one trial's failure stop the others.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

from actrec.console import StatusLine
from actrec.runs import VERSION_PREFIX
from actrec.runs.sweeps import (
    SWEEP_TRIAL_ENV,
    SweepError,
    SweepRecord,
    TrialState,
    driver_fields,
    trial_states,
    value_text,
    write_plan,
)

__all__ = [
    "Launcher",
    "LocalLauncher",
    "SweepOutcome",
    "TrialSpec",
    "best_trial",
    "next_version",
    "progress_text",
    "run_sweep",
    "run_trial",
    "trial_spec",
]

_POLL_SECONDS = 0.5
_STOP_GRACE_SECONDS = 30.0
_REFRESH_SECONDS = 2.0


@dataclass(frozen=True)
class TrialSpec:
    """What it takes to run one trial anywhere: plain strings only, so it travels to Ray and SLURM workers."""

    index: int
    command: tuple[str, ...]
    env: dict[str, str]
    log: str
    cwd: str


def trial_spec(
    record: SweepRecord, trial: dict[str, Any], threads: int | None, version: int | None = None
) -> TrialSpec:
    """The command, environment and log file of ``trial`` of the sweep ``record`` (into ``version_<version>``)."""
    plan = record.plan
    overrides = trial["overrides"]
    # A varied --config goes first: LightningCLI applies a config where it stands, so every flag after it wins.
    configs = [f"--config={value_text(value)}" for key, value in overrides.items() if key == "config"]
    command = [
        sys.executable,
        "-m",
        "actrec.cli",
        "train",
        *configs,
        *plan.get("train_args", []),
        # Where the plan is, not where it was written: a runs folder moved (or mounted elsewhere) still resumes.
        "--experiment",
        record.experiment_dir.name,
        "--runs_dir",
        str(record.experiment_dir.parent.resolve()),
        *(f"--{key}={value_text(value)}" for key, value in overrides.items() if key != "config"),
    ]
    marker = {
        "sweep": {"name": record.name, "id": record.sweep_id, "trial": int(trial["index"])},
        "overrides": overrides,
    }
    if version is not None:
        marker["version"] = version  # train's logger writes into this folder, not "the next free one"
    env = {SWEEP_TRIAL_ENV: json.dumps(marker)}
    if threads is not None:
        # torch reads these at start-up: the trials share the CPUs instead of each taking all of them.
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    log = record.experiment_dir / trial["log"]
    return TrialSpec(int(trial["index"]), tuple(command), env, str(log), str(plan.get("cwd") or os.getcwd()))


def next_version(experiment_dir: Path, reserved: set[int]) -> int:
    """The next ``version_N`` past every folder there and every number this driver already gave a trial.

    The driver picks each trial's version itself: trials started together would each take the same
    "next free" folder, as two ``actrec train`` processes started at the same moment would.
    """
    taken = set(reserved)
    if experiment_dir.is_dir():
        for entry in os.scandir(experiment_dir):
            suffix = entry.name.removeprefix(VERSION_PREFIX)
            if entry.name.startswith(VERSION_PREFIX) and suffix.isdigit():
                taken.add(int(suffix))
    return max(taken, default=-1) + 1


def _start(spec: TrialSpec) -> subprocess.Popen:
    Path(spec.log).parent.mkdir(parents=True, exist_ok=True)
    with open(spec.log, "ab") as log, _trials_hear_ctrl_c():
        log.write(f"$ {' '.join(spec.command)}\n".encode())
        log.flush()
        return subprocess.Popen(
            spec.command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=spec.cwd,
            env={**os.environ, **spec.env},
            # Its own session: a Ctrl-C at the terminal reaches the driver only, which stops each trial once.
            start_new_session=True,
        )


@contextlib.contextmanager
def _trials_hear_ctrl_c() -> Iterator[None]:
    """Start trials with SIGINT's default action even where the driver ignores it.

    A driver started as a background job of a script (``actrec sweep ... &``) ignores SIGINT, and a trial would
    inherit that: the driver's "stop as Ctrl-C would" then went unheard for the 30 s grace before the kill, and
    the trial never recorded "interrupted". The trial is in a session of its own, so no terminal's Ctrl-C reaches
    it; only the driver's own signal does.
    """
    ignored = (
        threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    )
    if ignored:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        yield
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_trial(spec: TrialSpec) -> int:
    """Run one trial to its end (on whatever machine calls this); returns ``actrec train``'s exit code."""
    process = _start(spec)
    try:
        return process.wait()
    except BaseException:
        _stop(process)
        raise


def _stop(process: subprocess.Popen) -> None:
    """Ask a trial to stop as Ctrl-C would (it records "interrupted"), then kill it if it does not."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=_STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Launcher(Protocol):
    """Where trials run. ``slots``: how many may run at once (``None``: all, the executor queues them)."""

    @property
    def slots(self) -> int | None:
        """How many trials may run at once; ``None``: all (the executor queues them)."""

    def start(self, specs: Sequence[TrialSpec]) -> list[Any]:
        """Start these trials; one handle each."""

    def poll(self, handle: Any) -> int | None:
        """The trial's exit code once it ended, else ``None``."""

    def stop(self, handles: Sequence[Any]) -> None:
        """Stop these trials: the driver is ending early (Ctrl-C, or an error in its loop)."""

    def threads(self) -> int | None:
        """CPU threads for each trial's torch, or ``None`` to leave it to the executor."""

    def close(self) -> None:
        """Release what the launcher started (a local Ray instance)."""


class LocalLauncher:
    """A pool of ``parallel`` trial processes on this machine, the CPU cores split between them."""

    def __init__(self, parallel: int | None) -> None:
        parallel = 1 if parallel is None else parallel
        if parallel < 1:
            raise SweepError(f"--parallel must be at least 1, got {parallel}.")
        self.slots = parallel

    def threads(self) -> int:
        return max(1, (os.cpu_count() or 1) // self.slots)

    def start(self, specs: Sequence[TrialSpec]) -> list[subprocess.Popen]:
        started: list[subprocess.Popen] = []
        try:
            for spec in specs:
                started.append(_start(spec))
        except BaseException:
            self.stop(started)  # the driver never gets their handles: it could not stop them
            raise
        return started

    def poll(self, handle: subprocess.Popen) -> int | None:
        return handle.poll()

    def stop(self, handles: Sequence[subprocess.Popen]) -> None:
        for process in handles:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in handles:
            _stop(process)

    def close(self) -> None:
        """Nothing to release: the driver has waited for or stopped (:meth:`stop`) every trial it started."""


def _last_line(log: Path | None) -> str | None:
    """The sentence a failed trial ended with: the last ``actrec train:`` line of its log, else its last line."""
    if log is None:
        return None
    try:
        with open(log, "rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - 16384))
            lines = [line.strip() for line in file.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return None
    said = [line for line in lines if line.startswith(("actrec train:", "actrec sweep:"))]
    chosen = said[-1] if said else (lines[-1] if lines else None)
    return chosen[:300] if chosen else None


def best_trial(states: Sequence[TrialState], metric: str, mode: str) -> TrialState | None:
    """The finished trial with the best ``metric`` (``mode`` ``max`` or ``min``), or ``None``."""
    scored = [state for state in states if state.status == "finished" and isinstance(state.metrics.get(metric), float)]
    if not scored:
        return None
    pick = max if mode == "max" else min
    return pick(scored, key=lambda state: state.metrics[metric])


def _metric_text(metric: str, value: float) -> str:
    return f"{value:.1%}" if metric.endswith("acc") else f"{value:.4g}"


def progress_text(record: SweepRecord, states: Sequence[TrialState]) -> str:
    """``sweep lr (20261202-…): 2/4 done, 2 running, 0 failed; best test/acc 93.1% (model.lr=0.01 …)``."""
    counts = {status: sum(state.status == status for state in states) for status in ("finished", "running")}
    failed = sum(state.status in ("failed", "crashed", "interrupted") for state in states)
    text = (
        f"sweep {record.name} ({record.sweep_id}): {counts['finished']}/{len(states)} done, "
        f"{counts['running']} running, {failed} failed"
    )
    metric, mode = str(record.plan.get("metric", "test/acc")), str(record.plan.get("mode", "max"))
    best = best_trial(states, metric, mode)
    if best is not None:
        text += f"; best {metric} {_metric_text(metric, best.metrics[metric])} ({best.label(record.varied)})"
    return text


@dataclass(frozen=True)
class SweepOutcome:
    """How a sweep (or a resumed part of it) ended: every trial's state after it."""

    record: SweepRecord
    states: list[TrialState]
    ran: list[int]

    @property
    def unfinished(self) -> list[TrialState]:
        return [state for state in self.states if state.status != "finished"]


def _save(record: SweepRecord) -> None:
    write_plan(record.path, record.plan)


def lock_path(record: SweepRecord) -> Path:
    """The file a driver holds an exclusive lock on for as long as it runs the sweep: ``<plan>.lock``."""
    return record.path.with_name(record.path.name + ".lock")


def _claim(record: SweepRecord) -> int:
    """Lock the sweep for this driver (non-blocking); the open descriptor holds the lock until it is closed.

    The lock, not the plan's ``driver`` fields, is what keeps two drivers apart: two ``--resume`` started
    together both see no live driver in the plan before either writes itself there.

    Raises:
        SweepError: another process holds the lock, or the lock file cannot be opened.
    """
    path = lock_path(record)
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by the trials (PEP 446)
    except OSError as error:
        raise SweepError(f"cannot lock sweep {record.sweep_id} at {path} ({error.strerror or error}).") from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        raise SweepError(
            f"sweep {record.sweep_id} is being run by another process (it holds {path}); "
            "wait for it to end or stop it first."
        ) from None
    return descriptor


def _stop_reason(error: BaseException) -> str:
    if isinstance(error, KeyboardInterrupt):
        return "the sweep was interrupted"
    if isinstance(error, SystemExit):
        return "the sweep's driver was stopped"
    return f"the sweep's driver stopped on an error ({type(error).__name__}: {error})"[:300]


def run_sweep(
    record: SweepRecord,
    launcher: Launcher,
    *,
    stream: TextIO | None = None,
    on_start: Callable[[SweepRecord], None] | None = None,
) -> SweepOutcome:
    """Run every trial of ``record`` that has not finished, recording starts and ends in its plan.

    Args:
        record: the sweep, its plan already written.
        launcher: where the trials run.
        stream: where progress goes (default stderr).
        on_start: called once the driver has claimed the sweep (tests use it).

    Raises:
        SweepError: the sweep is being run by another live process (it holds ``<plan>.lock``).
        BaseException: whatever ended the loop (Ctrl-C, an error); the running trials were stopped first and
            are marked "interrupted" in the plan.
    """
    stream = stream if stream is not None else sys.stderr
    lock = _claim(record)
    try:
        return _drive(record, launcher, stream, on_start)
    finally:
        os.close(lock)  # releases the lock; the file stays (removing it would let a waiting driver lock a ghost)


def _drive(
    record: SweepRecord, launcher: Launcher, stream: TextIO, on_start: Callable[[SweepRecord], None] | None
) -> SweepOutcome:
    states = trial_states(record)
    if record.driver_alive() and record.plan.get("driver", {}).get("pid") != os.getpid():
        driver = record.plan["driver"]
        raise SweepError(
            f"sweep {record.sweep_id} is being run by process {driver.get('pid')} on {driver.get('hostname')}; "
            "wait for it to end or stop it first."
        )
    todo = [state.index for state in states if state.status != "finished"]
    trials = {int(trial["index"]): trial for trial in record.plan["trials"]}
    record.plan["driver"] = driver_fields()
    _save(record)
    progress = StatusLine(stream)
    running: dict[int, Any] = {}
    waiting = list(todo)
    shown_at = 0.0
    reserved: set[int] = set()
    failed = False
    try:
        if on_start is not None:
            on_start(record)
        threads = launcher.threads()
        while waiting or running:
            room = len(waiting) if launcher.slots is None else launcher.slots - len(running)
            starting = waiting[: max(0, room)]
            if starting:
                waiting = waiting[len(starting) :]
                for index in starting:
                    trial = trials[index]
                    version = next_version(record.experiment_dir, reserved)
                    reserved.add(version)
                    trial.update(state="running", started=time.time(), ended=None, returncode=None, error=None)
                    trial.update(attempts=int(trial.get("attempts", 0)) + 1, version=version)
                _save(record)
                specs = [trial_spec(record, trials[index], threads, trials[index]["version"]) for index in starting]
                running.update(zip(starting, launcher.start(specs), strict=True))
            ended = [(index, code) for index, handle in running.items() if (code := launcher.poll(handle)) is not None]
            for index, code in ended:
                del running[index]
                trial = trials[index]
                log = record.experiment_dir / trial["log"]
                trial.update(
                    state="finished" if code == 0 else "failed",
                    ended=time.time(),
                    returncode=code,
                    error=None if code == 0 else (_last_line(log) or f"actrec train exited with code {code}"),
                )
            if ended:
                _save(record)
                now = {state.index: state for state in trial_states(record)}
                for index, code in ended:
                    state = now[index]
                    what = state.label(record.varied)
                    if state.status == "finished":
                        metric = str(record.plan.get("metric", "test/acc"))
                        value = state.metrics.get(metric)
                        shown = f", {metric} {_metric_text(metric, value)}" if isinstance(value, float) else ""
                        progress.note(f"trial {index} finished ({what}){shown}: {state.run.path if state.run else ''}")
                    else:
                        progress.note(f"trial {index} {state.status} ({what}): {state.error or f'exit code {code}'}")
            if starting or ended or time.monotonic() - shown_at >= _REFRESH_SECONDS:
                # Reading every trial's summary is cheap, but not every half second for a large experiment.
                progress.show(progress_text(record, trial_states(record)))
                shown_at = time.monotonic()
            if running:
                time.sleep(_POLL_SECONDS)
    except BaseException as error:
        failed = True
        # Any way out of the loop (Ctrl-C, a plan that cannot be saved, an executor's error, a bug) stops the
        # trials: they run in their own sessions, so nothing else would, and the plan would say "running".
        progress.close()
        try:
            launcher.stop(list(running.values()))
        finally:
            reason = _stop_reason(error)
            for index in todo:
                if trials[index].get("state") == "running":  # started, or marked and about to be
                    trials[index].update(state="interrupted", ended=time.time(), error=reason)
        raise
    finally:
        try:
            launcher.close()
        finally:
            record.plan["driver"] = {**record.plan["driver"], "ended": time.time()}
            record.plan["driver"]["pid"] = None  # no live driver: a resume may start at once
            try:
                _save(record)
            except OSError:
                if not failed:
                    raise
                # Already on the way out with an error: that one is the cause; the plan keeps its last state.
    progress.close()
    return SweepOutcome(record, trial_states(record), todo)
