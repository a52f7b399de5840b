"""Integrity of activation stores: open without hanging, refuse what cannot be parsed, report damaged rows.

Why a damaged store used to hang: in SWMR-read mode HDF5 takes a metadata checksum mismatch for a torn
read of a writer's update in progress and reads again, sleeping between attempts. The sleep doubles from
1 ns, capped at an hour divided by the number of attempts, and SWMR allows 100 attempts by default, so a
single damaged object header costs about 40 minutes (and every later access to it as much again). A
store opened here allows :data:`METADATA_READ_ATTEMPTS` attempts: about 2**27 ns (0.13 s) of waiting in
all, ample for a live writer's flush, and a damaged header fails within a fraction of a second.

Why damage used to be drawn as data: raw chunks carry no checksum unless the writer asks for one. Store
format v2 writes every chunk with HDF5's Fletcher-32 filter, which HDF5 verifies on every read; a
mismatch becomes :class:`DamagedDataError` for that one row. Format v1 stores have no checksums, so
damage inside their chunks cannot be detected; nor can damage to the probe images, labels and indices
of any version, written once as contiguous datasets without a checksum.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from actrec.store._schema import KIND_MAPS, KIND_TOKENS, KIND_VECTOR, SCALE_KINDS, STEP_FIELDS, StoreError

METADATA_READ_ATTEMPTS = 27
"""Reads of one checksummed metadata block before HDF5 gives up (SWMR's default is 100: ~40 min)."""

STRUCTURE_WALK_SECONDS = 10.0
"""Time limit of the fallback structure walk in a child process (used only if the limit above cannot be set)."""

# Only what reading the recorded arrays needs; run_id, config and class_names are checked when read, so
# a store whose config cannot be decoded still renders.
_ROOT_ATTRS = ("format_version",)
_LAYER_ATTRS = ("sample_shape", "module_type", "scale_kind")
_GROUPS = ("probes", "steps", "scalars", "layers")
_DATASETS = (
    "probes/images",
    "probes/labels",
    "probes/indices",
    "steps/global_step",
    *(f"steps/{name}" for name in STEP_FIELDS),
    "steps/logits",
)
_LAYER_MEMBERS = ("activations", "abs_max", "params")
_LAYER_MEMBERS_V2 = ("nonfinite",)


class DamagedDataError(StoreError):
    """One row of one dataset failed its checksum: the rest of the store stays readable.

    Attributes:
        layer: the layer's name, or the dataset's key for data outside the layers (``steps/logits``).
        key: the dataset's key in the file (``layers/net.conv1/activations``).
        step: the training step of the damaged row, or ``None`` when even the step column is unreadable.
        row: the row's index in the store.
    """

    def __init__(self, layer: str, key: str, step: int | None, row: int) -> None:
        self.layer = layer
        self.key = key
        self.step = step
        self.row = row
        where = f"step {step}" if step is not None else f"row {row}"
        what = f"layer {layer}" if key.startswith("layers/") else layer
        super().__init__(f"{where} of {what} is damaged (checksum mismatch)")


# -- opening -------------------------------------------------------------------------------------


def latest_format_access() -> h5py.h5p.PropFAID:
    """File access properties for opening a store with the low-level API: the latest file format, which SWMR needs
    (what h5py's ``libver="latest"`` sets)."""
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    return fapl


def open_swmr(path: Path) -> h5py.File:
    """Open ``path`` for SWMR reading with a bounded metadata retry budget, and check its structure.

    Raises:
        StoreError: one sentence when the file's structure cannot be read in a few seconds.
    """
    fapl = latest_format_access()
    # A reader's shared lock makes a writer's open fail ("unable to lock file") if it comes between the
    # writer creating (or resuming) the file and opening it to append: a viewer would end the training.
    # SWMR readers need no lock, so take none.
    fapl.set_file_locking(False, True)
    if not _limit_metadata_read_attempts(fapl):
        _walk_in_child(path)  # raises if the walk fails or runs out of time
    file = h5py.File(h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY | h5py.h5f.ACC_SWMR_READ, fapl=fapl))
    try:
        walk_structure(file, path)
    except BaseException:
        file.close()
        raise
    return file


