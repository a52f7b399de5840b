"""Names and layout of an actrec activation store: the single source of truth for the format.

A store is one HDF5 file per run (``activations.h5``)::

    /                                   attrs: format, format_version, run_id, created, config (JSON),
                                               num_probes, num_classes, class_names (JSON)
    /probes/images      (P, C, H, W)    float32, the probe images exactly as fed to the model
    /probes/labels      (P,)            int64
    /probes/indices     (P,)            int64, index of each probe in the held-out split
    /steps/global_step  (N,)            int64, trainer.global_step when the row was recorded
    /steps/epoch        (N,)            int64
    /steps/batch_loss   (N,)            float32, training batch loss at that step (NaN at step 0)
    /steps/batch_acc    (N,)            float32, training batch accuracy at that step (NaN at step 0)
    /steps/wall_time    (N,)            float64, seconds since the Unix epoch
    /steps/logits       (N, P, K)       float32, the probes' logits
    /layers/<name>/activations (N, P, C, H, W)  float16 (or float32), one chunk per step
    /layers/<name>/abs_max     (N,)     float32, max |activation| of the row, for data-derived colour scales
    /layers/<name>/params/<param> (N, ...) float32, the layer's weights and biases (optional)
                                        attrs on /layers/<name>: order, module_type, scale_kind ("tanh"
                                        or "symmetric"), scale (1.0 for tanh, 0.0 = derive from
                                        abs_max), sample_shape (C, H, W)
    /scalars/<name>     (M, 2)          float64 rows of (global_step, value), e.g. val/loss

``/steps/global_step`` is written last for every row, so its length is the number of complete rows;
readers never look past it. ``<name>`` is the module's qualified name (``net.conv1``).
"""

from __future__ import annotations

FORMAT_NAME = "actrec-activations"
FORMAT_VERSION = 1

STEP_FIELDS: dict[str, str] = {
    "epoch": "int64",
    "batch_loss": "float32",
    "batch_acc": "float32",
    "wall_time": "float64",
}
"""Per-step scalar columns besides ``global_step``, with their dtypes."""

SCALAR_NAMES: tuple[str, ...] = ("val/loss", "val/acc", "train/loss", "train/acc")
"""Scalar series created in every store, so SWMR writers never need to create objects later."""

SCALE_TANH = "tanh"
SCALE_SYMMETRIC = "symmetric"


class StoreError(Exception):
    """A store cannot be created, opened or read; the message is one sentence for the user."""
