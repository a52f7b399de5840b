"""``actrec sweep``: many ``actrec train`` trials over a grid, random draws or seeds, on an executor.

The plan (``<runs_dir>/<experiment>/sweep-<id>.json``) is written before any trial starts; its format and
the trials' state are read by :mod:`actrec.runs.sweeps`, which ``actrec runs``, ``compare`` and ``dynamics``
use for ``--sweep``.
"""

from actrec.sweep.cli import EXECUTORS, new_plan, sweep_main
from actrec.sweep.launch import LocalLauncher, SweepOutcome, TrialSpec, run_sweep, run_trial, trial_spec
from actrec.sweep.space import RandomRange, expand_trials, parse_grid, parse_space, parse_value

__all__ = [
    "EXECUTORS",
    "LocalLauncher",
    "RandomRange",
    "SweepOutcome",
    "TrialSpec",
    "expand_trials",
    "new_plan",
    "parse_grid",
    "parse_space",
    "parse_value",
    "run_sweep",
    "run_trial",
    "sweep_main",
    "trial_spec",
]
