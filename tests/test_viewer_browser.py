"""``actrec tensorboard``'s export in a real TensorBoard, looked at by a real headless browser (Debian's chromium).

TensorBoard runs on loopback on a free port; chromium loads its default tab (Time Series) and
takes a screenshot. The checks: the runs are named after the run (``version_0``, never ``"."``),
every exported step is served and the cards' step sliders span them all, and the frames are
drawn at their natural size (so their 15 px labels are legible at the default card size).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from viewer_fixtures import make_store

from actrec.viewer import colors
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
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
        "--virtual-time-budget=20000",
        *extra,
        url,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)


@pytest.fixture
def tensorboard_url(tmp_path: Path) -> tuple[str, object]:
    run_dir = tmp_path / "runs" / "quickstart" / "version_0"
    make_store(run_dir, range(STEPS))
    _scalar_events(run_dir)
    result = export_tensorboard(run_dir, tile_size=32)
    port = _free_port()
    command = tensorboard_command(
        result.log_dir, result.samples_per_plugin, ["--host", "127.0.0.1", "--port", str(port)]
    )
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
        yield url, result
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=20)


def test_tensorboard_shows_named_runs_every_step_and_legible_frames(
    tensorboard_url: tuple[str, object], tmp_path: Path
) -> None:
    url, result = tensorboard_url
    assert sorted(_get_json(f"{url}/data/runs")) == ["version_0", "version_0/activations"]
    query = urllib.parse.urlencode({"run": "version_0/activations", "tag": "activations/net.conv1"})
    served = _get_json(f"{url}/data/plugin/images/images?{query}")
    assert [image["step"] for image in served] == list(range(STEPS))  # --samples_per_plugin keeps them all

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
