"""``actrec inspect <command>``: the tutorials' pictures, made from a run.

Every command reads a run folder (or an experiment folder: its newest version), loads its model from
``config.yaml`` and a checkpoint (``--checkpoint``, by default the last) and writes PNGs (and GIFs) into
``RUN/inspect/`` unless ``--out`` says otherwise. Bad input is one sentence on stderr and exit code 1.

This module only parses the command line and imports nothing heavy, so ``--help`` prints at once; what each
command does is in :mod:`actrec.inspection.commands`.
"""

from __future__ import annotations

import argparse

from actrec.errors import run_guarded

__all__ = ["inspect_main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="actrec inspect", description="The tutorials' pictures, made from a run.")
    commands = parser.add_subparsers(dest="command", metavar="command", required=True)

    def command(name: str, help_text: str, run: str = "required") -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if run == "required":
            sub.add_argument("run", help="run folder, experiment folder (newest version) or activations.h5")
        elif run == "optional":
            sub.add_argument("run", nargs="?", help="run folder, experiment folder (newest version)")
        if run != "none":
            sub.add_argument("--checkpoint", help="checkpoint file or its name in RUN/checkpoints (default: the last)")
        sub.add_argument("--out", help="output folder (default: RUN/inspect)")
        return sub

    def image_source(sub: argparse.ArgumentParser, required: bool) -> None:
        source = sub.add_mutually_exclusive_group(required=required)
        source.add_argument("--image", help="a PNG/JPEG, resized to 28x28 and scaled to [0, 1] as in training")
        # default None, not 0: argparse's required group would take an explicit "--index 0" for no choice at all
        source.add_argument(
            "--index", type=int, help="an image of the run's test split" + ("" if required else " (default 0)")
        )

    sub = command("filters", "every conv kernel as a red-blue grid, and an animation over training from the store")
    sub.add_argument("--layer", help="a conv block or conv module, e.g. net.conv3 (default: every conv)")
    sub.add_argument("--fps", type=float, default=10.0, help="animation speed")
    sub.add_argument("--stride", type=int, default=1, help="animate every K-th recorded step")

    sub = command("featuremaps", "one image through every conv, activation and pooling stage")
    image_source(sub, required=True)

    sub = command("maximize", "the input that maximises each channel's mean activation")
    sub.add_argument("--layer", required=True, help="e.g. net.conv5 (the block's output after its tanh)")
    sub.add_argument("--channels", help="comma-separated channels (default: all)")
    sub.add_argument("--steps", type=int, default=200, help="optimisation steps per image")
    sub.add_argument("--seed", type=int, default=0, help="seed of the starting noise and jitter")
    sub.add_argument("--over-training", action="store_true", help="repeat at several training steps and animate")
    sub.add_argument("--frames", type=int, default=8, help="training steps to sample for --over-training")
    sub.add_argument("--fps", type=float, default=2.0, help="animation speed for --over-training")

    sub = command("shift", "class probabilities of a test image shifted -5 to +5 pixels")
    image_source(sub, required=False)
    sub.add_argument("--compare", help="a second run, drawn beside the first, plus accuracy against shift for both")
    sub.add_argument("--images", type=int, default=1000, help="test images for the accuracy curves")

    sub = command("summary", "the layer table with the output-size rule checked against a forward pass", "optional")
    sub.add_argument("--model", help="a zoo model instead of a run: six_conv_tanh, lenet or mlp")

    sub = command("handcrafted", "a conv layer set to four hand-made edge filters, applied to a digit", "none")
    image_source(sub, required=False)
    return parser


def inspect_main(argv: list[str]) -> int:
    """Run ``actrec inspect`` with ``argv`` (the arguments after ``inspect``); returns the exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:
        return exit_request.code if isinstance(exit_request.code, int) else 2

    def action() -> int:
        # Heavy (torch, numpy, the drawing code): imported only once a command runs, never for --help.
        from actrec.inspection.commands import COMMANDS

        COMMANDS[args.command](args)
        return 0

    # The one guard: user errors in one sentence, Ctrl-C and SIGTERM end with 130 and 143.
    return run_guarded(f"actrec inspect {args.command}", action)
