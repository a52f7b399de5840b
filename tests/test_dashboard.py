"""The actrec tab in a real TensorBoard process, and (where Debian's chromium is installed) in a real browser.

TensorBoard is started as ``python -m tensorboard.main`` on loopback, on a free port, so it finds the
plugin the way a user's TensorBoard does: through the installed ``tensorboard_plugins`` entry point.
Frames served by the plugin are compared pixel for pixel with the frames ``actrec render`` draws of the
same steps (same colours); the tab is driven in headless chromium over the DevTools protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from viewer_fixtures import animation_frames, make_store

from actrec.dashboard import ActrecPlugin, find_runs
from actrec.viewer import colors, colour_scale
from actrec.viewer.frames import upscale_nearest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium) for the browser"
)
RUN = "exp/version_0"
TILE_SIZE = 56


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - loopback only
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _get_json(url: str) -> object:
    status, body = _get(url)
    assert status == 200, body
    return json.loads(body)


@contextlib.contextmanager
def tensorboard(*arguments: str, command: list[str] | None = None) -> Iterator[str]:
    """A real TensorBoard process on a free loopback port; yields its base URL, stops it afterwards.

    ``command`` replaces ``python -m tensorboard.main`` (e.g. ``actrec tensorboard RUN``, which becomes TensorBoard).
    """
    port = _free_port()
    program = command or [sys.executable, "-m", "tensorboard.main", *arguments]
    process = subprocess.Popen(
        [*program, "--port", str(port), "--", "--host", "127.0.0.1"]
        if command
        else [*program, "--port", str(port), "--host", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"tensorboard exited: {process.stderr.read().decode()[-2000:]}")
            try:
                _get(f"{base}/data/plugins_listing")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield base
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _tiles(grid: np.ndarray, layout: dict, probes: int) -> dict[tuple[int, int], np.ndarray]:
    """The served grid cut into its tiles, by (row, probe)."""
    rows, height, width, gutter = (layout[key] for key in ("rows", "height", "width", "gutter"))
    assert grid.shape[:2] == (rows * (height + gutter) + gutter, probes * (width + gutter) + gutter)
    return {
        (row, probe): grid[
            gutter + row * (height + gutter) : gutter + row * (height + gutter) + height,
            gutter + probe * (width + gutter) : gutter + probe * (width + gutter) + width,
        ]
        for row in range(rows)
        for probe in range(probes)
    }


def _contains(frame: np.ndarray, tile: np.ndarray) -> bool:
    """Whether ``tile`` appears, pixel for pixel, somewhere in ``frame`` (both RGB)."""

    def key(image: np.ndarray) -> np.ndarray:
        image = image.astype(np.int64)
        return image[..., 0] << 16 | image[..., 1] << 8 | image[..., 2]

    whole, part = key(frame), key(tile)
    windows = np.lib.stride_tricks.sliding_window_view(whole, part.shape)
    first_rows = np.argwhere((windows[:, :, 0, :] == part[0]).all(axis=-1))
    return any((windows[y, x] == part).all() for y, x in first_rows)


@pytest.fixture(scope="module")
def logdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dashboard")
    make_store(root / "logs" / "exp" / "version_0")
    return root / "logs"


def test_runs_are_named_as_tensorboard_names_them(tmp_path: Path) -> None:
    make_store(tmp_path / "a" / "version_0")
    make_store(tmp_path / "a" / "version_1")
    (tmp_path / "a" / "version_1" / "checkpoints").mkdir()
    make_store(tmp_path / "a" / "version_1" / "checkpoints")  # never a run of its own
    assert sorted(find_runs(tmp_path)) == ["a/version_0", "a/version_1"]
    assert list(find_runs(tmp_path / "a" / "version_0")) == ["."]
    assert list(find_runs(tmp_path / "a" / "version_0", group="version_0")) == ["version_0/."]


@pytest.mark.slow  # an `actrec render` process and a TensorBoard server
def test_plugin_serves_frames_with_render_s_colours(logdir: Path, tmp_path: Path) -> None:
    renders = tmp_path / "renders"
    subprocess.run(
        [sys.executable, "-m", "actrec.cli", "render", str(logdir / RUN), "--out", str(renders), "--quiet",
         "--tile-size", str(TILE_SIZE)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    before = sorted(path.relative_to(logdir) for path in logdir.rglob("*"))
    with tensorboard("--logdir", str(logdir)) as base:
        listing = _get_json(f"{base}/data/plugins_listing")
        assert listing["actrec"]["enabled"] is True
        assert listing["actrec"]["loading_mechanism"] == {
            "type": "IFRAME",
            "module_path": "/data/plugin/actrec/index.js",
        }
        api = f"{base}/data/plugin/actrec"
        assert _get_json(f"{api}/runs") == {"runs": [RUN]}
        info = _get_json(f"{api}/run?run={urllib.parse.quote(RUN)}")
        timeline = _get_json(f"{api}/timeline?run={urllib.parse.quote(RUN)}")
        assert timeline["global_steps"] == [0, 1, 2, 3, 4, 5]
        probes = len(info["probes"]["labels"])
        for layer in info["layers"]:
            gif = animation_frames(renders / f"{layer['name']}.png")
            assert len(gif) == 6
            factor = TILE_SIZE // max(layer["grid"]["height"], layer["grid"]["width"])
            served = {}
            for row in range(6):
                query = urllib.parse.urlencode({"run": RUN, "layer": layer["name"], "row": row})
                status, body = _get(f"{api}/frame?{query}")
                assert status == 200, body
                served[row] = _tiles(_png(body), layer["grid"], probes)
                for tile in served[row].values():
                    big = upscale_nearest(tile.transpose(2, 0, 1), tile.shape[0] * factor, tile.shape[1] * factor)
                    assert _contains(gif[row], big.transpose(1, 2, 0)), (layer["name"], row)
            # The step-dependent tile (probe 2, channel 0) differs between rows, and each row's is the
            # render's frame of that row, not of a neighbour: the slider and render agree on steps (net.conv1's
            # ramp; net.conv2's alternates with plain white, which any frame's background holds).
            for row in (2, 3) if layer["name"] == "net.conv1" else ():
                tile = served[row][(0, 2)]
                big = upscale_nearest(tile.transpose(2, 0, 1), tile.shape[0] * factor, tile.shape[1] * factor)
                assert not _contains(gif[row + 1 if row == 2 else row - 1], big.transpose(1, 2, 0))
            # The colour bar's numbers come from the scale rule render used.
            assert [text for text, _ in layer["scale"]["labels"]] == (
                ["-1", "0", "+1"] if layer["name"] == "net.conv1" else ["-2.5", "0", "+2.5"]
            )
        step = _get_json(f"{api}/step?run={urllib.parse.quote(RUN)}&row=1")
        assert step == {"row": 1, "global_step": 1, "epoch": 0, "predictions": [0, 2, 0]}
        status, body = _get(f"{api}/frame?run={urllib.parse.quote(RUN)}&layer=net.conv1&row=6")
        assert status == 400
        assert json.loads(body) == {"error": "run 'exp/version_0' has rows 0 to 5, not row 6."}
        status, body = _get(f"{api}/frame?run=..%2F..&layer=net.conv1&row=0")
        assert status == 400
        assert "no actrec run named '../..'" in json.loads(body)["error"]
    assert sorted(path.relative_to(logdir) for path in logdir.rglob("*")) == before  # nothing written


def test_plugin_is_inactive_without_stores(tmp_path: Path) -> None:
    class Context:
        logdir = str(tmp_path)
        flags = None

    assert ActrecPlugin(Context()).is_active() is False
    make_store(tmp_path / "run")
    assert ActrecPlugin(Context()).is_active() is True


async def _tab(page: object, base: str) -> None:
    for domain in ("Runtime", "Log", "Page", "Network"):
        await page.send(f"{domain}.enable")
    await page.send("Emulation.setDeviceMetricsOverride", width=1366, height=768, deviceScaleFactor=1, mobile=False)
    await page.send("Page.navigate", url=f"{base}/#actrec")


FRAME = "document.querySelector('iframe') && document.querySelector('iframe').contentDocument"


async def _wait_for(page: object, expression: str, timeout: float = 60) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = await page.evaluate(f"(() => {{ const doc = {FRAME}; if (!doc) return null; return {expression}; }})()")
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {expression}")
        await asyncio.sleep(0.2)


CANVASES = "[...doc.querySelectorAll('canvas.tiles')]"


@needs_chromium
@pytest.mark.slow  # a TensorBoard server and a browser
def test_tab_moves_every_layer_on_one_slider(logdir: Path, tmp_path: Path) -> None:
    from report_browser import browser_page

    async def drive(base: str) -> None:
        async with browser_page(CHROMIUM) as page:
            await _tab(page, base)
            # Following is on: the tab opens on the last recorded row, every layer drawn at it.
            await _wait_for(page, f"{CANVASES}.length === 2 && {CANVASES}.every(c => c.dataset.row === '5')")
            before = await page.evaluate(
                f"(() => {{ const doc = {FRAME}; return {CANVASES}.map(c => c.toDataURL()); }})()"
            )
            where = await _wait_for(page, "doc.getElementById('where').textContent")
            assert where.startswith("step 5 · epoch 1")
            # The slider's left arrow (keyboard focus in the tab) moves every layer to row 4.
            # Every stroke the curves draw from here on is logged (colour, width): see what the tab draws.
            await page.evaluate(
                f"(() => {{ const win = ({FRAME}).defaultView; const proto = win.CanvasRenderingContext2D.prototype;"
                " const stroke = proto.stroke; win.strokes = [];"
                " proto.stroke = function (...a) { if (this.canvas.classList.contains('curve'))"
                " win.strokes.push([this.strokeStyle, this.lineWidth]); return stroke.apply(this, a); }; })()"
            )
            await page.evaluate(f"(() => {{ const doc = {FRAME}; doc.defaultView.focus(); doc.body.focus(); }})()")
            await page.press("ArrowLeft", 37)
            await _wait_for(page, f"{CANVASES}.every(c => c.dataset.row === '4')")
            # The training curves as actrec render draws them: the smoothed line over the raw one in a faint
            # tint of its colour; validation as it is.
            strokes = await page.evaluate(f"(() => ({FRAME}).defaultView.strokes)()")
            assert ["#b0cbe4", 1] in strokes  # raw batch loss / accuracy, faint
            assert ["#2166ac", 2] in strokes  # smoothed
            assert ["#e08a1e", 1] in strokes  # validation
            assert strokes.index(["#b0cbe4", 1]) < strokes.index(["#2166ac", 2])  # the raw one underneath
            after = await page.evaluate(
                f"(() => {{ const doc = {FRAME}; return {CANVASES}.map(c => c.toDataURL()); }})()"
            )
            assert all(a != b for a, b in zip(before, after, strict=True)), "a layer's tiles did not change"
            # Dragging the slider to row 0 moves them all again; predictions follow the row.
            await page.evaluate(
                f"(() => {{ const doc = {FRAME}; const s = doc.getElementById('slider'); s.value = '0';"
                " s.dispatchEvent(new Event('input')); })()"
            )
            await _wait_for(page, f"{CANVASES}.every(c => c.dataset.row === '0')")
            predicted = await _wait_for(
                page,
                "(() => { const p = [...doc.querySelectorAll('.card')[0].querySelectorAll('.prediction')]"
                ".map(n => n.textContent); return p.every(t => t) && p; })()",
            )
            assert predicted == ["✓ zero", "✓ one", "✗ zero"]  # fixtures: probe 1 right on even steps
            # A tile's colour on screen is the scale rule's colour (no smoothing): net.conv1's channel 1 is +1.
            centre = await page.evaluate(
                f"(() => {{ const doc = {FRAME}; const c = {CANVASES}[0]; const t = (c.height - 3) / 3 - 3;"
                " return [...c.getContext('2d').getImageData(3 + t / 2, 3 + (t + 3) + t / 2, 1, 1).data]; })()"
            )
            expected = colors.to_rgb(colour_scale("tanh", np.zeros(1)).indices(np.ones(1)))[0]
            assert centre == [*expected.tolist(), 255]
            # Play runs every layer through the remaining steps and stops at the last one.
            await page.evaluate(f"(() => {FRAME}.getElementById('play').click())()")
            await _wait_for(page, f"{CANVASES}.every(c => c.dataset.row === '5')")
            await _wait_for(page, "doc.getElementById('play').textContent === '▶'")
            await page.screenshot(tmp_path / "tab.png")
            assert page.errors == []
            outside = [url for url in page.requests if not url.startswith(base + "/") and not url.startswith("data:")]
            assert outside == []

    with tensorboard("--logdir", str(logdir)) as base:
        asyncio.run(drive(base))


def test_training_curves_carry_render_s_smoothing_over_the_raw_values(tmp_path: Path) -> None:
    from actrec.viewer.curves import smooth

    make_store(tmp_path / "logs" / "exp" / "version_0", steps=range(40))
    timeline = _plugin_client(tmp_path / "logs").get(f"/timeline?run={RUN}").json
    for label, column in (("train/loss", "batch_loss"), ("train/acc", "batch_acc")):
        steps, raw, smoothed = timeline["curves"][label]
        assert steps == list(range(40))
        values = np.array([2.0 / (s + 1) if column == "batch_loss" else min(1.0, 0.1 * s) for s in steps])
        values[0] = np.nan  # the fixtures' first row has no loss or accuracy
        assert raw[0] is None
        assert raw[1:] == pytest.approx(values[1:].tolist())
        assert smoothed[0] is None
        assert smoothed[1:] == pytest.approx(smooth(values)[1:].tolist())  # TensorBoard's EMA, weight 0.9
        assert smoothed[5] != pytest.approx(raw[5])
    assert timeline["curves"]["val/loss"] == [[39], [0.5]]  # validation is drawn as it is: no third list


def _mnist_like_store(folder: Path, steps: int = 3, probes: int = 10) -> Path:
    """A store shaped like the quickstart's first layer: 10 probes, (2, 28, 28) tanh maps."""
    from actrec.store import LayerSpec, ProbeSet, StepRecord, StoreWriter

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.random((probes, 1, 28, 28), dtype=np.float32)
    writer = StoreWriter.create(
        folder / "activations.h5",
        run_id="mnist-like",
        config={},
        probes=ProbeSet(images, np.arange(probes), np.arange(probes), [str(i) for i in range(probes)]),
        layers=[LayerSpec("net.conv1", (2, 28, 28), "Conv2d", "tanh")],
        num_classes=probes,
        background=False,
    )
    with writer:
        for step in range(steps):
            writer.append(
                StepRecord(
                    global_step=step,
                    epoch=0,
                    batch_loss=1.0,
                    batch_acc=0.5,
                    logits=np.eye(probes, dtype=np.float32),
                    activations={"net.conv1": np.tanh(rng.normal(size=(probes, 2, 28, 28))).astype(np.float32)},
                )
            )
    return folder / "activations.h5"


