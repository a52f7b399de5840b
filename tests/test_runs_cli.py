"""The commands that take a run: which version an experiment folder gives, and ``actrec runs``."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from viewer_fixtures import make_store

from actrec.runs import write_summary
from actrec.runs.table import runs_main
from actrec.store import LayerSpec, ProbeSet, StepRecord, StoreWriter
from actrec.viewer.cli import render_main


def test_render_of_an_experiment_folder_names_the_version_it_took(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    experiment = tmp_path / "quickstart"
    make_store(experiment / "version_0", steps=range(3), run_id="six-conv")
    write_summary(experiment / "version_0", {"state": "finished", "model": "six_conv_tanh", "dataset": "mnist"})
    make_store(experiment / "version_1", steps=range(2), run_id="lenet")
    write_summary(experiment / "version_1", {"state": "finished", "model": "lenet", "dataset": "mnist"})
    (experiment / "version_2").mkdir()  # refused or --record false: no store

    assert render_main([str(experiment), "--quiet", "--jobs", "1"]) == 0
    assert capsys.readouterr().err == (
        f"{experiment}: taking version_1, the newest of 3 version(s) with a store (version_2 has none), "
        f"lenet on mnist; other versions trained six_conv_tanh on mnist; "
        f"pass {experiment / 'version_1'} or another version_N to choose.\n"
    )
    assert (experiment / "version_1" / "renders" / "curves.png").is_file()
    assert not (experiment / "version_0" / "renders").exists()

    assert render_main([str(experiment / "version_0"), "--quiet", "--jobs", "1"]) == 0
    assert capsys.readouterr().err == ""  # a run named exactly needs no word


def _runs(tmp_path: Path) -> Path:
    """Four runs of two experiments: finished ones, a failed one, one whose writer is gone, a damaged summary."""
    root = tmp_path / "runs"
    finished = {"state": "finished", "seed": 0, "global_step": 1890, "recorded_steps": 379, "store_bytes": 61_500_000}
    write_summary(
        _folder(root / "quickstart" / "version_0"),
        {
            **finished,
            "model": "six_conv_tanh",
            "dataset": "mnist-sample",
            "wall_time_s": 57.2,
            "metrics": {"val/acc": 0.968, "test/acc": 0.97},
        },
    )
    write_summary(
        _folder(root / "quickstart" / "version_1"),
        {
            **finished,
            "model": "lenet",
            "dataset": "mnist-sample",
            "seed": 1,
            "wall_time_s": 3725.0,
            "metrics": {"val/acc": 0.981, "test/acc": 0.984},
        },
    )
    write_summary(
        _folder(root / "fashion" / "version_0"),
        {"state": "failed", "model": "mlp", "dataset": "fashion-mnist", "error": "disk full", "metrics": {}},
    )
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_summary(
        _folder(root / "fashion" / "version_1"),
        {"state": "running", "model": "lenet", "dataset": "fashion-mnist", "pid": int(gone.stdout)}
        | {"hostname": socket.gethostname(), "started": 0.0},
    )
    (_folder(root / "fashion" / "version_2") / "summary.json").write_text("{not json")
    return root


def _folder(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def test_actrec_runs_tables_every_run_and_never_crashes_on_a_broken_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _runs(tmp_path)
    assert runs_main([str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [re.split(r"\s{2,}", line) for line in lines] == [
        ["run", "model", "dataset", "seed", "steps", "rows", "val acc", "test acc", "store", "wall", "status"],
        ["fashion/version_0", "mlp", "fashion-mnist", "-", "-", "-", "-", "-", "-", "-", "failed"],
        ["fashion/version_1", "lenet", "fashion-mnist", "-", "-", "-", "-", "-", "-", "-", "crashed"],
        ["fashion/version_2", "-", "-", "-", "-", "-", "-", "-", "-", "-", "corrupt"],
        ["quickstart/version_0", "six_conv_tanh", "mnist-sample", "0", "1890", "379", "96.8%", "97.0%", "61.5 MB"]
        + ["57 s", "finished"],
        ["quickstart/version_1", "lenet", "mnist-sample", "1", "1890", "379", "98.1%", "98.4%", "61.5 MB"]
        + ["1 h 02 m", "finished"],
    ]
    assert len({line.index(line.split()[-1]) for line in lines}) == 1  # the status column is aligned


def test_actrec_runs_sorts_filters_and_prints_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _runs(tmp_path)

    def listed(*flags: str) -> list[str]:
        assert runs_main([str(root), "--json", *flags]) == 0
        return [row["run"] for row in json.loads(capsys.readouterr().out)]

    assert listed("--sort", "test", "--reverse") == [
        "quickstart/version_1",
        "quickstart/version_0",
        "fashion/version_0",  # runs without a test accuracy go last either way
        "fashion/version_1",
        "fashion/version_2",
    ]
    assert listed("--sort", "test")[:2] == ["quickstart/version_0", "quickstart/version_1"]
    assert listed("--model", "lenet") == ["fashion/version_1", "quickstart/version_1"]
    assert listed("--status", "crashed,corrupt") == ["fashion/version_1", "fashion/version_2"]
    assert listed("--experiment", "quick*", "--dataset", "mnist-*") == ["quickstart/version_0", "quickstart/version_1"]
    assert runs_main([str(root / "fashion" / "version_0"), "--json"]) == 0  # one run folder
    assert [row["run"] for row in json.loads(capsys.readouterr().out)] == ["fashion/version_0"]

    assert runs_main([str(root), "--json", "--status", "failed"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row == {
        "run": "fashion/version_0",
        "path": str(root / "fashion" / "version_0"),
        "model": "mlp",
        "dataset": "fashion-mnist",
        "seed": None,
        "recorded_steps": None,
        "global_step": None,
        "max_steps": None,
        "epoch": None,
        "max_epochs": None,
        "val_acc": None,
        "test_acc": None,
        "store_bytes": None,
        "wall_time_s": None,
        "status": "failed",
        "error": "disk full",
    }


def test_actrec_runs_of_a_missing_or_empty_folder_is_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert runs_main([str(tmp_path / "nowhere")]) == 1
    assert capsys.readouterr().err == f"actrec runs: no runs folder at {tmp_path / 'nowhere'}.\n"
    assert runs_main([str(tmp_path)]) == 0
    assert capsys.readouterr().err == f"actrec runs: no runs under {tmp_path}.\n"


def _running_run(folder: Path, trainer: dict) -> Path:
    """A run still training: its summary names this (live) process, its store holds rows 0, 5 and 10."""
    folder.mkdir(parents=True)
    probes = ProbeSet(np.zeros((2, 1, 4, 4), np.float32), np.arange(2), np.arange(2), ["a", "b"])
    layers = [LayerSpec("fc", (3,), "Linear", "symmetric")]
    with StoreWriter.create(
        folder / "activations.h5",
        run_id="live",
        config={"trainer": trainer},
        probes=probes,
        layers=layers,
        num_classes=2,
        background=False,
    ) as writer:
        for step in (0, 5, 10):
            values = {"fc": np.zeros((2, 3), np.float32)}
            writer.append(StepRecord(step, 0, 1.0, 0.5, np.zeros((2, 2), np.float32), values, wall_time=0.0))
    summary = {"state": "running", "model": "mlp", "dataset": "mnist-sample", "pid": os.getpid()}
    write_summary(folder, summary | {"hostname": socket.gethostname(), "started": time.time() - 5})
    return folder


def test_a_running_run_shows_training_steps_rows_and_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _running_run(tmp_path / "runs" / "live" / "version_0", {"max_steps": 1890, "max_epochs": None})
    _running_run(tmp_path / "runs" / "live" / "version_1", {"max_steps": -1, "max_epochs": 30})
    assert runs_main([str(tmp_path / "runs")]) == 0
    lines = [re.split(r"\s{2,}", line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0][4:6] == ["steps", "rows"]
    assert lines[1][4:6] == ["10", "3"]  # training step 10, three recorded rows
    assert lines[1][-1] == "running (step 10 of 1,890)"
    assert lines[2][-1] == "running (epoch 1 of 30, step 10)"
    assert runs_main([str(tmp_path / "runs"), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)[0]
    assert (first["global_step"], first["recorded_steps"], first["max_steps"], first["status"]) == (
        10,
        3,
        1890,
        "running",
    )
