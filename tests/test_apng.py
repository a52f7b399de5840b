"""The animated PNG writer: chunks, frames, times and the still image, read back by Pillow and by our own parser."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from actrec.recording import colors
from actrec.viewer import ApngWriter, GifWriter, ViewerError, to_rgb


def random_frames(count: int, shape: tuple[int, int] = (24, 40), seed: int = 0) -> list[np.ndarray]:
    """A first frame of random indices, then frames that each change one row (so boxes are partial)."""
    rng = np.random.default_rng(seed)
    frames = [rng.integers(0, colors.TRANSPARENT_INDEX, size=shape, dtype=np.uint8)]
    for _ in range(count - 1):
        frame = frames[-1].copy()
        frame[rng.integers(0, shape[0]), rng.integers(0, shape[1] // 2) :] = rng.integers(0, colors.TRANSPARENT_INDEX)
        frames.append(frame)
    return frames


def decoded_frames(data: bytes | Path) -> tuple[np.ndarray | None, list[np.ndarray], list[float]]:
    """Pillow's view of an animation: its still image (APNG with one outside the animation), frames in RGB, and
    frame durations in ms."""
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    with Image.open(source) as image:
        first = 1 if image.info.get("default_image") else 0
        still = np.asarray(image.convert("RGB")) if first else None
        frames, durations = [], []
        for index in range(first, image.n_frames):
            image.seek(index)
            frames.append(np.asarray(image.convert("RGB")))
            durations.append(float(image.info["duration"]))
    return still, frames, durations


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """``(type, data)`` of every chunk, each CRC checked."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, position = [], 8
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind, body = data[position + 4 : position + 8], data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length : position + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        chunks.append((kind, body))
        position += 12 + length
    assert position == len(data)
    return chunks


def write_apng(frames: list[np.ndarray], **options: object) -> bytes:
    buffer = io.BytesIO()
    with ApngWriter(buffer, **options) as writer:  # type: ignore[arg-type]
        for frame in frames:
            writer.append(frame)
    return buffer.getvalue()


def test_apng_round_trip_is_pixel_exact_with_the_gif_times(tmp_path: Path) -> None:
    frames = random_frames(7)
    frames.insert(3, frames[2].copy())  # an unchanged frame still counts as a frame
    path = tmp_path / "a.png"
    with ApngWriter(path, fps=20) as writer:
        for frame in frames:
            writer.append(frame)
    still, decoded, durations = decoded_frames(path)
    assert still is None  # no still given: the first frame is the picture non-animating viewers show
    assert len(decoded) == len(frames)
    for frame, rgb in zip(frames, decoded, strict=True):
        np.testing.assert_array_equal(rgb, to_rgb(frame))
    assert durations == [50.0] * (len(frames) - 1) + [1000.0]  # 5 cs a frame, the last held 1 s: as the GIF
    with Image.open(path) as image:
        assert image.info["loop"] == 0  # forever
        assert image.mode == "P"
        assert image.getpalette() == colors.PALETTE.flatten().tolist()

    chunks = png_chunks(path.read_bytes())
    kinds = [kind for kind, _ in chunks]
    assert kinds == [b"IHDR", b"PLTE", b"tRNS", b"acTL", b"fcTL", b"IDAT"] + [b"fcTL", b"fdAT"] * 7 + [b"IEND"]
    body = dict(chunks)
    assert struct.unpack(">IIBBBBB", body[b"IHDR"]) == (40, 24, 8, 3, 0, 0, 0)  # 8-bit palette indices
    assert body[b"tRNS"] == bytes([255] * 255 + [0])  # only the reserved index is transparent
    assert struct.unpack(">II", body[b"acTL"]) == (len(frames), 0)
    # One sequence over fcTL and fdAT, from 0 without gaps (the IDAT has none).
    sequence = [struct.unpack(">I", data[:4])[0] for kind, data in chunks if kind in (b"fcTL", b"fdAT")]
    assert sequence == list(range(len(sequence)))
    controls = [struct.unpack(">IIIIHHBB", data[4:]) for kind, data in chunks if kind == b"fcTL"]
    assert controls[0] == (40, 24, 0, 0, 5, 100, 0, 0)  # whole, opaque (blend "source")
    assert all(blend == 1 and dispose == 0 for *_, dispose, blend in controls[1:])  # drawn over, kept
    # Only the changed box is stored; the unchanged frame stores one transparent pixel.
    assert all(width * height < 40 * 24 for width, height, *_ in controls[1:])
    assert controls[3][:4] == (1, 1, 0, 0)
    assert controls[-1][4:6] == (100, 100)


