"""Which run a path names, asked of :mod:`actrec.runs`: the one place dynamics, compare and report resolve runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from actrec.runs import Run, resolve_run


def run_paths(run: str | os.PathLike) -> tuple[Path, Path]:
    """``(store_path, run_dir)`` for a run folder, an experiment folder (its newest version) or a store file.

    An experiment folder's chosen version is named on stderr, as ``actrec render`` does.

    Raises:
        RunError: nothing there, not a run, or a run without a store.
    """
    resolved = resolve_run(run, need_store=True)
    if resolved.note:
        print(resolved.note, file=sys.stderr, flush=True)
    return Path(resolved.store_path), Path(resolved.path)


def run_label(run_dir: Path) -> str:
    """How people name a run: ``experiment/version_N`` (:attr:`actrec.runs.Run.name` of its run folder)."""
    return Run(run_dir).name


def run_batch_size(run_dir: Path) -> int | None:
    """The training batch size in the run's saved config (``data.batch_size``), or ``None`` if not there."""
    from actrec.runs import RunError

    try:
        config = resolve_run(run_dir).config()
    except RunError:
        return None
    value = (config.get("data") or {}).get("batch_size") if isinstance(config, dict) else None
    return int(value) if isinstance(value, int) and value > 0 else None
