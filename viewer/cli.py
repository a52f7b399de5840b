"""``actrec render`` and ``actrec tensorboard``: argument parsing and one-sentence errors.

Dispatched by :mod:`actrec.cli`. Anything the user can get wrong ends in one sentence on stderr and
exit code 1, never a traceback; argparse's own usage errors exit with 2 as usual.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from actrec.errors import run_guarded
from actrec.recording import Recording
from actrec.viewer.errors import ViewerError
from actrec.viewer.frames import TILE_SIZE


def _layer_list(text: str) -> list[str]:
    return [name for name in text.split(",") if name]


def _step_list(text: str) -> list[int]:
    try:
        return [int(step) for step in text.split(",") if step.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected training steps separated by commas, got {text!r}") from None


def _selection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run",
        metavar="RUN",
        help="a run folder, an experiment folder (its newest version with a store, named on stderr) or a store file",
    )
    parser.add_argument(
        "--layers",
        action="extend",
        type=_layer_list,
        metavar="LAYER[,LAYER...]",
        help="layers to draw, by module name, comma-separated or repeated (e.g. net.conv1,net.conv3); default: all",
    )
    parser.add_argument(
        "--steps",
        metavar="START:STOP",
        help="training steps to draw, START inclusive, STOP exclusive; either may be left out (e.g. 100:)",
    )
    parser.add_argument("--stride", type=int, default=1, metavar="K", help="draw every K-th recorded step (default 1)")
    parser.add_argument(
        "--tile-size",
        type=int,
        default=TILE_SIZE,
        metavar="PX",
        help=f"pixels of one activation map's longer side (default {TILE_SIZE})",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="worker processes, one layer each at a time (default for large runs: one per CPU, or one per two "
        "CPUs for animated PNGs, which encode on threads)",
    )
    parser.add_argument(
        "--channels",
        metavar="LIST|top:K|all",
        help="channels (maps) or units (tokens, vectors) to draw: indices (0,3,7), top:K (the K that vary most "
        "over training) or all; default: all up to 16, else the 16 that vary most",
    )
    parser.add_argument(
        "--probes",
        metavar="LIST|all",
        help="probes to draw, by index into the probe set: 0,3,7 or ranges (10-19) or all; "
        "default: all up to 10, else the first 10",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no summary")


def _common_options(args: argparse.Namespace) -> dict:
    from actrec.viewer.render import parse_step_range

    start, stop = parse_step_range(args.steps) if args.steps else (None, None)
    layers = args.layers or None
    return {
        "layers": layers,
        "start": start,
        "stop": stop,
        "stride": args.stride,
        "tile_size": args.tile_size,
        "jobs": args.jobs,
        "progress": False if args.quiet else None,
        "channels": args.channels,
        "probes": args.probes,
        "notify": _note,
    }


def _note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr, flush=True)


def render_main(argv: Sequence[str]) -> int:
    """``actrec render RUN``: animations, contact sheets and training curves; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="actrec render",
        description=(
            "Render a run's activation store: for every layer, an animation of its activations over "
            "training (<layer>.png, an animated PNG that web browsers play; GIF or MP4 with --format) and a "
            "contact sheet PNG of chosen steps; for the run, a training-curves PNG. Works while the run is "
            "still writing (renders what has been flushed)."
        ),
    )
    _selection_arguments(parser)
    parser.add_argument("--fps", type=float, default=10.0, help="animation frames per second (default 10, max 50)")
    parser.add_argument(
        "--format",
        choices=("apng", "gif", "mp4"),
        default="apng",
        help="animation format: apng (default: <layer>.png, exact colours, smallest and fastest; web browsers "
        "play it, most image viewers show its last step still), gif (exact colours, ~3x larger; plays in slides, "
        "chat and every viewer) or mp4 (video players; colours close, not exact; needs pip install 'actrec[mp4]')",
    )
    parser.add_argument(
        "--sheet-steps",
        type=_step_list,
        metavar="S1,S2,...",
        help="training steps for the contact sheets (nearest recorded step each); "
        "default: the first, a few log-spaced, the last",
    )
    parser.add_argument(
        "--out", metavar="DIR", help="output folder (default: RUN/renders); files of the same names are replaced"
    )
    args = parser.parse_args(argv)

    def action() -> int:
        from actrec.viewer.render import render_run

        result = render_run(
            args.run,
            out_dir=args.out,
            fps=args.fps,
            video_format=args.format,
            sheet_steps=args.sheet_steps,
            **_common_options(args),
        )
        if not args.quiet:
            steps = result.global_steps
            print(
                f"rendered {len(result.layers)} layer(s) x {len(steps)} step(s) "
                f"({int(steps[0])} to {int(steps[-1])}) into {result.out_dir}:"
            )
            for path in result.files:
                print(f"  {path.name}")
            print(_how_to_open(result.files, args.format))
        return 0

    return run_guarded("actrec render", action)