@functools.cache
def _hdf5_library() -> ctypes.CDLL | None:
    """The HDF5 shared library h5py itself runs on (its wheel's bundled copy, else the system's)."""
    package = Path(h5py.__file__).parent
    patterns = [str(package.parent / folder / "libhdf5*") for folder in ("h5py.libs", "h5py/.dylibs")]
    candidates = [name for pattern in patterns for name in sorted(glob.glob(pattern)) if "_hl" not in name]
    system = ctypes.util.find_library("hdf5")
    if system:
        candidates.append(system)
    for candidate in candidates:
        try:
            library = ctypes.CDLL(candidate)
            library.H5Pset_metadata_read_attempts.argtypes = [ctypes.c_int64, ctypes.c_uint]
            library.H5Pget_metadata_read_attempts.argtypes = [ctypes.c_int64, ctypes.POINTER(ctypes.c_uint)]
            return library
        except (OSError, AttributeError):
            continue
    return None


def _limit_metadata_read_attempts(fapl: h5py.h5p.PropFAID) -> bool:
    """Set the retry budget on ``fapl``; False when it cannot be set (another HDF5 than h5py's, say)."""
    library = _hdf5_library()
    if library is None:
        return False
    # A different copy of HDF5 than h5py's does not know this property list id and returns < 0.
    if library.H5Pset_metadata_read_attempts(fapl.id, METADATA_READ_ATTEMPTS) < 0:
        return False
    attempts = ctypes.c_uint(0)
    return library.H5Pget_metadata_read_attempts(fapl.id, ctypes.byref(attempts)) >= 0 and (
        attempts.value == METADATA_READ_ATTEMPTS
    )


_CHILD_WALK = """
import sys, h5py

def read_attributes(name, obj):
    for key in obj.attrs:
        obj.attrs[key]

with h5py.File(sys.argv[1], "r", libver="latest", swmr=True) as file:
    read_attributes("/", file)
    file.visititems(read_attributes)
"""


