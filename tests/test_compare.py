"""``actrec compare``: alignment on constructed arrays, and real GIFs and PNGs from real stores."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from viewer_fixtures import make_store

from actrec.compare import (
    CompareError,
    aligned_positions,
    compare_runs,
    parse_layers,
    rows_at,
    shared_timeline,
    side_by_side,
)
from actrec.compare.align import fractional_epochs
from actrec.compare.cli import compare_main
from actrec.errors import UserError
from actrec.recording import colors


def test_parse_layers() -> None:
    assert parse_layers(["net.conv1"], 3) == ["net.conv1"] * 3
    assert parse_layers(["B=features.2", "a=net.conv3"], 2) == ["net.conv3", "features.2"]
    with pytest.raises(CompareError, match="no layer for run B"):
        parse_layers(["A=net.conv3"], 2)
    with pytest.raises(CompareError, match="names no run; use A to B"):
        parse_layers(["C=net.conv3", "A=x", "B=y"], 2)
    with pytest.raises(CompareError, match="either one layer for every run"):
        parse_layers(["net.conv1", "A=x"], 2)


def test_alignment_by_step_epoch_and_samples() -> None:
    steps, epochs = np.array([0, 10, 20, 30, 40]), np.array([0, 0, 1, 1, 2])
    assert aligned_positions(steps, epochs, "step").tolist() == [0, 10, 20, 30, 40]
    assert aligned_positions(steps, epochs, "epoch").tolist() == [0, 0, 1, 1, 2]
    assert aligned_positions(steps, epochs, "samples", batch_size=64).tolist() == [0, 640, 1280, 1920, 2560]
    with pytest.raises(ValueError, match="batch size"):
        aligned_positions(steps, epochs, "samples")
    # The latest row at or before each position; the first row before the run started.
    assert rows_at(np.array([5, 10, 20]), np.array([0, 5, 9, 10, 25])).tolist() == [0, 0, 0, 1, 2]
    # By epoch, the last recorded row of each epoch stands for it.
    assert rows_at(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 2])).tolist() == [1, 3, 4]
    assert shared_timeline([np.array([0, 2, 4]), np.array([0, 3])], 10).tolist() == [0, 2, 3, 4]
    assert shared_timeline([np.arange(100)], 5).tolist() == [0, 25, 50, 74, 99]
    assert fractional_epochs(steps, epochs).tolist() == [0.0, 0.5, 1.0, 1.5, 2.0]


def test_side_by_side() -> None:
    left = np.full((3, 2), 5, np.uint8)
    right = np.full((1, 4), 7, np.uint8)
    canvas = side_by_side([left, right], gap=1)
    assert canvas.shape == (3, 7)
    assert (canvas[:, :2] == 5).all()
    assert (canvas[0, 3:] == 7).all()
    assert (canvas[1:, 3:] == colors.ZERO_INDEX).all()
    assert (canvas[:, 2] == colors.ZERO_INDEX).all()


def _frames(path: Path) -> list[np.ndarray]:
    image = Image.open(path)
    frames = []
    for index in range(image.n_frames):
        image.seek(index)
        frames.append(np.asarray(image.convert("RGB")))
    return frames


def test_compare_by_step_animates_both_runs_each_at_its_latest_step(tmp_path: Path) -> None:
    run_a = make_store(tmp_path / "a" / "version_0", range(0, 6)).parent
    run_b = make_store(tmp_path / "b" / "version_0", [0, 4], run_id="b").parent
    result = compare_runs([run_a, run_b], ["net.conv1"], out_dir=tmp_path / "out", tile_size=8)
    assert result.timeline.tolist() == [0, 1, 2, 3, 4, 5]
    assert result.labels == ("a/version_0", "b/version_0")
    frames = _frames(result.animation)
    assert len(frames) == 6
    half = frames[0].shape[1] // 2
    # Run A changes every frame; run B only where its recorded step changes (at step 4).
    for before, after, step in zip(frames, frames[1:], range(1, 6), strict=False):
        assert not np.array_equal(before[:, :half], after[:, :half])
        assert np.array_equal(before[:, half:], after[:, half:]) == (step != 4)
    assert Image.open(result.curves).size == (1120, 790)


def test_compare_writes_an_animated_png_as_render_does_and_the_same_frames_as_gif(tmp_path: Path) -> None:
    run_a = make_store(tmp_path / "a" / "version_0", range(0, 6)).parent
    run_b = make_store(tmp_path / "b" / "version_0", [0, 4], run_id="b").parent
    apng = compare_runs([run_a, run_b], ["net.conv1"], out_dir=tmp_path / "p", tile_size=8)
    gif = compare_runs([run_a, run_b], ["net.conv1"], out_dir=tmp_path / "g", tile_size=8, video_format="gif")
    assert (apng.animation.name, gif.animation.name) == ("compare-net.conv1.png", "compare-net.conv1.gif")
    assert Image.open(apng.animation).format == "PNG"
    assert Image.open(gif.animation).format == "GIF"
    for from_png, from_gif in zip(_frames(apng.animation), _frames(gif.animation), strict=True):
        np.testing.assert_array_equal(from_png, from_gif)
    with pytest.raises(CompareError, match=r"^video_format must be one of apng, gif, mp4, got 'webp'\.$"):
        compare_runs([run_a, run_b], ["net.conv1"], out_dir=tmp_path / "w", video_format="webp")


def test_compare_different_layers_by_epoch_and_by_samples(tmp_path: Path) -> None:
    run_a = make_store(tmp_path / "a" / "version_0", range(0, 8)).parent  # 4 steps per epoch
    run_b = make_store(tmp_path / "b" / "version_0", range(0, 8), run_id="b").parent
    result = compare_runs([run_a, run_b], ["A=net.conv1", "B=net.conv2"], align="epoch", out_dir=tmp_path / "e")
    assert result.layers == ("net.conv1", "net.conv2")
    assert result.animation.name == "compare-net.conv1-net.conv2.png"
    assert len(_frames(result.animation)) == 2  # epochs 0 and 1
    for run, batch_size in ((run_a, 32), (run_b, 64)):
        (run / "config.yaml").write_text(f"data:\n  batch_size: {batch_size}\n")
    result = compare_runs([run_a, run_b], ["net.conv1"], align="samples", out_dir=tmp_path / "s")
    # A sees 32 samples a step, B 64: the union of both runs' positions.
    assert result.timeline.tolist() == sorted({*range(0, 8 * 32, 32), *range(0, 8 * 64, 64)})


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["A"], r"compare needs at least two runs\."),
        (["A", "B"], r"name the layer to compare with --layer"),
        (["A", "B", "--layer", "nope"], r"a/version_0 has no layer 'nope'; it records: net.conv1, net.conv2\."),
        (["A", "B", "--layer", "net.conv1", "--align", "samples"], r"has no batch size in its config.yaml"),
        (["A", "missing", "--layer", "net.conv1"], r"no activation store at"),
        (["A", "B", "--layer", "net.conv1", "--tile-size", "513"], r"--tile-size must be between 4 and 512 pixels"),
        (["A", "B", "--layer", "net.conv1", "--tile-size", "3"], r"--tile-size must be between 4 and 512 pixels"),
    ],
)
def test_errors_are_one_sentence_and_write_nothing(tmp_path: Path, capsys, arguments: list[str], message: str) -> None:
    run_a = make_store(tmp_path / "a" / "version_0", range(3)).parent
    run_b = make_store(tmp_path / "b" / "version_0", range(3), run_id="b").parent
    paths = {"A": str(run_a), "B": str(run_b), "missing": str(tmp_path / "missing")}
    out = tmp_path / "out"
    assert compare_main([paths.get(item, item) for item in arguments] + ["--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("actrec compare: ")
    assert re.search(message, err), err
    assert not out.exists() or not any(out.iterdir())


def test_curves_of_near_constant_values_draw(tmp_path: Path) -> None:
    # CKA to the final step is 1 up to rounding (1 - 2e-16 .. 1 + 2e-16) when a layer never changes;
    # the axis ticks collapsed to one value and formatting them divided by zero.
    from actrec.dynamics.plots import panel_figure
    from actrec.viewer.curves import Series, nice_ticks

    assert len(set(nice_ticks(1 - 2e-16, 1 + 2e-16))) > 1
    values = np.array([1 - 2e-16, 1.0, 1 + 2e-16])
    image = panel_figure([("CKA", [Series("a", np.arange(3.0), values, (0, 0, 0))], False)], title="t", legend=[])
    assert image.ndim == 3


def _wide_store(folder: Path, channels: int) -> Path:
    """A finished store of one ``(channels, 4, 4)`` layer whose channels all vary."""
    from viewer_fixtures import NUM_PROBES, logits_for, predictions_at, probe_set

    from actrec.store import LayerSpec, StepRecord, StoreWriter

    folder.mkdir(parents=True)
    writer = StoreWriter.create(
        folder / "activations.h5",
        run_id=f"wide-{channels}",
        config={},
        probes=probe_set(),
        layers=[LayerSpec("wide", (channels, 4, 4), "Conv2d", "symmetric")],
        num_classes=3,
        background=False,
    )
    with writer:
        for step in range(3):
            values = np.random.default_rng(step).normal(size=(NUM_PROBES, channels, 4, 4)).astype(np.float32)
            writer.append(
                StepRecord(
                    global_step=step,
                    epoch=0,
                    batch_loss=1.0,
                    batch_acc=0.5,
                    logits=logits_for(predictions_at(step)),
                    activations={"wide": values},
                    wall_time=1_000_000.0 + step,
                )
            )
    return folder


def test_compare_draws_the_channels_render_would_and_bounds_the_tile_size(tmp_path: Path) -> None:
    from actrec.viewer.frames import DEFAULT_MAX_CHANNELS

    wide = [_wide_store(tmp_path / name, 64) for name in ("a", "b")]
    capped = [_wide_store(tmp_path / f"{name}16", DEFAULT_MAX_CHANNELS) for name in ("a", "b")]
    wide_frame = _frames(compare_runs(wide, ["wide"], out_dir=tmp_path / "w", tile_size=8).animation)[0]
    capped_frame = _frames(compare_runs(capped, ["wide"], out_dir=tmp_path / "c", tile_size=8).animation)[0]
    # 64 channels are drawn as render draws them: the 16 that vary most, so the frames are as tall.
    assert wide_frame.shape[0] == capped_frame.shape[0]
    with pytest.raises(UserError, match=r"^tile_size must be between 4 and 512 pixels, got 600\.$"):
        compare_runs(wide, ["wide"], out_dir=tmp_path / "t", tile_size=600)


def test_compare_by_epoch_puts_the_end_of_training_row_in_the_last_epoch(tmp_path: Path) -> None:
    # Rows 0-7 are epochs 0 and 1; row 8, recorded at the final validation step, says epoch 2 (the
    # recorder's end-of-training row), which the viewer counts as the last epoch, 1.
    runs = [make_store(tmp_path / name / "version_0", range(9), run_id=name).parent for name in ("a", "b")]
    result = compare_runs(runs, ["net.conv1"], align="epoch", out_dir=tmp_path / "out", tile_size=8)
    assert result.timeline.tolist() == [0, 1]


def test_a_damaged_step_is_left_out_of_the_comparison_and_named(tmp_path: Path, capsys) -> None:
    import h5py

    first = make_store(tmp_path / "a", range(6), run_id="a")
    second = make_store(tmp_path / "b", range(6), run_id="b")
    with h5py.File(second, "r+") as store:
        chunk = store["layers/net.conv2/activations"].id.get_chunk_info(2)
    with second.open("r+b") as file:  # scribble over step 2's chunk: it fails its checksum
        file.seek(chunk.byte_offset + 2)
        file.write(b"\xab" * 32)
    out = tmp_path / "out"
    assert compare_main([str(first), str(second), "--layer", "net.conv2", "--out", str(out), "--quiet"]) == 0
    assert capsys.readouterr().err == (
        "note: step 2 of b's layer net.conv2 is damaged (it failed its integrity check); its frames were left out.\n"
    )
    assert len(_frames(out / "compare-net.conv2.png")) == 5  # steps 0 to 5 but 2
