"""Thin writers: palette-index frames to GIF, MP4, PNG and TensorBoard image summaries.

Frames are ``(H, W)`` uint8 arrays of indices into :data:`actrec.recording.colors.PALETTE` (what
:class:`~actrec.viewer.frames.FrameLayout` draws); the PNG and MP4 writers also take ``(H, W, 3)`` RGB.
"""

from __future__ import annotations

import collections
import importlib.util
import io
import os
import queue
import struct
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any, TypeVar

import numpy as np
from PIL import GifImagePlugin, Image

from actrec.recording import colors
from actrec.viewer._events import EventFile
from actrec.viewer.errors import ViewerError

LAST_FRAME_HOLD_S = 1.0
"""How long an animated GIF shows its last frame before it loops (or the frame time, if longer)."""
_MIN_FPS = 0.01  # a frame every 100 s: GIF and APNG frame times are 16-bit centiseconds (655.35 s at most)
_MAX_FPS = 50.0  # GIF delays are whole centiseconds, and browsers slow anything under 2 cs down to 10 cs


def check_fps(fps: float) -> float:
    """Return ``fps`` as a float if a GIF can play it.

    Raises:
        ViewerError: ``fps`` is not in ``[0.01, 50]``.
    """
    if not (0 < fps <= _MAX_FPS):
        raise ViewerError(f"fps must be greater than 0 and at most {_MAX_FPS:g}, got {fps:g}.")
    if fps < _MIN_FPS:
        raise ViewerError(
            f"fps must be at least {_MIN_FPS:g} (GIF and APNG hold a frame at most 655 seconds), got {fps:g}."
        )
    return float(fps)


def _palette_image(frame: np.ndarray) -> Image.Image:
    image = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8), "P")
    image.putpalette(colors.palette_bytes())
    return image


def _as_indices(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim != 2 or frame.dtype != np.uint8:
        raise ValueError(f"expected an (H, W) uint8 array of palette indices, got {frame.dtype} {frame.shape}.")
    return frame


_Writer = TypeVar("_Writer", bound="_BackgroundWriter")
_Result = TypeVar("_Result")


class _BackgroundWriter:
    """What the animation writers share: checked frames, copied into a bounded queue, encoded on a thread.

    Subclasses implement :meth:`_encode` (one frame, on the encoder thread) and :meth:`_finish` (after
    the last frame, on the caller's thread). An encoder failure is re-raised to the caller at its next
    :meth:`append` or at :meth:`close`.
    """

    def __init__(self, target: str | os.PathLike | IO[bytes], *, queue_frames: int, thread_name: str) -> None:
        self._owns_file = isinstance(target, (str, os.PathLike))
        self._file: IO[bytes] | None = (
            open(target, "wb") if isinstance(target, (str, os.PathLike)) else target  # noqa: SIM115
        )
        self._shape: tuple[int, ...] | None = None
        self._queue: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=max(1, queue_frames))
        self._failure: BaseException | None = None
        self._encoder = threading.Thread(target=self._encode_frames, name=thread_name, daemon=True)
        self._encoder.start()
        self.frames_written = 0

    def append(self, frame: np.ndarray) -> None:
        """Add one ``(H, W)`` uint8 palette-index frame; every frame must have the first one's size.

        The frame is copied, so the caller may reuse its array.

        Raises:
            ValueError: the frame is not ``(H, W)`` uint8, uses the reserved transparent index, or its
                size differs from the first frame's.
        """
        frame = _check_frame(frame)
        if self._shape is not None and frame.shape != self._shape:
            raise ValueError(f"frame of shape {frame.shape} after frames of shape {self._shape}.")
        self._raise_failure()
        self._shape = frame.shape
        self._queue.put(np.array(frame, copy=True, order="C"))
        self.frames_written += 1

    def _raise_failure(self) -> None:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    def _encode_frames(self) -> None:
        while True:
            frame = self._queue.get()
            if frame is None:
                return
            if self._failure is not None:
                continue  # drain: the caller learns of the failure at its next append or close
            try:
                self._encode(frame)
            except BaseException as error:  # noqa: BLE001 - handed to the caller's thread
                self._failure = error

    def _encode(self, frame: np.ndarray) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Finish the file and close it if this writer opened it. Safe to call twice."""
        if self._file is None:
            return
        try:
            self._queue.put(None)
            self._encoder.join()
            self._raise_failure()
            self._finish()
            self._file.flush()
        finally:
            if self._owns_file:
                self._file.close()
            self._file = None

    def __enter__(self: _Writer) -> _Writer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _open_file(file: IO[bytes] | None) -> IO[bytes]:
    """An animation writer's file while it is open (append() refuses a closed writer before reaching here)."""
    if file is None:
        raise ValueError("the writer's file is already closed.")
    return file


