"""The one fixed palette every actrec picture is drawn in, and the maps from values to it.

Every frame of every layer uses the same 256-entry palette, so a GIF stores palette indices
that mean the same colour in every frame: no per-frame quantisation, no dithering, no flicker.

Palette layout (indices are stable; tests and writers rely on them):

- ``0 .. 62``: the diverging activation ramp, 63 levels. Index :data:`ZERO_INDEX` (31) is exactly
  white ``(255, 255, 255)`` and means an activation of 0; index 0 is the red end ``(178, 24, 43)``
  at ``-scale``; index 62 the blue end ``(33, 102, 172)`` at ``+scale``. The ramp runs linearly (in
  sRGB) through ColorBrewer's 9-class RdBu stops, with its off-white middle ``#f7f7f7`` replaced by
  pure white so that 0 is exactly white. 63 levels (steps of 1/31 of the scale) look continuous at
  tile sizes and keep GIFs small: finer levels make pixels flip between neighbouring colours from
  step to step, which the GIF's frame-to-frame deltas pay for.
- ``63 .. 124``: the one-sided ramp for non-negative layers (ReLU-like, sigmoid), 62 levels above
  :data:`ZERO_INDEX` (0 is the same exact white): ColorBrewer's 9-class Blues, with its off-white
  start replaced by white, up to ``(8, 48, 107)`` at ``+scale``. Same step (1/62 of the scale) as
  the diverging ramp has per colour, over the whole range instead of half of it.
- ``125 .. 177``: a 53-level grey ramp from black up to ``(250, 250, 250)``, for probe images, black
  text and its anti-aliasing; "fully white" grey is :data:`ZERO_INDEX`, so no colour is duplicated.
- ``178 .. 237``: a 4x4x4 colour cube (levels 0, 85, 170, 255) without its 4 greys, for colour
  probe images (posterised: a GIF has one 256-colour palette for everything).
- ``238 .. 245``: white-to-green ramp for correct predictions (full ink ``(26, 133, 60)``).
- ``246 .. 253``: white-to-red ramp for wrong predictions (full ink ``(200, 30, 30)``).
- ``254``: :data:`NONFINITE_INDEX`, amber ``(235, 172, 0)``: NaN or infinite activations (a diverged
  run), a colour no value maps to, named in the frame's legend.
- ``255``: :data:`TRANSPARENT_INDEX`, never drawn; the GIF writer marks unchanged pixels with it.

Every entry is a distinct RGB triple, so a decoded RGB pixel identifies its index unambiguously.
"""

from __future__ import annotations

import numpy as np

NEGATIVE_RGB: tuple[int, int, int] = (178, 24, 43)
"""Colour of ``-scale`` (ColorBrewer RdBu ``#b2182b``)."""
ZERO_RGB: tuple[int, int, int] = (255, 255, 255)
"""Colour of 0: exactly white."""
POSITIVE_RGB: tuple[int, int, int] = (33, 102, 172)
"""Colour of ``+scale`` (ColorBrewer RdBu ``#2166ac``)."""

# ColorBrewer RdBu (9 classes), red to blue, with the neutral #f7f7f7 replaced by pure white.
_DIVERGING_STOPS: tuple[tuple[int, int, int], ...] = (
    NEGATIVE_RGB,
    (214, 96, 77),
    (244, 165, 130),
    (253, 219, 199),
    ZERO_RGB,
    (209, 229, 240),
    (146, 197, 222),
    (67, 147, 195),
    POSITIVE_RGB,
)

DIVERGING_LEVELS = 63
"""Number of activation colours; odd, so that 0 has its own level."""
ZERO_INDEX = DIVERGING_LEVELS // 2
"""Palette index of an activation of exactly 0 (white); also the background of every picture."""
NEGATIVE_INDEX = 0
"""Palette index of ``-scale`` and below."""
POSITIVE_INDEX = DIVERGING_LEVELS - 1
"""Palette index of ``+scale`` and above."""

ONE_SIDED_TOP_RGB: tuple[int, int, int] = (8, 48, 107)
"""Colour of ``+scale`` on the one-sided scale (ColorBrewer Blues ``#08306b``)."""
_ONE_SIDED_STOPS: tuple[tuple[int, int, int], ...] = (
    ZERO_RGB,
    (222, 235, 247),
    (198, 219, 239),
    (158, 202, 225),
    (107, 174, 214),
    (66, 146, 198),
    (33, 113, 181),
    (8, 81, 156),
    ONE_SIDED_TOP_RGB,
)
ONE_SIDED_LEVELS = 63
"""Levels of the one-sided ramp, white (level 0, :data:`ZERO_INDEX`) included."""
ONE_SIDED_START = DIVERGING_LEVELS
"""Palette index of one-sided level 1; level ``k > 0`` is ``ONE_SIDED_START + k - 1``."""
ONE_SIDED_TOP_INDEX = ONE_SIDED_START + ONE_SIDED_LEVELS - 2
"""Palette index of ``+scale`` and above on the one-sided scale."""

NONFINITE_RGB: tuple[int, int, int] = (235, 172, 0)
"""Colour of NaN and infinite activations: amber, which no value maps to."""

