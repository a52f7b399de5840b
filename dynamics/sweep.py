"""``actrec dynamics --sweep NAME``: each trial's settling steps per layer, tabulated against the varied keys.

Does the learning rate change which layer settles first? One row per finished trial: its varied values,
the step at which each layer settles, the first layer to settle and whether the trial converges bottom up.
When the sweep varies the seed too, a second table gives each layer's median settling step per setting of
the other keys, over the seeds.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass

from actrec.dynamics.compute import DEFAULT_THRESHOLD, Dynamics, compute_dynamics
from actrec.recording import Recording
from actrec.runs.sweeps import SweepRecord, TrialState, sweep_run_folders, value_text

__all__ = ["SweepDynamics", "sweep_dynamics", "sweep_dynamics_table"]

_SEED_KEY = "seed_everything"


@dataclass(frozen=True)
class SweepDynamics:
    """The dynamics of every finished trial of a sweep."""

    record: SweepRecord
    trials: list[TrialState]
    dynamics: list[Dynamics]
    note: str | None


def sweep_dynamics(
    root: str | os.PathLike, name_or_id: str, layers: list[str] | None = None, threshold: float = DEFAULT_THRESHOLD
) -> SweepDynamics:
    """Compute the dynamics of each finished trial of the sweep ``name_or_id`` under ``root`` (every trial).

    Raises:
        SweepError, StoreError, DynamicsError: one sentence each.
    """
    record, trials, note = sweep_run_folders(root, name_or_id, limit=10**9)
    computed = []
    for trial in trials:
        with Recording.open(trial.folder, announce=None) as recording:
            computed.append(compute_dynamics(recording, layers, threshold=threshold))
    return SweepDynamics(record, trials, computed, note)


def _settles(step: int | None) -> str:
    return "never" if step is None else str(step)


def _short(layer: str, layers: list[str]) -> str:
    """``net.conv3`` -> ``conv3`` when the last part alone tells the layers apart."""
    tails = [name.rsplit(".", 1)[-1] for name in layers]
    return layer.rsplit(".", 1)[-1] if len(set(tails)) == len(tails) else layer


def _table(headings: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max([len(heading)] + [len(row[i]) for row in rows]) for i, heading in enumerate(headings)]
    return [
        "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [headings, *rows]
    ]


def sweep_dynamics_table(result: SweepDynamics) -> str:
    """The settling-step table of a sweep (and, with seeds, medians over them)."""
    record = result.record
    keys = record.varied
    layers = list(result.dynamics[0].layers) if result.dynamics else []
    threshold = result.dynamics[0].threshold if result.dynamics else DEFAULT_THRESHOLD
    short = [_short(layer, layers) for layer in layers]
    rows = []
    for trial, dynamics in zip(result.trials, result.dynamics, strict=True):
        steps = [dynamics.layers[layer].settling_step if layer in dynamics.layers else None for layer in layers]
        settled = [(step, name) for step, name in zip(steps, short, strict=True) if step is not None]
        earliest = [name for step, name in settled if step == min(settled)[0]] if settled else []
        if not earliest:
            first = "-"
        elif len(earliest) == len(layers) > 1:
            first = "all at once"
        else:
            first = "+".join(earliest) if len(earliest) <= 2 else f"{len(earliest)} layers"
        verdict = {True: "yes", False: "no", None: "undecided"}[dynamics.converges_bottom_up()]
        rows.append(
            [
                str(trial.index),
                *(value_text(trial.overrides.get(key)) for key in keys),
                *map(_settles, steps),
                first,
                verdict,
            ]
        )
    lines = [f"sweep {record.name} ({record.sweep_id}): settling step per layer (CKA to final >= {threshold:g})"]
    lines += _table(["trial", *keys, *short, "first", "bottom up"], rows)
    others = [key for key in keys if key != _SEED_KEY]
    if _SEED_KEY in keys and others:
        groups: dict[tuple[str, ...], list[Dynamics]] = {}
        for trial, dynamics in zip(result.trials, result.dynamics, strict=True):
            groups.setdefault(tuple(value_text(trial.overrides.get(key)) for key in others), []).append(dynamics)
        median_rows = []
        for values, members in groups.items():
            cells = []
            for layer in layers:
                steps = [d.layers[layer].settling_step for d in members if layer in d.layers]
                known = [step for step in steps if step is not None]
                cells.append(f"{statistics.median(known):g}" if len(known) == len(steps) and known else "never")
            median_rows.append([*values, str(len(members)), *cells])
        lines.append("")
        lines.append(f"median settling step over seeds, by {', '.join(others)}:")
        lines += _table([*others, "seeds", *short], median_rows)
    if result.note:
        lines.append(result.note)
    return "\n".join(lines)
