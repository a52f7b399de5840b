"""Compute a run's layer dynamics from its store, reading a bounded block of rows at a time.

CKA to the final and to the first step needs only those two rows' Gram matrices besides the
current one, and the relative change only the previous row, so a 100,000-step store is read once,
``rows_per_read`` rows at a time, and never held whole.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from actrec.console import Progress
from actrec.dynamics import metrics
from actrec.errors import UserError
from actrec.recording import LayerView, Recording
from actrec.runs import atomic_path

ROWS_PER_READ = 64
DEFAULT_THRESHOLD = 0.9
DYNAMICS_FILENAME = "dynamics.npz"
_FORMAT = "actrec-dynamics"
_FORMAT_VERSION = 1
SERIES = ("relative_change", "cka_to_final", "cka_to_first", "saturated_fraction", "constant_channels")
"""Per-step series of every layer, in the order they are drawn."""


class DynamicsError(UserError):
    """Dynamics cannot be computed or read; the message is one sentence for the user."""


@dataclass(frozen=True)
class LayerDynamics:
    """One layer's dynamics, one value per recorded row.

    Args:
        name: the layer.
        scale_kind: the layer's scale kind (saturation is defined for tanh and sigmoid only).
        channels: number of channels.
        relative_change: ``||A_t - A_{t-1}|| / ||A_t||`` against the previous recorded row (NaN at row 0).
        cka_to_final: linear CKA against the last recorded row.
        cka_to_first: linear CKA against the first recorded row.
        saturated_fraction: fraction of saturated values (NaN where the kind has no saturation).
        constant_channels: channels constant over the probes at that row (dead for this input).
        always_constant: channels constant at every recorded row: dead all run long (indices into the
            full layer when the store kept only some of its channels).
        settling_step: first step from which ``cka_to_final`` stays at or above the threshold.
        damaged_steps: recorded steps whose row failed its integrity check: left out (NaN in every series).
    """

    name: str
    scale_kind: str
    channels: int
    relative_change: np.ndarray
    cka_to_final: np.ndarray
    cka_to_first: np.ndarray
    saturated_fraction: np.ndarray
    constant_channels: np.ndarray
    always_constant: tuple[int, ...]
    settling_step: int | None
    damaged_steps: tuple[int, ...] = ()


@dataclass(frozen=True)
class Dynamics:
    """Every recorded layer's dynamics over one run."""

    run_id: str
    global_steps: np.ndarray
    epochs: np.ndarray
    num_probes: int
    threshold: float
    layers: dict[str, LayerDynamics]

    def settling_steps(self) -> dict[str, int | None]:
        return {name: layer.settling_step for name, layer in self.layers.items()}

    def converges_bottom_up(self) -> bool | None:
        """Whether each layer settles no later than the layer above it; ``None`` if any never settles."""
        settling = list(self.settling_steps().values())
        steps = [step for step in settling if step is not None]
        if not steps or len(steps) < len(settling):
            return None
        return all(low <= high for low, high in zip(steps, steps[1:], strict=False))


def compute_dynamics(
    recording: Recording,
    layers: list[str] | None = None,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    rows_per_read: int = ROWS_PER_READ,
) -> Dynamics:
    """Compute the dynamics of ``layers`` (all by default) over the recording's rows (the last is "final").

    Args:
        recording: the open run (:meth:`actrec.recording.Recording.open`), read as of its last refresh.
        layers: layer names; all recorded layers when ``None``.
        threshold: CKA-to-final level that counts as settled, in ``(0, 1]``.
        rows_per_read: rows read per layer at a time (bounds memory).

    Raises:
        DynamicsError: the threshold is out of range.
        RecordingError: a layer is unknown.
    """
    if not 0.0 < threshold <= 1.0:
        raise DynamicsError(f"threshold must be in (0, 1], got {threshold:g}.")
    store, total = recording.store, recording.num_rows
    names = recording.check_layers(layers)
    global_steps, epochs = recording.timeline.global_steps, recording.timeline.epochs
    result = {}
    # A diverged run's NaN and inf rows give NaN measures by design; numpy's warnings about them (with
    # source lines) would only bury the table.
    # The one progress rule (actrec.console): a bar on a terminal, a plain line every 30 s in a log.
    with (
        np.errstate(invalid="ignore", over="ignore", divide="ignore"),
        Progress(total * len(names), "dynamics", unit="rows") as progress,
    ):
        for name in names:
            result[name] = _layer_dynamics(recording, name, total, global_steps, threshold, rows_per_read, progress)
    return Dynamics(
        run_id=store.run_id,
        global_steps=global_steps,
        epochs=epochs,
        num_probes=len(store.probes.labels),
        threshold=threshold,
        layers=result,
    )