def _check_frame(frame: np.ndarray) -> np.ndarray:
    frame = _as_indices(frame)
    if frame.size and int(frame.max()) >= colors.TRANSPARENT_INDEX:
        raise ValueError(f"frame uses palette index {colors.TRANSPARENT_INDEX}, reserved for transparency.")
    return frame


def _changed_box(frame: np.ndarray, previous: np.ndarray) -> tuple[int, int, np.ndarray] | None:
    """``(left, top, unchanged)`` of the smallest box holding every changed pixel, with the box's mask of
    unchanged pixels; ``None`` when nothing changed."""
    unchanged = np.equal(frame, previous)
    rows = np.flatnonzero(~unchanged.all(axis=1))
    if not rows.size:
        return None
    cols = np.flatnonzero(~unchanged[rows[0] : rows[-1] + 1].all(axis=0))
    top, left = int(rows[0]), int(cols[0])
    box = unchanged[top : rows[-1] + 1, left : cols[-1] + 1]
    return left, top, box


class GifWriter(_BackgroundWriter):
    """Stream palette-index frames into an animated GIF that loops forever.

    Every frame shares the GIF's one global colour table (the fixed palette), so colours are exact
    and identical across frames: no per-frame quantisation, no dithering. Frames are written as they
    come (memory does not grow with the number of steps); each frame after the first stores only
    the rectangle that changed, drawn over the previous frame (disposal "do not dispose"), with
    unchanged pixels in it transparent.

    Differencing and LZW encoding run on a background thread (Pillow's encoder releases the GIL), so
    the caller draws the next frame while this one is encoded; at most ``queue_frames`` frames wait.

    Args:
        target: a path, or a binary file object opened for writing.
        fps: frames per second (at most 50).
        queue_frames: frames that may wait for the encoder before :meth:`append` blocks.

    Raises:
        ViewerError: ``fps`` is out of range.
    """

    def __init__(self, target: str | os.PathLike | IO[bytes], *, fps: float = 10.0, queue_frames: int = 4) -> None:
        self._delay_cs = max(2, round(100 / check_fps(fps)))
        self._previous: np.ndarray | None = None
        self._pending: tuple[Image.Image, tuple[int, int], dict] | None = None
        super().__init__(target, queue_frames=queue_frames, thread_name="gif-encoder")

    def _encode(self, frame: np.ndarray) -> None:
        if self._previous is None:
            self._write_header(frame.shape[1], frame.shape[0])
            left, top, patch = 0, 0, frame
        else:
            changed = _changed_box(frame, self._previous)
            if changed is not None:
                left, top, unchanged = changed
                box = frame[top : top + unchanged.shape[0], left : left + unchanged.shape[1]]
                # Unchanged pixels inside the changed box become the transparent index, showing the
                # previous frame through. Long runs of one index cost LZW a few codes.
                patch = np.where(unchanged, np.uint8(colors.TRANSPARENT_INDEX), box)
            else:  # an identical frame still takes its time slot, so frame counts match steps
                left, top, patch = 0, 0, frame[:1, :1]
        image = Image.fromarray(np.ascontiguousarray(patch), "P")
        extra = {} if self._previous is None else {"transparency": colors.TRANSPARENT_INDEX}
        # Each frame is written when the next one comes (or at close), once its delay is known:
        # the last one is held for LAST_FRAME_HOLD_S, so the animation pauses on the trained state.
        self._write_pending(self._delay_cs)
        self._pending = (image, (left, top), extra)
        self._previous = frame

    def _write_pending(self, delay_cs: int) -> None:
        if self._pending is None:
            return
        file = _open_file(self._file)
        image, offset, extra = self._pending
        self._pending = None
        for chunk in GifImagePlugin.getdata(image, offset=offset, duration=delay_cs * 10, disposal=1, **extra):
            file.write(chunk)

    def _write_header(self, width: int, height: int) -> None:
        file = _open_file(self._file)
        # GIF89a logical screen with a 256-entry global colour table (flags: table present,
        # 8-bit colour resolution, 2**(7+1) entries), background = the white of the palette.
        file.write(b"GIF89a" + struct.pack("<HHBBB", width, height, 0xF7, colors.ZERO_INDEX, 0))
        file.write(colors.palette_bytes())
        # NETSCAPE2.0 application extension: loop count 0 = forever.
        file.write(b"!\xff\x0bNETSCAPE2.0\x03\x01" + struct.pack("<H", 0) + b"\x00")

    def _finish(self) -> None:
        file = _open_file(self._file)
        self._write_pending(max(self._delay_cs, round(LAST_FRAME_HOLD_S * 100)))
        if self._previous is not None:
            file.write(b";")


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_APNG_DISPOSE_NONE = 0
_APNG_BLEND_SOURCE, _APNG_BLEND_OVER = 0, 1
_PNG_FILTER_UP = 2


