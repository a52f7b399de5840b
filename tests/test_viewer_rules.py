"""The read side's rules, checked by driving several commands over one run: the same smoothing everywhere."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from viewer_fixtures import CLASS_NAMES, NUM_PROBES, animation_frames, make_store, probe_set, record

from actrec.compare.cli import compare_main
from actrec.report import charts
from actrec.report.cli import report_main
from actrec.store import LayerSpec, ProbeSet, StepRecord, StoreWriter
from actrec.viewer import FrameLayout, colour_scale, curves, frame_title
from actrec.viewer.cli import render_main
from actrec.viewer.curves import smooth

RED_END = (178, 24, 43)  # literal: the documented colour of -limit

NUM_STEPS = 40


def _batch_loss(step: int) -> float:
    """Starts at 2.29 and 2.26, like a 10-class net's first batches, then falls to ~0.3 with noise."""
    noise = 0.15 * np.sin(1.7 * step)
    return float(0.3 + 1.99 * np.exp(-step / 6) + (0 if step < 2 else noise)) - 0.03 * (step == 1)


def _record(step: int) -> StepRecord:
    base = record(step)
    return StepRecord(
        global_step=base.global_step,
        epoch=base.epoch,
        batch_loss=_batch_loss(step),
        batch_acc=min(1.0, 0.14 + 0.02 * step),
        logits=base.logits,
        activations=base.activations,
        wall_time=base.wall_time,
    )


def test_smooth_is_tensorboards_debiased_ema() -> None:
    values = np.array([np.nan, 2.29, 2.26, 1.0, np.inf, 0.5])
    weight = 0.6
    expected = values.copy()
    last, count = 0.0, 0
    for index, value in enumerate(values):
        if np.isfinite(value):  # TensorBoard's own loop (tf-smoothing), transcribed
            last = last * weight + (1 - weight) * value
            count += 1
            expected[index] = last / (1 - weight**count)
    result = smooth(values, weight)
    np.testing.assert_allclose(result, expected)
    assert result[1] == 2.29  # the first finite value is its own smoothed value
    assert np.isnan(result[0])  # non-finite points are left as they are
    assert result[4] == np.inf
    assert smooth(np.full(4, 3.0)).tolist() == [3.0] * 4
    # Causal: changing a later value never moves an earlier smoothed point.
    changed = values.copy()
    changed[5] = 100.0
    np.testing.assert_array_equal(smooth(changed, weight)[:5], result[:5])
    with pytest.raises(ValueError, match=r"weight must be in \[0, 1\), got 1\.0"):
        smooth(values, 1.0)