def _layer_dynamics(
    recording: Recording,
    name: str,
    total: int,
    global_steps: np.ndarray,
    threshold: float,
    rows_per_read: int,
    progress: Progress,
) -> LayerDynamics:
    store, view = recording.store, recording.layer(name)
    info = store.layer(name)
    channels = info.sample_shape[metrics.channel_axis(info.sample_shape)] if info.sample_shape else 1
    # v2 stores may keep a subset of a layer's channels; report dead ones by their index in the full layer.
    stored = getattr(info, "channels", None)
    labels = tuple(stored) if stored is not None else tuple(range(channels))
    # A damaged row is left out (NaN in every series) as render leaves it out; first and final are then the
    # first and last intact rows.
    damaged: list[int] = []
    ends = view.read(_end_rows(view, total))
    if not len(ends.rows):
        raise DynamicsError(f"every recorded step of layer {name} is damaged, so it has no dynamics.")
    first_gram = metrics.centered_gram(ends.values[0].astype(np.float64))
    final_gram = metrics.centered_gram(ends.values[-1].astype(np.float64))
    series = {key: np.full(total, np.nan) for key in SERIES}
    series["constant_channels"] = np.zeros(total, np.int64)
    always_constant = np.ones(channels, dtype=bool)
    previous = None
    for start in range(0, total, rows_per_read):
        # One conversion per block: float16 arithmetic in numpy is slow, and CKA wants float64 anyway.
        block = view.read(np.arange(start, min(total, start + rows_per_read)))  # damaged rows left out, listed
        damaged.extend(block.damaged)
        for row, current in zip(block.rows.tolist(), block.values.astype(np.float64), strict=True):
            if previous is not None and row - 1 not in damaged:
                series["relative_change"][row] = metrics.relative_change(previous, current)
            gram = metrics.centered_gram(current)
            series["cka_to_final"][row] = metrics.cka_from_grams(gram, final_gram)
            series["cka_to_first"][row] = metrics.cka_from_grams(gram, first_gram)
            series["saturated_fraction"][row] = metrics.saturated_fraction(current, info.scale_kind)
            constant = metrics.constant_channels(current)
            series["constant_channels"][row] = int(constant.sum())
            always_constant &= constant
            previous = current
        progress.update(min(total, start + rows_per_read) - start)
    return LayerDynamics(
        name=name,
        scale_kind=info.scale_kind,
        channels=channels,
        always_constant=tuple(int(labels[channel]) for channel in np.flatnonzero(always_constant)),
        settling_step=metrics.settling_step(global_steps, series["cka_to_final"], threshold),
        damaged_steps=tuple(int(global_steps[row]) for row in sorted(set(damaged))),
        **series,
    )


def _end_rows(view: LayerView, total: int) -> np.ndarray:
    """The first and the last row of a layer that pass their integrity check (both 0 for one row)."""
    first = next((row for row in range(total) if not view.read([row]).damaged), 0)
    last = next((row for row in range(total - 1, first - 1, -1) if not view.read([row]).damaged), first)
    return np.array(sorted({first, last}), np.int64)


def write_dynamics(dynamics: Dynamics, path: str | os.PathLike) -> Path:
    """Write ``dynamics`` as an ``.npz`` (no pickles), atomically: readers see the old file or the new one.

    Per-step arrays are stored as ``<layer>/<series>``; everything else as JSON under ``meta``.
    """
    path = Path(path)
    arrays: dict[str, np.ndarray] = {"global_steps": dynamics.global_steps, "epochs": dynamics.epochs}
    meta = {
        "format": _FORMAT,
        "format_version": _FORMAT_VERSION,
        "run_id": dynamics.run_id,
        "num_probes": dynamics.num_probes,
        "threshold": dynamics.threshold,
        "layers": [
            {
                "name": layer.name,
                "scale_kind": layer.scale_kind,
                "channels": layer.channels,
                "always_constant": list(layer.always_constant),
                "settling_step": layer.settling_step,
            }
            for layer in dynamics.layers.values()
        ],
    }
    for index, layer in enumerate(dynamics.layers.values()):
        for key in SERIES:
            arrays[f"layer{index}/{key}"] = getattr(layer, key)
    arrays["meta"] = np.array(json.dumps(meta))
    with atomic_path(path) as partial, open(partial, "wb") as file:
        np.savez_compressed(file, **arrays)  # type: ignore[arg-type]  # numpy types **kwds as ArrayLike only
    return path


