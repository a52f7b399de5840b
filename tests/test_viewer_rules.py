"""The read side's rules, checked by driving several commands over one run: the same smoothing everywhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from viewer_fixtures import make_store, record

from actrec.compare.cli import compare_main
from actrec.report import charts
from actrec.report.cli import report_main
from actrec.store import StepRecord
from actrec.viewer import curves
from actrec.viewer.cli import render_main
from actrec.viewer.curves import smooth

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
