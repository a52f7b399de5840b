"""``actrec compare RUN_A RUN_B [...] --layer L``: argument parsing and one-sentence errors."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from actrec.compare.align import ALIGNMENTS
from actrec.compare.build import DEFAULT_MAX_FRAMES, CompareError, compare_runs
from actrec.dynamics import DynamicsError
from actrec.errors import run_guarded
from actrec.viewer.plan import MAX_TILE_SIZE


def compare_main(argv: Sequence[str]) -> int:
    """``actrec compare``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="actrec compare",
        description=(
            "Animate one layer of several runs side by side (an animated PNG, or GIF/MP4), aligned by training "
            "step, epoch or samples seen, and draw their loss, validation accuracy and the layer's dynamics "
            "overlaid (PNG)."
        ),
    )
    parser.add_argument("runs", nargs="*", metavar="RUN", help="two or more run folders, experiment folders or stores")
    parser.add_argument("--sweep", metavar="NAME|ID", help="compare the finished trials of this sweep (at most 16)")
    parser.add_argument("--runs_dir", default="runs", metavar="DIR", help="where --sweep is found (default runs)")
    parser.add_argument(
        "--layer",
        action="append",
        default=[],
        metavar="L | LETTER=L",
        help="the layer to compare in every run, or per run: --layer A=net.conv3 --layer B=features.2",
    )
    parser.add_argument("--align", choices=ALIGNMENTS, default="step", help="shared timeline (default: step)")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: the first run's renders/)")
    parser.add_argument("--fps", type=float, default=10.0, help="animation frames per second (default 10)")
    parser.add_argument(
        "--format",
        choices=("apng", "gif", "mp4"),
        default="apng",
        help="animation format, as actrec render's: apng (an animated PNG browsers play; default), gif (for slides "
        "and chat) or mp4",
    )
    parser.add_argument("--tile-size", type=int, default=28, metavar="PX", help="pixels per map (default 28)")
    parser.add_argument(
        "--max-frames",
        type=int,
        default=DEFAULT_MAX_FRAMES,
        help=f"thin the timeline to this many frames (default {DEFAULT_MAX_FRAMES})",
    )
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")
    args = parser.parse_args(argv)

    def action() -> int:
        labels = None
        if args.sweep is not None:
            from actrec.runs.sweeps import sweep_run_folders

            record, trials, note = sweep_run_folders(args.runs_dir, args.sweep, limit=16)
            if not args.runs:  # panels named by what the trials vary
                labels = [f"{trial.short_label(record.varied)} ({trial.folder.path.name})" for trial in trials]
            args.runs = [*args.runs, *(str(trial.folder.path) for trial in trials)]
            if not args.quiet:
                for trial in trials:
                    print(f"{trial.folder.name}: trial {trial.index}, {trial.label(record.varied)}")
                if note:
                    print(note)
        elif not args.runs:
            raise CompareError("name two or more runs, or a sweep with --sweep NAME.")
        if len(args.runs) >= 2 and not args.layer:
            raise CompareError("name the layer to compare with --layer L (or --layer A=L1 --layer B=L2 per run).")
        if not 4 <= args.tile_size <= MAX_TILE_SIZE:
            raise CompareError(f"--tile-size must be between 4 and {MAX_TILE_SIZE} pixels, got {args.tile_size}.")
        result = compare_runs(
            args.runs,
            args.layer,
            align=args.align,
            out_dir=args.out,
            fps=args.fps,
            tile_size=args.tile_size,
            max_frames=args.max_frames,
            labels=labels,
            video_format=args.format,
        )
        for note in result.notes:  # what was left out is said even with --quiet, as render says it
            print(f"note: {note}", file=sys.stderr)
        if not args.quiet:
            print(f"compared {', '.join(result.labels)} over {len(result.timeline)} frame(s) by {args.align}:")
            print(f"  {result.animation}")
            print(f"  {result.curves}")
        return 0

    return run_guarded("actrec compare", action, (CompareError, DynamicsError))
