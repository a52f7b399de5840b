"""The ``actrec`` command as a user types it: --version, help, configs by name, and a run from end to end."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest

from actrec.cli import main
from actrec.runs import Run
from actrec.store import StoreError, StoreReader
from actrec.trainer.cli import train_main

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:pytorch_lightning.cli"),
    pytest.mark.filterwarnings(r"ignore:.*isinstance\(treespec, LeafSpec\):FutureWarning"),
]


def _actrec() -> list[str]:
    script = Path(sys.executable).with_name("actrec")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "actrec.cli"]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"actrec {version('actrec')}\n"
    assert main([]) == 2
    assert "runs         list runs" in capsys.readouterr().out


def test_train_help_leads_with_actrecs_options_and_every_one_exists(capsys: pytest.CaptureFixture[str]) -> None:
    assert train_main(["--help"]) == 0
    short = capsys.readouterr().out
    lines = short.splitlines()
    assert len(lines) < 60
    assert [line.split()[0] for line in lines if line.startswith("  --")][:6] == [
        "--config",
        "--experiment",
        "--runs_dir",
        "--ckpt_path",
        "--seed_everything",
        "--record",
    ]
    assert "--help-all" in short

    assert train_main(["--help-all"]) == 0
    full = capsys.readouterr().out
    assert len(full.splitlines()) > 300
    flags = set(re.findall(r"(--[a-z_]+(?:\.[a-z_]+)?)", short)) - {"--help-all", "--group"}
    missing = sorted(flag for flag in flags if not re.search(rf"{re.escape(flag)}[\s=,\]]", full))
    assert missing == []


def test_a_shipped_config_is_usable_by_name_from_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    assert train_main(["--config", "fashion", "--print_config"]) == 0
    printed = capsys.readouterr().out
    assert "dataset: fashion-mnist" in printed
    assert "experiment: fashion" in printed
    assert train_main(["--config=article.yaml", "--print_config"]) == 0
    assert "experiment: article" in capsys.readouterr().out


@pytest.mark.slow  # a real `actrec train` process: ~15 s of start-up on 2 cores
def test_actrec_train_ends_with_the_run_folder_and_the_next_commands_then_actrec_runs_lists_it(
    tmp_path: Path,
) -> None:
    command = [
        *_actrec(),
        "train",
        "--config",
        "quickstart",
        "--runs_dir",
        "runs",
        "--trainer.max_steps=3",
        "--trainer.limit_val_batches=1",
        "--trainer.limit_test_batches=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    summary = Run(tmp_path / "runs" / "quickstart" / "version_0").summary()
    accuracy = summary["metrics"]["test/acc"]
    assert result.stdout.splitlines()[-6:] == [
        f"run folder: runs/quickstart/version_0 (finished, test accuracy {accuracy:.1%})",
        "next:",
        "  actrec render runs/quickstart/version_0       # animations, contact sheets, curves",
        "  actrec tensorboard runs/quickstart/version_0  # every layer on one step slider in TensorBoard's actrec tab",
        "  actrec report runs/quickstart/version_0       # one self-contained HTML page",
        "  actrec runs runs                              # every run in a table",
    ]
    listed = subprocess.run([*_actrec(), "runs", "--json"], cwd=tmp_path, capture_output=True, text=True, check=True)
    (row,) = json.loads(listed.stdout)
    assert (row["run"], row["status"], row["model"], row["dataset"]) == (
        "quickstart/version_0",
        "finished",
        "six_conv_tanh",
        "mnist-sample",
    )
    assert (row["global_step"], row["recorded_steps"], row["test_acc"]) == (
        3,
        2,
        accuracy,
    )  # steps 0 and 3: the last step is always recorded


def _recorded_rows(store: Path) -> int:
    """Rows flushed so far into a store being written (0 while it cannot be opened yet)."""
    try:
        with StoreReader(store) as reader:
            return reader.num_steps
    except (StoreError, OSError):
        return 0


@pytest.mark.slow  # a real `actrec train` process, interrupted as a user (Ctrl-C) or a scheduler (SIGTERM) would
@pytest.mark.parametrize(
    ("signum", "code", "word"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_ctrl_c_or_sigterm_ends_actrec_train_with_the_run_folder_and_an_interrupted_summary(
    tmp_path: Path, signum: signal.Signals, code: int, word: str
) -> None:
    command = [
        *_actrec(),
        "train",
        "--runs_dir",
        "runs",
        "--trainer.max_epochs=50",
        "--trainer.enable_progress_bar=false",
    ]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    store = tmp_path / "runs" / "quickstart" / "version_0" / "activations.h5"
    deadline = time.monotonic() + 120
    while not store.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    while _recorded_rows(store) < 2 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)  # steps 0 and 5 recorded: the training loop is running
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr
    assert stderr.splitlines()[-1] == f"actrec train: {word}; what was recorded so far is in runs/quickstart/version_0."
    assert "Traceback" not in stderr
    run = Run(tmp_path / "runs" / "quickstart" / "version_0")
    assert run.status() == "interrupted"
    assert run.summary()["global_step"] >= 5  # recorded every 5th step


@pytest.mark.parametrize(
    "command", ["train", "render", "tensorboard", "runs", "dynamics", "compare", "report", "inspect", "sweep"]
)
def test_help_prints_without_importing_torch_or_lightning(command: str) -> None:
    """Help is read before anything runs: it must not wait seconds for torch and Lightning to import."""
    code = (
        "import contextlib, io, sys\n"
        "from actrec.cli._main import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    try:\n"
        f"        code = main([{command!r}, '--help'])\n"
        "    except SystemExit as exit_request:\n"
        "        code = exit_request.code\n"
        "heavy = sorted(name for name in ('torch', 'pytorch_lightning', 'lightning') if name in sys.modules)\n"
        "print(code, heavy, out.getvalue().startswith('usage:'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split("\n")[0] in ("0 [] True", "None [] True")


@pytest.mark.parametrize("command", ["filters", "featuremaps", "maximize", "shift", "summary", "handcrafted"])
def test_inspect_command_help_prints_without_importing_torch(command: str) -> None:
    """``actrec inspect maximize --help`` is read before a model is loaded: no torch, no numpy."""
    code = (
        "import contextlib, io, sys\n"
        "from actrec.cli._main import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        f"    code = main(['inspect', {command!r}, '--help'])\n"
        "heavy = sorted(name for name in ('torch', 'numpy', 'pytorch_lightning', 'lightning') if name in sys.modules)\n"
        "print(code, heavy, out.getvalue().startswith('usage: actrec inspect'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split("\n")[0] == "0 [] True"
