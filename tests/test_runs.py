"""Tests of :mod:`actrec.runs`: the run folder's layout, version resolution, status and summaries."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from actrec.runs import (
    CHECKPOINT_DIRNAME,
    CONFIG_FILENAME,
    STORE_FILENAME,
    SUMMARY_FILENAME,
    Run,
    RunError,
    config_digest,
    find_runs,
    resolve_run,
    running_summary,
    write_summary,
)


def make_run(
    folder: Path, *, state: str | None = "finished", model: str = "six_conv_tanh", store: bool = True, **fields
) -> Path:
    """A run folder as ``actrec train`` leaves it, without training: a summary, a config, maybe a store."""
    folder.mkdir(parents=True)
    (folder / CONFIG_FILENAME).write_text(f"model:\n  model: {model}\n")
    if store:
        (folder / STORE_FILENAME).write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    if state is not None:
        summary = {"state": state, "model": model, "dataset": "mnist-sample", "pid": 1, "hostname": "elsewhere"}
        write_summary(folder, {**summary, **fields})
    return folder


def test_a_run_folder_names_its_files(tmp_path: Path) -> None:
    run = Run(make_run(tmp_path / "quickstart" / "version_3"))
    assert (run.experiment, run.version, run.name) == ("quickstart", 3, "quickstart/version_3")
    assert run.store_path == run.path / STORE_FILENAME
    assert run.config_path == run.path / CONFIG_FILENAME
    assert run.summary_path == run.path / SUMMARY_FILENAME
    assert run.checkpoint_dir == run.path / CHECKPOINT_DIRNAME
    assert run.config() == {"model": {"model": "six_conv_tanh"}}
    assert run.summary()["model"] == "six_conv_tanh"
    assert run.status() == "finished"


def test_checkpoints_are_ordered_by_step_not_by_name(tmp_path: Path) -> None:
    run = Run(make_run(tmp_path / "version_0"))
    run.checkpoint_dir.mkdir()
    for name in ("epoch=9-step=100.ckpt", "epoch=1-step=20.ckpt", "epoch=0-step=5.ckpt", "notes.txt"):
        (run.checkpoint_dir / name).write_bytes(b"")
    assert [path.name for path in run.checkpoints()] == [
        "epoch=0-step=5.ckpt",
        "epoch=1-step=20.ckpt",
        "epoch=9-step=100.ckpt",
    ]
    assert run.last_checkpoint().name == "epoch=9-step=100.ckpt"
    assert Run(tmp_path / "nothing").last_checkpoint() is None


def test_an_experiment_folder_resolves_to_its_newest_version_and_says_which(tmp_path: Path) -> None:
    for version in (0, 2, 10):
        make_run(tmp_path / "quickstart" / f"version_{version}")
    make_run(tmp_path / "quickstart" / "version_11", store=False, model="lenet")  # trained with --record false
    (tmp_path / "quickstart" / "version_x").mkdir()  # not a version folder

    newest = resolve_run(tmp_path / "quickstart")
    assert newest.path == tmp_path / "quickstart" / "version_11"
    assert "taking version_11, the newest of 4 version(s)" in newest.note

    with_store = resolve_run(tmp_path / "quickstart", need_store=True)
    assert with_store.path == tmp_path / "quickstart" / "version_10"
    assert with_store.note == (
        f"{tmp_path / 'quickstart'}: taking version_10, the newest of 4 version(s) with a store "
        "(version_11 has none), six_conv_tanh on mnist-sample; other versions trained lenet on mnist-sample; "
        f"pass {tmp_path / 'quickstart' / 'version_10'} or another version_N to choose."
    )
    named = resolve_run(tmp_path / "quickstart" / "version_2")
    assert named.path == tmp_path / "quickstart" / "version_2"
    assert named.note is None


def test_a_store_file_resolves_to_its_folder_and_keeps_its_name(tmp_path: Path) -> None:
    folder = make_run(tmp_path / "version_0", store=False)
    custom = folder / "elsewhere.h5"
    custom.write_bytes(b"")
    run = resolve_run(custom)
    assert run.path == folder
    assert run.store_path == custom
    assert resolve_run(folder / SUMMARY_FILENAME) == Run(folder)  # a run's own file names the run


def test_a_resumed_run_points_at_its_checkpoints_store(tmp_path: Path) -> None:
    original = make_run(tmp_path / "quickstart" / "version_0")
    resumed = make_run(tmp_path / "quickstart" / "version_1", store=False, store_path=str(original / STORE_FILENAME))
    assert Run(resumed).store_path == original / STORE_FILENAME
    assert resolve_run(resumed, need_store=True).store_path == original / STORE_FILENAME


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("missing", "no activation store at {path}; pass a run folder, an experiment folder or an activations.h5."),
        ("empty", "{path} is not a run folder, an experiment folder or an activation store."),
        ("root", "{path} holds experiments (a, b), not a run; pass one of them or a run folder."),
        ("no store", "{path} has no activation store (was it trained with record set to false?)."),
        ("no versioned store", "no version under {path} has an activation store (trained with record set to false?)."),
    ],
)
def test_what_is_not_a_run_is_one_sentence(tmp_path: Path, layout: str, message: str) -> None:
    path = tmp_path / "target"
    if layout == "empty":
        path.mkdir()
    elif layout == "root":
        make_run(path / "a" / "version_0")
        make_run(path / "b" / "version_0")
    elif layout == "no store":
        make_run(path, store=False)
    elif layout == "no versioned store":
        make_run(path / "version_0", store=False)
    with pytest.raises(RunError) as caught:
        resolve_run(path, need_store=True)
    assert str(caught.value) == message.format(path=path)


def test_find_runs_takes_a_root_an_experiment_or_a_run(tmp_path: Path) -> None:
    for experiment, version in (("b", 1), ("a", 0), ("b", 0), ("a", 12), ("a", 2)):
        make_run(tmp_path / experiment / f"version_{version}")
    (tmp_path / "notes").mkdir()
    (tmp_path / "readme.txt").write_text("")
    assert [run.name for run in find_runs(tmp_path)] == [
        "a/version_0",
        "a/version_2",
        "a/version_12",
        "b/version_0",
        "b/version_1",
    ]
    assert [run.name for run in find_runs(tmp_path / "b")] == ["b/version_0", "b/version_1"]
    assert [run.name for run in find_runs(tmp_path / "a" / "version_2")] == ["a/version_2"]
    with pytest.raises(RunError, match="^no runs folder at "):
        find_runs(tmp_path / "nope")
    with pytest.raises(RunError, match=r"readme.txt is a file, not a runs folder\.$"):
        find_runs(tmp_path / "readme.txt")


def test_status_tells_running_from_crashed_by_the_writers_process(tmp_path: Path) -> None:
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        here = socket.gethostname()
        running = make_run(tmp_path / "version_0", state="running", pid=alive.pid, hostname=here)
        assert Run(running).status() == "running"
    finally:
        alive.kill()
        alive.wait()
    assert Run(running).status() == "crashed"  # the same summary, its writer gone

    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while Path(f"/proc/{zombie.pid}/stat").read_text().split(")")[-1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.05)  # exited, not yet reaped: SIGKILLed training looks like this for a moment
    unreaped = make_run(tmp_path / "version_9", state="running", pid=zombie.pid, hostname=here)
    assert Run(unreaped).status() == "crashed"
    zombie.wait()

    mine = make_run(tmp_path / "version_1", state=None)
    write_summary(mine, running_summary(model="mlp"))
    assert Run(mine).status() == "running"
    reused = {**json.loads((mine / SUMMARY_FILENAME).read_text()), "process_start_ticks": -5}
    write_summary(mine, reused)  # our pid, but a different process start: the pid was reused
    assert Run(mine).status() == "crashed"

    elsewhere = make_run(tmp_path / "version_2", state="running", pid=os.getpid(), hostname="another-host")
    assert Run(elsewhere).status() == "running"  # cannot be checked from here; trusted

    assert Run(make_run(tmp_path / "version_3", state=None)).status() == "crashed"  # no summary ever came
    for state in ("failed", "interrupted"):
        assert Run(make_run(tmp_path / f"{state}", state=state)).status() == state
    damaged = make_run(tmp_path / "version_4", state=None)
    (damaged / SUMMARY_FILENAME).write_text('{"state": "fini')
    assert Run(damaged).status() == "corrupt"
    with pytest.raises(RunError, match=r"summary.json is not valid JSON; the run's summary is damaged\.$"):
        Run(damaged).summary()


def test_write_summary_replaces_the_file_whole(tmp_path: Path) -> None:
    write_summary(tmp_path, {"state": "running"})
    write_summary(tmp_path, {"state": "finished", "wall_time_s": 1.5})
    assert json.loads((tmp_path / SUMMARY_FILENAME).read_text()) == {"state": "finished", "wall_time_s": 1.5}
    assert sorted(path.name for path in tmp_path.iterdir()) == [SUMMARY_FILENAME]


def test_config_digest_ignores_where_the_run_goes() -> None:
    config = {"model": {"lr": 0.002}, "seed_everything": 0, "experiment": "a", "runs_dir": "runs"}
    moved = {**config, "experiment": "b", "runs_dir": "/elsewhere", "ckpt_path": None}
    assert config_digest(config) == config_digest(moved)
    assert config_digest(config) != config_digest({**config, "seed_everything": 1})
    assert len(config_digest(config)) == 16


def test_find_runs_takes_a_tracking_loggers_save_dir(tmp_path: Path) -> None:
    # W&B: <save_dir>/<project>/<run id>; MLflow: mlruns/<experiment id>/<run id>. W&B's own folder holds a
    # config.yaml two levels down, which is not a run.
    make_run(tmp_path / "proj" / "2b1x9k")
    make_run(tmp_path / "proj" / "0a7c3d", state=None)
    (tmp_path / "wandb" / "offline-run-1" / "files").mkdir(parents=True)
    (tmp_path / "wandb" / "offline-run-1" / "files" / CONFIG_FILENAME).write_text("x: 1\n")
    (tmp_path / "proj" / "notes").mkdir()
    assert [run.path.relative_to(tmp_path).as_posix() for run in find_runs(tmp_path)] == [
        "proj/0a7c3d",
        "proj/2b1x9k",
    ]