def _png_chunk(kind: bytes, data: bytes | memoryview = b"") -> bytes:
    return b"".join((struct.pack(">I", len(data)), kind, data, struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))))


def _deflate_rows(pixels: np.ndarray) -> bytes:
    """The zlib stream of PNG image data for ``(H, W)`` palette indices: every row filtered "Up" (its
    difference from the row above), compressed by run-length matching.

    Frames are nearest-neighbour upscaled tiles: filtered "Up", a repeated row is all zeros and a tile row
    one run per map pixel, which zlib's run-length strategy takes almost free and faster than its level 1
    searches. Measured on the quickstart's real frames (6 layers x 379 steps, patches of changed pixels):
    Up + Z_RLE 21.3 MB in 2.0 CPU s; no filter + level 1 29.4 MB / 2.0 s, level 3 25.6 MB / 2.4 s,
    level 4 20.6 MB / 3.6 s; Up + level 1 31.7 MB / 2.0 s (zlib's level, not its strategy, sets the cost).
    Memory level 8 is as small as 9 and ~15% faster here; smaller windows are 4-25x slower (the window
    slides more often).
    """
    height, width = pixels.shape
    rows = np.empty((height, width + 1), np.uint8)
    rows[:, 0] = _PNG_FILTER_UP
    rows[0, 1:] = pixels[0]
    np.subtract(pixels[1:], pixels[:-1], out=rows[1:, 1:])  # modulo 256, as PNG's Up filter is defined
    compressor = zlib.compressobj(1, zlib.DEFLATED, 15, 8, zlib.Z_RLE)
    return compressor.compress(rows.data) + compressor.flush()


def encode_indexed_png(frame: np.ndarray) -> bytes:
    """PNG bytes of ``(H, W)`` palette indices with the fixed palette, compressed as fast as an APNG frame
    (see :func:`_deflate_rows`): ~5x faster than Pillow's level 6 for ~20-40% more bytes on contact sheets."""
    frame = _as_indices(frame)
    height, width = frame.shape
    return b"".join(
        (
            _PNG_SIGNATURE,
            _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)),
            _png_chunk(b"PLTE", colors.palette_bytes()),
            _png_chunk(b"IDAT", _deflate_rows(np.ascontiguousarray(frame))),
            _png_chunk(b"IEND"),
        )
    )


_Frame = tuple[int, int, int, int, int, bytes]
"""An encoded APNG frame: width, height, left, top, blend op, and its image data chunk (IDAT or fdAT)."""


def _data_chunk(data: bytes, sequence: int | None) -> bytes:
    """The image data chunk: an IDAT (``sequence`` is ``None``), or an fdAT with its sequence number."""
    return _png_chunk(b"IDAT", data) if sequence is None else _png_chunk(b"fdAT", struct.pack(">I", sequence) + data)