def test_export_draws_maps_at_least_at_their_own_resolution(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from actrec.viewer import export_tensorboard

    _mnist_like_store(tmp_path / "run")
    result = export_tensorboard(tmp_path / "run", progress=False)
    events = EventAccumulator(str(result.export_dir), size_guidance={"images": 0})
    events.Reload()
    frames = events.Images("activations/net.conv1")
    assert len(frames) == 3
    # Ten probes side by side, each 28 x 28 map in at least 28 x 28 pixels (plus gutters and margins).
    assert all(frame.width >= 10 * 28 + 80 for frame in frames)


LIVE_WRITER = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests_dir!r})
from actrec.store import StoreWriter
import viewer_fixtures as fx

path = Path(sys.argv[1])
path.parent.mkdir(parents=True, exist_ok=True)
writer = StoreWriter.create(path, run_id="live", config={{}}, probes=fx.probe_set(), layers=fx.LAYERS,
                            num_classes=3, background=False)
for step in range(int(sys.argv[2])):
    writer.append(fx.record(step))
    writer.flush()
    print(step + 1, flush=True)  # rows on disk so far
    time.sleep(float(sys.argv[3]))
writer.close()
"""
"""A writer process, as a training's recorder writes: one flushed row at a time, printing the count."""


@needs_chromium
@pytest.mark.slow  # a TensorBoard server, a writer process and a browser
def test_tab_follows_a_run_while_it_is_written(tmp_path: Path) -> None:
    from report_browser import browser_page

    logdir = tmp_path / "logs"
    store = logdir / "live" / "version_0" / "activations.h5"
    writer = subprocess.Popen(
        [sys.executable, "-c", LIVE_WRITER.format(tests_dir=str(Path(__file__).parent)), str(store), "400", "0.25"],
        stdout=subprocess.PIPE,
        text=True,
    )

    async def drive(base: str) -> None:
        async with browser_page(CHROMIUM) as page:
            await _tab(page, base)
            await _wait_for(page, f"{CANVASES}.length === 2 && {CANVASES}.every(c => c.dataset.row)")
            await page.evaluate(f"(() => {{ ({FRAME}).defaultView.notReloaded = true; }})()")
            first = int(await _wait_for(page, f"{CANVASES}[0].dataset.row"))
            # No reload, no click: the tab polls, the slider grows, and following moves every layer on.
            later = await _wait_for(
                page,
                f"{CANVASES}.every(c => Number(c.dataset.row) >= {first + 3}) && Number({CANVASES}[0].dataset.row)",
                timeout=90,
            )
            assert later >= first + 3
            assert await page.evaluate(f"(() => ({FRAME}).defaultView.notReloaded === true)()")
            slider_max = await page.evaluate(f"(() => Number(({FRAME}).getElementById('slider').max))()")
            assert slider_max >= later
            assert page.errors == []

    try:
        assert writer.stdout.readline().strip() == "1"  # the store exists and holds a row
        with tensorboard("--logdir", str(logdir)) as base:
            asyncio.run(drive(base))
    finally:
        writer.kill()
        writer.wait()


