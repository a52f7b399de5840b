"""The model zoo: the article's six-conv tanh network and the two baselines it is compared with.

Every model takes a batch of images ``(B, 1, 28, 28)`` with values in ``[0, 1]`` and returns logits ``(B, 10)``.
Each model is an ``nn.Sequential`` of named blocks, so a block such as ``conv3`` is addressable by name and its
output is the post-activation map (the conv and its nonlinearity live in one block; pooling has its own).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal, get_args

from torch import nn

__all__ = ["INIT_NAMES", "MODEL_NAMES", "InitName", "LeNet", "MLP", "ModelName", "SixConvTanh", "build_model"]

#: A zoo model name; as a type annotation it makes the CLI offer and check the choices.
ModelName = Literal["six_conv_tanh", "lenet", "mlp"]
#: A weight initialisation name.
InitName = Literal["default", "article"]
#: Names accepted by :func:`build_model`.
MODEL_NAMES: tuple[str, ...] = get_args(ModelName)
#: Weight initialisations accepted by :func:`build_model`.
INIT_NAMES: tuple[str, ...] = get_args(InitName)

_NUM_CLASSES = 10
_ARTICLE_WEIGHT_STD = 0.01


def _conv_block(in_channels: int, out_channels: int, kernel_size: int, activation: nn.Module) -> nn.Sequential:
    """A same-padded conv followed by its nonlinearity, so the block's output is the activation map."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2), activation)


class SixConvTanh(nn.Sequential):
    """The article's network: six 3x3 tanh convs (4, 4, 8, 8, 16, 16 channels), then dense 64, 32, 10.

    Two 2x2 max-pools (``pool1`` after ``conv2``, ``pool2`` after ``conv4``) take the maps from 28x28 to 14x14
    to 7x7. ``fc1`` and ``fc2`` are linear + tanh blocks; ``fc3`` returns logits.
    """

    def __init__(self) -> None:
        super().__init__(
            OrderedDict(
                conv1=_conv_block(1, 4, 3, nn.Tanh()),
                conv2=_conv_block(4, 4, 3, nn.Tanh()),
                pool1=nn.MaxPool2d(2),
                conv3=_conv_block(4, 8, 3, nn.Tanh()),
                conv4=_conv_block(8, 8, 3, nn.Tanh()),
                pool2=nn.MaxPool2d(2),
                conv5=_conv_block(8, 16, 3, nn.Tanh()),
                conv6=_conv_block(16, 16, 3, nn.Tanh()),
                flatten=nn.Flatten(),
                fc1=nn.Sequential(nn.Linear(16 * 7 * 7, 64), nn.Tanh()),
                fc2=nn.Sequential(nn.Linear(64, 32), nn.Tanh()),
                fc3=nn.Linear(32, _NUM_CLASSES),
            )
        )


class LeNet(nn.Sequential):
    """A LeNet-style ReLU network: 5x5 conv 32, pool, 5x5 conv 64, pool, dense 1024, 10 (same padding)."""

    def __init__(self) -> None:
        super().__init__(
            OrderedDict(
                conv1=_conv_block(1, 32, 5, nn.ReLU()),
                pool1=nn.MaxPool2d(2),
                conv2=_conv_block(32, 64, 5, nn.ReLU()),
                pool2=nn.MaxPool2d(2),
                flatten=nn.Flatten(),
                fc1=nn.Sequential(nn.Linear(64 * 7 * 7, 1024), nn.ReLU()),
                fc2=nn.Linear(1024, _NUM_CLASSES),
            )
        )


class MLP(nn.Sequential):
    """A 784-512-512-10 ReLU perceptron with dropout 0.2 after each hidden layer."""

    def __init__(self) -> None:
        super().__init__(
            OrderedDict(
                flatten=nn.Flatten(),
                fc1=nn.Sequential(nn.Linear(28 * 28, 512), nn.ReLU(), nn.Dropout(0.2)),
                fc2=nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Dropout(0.2)),
                fc3=nn.Linear(512, _NUM_CLASSES),
            )
        )


_MODEL_CLASSES: dict[str, type[nn.Module]] = {"six_conv_tanh": SixConvTanh, "lenet": LeNet, "mlp": MLP}


def _init_article(model: nn.Module) -> None:
    """Draw every conv and linear weight from normal(0, 0.01) and zero the biases, as the article does."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(module.weight, mean=0.0, std=_ARTICLE_WEIGHT_STD)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def build_model(name: ModelName, init: InitName = "default") -> nn.Module:
    """Build a model from the zoo.

    Args:
        name: One of :data:`MODEL_NAMES`.
        init: ``"default"`` keeps PyTorch's initialisation; ``"article"`` draws weights from normal(0, 0.01) and
            zeroes biases.

    Returns:
        A freshly initialised model mapping ``(B, 1, 28, 28)`` images to ``(B, 10)`` logits.

    Raises:
        ValueError: If ``name`` or ``init`` is not one of the known choices.
    """
    if name not in _MODEL_CLASSES:
        raise ValueError(f"Unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}.")
    if init not in INIT_NAMES:
        raise ValueError(f"Unknown init {init!r}; choose one of: {', '.join(INIT_NAMES)}.")
    model = _MODEL_CLASSES[name]()
    if init == "article":
        _init_article(model)
    return model
