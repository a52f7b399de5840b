"""Atomic writes: the one way actrec replaces a file, so a killed process never leaves half of one behind.

The new content goes to ``.<stem>.partial-<pid><suffix>`` beside the final file and is renamed over it
(``os.replace``, atomic on one file system) only once it is complete. A killed writer leaves only its partial
file, which :func:`actrec.viewer.output.remove_leftovers` recognises by name and removes once its process is
gone. Summaries, sweep plans, dynamics files and every picture command's outputs are written through here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "discard_unfinished"]

_open_partials: set[Path] = set()  # this process's unfinished files, removed if it is told to stop


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; move it over ``final`` only if the block succeeds.

    The temporary name keeps ``final``'s suffix (writers that choose a format by it still do)::

        with atomic_path(run / "summary.json") as partial:
            partial.write_text(text)
    """
    final = Path(final)
    partial = final.with_name(f".{final.stem}.partial-{os.getpid()}{final.suffix}")
    _open_partials.add(partial)
    try:
        yield partial
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
        _open_partials.discard(partial)


def discard_unfinished() -> None:
    """Delete this process's files still being written by :func:`atomic_path` (from a signal handler)."""
    for partial in list(_open_partials):
        with contextlib.suppress(OSError):
            partial.unlink()
