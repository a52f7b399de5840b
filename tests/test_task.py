"""The store's ``task`` decides, once (``actrec.recording.shows_predictions``), whether readers draw predictions."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from viewer_fixtures import make_store

from actrec.compare import compare_runs
from actrec.recording import Recording, colors, shows_predictions
from actrec.report import build_report
from actrec.viewer import export_tensorboard, render_run
from actrec.viewer.plan import frame_layout, make_plan

# Palette indices of the green (right) and red (wrong) prediction ramps: only a predictions row uses them.
_MARKS = range(colors.PALETTE_SIZE - 18, colors.PALETTE_SIZE - 2)


def _marked(rgb: np.ndarray) -> int:
    """Pixels of an RGB image in the colours of the ✓/✗ ramps (the palette holds each colour once)."""
    marks = colors.PALETTE[list(_MARKS)].astype(np.int64)
    rgb = np.asarray(rgb, dtype=np.int64)
    return int(
        np.isin(
            rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2], marks[:, 0] << 16 | marks[:, 1] << 8 | marks[:, 2]
        ).sum()
    )


def _mark_pixels(path: Path) -> int:
    """Pixels of every frame of an image file (as Pillow composes them) drawn in the ✓/✗ ramps."""
    total = 0
    with Image.open(path) as image:
        for index in range(getattr(image, "n_frames", 1)):
            image.seek(index)
            total += _marked(np.asarray(image.convert("RGB")))
    return total


def _page_data(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text, re.S)
    return json.loads(match[1].replace("<\\/", "</"))


def test_the_rule_and_the_recording_s_task(tmp_path: Path) -> None:
    assert shows_predictions("classification")
    assert not any(shows_predictions(task) for task in ("reconstruction", "generation", "regression", "none"))
    make_store(tmp_path / "old", range(2))  # written before the attribute existed: a classifier
    make_store(tmp_path / "ae", range(2), task="reconstruction")
    with Recording.open(tmp_path / "old") as old, Recording.open(tmp_path / "ae") as ae:
        assert (old.task, old.shows_predictions) == ("classification", True)
        assert (ae.task, ae.shows_predictions) == ("reconstruction", False)


@pytest.mark.parametrize("task", ["reconstruction", "classification"])
def test_render_draws_a_predictions_row_for_classifiers_only(tmp_path: Path, task: str) -> None:
    make_store(tmp_path / "run", range(3), task=task)
    result = render_run(tmp_path / "run", layers=["net.conv1"], tile_size=16)
    gif, sheet = result.out_dir / "net.conv1.png", result.out_dir / "net.conv1.sheet.png"
    if task == "classification":  # the fixture's probe 2 is always wrong, probe 0 always right
        assert _mark_pixels(gif) > 0
        assert _mark_pixels(sheet) > 0
    else:
        assert _mark_pixels(gif) == 0
        assert _mark_pixels(sheet) == 0
    below_grid = {}
    for name in ("classification", "reconstruction"):
        folder = tmp_path / name
        make_store(folder, range(3), task=name)
        with Recording.open(folder) as recording:
            plan = make_plan(recording, ["net.conv1"], None, None, 1, 16)
            layout = frame_layout(recording, plan.layer_plans["net.conv1"], plan.rows)
            below_grid[name] = layout.height - layout.tile_box(layout.channels - 1, 0)[3]
    assert below_grid["reconstruction"] < below_grid["classification"]  # the row is left out, not just left blank


@pytest.mark.parametrize("task", ["reconstruction", "classification"])
def test_tensorboard_export_marks_predictions_for_classifiers_only(tmp_path: Path, task: str) -> None:
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    make_store(tmp_path / "run", range(2), task=task)
    result = export_tensorboard(tmp_path / "run", layers=["net.conv1"], tile_size=16)
    accumulator = EventAccumulator(str(result.export_dir), size_guidance={IMAGES: 0})
    accumulator.Reload()
    events = accumulator.Images("activations/net.conv1")
    assert len(events) == 2
    for event in events:
        marked = _marked(np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB")))
        assert (marked > 0) == (task == "classification")


@pytest.mark.parametrize("task", ["reconstruction", "classification"])
def test_report_lists_predictions_for_classifiers_only(tmp_path: Path, task: str) -> None:
    make_store(tmp_path / "run", range(3), task=task)
    result = build_report(tmp_path / "run")
    page = result.path.read_text(encoding="utf-8")
    data = _page_data(result.path)
    if task == "classification":
        assert data["predictions"] == [[0, 1, 0], [0, 2, 0], [0, 1, 0]]
        assert 'id="predictions"' in page
        assert "Probes and predictions" in page
    else:
        assert data["predictions"] is None
        assert 'class="labels predictions"' not in page
        assert 'id="sticky-predictions"' not in page
        assert "Probes and predictions" not in page


@pytest.mark.parametrize("task", ["reconstruction", "classification"])
def test_compare_marks_predictions_for_classifiers_only(tmp_path: Path, task: str) -> None:
    for name in ("a", "b"):
        make_store(tmp_path / name, range(3), task=task)
    result = compare_runs([tmp_path / "a", tmp_path / "b"], ["net.conv1"], out_dir=tmp_path / "out", tile_size=16)
    assert (_mark_pixels(result.animation) > 0) == (task == "classification")
