"""Killed renders: workers die with their parent, SIGTERM is Ctrl-C, leftovers go at the next run;
damaged and diverged stores: the rest still renders, each problem said in one sentence. Real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from viewer_fixtures import animation_frames, animation_length, make_store, record

from actrec.recording import colors
from actrec.viewer.cli import render_main
from actrec.viewer.render import render_run

ACTREC = [sys.executable, "-c", "import sys; from actrec.cli import main; sys.exit(main())"]


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:  # exited meanwhile
        return ""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _start_render(store_dir: Path, out: Path) -> tuple[subprocess.Popen, list[int]]:
    """Start ``actrec render --jobs 2`` on a slow render; return it once both workers are drawing."""
    command = [*ACTREC, "render", str(store_dir), "--jobs", "2", "--tile-size", "200", "--out", str(out), "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        partials = list(out.glob(".*.partial-*")) if out.exists() else []
        helpers = {pid: _cmdline(pid) for pid in _children(process.pid)}
        workers = [pid for pid, cmdline in helpers.items() if "spawn_main" in cmdline]
        if len(partials) >= 2 and len(workers) >= 2:
            # The workers and multiprocessing's resource tracker: none may outlive the render.
            return process, [pid for pid, cmdline in helpers.items() if "multiprocessing" in cmdline]
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    process.kill()
    pytest.fail("the render never had two workers drawing")


@pytest.fixture(scope="module")
def slow_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("slow") / "run"
    make_store(folder, range(150))
    return folder


def _wait_gone(pids: list[int], seconds: float = 10) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.05)
    return [pid for pid in pids if _alive(pid)]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
@pytest.mark.slow  # render processes, killed
def test_killed_render_leaves_no_workers_behind(slow_store: Path, tmp_path: Path, sig: signal.Signals) -> None:
    out = tmp_path / "renders"
    process, workers = _start_render(slow_store, out)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=30)
    assert _wait_gone(workers) == [], f"workers {workers} outlived their parent killed by {sig.name}"
    if sig == signal.SIGTERM:  # handled like Ctrl-C: one sentence, exit 143, nothing half-written left
        assert process.returncode == 143
        assert stderr.strip().splitlines()[-1] == ("actrec render: terminated; files not yet finished were discarded.")
        assert list(out.glob(".*")) == []
    else:  # whatever a SIGKILL left is removed by the next render into the same folder
        assert process.returncode == -signal.SIGKILL
        time.sleep(0.2)
        assert render_main([str(slow_store), "--out", str(out), "--steps", ":3", "--quiet"]) == 0
        assert list(out.glob(".*")) == []


def test_leftovers_of_a_dead_process_are_removed_but_a_live_ones_are_kept(tmp_path: Path) -> None:
    make_store(tmp_path / "run", range(3))
    out = tmp_path / "run" / "renders"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    (out / f".net.conv1.partial-{dead_pid}.png").write_bytes(b"x" * 100)
    live = out / f".net.conv1.partial-{os.getppid()}.png"  # pytest's parent: alive, maybe rendering
    live.write_bytes(b"y")
    render_run(tmp_path / "run")
    assert not (out / f".net.conv1.partial-{dead_pid}.png").exists()
    assert live.exists()


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # 1e30 is inf in float16
def test_a_diverged_run_renders_with_non_finite_values_in_their_own_colour(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def diverging(step: int):
        row = record(step)
        if step >= 3:  # the symmetric layer blows up: inf, then NaN
            row.activations["net.conv2"][0, 0, 0, 0] = np.inf if step == 3 else np.nan
            row.activations["net.conv2"][1] *= 1e30
        return row

    make_store(tmp_path / "run", range(5), record_fn=diverging)
    assert render_main([str(tmp_path / "run"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "note: net.conv2: 2 of 5 recorded steps hold NaN or infinite values, drawn amber" in err
    assert "scale must be" not in err

    last = animation_frames(tmp_path / "run" / "renders" / "net.conv2.png")[4]
    amber = (last == colors.NONFINITE_RGB).all(axis=2)
    assert amber.sum() > 16  # the NaN element, upscaled, plus the legend's swatch
    # The scale comes from finite values: +-2.5 is still full blue/red (not washed out by 1e30).
    assert (last == colors.POSITIVE_RGB).all(axis=2).sum() > 100


def test_a_layer_of_unsupported_rank_is_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A rank-5 layer as a version 1 store (no kind attribute) could hold it; a sample_shape attribute that
    # disagrees with the data is refused earlier, as damage (test_faults.py).
    path = make_store(tmp_path / "run", range(2))
    with h5py.File(path, "r+") as store:
        layer = store["layers/net.conv2"]
        data = layer["activations"][()]
        del layer["activations"]
        layer.create_dataset(
            "activations", data=data.reshape(*data.shape, 1, 1), maxshape=(None, *data.shape[1:], 1, 1)
        )
        layer.attrs["sample_shape"] = np.asarray([2, 4, 4, 1, 1])
        del layer.attrs["kind"]
    assert render_main([str(tmp_path / "run"), "--layers", "net.conv2"]) == 1
    # The data and its sample_shape agree, so the store opens; the read side's kind rule refuses the rank.
    assert capsys.readouterr().err.strip() == (
        "actrec render: cannot draw layer 'net.conv2' of per-probe shape (2, 4, 4, 1, 1): actrec draws (C, H, W) "
        "maps, (T, D) tokens and (D,) vectors."
    )


def test_layers_whose_names_map_to_one_file_keep_both_files(tmp_path: Path) -> None:
    from viewer_fixtures import logits_for, probe_set

    from actrec.store import LayerSpec, StepRecord, StoreWriter

    path = tmp_path / "run" / "activations.h5"
    path.parent.mkdir()
    layers = [LayerSpec("net conv", (1, 2, 2), "A", "tanh"), LayerSpec("net_conv", (1, 2, 2), "B", "tanh")]
    with StoreWriter.create(
        path, run_id="x", config={}, probes=probe_set(), layers=layers, num_classes=3, background=False
    ) as writer:
        for step in range(2):
            values = {
                "net conv": np.full((3, 1, 2, 2), 0.5, np.float32),
                "net_conv": np.full((3, 1, 2, 2), -0.5, np.float32),
            }
            writer.append(StepRecord(step, 0, 1.0, 0.5, logits_for(np.arange(3)), values, wall_time=float(step)))
    result = render_run(path)
    gifs = sorted(p.name for p in result.files if p.name.endswith(".png") and ".sheet." not in p.name)
    gifs.remove("curves.png")
    assert len(gifs) == 2
    assert len(set(gifs)) == 2


def test_a_damaged_step_is_left_out_in_one_sentence_and_the_rest_renders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import viewer_fixtures as fx

    from actrec.store import StoreWriter

    path = tmp_path / "run" / "activations.h5"
    path.parent.mkdir()
    with StoreWriter.create(
        path,
        run_id="d",
        config={},
        probes=fx.probe_set(),
        layers=fx.LAYERS,
        num_classes=3,
        background=False,
        compression="lzf",
        rows_per_chunk=1,  # one step a chunk: the damage below costs step 2 alone
    ) as writer:
        for step in range(6):
            writer.append(record(step))
    with h5py.File(path, "r") as store:
        chunk = store["layers/net.conv1/activations"].id.get_chunk_info(2)
    with open(path, "r+b") as file:  # scribble over step 2's compressed chunk: lzf cannot decode it
        file.seek(chunk.byte_offset + 2)
        file.write(b"\xff" * 64)
    assert render_main([str(tmp_path / "run"), "--quiet"]) == 0
    assert capsys.readouterr().err.strip().splitlines() == [
        "note: step 2 of layer net.conv1 is damaged (it failed its integrity check) and was left out."
    ]
    assert animation_length(tmp_path / "run" / "renders" / "net.conv1.png") == 5  # the header's count corrected
    assert animation_length(tmp_path / "run" / "renders" / "net.conv2.png") == 6


@pytest.mark.parametrize("missing", ["layers/net.conv1/activations", "steps/epoch", "probes"])
def test_a_store_missing_a_dataset_is_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], missing: str
) -> None:
    path = make_store(tmp_path / "run", range(3))
    with h5py.File(path, "r+") as store:
        del store[missing]
    assert render_main([str(tmp_path / "run"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("actrec render: ")
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "renders").exists() or not any((tmp_path / "run" / "renders").iterdir())


def test_a_store_whose_config_is_not_json_still_renders(tmp_path: Path) -> None:
    path = make_store(tmp_path / "run", range(3))
    with h5py.File(path, "r+") as store:
        store.attrs["config"] = "{not json"
    assert render_main([str(tmp_path / "run"), "--quiet"]) == 0


def test_an_export_removes_what_a_killed_export_left_where_tensorboard_looks(tmp_path: Path) -> None:
    from actrec.viewer.tb_export import export_tensorboard

    make_store(tmp_path / "run", range(3))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = tmp_path / "run" / f".activations.partial-{int(dead.stdout)}"
    leftover.mkdir()
    (leftover / "events.out.tfevents.1.host.1.1.net.conv1").write_bytes(b"half an export")
    result = export_tensorboard(tmp_path / "run")
    assert sorted(path.name for path in (tmp_path / "run").iterdir()) == ["activations", "activations.h5"]
    # Only complete event files, under the names TensorBoard loads; nothing staged is left.
    names = sorted(path.name for path in result.export_dir.iterdir())
    assert names[0] == ".actrec-tensorboard-export"
    assert all(name.startswith("events.out.tfevents.") for name in names[1:])
    assert len(names) == 3
