"""The recorder's probe pass as an engine: device-side buffers, no host synchronisation, optional CUDA graph.

One :class:`ProbeEngine` owns one packed byte buffer on the model's device. Every field of a recorded
step (each layer's activations, their finite peak and non-finite count, the model's output, chosen
parameters, the batch loss and accuracy) is a typed view into that buffer, so handing a step to the
host is a single ``non_blocking`` copy (see :mod:`actrec.probe._ring`). Nothing here calls ``.cpu()``,
``.item()`` or ``float()`` on a device tensor.

On a CPU the packed buffer already is host memory, so the per-layer statistics take the cheap route: one
``aminmax`` per layer, read back at no cost, and the NaN/inf count only when that finds a non-finite value.
What a pass touches per layer (views, kept-channel indices, modules) is looked up once, not per step.

Before each pass the engine checks that the model's parameters, buffers and hooks are the ones it was set
up on (:class:`actrec.probe._graph.ModelWatch`); eager passes run on a forked random number generator.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from actrec.names import KIND_MAPS, KIND_TOKENS, KIND_VECTOR
from actrec.probe._batch import ProbeForward, batch_for, batch_size, map_tensors
from actrec.probe._capture import capture, forked_rng, run_hooked
from actrec.probe._graph import ModelWatch, capture_replay
from actrec.probe._layers import ProbeError, modules_of, select_output

log = logging.getLogger("actrec")

_ALIGN = 8
_MAX_RECAPTURES = 3  # a model that keeps changing (pruning every epoch) is then run eagerly


@dataclass(frozen=True)
class Field:
    """One typed region of a packed step: ``key`` (``"<layer>/activations"``, ``"logits"`` ...), numpy-style
    ``dtype`` name, ``shape`` and byte ``offset``."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    offset: int

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=_TORCH_DTYPES[self.dtype]).element_size()


@dataclass(frozen=True)
class LayerLayout:
    """How one layer is stored: its kind, per-probe stored shape, the shape before any cap, kept channels."""

    name: str
    module_type: str
    output: str
    kind: str
    sample_shape: tuple[int, ...]
    full_shape: tuple[int, ...]
    channels: tuple[int, ...] | None
    params: dict[str, tuple[int, ...]]


_TORCH_DTYPES = {
    "float16": torch.float16,
    "float32": torch.float32,
    "int64": torch.int64,
}


def _stored_view(tensor: torch.Tensor) -> tuple[torch.Tensor, str]:
    """Reshape a ``(P, ...)`` activation to maps ``(P, C, H, W)``, tokens ``(P, T, D)`` or vector ``(P, D)``."""
    rank = tensor.ndim - 1
    if rank == 0:
        return tensor.reshape(tensor.shape[0], 1), KIND_VECTOR
    if rank == 1:
        return tensor, KIND_VECTOR
    if rank == 2:
        return tensor, KIND_TOKENS
    if rank == 3:
        return tensor, KIND_MAPS
    # (C, D, H, W ...) volumes: channels stay first, the middle dimensions stack into rows.
    return tensor.reshape(tensor.shape[0], tensor.shape[1], -1, tensor.shape[-1]), KIND_MAPS


def _weights_kept(module: nn.Module, cap: int | None) -> bool:
    """Whether a recorded layer's weights go into every step: all under no cap; else conv kernels and small layers.

    A dense layer's weights are most of an MLP's bytes per step (784 x 512 floats) and no picture uses them.
    """
    if cap is None:
        return True
    if any(isinstance(inner, nn.modules.conv._ConvNd) for inner in module.modules()):
        return True
    return sum(p.numel() for p in module.parameters()) <= cap


def kept_channels(count: int, cap: int | None) -> tuple[int, ...] | None:
    """Evenly spaced indices of ``cap`` of ``count`` channels (``None``: keep all)."""
    if cap is None or cap >= count:
        return None
    if cap == 1:
        return (0,)
    return tuple(sorted({round(i * (count - 1) / (cap - 1)) for i in range(cap)}))


