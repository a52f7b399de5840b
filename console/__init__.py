"""Progress on a terminal and in a log file: one rule for every actrec command.

On a terminal, a tqdm bar that redraws in place. When the stream is not a terminal (a job log, ``| tee``, CI,
a cluster), carriage-return redraws would pile up in the file as one unreadable line, so instead a plain line
is printed at most every ``every_s`` seconds (30 by default) and, if any was, once at the end::

    actrec render: 420/1770 frames (24%), 88.1/s, ETA 0:15

:class:`StatusLine` is the same rule for a status that is text rather than a count (``actrec sweep``'s
"3/8 trials finished, 2 running"): rewritten in place on a terminal, a plain line per change elsewhere.

Imports nothing of torch, Lightning or h5py, so every package may use it.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any

__all__ = ["DEFAULT_EVERY_S", "Progress", "StatusLine", "format_duration", "is_terminal"]

DEFAULT_EVERY_S = 30.0
"""Seconds between plain progress lines when output is not a terminal (``ACTREC_PROGRESS_EVERY`` overrides)."""


def is_terminal(stream: IO[str] | None = None) -> bool:
    """Whether ``stream`` (stderr by default) is an interactive terminal that can redraw a line in place."""
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def format_duration(seconds: float) -> str:
    """``0:07``, ``12:31``, ``1:02:03``: the ETA format of tqdm and Lightning's bars."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _every_s(every_s: float | None) -> float:
    if every_s is not None:
        return every_s
    try:
        return float(os.environ.get("ACTREC_PROGRESS_EVERY", DEFAULT_EVERY_S))
    except ValueError:
        return DEFAULT_EVERY_S


class Progress:
    """Counts work done out of ``total``; a bar on a terminal, a line every ``every_s`` seconds elsewhere.

    Use as a context manager, or call :meth:`close`::

        with Progress(total=len(frames), description="actrec render", unit="frames") as progress:
            for frame in frames:
                ...
                progress.update()

    Args:
        total: units of work in all; ``None`` if unknown (no percentage, no ETA).
        description: what is progressing, the start of every line (``"actrec render"``).
        unit: the word after the counts (``"frames"``, ``"steps"``).
        enabled: ``False`` prints nothing; ``None`` decides (always on).
        stream: where to write; stderr by default.
        every_s: seconds between plain lines when ``stream`` is not a terminal.
    """

    def __init__(
        self,
        total: int | None,
        description: str,
        *,
        unit: str = "it",
        enabled: bool | None = None,
        stream: IO[str] | None = None,
        every_s: float | None = None,
    ) -> None:
        self.total = total
        self.description = description
        self.unit = unit
        self.count = 0
        self._stream = sys.stderr if stream is None else stream
        self._enabled = enabled is not False
        self._every_s = _every_s(every_s)
        self._started = time.monotonic()
        self._last_line = self._started
        self._bar: Any = None
        self._closed = False
        self._printed = False  # a plain line was printed: the work was long enough to close with one
        if self._enabled and is_terminal(self._stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=description, unit=f" {unit}", file=self._stream, leave=False)

    def update(self, count: int = 1) -> None:
        """Add ``count`` units of finished work."""
        self.count += count
        if not self._enabled:
            return
        if self._bar is not None:
            self._bar.update(count)
            return
        now = time.monotonic()
        if now - self._last_line >= self._every_s:
            self._last_line = now
            self._print_line(now)

    def line(self, now: float | None = None) -> str:
        """The plain progress line as it stands, e.g. ``actrec render: 420/1770 frames (24%), 88.1/s, ETA 0:15``."""
        elapsed = (time.monotonic() if now is None else now) - self._started
        rate = self.count / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.description}: {self.count}"]
        if self.total:
            parts[0] += f"/{self.total} {self.unit} ({100 * self.count / self.total:.0f}%)"
        else:
            parts[0] += f" {self.unit}"
        parts.append(f"{rate:.1f}/s")
        if self.total and rate > 0 and self.count < self.total:
            parts.append(f"ETA {format_duration((self.total - self.count) / rate)}")
        elif self.total and self.count >= self.total:
            parts.append(f"done in {format_duration(elapsed)}")
        return ", ".join(parts)

    def _print_line(self, now: float) -> None:
        self._printed = True
        print(self.line(now), file=self._stream, flush=True)

    def close(self) -> None:
        """Finish: remove the bar, or print the last plain line if plain lines were printed (work shorter than
        one interval, such as a report's dynamics of a small run, prints nothing at all)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self._enabled and self.count and self._printed:
            self._print_line(time.monotonic())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class StatusLine:
    """One status line rewritten in place on a terminal; a plain line per change otherwise (a log, CI).

    Args:
        stream: where to write; stderr by default.
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.tty = is_terminal(self.stream)
        self.last = ""

    def show(self, text: str) -> None:
        """Show ``text`` as the status (nothing happens if it is the status already)."""
        if text == self.last:
            return
        self.last = text
        if self.tty:
            self.stream.write(f"\r\x1b[K{text}")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        """A line of its own (a trial ended), kept above the status line."""
        if self.tty:
            self.stream.write(f"\r\x1b[K{text}\n")
            if self.last:
                self.stream.write(self.last)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the status line on a terminal (the next output starts on a line of its own)."""
        if self.tty and self.last:
            self.stream.write("\n")
            self.stream.flush()