def _capture(monkeypatch: pytest.MonkeyPatch, cls: type, into: list) -> None:
    original = cls.__init__

    def init(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        into.append(self)

    monkeypatch.setattr(cls, "__init__", init)


def test_render_compare_and_report_start_the_smoothed_loss_at_the_first_batch_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = make_store(tmp_path / "exp" / "version_0", range(NUM_STEPS), record_fn=_record).parent
    other = make_store(tmp_path / "exp" / "version_1", range(NUM_STEPS), record_fn=_record, run_id="b").parent
    series: list[curves.Series] = []
    lines: list[charts.Line] = []
    _capture(monkeypatch, curves.Series, series)
    _capture(monkeypatch, charts.Line, lines)

    assert render_main([str(run), "--layers", "net.conv2", "--tile-size", "4", "--quiet"]) == 0
    rendered = [item for item in series if item.label == "train batch (smoothed)"]
    series.clear()
    assert compare_main([str(run), str(other), "--layer", "net.conv2", "--out", str(tmp_path / "cmp"), "--quiet"]) == 0
    compared = [item for item in series if item.label.startswith("exp/version_0") and len(item.values) == NUM_STEPS]
    assert report_main([str(run), "--compare", str(other)]) == 0
    reported = [line for line in lines if line.label.startswith("train batch, smoothed")]

    first_batch_loss = _batch_loss(0)
    assert first_batch_loss == pytest.approx(2.29)
    firsts = {
        "render": rendered[0].values[0],  # the loss panel is drawn first
        "compare": compared[0].values[0],
        "report": reported[0].values[0],
        "report, compared run": reported[1].values[0],
    }
    for command, value in firsts.items():
        assert value == pytest.approx(first_batch_loss, rel=0.05), command
    assert len(set(firsts.values())) == 1
    # The whole smoothed loss agrees, not only its first point; the old centred window started at ~1.6.
    np.testing.assert_allclose(compared[0].values, rendered[0].values)
    np.testing.assert_allclose(reported[0].values, rendered[0].values)


def _gate_store(folder: Path) -> Path:
    """A layer the recorder declared ``sigmoid`` whose values are not: channel 0 at -0.165, channel 1 at +0.15."""
    folder.mkdir(parents=True)
    writer = StoreWriter.create(
        folder / "activations.h5",
        run_id="gate",
        config={},
        probes=probe_set(),
        layers=[LayerSpec("blocks.0.0.se", (2, 4, 4), "SqueezeExcite", "sigmoid")],
        num_classes=3,
        background=False,
    )
    gate = np.zeros((NUM_PROBES, 2, 4, 4), np.float32)
    gate[:, 0], gate[:, 1] = -0.165, 0.15
    with writer:
        for step in range(3):
            base = record(step)
            writer.append(StepRecord(step, 0, 1.0, 0.5, base.logits, {"blocks.0.0.se": gate}, wall_time=base.wall_time))
    return folder


def test_a_declared_sigmoid_layer_with_negative_values_renders_them_red_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _gate_store(tmp_path / "run")
    assert render_main([str(run), "--tile-size", "32", "--quiet"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "blocks.0.0.se" in line]
    assert notes == [
        "note: blocks.0.0.se: declared sigmoid (0 to 1), but its values reach -0.165; "
        "drawn on the symmetric rule, -0.165 red to +0.165 blue."
    ]
    # The report's colour bar for the layer says the same: its numbers and why they are not 0 .. 1.
    assert report_main([str(run)]) == 0
    page = (run / "report.html").read_text(encoding="utf-8")
    assert re.search(r'<span class="cbar-ticks"><span>-0\.165</span><span>0</span><span>\+0\.165</span>', page)
    assert "declared sigmoid (0 to 1), but its values reach -0.165" in page
    layout = FrameLayout(
        (2, 4, 4),
        num_probes=NUM_PROBES,
        scale=colour_scale("sigmoid", np.array([-0.165, 0.15])),
        probe_images=probe_set().images,
        labels=np.arange(NUM_PROBES),
        class_names=CLASS_NAMES,
        tile_size=32,
        longest_title=frame_title("blocks.0.0.se", 2, 0),
    )
    rgb = animation_frames(run / "renders" / "blocks.0.0.se.png")[0]
    for probe in range(NUM_PROBES):
        left, top, right, bottom = layout.tile_box(0, probe)
        assert {tuple(c) for c in rgb[top:bottom, left:right].reshape(-1, 3).tolist()} == {RED_END}
        left, top, right, bottom = layout.tile_box(1, probe)
        (blue,) = {tuple(c) for c in rgb[top:bottom, left:right].reshape(-1, 3).tolist()}
        assert blue[2] > blue[0]  # +0.15 of 0.165: nearly full blue


def test_the_width_hint_blames_the_probes_when_they_make_the_width_and_names_cli_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    probes = 300
    run = tmp_path / "run"
    run.mkdir()
    images = np.zeros((probes, 1, 4, 4), np.float32)
    writer = StoreWriter.create(
        run / "activations.h5",
        run_id="wide",
        config={},
        probes=ProbeSet(images, np.zeros(probes, np.int64), np.arange(probes), CLASS_NAMES),
        layers=[LayerSpec("net.conv", (2, 4, 4), "Conv2d", "symmetric")],
        num_classes=3,
        background=False,
    )
    with writer:
        for step in range(2):
            values = np.full((probes, 2, 4, 4), step - 0.5, np.float32)
            writer.append(StepRecord(step, 0, 1.0, 0.5, np.zeros((probes, 3), np.float32), {"net.conv": values}))
    assert render_main([str(run), "--quiet", "--steps", "0:1"]) == 0  # ten probes by default: no width hint
    assert [line for line in capsys.readouterr().err.splitlines() if "pixels wide" in line] == []
    assert render_main([str(run), "--quiet", "--steps", "0:1", "--probes", "all"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "pixels wide" in line]
    assert len(notes) == 1
    assert re.fullmatch(
        r"note: net\.conv: frames are \d+ pixels wide, from its 300 probes side by side; "
        r"fewer --probes or a smaller --tile-size make them narrower\.",
        notes[0],
    )
