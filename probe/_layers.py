"""Which modules of a model are "the layers", and how a layer name picks one tensor out of a module's output."""

from __future__ import annotations

import ast
import dataclasses
import fnmatch
import re
from collections.abc import Collection, Sequence
from typing import Any

import torch
from torch import nn

from actrec.errors import UserError

_ACTIVATIONS = (
    nn.Tanh,
    nn.ReLU,
    nn.Sigmoid,
    nn.GELU,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardtanh,
    nn.ReLU6,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Softplus,
    nn.PReLU,
)
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LayerNorm)
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_RECURRENT = (nn.RNNBase,)
_BLOCK_SUFFIXES = ("Block", "Bottleneck", "EncoderLayer", "DecoderLayer")
_SELECTOR = re.compile(r"^(?P<name>[^\[\]]*)(?P<selector>(\[[^\[\]]+\])+)$")


class ProbeError(UserError):
    """A model, layer name or probe set cannot be used; the message is one sentence for the user."""


def torch_reason(error: BaseException) -> str:
    """The first line of a torch error, without its trailing full stop, to quote inside a sentence.

    A first line that only introduces the cause (a compiler's "backend='inductor' raised:") is followed by
    the cause's own first line, so the sentence never ends at the colon.
    """
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    reason = lines[0] if lines else type(error).__name__
    if reason.endswith(":"):
        cause = lines[1] if len(lines) > 1 else None
        if cause is None and error.__cause__ is not None:
            cause = torch_reason(error.__cause__)
        reason = f"{reason} {cause}" if cause else reason.rstrip(":")
    return reason.rstrip(".")


def split_selector(layer: str) -> tuple[str, str]:
    """Split ``"lstm[0]"`` into the module name ``"lstm"`` and the output selector ``"[0]"`` ("" when none)."""
    match = _SELECTOR.match(layer)
    if match is None or not match.group("name"):
        return layer, ""
    return match.group("name"), match.group("selector")


def _selector_keys(selector: str) -> list[int | str]:
    keys: list[int | str] = []
    for part in re.findall(r"\[([^\[\]]+)\]", selector):
        try:
            key = ast.literal_eval(part.strip())
        except (ValueError, SyntaxError):
            key = part.strip()
        if not isinstance(key, (int, str)):
            raise ProbeError(f"output selector [{part}] must be an index like [0] or a key like ['x'].")
        keys.append(key)
    return keys


def select_output(output: Any, selector: str, layer: str = "") -> torch.Tensor:
    """Pick one tensor from a module's output: ``selector`` ``""`` takes the first tensor found.

    Tuples and lists take indices (``"[0]"``), dicts and dataclasses take keys (``"['hidden']"``); several
    selectors chain (``"[0][1]"``).

    Raises:
        ProbeError: the selector does not fit the output, or no tensor is found.
    """
    what = layer or "the module"
    if not selector:
        found = _first_tensor(output)
        if found is None:
            raise ProbeError(f"layer {what!r} returned {type(output).__name__} holding no tensor; record another one.")
        return found
    value = output
    for key in _selector_keys(selector):
        try:
            value = getattr(value, key) if isinstance(key, str) and dataclasses.is_dataclass(value) else value[key]
        except (KeyError, IndexError, TypeError, AttributeError):
            raise ProbeError(
                f"layer {what!r}: output selector {selector} does not fit its output ({_describe(output)})."
            ) from None
    if not isinstance(value, torch.Tensor):
        found = _first_tensor(value)
        if found is None:
            raise ProbeError(f"layer {what!r}: output selector {selector} picks {type(value).__name__}, not a tensor.")
        value = found
    return value


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = [getattr(value, field.name) for field in dataclasses.fields(value)]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _describe(output: Any) -> str:
    if isinstance(output, torch.Tensor):
        return f"a tensor of shape {tuple(output.shape)}"
    if isinstance(output, (tuple, list)):
        return f"a {type(output).__name__} of {len(output)}"
    if isinstance(output, dict):
        return f"a dict with keys {', '.join(map(repr, output))}"
    return type(output).__name__


