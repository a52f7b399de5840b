"""``summary.json``: the small record of a run that ``actrec runs`` lists without opening the store.

Written twice by ``actrec train``: at the start of training with ``state: "running"`` and the writer's
pid, host and process start time (so a run whose process died is told apart from one still running),
then at the end with ``finished``, ``failed`` (and the sentence that ended it) or ``interrupted``, and
the final metrics. Each write replaces the file atomically, so a reader never sees half of one.

A trial of ``actrec sweep`` is an ordinary ``actrec train`` process told its sweep through the
:data:`SWEEP_TRIAL_ENV` environment variable; its summary then also names the sweep (``sweep``: name, id,
trial index) and the trial's ``overrides`` (the varied keys and their values).
"""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from actrec.runs._layout import SUMMARY_FILENAME, process_start_ticks
from actrec.runs.atomic import atomic_path

__all__ = [
    "PLACEMENT_KEYS",
    "SUMMARY_FORMAT",
    "SUMMARY_VERSION",
    "SWEEP_TRIAL_ENV",
    "config_digest",
    "running_summary",
    "sweep_trial_fields",
    "sweep_trial_version",
    "write_summary",
]

SUMMARY_FORMAT = "actrec-run-summary"
SUMMARY_VERSION = 1

#: Config keys that say where a run goes, not what it computes; left out of the digest, so the same
#: training under two experiment names has one digest.
PLACEMENT_KEYS = ("experiment", "runs_dir", "ckpt_path", "config")

#: Set by ``actrec sweep`` for each trial's process: JSON ``{"sweep": {"name", "id", "trial"}, "overrides": {...}}``.
SWEEP_TRIAL_ENV = "ACTREC_SWEEP_TRIAL"


def config_digest(config: dict[str, Any]) -> str:
    """SHA-256 (first 16 hex digits) of the config without :data:`PLACEMENT_KEYS`, keys sorted."""
    kept = {key: value for key, value in config.items() if key not in PLACEMENT_KEYS}
    text = json.dumps(kept, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def sweep_trial_fields(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """``sweep`` and ``overrides`` for a summary, from :data:`SWEEP_TRIAL_ENV`; empty outside a sweep.

    A value that is not the JSON ``actrec sweep`` writes is ignored: it must never stop a training run.
    """
    text = (os.environ if environ is None else environ).get(SWEEP_TRIAL_ENV)
    if not text:
        return {}
    try:
        trial = json.loads(text)
    except ValueError:
        return {}
    sweep = trial.get("sweep") if isinstance(trial, dict) else None
    overrides = trial.get("overrides") if isinstance(trial, dict) else None
    if not isinstance(sweep, dict) or not isinstance(sweep.get("id"), str) or not isinstance(overrides, dict):
        return {}
    return {"sweep": sweep, "overrides": overrides}


def sweep_trial_version(environ: dict[str, str] | None = None) -> int | None:
    """The ``version_N`` the sweep's driver chose for this trial (from :data:`SWEEP_TRIAL_ENV`), else ``None``.

    Trials started together would otherwise race for the same next version folder.
    """
    text = (os.environ if environ is None else environ).get(SWEEP_TRIAL_ENV)
    try:
        version = json.loads(text).get("version") if text else None
    except (ValueError, AttributeError):
        return None
    return version if isinstance(version, int) and not isinstance(version, bool) and version >= 0 else None


def running_summary(**fields: Any) -> dict[str, Any]:
    """A summary in state "running" naming this process, plus ``fields`` (and the sweep, in a sweep's trial)."""
    return {
        "format": SUMMARY_FORMAT,
        "format_version": SUMMARY_VERSION,
        "state": "running",
        "pid": os.getpid(),
        "hostname": socket.gethostname(),
        "process_start_ticks": process_start_ticks(os.getpid()),
        "started": time.time(),
        **sweep_trial_fields(),
        **fields,
    }


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The one-number metrics as floats, by name: one-element tensors and numbers (a bool is not a metric)."""
    found = {}
    for name, value in metrics.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, numbers.Real) or hasattr(value, "numel") and value.numel() == 1:
            found[str(name)] = float(value)
    return dict(sorted(found.items()))


def finished_summary(
    facts: Mapping[str, Any],
    *,
    state: str,
    started: float,
    error: str | None = None,
    global_step: int | None = None,
    epoch: int | None = None,
    metrics: Mapping[str, Any] | None = None,
    store_path: str | os.PathLike | None = None,
    recorded_steps: int | None = None,
    **more: Any,
) -> dict[str, Any]:
    """The summary of a run that ended: ``running_summary(**facts)`` plus how and when it ended, the final step,
    the one-number ``metrics`` (:func:`scalar_metrics`), the store's path and size. One rule for every writer
    (``actrec train``, the Lightning callback, the plain-loop recorder); ``more`` adds writer-specific fields."""
    ended = time.time()
    store = Path(store_path) if store_path is not None else None
    summary = running_summary(**facts)
    summary.update(
        state=state,
        error=error,
        started=started,
        ended=ended,
        wall_time_s=round(ended - started, 3),
        global_step=global_step,
        epoch=epoch,
        metrics=scalar_metrics(metrics or {}),
        store_path=str(store) if store is not None else summary.get("store_path"),
        store_bytes=store.stat().st_size if store is not None and store.is_file() else None,
        recorded_steps=recorded_steps,
        **more,
    )
    return summary


def write_summary(run_folder: str | os.PathLike, summary: dict[str, Any]) -> Path:
    """Write ``summary`` as ``<run_folder>/summary.json``, atomically (a temporary file, then a rename).

    Returns:
        The summary's path.
    """
    path = Path(run_folder) / SUMMARY_FILENAME
    with atomic_path(path) as partial:
        partial.write_text(json.dumps(summary, indent=2, sort_keys=False, default=str) + "\n")
    return path
