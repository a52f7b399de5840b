"""The one atomic write (:mod:`actrec.runs.atomic`): every file actrec replaces goes through it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from actrec.runs import atomic_path, discard_unfinished, write_summary
from actrec.runs.sweeps import write_plan
from actrec.viewer.output import remove_leftovers

ROOT = Path(__file__).resolve().parents[1]


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("disk full, say")


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_behind(tmp_path: Path) -> None:
    write_summary(tmp_path, {"state": "running"})
    write_plan(tmp_path / "sweep-a.json", {"trials": []})
    with pytest.raises(RuntimeError):
        write_summary(tmp_path, {"state": _Unprintable()})
    with pytest.raises(RuntimeError):
        write_plan(tmp_path / "sweep-a.json", {"trials": _Unprintable()})
    assert json.loads((tmp_path / "summary.json").read_text()) == {"state": "running"}
    assert json.loads((tmp_path / "sweep-a.json").read_text()) == {"trials": []}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["summary.json", "sweep-a.json"]


def test_a_stopped_writer_discards_its_partial_file_and_a_killed_ones_is_a_leftover(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "summary.json") as partial:
        partial.write_text("{")
        assert partial.name.startswith(".summary.partial-")
        assert partial.suffix == ".json"
        discard_unfinished()  # what a signal handler does
        assert not partial.exists()
        partial.write_text("{}")  # the block goes on and finishes
    killed = tmp_path / ".summary.partial-999999999.json"  # no such process
    killed.write_text("{")
    assert remove_leftovers(tmp_path) == [killed]


def test_no_module_writes_a_partial_file_and_renames_it_itself() -> None:
    """One implementation: summaries, sweep plans, dynamics and pictures all use actrec.runs.atomic_path."""
    copy = re.compile(r"\.partial-\{os\.getpid\(\)\}[^\n]*\n(?:.*\n){0,4}.*os\.replace")
    copies = [
        str(path.relative_to(ROOT))
        for folder in ("runfolder", "viewer", "dynamics", "report", "compare", "sweep", "inspection", "store")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path.name != "atomic.py" and copy.search(path.read_text())
    ]
    assert copies == []