RIGHT_RGB: tuple[int, int, int] = (26, 133, 60)
WRONG_RGB: tuple[int, int, int] = (200, 30, 30)
INK_LEVELS = 8
"""Anti-aliasing levels of the coloured text ramps (coverage 1/8 .. 8/8)."""

PALETTE_SIZE = 256
TRANSPARENT_INDEX = PALETTE_SIZE - 1
"""Reserved for GIF frame deltas ("unchanged pixel"); no picture ever contains it."""
NONFINITE_INDEX = PALETTE_SIZE - 2
"""NaN and infinite activations (amber)."""
_TRANSPARENT_RGB = (1, 2, 3)  # no picture uses it (nor the colour cube), in case a viewer ignores transparency

CUBE_LEVELS = 4
"""Levels per channel of the colour cube for RGB probe images."""
_CUBE_SIZE = CUBE_LEVELS**3 - CUBE_LEVELS  # the cube's greys are on the grey ramp already
GREY_START = ONE_SIDED_START + ONE_SIDED_LEVELS - 1
GREY_LEVELS = PALETTE_SIZE - GREY_START - _CUBE_SIZE - 2 * INK_LEVELS - 2
CUBE_START = GREY_START + GREY_LEVELS
"""Grey levels below white (the rest of the palette); grey level ``GREY_LEVELS`` (white) is :data:`ZERO_INDEX`."""
RIGHT_START = CUBE_START + _CUBE_SIZE
WRONG_START = RIGHT_START + INK_LEVELS


def _diverging_ramp() -> np.ndarray:
    stops = np.asarray(_DIVERGING_STOPS, dtype=np.float64)
    positions = np.linspace(-1.0, 1.0, len(stops))
    levels = np.linspace(-1.0, 1.0, DIVERGING_LEVELS)
    ramp = np.stack([np.interp(levels, positions, stops[:, channel]) for channel in range(3)], axis=1)
    return np.rint(ramp).astype(np.uint8)


def _one_sided_ramp() -> np.ndarray:
    """Levels 1 .. ONE_SIDED_LEVELS - 1 (level 0 is white, already in the palette)."""
    stops = np.asarray(_ONE_SIDED_STOPS, dtype=np.float64)
    positions = np.linspace(0.0, 1.0, len(stops))
    levels = np.linspace(0.0, 1.0, ONE_SIDED_LEVELS)[1:]
    ramp = np.stack([np.interp(levels, positions, stops[:, channel]) for channel in range(3)], axis=1)
    return np.rint(ramp).astype(np.uint8)


def _cube() -> tuple[np.ndarray, np.ndarray]:
    """The cube's colours, and the palette index of every ``(r, g, b)`` level triple (greys on the grey ramp)."""
    step = 255 // (CUBE_LEVELS - 1)
    entries: list[tuple[int, int, int]] = []
    lookup = np.zeros((CUBE_LEVELS,) * 3, np.uint8)
    for red in range(CUBE_LEVELS):
        for green in range(CUBE_LEVELS):
            for blue in range(CUBE_LEVELS):
                if red == green == blue:
                    continue
                lookup[red, green, blue] = CUBE_START + len(entries)
                entries.append((red * step, green * step, blue * step))
    return np.asarray(entries, dtype=np.uint8), lookup


def _ink_ramp(ink: tuple[int, int, int]) -> np.ndarray:
    coverage = np.arange(1, INK_LEVELS + 1, dtype=np.float64)[:, None] / INK_LEVELS
    white = np.asarray(ZERO_RGB, dtype=np.float64)
    return np.rint(white + coverage * (np.asarray(ink, dtype=np.float64) - white)).astype(np.uint8)


def _build_palette() -> np.ndarray:
    grey = np.rint(np.arange(GREY_LEVELS) * 250.0 / (GREY_LEVELS - 1)).astype(np.uint8)
    palette = np.concatenate(
        [
            _diverging_ramp(),
            _one_sided_ramp(),
            np.repeat(grey[:, None], 3, axis=1),
            _cube()[0],
            _ink_ramp(RIGHT_RGB),
            _ink_ramp(WRONG_RGB),
            np.asarray([NONFINITE_RGB, _TRANSPARENT_RGB], dtype=np.uint8),
        ]
    )
    palette.setflags(write=False)
    return palette


_CUBE_LOOKUP = _cube()[1]
PALETTE: np.ndarray = _build_palette()
"""``(256, 3)`` uint8, read-only: the RGB colour of every palette index."""

NAN_INDEX = NONFINITE_INDEX
"""Former name of :data:`NONFINITE_INDEX`."""
TEXT_INDEX = GREY_START + round(30 * (GREY_LEVELS - 1) / 250)
"""Near-black (grey 30) for labels."""
MUTED_INDEX = GREY_START + round(125 * (GREY_LEVELS - 1) / 250)
"""Mid grey (125) for secondary labels."""
GUTTER_INDEX = GREY_START + round(222 * (GREY_LEVELS - 1) / 250)
"""Light grey (222) between tiles, so that white (zero) tiles still show their edges."""