def test_apng_still_is_the_given_frame_outside_the_animation() -> None:
    frames = random_frames(5)
    data = write_apng(frames, still=frames[-1], num_frames=len(frames))
    still, decoded, durations = decoded_frames(data)
    assert still is not None
    np.testing.assert_array_equal(still, to_rgb(frames[-1]))
    assert len(decoded) == len(frames)
    for frame, rgb in zip(frames, decoded, strict=True):
        np.testing.assert_array_equal(rgb, to_rgb(frame))
    assert durations == [100.0] * (len(frames) - 1) + [1000.0]
    kinds = [kind for kind, _ in png_chunks(data)]
    # The still comes before the first frame control: APNG's "default image not part of the animation".
    assert kinds[3:6] == [b"acTL", b"IDAT", b"fcTL"]
    assert kinds.count(b"fdAT") == len(frames)


def test_apng_equals_the_gif_frame_for_frame_on_drawn_frames() -> None:
    from viewer_fixtures import probe_set

    from actrec.viewer import FrameLayout

    probes = probe_set()
    rng = np.random.default_rng(1)
    drift = np.cumsum(rng.normal(0, 0.3, size=(6, 3, 3, 7, 7)), axis=0)  # steps, probes, channels, 7x7 maps
    layout = FrameLayout((3, 7, 7), num_probes=3, scale=1.0, probe_images=probes.images, labels=probes.labels,
                         class_names=probes.class_names)  # fmt: skip
    frames = [layout.frame(np.tanh(values), title=f"step {step}") for step, values in enumerate(drift)]
    gif = io.BytesIO()
    with GifWriter(gif, fps=7) as writer:
        for frame in frames:
            writer.append(frame)
    _, apng, apng_durations = decoded_frames(write_apng(frames, fps=7))
    _, gif_frames, gif_durations = decoded_frames(gif.getvalue())
    assert len(apng) == len(gif_frames) == len(frames)
    for ours, theirs in zip(apng, gif_frames, strict=True):
        np.testing.assert_array_equal(ours, theirs)
    assert apng_durations == gif_durations == [140.0] * 5 + [1000.0]


def test_apng_frame_count_is_patched_or_refused() -> None:
    frames = random_frames(4)
    patched = write_apng(frames, num_frames=10)  # announced 10, wrote 4: a seekable file is corrected
    assert struct.unpack(">II", dict(png_chunks(patched))[b"acTL"]) == (4, 0)
    assert len(decoded_frames(patched)[1]) == 4

    class Pipe(io.BytesIO):
        def seekable(self) -> bool:
            return False

    with pytest.raises(ValueError, match="cannot seek needs num_frames"):
        ApngWriter(Pipe())
    pipe = Pipe()
    with ApngWriter(pipe, num_frames=4) as writer:
        for frame in frames:
            writer.append(frame)
    assert len(decoded_frames(pipe.getvalue())[1]) == 4

    def write_short() -> None:
        with ApngWriter(Pipe(), num_frames=5) as short:
            for frame in frames:
                short.append(frame)

    with pytest.raises(ValueError, match="4 frames appended, 5 announced, and the file cannot seek"):
        write_short()


