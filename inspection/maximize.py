"""Activation maximisation: for each channel of a layer, the input that drives its mean activation highest.

Each channel's image starts from the same seeded noise and climbs the gradient of the channel's mean activation
with Adam, pixels kept in the training range ``[0, 1]``. Chosen by results on conv5 of an 8-epoch quickstart run
(16 channels, 200 steps, mean activation over the channels on tanh's scale of 1, starting from +0.00):

- nothing: +0.59, but the images are speckle: the optimiser exploits exact pixel positions;
- total variation alone (weight 0.05): +0.59 and still speckle; at this weight it changes little by itself;
- jitter (a random shift of up to 2 pixels before every step): +0.51, and the speckle becomes clean oriented
  stripes, because a pattern must excite the channel wherever it lands;
- jitter plus total variation (0.05): +0.51, the same stripes, and the two weakest channels lose their
  checkerboard; **the default**, 86% of the unregularised gain;
- jitter plus a 3x3 Gaussian blur every 4 steps: +0.45, blurred stripes: on 28x28 digits blur washes out the
  thin strokes the layers look for, and costs activation.

The starting noise is dark (mean 0.1, like the digits' background), so channels start near zero activation; from
mid-grey many channels start far from zero, some near their maximum. Everything is seeded: the same model, layer,
channels and seed give the same images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actrec.inspection import drawing
from actrec.inspection.errors import InspectError
from actrec.probe import eval_mode, resolve_layers

__all__ = [
    "MaximizeResult",
    "MaximizeSettings",
    "channel_means",
    "draw_maximized",
    "layer_channels",
    "layer_module",
    "maximize_channels",
    "over_training_sheet",
    "weights_needed",
]


@dataclass(frozen=True)
class MaximizeSettings:
    """How each channel's image is optimised.

    Args:
        steps: gradient steps.
        lr: Adam's learning rate, in pixel units.
        jitter: largest random shift in pixels applied before each step (0: none).
        tv_weight: weight of the total-variation penalty (0: none).
        blur_every: blur the image with a 3x3 Gaussian every this many steps (0: never).
        noise_mean: brightness of the starting noise: dark, like the digits' background, so the channels start near
            zero activation (mid-grey 0.5 starts many channels far from zero, some near their maximum).
        noise_std: spread of the starting noise.
        seed: seed of the starting noise and the jitter.
    """

    steps: int = 200
    lr: float = 0.05
    jitter: int = 2
    tv_weight: float = 0.05
    blur_every: int = 0
    noise_mean: float = 0.1
    noise_std: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise InspectError(f"maximisation needs at least 1 step, got {self.steps}.")
        if self.lr <= 0 or self.jitter < 0 or self.tv_weight < 0 or self.blur_every < 0 or self.noise_std < 0:
            raise InspectError("maximisation settings must be non-negative and the learning rate positive.")


@dataclass(frozen=True)
class MaximizeResult:
    """Each channel's preferred input and how much it excites the channel.

    Args:
        channels: the channel indices, in order.
        images: ``(len(channels), 1, H, W)`` optimised inputs in ``[0, 1]``.
        start_activation: ``(len(channels),)`` each channel's mean activation on the starting noise.
        final_activation: ``(len(channels),)`` each channel's mean activation on its optimised image.
    """

    channels: tuple[int, ...]
    images: np.ndarray
    start_activation: np.ndarray
    final_activation: np.ndarray


class _Reached(Exception):
    """Raised by the hook once the target layer has run: the rest of the network is not needed."""


def layer_module(model: nn.Module, layer: str) -> nn.Module:
    """The one submodule called ``layer``.

    Raises:
        ProbeError: no such submodule (the message lists the candidates).
        InspectError: ``layer`` is a pattern matching several modules.
    """
    names = resolve_layers(model, [layer])
    if names != [layer]:
        raise InspectError(f"{layer!r} names {len(names)} layers ({', '.join(names)}); pick one.")
    return dict(model.named_modules())[layer]


def layer_channels(model: nn.Module, layer: str, input_shape: Sequence[int] = (1, 28, 28)) -> int:
    """Number of channels of ``layer``'s output (one forward pass on zeros).

    Raises:
        InspectError: the layer's output has no channels (a flat vector has one value per "channel" and still
            counts; a scalar does not).
    """
    with torch.no_grad(), eval_mode(model):
        output = _layer_output(model, layer_module(model, layer), torch.zeros(1, *input_shape))
    if output.ndim < 2:
        raise InspectError(f"{layer} outputs {tuple(output.shape)}, which has no channels to maximise.")
    return int(output.shape[1])


def weights_needed(model: nn.Module, layer: str) -> set[str]:
    """The state-dict keys ``layer``'s output depends on: every parameter up to and including the layer's own."""
    keys = list(model.state_dict())
    own = [index for index, key in enumerate(keys) if key.startswith(layer + ".")]
    prefix = [name for name, _ in model.named_modules()]
    if not own:  # a parameter-free layer (a pool): everything registered before it
        position = prefix.index(layer)
        earlier = set(prefix[:position])
        return {key for key in keys if key.rsplit(".", 1)[0] in earlier}
    return set(keys[: own[-1] + 1])


def _layer_output(model: nn.Module, module: nn.Module, images: Tensor) -> Tensor:
    """``module``'s output for ``images``, with gradients, stopping the forward pass right after it."""
    outputs: list[Tensor] = []

    def keep(_module: nn.Module, _inputs: object, output: Tensor) -> None:
        outputs.append(output)
        raise _Reached

    handle = module.register_forward_hook(keep)
    try:
        model(images)
    except _Reached:
        pass
    finally:
        handle.remove()
    if not outputs:
        raise InspectError(f"the layer {type(module).__name__} never ran in the model's forward pass.")
    return outputs[0]