def read_dynamics(path: str | os.PathLike) -> Dynamics:
    """Read what :func:`write_dynamics` wrote.

    Raises:
        DynamicsError: the file is missing, not a dynamics file, or of a newer format.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
                raise DynamicsError(f"{path} is not an actrec dynamics file.")
            if int(meta.get("format_version", 0)) > _FORMAT_VERSION:
                raise DynamicsError(f"{path} was written by a newer actrec; upgrade actrec to read it.")
            layers = {}
            for index, layer in enumerate(meta["layers"]):
                layers[layer["name"]] = LayerDynamics(
                    name=layer["name"],
                    scale_kind=layer["scale_kind"],
                    channels=int(layer["channels"]),
                    always_constant=tuple(layer["always_constant"]),
                    settling_step=layer["settling_step"],
                    **{key: data[f"layer{index}/{key}"] for key in SERIES},
                )
            dynamics = Dynamics(
                run_id=meta["run_id"],
                global_steps=data["global_steps"],
                epochs=data["epochs"],
                num_probes=int(meta["num_probes"]),
                threshold=float(meta["threshold"]),
                layers=layers,
            )
    except FileNotFoundError:
        raise DynamicsError(f"no dynamics file at {path}; run: actrec dynamics RUN.") from None
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as error:
        # A truncated or overwritten file fails inside zipfile or np.load with any of these.
        raise DynamicsError(f"{path} cannot be read as a dynamics file ({error}).") from None
    problem = _inconsistency(dynamics)
    if problem is not None:
        raise DynamicsError(f"{path} cannot be read as a dynamics file ({problem}).")
    return dynamics


#: Larger than any relative change of float16 or float32 activations (norms lie within ~1e-45..1e39
#: times the square root of the size), so a saved value beyond it was not written by compute_dynamics.
_LARGEST_CHANGE = 1e100


def _inconsistency(dynamics: Dynamics) -> str | None:
    """What makes a well-formed dynamics file unusable (arrays of another length, values no computation
    gives), or ``None``: the report trusts the file only if this is ``None``, and recomputes otherwise."""
    steps = dynamics.global_steps
    if steps.ndim != 1 or steps.dtype.kind not in "iu" or dynamics.epochs.shape != steps.shape:
        return "its steps and epochs are not one whole number per row"
    if not 0.0 < dynamics.threshold <= 1.0 or not isinstance(dynamics.run_id, str) or dynamics.num_probes < 0:
        return "its threshold, run id or probe count is out of range"
    for layer in dynamics.layers.values():
        for key in SERIES:
            values = getattr(layer, key)
            if values.shape != steps.shape or values.dtype.kind not in "iuf":
                return f"layer {layer.name}'s {key} does not hold one number per row"
        fractions = np.stack([layer.cka_to_final, layer.cka_to_first, layer.saturated_fraction]).astype(np.float64)
        if np.any((fractions < -1e-6) | (fractions > 1 + 1e-6)):
            return f"layer {layer.name} has a CKA or saturated fraction outside 0..1"
        change = layer.relative_change.astype(np.float64)
        if np.any((change < 0) | (np.isfinite(change) & (change > _LARGEST_CHANGE))):
            return f"layer {layer.name} has a relative change no computation gives"
        constant = layer.constant_channels
        if np.any(~np.isfinite(constant)) or np.any((constant < 0) | (constant > layer.channels)):
            return f"layer {layer.name} counts constant channels outside 0..{layer.channels}"
        if layer.settling_step is not None and (
            not isinstance(layer.settling_step, int) or layer.settling_step not in steps
        ):
            return f"layer {layer.name} settles at a step that was not recorded"
    return None
