"""The activation store: the one module that reads and writes actrec's HDF5 files."""

from actrec.store._process import WriterChild, WriterProcess
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
    column_key,
)
from actrec.store._types import LayerInfo, LayerSpec, ProbeSet, StepRecord
from actrec.store.reader import STORE_FILENAME, StoreReader, resolve_store_path
from actrec.store.writer import StoreWriter, check_new_path, check_writable

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
    "column_key",
    "check_new_path",
    "check_writable",
    "resolve_store_path",
]