def _walk_in_child(path: Path) -> None:
    """Walk every object header in a child process that is killed after :data:`STRUCTURE_WALK_SECONDS`."""
    try:
        result = subprocess.run(
            [sys.executable, "-c", _CHILD_WALK, os.fspath(path)],
            capture_output=True,
            timeout=STRUCTURE_WALK_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise StoreError(
            f"{path} is damaged: its structure could not be read within {STRUCTURE_WALK_SECONDS:g} s."
        ) from None
    if result.returncode != 0:
        raise StoreError(f"{path} is damaged: its structure cannot be read.")


def walk_structure(file: h5py.File, path: Path) -> None:
    """Open every object header and read every attribute, so damaged metadata is found now, not mid-render.

    Raises:
        StoreError: naming the first object that cannot be read.
    """
    current = "/"

    def visit(group: h5py.Group, prefix: str) -> None:
        nonlocal current
        for key in group.attrs:
            group.attrs[key]  # noqa: B018 - reading it is the check
        for name in group:
            current = f"{prefix}{name}"
            obj = group[name]
            if isinstance(obj, h5py.Group):
                visit(obj, f"{current}/")
            else:
                for key in obj.attrs:
                    obj.attrs[key]  # noqa: B018

    try:
        visit(file, "")
    except (OSError, KeyError, RuntimeError, ValueError) as error:
        reason = _hdf5_reason(error)
        raise StoreError(f"{path} is damaged: its object {current} cannot be read ({reason}).") from None


def _hdf5_reason(error: BaseException) -> str:
    """The innermost clause of an h5py error, e.g. ``incorrect metadata checksum after all read attempts``."""
    text = str(error.args[0] if error.args else error).strip("'\"")
    inner = text.rsplit("(", 1)[-1].rstrip(")") if "(" in text else text
    return inner.rstrip(".")


# -- schema and attributes -----------------------------------------------------------------------


def check_schema(file: h5py.File, path: Path) -> None:
    """Refuse, in one sentence, a store that lacks a group, dataset or attribute that reading its arrays needs.

    Call after the ``format`` attribute has identified the file as an actrec store.

    Raises:
        StoreError: listing everything missing.
    """
    missing = [f"attribute {name}" for name in _ROOT_ATTRS if name not in file.attrs]
    missing += [f"group {name}" for name in _GROUPS if not isinstance(file.get(name), h5py.Group)]
    missing += [f"dataset {key}" for key in _DATASETS if not isinstance(file.get(key), h5py.Dataset)]
    version = format_version(file, path) if "format_version" in file.attrs else 1
    members = _LAYER_MEMBERS + (_LAYER_MEMBERS_V2 if version >= 2 else ())
    layers = file.get("layers")
    if isinstance(layers, h5py.Group):
        for name, layer in layers.items():
            if not isinstance(layer, h5py.Group):
                missing.append(f"group layers/{name}")
                continue
            missing += [f"layers/{name}/{member}" for member in members if member not in layer]
            missing += [f"attribute {attr} of layers/{name}" for attr in _LAYER_ATTRS if attr not in layer.attrs]
    if missing:
        raise StoreError(f"{path} is not a complete actrec store; it lacks {', '.join(missing)}.")
    for name, layer in layers.items():
        _check_layer_attributes(layer, name, path)


#: The rank of a layer's per-probe sample for each kind the writer records (probe/_engine's layouts).
_RANK_OF_KIND = {KIND_MAPS: 3, KIND_TOKENS: 2, KIND_VECTOR: 1}


def _check_layer_attributes(layer: h5py.Group, name: str, path: Path) -> None:
    """Refuse a layer whose attributes cannot describe its data: every reader then meets the same sentence
    instead of a ValueError or IndexError deep in whichever command drew it first."""
    attrs = layer.attrs

    def refuse(attribute: str, value: object, reason: str) -> StoreError:
        return StoreError(f"{path} is damaged: layer {name}'s {attribute} attribute {_shown(value)} {reason}.")

    order = _whole_numbers(attrs.get("order", 0))
    if order is None or len(order) != 1:
        raise refuse("order", attrs["order"], "is not a whole number")
    sample_shape = _whole_numbers(attrs["sample_shape"])
    if sample_shape is None or not sample_shape or min(sample_shape) < 1:
        raise refuse("sample_shape", attrs["sample_shape"], "is not a list of positive whole numbers")
    stored = layer["activations"].shape[2:] if isinstance(layer["activations"], h5py.Dataset) else None
    if stored is not None and tuple(sample_shape) != tuple(stored):
        raise refuse("sample_shape", attrs["sample_shape"], f"does not match its activations, {tuple(stored)} a probe")
    scale_kind = _text(attrs["scale_kind"])
    if scale_kind not in SCALE_KINDS:
        raise refuse("scale_kind", attrs["scale_kind"], f"is not one of {', '.join(SCALE_KINDS)}")
    if "kind" in attrs:
        kind = _text(attrs["kind"])
        if kind not in _RANK_OF_KIND:
            raise refuse("kind", attrs["kind"], f"is not one of {', '.join(_RANK_OF_KIND)}")
        if _RANK_OF_KIND[kind] != len(sample_shape):
            raise refuse("kind", attrs["kind"], f"does not fit its sample shape {tuple(sample_shape)}")
    for attribute in ("full_shape", "channels"):
        if attribute in attrs and _whole_numbers(attrs[attribute]) is None:
            raise refuse(attribute, attrs[attribute], "is not a list of whole numbers")


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value) if isinstance(value, str) else None