def channel_means(model: nn.Module, layer: str, images: Tensor, channels: Sequence[int]) -> Tensor:
    """``(B,)`` mean activation of ``channels[i]`` of ``layer`` for ``images[i]`` (with gradients)."""
    output = _layer_output(model, layer_module(model, layer), images)
    index = torch.as_tensor(list(channels), dtype=torch.long)
    picked = output[torch.arange(len(index)), index]
    return picked.reshape(len(index), -1).mean(dim=1)


def _total_variation(images: Tensor) -> Tensor:
    """Mean absolute difference between neighbouring pixels, per image."""
    across = (images[..., :, 1:] - images[..., :, :-1]).abs().mean(dim=(1, 2, 3))
    down = (images[..., 1:, :] - images[..., :-1, :]).abs().mean(dim=(1, 2, 3))
    return across + down


_GAUSSIAN = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0


def starting_noise(count: int, shape: Sequence[int], settings: MaximizeSettings) -> Tensor:
    """The seeded noise every channel starts from: ``(count, *shape)`` copies of one image, clipped to ``[0, 1]``."""
    generator = torch.Generator().manual_seed(settings.seed)
    noise = settings.noise_mean + settings.noise_std * torch.randn((1, *shape), generator=generator)
    return noise.clamp(0.0, 1.0).repeat(count, *([1] * len(shape)))


