"""``actrec report RUN [--compare RUN ...]``: write one self-contained HTML page."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from actrec.dynamics import DEFAULT_THRESHOLD, DynamicsError
from actrec.errors import run_guarded
from actrec.report.build import DEFAULT_MAX_FRAMES, ReportError, build_report


def report_main(argv: Sequence[str]) -> int:
    """``actrec report``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="actrec report",
        description=(
            "Write one self-contained HTML file (no server, no network): every layer's activations driven by "
            "one step slider with play/pause and arrow keys, the probes and their predictions, the training "
            "curves and layer dynamics with a cursor at the shown step."
        ),
    )
    parser.add_argument("run", metavar="RUN", help="a run folder, an experiment folder (newest version) or a store")
    parser.add_argument(
        "--compare",
        action="extend",
        nargs="+",
        default=[],
        metavar="RUN",
        help="other runs to show beside it, aligned by training step; sweep:NAME|ID adds a sweep's finished trials",
    )
    parser.add_argument("--runs_dir", default="runs", metavar="DIR", help="where sweep:NAME is found (default runs)")
    parser.add_argument("--out", metavar="FILE", help="the HTML file (default: RUN/report.html)")
    parser.add_argument("--stride", type=int, help="show every K-th recorded step (default: all, up to --max-frames)")
    parser.add_argument(
        "--max-frames",
        type=int,
        default=DEFAULT_MAX_FRAMES,
        help=f"thin longer runs to about this many steps (default {DEFAULT_MAX_FRAMES})",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"CKA level for settling steps (default {DEFAULT_THRESHOLD:g})",
    )
    parser.add_argument("--fps", type=float, default=10.0, help="play speed, steps per second (default 10)")
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")
    args = parser.parse_args(argv)

    def action() -> int:
        compare = []
        for value in args.compare:
            if not value.startswith("sweep:"):
                compare.append(value)
                continue
            from actrec.runs import resolve_run
            from actrec.runs.sweeps import sweep_run_folders

            shown = resolve_run(args.run).path.resolve()
            _, trials, note = sweep_run_folders(args.runs_dir, value.removeprefix("sweep:"), limit=16)
            compare += [str(trial.folder.path) for trial in trials if trial.folder.path.resolve() != shown]
            if note and not args.quiet:
                print(note)
        result = build_report(
            args.run,
            compare=compare,
            out=args.out,
            stride=args.stride,
            max_frames=args.max_frames,
            threshold=args.threshold,
            fps=args.fps,
        )
        for note in result.notes:  # what was left out is said even with --quiet, as render says it
            print(f"note: {note}", file=sys.stderr)
        if not args.quiet:
            print(
                f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB): {len(result.layers)} layer(s) x "
                f"{len(result.global_steps)} step(s); open it in any browser."
            )
        return 0

    return run_guarded("actrec report", action, (ReportError, DynamicsError))
