"""``actrec dynamics RUN``: compute, write into the run folder, draw, and summarise a run's dynamics."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from actrec.dynamics.compute import (
    DEFAULT_THRESHOLD,
    DYNAMICS_FILENAME,
    Dynamics,
    DynamicsError,
    compute_dynamics,
    write_dynamics,
)
from actrec.dynamics.metrics import MIN_CKA_PROBES
from actrec.errors import run_guarded, terminal_safe
from actrec.recording import Recording


def _layer_list(text: str) -> list[str]:
    return [name for name in text.split(",") if name]


def dynamics_main(argv: Sequence[str]) -> int:
    """``actrec dynamics RUN``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="actrec dynamics",
        description=(
            "Per layer and recorded step: relative change, linear CKA to the final and to the first step, "
            "saturated fraction, channels constant over the probes; and each layer's settling step (the first "
            f"step from which CKA to the final stays at or above --threshold). Writes RUN/{DYNAMICS_FILENAME}, "
            "TensorBoard scalars in RUN/dynamics/ and RUN/renders/dynamics.png."
        ),
    )
    parser.add_argument(
        "run", nargs="?", metavar="RUN", help="a run folder, an experiment folder (newest version) or a store"
    )
    parser.add_argument("--sweep", metavar="NAME|ID", help="tabulate every finished trial's settling steps instead")
    parser.add_argument("--runs_dir", default="runs", metavar="DIR", help="where --sweep is found (default runs)")
    parser.add_argument("--layers", action="extend", type=_layer_list, metavar="L1,L2", help="default: all layers")
    parser.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"CKA to the final step that counts as settled (default {DEFAULT_THRESHOLD})",
    )
    parser.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard scalars")
    parser.add_argument("--no-png", action="store_true", help="do not draw renders/dynamics.png")
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")
    args = parser.parse_args(argv)

    def action() -> int:
        if args.sweep is not None:
            from actrec.dynamics.sweep import sweep_dynamics, sweep_dynamics_table

            print(sweep_dynamics_table(sweep_dynamics(args.runs_dir, args.sweep, args.layers, args.threshold)))
            return 0
        if args.run is None:
            raise DynamicsError("name a run (RUN) or a sweep (--sweep NAME).")

        with Recording.open(args.run) as recording:
            run_dir, name = recording.run_dir, recording.name
            layers = recording.check_layers(args.layers) if args.layers else None
            dynamics = compute_dynamics(recording, layers, threshold=args.threshold)
        for layer in dynamics.layers.values():  # render's sentence for the same row
            for step in layer.damaged_steps:
                note = f"step {step} of layer {layer.name} is damaged (it failed its integrity check) and was left out."
                print(f"note: {terminal_safe(note)}", file=sys.stderr, flush=True)
        written = [write_dynamics(dynamics, run_dir / DYNAMICS_FILENAME)]
        if not args.no_tensorboard:
            from actrec.dynamics.tensorboard import TENSORBOARD_DIRNAME, write_scalars

            written.append(write_scalars(dynamics, run_dir / TENSORBOARD_DIRNAME))
        if not args.no_png:
            from actrec.dynamics.plots import dynamics_figure
            from actrec.viewer import write_png
            from actrec.viewer.output import atomic_path, prepare_out_dir
            from actrec.viewer.render import RENDERS_DIRNAME

            png = prepare_out_dir(run_dir / RENDERS_DIRNAME) / "dynamics.png"
            title = f"{name} · {len(dynamics.global_steps)} recorded steps · layer dynamics"
            with atomic_path(png) as partial:
                write_png(dynamics_figure(dynamics, title=title), partial)
            written.append(png)
        if not args.quiet:
            print(summary_text(dynamics))
            print("wrote:")
            for path in written:
                print(f"  {path}")
        return 0

    return run_guarded("actrec dynamics", action, (DynamicsError,))


def summary_text(dynamics: Dynamics) -> str:
    """A table of each layer's settling step, final saturation and dead channels, plus the verdict."""
    lines = [f"{'layer':<20} {'settles at step':>15} {'saturated (last)':>17} {'dead channels':>14}"]
    for layer in dynamics.layers.values():
        settles = "never" if layer.settling_step is None else str(layer.settling_step)
        saturated = layer.saturated_fraction[-1]
        saturation = "-" if saturated != saturated else f"{100 * saturated:.1f}%"
        dead = f"{len(layer.always_constant)}/{layer.channels}"
        lines.append(f"{terminal_safe(layer.name):<20} {settles:>15} {saturation:>17} {dead:>14}")
    if dynamics.num_probes < MIN_CKA_PROBES:
        lines.append(
            f"CKA needs at least {MIN_CKA_PROBES} probes; this run has {dynamics.num_probes}, so no layer settles."
        )
    else:
        verdict = dynamics.converges_bottom_up()
        text = {
            True: "yes: each layer settles no later than the one above it",
            False: "no: some layer settles after a layer above it",
            None: "undecided: some layer never settles",
        }[verdict]
        lines.append(f"converges bottom up (threshold {dynamics.threshold:g})? {text}.")
    return "\n".join(lines)