def _plugin_client(logdir: Path) -> object:
    """The plugin's routes as one WSGI app, in-process (werkzeug's test client)."""
    from werkzeug.routing import Map, Rule
    from werkzeug.test import Client
    from werkzeug.wrappers import Request, Response

    class Context:
        flags = None

    Context.logdir = str(logdir)
    routes = ActrecPlugin(Context()).get_plugin_apps()
    urls = Map([Rule(path, endpoint=path) for path in routes])

    def app(environ: dict, start_response: object) -> object:
        endpoint, _ = urls.bind_to_environ(environ).match(Request(environ).path)
        return routes[endpoint](environ, start_response)

    return Client(app, Response)


def test_a_damaged_row_is_refused_with_the_read_side_s_sentence(tmp_path: Path) -> None:
    import h5py

    store = make_store(tmp_path / "logs" / "exp" / "version_0")
    with h5py.File(store, "r") as file:
        offset = file["layers/net.conv1/activations"].id.get_chunk_info(2).byte_offset
    with store.open("r+b") as file:  # scribble over row 2's chunk: its checksum no longer matches
        file.seek(offset + 100)
        file.write(b"\xab" * 64)
    client = _plugin_client(tmp_path / "logs")
    damaged = client.get(f"/frame?run={RUN}&layer=net.conv1&row=2")
    assert damaged.status_code == 400
    assert damaged.json == {"error": "step 2 of layer net.conv1 is damaged (checksum mismatch)"}
    other = client.get(f"/frame?run={RUN}&layer=net.conv1&row=3")
    assert other.status_code == 200, other.json
    assert client.get(f"/frame?run={RUN}&layer=net.conv2&row=2").status_code == 200


