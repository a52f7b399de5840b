"""Anti-aliased text in palette indices, with Pillow's built-in font (no font files to ship).

Text is rasterised once into a coverage mask (cached: frames repeat the same strings), then
stamped into a palette-index canvas by mapping coverage to a white-to-ink ramp of the fixed
palette. Text always sits on the white background, so that ramp is exactly what anti-aliasing
against white would give.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from actrec.recording import colors

INKS = ("text", "muted", "right", "wrong")


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the small fixed-size bitmap font
        return ImageFont.load_default()


def _ink_lut(ink: str) -> np.ndarray:
    """Palette index for each coverage level ``0 .. INK_LEVELS`` (level 0 is never stamped)."""
    coverage = np.arange(colors.INK_LEVELS + 1) / colors.INK_LEVELS
    if ink in ("text", "muted"):
        darkest = colors.PALETTE[colors.TEXT_INDEX if ink == "text" else colors.MUTED_INDEX, 0]
        return np.array([colors.grey_index(round(255 - c * (255 - int(darkest)))) for c in coverage], np.uint8)
    start = colors.RIGHT_START if ink == "right" else colors.WRONG_START
    return np.array([colors.ZERO_INDEX, *range(start, start + colors.INK_LEVELS)], np.uint8)


_LUTS = {ink: _ink_lut(ink) for ink in INKS}


def _levels(coverage: np.ndarray) -> np.ndarray:
    """Coverage ``0 .. 255`` as ink levels ``0 .. INK_LEVELS`` (a new array)."""
    return np.rint(coverage * np.float32(colors.INK_LEVELS / 255)).astype(np.uint8)


@lru_cache(maxsize=1024)
def _glyph(char: str, size: int) -> tuple[np.ndarray, int, float]:
    """``(ink levels 0..INK_LEVELS over the line box, x offset, advance)`` of one character."""
    font = _font(size)
    left, _, right, _ = (int(edge) for edge in font.getbbox(char))  # whole pixels (Pillow's stubs say float)
    ascent, descent = font.getmetrics() if hasattr(font, "getmetrics") else (int(font.getbbox(char)[3]), 0)
    image = Image.new("L", (max(1, right - min(left, 0)), max(1, ascent + descent)), 0)
    ImageDraw.Draw(image).text((-min(left, 0), 0), char, font=font, fill=255)
    return _levels(np.asarray(image)), min(left, 0), font.getlength(char)


_MAX_PREFIX_SPACES = 16
"""Texts with more spaces than this before their last word are laid out glyph by glyph, not from cached prefixes."""
_MAX_LAYOUTS = 4096
"""Laid-out texts kept (least recently used dropped first): a render's titles, labels and their prefixes."""
_layouts: OrderedDict[tuple[str, int], tuple[np.ndarray, float, int]] = OrderedDict()
_layouts_lock = threading.Lock()


def _cached_layout(key: tuple[str, int]) -> tuple[np.ndarray, float, int] | None:
    with _layouts_lock:
        found = _layouts.get(key)
        if found is not None:
            _layouts.move_to_end(key)
        return found


def _laid_out(text: str, size: int) -> tuple[np.ndarray, float, int]:
    """``(ink levels, x after the text, rightmost column any glyph reaches)`` of ``text`` laid out from x = 0.

    Glyph by glyph over the longest prefix ending in a space that is laid out already: every frame of a layer
    titles "net.conv6 · step N · epoch E", so only the words from the step number on are new, and they are
    composed onto "net.conv6 · step " in one go. A text that shares no laid-out prefix lays out its prefix up
    to its last inner space first (and so on, word by word), for the texts after it to find. The same pixels
    however a text is cut, since each glyph's place depends only on the advances before it and overlaps take
    the maximum. Glyphs are composed as ink levels, not coverage: rounding coverage to a level is monotonic,
    so the level of the overlapping coverages' maximum is the maximum of their levels.
    """
    found = _cached_layout((text, size))
    if found is not None:
        return found
    cut = text.rfind(" ", 0, len(text) - 1) + 1  # 0: no space before the last character
    if text.count(" ", 0, cut) > _MAX_PREFIX_SPACES:  # a long text of many words (a store's class name): the
        cut = 0  # prefixes would recurse once a word, past Python's limit, and are not worth caching
    start = cut
    while start and _cached_layout((text[:start], size)) is None:
        start = text.rfind(" ", 0, start - 1) + 1
    start = start or cut
    base, x, reach = _laid_out(text[:start], size) if start else (None, 0.0, 1)
    glyphs = [_glyph(char, size) for char in text[start:]]
    positions = []
    for _, offset, advance in glyphs:
        positions.append(round(x) + offset)
        x += advance
    reach = max([reach] + [p + g[0].shape[1] for p, g in zip(positions, glyphs, strict=True)])
    height = glyphs[0][0].shape[0] if glyphs else 1 if base is None else base.shape[0]
    canvas = np.zeros((height, max(round(x), reach)), np.uint8)
    if base is not None:
        canvas[:, : base.shape[1]] = base
    for position, (levels, _, _) in zip(positions, glyphs, strict=True):
        target = canvas[:, max(position, 0) : position + levels.shape[1]]
        np.maximum(target, levels[:, levels.shape[1] - target.shape[1] :], out=target)
    canvas.setflags(write=False)
    with _layouts_lock:
        _layouts[(text, size)] = (canvas, x, reach)
        if len(_layouts) > _MAX_LAYOUTS:
            _layouts.popitem(last=False)
    return canvas, x, reach


