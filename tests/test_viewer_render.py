"""Files on disk: GIF, MP4, PNG and TensorBoard round trips, and whole renders of real stores."""

from __future__ import annotations

import importlib.util
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from viewer_fixtures import (
    CLASS_NAMES,
    SYMMETRIC_MAX,
    WRITER_SCRIPT,
    animation_frames,
    exact_activations,
    make_store,
    predictions_at,
    probe_set,
    rgb_to_indices,
)

from actrec.recording import colors
from actrec.store import StoreReader
from actrec.viewer import (
    FrameLayout,
    GifWriter,
    Mp4Writer,
    TensorBoardImageWriter,
    ViewerError,
    export_tensorboard,
    frame_title,
    render_run,
    to_rgb,
    write_png,
    writers,
)


def _random_frames(count: int, shape: tuple[int, int] = (24, 40)) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, colors.TRANSPARENT_INDEX, size=shape, dtype=np.uint8)]
    for _ in range(count - 1):
        frame = frames[-1].copy()
        frame[rng.integers(0, shape[0]), :] = rng.integers(0, colors.TRANSPARENT_INDEX)  # a partial change
        frames.append(frame)
    return frames


def test_gif_round_trip_is_pixel_exact_with_one_palette(tmp_path: Path) -> None:
    frames = _random_frames(6)
    frames.insert(3, frames[2].copy())  # an unchanged frame still counts as a frame
    path = tmp_path / "a.gif"
    with GifWriter(path, fps=20) as writer:
        for frame in frames:
            writer.append(frame)
    decoded = animation_frames(path)
    assert len(decoded) == len(frames)
    for frame, rgb in zip(frames, decoded, strict=True):
        np.testing.assert_array_equal(rgb, to_rgb(frame))
    with Image.open(path) as image:
        assert image.info["loop"] == 0  # forever
        assert image.info["duration"] == 50
        assert image.mode == "P"
        assert image.getpalette() == colors.PALETTE.flatten().tolist()  # the one global palette
    # Graphic control extensions: frame 1 is whole and opaque; later frames are deltas whose unchanged
    # pixels use the reserved transparent index, every frame lasting 5 cs and not disposed, but the last
    # one held for 1 s (100 cs) before the animation loops.
    controls = re.findall(rb"\x21\xf9\x04(.)(..)(.)\x00", path.read_bytes(), re.DOTALL)
    assert len(controls) == len(frames)
    assert [packed[0] for packed, _, _ in controls] == [0b0100] + [0b0101] * (len(frames) - 1)
    assert [delay for _, delay, _ in controls] == [b"\x05\x00"] * (len(frames) - 1) + [b"\x64\x00"]
    assert {index[0] for _, _, index in controls[1:]} == {colors.TRANSPARENT_INDEX}


def test_gif_writer_encodes_in_the_background_from_copies_and_reports_failures_to_the_caller() -> None:
    frames = _random_frames(5)
    buffer = io.BytesIO()
    reused = np.zeros_like(frames[0])
    with GifWriter(buffer, queue_frames=1) as writer:
        for frame in frames:
            reused[...] = frame  # one array, overwritten: the writer must have kept its own copy
            writer.append(reused)
    for frame, rgb in zip(frames, _gif_frames_of(buffer.getvalue()), strict=True):
        np.testing.assert_array_equal(rgb, to_rgb(frame))

    class Broken(io.BytesIO):
        def write(self, data: bytes) -> int:
            raise OSError("disk full")

    def write_all() -> None:
        with GifWriter(Broken()) as broken:
            for frame in frames:
                broken.append(frame)

    with pytest.raises(OSError, match="disk full"):  # raised on the encoder thread, re-raised to the caller
        write_all()


def _gif_frames_of(data: bytes) -> list[np.ndarray]:
    with Image.open(io.BytesIO(data)) as image:
        return [np.asarray(image.seek(i) or image.convert("RGB")) for i in range(image.n_frames)]


