"""``actrec tensorboard``'s export in a real TensorBoard, looked at by a real headless browser (Debian's chromium).

TensorBoard runs on loopback on a free port; chromium loads its default tab (Time Series) and
takes a screenshot. The checks: the runs are named after the run (``version_0``, never ``"."``),
every exported step is served and the cards' step sliders span them all, and the frames are
drawn at their natural size (so their 15 px labels are legible at the default card size).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from report_browser import HEADLESS_FLAGS
from viewer_fixtures import make_store

from actrec.recording import colors
from actrec.viewer._events import EventFile
from actrec.viewer.frames import CARD_TEXT_SCALE
from actrec.viewer.tb_export import export_tensorboard, tensorboard_command

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium) for the browser"),
]
STEPS = 12


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback only
        return json.loads(response.read())


def _scalar_events(run_dir: Path) -> None:
    """A scalar event file in the run folder, as Lightning's logger writes one."""
    from tensorboard.compat.proto import event_pb2, summary_pb2

    events = EventFile(run_dir)
    for step in range(STEPS):
        summary = summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag="train/loss", simple_value=1.0 / (step + 1))]
        )
        events.write(event_pb2.Event(wall_time=1e9 + step, step=step, summary=summary).SerializeToString())
    events.close()


def _chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        CHROMIUM,
        *HEADLESS_FLAGS,
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
        "--virtual-time-budget=20000",
        *extra,
        url,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)


@contextlib.contextmanager
def _serve(command: list[str], port: int) -> Iterator[str]:
    """Run TensorBoard on loopback until its two runs are loaded; yield its URL."""
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if len(_get_json(f"{url}/data/runs")) >= 2:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                pytest.fail(f"TensorBoard did not come up on {url}: {' '.join(command)}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)


def _image_steps(url: str, tag: str, at_least: int, run: str = "version_0/activations") -> list[int]:
    """Steps TensorBoard serves for ``tag`` of ``run``, once it has loaded ``at_least`` of them (or 20 s passed)."""
    query = urllib.parse.urlencode({"run": run, "tag": tag})
    deadline = time.monotonic() + 20
    while True:
        steps = [image["step"] for image in _get_json(f"{url}/data/plugin/images/images?{query}")]
        if len(steps) >= at_least or time.monotonic() > deadline:
            return steps
        time.sleep(0.5)


@pytest.fixture
def exported_run(tmp_path: Path) -> object:
    run_dir = tmp_path / "runs" / "quickstart" / "version_0"
    make_store(run_dir, range(STEPS))
    _scalar_events(run_dir)
    return export_tensorboard(run_dir, tile_size=32)


@pytest.fixture
def tensorboard_url(exported_run: object) -> Iterator[str]:
    port = _free_port()
    command = tensorboard_command(
        exported_run.log_dir, exported_run.samples_per_plugin, ["--host", "127.0.0.1", "--port", str(port)]
    )
    with _serve(command, port) as url:
        yield url


def test_a_plain_tensorboard_shows_every_overview_step_and_ten_of_the_rest(exported_run: object) -> None:
    # What users type: no --samples_per_plugin, so TensorBoard keeps 10 images per tag (the last always).
    port = _free_port()
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(exported_run.log_dir.parent.parent)]
    with _serve([*command, "--host", "127.0.0.1", "--port", str(port)], port) as url:
        assert sorted(_get_json(f"{url}/data/runs")) == ["quickstart/version_0", "quickstart/version_0/activations"]
        run = "quickstart/version_0/activations"
        overview = _image_steps(url, "overview/net.conv1", 8, run)
        full = _image_steps(url, "activations/net.conv1", 10, run)
    assert overview == [0, 1, 2, 3, 4, 6, 8, 11]  # first, log-spaced, last: every one kept, step 0 included
    assert len(full) == 10  # of 12: the plain default cannot show every step; actrec tensorboard can


def test_tensorboard_shows_named_runs_every_step_and_legible_frames(tensorboard_url: str, tmp_path: Path) -> None:
    url = tensorboard_url
    assert sorted(_get_json(f"{url}/data/runs")) == ["version_0", "version_0/activations"]
    # --samples_per_plugin keeps them all.
    assert _image_steps(url, "activations/net.conv1", STEPS) == list(range(STEPS))

    dom = _chromium(f"{url}/#timeseries", tmp_path / "profile-dom", "--dump-dom").stdout
    assert 'title="activations/net.conv1"' in dom
    sliders = dom.count(f'min="0" max="{STEPS - 1}"')
    assert sliders >= 2, "every visible image card's step slider spans all exported steps"

    shot = tmp_path / "timeseries.png"
    _chromium(f"{url}/#timeseries", tmp_path / "profile-shot", f"--screenshot={shot}")
    screen = np.asarray(Image.open(shot).convert("RGB"))
    scales = _colour_bar_scales(screen, 2 * int(151 * CARD_TEXT_SCALE / 2) + 1)
    # TensorBoard draws images pixelated, so the bar keeps its exact colours at any size; its width
    # on screen against its width in the frame is the card's scale. At 0.7 or more the frame's
    # labels (11 px x 1.4 = 15 px drawn) show at 11 px or more: legible at the default card size.
    assert scales, f"no colour bar found in the screenshot {shot}"
    assert min(scales) >= 0.7, f"frames shrunk to {min(scales):.2f} of their size in {shot}"


def _colour_bar_scales(screen: np.ndarray, bar_width: int) -> list[float]:
    """Displayed width / drawn width of every colour bar (a run of diverging-ramp colours, red end to blue end)."""
    keys = screen[..., 0].astype(np.int64) << 16 | screen[..., 1].astype(np.int64) << 8 | screen[..., 2]
    ramp = colors.PALETTE[: colors.DIVERGING_LEVELS].astype(np.int64)
    ramp_keys = ramp[:, 0] << 16 | ramp[:, 1] << 8 | ramp[:, 2]
    red_key, blue_key = int(ramp_keys[0]), int(ramp_keys[-1])
    on_ramp = np.isin(keys, ramp_keys)
    scales = set()
    for y in range(screen.shape[0]):
        row = on_ramp[y]
        edges = np.flatnonzero(np.diff(np.concatenate([[0], row.view(np.int8), [0]])))
        for start, stop in zip(edges[::2], edges[1::2], strict=True):
            if stop - start > 40 and keys[y, start] == red_key and keys[y, stop - 1] == blue_key:
                scales.add(round((stop - start) / bar_width, 2))
    return sorted(scales)