def test_a_step_s_predictions_read_that_row_s_logits_only(tmp_path: Path) -> None:
    import h5py
    from viewer_fixtures import predictions_at

    from actrec.recording import Recording

    store = make_store(tmp_path / "logs" / "exp" / "version_0", steps=range(130))
    with Recording.open(store) as recording:
        timeline = recording.timeline
        assert [timeline.predictions_at(row).tolist() for row in range(130)] == [
            predictions_at(s).tolist() for s in range(130)
        ]
        assert "predictions" not in timeline.__dict__  # the whole logits column was never read
        assert timeline.predictions.tolist() == [predictions_at(s).tolist() for s in range(130)]  # one answer
    with h5py.File(store, "r") as file:
        rows_per_chunk = file["steps/logits"].chunks[0]
        assert rows_per_chunk < 100
        offset = file["steps/logits"].id.get_chunk_info(1).byte_offset
    with store.open("r+b") as file:  # the logits of rows 64... fail their checksum
        file.seek(offset + 8)
        file.write(b"\xab" * 16)
    client = _plugin_client(tmp_path / "logs")
    fine = client.get(f"/step?run={RUN}&row=4")
    assert fine.status_code == 200, fine.json  # another row's damage does not stop this one
    assert fine.json["predictions"] == predictions_at(4).tolist()
    damaged = client.get(f"/step?run={RUN}&row={rows_per_chunk + 1}")
    assert damaged.status_code == 400
    assert "damaged" in damaged.json["error"]


