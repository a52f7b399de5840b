"""Training: the model zoo, the in-memory data module, the LightningModule and the ``actrec train`` CLI."""

from actrec.trainer.data import (
    DATASET_NAMES,
    DEBIAN_FASHION_MNIST_DIR,
    DatasetName,
    DatasetUnavailableError,
    ImageDataModule,
    InMemoryImageDataset,
)
from actrec.trainer.models import INIT_NAMES, MLP, MODEL_NAMES, InitName, LeNet, ModelName, SixConvTanh, build_model
from actrec.trainer.module import ImageClassifier

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
