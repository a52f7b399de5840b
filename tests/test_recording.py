"""actrec.recording: one way to open a run, one thinning rule, one empty check, damaged rows left out and named."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from viewer_fixtures import NUM_PROBES, SYMMETRIC_MAX, WRITER_SCRIPT, make_store, record

from actrec.recording import (
    ChannelChoice,
    Recording,
    RecordingError,
    colour_scale,
    layer_kind,
    parse_channels,
    thin_rows,
)
from actrec.runs import RunError
from actrec.store import LayerSpec, ProbeSet, StepRecord, StoreWriter

TESTS_DIR = str(Path(__file__).parent)


def _damage_row(store_path: Path, layer: str, row: int) -> None:
    """Scribble over one row's chunk of a layer, so it fails its checksum."""
    with h5py.File(store_path, "r") as store:
        chunk = store[f"layers/{layer}/activations"].id.get_chunk_info(row)
    with store_path.open("r+b") as file:
        file.seek(chunk.byte_offset + 2)
        file.write(b"\xab" * 32)


def test_one_thinning_rule_keeps_every_kth_row_and_the_last() -> None:
    steps = np.arange(0, 230, 10)  # 23 rows, steps 0..220
    assert thin_rows(steps, stride=10).tolist() == [0, 10, 20, 22]
    assert thin_rows(steps, stride=11).tolist() == [0, 11, 22]  # the last row once, not twice
    assert thin_rows(steps, stride=1).tolist() == list(range(23))
    # A range: steps in [50, 120), every 3rd of them, and the range's last row (step 110).
    assert steps[thin_rows(steps, start=50, stop=120, stride=3)].tolist() == [50, 80, 110]
    # stride=None: the smallest stride within max_rows (plus the last).
    assert thin_rows(steps, stride=None, max_rows=5).tolist() == [0, 5, 10, 15, 20, 22]
    assert thin_rows(steps, start=1000).size == 0
    with pytest.raises(RecordingError, match=r"^stride must be a positive integer, got 0\.$"):
        thin_rows(steps, stride=0)


def test_a_run_opens_from_its_folder_its_store_or_its_experiment(tmp_path: Path, capsys) -> None:
    experiment = tmp_path / "exp"
    make_store(experiment / "version_0", range(4))
    make_store(experiment / "version_1", range(6))
    (experiment / "version_2").mkdir()  # a newer version without a store is passed over
    (experiment / "version_2" / "config.yaml").write_text("data:\n  batch_size: 8\n")

    with Recording.open(experiment) as recording:
        assert recording.run_dir == experiment / "version_1"
        assert recording.name == "exp/version_1"
        assert recording.num_rows == 6
    announced = capsys.readouterr().err
    assert "taking version_1" in announced
    assert "version_2 has none" in announced

    with Recording.open(experiment / "version_0", announce=None) as recording:
        assert recording.store_path == experiment / "version_0" / "activations.h5"
        assert recording.layers == ["net.conv1", "net.conv2"]
    with Recording.open(experiment / "version_0" / "activations.h5") as recording:
        assert recording.run_dir == experiment / "version_0"
        assert recording.timeline.global_steps.tolist() == [0, 1, 2, 3]
    assert capsys.readouterr().err == ""  # nothing to announce for a run folder or a store file

    with pytest.raises(RunError, match="no activation store at"):
        Recording.open(tmp_path / "missing")


def test_an_empty_store_is_refused_once_with_one_message(tmp_path: Path) -> None:
    store = make_store(tmp_path / "run", [])
    with pytest.raises(
        RecordingError, match=r"activations\.h5 has no recorded steps yet, so there is nothing to show\.$"
    ):
        Recording.open(store)
    with Recording.open(store, allow_empty=True) as recording:  # a run that just started
        assert recording.num_rows == 0
        assert recording.timeline.global_steps.size == 0