def test_gif_writer_accepts_a_file_object_and_rejects_bad_frames(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with GifWriter(buffer) as writer:
        writer.append(np.zeros((4, 4), np.uint8))
        with pytest.raises(ValueError, match="reserved for transparency"):
            writer.append(np.full((4, 4), colors.TRANSPARENT_INDEX, np.uint8))
        with pytest.raises(ValueError, match=r"frame of shape \(5, 4\) after frames of shape \(4, 4\)"):
            writer.append(np.zeros((5, 4), np.uint8))
    assert Image.open(io.BytesIO(buffer.getvalue())).n_frames == 1
    with pytest.raises(ViewerError, match="fps must be greater than 0 and at most 50, got 0"):
        GifWriter(tmp_path / "b.gif", fps=0)


def test_png_keeps_the_palette(tmp_path: Path) -> None:
    frame = _random_frames(1)[0]
    write_png(frame, tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as image:
        assert image.mode == "P"
        np.testing.assert_array_equal(np.asarray(image.convert("RGB")), to_rgb(frame))


def test_mp4_writes_every_frame(tmp_path: Path) -> None:
    pytest.importorskip("imageio_ffmpeg")
    import imageio.v2 as imageio

    path = tmp_path / "a.mp4"
    with Mp4Writer(path, fps=10) as writer:
        for frame in _random_frames(5, shape=(30, 50)):
            writer.append(frame)
    video = imageio.mimread(path, format="FFMPEG")
    assert len(video) == 5 + 9  # and the last frame held for 1 s (10 frames at 10 fps)
    assert np.abs(video[-1].astype(int) - video[4].astype(int)).mean() < 1  # the same picture, give or take x264
    assert video[0].shape == (32, 64, 3)  # padded to whole 16-pixel macroblocks


def test_mp4_without_imageio_ffmpeg_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        writers.importlib.util, "find_spec", lambda name: None if name == "imageio_ffmpeg" else real_find_spec(name)
    )
    with pytest.raises(
        ViewerError, match=r"MP4 output needs imageio-ffmpeg; install it with: pip install 'actrec\[mp4\]'"
    ):
        Mp4Writer(tmp_path / "a.mp4")


def _layout_for(layer: str, tile_size: int = 32) -> FrameLayout:
    """The layout the renderer uses for the fixture store's ``layer`` (steps 0 to 3: titles of one length)."""
    shape = {"net.conv1": (3, 8, 8), "net.conv2": (2, 4, 4)}[layer]
    scale = 1.0 if layer == "net.conv1" else SYMMETRIC_MAX
    return FrameLayout(
        shape,
        num_probes=3,
        scale=scale,
        probe_images=probe_set().images,
        labels=np.arange(3),
        class_names=CLASS_NAMES,
        tile_size=tile_size,
        longest_title=frame_title(layer, 3, 0),
    )


WHITE, BLUE_END, RED_END = (255, 255, 255), (33, 102, 172), (178, 24, 43)  # literal: the documented colours


def _tile_colours(rgb: np.ndarray, layout: FrameLayout, channel: int, probe: int) -> set[tuple[int, ...]]:
    left, top, right, bottom = layout.tile_box(channel, probe)
    return {tuple(colour) for colour in rgb[top:bottom, left:right].reshape(-1, 3).tolist()}


def test_render_colours_are_exact_for_tanh_and_data_scaled_layers(tmp_path: Path) -> None:
    make_store(tmp_path / "run", range(4))
    result = render_run(tmp_path / "run", tile_size=32)
    assert result.out_dir == tmp_path / "run" / "renders"
    names = sorted(path.name for path in result.files)
    assert names == sorted(
        ["net.conv1.png", "net.conv1.sheet.png", "net.conv2.png", "net.conv2.sheet.png", "curves.png"]
    )
    conv1 = animation_frames(result.out_dir / "net.conv1.png")
    conv2 = animation_frames(result.out_dir / "net.conv2.png")
    assert len(conv1) == len(conv2) == 4
    tanh, symmetric = _layout_for("net.conv1"), _layout_for("net.conv2")
    for step, (rgb1, rgb2) in enumerate(zip(conv1, conv2, strict=True)):
        # tanh layer: 0 -> white, +1 -> blue end, -1 -> red end, exactly.
        assert _tile_colours(rgb1, tanh, 0, 0) == {WHITE}
        assert _tile_colours(rgb1, tanh, 1, 0) == {BLUE_END}
        assert _tile_colours(rgb1, tanh, 2, 1) == {RED_END}
        # symmetric layer: the scale is the run's largest |activation| (2.5), so +-2.5 hit the ends.
        assert _tile_colours(rgb2, symmetric, 0, 0) == {BLUE_END}
        assert _tile_colours(rgb2, symmetric, 1, 0) == {RED_END}
        assert _tile_colours(rgb2, symmetric, 0, 2) == ({BLUE_END} if step % 2 else {WHITE})
        # Every pixel of every frame is a palette colour: nothing was dithered or re-quantised.
        rgb_to_indices(rgb1)


def test_render_frames_match_the_pure_frames_and_carry_labels(tmp_path: Path) -> None:
    make_store(tmp_path / "run", range(3))
    result = render_run(tmp_path / "run", layers=["net.conv1"], tile_size=32)
    decoded = animation_frames(result.out_dir / "net.conv1.png")
    layout = FrameLayout(
        (3, 8, 8),
        num_probes=3,
        scale=1.0,
        probe_images=probe_set().images,
        labels=np.arange(3),
        class_names=CLASS_NAMES,
        tile_size=32,
        longest_title=frame_title("net.conv1", 2, 0),
    )
    for step, rgb in enumerate(decoded):
        expected = layout.frame(
            exact_activations(step)["net.conv1"],
            title=frame_title("net.conv1", step, step // 4),
            predictions=predictions_at(step),
        )
        np.testing.assert_array_equal(rgb_to_indices(rgb), expected)
    # Step 0 and 1 differ in the title and in probe 1's prediction (right, then wrong).
    left, top, right, bottom = layout.prediction_box(1)
    assert not np.array_equal(decoded[0][top:bottom, left:right], decoded[1][top:bottom, left:right])


def test_render_range_and_stride_choose_the_frames(tmp_path: Path) -> None:
    make_store(tmp_path / "run", range(0, 40, 2))  # recorded every 2 steps: 0, 2, ..., 38
    result = render_run(tmp_path / "run", layers=["net.conv2"], start=10, stop=30, stride=3, tile_size=16)
    assert result.global_steps.tolist() == [10, 16, 22, 28]
    assert len(animation_frames(result.out_dir / "net.conv2.png")) == 4
    assert result.sheet_steps == (10, 16, 22, 28)  # default: first, log-spaced, last, without repeats
    chosen = render_run(tmp_path / "run", layers=["net.conv2"], sheet_steps=[0, 13, 38], tile_size=16)
    assert chosen.sheet_steps == (0, 12, 38)  # the nearest recorded step to each (100 is refused: test_faults)


@pytest.mark.slow  # worker processes
def test_render_in_worker_processes_gives_the_same_files(tmp_path: Path) -> None:
    make_store(tmp_path / "run", range(5))
    serial = render_run(tmp_path / "run", out_dir=tmp_path / "serial", tile_size=16, jobs=1)
    parallel = render_run(tmp_path / "run", out_dir=tmp_path / "parallel", tile_size=16, jobs=2)
    for path in serial.files:
        assert (tmp_path / "parallel" / path.name).read_bytes() == path.read_bytes(), path.name
    assert len(parallel.files) == len(serial.files)


def test_contact_sheet_and_curves_are_written(tmp_path: Path) -> None:
    make_store(tmp_path / "run", range(8))
    result = render_run(tmp_path / "run", layers=["net.conv1"], tile_size=16)
    with Image.open(result.out_dir / "net.conv1.sheet.png") as sheet:
        assert sheet.mode == "P"
        sheet_indices = np.asarray(sheet)
    assert result.sheet_steps == (0, 1, 2, 3, 4, 7)  # first, log-spaced (1, 1.6, 2.6, 4.3), last
    # Channel 1 (+1, blue) of 3 probes in each of the 6 panels.
    assert int((sheet_indices == colors.POSITIVE_INDEX).sum()) >= 6 * 3 * 16 * 16
    with Image.open(result.out_dir / "curves.png") as curves:
        assert curves.mode == "RGB"
        assert curves.size[0] > 800


@pytest.mark.slow  # a writer process
def test_render_reads_a_store_while_a_writer_process_appends(tmp_path: Path) -> None:
    path = tmp_path / "live" / "activations.h5"
    path.parent.mkdir()
    script = WRITER_SCRIPT.format(tests_dir=str(Path(__file__).parent))
    total = 60
    writer = subprocess.Popen([sys.executable, "-c", script, str(path), str(total)], stdout=subprocess.PIPE, text=True)
    try:
        flushed = 0
        while flushed < 5:  # wait for a few rows, then render while the writer keeps going
            line = writer.stdout.readline()
            assert line, "the writer process ended early"
            flushed = int(line)
        result = render_run(path, layers=["net.conv2"], tile_size=8)
        frames = len(animation_frames(result.out_dir / "net.conv2.png"))
        assert frames == len(result.global_steps)
        assert result.global_steps.tolist() == list(range(frames))
        assert 5 <= frames < total  # at least what was flushed before; the writer was still running
        for line in writer.stdout:
            flushed = int(line)
        assert writer.wait(timeout=60) == 0
    finally:
        writer.kill()
        writer.wait()
    assert flushed == total
    again = render_run(path, layers=["net.conv2"], tile_size=8)
    assert len(animation_frames(again.out_dir / "net.conv2.png")) == total


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 128, 1000, 36_001])
def test_event_checksum_matches_tensorboards(size: int) -> None:
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as reference

    from actrec.viewer._events import crc32c, masked_crc32c

    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    assert masked_crc32c(data) == reference(data)
    assert crc32c(b"123456789") == 0xE3069283  # the published CRC-32C check value


