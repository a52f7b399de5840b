"""Many probes: render draws at most ten by default (a note names --probes), --probes picks others."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from actrec.recording import RecordingError, choose_probes
from actrec.store import LayerSpec, ProbeSet, StepRecord, StoreWriter
from actrec.viewer import render_run

PROBES, TOKENS, UNITS = 50, 6, 8


def _token_store(folder: Path, steps: int = 3) -> Path:
    """A store of a token layer ``(T, D)`` seen by 50 probes; probe p's units all equal ``p / 50``."""
    folder.mkdir(parents=True)
    path = folder / "activations.h5"
    probes = ProbeSet(
        np.arange(PROBES * TOKENS, dtype=np.float32).reshape(PROBES, TOKENS) % 97,
        np.arange(PROBES) % 5,
        np.arange(PROBES),
        [f"c{k}" for k in range(5)],
    )
    layer = LayerSpec("encoder.block0", (TOKENS, UNITS), "Block", "symmetric")
    writer = StoreWriter.create(
        path, run_id="probes", config={}, probes=probes, layers=[layer], num_classes=5, background=False
    )
    values = np.broadcast_to((np.arange(PROBES, dtype=np.float32) / PROBES)[:, None, None], (PROBES, TOKENS, UNITS))
    with writer:
        for step in range(steps):
            logits = np.zeros((PROBES, 5), np.float32)
            logits[:, 0] = 1.0
            writer.append(
                StepRecord(
                    global_step=step,
                    epoch=0,
                    batch_loss=1.0,
                    batch_acc=0.5,
                    logits=logits,
                    activations={"encoder.block0": values * (step + 1)},
                    wall_time=1_000_000.0 + step,
                )
            )
    return path


def test_the_probe_rule() -> None:
    assert choose_probes(None, 10) == (None, "")
    chosen, note = choose_probes(None, PROBES)
    assert chosen == tuple(range(10))
    assert "--probes" in note
    assert "of 50" in note
    assert choose_probes("3,20-22", PROBES) == ((3, 20, 21, 22), "")
    assert choose_probes("all", PROBES) == (None, "")
    for bad in ("x", "5-2", "50", "-1"):
        with pytest.raises(RecordingError):
            choose_probes(bad, PROBES)


def test_fifty_probes_draw_ten_by_default_and_probes_picks_others(tmp_path: Path) -> None:
    _token_store(tmp_path / "run")
    notes: list[str] = []
    default = render_run(tmp_path / "run", out_dir=tmp_path / "default", tile_size=16, notify=notes.append)
    assert sum("--probes" in note for note in notes) == 1
    chosen = render_run(tmp_path / "run", out_dir=tmp_path / "chosen", tile_size=16, probes="40-49")
    every = render_run(tmp_path / "run", out_dir=tmp_path / "every", tile_size=16, probes="all")
    sizes = {}
    for name, result in (("default", default), ("chosen", chosen), ("every", every)):
        with Image.open(result.out_dir / "encoder.block0.png") as gif:
            sizes[name] = gif.size
        with Image.open(result.out_dir / "encoder.block0.sheet.png") as sheet:
            sizes[f"{name} sheet"] = sheet.size
    # Ten probes: the same frame as ten others; all fifty make a larger frame (tokens stack probes).
    assert sizes["default"] == sizes["chosen"]
    assert sizes["default sheet"] == sizes["chosen sheet"]
    assert sizes["every"][0] * sizes["every"][1] > 2 * sizes["default"][0] * sizes["default"][1]

    # Which probes: probe p is p/50 everywhere, so probes 40-49 draw darker blue than probes 0-9.
    def blue(result) -> float:
        with Image.open(result.out_dir / "encoder.block0.sheet.png") as sheet:
            rgb = np.asarray(sheet.convert("RGB")).astype(int)
        tinted = rgb[(rgb[..., 2] > rgb[..., 0] + 20)]
        return float(255 - tinted[:, 0].mean())

    assert blue(chosen) > blue(default) + 30


@pytest.mark.slow  # two `actrec render` processes
def test_render_cli_says_the_probe_note_once_and_refuses_a_bad_list(tmp_path: Path) -> None:
    _token_store(tmp_path / "run", steps=2)
    command = [sys.executable, "-m", "actrec.cli", "render", str(tmp_path / "run"), "--quiet", "--tile-size", "8"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stderr.splitlines() if "--probes" in line] == [
        "note: drawing probes 0-9 of 50 (more are too small to read); --probes picks others "
        "(e.g. --probes 10-19, or --probes all)."
    ]
    bad = subprocess.run([*command, "--probes", "7,99"], capture_output=True, text=True, timeout=300, check=False)
    assert bad.returncode != 0
    assert "Traceback" not in bad.stderr
    assert "--probes names probe 99, but this run has 50 probes (0 to 49)." in bad.stderr


def test_the_report_shows_the_probes_render_draws(tmp_path: Path) -> None:
    import json
    import re

    from actrec.report import build_report

    _token_store(tmp_path / "run")

    def page_data(result) -> dict:
        text = result.path.read_text(encoding="utf-8")
        match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text, re.S)
        return json.loads(match[1].replace("<\\/", "</"))

    default = build_report(tmp_path / "run", out=tmp_path / "default.html")
    assert sum("--probes" in note for note in default.notes) == 1
    data = page_data(default)
    assert data["labels"] == [p % 5 for p in range(10)]
    assert [len(row) for row in data["predictions"]] == [10, 10, 10]
    chosen = page_data(build_report(tmp_path / "run", out=tmp_path / "chosen.html", probes="40-49"))
    assert chosen["labels"] == [p % 5 for p in range(40, 50)]
    every = page_data(build_report(tmp_path / "run", out=tmp_path / "every.html", probes="all"))
    assert len(every["labels"]) == PROBES


@pytest.mark.parametrize("channels", [None, "all"])
def test_sheets_of_a_28x28_16_channel_layer_and_a_64_unit_vector_are_at_most_1600_wide(
    tmp_path: Path, channels: str | None
) -> None:
    probes, rng = 10, np.random.default_rng(0)
    folder = tmp_path / "run"
    folder.mkdir()
    probe_set = ProbeSet(
        rng.random((probes, 1, 28, 28), np.float32), np.arange(probes), np.arange(probes), list("0123456789")
    )
    layers = [LayerSpec("conv", (16, 28, 28), "Conv2d", "nonnegative"), LayerSpec("fc", (64,), "Linear", "symmetric")]
    writer = StoreWriter.create(
        folder / "activations.h5", run_id="w", config={}, probes=probe_set, layers=layers, num_classes=10,
        background=False,
    )  # fmt: skip
    with writer:
        for step in range(8):
            activations = {
                "conv": np.abs(rng.normal(size=(probes, 16, 28, 28))).astype(np.float32),
                "fc": rng.normal(size=(probes, 64)).astype(np.float32),
            }
            logits = rng.normal(size=(probes, 10)).astype(np.float32)
            writer.append(StepRecord(step, 0, 1.0, 0.5, logits, activations))
    result = render_run(folder, channels=channels)  # the default tile size
    for layer in ("conv", "fc"):
        with Image.open(result.out_dir / f"{layer}.sheet.png") as sheet:
            assert sheet.size[0] <= 1600, (layer, sheet.size)
        with Image.open(result.out_dir / f"{layer}.png") as gif:
            assert gif.size[0] <= 1600, (layer, gif.size)
