"""Thin writers: palette-index frames to GIF, MP4, PNG and TensorBoard image summaries.

Frames are ``(H, W)`` uint8 arrays of indices into :data:`actrec.recording.colors.PALETTE` (what
:class:`~actrec.viewer.frames.FrameLayout` draws); the PNG and MP4 writers also take ``(H, W, 3)`` RGB.
"""

from __future__ import annotations

import importlib.util
import io
import os
import queue
import struct
import threading
import time
from typing import IO, Any

import numpy as np
from PIL import GifImagePlugin, Image

from actrec.recording import colors
from actrec.viewer._events import EventFile
from actrec.viewer.errors import ViewerError

LAST_FRAME_HOLD_S = 1.0
"""How long an animated GIF shows its last frame before it loops (or the frame time, if longer)."""
_MAX_FPS = 50.0  # GIF delays are whole centiseconds, and browsers slow anything under 2 cs down to 10 cs


def check_fps(fps: float) -> float:
    """Return ``fps`` as a float if a GIF can play it.

    Raises:
        ViewerError: ``fps`` is not in ``(0, 50]``.
    """
    if not (0 < fps <= _MAX_FPS):
        raise ViewerError(f"fps must be greater than 0 and at most {_MAX_FPS:g}, got {fps:g}.")
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


class GifWriter:
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
        self._owns_file = isinstance(target, (str, os.PathLike))
        self._file: IO[bytes] | None = (
            open(target, "wb") if isinstance(target, (str, os.PathLike)) else target  # noqa: SIM115
        )
        self._previous: np.ndarray | None = None
        self._shape: tuple[int, ...] | None = None
        self._pending: tuple[Image.Image, tuple[int, int], dict] | None = None
        self._queue: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=max(1, queue_frames))
        self._failure: BaseException | None = None
        self._encoder = threading.Thread(target=self._encode_frames, name="gif-encoder", daemon=True)
        self._encoder.start()
        self.frames_written = 0

    def append(self, frame: np.ndarray) -> None:
        """Add one ``(H, W)`` uint8 palette-index frame; every frame must have the first one's size.

        The frame is copied, so the caller may reuse its array.

        Raises:
            ValueError: the frame is not ``(H, W)`` uint8, uses the reserved transparent index, or its
                size differs from the first frame's.
        """
        frame = _as_indices(frame)
        if frame.size and int(frame.max()) >= colors.TRANSPARENT_INDEX:
            raise ValueError(f"frame uses palette index {colors.TRANSPARENT_INDEX}, reserved for transparency.")
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
        if self._previous is None:
            self._write_header(frame.shape[1], frame.shape[0])
            left, top, patch = 0, 0, frame
        else:
            changed = np.not_equal(frame, self._previous)
            rows = np.flatnonzero(changed.any(axis=1))
            if rows.size:
                cols = np.flatnonzero(changed[rows[0] : rows[-1] + 1].any(axis=0))
                top, left = int(rows[0]), int(cols[0])
                box = (slice(top, rows[-1] + 1), slice(left, cols[-1] + 1))
                # Unchanged pixels inside the changed box become the transparent index, showing the
                # previous frame through. Long runs of one index cost LZW a few codes.
                patch = np.where(changed[box], frame[box], np.uint8(colors.TRANSPARENT_INDEX))
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
        assert self._file is not None, "the file is closed only after the last frame is written"
        image, offset, extra = self._pending
        self._pending = None
        for chunk in GifImagePlugin.getdata(image, offset=offset, duration=delay_cs * 10, disposal=1, **extra):
            self._file.write(chunk)

    def _write_header(self, width: int, height: int) -> None:
        assert self._file is not None, "the header is written before close()"
        # GIF89a logical screen with a 256-entry global colour table (flags: table present,
        # 8-bit colour resolution, 2**(7+1) entries), background = the white of the palette.
        self._file.write(b"GIF89a" + struct.pack("<HHBBB", width, height, 0xF7, colors.ZERO_INDEX, 0))
        self._file.write(colors.palette_bytes())
        # NETSCAPE2.0 application extension: loop count 0 = forever.
        self._file.write(b"!\xff\x0bNETSCAPE2.0\x03\x01" + struct.pack("<H", 0) + b"\x00")

    def close(self) -> None:
        """Finish the file (trailer byte) and close it if this writer opened it. Safe to call twice."""
        if self._file is None:
            return
        try:
            self._queue.put(None)
            self._encoder.join()
            self._raise_failure()
            self._write_pending(max(self._delay_cs, round(LAST_FRAME_HOLD_S * 100)))
            if self._previous is not None:
                self._file.write(b";")
            self._file.flush()
        finally:
            if self._owns_file:
                self._file.close()
            self._file = None

    def __enter__(self) -> GifWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


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
        assert self._file is not None, "add_image() after close()"
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