def test_tensorboard_images_read_back_with_tags_steps_and_pixels(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    frames = _random_frames(3)
    with TensorBoardImageWriter(tmp_path / "tb") as writer:
        for step, frame in zip((0, 5, 9), frames, strict=True):
            writer.add_image("activations/net.conv1", frame, step, wall_time=100.0 + step)
    accumulator = EventAccumulator(str(tmp_path / "tb"), size_guidance={IMAGES: 0})
    accumulator.Reload()
    assert accumulator.Tags()["images"] == ["activations/net.conv1"]
    events = accumulator.Images("activations/net.conv1")
    assert [event.step for event in events] == [0, 5, 9]
    assert [event.wall_time for event in events] == [100.0, 105.0, 109.0]
    for event, frame in zip(events, frames, strict=True):
        decoded = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
        np.testing.assert_array_equal(decoded, to_rgb(frame))
        assert (event.height, event.width) == frame.shape


def test_export_tensorboard_writes_every_step_once(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    make_store(tmp_path / "run", range(0, 12, 3))
    for _ in range(2):  # exporting twice must not duplicate anything
        result = export_tensorboard(tmp_path / "run", tile_size=16)
    assert result.export_dir == tmp_path / "run" / "activations"
    assert result.log_dir == tmp_path / "run"
    assert result.samples_per_plugin == 4
    assert sorted(path.name for path in (tmp_path / "run").iterdir()) == ["activations", "activations.h5"]
    accumulator = EventAccumulator(str(result.export_dir), size_guidance={IMAGES: 0})
    accumulator.Reload()
    assert sorted(accumulator.Tags()["images"]) == [
        "activations/net.conv1",
        "activations/net.conv2",
        "overview/net.conv1",
        "overview/net.conv2",
    ]
    for tag in result.tags:
        assert [event.step for event in accumulator.Images(tag)] == [0, 3, 6, 9]
        # At most 10 steps, so TensorBoard's default (10 per tag) keeps them all, step 0 included.
        assert [event.step for event in accumulator.Images(tag.replace("activations/", "overview/"))] == [0, 3, 6, 9]
    with StoreReader(tmp_path / "run") as store:
        wall_times = store.steps()["wall_time"]
    assert [event.wall_time for event in accumulator.Images("activations/net.conv1")] == wall_times.tolist()


def test_export_refuses_to_replace_a_folder_it_did_not_write(tmp_path: Path) -> None:
    make_store(tmp_path / "run", range(2))
    foreign = tmp_path / "run" / "activations"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ViewerError, match=r"activations exists and was not written by actrec tensorboard"):
        export_tensorboard(tmp_path / "run")
    assert (foreign / "notes.txt").read_text() == "mine"
    assert sorted(path.name for path in foreign.iterdir()) == ["notes.txt"]


def _glyph_coverage(char: str, size: int) -> tuple[np.ndarray, int, float]:
    """One glyph's coverage 0..255 as Pillow draws it, its x offset and its advance (what the layout composes)."""
    from PIL import Image, ImageDraw

    from actrec.viewer import _text

    font = _text._font(size)
    left, _, right, _ = (int(edge) for edge in font.getbbox(char))
    ascent, descent = font.getmetrics() if hasattr(font, "getmetrics") else (int(font.getbbox(char)[3]), 0)
    image = Image.new("L", (max(1, right - min(left, 0)), max(1, ascent + descent)), 0)
    ImageDraw.Draw(image).text((-min(left, 0), 0), char, font=font, fill=255)
    return np.asarray(image), min(left, 0), font.getlength(char)


def _glyph_by_glyph(text: str, size: int) -> np.ndarray:
    """The text layout before titles reused their prefixes: every glyph's coverage placed from x = 0, overlaps
    maximised, and the whole rounded to ink levels once (the layout composes levels, glyph by glyph)."""
    glyphs = [_glyph_coverage(char, size) for char in text]
    height = glyphs[0][0].shape[0] if glyphs else 1
    positions, x = [], 0.0
    for _, offset, advance in glyphs:
        positions.append(round(x) + offset)
        x += advance
    width = max([round(x), 1] + [p + g[0].shape[1] for p, g in zip(positions, glyphs, strict=True)])
    canvas = np.zeros((height, width), np.uint8)
    for position, (coverage, _, _) in zip(positions, glyphs, strict=True):
        target = canvas[:, max(position, 0) : position + coverage.shape[1]]
        np.maximum(target, coverage[:, coverage.shape[1] - target.shape[1] :], out=target)
    return np.rint(canvas * np.float32(colors.INK_LEVELS / 255)).astype(np.uint8)


def test_text_laid_out_from_cached_prefixes_has_the_glyph_by_glyph_pixels() -> None:
    from actrec.viewer import _text

    texts = [
        frame_title(layer, step, step // 59) for layer in ("net.conv1", "encoder.block0") for step in range(0, 3000, 7)
    ]
    texts += [
        "",
        " ",
        "a",
        " a",
        "a ",
        "  two  spaces ",
        "ch 15",
        "step 1 · 2/3 right",
        "jjj fff ...",
        "W·W…",
        "x" * 40,
        "a " * 1500 + "b",  # a store's class name of many words: laid out without recursing once a word
    ]
    for size in (11, 13, 15, 21):
        for text in texts:
            np.testing.assert_array_equal(_text._coverage(text, size), _glyph_by_glyph(text, size), err_msg=repr(text))
