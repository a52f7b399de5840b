"""Input images for the inspection commands: a picture file prepared as in training, or a dataset image."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from actrec.inspection.errors import InspectError

__all__ = ["IMAGE_SIZE", "dataset_split", "load_image", "prepare_image"]

IMAGE_SIZE = 28
"""Every zoo model reads 28x28 grayscale images in [0, 1]."""


def prepare_image(pixels: np.ndarray) -> tuple[np.ndarray, bool]:
    """Turn ``(H, W)`` 0..255 grey pixels into a ``(1, 1, 28, 28)`` float32 model input in ``[0, 1]``.

    Resized to 28x28 (Lanczos) and scaled to ``[0, 1]`` like the training images. MNIST digits are white on
    black, so a picture whose border is mostly bright (a dark digit on paper) is inverted.

    Returns:
        ``(image, inverted)``.
    """
    image = Image.fromarray(np.asarray(pixels, dtype=np.uint8), "L").resize(
        (IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS
    )
    values = np.asarray(image, dtype=np.float32) / 255.0
    border = np.concatenate([values[0], values[-1], values[:, 0], values[:, -1]])
    inverted = bool(np.median(border) > 0.5)
    if inverted:
        values = 1.0 - values
    return values[None, None].copy(), inverted


def load_image(path: str | os.PathLike) -> tuple[np.ndarray, bool]:
    """Read a PNG/JPEG (any format Pillow opens) and :func:`prepare_image` it.

    Raises:
        InspectError: the file is missing or is not an image.
    """
    path = Path(path)
    if path.is_dir():
        raise InspectError(f"image {path} is a folder; pass an image file (PNG, JPEG, ...).")
    if not path.is_file():
        raise InspectError(f"image {path} does not exist.")
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L"))
    except (UnidentifiedImageError, OSError) as error:
        raise InspectError(f"{path} is not an image Pillow can read ({error}).") from error
    return prepare_image(pixels)


def dataset_split(config: dict[str, Any], split: str = "test") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The images, labels and class names of a split of the dataset a run was trained on.

    Args:
        config: the run's resolved config (its ``data`` section picks the dataset, folder and split seed).
        split: ``"train"``, ``"val"`` or ``"test"``.

    Returns:
        ``(images (N, 1, 28, 28) float32, labels (N,) int64, class names)``.

    Raises:
        InspectError: the dataset is not on disk.
    """
    from actrec.trainer.data import DatasetUnavailableError, ImageDataModule

    data = config.get("data") or {}
    keys = ("dataset", "data_dir", "seed")
    datamodule = ImageDataModule(**{key: data[key] for key in keys if key in data})
    try:
        datamodule.setup("test")
    except DatasetUnavailableError as error:
        raise InspectError(str(error)) from error
    dataset = getattr(datamodule, f"{split}_dataset")
    return dataset.images.numpy(), dataset.labels.numpy(), list(datamodule.classes)