def _how_to_open(files: Sequence[os.PathLike], video_format: str) -> str:
    """The closing line of a render: what to open the animations with, and the first one to open."""
    from actrec.viewer.writers import ANIMATION_SUFFIXES

    suffix = ANIMATION_SUFFIXES[video_format]
    animations = [Path(path) for path in files if Path(path).name.endswith(suffix) and ".sheet." not in Path(path).name]
    animations = [path for path in animations if path.name != "curves.png"]
    if not animations:
        return "open the .sheet.png files in any image viewer."
    first = animations[-1].resolve()  # the deepest layer: the last one rendered
    if video_format == "apng":
        return (
            f"open the animations in a web browser, e.g. {first.as_uri()} "
            "(animated PNG; for slides and chat: --format gif)"
        )
    if video_format == "gif":
        return f"open the animations in any image viewer or browser, e.g. {first}"
    return f"open the animations in a video player or browser, e.g. {first}"


def tensorboard_main(argv: Sequence[str]) -> int:
    """``actrec tensorboard RUN``: start TensorBoard with the actrec tab (or export first); returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="actrec tensorboard",
        description=(
            "Start TensorBoard on the run with the actrec tab (every layer on one step slider, read from the "
            "store as it trains; only this run unless --all). With --export: first write every recorded step "
            "(or every --stride-th) of every layer as TensorBoard images under activations/<layer>, into "
            "RUN/activations/ (for TensorBoards without actrec installed). Arguments after -- go to TensorBoard."
        ),
    )
    _selection_arguments(parser)
    parser.add_argument("--export", action="store_true", help="export the frames as TensorBoard images first")
    parser.add_argument("--all", dest="all_runs", action="store_true", help="show every run of the experiment")
    parser.add_argument(
        "--print", dest="print_only", action="store_true", help="print the TensorBoard command instead of starting it"
    )
    parser.add_argument("--port", type=int, help="TensorBoard's port (default: TensorBoard's own, 6006)")
    argv = list(argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)

    def action() -> int:
        from actrec.viewer.tb_export import dashboard_command, export_tensorboard, format_command, tensorboard_command

        port = ["--port", str(args.port)] if args.port is not None else []
        if not args.export:
            # Opened (and closed) here: a store that cannot be read is refused now, not later in TensorBoard's log.
            with Recording.open(args.run, allow_empty=True) as recording:
                command = dashboard_command(recording.run, all_runs=args.all_runs, extra_args=[*port, *extra])
            if not args.print_only and not args.quiet:
                print(f"starting: {format_command(command)}; the actrec tab is at /#actrec", flush=True)
        else:
            result = export_tensorboard(args.run, **_common_options(args))
            command = tensorboard_command(result.log_dir, result.samples_per_plugin, [*port, *extra])
        if args.print_only:
            print(format_command(command))
            return 0
        if args.export and not args.quiet:
            print(
                f"exported {len(result.tags)} tag(s) x {len(result.global_steps)} step(s) into {result.export_dir}; "
                f"starting: {format_command(command)}",
                flush=True,
            )
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            # Become TensorBoard rather than wait for it: Ctrl-C, SIGTERM and job control then reach
            # TensorBoard itself, and no orphaned server outlives a killed parent.
            os.execv(command[0], command)
        except OSError as error:
            raise ViewerError(
                f"cannot start TensorBoard ({command[0]}: {error.strerror}); run: {format_command(command)}"
            ) from None

    return run_guarded("actrec tensorboard", action)
