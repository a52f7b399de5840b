"""What ``actrec train`` prints: a start line about the run, plain progress lines in a log, no Lightning notices."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from actrec.callbacks import LogLineProgress
from actrec.callbacks.progress import compact_summary_table
from actrec.console import Progress, format_duration
from actrec.trainer.notices import NoticeFilter

_PIPED_RUN = [
    "--trainer.max_epochs=2",
    "--trainer.limit_train_batches=6",
    "--trainer.limit_val_batches=1",
    "--trainer.limit_test_batches=1",
    "--data.batch_size=32",
    "--recorder.every_n_steps=3",
    "--progress_every=0.05",
]


@pytest.mark.slow  # a real `actrec train` process
def test_piped_train_prints_the_run_first_then_periodic_progress_and_no_lightning_notices(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "actrec.cli", "train", "--runs_dir", str(tmp_path / "runs"), *_PIPED_RUN]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # The first line says where the run goes, what it trains and for how long.
    assert lines[0].startswith("actrec train: "), lines[:3]
    assert "six_conv_tanh on mnist-sample, seed 0" in lines[0]
    assert "12 steps (2 epochs of 6 batches)" in lines[0]
    assert "recording every 3 steps to" in lines[0]
    assert "activations.h5" in lines[0]
    # Then the compact model table (four columns), not Lightning's 100-column one.
    assert lines[1].split() == ["layer", "type", "params", "output"]
    assert "FLOPs" not in result.stdout
    # Progress as plain lines (stdout is a pipe): several, with step, epoch, loss, rate; never a redraw.
    progress = [line for line in lines if re.match(r"step \d+/12 \(\d+%\) · epoch \d/2", line)]
    assert len(progress) >= 3, result.stdout
    assert all("loss " in line and "steps/s" in line for line in progress)
    assert "\r" not in result.stdout
    # Lightning's notices about this machine and other products are gone; real output stays.
    notices = ("GPU available: False", "TPU available", "💡 Tip", "Trainer already configured", "Seed set to")
    notices += ("Loading `train_dataloader`",)
    for notice in notices:
        assert notice not in result.stdout + result.stderr, notice
    assert "run folder: " in result.stdout


def test_notice_filter_drops_only_the_listed_notices() -> None:
    import logging

    def record(message: str, level: int = logging.INFO) -> logging.LogRecord:
        return logging.LogRecord("pytorch_lightning.utilities.rank_zero", level, __file__, 1, message, None, None)

    keep = NoticeFilter().filter
    assert not keep(record("GPU available: False, used: False"))
    assert not keep(record("[rank: 0] Seed set to 0"))  # Lightning prefixes the rank when one is set
    assert not keep(record("💡 Tip: For seamless cloud uploads and versioning, try installing [litmodels]"))
    assert keep(record("GPU available: True (cuda), used: False"))  # a GPU left unused is worth saying
    assert keep(record("Restoring states from the checkpoint path at x.ckpt"))
    assert keep(record("💡 Tip: anything", logging.WARNING))  # warnings always show


def test_plain_progress_lines_count_rate_and_eta(tmp_path: Path) -> None:
    log = (tmp_path / "log.txt").open("w+")
    with Progress(total=200, description="actrec render", unit="frames", stream=log, every_s=0.0) as progress:
        for _ in range(4):
            progress.update(50)
    log.seek(0)
    lines = log.read().splitlines()
    assert lines[0].startswith("actrec render: 50/200 frames (25%), ")
    assert re.search(r"ETA \d+:\d\d$", lines[0])
    assert lines[-1].startswith("actrec render: 200/200 frames (100%), ")
    assert "done in" in lines[-1]
    assert format_duration(3723) == "1:02:03"
    assert format_duration(7) == "0:07"


def test_progress_refuses_a_non_positive_interval() -> None:
    import pytest

    with pytest.raises(ValueError, match="every_s must be positive"):
        LogLineProgress(every_s=0)


def test_compact_summary_keeps_name_type_params_and_output_shape() -> None:
    data = [
        (" ", ["0", "1"]),
        ("Name", ["net", "net.conv1"]),
        ("Type", ["SixConvTanh", "Sequential"]),
        ("Params", ["57.2 K", "40"]),
        ("Mode", ["train", "train"]),
        ("FLOPs", ["1.1 M", "56.4 K"]),
        ("In sizes", ["[1, 1, 28, 28]", "[1, 1, 28, 28]"]),
        ("Out sizes", ["[1, 10]", "[1, 4, 28, 28]"]),
    ]
    table = compact_summary_table(data, total=57206, trainable=57206).splitlines()
    assert table[0].split() == ["layer", "type", "params", "output"]
    assert table[2].split()[:3] == ["net.conv1", "Sequential", "40"]
    assert table[2].endswith("[1, 4, 28, 28]")
    assert table[-1] == "57,206 parameters"