def _whole_numbers(value: object) -> list[int] | None:
    """``value`` (a number or a 1-d array of them) as ints, or ``None`` when it is anything else."""
    array = np.asarray(value)
    if array.ndim > 1 or array.dtype.kind not in "iuf" or (array.dtype.kind == "f" and not np.isfinite(array).all()):
        return None
    numbers = array.reshape(-1)
    if array.dtype.kind == "f" and not (numbers == np.round(numbers)).all():
        return None
    if numbers.size and np.abs(numbers).max() > 2**62:
        return None
    return [int(n) for n in numbers]


def _shown(value: object) -> str:
    """An attribute's value for a message: text quoted, arrays as lists, anything long cut short."""
    text = repr(_text(value)) if _text(value) is not None else repr(np.asarray(value).tolist())
    return text if len(text) <= 60 else text[:57] + "..."


def format_version(file: h5py.File, path: Path) -> int:
    """The store's ``format_version`` as an int.

    Raises:
        StoreError: the attribute is missing or not a whole number.
    """
    value = file.attrs.get("format_version")
    try:
        number = float(np.asarray(value).item())
    except (TypeError, ValueError):
        number = float("nan")
    if not number.is_integer():
        raise StoreError(f"{path} has a format_version attribute that is not a whole number ({value!r}).")
    return int(number)


def text_attribute(file: h5py.File, path: Path, name: str) -> str:
    """A root attribute as text.

    Raises:
        StoreError: the store has no such attribute.
    """
    if name not in file.attrs:
        raise StoreError(f"{path} has no {name} attribute.")
    value = file.attrs[name]
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def json_attribute(file: h5py.File, path: Path, name: str, kind: type) -> Any:
    """Decode a JSON attribute of the root group, checking it decodes to ``kind`` (``dict`` or ``list``).

    Raises:
        StoreError: the attribute is missing, or not JSON text of that kind.
    """
    if name not in file.attrs:
        raise StoreError(f"{path} has no {name} attribute.")
    value = file.attrs[name]
    try:
        decoded = json.loads(value.decode() if isinstance(value, bytes) else str(value))
    except (ValueError, UnicodeDecodeError):
        decoded = None
    if not isinstance(decoded, kind):
        label = "a JSON object" if kind is dict else "a JSON list"
        raise StoreError(f"{path} has a {name} attribute that is not {label}.")
    return decoded


# -- reading rows --------------------------------------------------------------------------------


def read_checked(
    read: Callable[[], np.ndarray],
    dataset: h5py.Dataset,
    rows: np.ndarray,
    step_of_row: Callable[[int], int | None],
) -> np.ndarray:
    """Run ``read`` (a read of ``rows`` of ``dataset``); on a checksum failure, say which row is damaged.

    Args:
        read: reads the selection and returns it.
        dataset: the dataset read.
        rows: the row indices ``read`` touches, in any order.
        step_of_row: the training step of a row index (``None`` if unknown).

    Raises:
        DamagedDataError: for the first damaged row among ``rows``.
        StoreError: the read failed, no single row fails its checksum, and a second try failed too
            (an I/O error or damaged metadata, not damaged data: no step is blamed).
    """
    try:
        return read()
    except OSError:
        pass
    key = dataset.name.lstrip("/")
    parts = key.split("/")
    layer = parts[1] if parts[0] == "layers" and len(parts) > 2 else key
    for row in np.unique(rows):
        try:
            dataset[int(row)]
        except OSError:
            raise DamagedDataError(layer, key, step_of_row(int(row)), int(row)) from None
    # Every row reads alone, so this was not a checksum failure of a row: maybe a passing I/O error.
    try:
        return read()
    except OSError as error:
        raise StoreError(
            f"{key} of {dataset.file.filename} could not be read ({_hdf5_reason(error)}), though each of "
            "its rows reads alone; try again, or check the disk."
        ) from None