def maximize_channels(
    model: nn.Module,
    layer: str,
    channels: Sequence[int],
    *,
    input_shape: Sequence[int] = (1, 28, 28),
    settings: MaximizeSettings | None = None,
    on_step: Callable[[], object] | None = None,
) -> MaximizeResult:
    """Optimise one input per channel to maximise that channel's mean activation (all channels in one batch).

    Args:
        model: any model; put in eval mode for the duration and restored after.
        layer: the qualified name of the layer, e.g. ``"net.conv5"`` (the block's post-tanh output).
        channels: channel indices of ``layer``'s output.
        input_shape: one input's shape.
        settings: regularisation and schedule; the defaults are explained in this module's docstring.
        on_step: called after every step (a progress bar's ``update``).

    Raises:
        InspectError: unknown layer, or a channel out of range.
    """
    settings = settings or MaximizeSettings()
    channels = tuple(int(channel) for channel in channels)
    module = layer_module(model, layer)
    threads = torch.get_num_threads()
    # A batch of 28x28 images through a few small convs is too little work to share: on a busy 2-core machine
    # one thread took 25 ms a step and two threads 200 ms, waiting on each other.
    torch.set_num_threads(1)
    flags = {submodule: submodule.training for submodule in model.modules()}
    parameters = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    model.eval()
    for parameter, _ in parameters:
        parameter.requires_grad_(False)
    try:
        noise = starting_noise(len(channels), input_shape, settings)
        with torch.no_grad():
            probe = _layer_output(model, module, noise[:1])
        if probe.ndim < 2 or not channels or min(channels) < 0 or max(channels) >= probe.shape[1]:
            raise InspectError(f"{layer} has {probe.shape[1]} channels (0 to {probe.shape[1] - 1}); got {channels}.")
        with torch.no_grad():
            start = channel_means(model, layer, noise, channels)
        images = noise.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([images], lr=settings.lr)
        generator = torch.Generator().manual_seed(settings.seed + 1)
        for step in range(settings.steps):
            optimizer.zero_grad()
            shifted = images
            if settings.jitter:
                dy, dx = torch.randint(-settings.jitter, settings.jitter + 1, (2,), generator=generator).tolist()
                shifted = torch.roll(images, shifts=(dy, dx), dims=(-2, -1))
            objective = channel_means(model, layer, shifted, channels)
            loss = -objective.sum() + settings.tv_weight * _total_variation(images).sum()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                if settings.blur_every and (step + 1) % settings.blur_every == 0:
                    kernel = _GAUSSIAN.to(images.dtype)[None, None].repeat(images.shape[1], 1, 1, 1)
                    images.copy_(
                        F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernel, groups=images.shape[1])
                    )
                images.clamp_(0.0, 1.0)
            if on_step is not None:
                on_step()
        with torch.no_grad():
            final = channel_means(model, layer, images, channels)
    finally:
        torch.set_num_threads(threads)
        for submodule, training in flags.items():
            submodule.train(training)
        for parameter, requires_grad in parameters:
            parameter.requires_grad_(requires_grad)
    return MaximizeResult(
        channels=channels,
        images=images.detach().numpy().copy(),
        start_activation=start.numpy().astype(np.float64),
        final_activation=final.numpy().astype(np.float64),
    )


def draw_maximized(result: MaximizeResult, *, title: str, tile_size: int = 56, per_row: int = 8) -> np.ndarray:
    """Each channel's optimised input in grey (black 0, white 1), with its mean activation on noise and after.

    Returns:
        A new ``(H, W)`` uint8 canvas of palette indices.
    """
    images = result.images[:, 0]
    count = len(images)
    rows = -(-count // per_row)
    columns = min(count, per_row)
    tiles = drawing.grey_tiles(images, tile_size)
    padded = np.full((rows * columns, *tiles.shape[1:]), drawing.colors.ZERO_INDEX, np.uint8)
    padded[:count] = tiles
    labels = [f"{value:+.2f}" for value in result.final_activation] + [""] * (rows * columns - count)
    names = [f"ch {c}" for c in result.channels] + [""] * (rows * columns - count)
    parts = []
    for row in range(rows):
        span = slice(row * columns, (row + 1) * columns)
        grid = drawing.tile_grid(padded[span][None], column_labels=names[span], under_labels=[labels[span]])
        parts.append(grid)
    subtitle = (
        f"inputs optimised from one seeded noise image to maximise each channel's mean activation (under each tile); "
        f"on the noise the channels average {result.start_activation.mean():+.2f}, on their images "
        f"{result.final_activation.mean():+.2f}"
    )
    return drawing.titled(title, drawing.stack(parts, gap=6), subtitle=subtitle)


def over_training_sheet(
    results: Sequence[tuple[int, MaximizeResult]], *, title: str, tile_size: int = 40
) -> np.ndarray:
    """One row per training step, one column per channel: how each channel's preferred input forms.

    Returns:
        A new ``(H, W)`` uint8 canvas of palette indices.
    """
    tiles = np.stack([drawing.grey_tiles(result.images[:, 0], tile_size) for _, result in results])
    channels = results[0][1].channels
    grid = drawing.tile_grid(
        tiles,
        row_labels=[f"step {step}" for step, _ in results],
        column_labels=[f"ch {c}" for c in channels],
        under_labels=[[f"{value:+.2f}" for value in result.final_activation] for _, result in results],
    )
    subtitle = (
        "each row optimised from the same seeded noise with the weights of that step; under each: mean activation"
    )
    return drawing.titled(title, grid, subtitle=subtitle)
