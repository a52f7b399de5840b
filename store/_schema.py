"""Names and layout of an actrec activation store: the single source of truth for the format.

A store is one HDF5 file per run (``activations.h5``)::

    /                                   attrs: format, format_version, run_id, created, config (JSON),
                                               num_probes, num_classes, class_names (JSON), task,
                                               output_shape (optional)
    /probes/images      (P, ...)        float32, the probe inputs exactly as fed to the model
    /probes/labels      (P,)            int64 (-1: the probe came without a label)
    /probes/indices     (P,)            int64, index of each probe in the split (or loader) it came from
    /steps/global_step  (N,)            int64, trainer.global_step when the row was recorded
    /steps/epoch        (N,)            int64
    /steps/batch_loss   (N,)            float32, training batch loss at that step (NaN when unknown)
    /steps/batch_acc    (N,)            float32, training batch accuracy at that step (NaN when unknown)
    /steps/wall_time    (N,)            float64, seconds since the Unix epoch
    /steps/logits       (N, P, K)       float32, the probes' logits (the model's output, flattened per probe)
    /layers/<name>/activations (N, P, *sample_shape)  float16 (or float32), chunks of 1-8 rows (chunk_rows)
    /layers/<name>/abs_max     (N,)     float32, max |finite activation| of the row, for colour scales
    /layers/<name>/nonfinite   (N,)     int64, how many NaN/inf values the row holds (v2; stored as they are)
    /layers/<name>/params/<param> (N, ...) float32, the layer's weights and biases (optional)
                                        attrs on /layers/<name>: order, module_type, scale_kind, scale
                                        (1.0 for tanh and sigmoid, 0.0 = derive from abs_max), sample_shape,
                                        and in v2: kind, output, channels (absent = all), full_shape
    /scalars/<name>     (M, 2)          float64 rows of (global_step, value): val/loss, val/acc

Version 2 adds, per layer: ``kind`` (``maps`` (C, H, W), ``tokens`` (T, D), ``vector`` (D,)), ``output``
(the output selector, ``""`` = the module's tensor), ``channels`` (int64 indices of the kept channels
or units into the full layer; absent = all kept), ``full_shape`` (the layer's per-probe shape before
any cap), ``scale_kind`` one of ``tanh`` (within +-1), ``sigmoid`` (within 0..1), ``nonnegative``
(ReLU-like) or ``symmetric``; and the ``nonfinite`` column. Every growable dataset is chunked with
HDF5's Fletcher-32 checksum filter. Version 1 stores read as: kind from the rank of sample_shape,
output "", channels None, full_shape = sample_shape, nonfinite all zero.

The root ``task`` attribute says what the model's output is: ``classification`` (the logits are class
scores: readers mark each probe's argmax as a prediction), ``reconstruction``, ``generation``,
``regression`` or ``none`` (the logits are just the output: no predictions are drawn). Stores written
without it read as ``classification``. The optional root ``output_shape`` attribute (int64, one probe's
output shape before it is flattened into ``/steps/logits``, e.g. ``(1, 28, 28)`` or ``(T, V)``) lets readers
draw the output by its shape; stores written without it are drawn from the flattened ``(K,)``.

A row is complete once every dataset holds it: the number of complete rows is the shortest length
among ``/steps/*`` (``global_step``, the step fields and ``logits``) and ``/layers/*/activations``, which
is what the reader counts (``/steps/global_step`` is written last for every row); readers never look
past it. ``<name>`` is the layer's name as given (``net.conv1``, ``lstm[0]``).

A store left behind by a killed writer is still flagged "open for writing": open it with
``h5py.File(path, "r", swmr=True)`` (or :class:`actrec.store.StoreReader`); a plain read-only open
may refuse it on older HDF5 versions.
"""

from __future__ import annotations

from actrec.errors import UserError
from actrec.names import (  # noqa: F401 - re-exported: the store's words, defined once in actrec.names
    FIXED_SCALES,
    KIND_MAPS,
    KIND_TOKENS,
    KIND_VECTOR,
    KINDS_BY_RANK,
    SCALE_KINDS,
    SCALE_NONNEGATIVE,
    SCALE_SIGMOID,
    SCALE_SYMMETRIC,
    SCALE_TANH,
    kind_of,
)

FORMAT_NAME = "actrec-activations"
FORMAT_VERSION = 2

STEP_FIELDS: dict[str, str] = {
    "epoch": "int64",
    "batch_loss": "float32",
    "batch_acc": "float32",
    "wall_time": "float64",
}
"""Per-step scalar columns besides ``global_step``, with their dtypes."""

SCALAR_NAMES: tuple[str, ...] = ("val/loss", "val/acc")
"""Scalar series created in every store, so SWMR writers never need to create objects later."""


COMPRESSIONS: tuple[str, ...] = ("none", "lzf", "gzip")
CHUNK_BYTES = 512 * 1024
"""Bytes (before compression) an activation or weight chunk holds at most, unless one row is larger."""
MAX_CHUNK_ROWS = 8
"""Rows a chunk holds at most: the writer's block (16 rows) fills whole chunks, and a damaged chunk costs at
most this many rows."""
DTYPES: tuple[str, ...] = ("float16", "float32")


class StoreError(UserError):
    """A store cannot be created, opened or read; the message is one sentence for the user."""


def column_key(field_key: str) -> str:
    """The store's dataset for a recorded field: ``"conv1/activations"`` -> ``"layers/conv1/activations"``,
    ``"logits"`` / ``"batch_loss"`` / ``"batch_acc"`` -> ``"steps/<name>"``."""
    if field_key in ("logits", "batch_loss", "batch_acc"):
        return f"steps/{field_key}"
    return f"layers/{field_key}"


def check_compression(compression: str) -> str:
    """Return ``compression`` if it is one of :data:`COMPRESSIONS`.

    Raises:
        StoreError: it is not.
    """
    if compression not in COMPRESSIONS:
        raise StoreError(f"compression must be 'none', 'lzf' or 'gzip', got {compression!r}.")
    return compression


def chunk_rows(row_bytes: int) -> int:
    """Rows per chunk of a per-step dataset whose rows are ``row_bytes`` long: the largest power of two up to
    :data:`MAX_CHUNK_ROWS` whose chunk stays within :data:`CHUNK_BYTES` (1 for rows larger than that).

    Several rows a chunk because gzip then sees the same pixels at neighbouring steps: the quickstart's
    activations take 0.86x the bytes of one-row chunks (41.5 against 48.1 MB), its weights 0.85x, and HDF5
    pays its per-chunk costs (index entry, filter call, checksum) once for several rows. A power of two
    divides the writer's 16-row blocks, so a block fills whole chunks; 512 KiB keeps one chunk well inside
    h5py's 1 MiB chunk cache, so reading frame after frame decompresses each chunk once. At most 8 rows,
    because a damaged chunk costs all its rows (16 would save only 1% more).
    """
    rows = MAX_CHUNK_ROWS
    while rows > 1 and rows * row_bytes > CHUNK_BYTES:
        rows //= 2
    return rows


def check_dtype(dtype: str) -> str:
    """Return ``dtype`` if it is one of :data:`DTYPES`.

    Raises:
        StoreError: it is not.
    """
    if dtype not in DTYPES:
        raise StoreError(f"dtype must be 'float16' or 'float32', got {dtype!r}.")
    return dtype