def _apng_frame(frame: np.ndarray, previous: np.ndarray | None, sequence: int | None) -> _Frame:
    """Encode ``frame``: whole (``previous`` is ``None``), or the box that changed since ``previous``, its
    unchanged pixels transparent, to be blended over it; its data chunk is made here, checksum included, so
    the writing thread only writes."""
    height, width = frame.shape
    if previous is None:
        return width, height, 0, 0, _APNG_BLEND_SOURCE, _data_chunk(_deflate_rows(frame), sequence)
    changed = _changed_box(frame, previous)
    if changed is None:  # an identical frame still takes its time slot, so frame counts match steps
        patch = np.full((1, 1), colors.TRANSPARENT_INDEX, np.uint8)
        return 1, 1, 0, 0, _APNG_BLEND_OVER, _data_chunk(_deflate_rows(patch), sequence)
    left, top, unchanged = changed
    box = frame[top : top + unchanged.shape[0], left : left + unchanged.shape[1]]
    # Unchanged pixels become the transparent index (255, all bits set): OR-ing in the mask as 0 or 255
    # costs one pass where np.where costs three.
    patch = box | unchanged.view(np.uint8) * np.uint8(colors.TRANSPARENT_INDEX)
    return patch.shape[1], patch.shape[0], left, top, _APNG_BLEND_OVER, _data_chunk(_deflate_rows(patch), sequence)


def _still_chunk(still: np.ndarray) -> bytes:
    return _data_chunk(_deflate_rows(still), None)


_encoder_pool: ThreadPoolExecutor | None = None
_encoder_pool_lock = threading.Lock()


def _forget_encoders_after_fork() -> None:
    """A forked child has none of its parent's threads: it starts its own encoder pool when it needs one."""
    global _encoder_pool, _encoder_pool_lock
    _encoder_pool, _encoder_pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_encoders_after_fork)


def _encoders() -> ThreadPoolExecutor:
    """The process's APNG encoder threads, one per CPU, shared by every writer: deflate and numpy release the
    GIL, so frames of one animation encode in parallel while the caller draws the next."""
    global _encoder_pool
    with _encoder_pool_lock:
        if _encoder_pool is None:
            try:
                cpus = len(os.sched_getaffinity(0))
            except AttributeError:  # macOS, Windows
                cpus = os.cpu_count() or 1
            _encoder_pool = ThreadPoolExecutor(max(1, cpus), thread_name_prefix="apng-encoder")
        return _encoder_pool


def run_on_encoders(function: Callable[..., _Result], *args: Any) -> Future[_Result]:
    """Run ``function(*args)`` on the process's encoder threads (those of :class:`ApngWriter`), for work that
    mostly releases the GIL, as deflate does: it runs beside the frames being encoded."""
    return _encoders().submit(function, *args)


