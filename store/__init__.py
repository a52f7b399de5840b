"""The activation store: the one module that reads and writes actrec's HDF5 files."""

from typing import TYPE_CHECKING, Any

from actrec.store._schema import (
    COMPRESSIONS,
    FIXED_SCALES,
    FORMAT_NAME,
    FORMAT_VERSION,
    KIND_MAPS,
    KIND_TOKENS,
    KIND_VECTOR,
    KINDS_BY_RANK,
    SCALAR_NAMES,
    SCALE_KINDS,
    SCALE_NONNEGATIVE,
    SCALE_SIGMOID,
    SCALE_SYMMETRIC,
    SCALE_TANH,
    StoreError,
    check_compression,
    check_dtype,
    chunk_rows,
    column_key,
)
from actrec.store._types import LayerInfo, LayerSpec, ProbeSet, StepRecord
from actrec.store.reader import STORE_FILENAME, StoreReader, resolve_store_path
from actrec.store.writer import StoreWriter, check_new_path, check_writable

if TYPE_CHECKING:
    from actrec.store._process import WriterChild, WriterProcess

__all__ = [
    "COMPRESSIONS",
    "FIXED_SCALES",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "KIND_MAPS",
    "KIND_TOKENS",
    "KIND_VECTOR",
    "KINDS_BY_RANK",
    "SCALAR_NAMES",
    "SCALE_KINDS",
    "SCALE_NONNEGATIVE",
    "SCALE_SIGMOID",
    "SCALE_SYMMETRIC",
    "SCALE_TANH",
    "STORE_FILENAME",
    "LayerInfo",
    "LayerSpec",
    "ProbeSet",
    "StepRecord",
    "StoreError",
    "StoreReader",
    "StoreWriter",
    "WriterChild",
    "WriterProcess",
    "check_compression",
    "check_dtype",
    "chunk_rows",
    "column_key",
    "check_new_path",
    "check_writable",
    "resolve_store_path",
]


def __getattr__(name: str) -> Any:
    # The writer process's side (subprocess, mmap, select) is imported when training asks for it, not by every
    # command that only reads a store (PEP 562): ~15 ms of `actrec render`'s start-up.
    if name in ("WriterChild", "WriterProcess"):
        from actrec.store import _process

        return getattr(_process, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
