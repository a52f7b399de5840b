"""Pure drawing: the palette, the colour map, frames, contact sheets and curves, as arrays."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from viewer_fixtures import CLASS_NAMES, exact_activations, predictions_at, probe_set

from actrec.recording import colors
from actrec.viewer import (
    NEGATIVE_RGB,
    PALETTE,
    POSITIVE_RGB,
    ZERO_INDEX,
    ZERO_RGB,
    ColourScale,
    FrameLayout,
    activation_frame,
    diverging_indices,
    frame_title,
    grey_indices,
    predicted_classes,
    to_rgb,
    training_curves,
)


def test_palette_has_256_distinct_colours_with_exact_white_zero() -> None:
    assert PALETTE.shape == (256, 3)
    assert PALETTE.dtype == np.uint8
    assert len({tuple(colour) for colour in PALETTE.tolist()}) == 256
    assert tuple(PALETTE[ZERO_INDEX]) == ZERO_RGB == (255, 255, 255)
    assert tuple(PALETTE[colors.NEGATIVE_INDEX]) == NEGATIVE_RGB == (178, 24, 43)
    assert tuple(PALETTE[colors.POSITIVE_INDEX]) == POSITIVE_RGB == (33, 102, 172)
    with pytest.raises(ValueError, match="read-only"):
        PALETTE[0] = 0


def test_diverging_map_is_symmetric_white_at_zero_and_clipped() -> None:
    values = np.array([-3.0, -2.0, -1.0, -1e-6, 0.0, 1e-6, 1.0, 2.0, 3.0, np.nan], dtype=np.float16)
    indices = diverging_indices(values, 2.0)
    assert indices.dtype == np.uint8
    # +-scale/2 is 15.5 levels from white (31 levels each side); rint rounds both halves away to 16.
    assert indices.tolist() == [
        colors.NEGATIVE_INDEX,
        colors.NEGATIVE_INDEX,
        ZERO_INDEX - 16,
        ZERO_INDEX,
        ZERO_INDEX,
        ZERO_INDEX,
        ZERO_INDEX + 16,
        colors.POSITIVE_INDEX,
        colors.POSITIVE_INDEX,
        colors.NAN_INDEX,
    ]
    # Colours get monotonically more saturated away from zero: red half loses green, blue half loses red.
    ramp = to_rgb(diverging_indices(np.linspace(-1, 1, 63), 1.0)).astype(int)
    assert (np.diff(ramp[:32, 1]) >= 0).all()
    assert (np.diff(ramp[31:, 0]) <= 0).all()


def test_diverging_map_rejects_a_useless_scale() -> None:
    with pytest.raises(ValueError, match="scale must be a positive finite number, got 0"):
        diverging_indices(np.zeros(3), 0.0)


def test_grey_map_spans_black_to_white() -> None:
    indices = grey_indices(np.array([-1.0, 0.0, 1.0, 2.0]), 0.0, 1.0)
    assert to_rgb(indices).tolist() == [[0, 0, 0], [0, 0, 0], [255, 255, 255], [255, 255, 255]]


def _layout(**overrides: object) -> FrameLayout:
    options: dict = {
        "num_probes": 3,
        "scale": 1.0,
        "probe_images": probe_set().images,
        "labels": np.arange(3),
        "class_names": CLASS_NAMES,
        "tile_size": 32,
        "longest_title": frame_title("net.conv1", 999, 9),
    }
    options.update(overrides)
    return FrameLayout((3, 8, 8), **options)


def _tile(frame: np.ndarray, layout: FrameLayout, channel: int, probe: int) -> np.ndarray:
    left, top, right, bottom = layout.tile_box(channel, probe)
    return frame[top:bottom, left:right]


def test_frame_tiles_show_exact_colours_upscaled() -> None:
    layout = _layout()
    activations = exact_activations(step=3)["net.conv1"]
    frame = layout.frame(activations, title="t", predictions=predictions_at(3))
    assert frame.dtype == np.uint8
    assert frame.shape == (layout.height, layout.width)
    for probe in range(2):
        assert (_tile(frame, layout, 0, probe) == ZERO_INDEX).all()
        assert (_tile(frame, layout, 1, probe) == colors.POSITIVE_INDEX).all()
        assert (_tile(frame, layout, 2, probe) == colors.NEGATIVE_INDEX).all()
    # 8x8 maps drawn at 32 px: each value is a 4x4 block (nearest neighbour, no smoothing).
    ramp_tile = _tile(frame, layout, 0, 2)
    assert ramp_tile.shape == (32, 32)
    expected = np.repeat(np.repeat(diverging_indices(activations[2, 0], 1.0), 4, axis=0), 4, axis=1)
    np.testing.assert_array_equal(ramp_tile, expected)
    # Tiles are separated by the gutter colour, so a white tile still has visible edges.
    left, top, right, _ = layout.tile_box(0, 0)
    assert frame[top, left - 1] == colors.GUTTER_INDEX
    assert frame[top, right] == colors.GUTTER_INDEX


def test_frame_does_not_mutate_its_inputs() -> None:
    activations = exact_activations(step=1)["net.conv1"]
    predictions = predictions_at(1)
    before = activations.copy(), predictions.copy()
    layout = _layout()
    first = layout.frame(activations, title="a", predictions=predictions)
    first_copy = first.copy()
    layout.frame(activations * 0, title="b", predictions=predictions)
    np.testing.assert_array_equal(activations, before[0])
    np.testing.assert_array_equal(predictions, before[1])
    np.testing.assert_array_equal(first, first_copy)  # later frames do not draw into earlier ones


def test_title_is_burned_in_and_only_the_title_changes_with_it() -> None:
    layout = _layout()
    activations = exact_activations(step=0)["net.conv1"]
    first = layout.frame(activations, title=frame_title("net.conv1", 10, 0), predictions=predictions_at(0))
    second = layout.frame(activations, title=frame_title("net.conv1", 20, 1), predictions=predictions_at(0))
    rows, cols = np.nonzero(first != second)
    left, top, right, bottom = layout.title_box
    assert rows.size > 0
    assert rows.min() >= top
    assert rows.max() < bottom
    assert cols.min() >= left
    assert cols.max() < right
    title_pixels = first[top:bottom, left:right]
    assert (title_pixels == colors.TEXT_INDEX).sum() > 20  # solid ink, not just anti-aliasing


def test_non_finite_logits_predict_no_class_and_are_drawn_as_a_question_mark() -> None:
    logits = np.array([[0.1, 2.0, -1.0], [np.nan, 1.0, 0.0], [0.0, np.inf, 0.0]])
    np.testing.assert_array_equal(predicted_classes(logits), [1, -1, -1])
    layout = _layout()
    activations = exact_activations(step=0)["net.conv1"]
    predictions = predictions_at(0).copy()
    predictions[0] = -1  # probe 0 is labelled 0: argmax of NaN logits would have called it right

    def box(frame: np.ndarray) -> np.ndarray:
        left, top, right, bottom = layout.prediction_box(0)
        return frame[top:bottom, left:right]

    unknown = box(layout.frame(activations, title="t", predictions=predictions))
    right_ink = set(range(colors.RIGHT_START, colors.RIGHT_START + colors.INK_LEVELS))
    wrong_ink = set(range(colors.WRONG_START, colors.WRONG_START + colors.INK_LEVELS))
    assert set(np.unique(unknown).tolist()) & wrong_ink
    assert not set(np.unique(unknown).tolist()) & right_ink
    assert not np.array_equal(unknown, box(layout.frame(activations, title="t", predictions=predictions_at(0))))


def test_predictions_are_marked_right_in_green_and_wrong_in_red() -> None:
    layout = _layout()
    activations = exact_activations(step=0)["net.conv1"]
    right_ink = set(range(colors.RIGHT_START, colors.RIGHT_START + colors.INK_LEVELS))
    wrong_ink = set(range(colors.WRONG_START, colors.WRONG_START + colors.INK_LEVELS))

    def inks(step: int, probe: int) -> set[int]:
        frame = layout.frame(activations, title="t", predictions=predictions_at(step))
        left, top, right, bottom = layout.prediction_box(probe)
        return set(np.unique(frame[top:bottom, left:right]).tolist())

    assert inks(0, 0) & right_ink
    assert not inks(0, 0) & wrong_ink
    assert inks(0, 1) & right_ink
    assert not inks(0, 1) & wrong_ink
    assert inks(1, 1) & wrong_ink
    assert not inks(1, 1) & right_ink
    assert inks(0, 2) & wrong_ink
    assert not inks(0, 2) & right_ink


def test_frame_rejects_activations_of_another_shape() -> None:
    with pytest.raises(ValueError, match=r"activations have shape \(3, 2, 8, 8\), expected \(3, 3, 8, 8\)"):
        _layout().frame(np.zeros((3, 2, 8, 8)), title="t")


@pytest.mark.parametrize(("shape", "tile"), [((4, 28, 28), 56), ((8, 14, 14), 56), ((16, 7, 7), 56)])
def test_every_layer_shape_renders_at_the_tile_size(shape: tuple[int, ...], tile: int) -> None:
    layout = FrameLayout(shape, num_probes=2, scale=1.0, tile_size=tile)
    frame = layout.frame(np.zeros((2, *shape)), title="t")
    left, top, right, bottom = layout.tile_box(0, 1)
    assert max(right - left, bottom - top) == tile
    assert (frame[top:bottom, left:right] == ZERO_INDEX).all() or len(shape) == 1


def test_activation_frame_is_rgb_with_exact_colours() -> None:
    activations = exact_activations(step=0)["net.conv1"]
    rgb = activation_frame(
        activations,
        scale=1.0,
        title=frame_title("net.conv1", 0, 0),
        probe_images=probe_set().images,
        labels=np.arange(3),
        predictions=predictions_at(0),
        class_names=CLASS_NAMES,
        tile_size=32,
    )
    layout = _layout()
    assert rgb.dtype == np.uint8
    assert rgb.shape[2] == 3
    for channel, colour in enumerate((ZERO_RGB, POSITIVE_RGB, NEGATIVE_RGB)):
        left, top, right, bottom = layout.tile_box(channel, 0)
        assert (rgb[top:bottom, left:right] == colour).all()


def _contains(image: np.ndarray, patch: np.ndarray) -> bool:
    windows = np.lib.stride_tricks.sliding_window_view(image, patch.shape)
    return bool((windows == patch).all(axis=(2, 3)).any())


def test_sheet_puts_steps_side_by_side_under_one_header() -> None:
    layout = _layout()
    steps = [0, 1, 5]
    activations = np.stack([exact_activations(step)["net.conv1"] for step in steps])
    sheet = layout.sheet(
        activations,
        captions=[f"step {step}" for step in steps],
        title="net.conv1",
        predictions=np.stack([predictions_at(step) for step in steps]),
    )
    assert sheet.shape[0] < layout.height + 40  # one row of panels
    # Blue pixels: channel 1 of every probe in each of the 3 panels, plus one colour bar for the sheet.
    frame = layout.frame(activations[0], title="t")
    blue_tiles = 3 * 32 * 32
    colour_bar_blue = int((frame == colors.POSITIVE_INDEX).sum()) - blue_tiles
    assert colour_bar_blue > 0
    assert int((sheet == colors.POSITIVE_INDEX).sum()) == 3 * blue_tiles + colour_bar_blue
    # And the step-dependent ramp of each panel: the three steps' ramp tiles all appear.
    for step in steps:
        ramp = np.repeat(np.repeat(diverging_indices(activations[steps.index(step), 2, 0], 1.0), 4, 0), 4, 1)
        assert _contains(sheet, ramp), f"step {step}'s tile is missing from the sheet"
    with pytest.raises(ValueError, match="one caption"):
        layout.sheet(activations, captions=["only one"], title="t")


def test_training_curves_draw_both_panels_and_skip_nan() -> None:
    steps = {
        "global_step": np.arange(50),
        "epoch": np.arange(50) // 10,
        "batch_loss": np.r_[np.nan, np.linspace(2, 0.2, 49)],
        "batch_acc": np.r_[np.nan, np.linspace(0.1, 0.9, 49)],
    }
    scalars = {
        "val/loss": (np.array([9, 49]), np.array([1.0, 0.4])),
        "val/acc": (np.array([9, 49]), np.array([0.5, 0.8])),
    }
    image = training_curves(steps, scalars, title="run")
    assert image.dtype == np.uint8
    assert image.ndim == 3
    assert image.shape[2] == 3
    half = image.shape[1] // 2
    smoothed_blue = np.all(np.abs(image.astype(int) - (33, 102, 172)) < 30, axis=2)
    validation_orange = np.all(np.abs(image.astype(int) - (230, 97, 1)) < 30, axis=2)
    assert smoothed_blue[:, :half].sum() > 100  # loss panel
    assert smoothed_blue[:, half:].sum() > 100  # accuracy panel
    assert validation_orange[:, :half].sum() > 20
    assert validation_orange[:, half:].sum() > 20
    empty = training_curves({"global_step": np.zeros(0, np.int64)}, {})
    assert empty.shape == image.shape  # "no data" panels, same layout


def test_importing_the_viewer_pulls_in_neither_lightning_nor_torch() -> None:
    code = (
        "import sys, actrec.viewer, actrec.viewer.cli, actrec.viewer.render, actrec.viewer.tb_export\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'pytorch_lightning', 'torch'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("scale", "shape"),
    [(ColourScale(one_sided=False, limit=0.7), (3, 5, 6)), (ColourScale(one_sided=True, limit=2.5), (4, 3))],
)
def test_float16_frames_are_drawn_through_a_table_with_the_scales_own_colours(
    scale: ColourScale, shape: tuple[int, ...]
) -> None:
    """Stores hold float16; frames look every value up in a 65,536-entry table built from the scale itself."""
    rng = np.random.default_rng(1)
    values = (rng.normal(size=(3, *shape)) * 1.5).astype(np.float16)
    values.flat[:4] = [np.nan, np.inf, -np.inf, -0.0]
    layout = FrameLayout(shape, num_probes=3, scale=scale, tile_size=12)
    through_table = layout.frame(values, title="t")
    direct = layout.frame(values.astype(np.float32), title="t")  # float16 -> float32 is exact
    np.testing.assert_array_equal(through_table, direct)
    assert (through_table == colors.NONFINITE_INDEX).any()  # NaN and infinities keep their own colour
    assert len(np.unique(through_table)) > 20  # a real spread of colours, not one flat tile


def test_contact_sheets_wrap_to_at_most_1600_pixels_with_row_labels_on_every_row() -> None:
    rng = np.random.default_rng(0)
    activations = np.tanh(rng.normal(size=(6, 10, 4, 28, 28))).astype(np.float32)  # the article's first layer
    layout = FrameLayout((4, 28, 28), num_probes=10, scale=1.0, labels=np.arange(10), tile_size=48)
    captions = [f"step {step}" for step in range(6)]
    sheet = layout.sheet(activations, captions=captions, title="net.conv1")
    assert sheet.shape[1] <= 1600
    one_row = layout.sheet(activations, captions=captions, title="net.conv1", max_width=100_000)
    assert one_row.shape[1] > 1600  # what the sheet would have been
    assert sheet.shape[0] > 2 * one_row.shape[0] - 200  # three rows of two panels instead of one of six
    # The last row is the last two panels, drawn as a sheet of their own would draw them (labels included).
    last_two = layout.sheet(activations[4:], captions=captions[4:], title="net.conv1", max_width=100_000)
    bottom = 3 * layout.height // 4
    np.testing.assert_array_equal(sheet[-bottom:, : last_two.shape[1]], last_two[-bottom:])


def test_a_vector_layer_is_at_least_8_pixels_high_however_many_units() -> None:
    layout = FrameLayout((6000,), num_probes=3, scale=1.0, tile_size=8)
    left, top, right, bottom = layout.tile_box(0, 0)
    assert bottom - top >= 8
    sheet = layout.sheet(np.zeros((2, 3, 6000), np.float32), captions=["a", "b"], title="fc")
    assert sheet.shape[1] <= max(1600, layout.width)


def test_the_input_rows_label_is_centred_on_the_pictures() -> None:
    # The "input" label sits at the middle of the probe pictures (as frames have always drawn it); moved toward
    # the top, every classifier's frame changed pixels without a test noticing.
    layout = _layout(tile_size=64)
    frame = layout.frame(exact_activations(step=0)["net.conv1"], title="t", predictions=predictions_at(0))
    left, top, _, bottom = layout.input_box(0)
    margin = frame[top:bottom, : left - 2]
    inked = np.flatnonzero((margin != margin[0, 0]).any(axis=1))
    assert inked.size
    label_middle = (inked[0] + inked[-1]) / 2
    assert abs(label_middle - (bottom - top - 1) / 2) <= 2


@pytest.mark.parametrize("output_mode", [None, "image", "values"])
def test_a_frame_drawn_into_the_last_one_equals_a_new_frame(output_mode: str | None) -> None:
    # The animations redraw one array at every step (only the title, tiles, outputs and predictions): whatever the
    # step before drew there, including predictions or outputs this step lacks, must not show through.
    from actrec.recording import OUTPUT_IMAGE, OUTPUT_VALUES, OutputDrawing

    rng = np.random.default_rng(3)
    probes = 3
    output = None
    if output_mode == "image":
        output = OutputDrawing(OUTPUT_IMAGE, (4, 4), 0.0, 1.0)
    elif output_mode == "values":
        output = OutputDrawing(OUTPUT_VALUES, (5,), -2.0, 2.0)
    for kind_shape, labels in (((2, 6, 6), np.array([0, 1, 2])), ((7,), None), ((3, 5), np.array([2, 2, 0]))):
        layout = FrameLayout(
            kind_shape,
            num_probes=probes,
            scale=1.5,
            probe_images=rng.normal(size=(probes, 1, 8, 8)),
            labels=labels,
            class_names=CLASS_NAMES,
            longest_title=frame_title("net.jpgy|", 12345, 99),
            show_predictions=labels is not None,
            nonfinite_legend=True,
            output=output,
        )
        canvas = None
        for step in range(12):
            values = rng.normal(size=(probes, *kind_shape)).astype(np.float16)
            title = frame_title("net.jpgy|", 10 ** (step % 6), step) if step % 5 else ""
            predictions = None if labels is None or step % 3 == 0 else rng.integers(-1, 10, probes)
            outputs = None
            if output is not None and step % 4:
                outputs = rng.uniform(size=(probes, int(np.prod(output.shape))))
            fresh = layout.frame(values, title=title, predictions=predictions, outputs=outputs)
            canvas = layout.frame(values, title=title, predictions=predictions, outputs=outputs, out=canvas)
            np.testing.assert_array_equal(canvas, fresh, err_msg=f"{kind_shape} step {step}")
    with pytest.raises(ValueError, match="not a frame of this layout"):
        layout.frame(values, title="t", out=np.zeros((3, 3), np.uint8))
