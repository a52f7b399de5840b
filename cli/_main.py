"""Dispatch ``actrec <subcommand>`` to the package that owns the job.

Each subcommand is imported only when used, so ``actrec render`` never pays for importing
Lightning, and the viewer keeps working on machines where training is not set up.
"""

from __future__ import annotations

import sys

_USAGE = """usage: actrec <command> [options]

commands:
  train        train a network with LightningCLI, recording activations (actrec train --help)
  render       render a run's activation store to animations (APNG, GIF, MP4), contact sheets and curves
  tensorboard  open a run in TensorBoard's actrec tab: every layer on one step slider (--export: write images)
  runs         list runs: model, data, accuracy, store size, wall time, status (actrec runs --help)
  dynamics     per-layer change, CKA to first/final step, saturation, dead channels, settling steps
  compare      one layer of several runs side by side (animated), and their curves overlaid
  report       one self-contained HTML page: every layer on one step slider, curves, dynamics, probes
  sweep        many train runs over a grid, random draws or seeds, locally, on Ray or SLURM (actrec sweep --help)
  inspect      filters, feature maps, maximisation, shift, summary, hand-made filters (actrec inspect --help)

options:
  --version    print actrec's version
"""


def main(argv: list[str] | None = None) -> int:
    """Run the ``actrec`` command line; returns the process exit code."""
    try:
        return _dispatch(argv)
    except KeyboardInterrupt:
        # Ctrl-C while a command's modules still import (seconds on a loaded machine), before the command's own
        # guard is in place: nothing was written yet, and a traceback through importlib helps no one.
        print("actrec: interrupted.", file=sys.stderr)
        return 130


def _dispatch(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_USAGE, end="")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "--version":
        from actrec import __version__

        print(f"actrec {__version__}")
        return 0
    if command == "train":
        if "-h" in rest or "--help" in rest:  # before importing Lightning: help prints at once
            from actrec.trainer.help import short_help

            print(short_help())
            return 0
        from actrec.trainer.cli import train_main

        return train_main(rest)
    if command == "render":
        from actrec.viewer.cli import render_main

        return render_main(rest)
    if command == "tensorboard":
        from actrec.viewer.cli import tensorboard_main

        return tensorboard_main(rest)
    if command == "runs":
        from actrec.runs.table import runs_main

        return runs_main(rest)
    if command == "dynamics":
        from actrec.dynamics.cli import dynamics_main

        return dynamics_main(rest)
    if command == "compare":
        from actrec.compare.cli import compare_main

        return compare_main(rest)
    if command == "report":
        from actrec.report.cli import report_main

        return report_main(rest)
    if command == "sweep":
        from actrec.sweep import sweep_main

        return sweep_main(rest)
    if command == "inspect":
        from actrec.inspection.cli import inspect_main

        return inspect_main(rest)
    print(
        f"actrec: unknown command {command!r}; choose one of: train, render, tensorboard, runs, dynamics, compare, "
        "report, sweep, inspect.",
        file=sys.stderr,
    )
    return 2