def test_apng_writer_copies_frames_rejects_bad_ones_and_reports_encoder_failures(tmp_path: Path) -> None:
    frames = random_frames(5)
    reused = np.zeros_like(frames[0])
    buffer = io.BytesIO()
    with ApngWriter(buffer, queue_frames=1) as writer:
        for frame in frames:
            reused[...] = frame  # one array, overwritten: the writer must have kept its own copy
            writer.append(reused)
        with pytest.raises(ValueError, match="reserved for transparency"):
            writer.append(np.full(frames[0].shape, colors.TRANSPARENT_INDEX, np.uint8))
        with pytest.raises(ValueError, match=r"frame of shape \(5, 4\) after frames of shape \(24, 40\)"):
            writer.append(np.zeros((5, 4), np.uint8))
    for frame, rgb in zip(frames, decoded_frames(buffer.getvalue())[1], strict=True):
        np.testing.assert_array_equal(rgb, to_rgb(frame))
    with pytest.raises(ValueError, match=r"frame of shape \(24, 40\) after frames of shape \(4, 4\)"):
        ApngWriter(io.BytesIO(), still=np.zeros((4, 4), np.uint8)).append(frames[0])
    with pytest.raises(ViewerError, match="fps must be greater than 0 and at most 50, got 60"):
        ApngWriter(tmp_path / "b.png", fps=60)

    class Broken(io.BytesIO):
        def write(self, data: bytes) -> int:  # type: ignore[override]
            raise OSError("disk full")

    def write_all() -> None:
        with ApngWriter(Broken()) as broken:
            for frame in frames:
                broken.append(frame)

    with pytest.raises(OSError, match="disk full"):  # raised on the encoder thread, re-raised to the caller
        write_all()
    assert write_apng([]) == b""  # no frame, no file content


def test_render_as_apng_and_as_gif_gives_the_same_frames_and_times(tmp_path: Path) -> None:
    from viewer_fixtures import animation_frames, make_store

    from actrec.viewer import render_run

    make_store(tmp_path / "run", range(7))
    apng = render_run(tmp_path / "run", out_dir=tmp_path / "apng", tile_size=16, fps=4)
    render_run(tmp_path / "run", out_dir=tmp_path / "gif", tile_size=16, fps=4, video_format="gif")
    assert sorted(path.name for path in apng.files) == sorted(
        ["net.conv1.png", "net.conv1.sheet.png", "net.conv2.png", "net.conv2.sheet.png", "curves.png"]
    )
    for layer in ("net.conv1", "net.conv2"):
        ours, theirs = (
            animation_frames(tmp_path / "apng" / f"{layer}.png"),
            animation_frames(tmp_path / "gif" / f"{layer}.gif"),
        )
        assert len(ours) == len(theirs) == 7
        for index, (mine, other) in enumerate(zip(ours, theirs, strict=True)):
            assert np.array_equal(mine, other), (layer, index)
        still, _, apng_durations = decoded_frames(tmp_path / "apng" / f"{layer}.png")
        _, _, gif_durations = decoded_frames(tmp_path / "gif" / f"{layer}.gif")
        assert apng_durations == gif_durations == [250.0] * 6 + [1000.0]
        # What a viewer that does not animate shows: the last step, the trained state.
        assert still is not None
        np.testing.assert_array_equal(still, ours[-1])
        assert (tmp_path / "apng" / f"{layer}.sheet.png").read_bytes() == (
            tmp_path / "gif" / f"{layer}.sheet.png"
        ).read_bytes()


def test_render_names_never_take_the_curves_or_a_sheet_file() -> None:
    from actrec.viewer.output import unique_stems

    stems = unique_stems(["curves", "a", "a.sheet", "b"], reserved=["curves", "a.sheet", "a.sheet.sheet", "b.sheet"])
    assert stems["a"] == "a"
    assert stems["b"] == "b"
    assert stems["curves"].startswith("curves-")
    assert stems["a.sheet"].startswith("a.sheet-")
    assert len(set(stems.values())) == 4


def test_a_forked_child_encodes_on_its_own_threads(tmp_path: Path) -> None:
    import multiprocessing

    frames = random_frames(4)
    write_apng(frames)  # this process's encoder threads exist now; a forked child has none of them
    context = multiprocessing.get_context("fork")
    child = context.Process(target=_write_in_child, args=(tmp_path / "child.png",))
    child.start()
    child.join(60)
    if child.is_alive():  # stuck waiting for threads it does not have
        child.kill()
        child.join()
    assert child.exitcode == 0
    assert len(decoded_frames(tmp_path / "child.png")[1]) == 4


def _write_in_child(path: Path) -> None:
    with ApngWriter(path) as writer:
        for frame in random_frames(4):
            writer.append(frame)
