"""Capturing the probe pass as a CUDA graph without leaving the process broken, and noticing when it goes stale.

A CUDA graph replays kernels on the addresses it captured. Two things follow:

* Capture must not fail half-way: a forward that synchronises with the host (``.item()``, ``nonzero``,
  boolean masks, ``torch.tensor(list, device=...)``) makes PyTorch throw before its own cleanup, leaving
  the thread on the side stream and the allocator in capture mode. :func:`capture_replay` tries one
  eager pass with synchronisation errors turned on first, captures with ``capture_error_mode=
  "thread_local"`` on a side stream it passes explicitly, restores the current stream in ``finally``, and
  after any capture error refuses every later capture in the process.
* A replay reads stale memory when the model's tensors are replaced (Lightning's SWA swaps BatchNorm
  buffers, ``ModelPruning`` re-parametrises weights and adds a forward pre-hook). :class:`ModelWatch`
  records each parameter's and buffer's address, shape and dtype and the hook keys; the engine asks it
  before each pass, and it names what changed.

The CUDA calls go through :class:`CudaCalls`, so the decisions run, and are tested, on a CPU with a stand-in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch
from torch import nn

_capture_failure: str | None = None
"""The first capture error in this process; once set, no further capture is tried."""


class CaptureRefused(RuntimeError):
    """Capture was not tried: the forward synchronises with the host, or an earlier capture failed."""


class CudaCalls:
    """The CUDA calls a capture makes, in one place so tests can substitute a stand-in."""

    def current_stream(self, device: torch.device) -> Any:
        return torch.cuda.current_stream(device)

    def set_stream(self, stream: Any) -> None:
        torch.cuda.set_stream(stream)

    def new_stream(self, device: torch.device) -> Any:
        return torch.cuda.Stream(device)

    def stream(self, stream: Any) -> AbstractContextManager[Any]:
        return torch.cuda.stream(stream)

    def new_graph(self) -> Any:
        return torch.cuda.CUDAGraph()

    def graph(self, graph: Any, stream: Any) -> AbstractContextManager[Any]:
        # "thread_local": another thread's CUDA work (a DataLoader's pin-memory thread) is not an error.
        return torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local")

    def get_sync_debug_mode(self) -> int:
        return torch.cuda.get_sync_debug_mode()

    def set_sync_debug_mode(self, mode: int | str) -> None:
        torch.cuda.set_sync_debug_mode(mode)


def capture_failure() -> str | None:
    """Why capture is off for the rest of this process (``None`` while it is allowed)."""
    return _capture_failure


@contextmanager
def _syncs_raise(calls: CudaCalls) -> Iterator[None]:
    previous = calls.get_sync_debug_mode()
    calls.set_sync_debug_mode("error")
    try:
        yield
    finally:
        calls.set_sync_debug_mode(previous)


def capture_replay(
    forward: Callable[[], None], device: torch.device, calls: CudaCalls | None = None
) -> Callable[[], None]:
    """Capture ``forward`` as a CUDA graph on ``device`` and return its replay.

    Raises:
        CaptureRefused: the forward synchronises with the host, or an earlier capture in this process failed.
        Exception: whatever the capture raised; capture is then off for the rest of the process.
    """
    global _capture_failure
    calls = calls or CudaCalls()
    if _capture_failure is not None:
        raise CaptureRefused(f"an earlier capture in this process failed ({_capture_failure})")
    try:
        with _syncs_raise(calls):
            forward()
    except Exception as error:  # the recorder wraps the forward's RuntimeError in its own error type
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CaptureRefused(f"the forward synchronises with the host ({first_line})") from None
    previous = calls.current_stream(device)
    side = calls.new_stream(device)
    capturing = False
    try:
        side.wait_stream(previous)
        with calls.stream(side):
            for _ in range(2):  # warm up the allocator and library handles outside the capture
                forward()
        previous.wait_stream(side)
        graph = calls.new_graph()
        capturing = True
        with calls.graph(graph, side):
            forward()
    except BaseException as error:
        if capturing:
            _capture_failure = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error) else ''}"
        raise
    finally:
        # A failed capture_end throws before torch.cuda.graph leaves its stream context.
        calls.set_stream(previous)
    return graph.replay


class ModelWatch:
    """Notices when a model's tensors or hooks change: each parameter's and buffer's address, shape and dtype,
    each module's children and forward (pre-)hook keys. :meth:`changed` reads the modules' own dictionaries,
    not ``named_parameters``: 0.6 ms for a ResNet-50 (320 tensors) on a loaded 2-core VM."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modules = list(model.modules())
        """``list(model.modules())`` as of the last check (the probe pass switches their ``training`` flags)."""
        self._state = self._fingerprint()
        self._inventory = model_inventory(model)

    def _fingerprint(self) -> tuple[list[object], ...]:
        modules = self.modules
        tensors = [t for m in modules for d in (m._parameters, m._buffers) for t in d.values() if t is not None]
        return (
            [t.data_ptr() for t in tensors],
            [t.shape for t in tensors],
            [t.dtype for t in tensors],
            [
                key
                for m in modules
                for d in (m._parameters, m._buffers, m._forward_hooks, m._forward_pre_hooks)
                for key in d
            ],
            [id(child) for m in modules for child in m._modules.values()],
        )

    def changed(self) -> str | None:
        """What changed since the last call (or construction), in a few words; ``None`` when nothing did."""
        state = self._fingerprint()
        if state == self._state:
            return None
        self.modules = list(self.model.modules())
        self._state = self._fingerprint()
        inventory = model_inventory(self.model)
        change, self._inventory = describe_change(self._inventory, inventory), inventory
        return change


def model_inventory(model: nn.Module) -> dict[str, tuple[object, ...]]:
    """Each parameter's and buffer's address, shape, dtype and device, and each module's hook keys, by name."""
    entries: dict[str, tuple[object, ...]] = {}
    for kind, named in (("parameter", model.named_parameters), ("buffer", model.named_buffers)):
        for name, tensor in named(remove_duplicate=False):
            entries[f"{kind} {name}"] = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype, tensor.device)
    for name, module in model.named_modules(remove_duplicate=False):
        if module._forward_hooks or module._forward_pre_hooks:
            hooks = (tuple(module._forward_hooks), tuple(module._forward_pre_hooks))
            entries[f"hooks of {name or 'the model'}"] = hooks
    return entries


def describe_change(before: dict[str, tuple[object, ...]], after: dict[str, tuple[object, ...]]) -> str:
    """What changed between two fingerprints, in a few words (the first change and how many more)."""
    changes = []
    for key in before.keys() - after.keys():
        changes.append(f"{key} is gone")
    for key in after.keys() - before.keys():
        changes.append(f"{key} is new" if key.startswith("hooks") else f"{key} appeared")
    for key in before.keys() & after.keys():
        old, new = before[key], after[key]
        if old == new:
            continue
        if key.startswith("hooks"):
            changes.append(f"{key} changed")
        elif old[1:] != new[1:]:
            changes.append(f"{key} changed from {old[1]} {old[2]} to {new[1]} {new[2]}")
        else:
            changes.append(f"{key} was replaced by a new tensor")
    changes.sort()
    if not changes:
        return "nothing"
    more = len(changes) - 1
    return changes[0] + (f" (and {more} more change{'s' if more > 1 else ''})" if more else "")