def test_timeline_steps_epochs_samples_and_series(tmp_path: Path) -> None:
    def final_row(step: int) -> StepRecord:
        # The recorder's end-of-training row carries the next epoch's number; it belongs to the last epoch.
        return record(step, epoch=3 if step == 9 else step // 4)

    run = tmp_path / "run"
    make_store(run, [0, 4, 8, 9], record_fn=final_row)  # val/loss and val/acc logged at step 9
    (run / "config.yaml").write_text("data:\n  batch_size: 32\ntrainer:\n  max_epochs: 3\n")
    with Recording.open(run) as recording:
        timeline = recording.timeline
        assert timeline.num_rows == 4
        assert timeline.global_steps.tolist() == [0, 4, 8, 9]
        assert timeline.epochs.tolist() == [0, 1, 2, 2]
        assert recording.batch_size == 32
        assert timeline.samples_seen.tolist() == [0, 128, 256, 288]
        steps, values = timeline.series("val/acc")
        assert steps.tolist() == [9]
        assert values.tolist() == [0.75]
        steps, loss = timeline.series("batch_loss")
        assert steps.tolist() == [0, 4, 8, 9]
        assert np.isnan(loss[0])
        assert loss[1] == pytest.approx(2.0 / 5)
        assert timeline.series("train/never").__len__() == 2
        assert timeline.series("train/never")[0].size == 0
        # Probe 1 is right on even steps only: predictions per row from the stored logits.
        assert timeline.predictions[:, 1].tolist() == [1, 1, 1, 2]
        assert timeline.nearest_rows([5, 100]).tolist() == [1, 3]
        assert timeline.thin(stride=2).tolist() == [0, 2, 3]
        with pytest.raises(RecordingError, match=r"^no recorded step lies in the chosen range; .* steps 0 to 9\.$"):
            timeline.thin(start=50)


def test_layer_views_kind_scale_and_channel_plan(tmp_path: Path) -> None:
    with Recording.open(make_store(tmp_path / "run", range(6))) as recording:
        conv1, conv2 = recording.layer("net.conv1"), recording.layer("net.conv2")
        assert (conv1.kind, conv1.sample_shape, conv1.width) == ("maps", (3, 8, 8), 3)
        # The one colour-scale rule: tanh is fixed; symmetric is the percentile of |a| over sampled rows.
        assert (conv1.scale.one_sided, conv1.scale.limit) == (False, 1.0)
        assert conv2.scale.limit == pytest.approx(SYMMETRIC_MAX)
        every_row = recording.store.activations("net.conv2")
        assert conv2.scale == colour_scale("symmetric", every_row)
        assert conv1.channel_plan().select is None
        assert conv1.channel_plan("2,0").labels == (2, 0)
        assert conv1.channel_plan(ChannelChoice(top=1)).select == (0,)  # only channel 0 changes over training
        with pytest.raises(RecordingError, match=r"^layer 'net.conv1' has no channel 7; it records 3 channels\.$"):
            conv1.channel_plan("7")
        with pytest.raises(RecordingError, match=r"^run has no layer 'net.conv9'; it records: net.conv1, net.conv2\.$"):
            recording.layer("net.conv9")
        with pytest.raises(RecordingError, match=r"^unknown layer 'x'; this store records: net.conv1, net.conv2\.$"):
            recording.check_layers(["x"])
    assert layer_kind((4, 5)) == "tokens"
    assert layer_kind((7,)) == "vector"
    with pytest.raises(ValueError, match=r"per-probe shape \(1, 2, 3, 4\)"):
        layer_kind((1, 2, 3, 4))
    with pytest.raises(RecordingError, match="channels takes indices"):
        parse_channels("x,y")


def test_wide_layers_plan_the_channels_that_vary_most_and_say_so(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    probes = ProbeSet(np.zeros((2, 1, 4, 4), np.float32), np.arange(2), np.arange(2), ["a", "b"])
    with StoreWriter.create(
        folder / "activations.h5",
        run_id="wide",
        config={},
        probes=probes,
        layers=[LayerSpec("wide", (40,), "Linear", "symmetric")],
        num_classes=2,
        background=False,
    ) as writer:
        for step in range(4):
            values = np.zeros((2, 40), np.float32)
            values[:, 33] = step * 3.0  # unit 33 varies most
            writer.append(StepRecord(step, 0, 1.0, 0.5, np.zeros((2, 2), np.float32), {"wide": values}, wall_time=0.0))
    with Recording.open(folder) as recording:
        plan = recording.layer("wide").channel_plan()
    assert len(plan.labels) == 16
    assert 33 in plan.labels
    assert plan.note.startswith("wide: drawing 16 of its 40 units, the 16 that vary most over training")


def test_damaged_rows_are_left_out_and_listed(tmp_path: Path) -> None:
    store_path = make_store(tmp_path / "run", range(8))
    _damage_row(store_path, "net.conv2", 4)
    with Recording.open(store_path) as recording:
        view = recording.layer("net.conv2")
        read = view.read(np.arange(8))
        assert read.rows.tolist() == [0, 1, 2, 3, 5, 6, 7]
        assert read.damaged == [4]
        assert read.values.shape == (7, NUM_PROBES, 2, 4, 4)
        assert view.scale.limit == pytest.approx(SYMMETRIC_MAX)  # the scale comes from the good rows
        damaged: list[int] = []
        assert [row for row, _ in view.iter_rows(np.arange(3, 6), damaged)] == [3, 5]
        assert damaged == [4]
        with pytest.raises(Exception, match="step 4|row 4|damaged|checksum"):
            list(view.iter_rows(np.arange(8)))  # without a list to take them, damage is raised


@pytest.mark.slow  # a writer process
def test_refresh_reads_rows_a_running_writer_flushed_since(tmp_path: Path) -> None:
    store_path = tmp_path / "live" / "activations.h5"
    store_path.parent.mkdir()
    script = WRITER_SCRIPT.format(tests_dir=TESTS_DIR)
    writer = subprocess.Popen([sys.executable, "-c", script, str(store_path), "40"], stdout=subprocess.PIPE, text=True)
    try:
        assert int(writer.stdout.readline()) >= 1  # the store exists with at least one row
        with Recording.open(store_path) as recording:
            first = recording.num_rows
            deadline = time.monotonic() + 30
            while recording.refresh() <= first and time.monotonic() < deadline:
                time.sleep(0.05)
            assert recording.num_rows > first
            assert recording.timeline.global_steps.tolist() == list(range(recording.num_rows))
            assert recording.layer("net.conv1").read([recording.num_rows - 1]).damaged == []
    finally:
        writer.wait(timeout=60)
    assert writer.returncode == 0


def test_closing_releases_the_store(tmp_path: Path) -> None:
    store_path = make_store(tmp_path / "run", range(3))
    recording = Recording.open(store_path)
    recording.close()
    recording.close()  # idempotent
    with h5py.File(store_path, "r+") as store:  # no reader holds the file any more
        assert store["steps/global_step"].shape[0] == 3
