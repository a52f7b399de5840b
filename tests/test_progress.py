"""The one progress rule (:mod:`actrec.console`) as the commands show it: piped into a log, plain lines."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from viewer_fixtures import make_store


def test_render_piped_prints_plain_progress_lines(tmp_path: Path) -> None:
    store = make_store(tmp_path / "run", range(6))
    env = {**os.environ, "ACTREC_PROGRESS_EVERY": "0"}
    command = [sys.executable, "-m", "actrec.cli", "render", str(store), "--out", str(tmp_path / "out"), "--jobs", "1"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr
    assert "\x1b" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("rendering: ")]
    assert len(lines) >= 2  # one per frame with a 0 s interval, and the closing line
    assert "frames (100%)" in lines[-1]
    assert "done in" in lines[-1]


def test_work_shorter_than_one_interval_prints_nothing_in_a_log() -> None:
    """A report's dynamics of a small run must not add a progress line to a one-sentence refusal."""
    import io

    from actrec.console import Progress

    log = io.StringIO()
    with Progress(total=4, description="dynamics", unit="rows", stream=log, every_s=30.0) as progress:
        progress.update(4)
    assert log.getvalue() == ""