@pytest.mark.slow
@needs_chromium
def test_tab_follows_a_real_training(tmp_path: Path) -> None:
    """`actrec train` records while TensorBoard and the tab are open: the tab's last step advances by itself."""
    from report_browser import browser_page

    runs = tmp_path / "runs"
    training = subprocess.Popen(
        # Many epochs: the test stops it once the tab has followed it (a quiet machine trains 250 batches in ~6 s).
        [sys.executable, "-m", "actrec.cli", "train", "--runs_dir", str(runs), "--trainer.max_epochs=100",
         "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1",
         "--data.batch_size=16", "--recorder.every_n_steps=1", "--trainer.enable_progress_bar=false"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip

    async def drive(base: str) -> None:
        async with browser_page(CHROMIUM) as page:
            await _tab(page, base)
            await _wait_for(page, f"{CANVASES}.length >= 6 && {CANVASES}.every(c => c.dataset.row)", timeout=120)
            await page.evaluate(f"(() => {{ ({FRAME}).defaultView.notReloaded = true; }})()")
            first = int(await _wait_for(page, f"{CANVASES}[0].dataset.row"))
            later = await _wait_for(
                page,
                f"{CANVASES}.every(c => Number(c.dataset.row) >= {first + 2}) && Number({CANVASES}[0].dataset.row)",
                timeout=120,
            )
            assert later >= first + 2
            assert await page.evaluate(f"(() => ({FRAME}).defaultView.notReloaded === true)()")
            assert page.errors == []

    try:
        store = runs / "quickstart" / "version_0" / "activations.h5"
        deadline = time.monotonic() + 180
        while not store.exists():
            assert training.poll() is None, "the training ended before writing its store"
            assert time.monotonic() < deadline, "the training wrote no store within 3 minutes"
            time.sleep(0.5)
        with tensorboard("--logdir", str(runs)) as base:
            asyncio.run(drive(base))
        assert training.poll() is None  # it was still training when the tab followed it
    finally:
        with contextlib.suppress(ProcessLookupError):  # already ended: the assertion above says why
            os.killpg(training.pid, signal.SIGTERM)
        training.wait(60)


@pytest.mark.slow  # a real `actrec tensorboard` server
def test_actrec_tensorboard_shows_that_run_alone_with_the_tab(tmp_path: Path) -> None:
    make_store(tmp_path / "quickstart" / "version_0")
    make_store(tmp_path / "quickstart" / "version_1")
    run = tmp_path / "quickstart" / "version_1"
    before = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*"))
    actrec = [sys.executable, "-m", "actrec.cli", "tensorboard", str(run), "--quiet"]
    with tensorboard(command=actrec) as base:
        assert _get_json(f"{base}/data/plugins_listing")["actrec"]["enabled"] is True
        assert _get_json(f"{base}/data/plugin/actrec/runs") == {"runs": ["quickstart/version_1/."]}
        timeline = _get_json(f"{base}/data/plugin/actrec/timeline?run=quickstart%2Fversion_1%2F.")
        assert timeline["global_steps"] == [0, 1, 2, 3, 4, 5]
    with tensorboard(command=[*actrec, "--all"]) as base:
        assert _get_json(f"{base}/data/plugin/actrec/runs") == {"runs": ["version_0", "version_1"]}
    assert sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*")) == before  # nothing exported


@needs_chromium
@pytest.mark.slow  # a TensorBoard server and a browser
def test_a_second_run_is_drawn_under_each_layer_at_the_nearest_step(tmp_path: Path) -> None:
    from report_browser import browser_page

    make_store(tmp_path / "logs" / "a" / "version_0")
    make_store(tmp_path / "logs" / "b" / "version_0", steps=[0, 2, 4, 6, 8])

    async def drive(base: str) -> None:
        async with browser_page(CHROMIUM) as page:
            await _tab(page, base)
            await _wait_for(page, f"{CANVASES}.length === 2 && {CANVASES}.every(c => c.dataset.row === '5')")
            await page.evaluate(
                f"(() => {{ const doc = {FRAME}; const s = doc.getElementById('compare'); s.value = 'b/version_0';"
                " s.dispatchEvent(new Event('change')); })()"
            )
            compare = "[...doc.querySelectorAll('canvas.tiles.compare')]"
            # Run a at step 5: run b's nearest recorded step is 4 (row 2; 6 is as near, the earlier wins).
            await _wait_for(page, f"{compare}.length === 2 && {compare}.every(c => c.dataset.row === '2')")
            await page.evaluate(
                f"(() => {{ const doc = {FRAME}; const s = doc.getElementById('slider'); s.value = '1';"
                " s.dispatchEvent(new Event('input')); })()"
            )
            await _wait_for(page, f"{compare}.every(c => c.dataset.row === '0' || c.dataset.row === '1')")
            text = await _wait_for(page, "doc.querySelector('.compare-step').textContent")
            assert text in ("step 0 (nearest to 1)", "step 2 (nearest to 1)")
            await page.screenshot(tmp_path / "compare.png")
            assert page.errors == []

    with tensorboard("--logdir", str(tmp_path / "logs")) as base:
        asyncio.run(drive(base))


@pytest.mark.slow
def test_a_trained_run_s_frames_are_render_s_colours(tmp_path: Path) -> None:
    """A real (tiny) training of the quickstart network: every layer's served tiles at the last step are the
    tiles `actrec render` drew of that step."""
    runs = tmp_path / "runs"
    subprocess.run(
        [sys.executable, "-m", "actrec.cli", "train", "--runs_dir", str(runs), "--trainer.max_epochs=1",
         "--trainer.limit_train_batches=4", "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1",
         "--recorder.every_n_steps=1", "--trainer.enable_progress_bar=false"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    run_dir = runs / "quickstart" / "version_0"
    renders = tmp_path / "renders"
    subprocess.run(
        [sys.executable, "-m", "actrec.cli", "render", str(run_dir), "--out", str(renders), "--quiet",
         "--tile-size", str(TILE_SIZE)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    with tensorboard("--logdir", str(runs)) as base:
        api = f"{base}/data/plugin/actrec"
        run = "quickstart/version_0"
        info = _get_json(f"{api}/run?run={urllib.parse.quote(run)}")
        timeline = _get_json(f"{api}/timeline?run={urllib.parse.quote(run)}")
        last = timeline["num_rows"] - 1
        assert timeline["global_steps"][-1] == 4  # steps 0..4: before training and after each of 4 batches
        probes = len(info["probes"]["labels"])
        assert len(info["layers"]) == 6
        for layer in info["layers"]:
            frame = animation_frames(renders / f"{layer['name']}.png")[last]
            factor = TILE_SIZE // max(layer["grid"]["height"], layer["grid"]["width"])
            query = urllib.parse.urlencode({"run": run, "layer": layer["name"], "row": last})
            status, body = _get(f"{api}/frame?{query}")
            assert status == 200, body
            tiles = _tiles(_png(body), layer["grid"], probes)
            for (channel, probe), tile in tiles.items():
                if channel in (0, layer["grid"]["rows"] - 1):  # first and last channel of every probe
                    big = upscale_nearest(tile.transpose(2, 0, 1), tile.shape[0] * factor, tile.shape[1] * factor)
                    assert _contains(frame, big.transpose(1, 2, 0)), (layer["name"], channel, probe)


@pytest.mark.slow  # a writer process, waited on
def test_a_live_run_s_scales_are_fixed_anew_once_it_has_twice_the_rows(tmp_path: Path) -> None:
    logdir = tmp_path / "logs"
    store = logdir / "live" / "version_0" / "activations.h5"
    writer = subprocess.Popen(
        [sys.executable, "-c", LIVE_WRITER.format(tests_dir=str(Path(__file__).parent)), str(store), "60", "0.1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "1"
        client = _plugin_client(logdir)
        run = "live/version_0"
        first = client.get(f"/run?run={run}").json
        assert first["generation"] == 0
        rows = first["num_rows"]
        assert client.get(f"/frame?run={run}&layer=net.conv2&row=0").status_code == 200
        deadline = time.monotonic() + 60
        while client.get(f"/poll?run={run}").json["num_rows"] < 2 * rows:
            assert time.monotonic() < deadline, "the writer did not double the rows within a minute"
            time.sleep(0.1)
        timeline = client.get(f"/timeline?run={run}").json
        assert timeline["generation"] == 1  # re-planned over every row there now is
        again = client.get(f"/run?run={run}").json
        assert again["generation"] == 1
        assert again["num_rows"] >= 2 * rows
        assert client.get(f"/frame?run={run}&layer=net.conv2&row=0").status_code == 200
    finally:
        writer.kill()
        writer.wait()


def test_a_run_that_is_not_a_classifier_has_no_predictions(tmp_path: Path) -> None:
    make_store(tmp_path / "logs" / "exp" / "version_0", task="reconstruction")
    make_store(tmp_path / "logs" / "cls" / "version_0")  # no task attribute: a classifier
    client = _plugin_client(tmp_path / "logs")
    info = client.get(f"/run?run={RUN}").json
    assert (info["task"], info["probes"]["predictions"]) == ("reconstruction", False)
    assert client.get(f"/step?run={RUN}&row=1").json["predictions"] == []
    classifier = client.get("/run?run=cls/version_0").json
    assert (classifier["task"], classifier["probes"]["predictions"]) == ("classification", True)
    assert client.get("/step?run=cls/version_0&row=1").json["predictions"] == [0, 2, 0]


GROWING_WRITER = LIVE_WRITER.replace("writer.append(fx.record(step))", "writer.append(grown(step))").replace(
    "path = Path(sys.argv[1])",
    """def grown(step):
    record = fx.record(step)
    record.activations["net.conv2"] = record.activations["net.conv2"] * (step + 1)
    return record

path = Path(sys.argv[1])""",
)
"""A live writer whose ``net.conv2`` grows with the step, so its colour scale widens as rows come in."""


def test_a_re_fixed_scale_redraws_the_frames_cached_on_the_old_one(tmp_path: Path) -> None:
    logdir = tmp_path / "logs"
    store = logdir / "live" / "version_0" / "activations.h5"
    writer = subprocess.Popen(
        [sys.executable, "-c", GROWING_WRITER.format(tests_dir=str(Path(__file__).parent)), str(store), "80", "0.05"],
        stdout=subprocess.PIPE,
        text=True,
    )
    run = "live/version_0"
    try:
        assert writer.stdout.readline().strip() == "1"
        client = _plugin_client(logdir)
        first = client.get(f"/run?run={run}").json
        before = client.get(f"/frame?run={run}&layer=net.conv2&row=0").data
        assert client.get(f"/frame?run={run}&layer=net.conv2&row=0").data == before  # cached
        deadline = time.monotonic() + 60
        while client.get(f"/poll?run={run}").json["num_rows"] < 2 * first["num_rows"]:
            assert time.monotonic() < deadline, "the writer did not double the rows within a minute"
            time.sleep(0.05)
    finally:
        writer.kill()
        writer.wait()
    after = client.get(f"/frame?run={run}&layer=net.conv2&row=0").data
    again = client.get(f"/run?run={run}").json
    assert again["generation"] == first["generation"] + 1
    limits = [next(layer["scale"]["limit"] for layer in info["layers"] if layer["name"] == "net.conv2")
              for info in (first, again)]  # fmt: skip
    assert limits[1] > limits[0]  # the scale was fixed anew over the grown rows ...
    assert after != before  # ... and row 0 is drawn on it, not served from the cache of the old one
