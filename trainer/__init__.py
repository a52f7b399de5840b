"""Training: the model zoo, the in-memory data module, the LightningModule and the ``actrec train`` CLI."""

from actrec.trainer.data import (
    DATASET_NAMES,
    DEBIAN_FASHION_MNIST_DIR,
    DatasetUnavailableError,
    ImageDataModule,
    InMemoryImageDataset,
)
from actrec.trainer.models import INIT_NAMES, MLP, MODEL_NAMES, LeNet, SixConvTanh, build_model
from actrec.trainer.module import ImageClassifier

__all__ = [
    "DATASET_NAMES",
    "DEBIAN_FASHION_MNIST_DIR",
    "INIT_NAMES",
    "MLP",
    "MODEL_NAMES",
    "DatasetUnavailableError",
    "ImageClassifier",
    "ImageDataModule",
    "InMemoryImageDataset",
    "LeNet",
    "SixConvTanh",
    "build_model",
]
