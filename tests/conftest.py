"""Fixtures shared across test modules.

Test-specific helpers stay in their modules (``viewer_fixtures.py`` builds synthetic stores with known values,
``recorder_fixtures.py`` tiny Lightning modules); what lives here is what several modules would otherwise each
build again at a real cost.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The tests train tiny networks: one torch thread a process is faster than two that spin against each other, the
# test's other processes (actrec train, DDP workers, writer children inherit this) and anything else on a 2-core
# machine; a loaded machine ran the fast run at 2.5 times the CPU time without it. Set before torch is imported
# (test modules import it later); an OMP_NUM_THREADS the caller set wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

#: A real `actrec train` run cut short: one epoch of 20 batches, quickstart recording (every 5th step, weights
#: included), the test and validation loops two batches each.
SHORT_RUN = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=20",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


def train_short_run(runs_dir: Path, model: str = "six_conv_tanh", *extra: str) -> Path:
    """Train a short real run of a zoo model in this process; returns its run folder."""
    from actrec.trainer.cli import TrainCLI

    args = ["--runs_dir", str(runs_dir), "--experiment", model, "--model.model", model, *SHORT_RUN, *extra]
    TrainCLI(args=args).fit_and_test()
    return runs_dir / model / "version_0"


@pytest.fixture(scope="session")
def short_six_conv_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One short six-conv run trained once per test session, for tests that only read a run (and may add files
    under it, as ``actrec inspect`` does); a test that changes the run's own files trains its own."""
    return train_short_run(tmp_path_factory.mktemp("shared-runs"))