class ApngWriter:
    """Stream palette-index frames into an animated PNG (APNG) that loops forever.

    An indexed PNG with the fixed palette, so colours are exact and identical across frames, as in
    :class:`GifWriter`, and frames are differenced the same way: each frame after the first stores only
    the rectangle that changed, blended over the previous frame (dispose "none", blend "over"), its
    unchanged pixels the transparent index (``tRNS``). Frame times are the GIF's (whole centiseconds; the
    last frame held for :data:`LAST_FRAME_HOLD_S`), so both formats play alike. Deflate, unlike GIF's LZW,
    takes the rows a nearest-neighbour upscale repeats almost free: the quickstart's frames are 3x smaller
    than its GIFs and encode ~3x faster.

    Browsers play APNG; viewers that do not show one still picture: the first frame, or ``still`` when
    given (e.g. the trained state). Pillow counts that still as an extra frame 0
    (``Image.info["default_image"]``), before the animation's frames.

    Frames are differenced and deflated on the process's encoder threads (one per CPU, shared by all
    writers; zlib and numpy release the GIL), several at a time; they are written in order as they finish.
    At most ``queue_frames`` frames wait before :meth:`append` blocks.

    Args:
        target: a path, or a binary file object opened for writing.
        fps: frames per second (at most 50, as for GIF).
        num_frames: the number of frames that will be appended, if known: written into the header at
            once. Otherwise (or if it turns out wrong) the header is patched at close, which needs a
            seekable file.
        still: an ``(H, W)`` palette-index frame shown by viewers that do not animate, kept outside the
            animation; every frame must have its size. ``None``: the first frame.
        queue_frames: frames that may be waiting for (or in) encoding before :meth:`append` blocks.

    Raises:
        ViewerError: ``fps`` is out of range.
        ValueError: ``still`` is not a valid frame, or ``num_frames`` is missing for a file that cannot seek.
    """

    def __init__(
        self,
        target: str | os.PathLike | IO[bytes],
        *,
        fps: float = 10.0,
        num_frames: int | None = None,
        still: np.ndarray | None = None,
        queue_frames: int = 8,
    ) -> None:
        self._delay_cs = max(2, round(100 / check_fps(fps)))
        self._planned_frames = num_frames
        self._still = None if still is None else np.array(_check_frame(still), copy=True, order="C")
        self._queue_frames = max(1, queue_frames)
        self._owns_file = isinstance(target, (str, os.PathLike))
        if num_frames is None and not self._owns_file and not _seekable(target):  # type: ignore[arg-type]
            raise ValueError("an APNG written to a file that cannot seek needs num_frames.")
        self._file: IO[bytes] | None = (
            open(target, "wb", buffering=1 << 20) if isinstance(target, (str, os.PathLike)) else target  # noqa: SIM115
        )
        self._shape: tuple[int, ...] | None = None if self._still is None else self._still.shape
        self._previous: np.ndarray | None = None
        self._encoding: collections.deque[Future[_Frame]] = collections.deque()
        self._still_chunk: Future[bytes] | None = None
        self._sequence = 0
        self._actl_offset: int | None = None
        self.frames_written = 0

    def append(self, frame: np.ndarray) -> None:
        """Add one ``(H, W)`` uint8 palette-index frame; every frame must have the first one's (and the still's)
        size.

        The frame is copied, so the caller may reuse its array.

        Raises:
            ValueError: the frame is not ``(H, W)`` uint8, uses the reserved transparent index, or its
                size differs from the first frame's.
        """
        frame = _check_frame(frame)
        if self._shape is not None and frame.shape != self._shape:
            raise ValueError(f"frame of shape {frame.shape} after frames of shape {self._shape}.")
        if self._file is None:
            raise ValueError("append() after close().")
        self._shape = frame.shape
        frame = np.array(frame, copy=True, order="C")
        pool = _encoders()
        if self._previous is None and self._still is not None:
            self._still_chunk = pool.submit(_still_chunk, self._still)
        # Sequence numbers run over fcTL and fdAT chunks alike: frame k's fcTL is 2k and its fdAT 2k + 1, unless
        # the first frame is also the still picture, whose data is an IDAT without a number.
        index = self.frames_written
        sequence = 2 * index + 1 if self._still is not None else (None if index == 0 else 2 * index)
        self._encoding.append(pool.submit(_apng_frame, frame, self._previous, sequence))
        self._previous = frame
        self.frames_written += 1
        # Every frame but the newest is known not to be the last, so its time is the plain frame time.
        while len(self._encoding) > self._queue_frames:
            self._write_frame(self._encoding.popleft().result(), self._delay_cs)

    def _write_frame(self, encoded: _Frame, delay_cs: int) -> None:
        file = _open_file(self._file)
        if self._sequence == 0:
            self._write_header(encoded[0], encoded[1])
        width, height, left, top, blend, chunk = encoded
        control = struct.pack(">IIIIHHBB", width, height, left, top, delay_cs, 100, _APNG_DISPOSE_NONE, blend)
        file.write(_png_chunk(b"fcTL", struct.pack(">I", self._sequence) + control))
        file.write(chunk)
        self._sequence += 1 if self._sequence == 0 and self._still is None else 2

    def _write_header(self, width: int, height: int) -> None:
        file = _open_file(self._file)
        file.write(_PNG_SIGNATURE)
        # 8-bit palette indices (colour type 3), deflate, adaptive filters, not interlaced.
        file.write(_png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)))
        file.write(_png_chunk(b"PLTE", colors.palette_bytes()))
        # Every index opaque but the reserved one: unchanged pixels of a frame's box show the frame below.
        file.write(_png_chunk(b"tRNS", bytes([255] * colors.TRANSPARENT_INDEX + [0])))
        self._actl_offset = file.tell() if _seekable(file) else None
        file.write(self._actl(self._planned_frames or 0))
        if self._still_chunk is not None:  # APNG's "default image not part of the animation"
            file.write(self._still_chunk.result())

    @staticmethod
    def _actl(frames: int) -> bytes:
        return _png_chunk(b"acTL", struct.pack(">II", frames, 0))  # 0 plays: loop forever

    def close(self) -> None:
        """Write the frames still encoding (the last held for LAST_FRAME_HOLD_S), finish the file and close it
        if this writer opened it. Safe to call twice; an encoding error is raised here."""
        if self._file is None:
            return
        try:
            while self._encoding:
                encoded = self._encoding.popleft().result()
                last = not self._encoding
                self._write_frame(
                    encoded, max(self._delay_cs, round(LAST_FRAME_HOLD_S * 100)) if last else self._delay_cs
                )
            if self.frames_written:
                self._finish()
            self._file.flush()
        finally:
            for pending in self._encoding:  # after an error: nothing more is written
                pending.cancel()
            self._encoding.clear()
            if self._owns_file:
                self._file.close()
            self._file = None

    def _finish(self) -> None:
        file = _open_file(self._file)
        file.write(_png_chunk(b"IEND"))
        if self.frames_written != self._planned_frames:
            if self._actl_offset is None:
                raise ValueError(
                    f"{self.frames_written} frames appended, {self._planned_frames} announced, "
                    "and the file cannot seek to correct it."
                )
            end = file.tell()
            file.seek(self._actl_offset)
            file.write(self._actl(self.frames_written))
            file.seek(end)

    def __enter__(self) -> ApngWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _seekable(file: IO[bytes]) -> bool:
    try:
        return bool(file.seekable())
    except (AttributeError, OSError, ValueError):
        return False


