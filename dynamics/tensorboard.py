"""Write dynamics as TensorBoard scalars, framed by the viewer's event-file writer (no TensorFlow)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from actrec.dynamics.compute import SERIES, Dynamics
from actrec.viewer import EventFile

TENSORBOARD_DIRNAME = "dynamics"
"""Sub-folder of the run that holds the scalars: TensorBoard on the run folder shows it as its own run."""


def write_scalars(dynamics: Dynamics, log_dir: str | os.PathLike) -> Path:
    """Write every layer's series as ``dynamics/<series>/<layer>`` scalars into a fresh event file.

    Earlier event files in ``log_dir`` are removed first, so a recomputation replaces the curves
    instead of drawing a second copy over them. Non-finite values are left out.
    """
    from tensorboard.compat.proto import event_pb2, summary_pb2

    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob("events.out.tfevents.*"):
        old.unlink()
    file = EventFile(log_dir, ".dynamics")
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
    finally:
        file.close()
    return Path(file.path)
