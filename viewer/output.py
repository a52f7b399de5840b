"""Output files of every picture command: checked folders, atomic writes, leftovers of killed runs, file names.

``actrec render``, ``tensorboard``, ``report``, ``compare``, ``dynamics`` and ``inspect`` write through
these, so a killed command never leaves a half-written file where a good one was, and the next run
of any of them removes what a killed one left behind.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from actrec.runs.atomic import atomic_path, discard_unfinished  # re-exported: the one atomic write
from actrec.viewer.errors import ViewerError

__all__ = [
    "atomic_path",
    "discard_unfinished",
    "prepare_out_dir",
    "remove_leftovers",
    "safe_filename",
    "unique_stems",
]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
"""What a file-name part may not hold: anything but letters, digits, ``.``, ``_`` and ``-`` (one ``_`` per run)."""
_LEFTOVER = re.compile(r"^\..+\.(?:partial|old)-(\d+)(?:\.[A-Za-z0-9]+)?$")


def prepare_out_dir(out_dir: Path) -> Path:
    """Create ``out_dir`` if needed, prove it is writable, and remove what killed commands left in it.

    Raises:
        ViewerError: it cannot be created or written to.
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as error:
        reason = (error.strerror or str(error)).lower()
        raise ViewerError(f"cannot write to the output folder {out_dir}: {reason}.") from None
    remove_leftovers(out_dir)
    return out_dir


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def remove_leftovers(folder: Path) -> list[Path]:
    """Delete the temporary files and folders a killed command left in ``folder``.

    They are named ``.<name>.partial-<pid>[.<ext>]`` or ``.<name>.old-<pid>``; only those whose
    process is gone are removed, so a command running beside this one keeps its files.

    Returns:
        What was removed.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _LEFTOVER.match(entry.name)
        if match is None or _process_alive(int(match[1])):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def safe_filename(name: str) -> str:
    """A file-name part for a layer or file name (module names are already safe; each run of anything else
    becomes one ``_``)."""
    return _UNSAFE.sub("_", name)


def unique_stems(layers: Sequence[str], reserved: Sequence[str] = ()) -> dict[str, str]:
    """A file-name stem per layer, distinct even where two names map to one safe name (``a b``, ``a_b``).

    Layers whose safe names collide, or equal one of ``reserved`` (stems other files of the folder use,
    such as ``curves``), get a short hash of their real name appended, so neither file overwrites the other
    and the same layer gets the same file name in every render.
    """
    stems = {name: safe_filename(name) for name in layers}
    counts: dict[str, int] = {}
    for stem in stems.values():
        counts[stem.lower()] = counts.get(stem.lower(), 0) + 1  # case-insensitive file systems too
    taken = {stem.lower() for stem in reserved}
    for name, stem in stems.items():
        if counts[stem.lower()] > 1 or stem.lower() in taken:
            stems[name] = f"{stem}-{hashlib.sha1(name.encode()).hexdigest()[:6]}"
    return stems
