"""The colour-scale rule at known values, the one-sided palette, and layouts by kind (maps, tokens, vectors)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from viewer_fixtures import logits_for

from actrec.recording import colors
from actrec.recording.scale import ColourScale, LiveScaleState, colour_scale, live_scale, sample_rows
from actrec.store import LayerSpec, ProbeSet, StepRecord, StoreWriter
from actrec.viewer import FrameLayout, live_frames
from actrec.viewer.frames import MAX_FRAME_WIDTH, fit_tile_size, frame_height_width, layer_kind
from actrec.viewer.render import render_run


def test_tanh_is_fixed_at_plus_minus_one_while_the_data_stays_inside() -> None:
    scale = colour_scale("tanh", np.array([0.5, -1.0, 1.0, np.nan, -np.inf]))
    assert scale == ColourScale(one_sided=False, limit=1.0, rule="fixed (tanh)")
    indices = scale.indices(np.array([-2.0, -1.0, 0.0, 0.5, 1.0, np.inf, np.nan]))
    assert indices.tolist() == [
        colors.NEGATIVE_INDEX,
        colors.NEGATIVE_INDEX,
        colors.ZERO_INDEX,
        colors.ZERO_INDEX + 16,
        colors.POSITIVE_INDEX,
        colors.NONFINITE_INDEX,
        colors.NONFINITE_INDEX,
    ]
    assert scale.bar_labels() == (("-1", 0.0), ("0", 0.5), ("+1", 1.0))


def test_sigmoid_is_one_sided_on_zero_to_one() -> None:
    scale = colour_scale("sigmoid", np.zeros(3))
    assert (scale.one_sided, scale.limit) == (True, 1.0)
    assert scale.indices(np.array([0.0, 1.0, 2.0])).tolist() == [
        colors.ZERO_INDEX,
        colors.ONE_SIDED_TOP_INDEX,
        colors.ONE_SIDED_TOP_INDEX,
    ]
    assert scale.bar_labels() == (("0", 0.0), ("1", 1.0))


def test_a_declared_bounded_kind_whose_values_leave_its_range_falls_back_to_the_symmetric_rule() -> None:
    # timm efficientnet_b0's blocks.0.0.se: declared sigmoid, half its values negative, down to -0.165.
    gate = np.linspace(-0.165, 0.15, 1000)
    scale = colour_scale("sigmoid", gate)
    assert not scale.one_sided
    assert scale.limit == pytest.approx(0.165, rel=0.01)
    assert scale.indices(np.array([-0.165]))[0] == colors.NEGATIVE_INDEX  # red, not white
    assert scale.note == (
        "declared sigmoid (0 to 1), but its values reach -0.165; "
        "drawn on the symmetric rule, -0.163 red to +0.163 blue."
    )
    over = colour_scale("tanh", np.array([0.0, 2.0, -7.0, np.nan]))
    assert (over.one_sided, over.note.split(";")[0]) == (False, "declared tanh (-1 to 1), but its values reach -7")
    positive = colour_scale("sigmoid", np.array([0.0, 3.0]))  # never negative: one-sided, on the data's limit
    assert positive.one_sided
    assert positive.note.endswith("drawn on the symmetric rule, 0 white to 2.98 blue.")
    assert colour_scale("sigmoid", np.array([0.0, 1.0005])).note == ""  # float16 rounding is not a mismatch
    live, state = live_scale("sigmoid", gate)
    assert (live.one_sided, state.seen_negative) == (False, True)
    assert live_scale("sigmoid", np.array([0.1]), state)[0].limit == live.limit  # stays on the running scale


def test_relu_layer_is_one_sided_and_outliers_cannot_wash_it_out() -> None:
    # 1000 activations of 2.0 and three huge outliers: the 99.5th percentile is 2.0, not 1e6.
    samples = np.concatenate([np.full(1000, 2.0), [1e6, 1e6, 1e6], np.zeros(200)])
    scale = colour_scale("nonnegative", samples)
    assert (scale.one_sided, scale.limit) == (True, 2.0)
    indices = scale.indices(np.array([0.0, 1.0, 2.0, 1e6]))
    assert indices.tolist() == [
        colors.ZERO_INDEX,
        colors.ONE_SIDED_START + 30,  # level 31 of 62
        colors.ONE_SIDED_TOP_INDEX,
        colors.ONE_SIDED_TOP_INDEX,
    ]
    assert tuple(colors.PALETTE[colors.ONE_SIDED_TOP_INDEX]) == colors.ONE_SIDED_TOP_RGB


def test_unbounded_layer_is_symmetric_from_finite_values_only() -> None:
    samples = np.concatenate([np.full(500, 4.0), np.full(500, -4.0), [np.inf, -np.inf, np.nan, 1e30]])
    scale = colour_scale("symmetric", samples)
    assert (scale.one_sided, scale.limit) == (False, 4.0)
    assert scale.bar_labels() == (("-4", 0.0), ("0", 0.5), ("+4", 1.0))
    # A "symmetric" layer (v1 stores say so of ReLU layers too) that is never negative is drawn one-sided.
    assert colour_scale("symmetric", np.abs(samples[:1000]) * 0.25).one_sided
    assert colour_scale("symmetric", np.abs(samples[:1000]) * 0.25).limit == 1.0
    # Nothing finite, or all zero: a usable scale, never an error.
    assert colour_scale("symmetric", np.array([np.nan, np.inf])).limit == 1.0
    assert colour_scale("nonnegative", np.zeros(10)).limit == 1.0


def test_unknown_scale_kind_is_one_sentence() -> None:
    with pytest.raises(
        ValueError, match=r"scale_kind must be one of tanh, sigmoid, nonnegative, symmetric, got 'relu'\."
    ):
        colour_scale("relu", np.zeros(1))


def test_sample_rows_are_evenly_spread_with_both_ends() -> None:
    assert sample_rows(100, 5).tolist() == [0, 25, 50, 74, 99]
    assert sample_rows(3, 32).tolist() == [0, 1, 2]
    assert sample_rows(0).size == 0


def test_live_scale_only_grows_and_the_frame_prints_its_numbers() -> None:
    first, state = live_scale("symmetric", np.full((2, 3), 2.0), None)
    assert (first.one_sided, first.limit) == (True, 2.0)
    second, state = live_scale("symmetric", np.array([[-1.0, 0.5]]), state)
    assert (second.one_sided, second.limit) == (False, 2.0)  # a smaller step keeps the larger limit
    third, state = live_scale("symmetric", np.full(4, -8.0), state)
    assert (third.one_sided, third.limit, state) == (False, 8.0, LiveScaleState(limit=8.0, seen_negative=True))
    assert live_scale("tanh", np.full(3, 0.9), None)[0].limit == 1.0
    assert live_scale("tanh", np.full(3, 9.0), None)[0].limit == 9.0  # left its declared range

    activations = np.zeros((2, 2, 4, 4), np.float32)
    activations[:, 1] = 3.0
    images, state = live_frames("nonnegative", activations, None, title="net.relu · step 5 · epoch 0")
    assert [suffix for suffix, _ in images] == [""]
    frame = images[0][1]
    assert frame.ndim == 3
    assert frame.shape[2] == 3
    assert state.limit == 3.0
    # The one-sided bar runs from exact white to the dark end; the tiles of channel 1 are the dark end.
    assert (frame == colors.ONE_SIDED_TOP_RGB).all(axis=2).sum() > 16 * 16 * 2
    # A wide layer: its first 16 channels, 4 per image, tagged as actrec tensorboard tags them.
    wide, _ = live_frames("tanh", np.zeros((2, 40, 4, 4), np.float32), None, title="wide")
    assert [suffix for suffix, _ in wide] == ["/ch 0-3", "/ch 4-7", "/ch 8-11", "/ch 12-15"]
    assert all(image.shape[1] <= 360 for _, image in wide)


def test_relu_frame_uses_both_ends_of_the_one_sided_palette() -> None:
    activations = np.zeros((3, 2, 4, 4), np.float32)
    activations[:, 1] = 5.0
    activations[0, 0, 0, 0] = 2.5
    layout = FrameLayout((2, 4, 4), num_probes=3, scale=colour_scale("nonnegative", activations), tile_size=16)
    frame = layout.frame(activations, title="relu")
    left, top, right, bottom = layout.tile_box(0, 1)
    assert (frame[top:bottom, left:right] == colors.ZERO_INDEX).all()
    left, top, right, bottom = layout.tile_box(1, 2)
    assert (frame[top:bottom, left:right] == colors.ONE_SIDED_TOP_INDEX).all()
    # No red anywhere: the diverging ramp is unused.
    assert not (frame < colors.ZERO_INDEX).any()
    left, top, right, _ = layout.colorbar_box
    bar = frame[top, left:right]
    assert (bar[0], bar[-1]) == (colors.ZERO_INDEX, colors.ONE_SIDED_TOP_INDEX)
    assert (np.diff(bar.astype(int)) >= 0).all() or bar[1] >= colors.ONE_SIDED_START


def test_token_frame_is_a_tokens_by_units_heatmap_per_probe() -> None:
    tokens, units = 4, 8
    activations = np.zeros((3, tokens, units), np.float32)
    activations[1, 2, 5] = 1.0  # probe 1, token 2, unit 5
    layout = FrameLayout((tokens, units), num_probes=3, scale=1.0, tile_size=32)
    assert layout.kind == "tokens"
    frame = layout.frame(activations, title="tokens")
    left, top, right, bottom = layout.tile_box(0, 1)
    cell = 8  # 2 x 32 px across 8 units
    assert (bottom - top, right - left) == (tokens * cell, units * cell)
    tile = frame[top:bottom, left:right]
    expected = np.full((tokens, units), colors.ZERO_INDEX, np.uint8)
    expected[2, 5] = colors.POSITIVE_INDEX
    np.testing.assert_array_equal(tile, np.repeat(np.repeat(expected, cell, 0), cell, 1))


def test_vector_frame_is_one_row_per_probe() -> None:
    activations = np.linspace(-1, 1, 3 * 10, dtype=np.float32).reshape(3, 10)
    layout = FrameLayout((10,), num_probes=3, scale=1.0, tile_size=40)
    assert layout.kind == "vector"
    frame = layout.frame(activations, title="vector")
    left, top, right, bottom = layout.tile_box(0, 2)
    assert (bottom - top, right - left) == (10, 80)  # one row of 10 cells of 8 px, 10 px tall
    np.testing.assert_array_equal(frame[top, left:right:8], colors.diverging_indices(activations[2], 1.0))


def test_a_layer_of_four_dimensions_is_one_sentence() -> None:
    with pytest.raises(ValueError, match=r"^cannot draw a layer of per-probe shape \(2, 3, 4, 5\): actrec draws"):
        layer_kind((2, 3, 4, 5))


def test_frames_of_many_probes_fit_a_laptop_screen() -> None:
    size = fit_tile_size("maps", (8, 28, 28), 40, 56)
    assert size < 56
    assert frame_height_width("maps", (8, 28, 28), 40, size)[1] <= MAX_FRAME_WIDTH
    layout = FrameLayout((8, 28, 28), num_probes=40, scale=1.0, tile_size=size)
    assert layout.width <= MAX_FRAME_WIDTH
    assert fit_tile_size("maps", (8, 28, 28), 10, 56) == 56  # the article's run keeps its size


def _wide_store(folder: Path, steps: int = 4) -> Path:
    """A store with a 40-channel ReLU layer whose channels 5, 17 and 33 vary over training, and a token layer."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "activations.h5"
    probes = ProbeSet(np.zeros((2, 1, 4, 4), np.float32), np.arange(2), np.arange(2), ["a", "b"])
    layers = [
        LayerSpec("wide", (40, 2, 2), "ReLU", "symmetric"),
        LayerSpec("mlp", (6, 48), "Linear", "symmetric"),
    ]
    with StoreWriter.create(
        path, run_id="wide", config={}, probes=probes, layers=layers, num_classes=2, background=False
    ) as writer:
        for step in range(steps):
            wide = np.ones((2, 40, 2, 2), np.float32)
            for channel, gain in ((5, 1.0), (17, 3.0), (33, 2.0)):
                wide[:, channel] = gain * step
            mlp = np.full((2, 6, 48), -1.0 + step, np.float32)
            mlp[:, :, 7] = 10.0 * step
            writer.append(
                StepRecord(
                    global_step=step,
                    epoch=0,
                    batch_loss=1.0,
                    batch_acc=0.5,
                    logits=logits_for(np.array([0, 1]), 2),
                    activations={"wide": wide, "mlp": mlp},
                    wall_time=float(step),
                )
            )
    return path


