"""``actrec report``: the page's data and pictures, its errors, and the page itself in real headless Chromium."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from report_browser import browser_page, find_chromium
from viewer_fixtures import NUM_PROBES, exact_activations, make_store, predictions_at

from actrec.recording import colors
from actrec.recording.scale import ColourScale
from actrec.report import build_report, decode_frames, tile_grid
from actrec.report.cli import report_main
from actrec.store import LayerSpec, ProbeSet, StepRecord, StoreWriter
from actrec.viewer import PALETTE


def _page_data(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text, re.S)
    return json.loads(match[1].replace("<\\/", "</"))


def _png_indices(b64: str) -> np.ndarray:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert image.mode == "P"
    assert bytes(image.getpalette()[: 3 * 256]) == PALETTE.tobytes()  # the viewer's one fixed palette
    return np.asarray(image)


def test_tile_grid_puts_channels_down_and_probes_across_at_map_resolution() -> None:
    activations = np.zeros((2, 3, 2, 4), np.float32)  # 2 probes, 3 channels of 2x4 maps
    activations[1, 2] = 1.0
    activations[0, 1] = -1.0
    grid = tile_grid(activations, 1.0)
    assert grid.shape == (3 * 2, 2 * 4)
    assert (grid[4:6, 4:8] == colors.POSITIVE_INDEX).all()  # channel 2, probe 1
    assert (grid[2:4, 0:4] == colors.NEGATIVE_INDEX).all()  # channel 1, probe 0
    assert (grid[0:2] == colors.ZERO_INDEX).all()
    one_sided = tile_grid(np.array([[[[0.0, 2.0]]]], np.float32), ColourScale(one_sided=True, limit=2.0))
    assert one_sided.tolist() == [[colors.ZERO_INDEX, colors.ONE_SIDED_TOP_INDEX]]  # ReLU-like: white to dark blue
    vector = tile_grid(np.full((2, 5), 0.5, np.float32), 1.0)  # (D,) vectors: one row, as the viewer draws them
    assert vector.shape == (1, 2 * 5)
    tokens = tile_grid(np.zeros((2, 3, 4), np.float32), 1.0)  # (T, D): one T x D heatmap per probe
    assert tokens.shape == (3, 2 * 4)


def test_report_holds_every_step_of_every_layer_with_exact_colours_and_predictions(tmp_path: Path) -> None:
    run = make_store(tmp_path / "exp" / "version_0", range(5)).parent
    result = build_report(run)
    assert result.path == run / "report.html"
    data = _page_data(result.path)
    assert data["steps"] == [0, 1, 2, 3, 4]
    assert [layer["name"] for layer in data["layers"]] == ["net.conv1", "net.conv2"]
    assert data["predictions"] == [predictions_at(step).tolist() for step in range(5)]
    for layer in data["layers"]:
        assert layer["frameCount"] == 5
        height, width = layer["channels"] * layer["height"], layer["width"] * NUM_PROBES
        frames = decode_frames(layer["frames"], layer["frameCount"], height, width)
        for step, frame in enumerate(frames):
            values = exact_activations(step)[layer["name"]]
            scale = 1.0 if layer["name"] == "net.conv1" else 2.5
            assert np.array_equal(frame, tile_grid(values, scale))
    assert np.array_equal(np.asarray(data["palette"], np.uint8), PALETTE)  # the viewer's one fixed palette
    assert _png_indices(data["probeImage"]).shape == (8, 8 * NUM_PROBES)
    assert [row["name"] for row in data["dynamics"]] == ["net.conv1", "net.conv2"]
    assert len(data["dynamics"][0]["ckaFinal"]) == 5
    assert data["dynamics"][0]["ckaFinal"][-1] == 1.0


def test_report_reuses_saved_dynamics_only_when_they_match_the_rows(tmp_path: Path) -> None:
    from actrec.dynamics import read_dynamics, write_dynamics
    from actrec.dynamics.cli import dynamics_main

    run = make_store(tmp_path / "run", range(4)).parent
    assert dynamics_main([str(run), "--quiet", "--no-png", "--no-tensorboard"]) == 0
    saved = read_dynamics(run / "dynamics.npz")
    marked = saved.layers["net.conv1"].cka_to_first
    marked[:] = 0.123  # a value no computation gives here, to see where the report's numbers came from
    write_dynamics(saved, run / "dynamics.npz")
    assert _page_data(build_report(run).path)["dynamics"][0]["ckaFirst"] == [0.123] * 4
    assert _page_data(build_report(run, threshold=0.5).path)["dynamics"][0]["ckaFirst"][0] == 1.0  # recomputed


def _non_image_store(folder: Path, probe_images: np.ndarray, labels: list[int], steps: int = 3) -> Path:
    """A finished store whose probes are not pictures (token ids, vectors...), with a vector and a token layer."""
    folder.mkdir(parents=True, exist_ok=True)
    probes = len(labels)
    writer = StoreWriter.create(
        folder / "activations.h5",
        run_id="non-image",
        config={},
        probes=ProbeSet(probe_images.astype(np.float32), np.array(labels), np.arange(probes), ["a", "b"]),
        layers=[LayerSpec("fc", (5,), "Linear", "symmetric"), LayerSpec("enc", (4, 6), "Encoder", "symmetric")],
        num_classes=2,
        background=False,
    )
    with writer:
        for step in range(steps):
            logits = np.zeros((probes, 2), np.float32)
            logits[:, step % 2] = 1.0  # every probe predicts class step % 2
            rng = np.random.default_rng(step)
            activations = {
                "fc": rng.normal(size=(probes, 5)).astype(np.float32),
                "enc": rng.normal(size=(probes, 4, 6)).astype(np.float32),
            }
            writer.append(
                StepRecord(
                    global_step=step,
                    epoch=0,
                    batch_loss=1.0,
                    batch_acc=0.5,
                    logits=logits,
                    activations=activations,
                    wall_time=1_000_000.0 + step,
                )
            )
    return folder


@pytest.mark.parametrize("probe_shape", [(3, 7), (3, 2, 2, 2, 2)], ids=["vectors-or-tokens", "5-D"])
def test_probes_that_are_not_pictures_are_listed_without_a_picture(tmp_path: Path, probe_shape: tuple) -> None:
    run = _non_image_store(tmp_path / "run", np.ones(probe_shape), [0, 1, 0])
    result = build_report(run)
    data = _page_data(result.path)
    assert data["probeImage"] is None
    assert data["probeShape"] is None
    assert data["predictions"] == [[0, 0, 0], [1, 1, 1], [0, 0, 0]]
    # Laid out as the viewer's frames draw them: (D,) one row, (T, D) one T x D heatmap per probe.
    shapes = {layer["name"]: (layer["channels"], layer["height"], layer["width"]) for layer in data["layers"]}
    assert shapes == {"fc": (1, 1, 5), "enc": (1, 4, 6)}
    text = result.path.read_text(encoding="utf-8")
    assert 'id="probe-img"' not in text
    assert text.count('<div class="labels"><span>a</span><span>b</span><span>a</span></div>') == 1


def test_unlabeled_and_unnamed_labels_show_a_question_mark_and_stay_out_of_the_tally(tmp_path: Path) -> None:
    run = _non_image_store(tmp_path / "run", np.ones((3, 7)), [-1, 5, 0])  # unlabeled, past the names, "a"
    text = build_report(run).path.read_text(encoding="utf-8")
    assert '<div class="labels"><span>?</span><span>?</span><span>a</span></div>' in text


@pytest.mark.skipif(find_chromium() is None, reason="no chromium on this machine: the page is not tested in a browser")
@pytest.mark.slow  # a headless browser
def test_page_without_probe_pictures_marks_only_labeled_probes(tmp_path: Path) -> None:
    pytest.importorskip("aiohttp", reason="the DevTools client needs aiohttp (installed with pytorch-lightning[extra])")
    run = _non_image_store(tmp_path / "run", np.ones((3, 7)), [-1, 5, 0])
    page_path = build_report(run).path

    async def scenario() -> tuple[dict, list[str]]:
        async with browser_page(find_chromium()) as page:
            await page.open(page_path)
            assert await page.evaluate(WAIT_READY) == "1"
            return await page.evaluate(_STATE), page.errors

    state, errors = asyncio.run(scenario())
    assert errors == []
    # Step 0: every probe predicts "a"; the unlabeled probe is neither right nor wrong and is not counted.
    assert state["predictions"] == ["a", "✗ a", "✓ a"]
    assert "step 0 · 1/2 right" in state["panels"]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "meta-not-a-dict"])
def test_a_corrupt_saved_dynamics_file_is_recomputed(tmp_path: Path, damage: str) -> None:
    from actrec.dynamics import DynamicsError, read_dynamics
    from actrec.dynamics.cli import dynamics_main

    run = make_store(tmp_path / "run", range(4)).parent
    assert dynamics_main([str(run), "--quiet", "--no-png", "--no-tensorboard"]) == 0
    saved = run / "dynamics.npz"
    content = saved.read_bytes()
    if damage == "truncated":
        saved.write_bytes(content[: len(content) // 2])
    elif damage == "garbage":
        saved.write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    elif damage == "empty":
        saved.write_bytes(b"")
    else:
        np.savez(saved, meta=np.array("[1, 2]"))
    with pytest.raises(DynamicsError, match=r"cannot be read as a dynamics file|is not an actrec dynamics file"):
        read_dynamics(saved)
    data = _page_data(build_report(run).path)
    assert data["dynamics"][0]["ckaFinal"][-1] == 1.0  # computed afresh from the store


def test_layer_colour_scales_are_the_renders_and_skip_damaged_rows(tmp_path: Path) -> None:
    import h5py

    from actrec.dynamics.cli import dynamics_main
    from actrec.recording import ChannelChoice, Recording
    from actrec.report.build import _scale_label
    from actrec.viewer.plan import plan_layer

    store_path = make_store(tmp_path / "run", range(10))
    # Dynamics read every row; saved before the damage, the report reuses them and reads only its own rows.
    assert dynamics_main([str(store_path.parent), "--quiet", "--no-png", "--no-tensorboard"]) == 0
    with h5py.File(store_path, "r") as store:
        chunk = store["layers/net.conv2/activations"].id.get_chunk_info(4)
    with store_path.open("r+b") as file:  # scribble over step 4's chunk: it fails its checksum
        file.seek(chunk.byte_offset + 2)
        file.write(b"\xab" * 32)
    data = _page_data(build_report(store_path.parent, stride=3).path)  # shows steps 0, 3, 6, 9, not 4
    with Recording.open(store_path) as recording:
        for layer in data["layers"]:
            plan, _ = plan_layer(recording.layer(layer["name"]), ChannelChoice(everything=True), 28, NUM_PROBES)
            assert layer["scaleLabel"] == _scale_label(plan.scale)  # the render's scale, by the one function
    assert "2.5" in data["layers"][1]["scaleLabel"]  # net.conv2's largest |activation|, from the good rows


def test_report_epochs_follow_the_viewers_rule(tmp_path: Path) -> None:
    # Row 8, at the final validation step, carries epoch 2 from the recorder's end-of-training record:
    # it belongs to the last epoch, 1, as actrec render titles it.
    data = _page_data(build_report(make_store(tmp_path / "run", range(9)).parent).path)
    assert data["epochs"] == [0, 0, 0, 0, 1, 1, 1, 1, 1]


def test_a_resumed_run_writes_into_its_own_folder_not_beside_the_store_it_continues(tmp_path: Path) -> None:
    from actrec.compare import compare_runs
    from actrec.dynamics.cli import dynamics_main
    from actrec.viewer import render_run

    store = make_store(tmp_path / "exp" / "version_0", range(4))
    resumed = tmp_path / "exp" / "version_1"  # a resumed run records into version_0's store
    resumed.mkdir()
    (resumed / "summary.json").write_text(json.dumps({"store_path": str(store)}), encoding="utf-8")
    assert dynamics_main([str(resumed), "--quiet", "--no-tensorboard"]) == 0
    assert (resumed / "dynamics.npz").exists()
    assert (resumed / "renders" / "dynamics.png").exists()
    result = build_report(resumed)
    assert result.path == resumed / "report.html"
    assert _page_data(result.path)["run"] == "exp/version_1"
    assert render_run(resumed, layers=["net.conv1"], sheet_steps=[0]).out_dir == resumed / "renders"
    compared = compare_runs([resumed, store.parent], ["net.conv1"], tile_size=8)
    assert compared.animation.parent == resumed / "renders"
    assert compared.labels == ("exp/version_1", "exp/version_0")
    assert sorted(path.name for path in store.parent.iterdir()) == ["activations.h5"]  # nothing written there


def test_report_is_self_contained(tmp_path: Path) -> None:
    run = make_store(tmp_path / "run", range(3)).parent
    text = build_report(run).path.read_text(encoding="utf-8")
    # No external resource of any kind: every src is filled in from inline data, no link, no fetch.
    assert re.findall(r'(?:src|href)="(?!data:)[^"]*"', text) == []
    assert "<link" not in text
    assert "fetch(" not in text
    assert "XMLHttpRequest" not in text
    assert re.findall(r"https?://(?!www\.w3\.org/2000/svg)", text) == []


def test_long_runs_are_thinned_keeping_the_last_step(tmp_path: Path) -> None:
    run = make_store(tmp_path / "run", range(10)).parent
    result = build_report(run, max_frames=4)
    assert result.stride == 3
    assert result.global_steps.tolist() == [0, 3, 6, 9]
    assert build_report(run, stride=4).global_steps.tolist() == [0, 4, 8, 9]


def test_compare_aligns_the_other_run_by_training_step(tmp_path: Path) -> None:
    run = make_store(tmp_path / "a" / "version_0", range(0, 8)).parent
    other = make_store(tmp_path / "b" / "version_0", [2, 5, 7], run_id="other").parent
    data = _page_data(build_report(run, compare=[other]).path)
    (entry,) = data["compare"]
    assert entry["run"] == "b/version_0"
    # Their latest recorded step at or before each shown step; -1 before their first.
    shown = [entry["steps"][i] if i >= 0 else None for i in entry["index"]]
    assert shown == [None, None, 2, 2, 2, 5, 5, 7]
    assert entry["layers"][0]["frameCount"] == 3


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["missing"], r"no activation store at"),
        (["EMPTY"], r"has no recorded steps yet"),
        (["RUN", "--stride", "0"], r"stride must be a positive integer, got 0\."),
        (["RUN", "--compare", "missing"], r"no activation store at"),
    ],
)
def test_errors_are_one_sentence_and_write_nothing(tmp_path: Path, capsys, arguments: list[str], message: str) -> None:
    run = make_store(tmp_path / "run", range(2)).parent
    empty = make_store(tmp_path / "empty", []).parent
    paths = {"RUN": str(run), "EMPTY": str(empty), "missing": str(tmp_path / "missing")}
    assert report_main([paths.get(item, item) for item in arguments]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("actrec report: ")
    assert re.search(message, err), err
    assert not (run / "report.html").exists()


WAIT_READY = """new Promise((resolve) => {
  const check = () => (document.body.dataset.ready === "1" ? resolve("1") : setTimeout(check, 20));
  check();
})"""
"""Resolves once the page has unpacked its frames and shown the first step."""

_PIXELS = """(() => { const canvas = document.querySelector("figure.layer[data-run='0'] canvas");
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let text = ""; for (let i = 0; i < data.length; i++) text += String.fromCharCode(data[i]);
  return [canvas.width, canvas.height, btoa(text)]; })()"""

_STATE = """(() => ({
  current: Number(document.getElementById("slider").value),
  label: document.getElementById("step-label").textContent,
  panels: [...document.querySelectorAll(".panel")].map((p) => p.dataset.step),
  images: [...document.querySelectorAll("figure.layer canvas")].map((canvas) => canvas.toDataURL()),
  rows: [...document.querySelectorAll("figure.layer canvas")].map((canvas) => canvas.dataset.row),
  predictions: [...document.querySelectorAll("#predictions span")].map((s) => s.textContent),
  cursors: [...document.querySelectorAll("svg.chart .cursor")].map((c) => c.getAttribute("x1")),
}))()"""


def _move_slider(index: int) -> str:
    return (
        f"(() => {{ const s = document.getElementById('slider'); s.value = '{index}'; "
        "s.dispatchEvent(new Event('input', {bubbles: true})); })()"
    )


@pytest.mark.skipif(find_chromium() is None, reason="no chromium on this machine: the page is not tested in a browser")
@pytest.mark.slow  # a headless browser
def test_page_in_headless_chromium_one_slider_moves_every_panel(tmp_path: Path) -> None:
    pytest.importorskip("aiohttp", reason="the DevTools client needs aiohttp (installed with pytorch-lightning[extra])")
    run = make_store(tmp_path / "a" / "version_0", range(0, 8)).parent
    other = make_store(tmp_path / "b" / "version_0", [0, 3, 6], run_id="other").parent
    page_path = build_report(run, compare=[other]).path

    async def scenario() -> tuple[dict, dict, dict, dict, list[str], list[str]]:
        async with browser_page(find_chromium()) as page:
            await page.open(page_path)
            assert await page.evaluate(WAIT_READY) == "1"
            start = await page.evaluate(_STATE)
            await page.evaluate(_move_slider(5))
            moved = await page.evaluate(_STATE)
            moved["pixels"] = await page.evaluate(_PIXELS)
            await page.press("ArrowRight", 39)
            keyed = await page.evaluate(_STATE)
            await page.press("Home", 36)
            await page.evaluate("document.getElementById('play').click()")
            await asyncio.sleep(0.6)
            played = await page.evaluate(_STATE)
            await page.screenshot(tmp_path / "report.png")
            return start, moved, keyed, played, page.errors, page.requests

    start, moved, keyed, played, errors, requests = asyncio.run(scenario())
    assert errors == []
    assert [url for url in requests if not url.startswith(("data:", "file:"))] == []
    panels = len(start["panels"])
    assert panels >= 2 + 2 + 1 + 2 + 4 + 1  # layers, compared layers, probes, curves, dynamics, table
    assert start["label"] == "step 0 · epoch 0"
    assert moved["current"] == 5
    assert moved["label"] == "step 5 · epoch 1"
    # Every panel shows the new step; the compared run shows its own latest step at or before it (3).
    assert all(step != before for step, before in zip(moved["panels"], start["panels"], strict=True))
    # (probes 1 and 2 are wrong at odd steps)
    assert sorted(set(moved["panels"])) == ["step 3", "step 5", "step 5 · 1/3 right"]
    assert all(src.startswith("data:image/png;base64,") for src in moved["images"])
    assert all(a != b for a, b in zip(moved["images"][:2], start["images"][:2], strict=True))  # this run's layers
    assert moved["rows"] == ["5", "1", "5", "1"]  # this run's row 5; the compared run's row 1 (its step 3)
    # The canvas holds step 5's tiles at map resolution in the palette's exact colours (scaled up by CSS).
    width, height, pixels = moved["pixels"]
    rgba = np.frombuffer(base64.b64decode(pixels), np.uint8).reshape(height, width, 4)
    np.testing.assert_array_equal(rgba[..., :3], colors.to_rgb(tile_grid(exact_activations(5)["net.conv1"], 1.0)))
    assert (rgba[..., 3] == 255).all()
    assert moved["predictions"] != start["predictions"]  # probe 1 is right on even steps only
    assert all(a != b for a, b in zip(moved["cursors"], start["cursors"], strict=True))
    assert keyed["current"] == 6
    assert keyed["label"] == "step 6 · epoch 1"
    assert played["current"] > 0  # play advanced on its own from step 0
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_a_damaged_step_is_left_out_of_the_report_and_named(tmp_path: Path, capsys) -> None:
    import h5py

    from actrec.report.cli import report_main

    store_path = make_store(tmp_path / "run", range(6))
    with h5py.File(store_path, "r") as store:
        chunk = store["layers/net.conv2/activations"].id.get_chunk_info(4)
    with store_path.open("r+b") as file:  # scribble over step 4's chunk: it fails its checksum
        file.seek(chunk.byte_offset + 2)
        file.write(b"\xab" * 32)
    assert report_main([str(store_path.parent), "--quiet"]) == 0
    assert capsys.readouterr().err == (
        "note: step 4 of layer net.conv2 is damaged (it failed its integrity check) and was left out.\n"
    )
    data = _page_data(store_path.parent / "report.html")
    assert data["steps"] == [0, 1, 2, 3, 5]  # every layer shows the same steps
    assert all(layer["frameCount"] == 5 for layer in data["layers"])
    assert len(data["predictions"]) == len(data["epochs"]) == 5
