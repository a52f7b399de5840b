"""A rendered animated PNG in real headless Chromium: every frame the browser decodes is the frame Pillow decodes.

Chromium's ``ImageDecoder`` (WebCodecs) gives each composed animation frame and its duration; drawn onto a
canvas and read back, they must equal the render's frames pixel for pixel. An ``<img>`` of the file must load
at its size, and the APNG's still picture (the last step, for viewers that do not animate) must not be one of
the browser's frames.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import numpy as np
import pytest
from report_browser import browser_page, find_chromium
from viewer_fixtures import animation_frames, make_store

from actrec.viewer import render_run

CHROMIUM = find_chromium()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium) for the browser"),
]

_PAGE = """<!doctype html><meta charset="utf-8"><title>apng</title>
<body style="margin:0;background:#888"><img id="animation" src="{name}"></body>"""

_DECODE = """
(async () => {{
  const bytes = Uint8Array.from(atob({data}), c => c.charCodeAt(0));
  const decoder = new ImageDecoder({{data: bytes, type: "image/png"}});
  await decoder.tracks.ready;
  await decoder.completed;
  const track = decoder.tracks.selectedTrack;
  const result = {{count: track.frameCount, animated: track.animated, repetition: String(track.repetitionCount),
                  frames: [], durations: []}};
  for (let index = 0; index < track.frameCount; index++) {{
    const {{image}} = await decoder.decode({{frameIndex: index}});
    const canvas = new OffscreenCanvas(image.displayWidth, image.displayHeight);
    const context = canvas.getContext("2d");
    context.drawImage(image, 0, 0);
    const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
    let text = "";
    for (let i = 0; i < pixels.length; i += 8192) text += String.fromCharCode(...pixels.subarray(i, i + 8192));
    result.frames.push([canvas.width, canvas.height, btoa(text)]);
    result.durations.push(image.duration / 1000);  // microseconds to ms
    image.close();
  }}
  const img = document.getElementById("animation");
  await img.decode();
  result.img = [img.naturalWidth, img.naturalHeight, img.complete];
  return JSON.stringify(result);
}})()
"""


def test_chromium_plays_the_rendered_apng_frame_for_frame(tmp_path: Path) -> None:
    make_store(tmp_path / "run", range(6))
    result = render_run(tmp_path / "run", layers=["net.conv1"], tile_size=16, fps=5)
    path = result.out_dir / "net.conv1.png"
    expected = animation_frames(path)
    page = result.out_dir / "page.html"
    page.write_text(_PAGE.format(name=path.name))

    async def decode() -> tuple[dict, bytes]:
        assert CHROMIUM is not None
        async with browser_page(CHROMIUM) as browser:
            await browser.open(page)
            data = json.dumps(base64.b64encode(path.read_bytes()).decode("ascii"))
            decoded = json.loads(await browser.evaluate(_DECODE.format(data=data)))
            shot = await browser.screenshot(tmp_path / "screenshot.png")
            assert browser.errors == []
            return decoded, shot.read_bytes()

    decoded, _ = asyncio.run(decode())
    height, width = expected[0].shape[:2]
    assert decoded["img"] == [width, height, True]
    assert decoded["animated"] is True
    assert decoded["repetition"] == "Infinity"  # loops forever
    assert decoded["count"] == len(expected) == 6  # the still is not an animation frame
    assert decoded["durations"] == [200.0] * 5 + [1000.0]  # 5 fps, the last step held a second
    for index, (size_w, size_h, pixels) in enumerate(decoded["frames"]):
        rgba = np.frombuffer(base64.b64decode(pixels), np.uint8).reshape(size_h, size_w, 4)
        assert (rgba[..., 3] == 255).all(), index  # opaque: transparent deltas were composed away
        np.testing.assert_array_equal(rgba[..., :3], expected[index], err_msg=f"frame {index}")
    # The first frame is step 0, not the still (the last step), which differs from it.
    assert not np.array_equal(expected[0], expected[-1])