def test_wide_layers_draw_the_channels_that_vary_most(tmp_path: Path) -> None:
    store = _wide_store(tmp_path / "run")
    result = render_run(store, channels="top:3")
    assert not [note for note in result.notes if "wide: drawing" in note]
    from actrec.recording import Recording
    from actrec.viewer.plan import make_plan

    with Recording.open(store) as reader:
        plan = make_plan(reader, None, None, None, 1, 56, "top:3")
        assert plan.layer_plans["wide"].labels == (5, 17, 33)
        assert 7 in plan.layer_plans["mlp"].labels  # unit 7 varies most
        default = make_plan(reader, None, None, None, 1, 56)
        assert len(default.layer_plans["wide"].labels) == 16
        assert {5, 17, 33} <= set(default.layer_plans["wide"].labels)
        assert default.notes[0] == (
            "wide: drawing 16 of its 40 channels, the 16 that vary most over training; "
            "--channels picks others (a list, top:K or all)."
        )
        chosen = make_plan(reader, ["wide"], None, None, 1, 56, "33,5")
        assert chosen.layer_plans["wide"].labels == (33, 5)
        assert chosen.layer_plans["wide"].scale.one_sided  # ReLU data, stored as "symmetric": one-sided


def test_unique_file_names_for_layers_that_map_to_one_name() -> None:
    from actrec.viewer.output import unique_stems

    stems = unique_stems(["net conv", "net_conv", "net.conv1"])
    assert stems["net.conv1"] == "net.conv1"
    assert stems["net conv"] != stems["net_conv"]
    assert stems["net conv"].startswith("net_conv-")


