"""Resume equals the uninterrupted run: real `actrec train` processes, one killed with SIGKILL and resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from actrec.store import StoreError, StoreReader

# 4 epochs of 4 batches of 32 digits, recorded every 3rd step: the epoch-end checkpoints (steps 4, 8, 12)
# fall between recorded steps, where a resume is most likely to add or lose a row.
TINY_RUN = [
    "--trainer.max_epochs=4",
    "--trainer.limit_train_batches=4",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--data.batch_size=32",
    "--recorder.every_n_steps=3",
    # Each row reaches the file at once (not in blocks of 16 or after a second): the test polls the store for a
    # row of epoch 2 and kills the run then, which must come before epoch 3's checkpoint.
    "--recorder.flush_every=1",
]
EXPECTED_STEPS = [0, 3, 6, 9, 12, 15, 16]  # every 3rd step, and the last one


def _train(runs_dir: Path | str, *extra: str, cwd: Path | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "actrec.cli", "train", "--runs_dir", str(runs_dir), *TINY_RUN, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)


def _finish(process: subprocess.Popen) -> None:
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-2000:]


def _rows(store: Path) -> dict[str, np.ndarray]:
    """Every recorded array of a store, by name; wall time left out (it is the only thing allowed to differ)."""
    with StoreReader(store) as reader:
        steps = reader.steps()
        rows = {f"steps/{name}": values for name, values in steps.items() if name != "wall_time"}
        rows["steps/logits"] = reader.logits()
        for name in reader.layer_names:
            rows[f"{name}/activations"] = reader.activations(name)
            rows[f"{name}/abs_max"] = reader.abs_max(name)
            for param, values in reader.params(name).items():
                rows[f"{name}/params/{param}"] = values
        for scalar in ("val/loss", "val/acc"):
            rows[scalar] = np.stack(reader.scalars(scalar), axis=-1)
    return rows


def _wait_for_row_in_epoch(store: Path, process: subprocess.Popen, epoch: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"training ended before it could be killed: {process.stderr.read()[-3000:]}")
        if store.exists():
            try:
                with StoreReader(store) as reader:
                    if reader.num_steps and reader.steps()["epoch"].max() >= epoch:
                        return
            except StoreError:
                pass  # being created
        time.sleep(0.05)
    raise AssertionError(f"no row of epoch {epoch} within {timeout} s")


def _newest_whole_checkpoint(folder: Path) -> Path:
    """The checkpoint of the highest step that loads (Lightning does not write them atomically: a kill can cut one)."""
    for path in sorted(folder.glob("*.ckpt"), key=lambda path: int(path.stem.rsplit("=", 1)[1]), reverse=True):
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, EOFError, RuntimeError):
            continue
        return path
    raise AssertionError(f"no whole checkpoint in {folder}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(uninterrupted, resumed): the same tiny run, once straight through, once SIGKILLed in epoch 2 and resumed."""
    tmp_path = tmp_path_factory.mktemp("resume")
    # A relative --runs_dir, resumed below from another working directory: the checkpoint must locate its
    # store wherever the resume starts (issue 11).
    interrupted = _train("b", cwd=tmp_path)
    run_b = tmp_path / "b" / "quickstart" / "version_0"
    _wait_for_row_in_epoch(run_b / "activations.h5", interrupted, epoch=2)
    interrupted.send_signal(signal.SIGKILL)
    interrupted.wait(timeout=30)
    uninterrupted = _train(tmp_path / "a")  # after the kill: two trainings at once would slow the poll

    # Lightning keeps the last epoch-end checkpoint: epoch 1's, or epoch 2's if the kill came late (between
    # saving epoch 2's and removing epoch 1's, both are there: the newer whole one is the one to resume from).
    checkpoint = _newest_whole_checkpoint(run_b / "checkpoints")
    assert checkpoint.name in ("epoch=1-step=8.ckpt", "epoch=2-step=12.ckpt")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _finish(_train(tmp_path / "b", "--ckpt_path", str(checkpoint), cwd=elsewhere))
    _finish(uninterrupted)
    return _rows(tmp_path / "a" / "quickstart" / "version_0"), _rows(run_b)


@pytest.mark.slow
def test_resumed_run_equals_the_uninterrupted_run_bitwise(
    runs: tuple[dict[str, np.ndarray], dict[str, np.ndarray]],
) -> None:
    expected, resumed = runs
    assert expected["steps/global_step"].tolist() == EXPECTED_STEPS
    assert resumed.keys() == expected.keys()
    # Rows are matched by step here, so a stray row fails only the test below, which names it.
    keep = np.isin(resumed["steps/global_step"], EXPECTED_STEPS)
    assert resumed["steps/global_step"][keep].tolist() == EXPECTED_STEPS
    for key, values in expected.items():
        got = resumed[key] if key.startswith("val/") else resumed[key][keep]
        assert got.dtype == values.dtype, key
        # Bitwise, NaN included (the batch loss of step 0 is NaN): compare the bytes.
        assert got.tobytes() == values.tobytes(), key


@pytest.mark.slow
def test_resume_adds_no_row_at_the_restored_step(runs: tuple[dict[str, np.ndarray], dict[str, np.ndarray]]) -> None:
    _, resumed = runs
    assert resumed["steps/global_step"].tolist() == EXPECTED_STEPS
