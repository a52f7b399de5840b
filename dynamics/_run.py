"""Where a run's files are: the one place the dynamics, compare and report commands ask.

Until ``actrec.runs`` owns the run folder's layout, this asks the store module (which already
resolves a run folder, an experiment folder or a store file) and puts outputs beside the store.
"""

from __future__ import annotations

import os
from pathlib import Path

from actrec.store import resolve_store_path


def run_paths(run: str | os.PathLike) -> tuple[Path, Path]:
    """``(store_path, run_dir)`` for a run folder, an experiment folder (its newest version) or a store file."""
    store_path = resolve_store_path(run)
    return store_path, store_path.parent


def run_label(store_path: Path) -> str:
    """How people name a run: ``experiment/version_N`` (the store's two parent folders)."""
    return "/".join(store_path.resolve().parts[-3:-1])