def test_frames_too_large_are_refused_and_large_renders_warned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from actrec.recording import Recording
    from actrec.viewer import plan as planning
    from actrec.viewer.errors import ViewerError

    folder = tmp_path / "run"
    folder.mkdir()
    probes = ProbeSet(np.zeros((2, 1, 4, 4), np.float32), np.arange(2), np.arange(2), ["a", "b"])
    layers = [LayerSpec("huge", (200, 2, 2), "Conv2d", "symmetric")]
    with StoreWriter.create(
        folder / "activations.h5",
        run_id="huge",
        config={},
        probes=probes,
        layers=layers,
        num_classes=2,
        background=False,
    ) as writer:
        for step in range(2):
            values = {"huge": np.full((2, 200, 2, 2), float(step), np.float32)}
            writer.append(StepRecord(step, 0, 1.0, 0.5, logits_for(np.array([0, 1]), 2), values, wall_time=0.0))
    with Recording.open(folder) as reader:
        with pytest.raises(ViewerError, match=r"^a frame of huge would be \d+ x \d+ pixels, over the 40,000,000 pixel"):
            planning.make_plan(reader, None, None, None, 1, 512, "all")
        monkeypatch.setattr(planning, "LARGE_RENDER_BYTES", 10_000)
        notes = planning.make_plan(reader, None, None, None, 1, 56, "all").notes
    assert notes[0].startswith("this will write roughly ")
    assert notes[0].endswith(
        "MB (1 layer(s) x 2 step(s)); --stride, --steps, --layers or fewer --channels make it smaller."
    )
