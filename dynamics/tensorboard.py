"""Write dynamics as TensorBoard scalars, framed by the viewer's event-file writer (no TensorFlow)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from actrec.dynamics.compute import SERIES, Dynamics
from actrec.viewer import EVENTS_PREFIX, STAGED_PREFIX, EventFile

TENSORBOARD_DIRNAME = "dynamics"
"""Sub-folder of the run that holds the scalars: TensorBoard on the run folder shows it as its own run."""


def write_scalars(dynamics: Dynamics, log_dir: str | os.PathLike) -> Path:
    """Write every layer's series as ``dynamics/<series>/<layer>`` scalars into a fresh event file.

    Earlier event files in ``log_dir`` are replaced once the new one is complete, so a recomputation
    replaces the curves instead of drawing a second copy over them. Non-finite values are left out.
    """
    from tensorboard.compat.proto import event_pb2, summary_pb2

    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    for leftover in log_dir.glob(STAGED_PREFIX + "*"):  # what a killed write left behind
        leftover.unlink()
    # Written under a name TensorBoard ignores and swapped in whole: a kill or Ctrl-C midway leaves the
    # previous complete file (or, between the swap's two renames, none), never a truncated one that loads.
    file = EventFile(log_dir, ".dynamics", staged=True)
    staged = Path(file.path)
    try:
        file.write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
        now = time.time()
        for row, step in enumerate(dynamics.global_steps.tolist()):
            values = []
            for layer in dynamics.layers.values():
                for key in SERIES:
                    value = float(getattr(layer, key)[row])
                    if np.isfinite(value):
                        values.append(summary_pb2.Summary.Value(tag=f"dynamics/{key}/{layer.name}", simple_value=value))
            if values:
                event = event_pb2.Event(wall_time=now, step=int(step), summary=summary_pb2.Summary(value=values))
                file.write(event.SerializeToString())
        file.close()
        for old in log_dir.glob(EVENTS_PREFIX + "*"):
            old.unlink()
        final = staged.with_name(EVENTS_PREFIX + staged.name[len(STAGED_PREFIX) :])
        os.replace(staged, final)
    finally:
        file.close()
        staged.unlink(missing_ok=True)
    return final
