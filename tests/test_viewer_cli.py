"""``actrec render`` and ``actrec tensorboard``: usage, and one clear sentence for every user error."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import pytest
from viewer_fixtures import make_store

from actrec.store import FORMAT_VERSION
from actrec.viewer.cli import render_main, tensorboard_main


@pytest.fixture
def rendered_run(tmp_path: Path) -> Path:
    """A run folder with a store of 3 steps and a previous render in ``renders/``."""
    make_store(tmp_path / "run", range(3))
    assert render_main([str(tmp_path / "run"), "--tile-size", "8", "--quiet"]) == 0
    return tmp_path / "run"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def _one_sentence(stderr: str, program: str = "actrec render") -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"{program}: ")
    assert lines[0].endswith(".")
    assert "Traceback" not in stderr
    return lines[0]


def _truncate(store: Path) -> None:
    data = store.read_bytes()
    store.write_bytes(data[: len(data) // 3])


def _make_foreign(store: Path) -> None:
    store.unlink()
    with h5py.File(store, "w") as file:
        file["data"] = [1, 2, 3]


def _make_newer(store: Path) -> None:
    with h5py.File(store, "r+") as file:
        file.attrs["format_version"] = FORMAT_VERSION + 1


def _make_empty(store: Path) -> None:
    store.unlink()
    make_store(store.parent, [])


def _make_not_hdf5(store: Path) -> None:
    store.write_text("hello\n")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_truncate, r"activations\.h5 cannot be read; it may be truncated or damaged"),
        (_make_foreign, r"activations\.h5 is an HDF5 file but not an actrec activation store\.$"),
        (_make_newer, rf"uses store format version {FORMAT_VERSION + 1}, newer than this actrec reads"),
        (_make_empty, r"activations\.h5 has no recorded steps yet, so there is nothing to show\.$"),
        (_make_not_hdf5, r"activations\.h5 is not an HDF5 file, so not an actrec activation store\.$"),
    ],
)
def test_bad_stores_fail_in_one_sentence_and_overwrite_nothing(
    rendered_run: Path, capsys: pytest.CaptureFixture[str], damage: Callable[[Path], None], message: str
) -> None:
    before = _snapshot(rendered_run / "renders")
    damage(rendered_run / "activations.h5")
    capsys.readouterr()
    assert render_main([str(rendered_run)]) == 1
    assert re.search(message, _one_sentence(capsys.readouterr().err))
    assert _snapshot(rendered_run / "renders") == before


def test_missing_run_fails_in_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert render_main([str(tmp_path / "nowhere")]) == 1
    sentence = _one_sentence(capsys.readouterr().err)
    assert "no activation store at" in sentence
    assert not (tmp_path / "nowhere").exists()


def test_unknown_layer_lists_the_available_ones(rendered_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _snapshot(rendered_run / "renders")
    capsys.readouterr()
    assert render_main([str(rendered_run), "--layers", "net.conv1,net.fc"]) == 1
    sentence = _one_sentence(capsys.readouterr().err)
    assert sentence == "actrec render: unknown layer 'net.fc'; this store records: net.conv1, net.conv2."
    assert _snapshot(rendered_run / "renders") == before


def test_unwritable_output_folder_fails_before_anything_is_written(
    rendered_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = rendered_run / "a-file"
    blocker.write_text("not a folder")
    capsys.readouterr()
    assert render_main([str(rendered_run), "--out", str(blocker / "renders")]) == 1
    sentence = _one_sentence(capsys.readouterr().err)
    assert sentence.startswith(f"actrec render: cannot write to the output folder {blocker / 'renders'}: ")
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--steps", "100:"], "no recorded step lies in the chosen range; the store holds steps 0 to 2."),
        (["--steps", "5:2"], "--steps 5:2 is empty: STOP must be greater than START."),
        (["--steps", "x"], "--steps takes START:STOP in training steps (either may be empty), got 'x'."),
        (["--stride", "0"], "stride must be a positive integer, got 0."),
        (["--fps", "500"], "fps must be greater than 0 and at most 50, got 500."),
        (["--tile-size", "2"], "tile_size must be between 4 and 512 pixels, got 2."),
        (["--tile-size", "100000"], "tile_size must be between 4 and 512 pixels, got 100000."),
        (["--fps", "nan"], "fps must be greater than 0 and at most 50, got nan."),
        (["--jobs", "0"], "jobs must be a positive integer, got 0."),
        (["--channels", "x,1"], "--channels takes indices ('0,3,7'), 'top:K' or 'all', got 'x,1'."),
        (["--channels", "top:0"], "--channels top:K needs K of at least 1, got 'top:0'."),
        (["--channels", "7"], "layer 'net.conv1' has no channel 7; it records 3 channels."),
    ],
)
def test_bad_options_fail_in_one_sentence(
    rendered_run: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    before = _snapshot(rendered_run / "renders")
    capsys.readouterr()
    assert render_main([str(rendered_run), *arguments]) == 1
    assert _one_sentence(capsys.readouterr().err) == f"actrec render: {message}"
    assert _snapshot(rendered_run / "renders") == before


def test_render_prints_what_it_wrote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_store(tmp_path / "run", range(4))
    assert (
        render_main(["--layers", "net.conv2", str(tmp_path / "run"), "--tile-size", "8", "--out", str(tmp_path / "o")])
        == 0
    )
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"rendered 1 layer(s) x 4 step(s) (0 to 3) into {tmp_path / 'o'}:"
    assert [line.strip() for line in out[1:4]] == ["net.conv2.png", "net.conv2.sheet.png", "curves.png"]
    assert out[4] == (
        f"open the animations in a web browser, e.g. {(tmp_path / 'o' / 'net.conv2.png').as_uri()} "
        "(animated PNG; for slides and chat: --format gif)"
    )
    assert len(out) == 5


def test_render_format_gif_writes_the_gif_and_says_how_to_open_it(tmp_path: Path, capsys) -> None:
    make_store(tmp_path / "run", range(3))
    out = tmp_path / "o"
    assert render_main([str(tmp_path / "run"), "--layers", "net.conv2", "--tile-size", "8", "--out", str(out),
                        "--format", "gif"]) == 0  # fmt: skip
    printed = capsys.readouterr().out.splitlines()
    assert [line.strip() for line in printed[1:4]] == ["net.conv2.gif", "net.conv2.sheet.png", "curves.png"]
    assert printed[4] == f"open the animations in any image viewer or browser, e.g. {(out / 'net.conv2.gif').resolve()}"
    assert sorted(path.name for path in out.iterdir()) == ["curves.png", "net.conv2.gif", "net.conv2.sheet.png"]


def test_render_jobs_default_to_one_process_per_two_cpus_for_apng(monkeypatch) -> None:
    from actrec.viewer import _pipeline

    monkeypatch.setattr(_pipeline, "available_cpus", lambda: 8)
    assert _pipeline.choose_jobs(None, 6, 295) == 6  # GIF, MP4, TensorBoard: one per CPU, one per layer at most
    assert _pipeline.choose_jobs(None, 6, 295, cpus_per_job=2) == 4
    assert _pipeline.choose_jobs(None, 6, 10, cpus_per_job=2) == 1  # small renders: no workers
    monkeypatch.setattr(_pipeline, "available_cpus", lambda: 2)
    assert _pipeline.choose_jobs(None, 6, 295, cpus_per_job=2) == 1  # draw here, encode on the second CPU
    assert _pipeline.choose_jobs(3, 6, 295, cpus_per_job=2) == 3  # --jobs decides


def test_actrec_command_exits_non_zero_without_traceback(tmp_path: Path) -> None:
    make_store(tmp_path / "run", range(2))
    result = subprocess.run(
        [sys.executable, "-m", "actrec.cli", "render", str(tmp_path / "run"), "--layers", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert _one_sentence(result.stderr) == (
        "actrec render: unknown layer 'nope'; this store records: net.conv1, net.conv2."
    )
    assert not (tmp_path / "run" / "renders").exists()


def test_tensorboard_print_exports_and_prints_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_store(tmp_path / "run", range(0, 10, 2))
    assert tensorboard_main([str(tmp_path / "run"), "--export", "--print", "--tile-size", "8", "--port", "6123"]) == 0
    command = capsys.readouterr().out.strip()
    # Not a run folder in actrec's layout: named by --logdir_spec, never ".".
    assert command.endswith(f"--logdir_spec run:{tmp_path / 'run'} --samples_per_plugin images=5 --port 6123")
    program = command.split()
    assert "tensorboard" in program[0] or program[1:3] == ["-m", "tensorboard.main"]  # no script: python -m
    assert (tmp_path / "run" / "activations").is_dir()
    # A run in actrec's layout is shown from its experiment folder, as version_3.
    make_store(tmp_path / "quickstart" / "version_3", range(2))
    assert tensorboard_main([str(tmp_path / "quickstart" / "version_3"), "--export", "--print", "--quiet"]) == 0
    command = capsys.readouterr().out.strip()
    assert f"--logdir {tmp_path / 'quickstart'} --window_title quickstart/version_3 --samples_per_plugin" in command


def test_tensorboard_starts_the_actrec_tab_on_that_run_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_store(tmp_path / "quickstart" / "version_3", range(2))
    make_store(tmp_path / "quickstart" / "version_4", range(2))
    run = tmp_path / "quickstart" / "version_3"
    assert tensorboard_main([str(run), "--print", "--port", "6123"]) == 0
    command = capsys.readouterr().out.strip()
    assert command.endswith(f"--logdir_spec quickstart/version_3:{run} --window_title quickstart/version_3 --port 6123")
    assert not (run / "activations").exists()  # nothing exported, nothing written
    assert tensorboard_main([str(run), "--print", "--all"]) == 0
    command = capsys.readouterr().out.strip()
    assert command.endswith(f"--logdir {tmp_path / 'quickstart'} --window_title quickstart/version_3")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "activations.h5").write_text("not hdf5")
    assert tensorboard_main([str(tmp_path / "broken"), "--print"]) == 1
    assert "is not an HDF5 file" in capsys.readouterr().err


def test_tensorboard_errors_are_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_store(tmp_path / "run", range(2))
    assert tensorboard_main([str(tmp_path / "run"), "--export", "--print", "--layers", "net.fc"]) == 1
    assert _one_sentence(capsys.readouterr().err, "actrec tensorboard") == (
        "actrec tensorboard: unknown layer 'net.fc'; this store records: net.conv1, net.conv2."
    )
    assert not (tmp_path / "run" / "activations").exists()