def diverging_indices(values: np.ndarray, scale: float) -> np.ndarray:
    """Map values to diverging palette indices with a fixed symmetric scale.

    ``-scale`` (and below) maps to :data:`NEGATIVE_INDEX` (red), exactly 0 to :data:`ZERO_INDEX`
    (white), ``+scale`` (and above) to :data:`POSITIVE_INDEX` (blue); NaN and infinities map to
    :data:`NONFINITE_INDEX` (amber), never to a value's colour.

    Args:
        values: any float array (float16 is fine).
        scale: the positive value drawn at full colour.

    Returns:
        A new uint8 array of the same shape.

    Raises:
        ValueError: ``scale`` is not a positive finite number.
    """
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite number, got {scale!r}.")
    normalised = np.asarray(values, dtype=np.float32) * np.float32(ZERO_INDEX / scale)
    np.clip(normalised, -ZERO_INDEX, ZERO_INDEX, out=normalised)
    np.rint(normalised, out=normalised)
    normalised += ZERO_INDEX
    # Infinities were clipped to the ends above; they and NaN get the non-finite colour instead.
    indices = np.nan_to_num(normalised, nan=NONFINITE_INDEX).astype(np.uint8)
    indices[~np.isfinite(np.asarray(values))] = NONFINITE_INDEX
    return indices


def one_sided_indices(values: np.ndarray, scale: float) -> np.ndarray:
    """Map values to the one-sided white-to-blue ramp: 0 (and below) white, ``+scale`` (and above) dark blue.

    Args:
        values: any float array.
        scale: the positive value drawn at full colour.

    Returns:
        A new uint8 array of palette indices, same shape as ``values``; NaN and infinities map to
        :data:`NONFINITE_INDEX`.

    Raises:
        ValueError: ``scale`` is not a positive finite number.
    """
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite number, got {scale!r}.")
    top = ONE_SIDED_LEVELS - 1
    levels = np.asarray(values, dtype=np.float32) * np.float32(top / scale)
    np.clip(levels, 0, top, out=levels)
    np.rint(levels, out=levels)
    levels = np.nan_to_num(levels, nan=0.0).astype(np.int64)
    indices = np.where(levels == 0, ZERO_INDEX, ONE_SIDED_START + levels - 1).astype(np.uint8)
    indices[~np.isfinite(np.asarray(values))] = NONFINITE_INDEX
    return indices


def grey_indices(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map values to the grey ramp: ``low`` and below black, ``high`` and above white.

    Args:
        values: any float array.
        low: the value drawn black.
        high: the value drawn white; when ``high <= low`` everything is drawn black.

    Returns:
        A new uint8 array of palette indices, same shape as ``values``.
    """
    span = high - low
    levels = np.asarray(values, dtype=np.float32) - np.float32(low)
    levels *= np.float32(GREY_LEVELS / span) if span > 0 else np.float32(0)
    np.clip(levels, 0, GREY_LEVELS, out=levels)
    levels = np.rint(np.nan_to_num(levels, nan=0.0)).astype(np.int64)
    return np.where(levels >= GREY_LEVELS, ZERO_INDEX, GREY_START + levels).astype(np.uint8)


def rgb_indices(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``(..., 3)`` RGB values to the colour cube (``low`` and below 0, ``high`` and above full).

    Returns:
        A new uint8 array of palette indices of shape ``values.shape[:-1]``; greys (equal channels)
        take the grey ramp, so black and white stay exact.
    """
    span = high - low
    levels = (np.asarray(values, dtype=np.float32) - np.float32(low)) * np.float32(
        (CUBE_LEVELS - 1) / span if span > 0 else 0
    )
    levels = np.rint(np.clip(np.nan_to_num(levels, nan=0.0), 0, CUBE_LEVELS - 1)).astype(np.intp)
    indices = _CUBE_LOOKUP[levels[..., 0], levels[..., 1], levels[..., 2]]
    grey = (levels[..., 0] == levels[..., 1]) & (levels[..., 1] == levels[..., 2])
    step = 255 // (CUBE_LEVELS - 1)
    grey_lut = np.asarray([grey_index(level * step) for level in range(CUBE_LEVELS)], np.uint8)
    return np.where(grey, grey_lut[levels[..., 0]], indices).astype(np.uint8)


def grey_index(grey_value: int) -> int:
    """Palette index of the grey ramp entry closest to ``grey_value`` (0 black .. 255 white)."""
    level = round(min(max(grey_value, 0), 255) * (GREY_LEVELS - 1) / 250)
    return ZERO_INDEX if level >= GREY_LEVELS else GREY_START + level


def to_rgb(indices: np.ndarray) -> np.ndarray:
    """Look up palette indices: ``(..., )`` uint8 indices in, new ``(..., 3)`` uint8 RGB out."""
    return PALETTE[np.asarray(indices)]


def palette_bytes() -> bytes:
    """The palette as 768 bytes ``r0 g0 b0 r1 ...``, as GIF and Pillow ``putpalette`` expect."""
    return PALETTE.tobytes()