def resolve_layers(model: nn.Module, layers: Sequence[str] | None, ran: Collection[str] | None = None) -> list[str]:
    """Turn layer names and glob patterns into qualified module names, in the order the model lists them.

    Args:
        model: the model (any ``nn.Module``).
        layers: qualified names (``"features.3"``), glob patterns (``"net.conv*"``: a pattern means the
            outermost matching modules, not every leaf inside them), each optionally followed by an output
            selector (``"lstm[0]"``); ``None`` takes :func:`default_layers`.
        ran: for ``None``, the names of the modules that ran in a probe pass (:func:`modules_that_ran`);
            modules that never run (a GAN's discriminator under generator probes) are never defaults.

    Returns:
        The chosen names, each with its selector when one was given.

    Raises:
        ProbeError: a name matches no module (the message lists the candidates), or ``None`` finds nothing.
    """
    names = [name for name, _ in model.named_modules() if name]
    if layers is None:
        return default_layers(model, ran)
    chosen: list[str] = []
    for requested in layers:
        # "net.conv[12]" is a glob when it matches as one; otherwise "[...]" is an output selector.
        pattern, selector = requested, ""
        matches = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
        if not matches:
            pattern, selector = split_selector(requested)
            if selector:
                _selector_keys(selector)  # validate early
            matches = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
        if any(ch in pattern for ch in "*?["):
            matches = [m for m in matches if not any(m.startswith(o + ".") for o in matches if o != m)]
        if not matches:
            raise ProbeError(f"no module matches layer {pattern!r}; available: {_candidates(model)}.")
        chosen.extend(m + selector for m in matches if m + selector not in chosen)
    order = {name: i for i, name in enumerate(names)}
    return sorted(chosen, key=lambda layer: order[split_selector(layer)[0]])


def default_layers(model: nn.Module, ran: Collection[str] | None = None) -> list[str]:
    """The modules a person would call the model's layers.

    In this order of preference: repeated blocks (the items of a ``ModuleList`` or ``Sequential`` of
    blocks of one class, such as GPT-2's ``transformer.h``, BERT's ``encoder.layer`` or timm's
    ``blocks``; residual blocks of a ResNet; the outermost non-container modules whose class occurs more
    than once side by side in a chain, or is named ``*Block``/``*Bottleneck``/``*EncoderLayer``), together
    with any recurrent module (recorded with selector ``[0]``, its output sequence); else every block
    holding one convolution, taken after its nonlinearity (and after its batch norm); else the same for
    linear layers, leaving out the last one (the model's output, which the store keeps as logits anyway).

    A module nested alone inside a block (a squeeze-excite gate, whose output is not the block's) is never
    a default, however often its class occurs.

    Args:
        model: any ``nn.Module``.
        ran: when given, only these modules (names from :func:`modules_that_ran`) can be defaults.

    Raises:
        ProbeError: nothing sensible is found; the message lists the candidates.
    """
    if ran is not None:
        ran = set(ran)
    found = _repeated_blocks(model, ran) + [
        name + "[0]"
        for name, module in model.named_modules()
        if name and isinstance(module, _RECURRENT) and (ran is None or name in ran)
    ]
    if found:
        order = {name: i for i, (name, _) in enumerate(model.named_modules())}
        # A recurrent module inside a chosen block is already covered by the block.
        found = [f for f in found if not any(split_selector(f)[0].startswith(o + ".") for o in found if o != f)]
        return sorted(found, key=lambda layer: order[split_selector(layer)[0]])
    found = _single_layer_blocks(model, nn.modules.conv._ConvNd, ran)
    if found:
        return found
    found = _single_layer_blocks(model, nn.Linear, ran)
    if len(found) > 1:
        return found[:-1]
    raise ProbeError(
        f"found no blocks, convolutions or hidden linear layers to record by default in {type(model).__name__}; "
        f"name the layers, e.g. from: {_candidates(model)}."
    )


def _candidates(model: nn.Module, limit: int = 30) -> str:
    names = [name for name, _ in model.named_modules() if name]
    shown = ", ".join(names[:limit])
    return shown + (f" ... ({len(names) - limit} more)" if len(names) > limit else "") if names else "(none)"


