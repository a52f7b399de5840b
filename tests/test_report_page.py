"""The report's layer panels read at first sight: labels, colour bars with numbers, predictions always in view."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from report_browser import browser_page, find_chromium
from viewer_fixtures import CLASS_NAMES, make_store, probe_set

from actrec.report import build_report
from actrec.store import LayerSpec, StepRecord, StoreWriter

_PANELS = """(() => [...document.querySelectorAll("figure.layer[data-run='0']")].map((panel) => ({
  layer: panel.dataset.layer,
  rows: [...panel.querySelectorAll('.rowlabels span')].map((s) => s.textContent),
  rowHeights: [...panel.querySelectorAll('.rowlabels span')].map((s) => s.getBoundingClientRect().height),
  gridHeight: panel.querySelector('.grid').getBoundingClientRect().height,
  probes: [...panel.querySelectorAll('.probe-labels span')].map((s) => s.textContent),
  ticks: [...panel.querySelectorAll('.cbar-ticks span')].map((s) => s.textContent),
  ramp: getComputedStyle(panel.querySelector('.cbar-ramp')).backgroundImage,
})))()"""
_STICKY = """(() => { const box = document.querySelector('#sticky-predictions').getBoundingClientRect();
  return {top: box.top, bottom: box.bottom, scrolled: window.scrollY,
          texts: [...document.querySelectorAll('#sticky-predictions span.right, #sticky-predictions span.wrong')]
                   .map((s) => s.textContent)}; })()"""


@pytest.mark.slow  # a headless browser
def test_layer_panels_carry_labels_and_colour_bars_and_predictions_stay_in_view(tmp_path: Path) -> None:
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no chromium on this machine: the page is not tested in a browser")
    pytest.importorskip("aiohttp", reason="the DevTools client needs aiohttp (installed with pytorch-lightning[extra])")
    run = make_store(tmp_path / "a" / "version_0", range(0, 8)).parent
    page_path = build_report(run).path

    async def scenario() -> tuple[list, dict, dict, list[str]]:
        async with browser_page(chromium) as page:
            await page.open(page_path, width=1366, height=768)
            panels = await page.evaluate(_PANELS)
            top = await page.evaluate(_STICKY)
            await page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
            await asyncio.sleep(0.2)
            bottom = await page.evaluate(_STICKY)
            await page.screenshot(tmp_path / "report.png")
            return panels, top, bottom, page.errors

    panels, top, bottom, errors = asyncio.run(scenario())
    assert errors == []
    by_layer = {panel["layer"]: panel for panel in panels}
    assert by_layer["net.conv1"]["rows"] == ["ch 0", "ch 1", "ch 2"]
    assert by_layer["net.conv2"]["rows"] == ["ch 0", "ch 1"]
    for panel in panels:
        assert panel["probes"] == CLASS_NAMES  # one class name above each probe's column
        assert sum(panel["rowHeights"]) == pytest.approx(panel["gridHeight"], abs=2)  # labels beside their rows
    # The colour bars say the numbers each panel is drawn on: tanh's fixed -1..+1, conv2's data limit 2.5.
    assert by_layer["net.conv1"]["ticks"] == ["-1", "0", "+1"]
    assert by_layer["net.conv2"]["ticks"] == ["-2.5", "0", "+2.5"]
    assert "rgb(178, 24, 43)" in by_layer["net.conv1"]["ramp"]  # the palette's red end
    # The predictions row is on screen at the top and still on screen scrolled to the bottom.
    assert bottom["scrolled"] > 300
    for state in (top, bottom):
        assert 0 <= state["top"] < state["bottom"] <= 768
        assert len(state["texts"]) == len(CLASS_NAMES)


@pytest.mark.slow  # a headless browser
def test_a_vector_layer_is_a_row_at_least_8_pixels_high(tmp_path: Path) -> None:
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no chromium on this machine: the page is not tested in a browser")
    pytest.importorskip("aiohttp", reason="the DevTools client needs aiohttp (installed with pytorch-lightning[extra])")
    run = tmp_path / "run"
    run.mkdir()
    writer = StoreWriter.create(
        run / "activations.h5",
        run_id="vector",
        config={},
        probes=probe_set(),
        layers=[LayerSpec("net.fc", (512,), "Linear", "symmetric")],
        num_classes=3,
        background=False,
    )
    with writer:
        for step in range(3):
            values = np.linspace(-1, 1, 3 * 512, dtype=np.float32).reshape(3, 512) * (step + 1)
            writer.append(StepRecord(step, 0, 1.0, 0.5, np.zeros((3, 3), np.float32), {"net.fc": values}))
    page_path = build_report(run).path

    async def scenario() -> list:
        async with browser_page(chromium) as page:
            await page.open(page_path, width=1366, height=768)
            return await page.evaluate(_PANELS)

    (panel,) = asyncio.run(scenario())
    assert panel["rows"] == ["units"]
    assert panel["gridHeight"] >= 8
