"""Training: the model zoo, the in-memory data module, the LightningModule and the ``actrec train`` CLI.

Every name is imported only when first asked for: the zoo imports torch, the data module and the
LightningModule import Lightning (about 5 s on 2 cores), and ``actrec train --help`` (:mod:`actrec.trainer.help`)
must print without either.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from actrec.trainer.data import (
        DATASET_NAMES,
        DEBIAN_FASHION_MNIST_DIR,
        DatasetName,
        DatasetUnavailableError,
        ImageDataModule,
        InMemoryImageDataset,
    )
    from actrec.trainer.models import (
        INIT_NAMES,
        MLP,
        MODEL_NAMES,
        InitName,
        LeNet,
        ModelName,
        SixConvTanh,
        build_model,
    )
    from actrec.trainer.module import ImageClassifier

_LAZY = {
    "INIT_NAMES": "models",
    "MLP": "models",
    "MODEL_NAMES": "models",
    "InitName": "models",
    "LeNet": "models",
    "ModelName": "models",
    "SixConvTanh": "models",
    "build_model": "models",
    "DATASET_NAMES": "data",
    "DEBIAN_FASHION_MNIST_DIR": "data",
    "DatasetName": "data",
    "DatasetUnavailableError": "data",
    "ImageDataModule": "data",
    "InMemoryImageDataset": "data",
    "ImageClassifier": "module",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"actrec.trainer.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'actrec.trainer' has no attribute {name!r}")


__all__ = [
    "DATASET_NAMES",
    "DEBIAN_FASHION_MNIST_DIR",
    "DatasetName",
    "DatasetUnavailableError",
    "INIT_NAMES",
    "ImageClassifier",
    "ImageDataModule",
    "InMemoryImageDataset",
    "InitName",
    "LeNet",
    "MLP",
    "MODEL_NAMES",
    "ModelName",
    "SixConvTanh",
    "build_model",
]