def _repeated_blocks(model: nn.Module, ran: set[str] | None = None) -> list[str]:
    modules = dict(model.named_modules())
    listed = _listed_blocks(model)
    counts: dict[type, int] = {}
    for name, module in modules.items():
        if name and _is_block(module):
            counts[type(module)] = counts.get(type(module), 0) + 1
    chosen: list[str] = []
    for name, module in modules.items():
        if not name or (ran is not None and name not in ran):
            continue
        if name not in listed:
            if not _is_block(module):
                continue
            named_block = type(module).__name__.endswith(_BLOCK_SUFFIXES)
            if not named_block and (counts[type(module)] < 2 or not _in_chain(modules, name, module)):
                continue
        if any(name.startswith(outer + ".") for outer in chosen):
            continue
        chosen.append(name)
    return chosen


def _listed_blocks(model: nn.Module) -> set[str]:
    """Items of a ``ModuleList``/``Sequential`` of two or more blocks of one class that hold parameters
    (GPT-2's ``transformer.h.N``, whose layers are not ``nn.Linear``, count too)."""
    found: set[str] = set()
    for name, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)):
            continue
        items = list(module.named_children())
        kinds = {type(child) for _, child in items}
        if len(items) < 2 or len(kinds) != 1 or isinstance(items[0][1], _CONTAINERS):
            continue
        child = items[0][1]
        if not list(child.children()) or next(child.parameters(), None) is None:
            continue
        found.update(f"{name}.{item}" if name else item for item, _ in items)
    return found


def _in_chain(modules: dict[str, nn.Module], name: str, module: nn.Module) -> bool:
    """Whether a module is a link of a chain: under a container or the model itself, or beside a sibling of its
    own class. A module alone of its class inside a block (a squeeze-excite gate) is a part, not a layer."""
    parent_name = name.rpartition(".")[0]
    parent = modules[parent_name]
    if not parent_name or isinstance(parent, _CONTAINERS):
        return True
    return sum(type(child) is type(module) for child in parent.children()) > 1


def _is_block(module: nn.Module) -> bool:
    """A user-level block: has children, is not a bare container, and holds a weighted layer."""
    if isinstance(module, _CONTAINERS) or not list(module.children()):
        return False
    if isinstance(module, (nn.MultiheadAttention, *_RECURRENT)):
        return False
    return any(isinstance(m, (nn.modules.conv._ConvNd, nn.Linear, *_RECURRENT)) for m in module.modules())


def _single_layer_blocks(root: nn.Module, kind: type[nn.Module], ran: set[str] | None = None) -> list[str]:
    """The outermost modules holding exactly one weighted layer, of ``kind``; a bare layer in a Sequential is
    taken after the norm and nonlinearity that follow it."""
    found: list[str] = []
    weighted = (nn.modules.conv._ConvNd, nn.Linear, *_RECURRENT)

    def count(module: nn.Module) -> int:
        return sum(isinstance(m, weighted) for m in module.modules())

    def visit(prefix: str, module: nn.Module) -> None:
        children = list(module.named_children())
        for index, (child_name, child) in enumerate(children):
            name = f"{prefix}{child_name}"
            if ran is not None and name not in ran:
                continue
            n = count(child)
            if n == 1 and any(isinstance(m, kind) for m in child.modules()):
                if isinstance(child, kind) and isinstance(module, nn.Sequential):
                    # A flat Sequential(conv, BN, ReLU, ...): record after the norm and the nonlinearity.
                    for follower_name, follower in children[index + 1 :]:
                        if not isinstance(follower, (*_NORMS, *_ACTIVATIONS)):
                            break
                        if ran is not None and f"{prefix}{follower_name}" not in ran:
                            break
                        name = f"{prefix}{follower_name}"
                found.append(name)
            elif n > 1:
                visit(f"{name}.", child)

    visit("", root)
    return found


def modules_of(model: nn.Module, layers: Sequence[str]) -> dict[str, tuple[nn.Module, str]]:
    """Map each layer name (with its selector) to ``(module, selector)``.

    Raises:
        ProbeError: a name is not a module of ``model``.
    """
    modules = dict(model.named_modules())
    found = {}
    for layer in layers:
        name, selector = split_selector(layer)
        if name not in modules or not name:
            raise ProbeError(f"no module matches layer {name!r}; available: {_candidates(model)}.")
        found[layer] = (modules[name], selector)
    return found