class ProbeEngine:
    """Runs the probe pass into device buffers; optionally replays it as a CUDA graph.

    Args:
        model: the model to observe (its parameters' device is used).
        images: the probe batch (a ``(P, ...)`` tensor, or a tuple or dict of them); copied once to the device.
        layers: names from :func:`actrec.probe.resolve_layers`.
        dtype: ``"float16"`` or ``"float32"`` for stored activations.
        max_channels: keep at most this many channels (maps) or units (tokens, vectors) per layer.
        record_params: also copy each layer's parameters into the step.
        params_cap: with ``record_params``, copy only the parameters of layers that hold a convolution (their
            kernels are what the filter pictures show) or at most this many parameter values in all; ``None``
            copies every layer's.
        cuda_graph: on CUDA, capture the pass as a CUDA graph (checked bitwise against eager at capture,
            re-captured when the model's tensors or hooks change; see :mod:`actrec.probe._graph`).
        forward_context: entered around every pass and the capture, so the probes see the numbers training
            computes: the Lightning precision plugin's ``forward_context`` (autocast under ``16-mixed`` and
            ``bf16-mixed``, which Lightning applies only around ``*_step``).
        forward: ``forward(model, batch)``, how the probe batch reaches the model (default: its input part).

    Raises:
        ProbeError: a layer's output does not start with one row per probe.
    """

    def __init__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        layers: Sequence[str],
        dtype: str = "float16",
        max_channels: int | None = None,
        record_params: bool = False,
        cuda_graph: bool = True,
        forward_context: Callable[[], AbstractContextManager[object]] = nullcontext,
        forward: ProbeForward | None = None,
        params_cap: int | None = None,
    ) -> None:
        self.model = model
        self._forward_context = forward_context
        self.layers = list(layers)
        self.dtype = dtype
        parameter = next(model.parameters(), None)
        self.device = parameter.device if parameter is not None else torch.device("cpu")
        # Any batch structure (tensor, tuple, dict), copied once to the device in the model's dtype.
        self.images = map_tensors(batch_for(model, images), lambda tensor: tensor.clone())
        self._source_images = self.images
        """The probes as first placed: a model cast to 16 bits and back gets copies of these, not of rounded ones."""
        self.num_probes = batch_size(self.images)
        self.forward = forward
        modules = modules_of(model, self.layers)
        self._modules = modules
        # Parameters are looked up by name at every pass, not held: SWA, pruning and `.data` assignments
        # replace the tensors, and a held reference would keep copying the old ones.
        self._params = {
            layer: (
                module,
                [name for name, _ in module.named_parameters()]
                if record_params and _weights_kept(module, params_cap)
                else [],
            )
            for layer, (module, _) in modules.items()
        }

        with forward_context():
            seen = capture(model, self.images, self.layers, forward)
        if seen.output.ndim == 0 or seen.output.shape[0] != self.num_probes:
            raise ProbeError(
                f"the model's output has shape {tuple(seen.output.shape)}, not one row per probe "
                f"({self.num_probes}); pass probe_forward returning the batch dimension first."
            )
        if dtype == "float16" and any(t.dtype == torch.bfloat16 for t in seen.activations.values()):
            # bfloat16 reaches 3e38, float16 only 65,504: a larger value would be stored as inf, silently.
            self.dtype = dtype = "float32"
            log.warning(
                "actrec: storing activations as float32, not float16: layers compute in bfloat16, whose values "
                "above 65,504 would become inf in float16."
            )
        self.layouts: dict[str, LayerLayout] = {}
        self._channels: dict[str, torch.Tensor | None] = {}
        for layer, tensor in seen.activations.items():
            if tensor.ndim == 0 or tensor.shape[0] != self.num_probes:
                raise ProbeError(
                    f"layer {layer!r} returned shape {tuple(tensor.shape)}, not one row per probe "
                    f"({self.num_probes}); choose an output whose first dimension is the batch."
                )
            stored, kind = _stored_view(tensor)
            channel_dim = 1 if kind == KIND_MAPS else stored.ndim - 1
            channels = kept_channels(stored.shape[channel_dim], max_channels)
            shape = list(stored.shape[1:])
            if channels is not None:
                shape[channel_dim - 1] = len(channels)
                self._channels[layer] = torch.tensor(channels, device=self.device)
            else:
                self._channels[layer] = None
            module, selector = modules[layer]
            self.layouts[layer] = LayerLayout(
                name=layer,
                module_type=type(module).__name__,
                output=selector,
                kind=kind,
                sample_shape=tuple(shape),
                full_shape=tuple(tensor.shape[1:]),
                channels=channels,
                params={name: tuple(module.get_parameter(name).shape) for name in self._params[layer][1]},
            )
        self.output_shape = (self.num_probes, int(seen.output[0].numel()) if seen.output.ndim else 1)
        self.output_full_shape = tuple(seen.output.shape)  # before flattening to (P, K), for deciding the task

        self.fields: list[Field] = []
        offset = 0

        def add(key: str, field_dtype: str, shape: tuple[int, ...]) -> None:
            nonlocal offset
            field = Field(key, field_dtype, shape, offset)
            self.fields.append(field)
            offset += -(-field.nbytes // _ALIGN) * _ALIGN

        for layer, layout in self.layouts.items():
            add(f"{layer}/activations", dtype, (self.num_probes, *layout.sample_shape))
            add(f"{layer}/abs_max", "float32", ())
            add(f"{layer}/nonfinite", "int64", ())
            for name, param_shape in layout.params.items():
                add(f"{layer}/params/{name}", "float32", param_shape)
        add("logits", "float32", self.output_shape)
        add("batch_loss", "float32", ())
        add("batch_acc", "float32", ())
        self.nbytes = offset
        self.packed = torch.zeros(max(offset, _ALIGN), dtype=torch.uint8, device=self.device)
        self.views = {field.key: self._view(self.packed, field) for field in self.fields}
        # Resolved once: the pass runs every step, and per-layer string keys and dict lookups add up.
        self._targets = {
            layer: (
                self.views[f"{layer}/activations"],
                self.views[f"{layer}/abs_max"],
                self.views[f"{layer}/nonfinite"],
                self._channels[layer],
                1 if layout.kind == KIND_MAPS else len(layout.sample_shape),
            )
            for layer, layout in self.layouts.items()
        }
        self._param_targets = self._parameter_owners()
        self._host_statistics = self.device.type == "cpu"
        self._replay: Callable[[], None] | None = None
        self.graph_note = "eager (not on CUDA)" if self.device.type != "cuda" else "eager (graphs turned off)"
        self._watch = ModelWatch(model)
        self.model_changes = 0
        """How many times the model's tensors or hooks were found changed before a pass."""
        self._recaptures = 0
        self._said: set[str] = set()
        if cuda_graph and self.device.type == "cuda":
            self._capture_graph()

    @staticmethod
    def _view(buffer: torch.Tensor, field: Field) -> torch.Tensor:
        region = buffer[field.offset : field.offset + field.nbytes]
        return region.view(_TORCH_DTYPES[field.dtype]).view(field.shape)

    def host_views(self, host: torch.Tensor) -> dict[str, torch.Tensor]:
        """Typed views of every field in a host copy of :attr:`packed`."""
        return {field.key: self._view(host, field) for field in self.fields}

    # -- the pass ----------------------------------------------------------------------------------------

    def _store(self, layer: str, tensor: torch.Tensor) -> None:
        view, peak, nonfinite, channels, channel_dim = self._targets[layer]
        stored, _ = _stored_view(tensor)
        if channels is not None:
            stored = stored.index_select(channel_dim, channels)
        view.copy_(stored)
        if not view.numel():
            nonfinite.zero_()
            return
        if self._host_statistics:
            # Host memory: reading two numbers back costs nothing, and when both are finite so is every value.
            low, high = (float(value) for value in torch.aminmax(view))
            if math.isfinite(low) and math.isfinite(high):
                peak.fill_(max(-low, high))
                nonfinite.zero_()
                return
        finite = torch.isfinite(view)
        peak.copy_(torch.where(finite, view, 0).abs().amax())
        nonfinite.copy_((~finite).sum())

    def _parameter_owners(self) -> list[tuple[torch.Tensor, nn.Module, str]]:
        """Each recorded parameter's view, the submodule holding it and its attribute name there.

        Read through the attribute at every pass, not held: SWA, pruning and ``.data`` assignments replace the
        tensors (pruning's masked weight is a plain attribute). The submodules are looked up again whenever the
        model's children or hooks change (:meth:`_check_model`)."""
        targets = []
        for layer, (module, names) in self._params.items():
            for name in names:
                owner, _, attribute = name.rpartition(".")
                targets.append(
                    (self.views[f"{layer}/params/{name}"], module.get_submodule(owner) if owner else module, attribute)
                )
        return targets

    def _forward(self) -> None:
        """The pass as captured: no RNG fork (a graph cannot read the generator's state while capturing)."""
        with self._forward_context():
            output = run_hooked(
                self.model,
                self.images,
                self.layers,
                self._store,
                self.forward,
                fork_rng=False,
                modules=self._modules,
                submodules=self._watch.modules,
                placed=True,
            )
        output = select_output(output, "", "the model's output")
        self.views["logits"].copy_(output.reshape(self.output_shape))
        for view, owner, attribute in self._param_targets:
            view.copy_(getattr(owner, attribute).detach())

    def _eager(self) -> None:
        """The pass run eagerly, on a forked generator: random numbers in an eval forward leave training's alone."""
        with forked_rng(self.device):
            self._forward()

    def run(
        self, batch_loss: torch.Tensor | float | None = None, batch_acc: torch.Tensor | float | None = None
    ) -> torch.Tensor:
        """Compute one step into :attr:`packed` (asynchronously on CUDA) and return it."""
        self._check_model()
        if self._replay is not None:
            self._replay()
        else:
            self._eager()
        self._set_scalar("batch_loss", batch_loss)
        self._set_scalar("batch_acc", batch_acc)
        return self.packed

    def _set_scalar(self, key: str, value: torch.Tensor | float | None) -> None:
        view = self.views[key]
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            if value.device == view.device:
                view.copy_(value.detach().reshape(()))  # on the device: no synchronisation
            elif value.device.type == "cpu":
                view.fill_(float(value))  # a host value: reading it waits for nothing on the device
            else:
                view.copy_(value.detach().reshape(()), non_blocking=True)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            view.fill_(float(value))
        else:
            view.fill_(float("nan"))

    # -- CUDA graph ----------------------------------------------------------------------------------

    def _check_model(self) -> None:
        """Compare the model's tensors and hooks with those the pass was set up on (microseconds); on a change
        re-capture the graph (a replay would read stale or freed memory), or run eagerly, and say so once."""
        change = self._watch.changed()
        if change is None:
            return
        self.model_changes += 1
        self._param_targets = self._parameter_owners()
        # A model cast or moved takes its probes along: placed once here, not looked up every pass.
        self.images = batch_for(self.model, self._source_images)
        if self._replay is None:
            self._say_once(
                "changed",
                logging.INFO,
                "actrec: the model's tensors or hooks changed (%s); the eager probe pass follows them.",
                change,
            )
            return
        self._replay = None
        if self._recaptures >= _MAX_RECAPTURES:
            self.graph_note = f"eager (the model changed {self.model_changes} times)"
            self._say_once(
                "eager",
                logging.WARNING,
                "actrec: the probe pass runs eagerly: the model keeps changing (%s).",
                change,
            )
            return
        self._recaptures += 1
        self._say_once(
            "changed",
            logging.WARNING,
            "actrec: the model's tensors or hooks changed (%s); re-capturing the probe pass's graph.",
            change,
        )
        self.adopt_graph(*self._graph_maker)

    def _say_once(self, topic: str, level: int, message: str, *args: object) -> None:
        if topic not in self._said:
            self._said.add(topic)
            log.log(level, message, *args)

    def _capture_graph(self) -> None:
        """Capture the pass as a CUDA graph; keep it only if a replay equals an eager pass bitwise."""
        self.adopt_graph(lambda forward: capture_replay(forward, self.device), "CUDA graph")

    def adopt_graph(self, make_replay: Callable[[Callable[[], None]], Callable[[], None]], name: str) -> bool:
        """Replace the eager pass by ``make_replay(forward)``'s replay if it captures and a replay equals an
        eager pass bitwise; otherwise stay eager and say why in one log line. Returns whether it was adopted.

        ``make_replay`` is the CUDA graph capture on CUDA; tests pass stand-ins to check the decisions on a CPU.
        """
        self._graph_maker = (make_replay, name)
        try:
            replay = make_replay(self._forward)
            replay()
            replayed = self.packed.clone()
            self._eager()
            eager = self.packed.clone()
        except Exception as error:  # capture refuses many things (host syncs, CPU work); eager always works
            self._replay = None
            self.graph_note = f"eager ({name} capture failed: {type(error).__name__})"
            self._say_once(
                "capture", logging.WARNING, "actrec: the probe pass runs eagerly: %s capture failed (%s).", name, error
            )
            return False
        if not torch.equal(replayed, eager):  # a deliberate synchronisation, once, at setup
            self._replay = None
            field, difference = self._largest_difference(replayed, eager)
            self.graph_note = f"eager (a {name} replay differed from an eager pass)"
            self._say_once(
                "differed",
                logging.WARNING,
                "actrec: the probe pass runs eagerly: a %s replay differed from an eager pass, by up to %.3g in "
                "%s; the model draws random numbers in eval mode or uses non-deterministic atomics "
                "(index_add_, scatter_add_).",
                name,
                difference,
                field,
            )
            return False
        self._replay = replay
        self.graph_note = name
        return True

    def _largest_difference(self, replayed: torch.Tensor, eager: torch.Tensor) -> tuple[str, float]:
        """The field whose replayed and eager values differ most, and by how much (non-finite counts as inf)."""
        worst = ("no field", 0.0)
        for field in self.fields:
            region = slice(field.offset, field.offset + field.nbytes)
            if torch.equal(replayed[region], eager[region]):  # bytes: a NaN equals itself
                continue
            a, b = self._view(replayed, field).double(), self._view(eager, field).double()
            difference = float((a - b).abs().nan_to_num(nan=math.inf).max()) if a.numel() else 0.0
            if difference >= worst[1] or worst[0] == "no field":
                worst = (field.key, difference)
        return worst
