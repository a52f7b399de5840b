"""Two commands over one run agree: the rules they share live once, in actrec.recording.

Each test drives real commands (their CLIs, writing real files) over the same store and compares what
they produced, so a second copy of a rule in any of them would show up as a disagreement.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from viewer_fixtures import animation_length, make_store

from actrec.recording import Recording
from actrec.report.cli import report_main
from actrec.viewer import export_tensorboard, render_run
from actrec.viewer.cli import render_main

STEPS = range(0, 115, 5)  # 23 rows, recorded every 5 training steps: row indices and steps differ
STRIDE_10_STEPS = [0, 50, 100, 110]  # rows 0, 10, 20 and the last row, 22


def _page_steps(path: Path) -> list[int]:
    text = path.read_text(encoding="utf-8")
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text, re.S)
    return json.loads(match[1].replace("<\\/", "</"))["steps"]


def test_stride_10_shows_the_same_steps_in_render_report_and_tensorboard(tmp_path: Path, capsys) -> None:
    run = make_store(tmp_path / "run", STEPS).parent

    # Through the command lines, as a user types them.
    assert render_main([str(run), "--stride", "10", "--layers", "net.conv2", "--tile-size", "8"]) == 0
    printed = capsys.readouterr().out
    assert "x 4 step(s) (0 to 110)" in printed  # the last recorded step is drawn
    assert animation_length(run / "renders" / "net.conv2.png") == len(STRIDE_10_STEPS)
    assert report_main([str(run), "--stride", "10", "--quiet"]) == 0
    assert _page_steps(run / "report.html") == STRIDE_10_STEPS

    # Through the library, step by step: the same rows, from the one thinning rule.
    rendered = render_run(run, stride=10, layers=["net.conv1"], tile_size=8, progress=False)
    exported = export_tensorboard(run, stride=10, layers=["net.conv1"], tile_size=8, progress=False)
    with Recording.open(run) as recording:
        thinned = recording.timeline.global_steps[recording.timeline.thin(stride=10)].tolist()
    assert rendered.global_steps.tolist() == exported.global_steps.tolist() == thinned == STRIDE_10_STEPS


def test_a_stride_that_divides_the_rows_still_ends_at_the_last_step(tmp_path: Path) -> None:
    run = make_store(tmp_path / "run", STEPS).parent
    rendered = render_run(run, stride=11, layers=["net.conv1"], tile_size=8, progress=False)
    assert report_main([str(run), "--stride", "11", "--quiet"]) == 0
    assert rendered.global_steps.tolist() == _page_steps(run / "report.html") == [0, 55, 110]  # no repeated 110


def test_report_s_max_frames_thins_by_the_one_rule_and_render_with_its_stride_agrees(tmp_path: Path) -> None:
    run = make_store(tmp_path / "run", STEPS).parent  # 23 rows
    assert report_main([str(run), "--max-frames", "5", "--quiet"]) == 0
    shown = _page_steps(run / "report.html")
    with Recording.open(run) as recording:
        timeline = recording.timeline
        assert shown == timeline.global_steps[timeline.thin(stride=None, max_rows=5)].tolist()
    assert shown == [0, 25, 50, 75, 100, 110]  # stride 5 (ceil(23 / 5)): rows 0, 5, ..., 20 and the last
    rendered = render_run(run, stride=5, layers=["net.conv2"], tile_size=8, progress=False)
    assert rendered.global_steps.tolist() == shown