class Mp4Writer:
    """Stream frames into an H.264 MP4 through imageio-ffmpeg.

    MP4 stores colour with chroma subsampling, so colours are close but not exact; use GIF when exact
    colours matter. Frames are padded with white to a multiple of 16 pixels, as H.264 encoders want.

    Args:
        path: where to write the video.
        fps: frames per second.

    Raises:
        ViewerError: imageio-ffmpeg is not installed, or ``fps`` is out of range.
    """

    def __init__(self, path: str | os.PathLike, *, fps: float = 10.0) -> None:
        self.check_available()
        import imageio.v2 as imageio

        self._writer: Any = imageio.get_writer(
            os.fspath(path),
            format="FFMPEG",
            mode="I",
            fps=check_fps(fps),
            codec="libx264",
            # imageio maps quality 6 to x264's -crf 20: sharp tile edges and labels stay clean, and a
            # 16-channel layer's video is ~1.5x smaller than its GIF (crf 25 blurs the text, crf 10
            # is larger than the GIF).
            quality=6,
            pixelformat="yuv420p",  # what browsers and slide software play
            macro_block_size=16,
            ffmpeg_log_level="error",
        )
        self.frames_written = 0
        self._fps = float(fps)
        self._last: np.ndarray | None = None

    @staticmethod
    def check_available() -> None:
        """Raise :class:`ViewerError` unless imageio-ffmpeg (the ``mp4`` extra) is installed."""
        if importlib.util.find_spec("imageio_ffmpeg") is None:
            raise ViewerError("MP4 output needs imageio-ffmpeg; install it with: pip install 'actrec[mp4]'.")

    def append(self, frame: np.ndarray) -> None:
        """Add one frame: ``(H, W)`` palette indices or ``(H, W, 3)`` uint8 RGB."""
        frame = np.asarray(frame)
        rgb = colors.to_rgb(frame) if frame.ndim == 2 else frame
        height, width = rgb.shape[:2]
        padded = np.full((-(-height // 16) * 16, -(-width // 16) * 16, 3), 255, np.uint8)
        padded[:height, :width] = rgb
        self._writer.append_data(padded)
        self._last = padded
        self.frames_written += 1

    def close(self) -> None:
        """Finish and close the video, holding the last frame for LAST_FRAME_HOLD_S. Safe to call twice."""
        if self._writer is not None:
            try:
                # A video's frames all last one frame time: the hold is the last frame repeated.
                for _ in range(max(0, round(self._fps * LAST_FRAME_HOLD_S) - 1) if self._last is not None else 0):
                    self._writer.append_data(self._last)
            finally:
                self._writer.close()
                self._writer = None

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


ANIMATION_SUFFIXES = {"apng": ".png", "gif": ".gif", "mp4": ".mp4"}
"""The file suffix of each animation format (an animated PNG is a ``.png``: browsers play it)."""

ANIMATION_BYTES_PER_PIXEL = {"apng": 0.02, "gif": 0.1, "mp4": 0.06}
"""Bytes a format writes per frame pixel, for size estimates: measured on the quickstart run's renders (APNG
0.021, GIF 0.063; MP4 about 60% of the GIF), rounded up."""

AnimationWriter = ApngWriter | GifWriter | Mp4Writer


def animation_writer(
    video_format: str,
    path: str | os.PathLike,
    *,
    fps: float,
    num_frames: int | None = None,
    still: np.ndarray | None = None,
) -> AnimationWriter:
    """The writer of ``video_format`` (a key of :data:`ANIMATION_SUFFIXES`) for ``path``.

    ``num_frames`` and ``still`` are what an APNG uses (see :class:`ApngWriter`); the other formats ignore them.

    Raises:
        ViewerError: the format is unknown, or ``fps`` is out of range, or MP4 support is missing.
    """
    if video_format == "apng":
        return ApngWriter(path, fps=fps, num_frames=num_frames, still=still)
    if video_format == "gif":
        return GifWriter(path, fps=fps)
    if video_format == "mp4":
        return Mp4Writer(path, fps=fps)
    raise ViewerError(f"unknown animation format {video_format!r}; choose one of {', '.join(ANIMATION_SUFFIXES)}.")


def encode_png(frame: np.ndarray, *, compress_level: int = 6) -> bytes:
    """PNG bytes of ``(H, W)`` palette indices (an indexed PNG with the fixed palette) or ``(H, W, 3)`` RGB."""
    frame = np.asarray(frame)
    image = _palette_image(frame) if frame.ndim == 2 else Image.fromarray(np.ascontiguousarray(frame, np.uint8), "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def write_png(frame: np.ndarray, target: str | os.PathLike | IO[bytes]) -> None:
    """Write one frame as PNG to a path or binary file object (see :func:`encode_png`)."""
    data = encode_png(frame)
    if isinstance(target, (str, os.PathLike)):
        with open(target, "wb") as file:
            file.write(data)
    else:
        target.write(data)


class TensorBoardImageWriter:
    """Write frames as TensorBoard image summaries into one new event file in ``log_dir``.

    Events are TensorBoard's own protos, so neither torch nor TensorFlow is needed; the records are
    framed by :mod:`._events`, whose checksum is ~10x faster than TensorBoard's pure-Python one.

    Args:
        log_dir: the folder to write the event file into (created if missing).
        filename_suffix: appended to the event file's name, e.g. ``".net.conv1"``.
        staged: write under a name TensorBoard ignores until :func:`actrec.viewer._events.publish_staged`.
    """

    def __init__(self, log_dir: str | os.PathLike, *, filename_suffix: str = "", staged: bool = False) -> None:
        # Imported here: only the TensorBoard export pays for importing tensorboard.
        from tensorboard.compat.proto import event_pb2, summary_pb2

        self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
        self._file: EventFile | None = EventFile(log_dir, filename_suffix, staged=staged)
        self.path = self._file.path
        # Every event file starts with its version, as TensorBoard's writers do.
        self._file.write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())

    def add_image(self, tag: str, frame: np.ndarray, step: int, *, wall_time: float | None = None) -> None:
        """Add one image under ``tag`` at ``step``: palette indices or RGB, stored as PNG."""
        frame = np.asarray(frame)
        # Level 1: export speed matters more than a few percent of event-file size.
        image = self._summary_pb2.Summary.Image(
            height=frame.shape[0],
            width=frame.shape[1],
            colorspace=3,
            encoded_image_string=encode_png(frame, compress_level=1),
        )
        summary = self._summary_pb2.Summary(value=[self._summary_pb2.Summary.Value(tag=tag, image=image)])
        event = self._event_pb2.Event(
            wall_time=time.time() if wall_time is None else wall_time, step=int(step), summary=summary
        )
        if self._file is None:
            raise ValueError("add_image() after close().")
        self._file.write(event.SerializeToString())

    def close(self) -> None:
        """Close the event file. Safe to call twice."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> TensorBoardImageWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