def _coverage(text: str, size: int) -> np.ndarray:
    """``(h, w)`` coverage levels ``0 .. INK_LEVELS`` of ``text`` over the font's line box (cached, read-only).

    Composed from cached glyphs rather than laid out by FreeType each time: frames carry a new
    title every step, and composing is ~10x faster than a fresh layout, with the same pixels for
    this font (its advances are whole pixels and it has no kerning pairs in our strings).
    """
    return _laid_out(text, size)[0]


def text_size(text: str, size: int) -> tuple[int, int]:
    """``(width, height)`` in pixels of ``text`` drawn at font ``size``."""
    height, width = _coverage(text, size).shape
    return width, height


def fit_text(text: str, size: int, max_width: int) -> str:
    """``text``, shortened with an ellipsis if needed to fit ``max_width`` pixels."""
    if text_size(text, size)[0] <= max_width:
        return text
    for end in range(len(text) - 1, 0, -1):
        candidate = text[:end].rstrip() + "…"
        if text_size(candidate, size)[0] <= max_width:
            return candidate
    return ""


def draw_text(canvas: np.ndarray, x: int, y: int, text: str, *, size: int, ink: str = "text") -> None:
    """Stamp ``text`` into a palette-index canvas in place, top-left corner at ``(x, y)``.

    Internal helper for building frames; the public frame functions copy their canvas first.
    Text running past the canvas edge is clipped.
    """
    levels = _coverage(text, size)
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + levels.shape[1], canvas.shape[1]), min(y + levels.shape[0], canvas.shape[0])
    if x1 <= x0 or y1 <= y0:
        return
    levels = levels[y0 - y : y1 - y, x0 - x : x1 - x]
    region = canvas[y0:y1, x0:x1]
    inked = levels > 0
    region[inked] = _LUTS[ink][levels[inked]]


@lru_cache(maxsize=16)
def _mark_coverage(kind: str, size: int) -> np.ndarray:
    """A tick (``"right"``) or cross (``"wrong"``) of ``size`` pixels; the font has neither glyph."""
    supersample = 4
    big = size * supersample
    image = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(image)
    width = max(supersample, round(big * 0.16))
    if kind == "right":
        points = [(0.08, 0.55), (0.38, 0.85), (0.92, 0.18)]
        draw.line([(x * big, y * big) for x, y in points], fill=255, width=width, joint="curve")
    else:
        draw.line([(0.15 * big, 0.15 * big), (0.85 * big, 0.85 * big)], fill=255, width=width)
        draw.line([(0.15 * big, 0.85 * big), (0.85 * big, 0.15 * big)], fill=255, width=width)
    small = image.resize((size, size), Image.Resampling.BOX)
    levels = np.rint(np.asarray(small, dtype=np.float32) * (colors.INK_LEVELS / 255)).astype(np.uint8)
    levels.setflags(write=False)
    return levels


def draw_mark(canvas: np.ndarray, x: int, y: int, kind: str, *, size: int) -> None:
    """Stamp a tick (``kind="right"``, green) or cross (``"wrong"``, red) in place at ``(x, y)``."""
    levels = _mark_coverage(kind, size)
    region = canvas[y : y + size, x : x + size]
    levels = levels[: region.shape[0], : region.shape[1]]
    inked = levels > 0
    region[inked] = _LUTS[kind][levels[inked]]
