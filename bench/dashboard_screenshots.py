"""Screenshots of the actrec tab in a real TensorBoard, as a user at a 1366 x 768 laptop screen sees it.

Starts ``python -m tensorboard.main`` on a logdir, opens ``/#actrec`` in headless chromium (the
DevTools client of ``tests/report_browser.py``), waits for every layer's tiles, and saves a PNG.
``--resnet-like DIR`` first writes a synthetic store shaped like a ResNet-18's stages on 64 x 64 RGB
probes (conv1 (64, 32, 32) ... layer4 (512, 2, 2), fc (10,); ReLU-like, sharpening over 60 steps), so
the wide-layer path (16 of 64-512 channels drawn) can be looked at without training one.

    python bench/dashboard_screenshots.py runs docs/dashboard-quickstart.png
    python bench/dashboard_screenshots.py /tmp/resnet docs/dashboard-resnet18.png --resnet-like /tmp/resnet
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from actrec.store import LayerSpec, ProbeSet, StepRecord, StoreWriter

RESNET_LAYERS = [
    ("conv1", (64, 32, 32)),
    ("layer1", (64, 16, 16)),
    ("layer2", (128, 8, 8)),
    ("layer3", (256, 4, 4)),
    ("layer4", (512, 2, 2)),
]
CLASSES = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _smooth(rng: np.random.Generator, shape: tuple[int, ...], passes: int = 2) -> np.ndarray:
    """Random fields smoothed over their last two axes (cheap box blur), roughly unit scale."""
    field = rng.normal(size=shape)
    for _ in range(passes):
        field = (field + np.roll(field, 1, -1) + np.roll(field, -1, -1)) / 3
        field = (field + np.roll(field, 1, -2) + np.roll(field, -1, -2)) / 3
    return field / field.std()


def build_resnet_like(folder: Path, steps: int = 60, seed: int = 0) -> Path:
    """Write a ResNet-18-shaped store into ``folder/resnet18/version_0``; returns the store."""
    rng = np.random.default_rng(seed)
    run = folder / "resnet18" / "version_0"
    run.mkdir(parents=True, exist_ok=True)
    images = (0.5 + 0.25 * _smooth(rng, (10, 3, 64, 64), passes=6)).astype(np.float32)
    layers = [LayerSpec(name, shape, "Sequential", "nonnegative") for name, shape in RESNET_LAYERS]
    layers.append(LayerSpec("fc", (10,), "Linear", "symmetric"))
    start = {name: _smooth(rng, (10, *shape)) for name, shape in RESNET_LAYERS}
    end = {name: _smooth(rng, (10, *shape)) for name, shape in RESNET_LAYERS}
    writer = StoreWriter.create(
        run / "activations.h5",
        run_id="resnet18-like",
        config={},
        probes=ProbeSet(images, np.arange(10), np.arange(10), CLASSES),
        layers=layers,
        num_classes=10,
        background=False,
    )
    with writer:
        for step in range(steps):
            progress = step / (steps - 1)
            activations = {
                name: np.maximum(0, (1 - progress) * start[name] + progress * 1.6 * end[name]).astype(np.float32)
                for name, _ in RESNET_LAYERS
            }
            logits = rng.normal(size=(10, 10)).astype(np.float32) + 6 * progress * np.eye(10, dtype=np.float32)
            activations["fc"] = logits
            writer.append(
                StepRecord(
                    global_step=step * 10,
                    epoch=step // 20,
                    batch_loss=float(2.3 * np.exp(-3 * progress) + 0.1 * rng.random()),
                    batch_acc=float(1 - 0.9 * np.exp(-3 * progress)),
                    logits=logits,
                    activations=activations,
                )
            )
    return run / "activations.h5"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _shoot(base: str, target: Path, width: int, height: int, scroll: int) -> list[str]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from report_browser import browser_page

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("needs chromium (apt-get install chromium)")
    async with browser_page(chromium) as page:
        for domain in ("Runtime", "Log", "Page", "Network"):
            await page.send(f"{domain}.enable")
        await page.send(
            "Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False
        )
        await page.send("Page.navigate", url=f"{base}/#actrec")
        doc = "document.querySelector('iframe') && document.querySelector('iframe').contentDocument"
        ready = (
            f"(() => {{ const d = {doc}; if (!d) return false; const c = [...d.querySelectorAll('canvas.tiles')];"
            " return c.length > 0 && c.every(x => x.dataset.row); })()"
        )
        deadline = time.monotonic() + 120
        while not await page.evaluate(ready):
            if time.monotonic() > deadline:
                raise SystemExit("the tab did not draw its layers within 2 minutes")
            await asyncio.sleep(0.3)
        if scroll:
            await page.evaluate(f"(() => {{ ({doc}).defaultView.scrollTo(0, {scroll}); }})()")
        await asyncio.sleep(0.5)
        await page.screenshot(target)
        return page.errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logdir", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--resnet-like", type=Path, help="first write the ResNet-18-shaped store into this folder")
    parser.add_argument("--size", default="1366x768", help="window size (default 1366x768)")
    parser.add_argument("--scroll", type=int, default=0, help="scroll the tab down this many pixels first")
    args = parser.parse_args()
    if args.resnet_like:
        build_resnet_like(args.resnet_like)
    width, height = (int(n) for n in args.size.split("x"))
    port = _free_port()
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(args.logdir), "--port", str(port)]
    server = subprocess.Popen([*command, "--host", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"{base}/data/plugins_listing", timeout=2)  # noqa: S310 - loopback only
                break
            except OSError:
                time.sleep(0.2)
        errors = asyncio.run(_shoot(base, args.target, width, height, args.scroll))
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(20)
    print(f"wrote {args.target}; console errors: {errors or 'none'}")


if __name__ == "__main__":
    main()
