"""The activation store: the one module that reads and writes actrec's HDF5 files."""

from actrec.store._schema import FORMAT_NAME, FORMAT_VERSION, SCALAR_NAMES, SCALE_SYMMETRIC, SCALE_TANH, StoreError
from actrec.store.reader import STORE_FILENAME, LayerInfo, StoreReader, resolve_store_path
from actrec.store.writer import LayerSpec, ProbeSet, StepRecord, StoreWriter, check_writable

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "SCALAR_NAMES",
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
    "check_writable",
    "resolve_store_path",
]
