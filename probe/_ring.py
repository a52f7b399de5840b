"""A small ring of host slots between the training thread and a consumer thread.

The training thread hands a packed step to a free slot and records an event; it never waits for the
device. The consumer thread waits on that slot's event, hands the bytes on, and frees the slot. When
every slot is busy the training thread waits for one (never dropping a step) and :attr:`HostRing.waits`
counts how often that happened.

On CUDA the step is first copied device-to-device into the slot's staging buffer on the compute stream
(about 0.1 ms for 200 MB), then to the host on a separate copy stream that records the slot's event: the
next training kernels wait only for the device-to-device copy, not the whole transfer. Host slots are
page-locked with ``cudaHostRegister`` at their exact size (PyTorch's pinned allocator rounds every block
up to a power of two: 256 MB for a 190 MB step), and the events are ``blocking``, so the consumer sleeps
in ``synchronize()`` instead of spinning a core. Elsewhere the copy is synchronous and a
:class:`ReadyEvent` stands in; :class:`RingCalls` gathers the CUDA calls, so the staged logic runs, and
is tested, on a CPU with stand-ins.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import torch

from actrec.probe._graph import CudaCalls

log = logging.getLogger("actrec")


class Event(Protocol):
    def record(self) -> None: ...

    def synchronize(self) -> None: ...


class ReadyEvent:
    """The CPU stand-in for a CUDA event: a CPU copy is complete when ``copy_`` returns."""

    def record(self) -> None:
        pass

    def synchronize(self) -> None:
        pass


class RingCalls(CudaCalls):
    """The CUDA calls the staged ring makes (streams as for capture, plus events and page-locking)."""

    def new_event(self) -> Event:
        # blocking: synchronize() sleeps until the copy is done instead of busy-waiting a core.
        return torch.cuda.Event(blocking=True)

    def pin(self, host: torch.Tensor) -> bool:
        """Page-lock ``host`` in place, at its exact size; False when the driver refuses."""
        cudart = torch.cuda.cudart()
        nbytes = host.numel() * host.element_size()
        return cudart.cudaHostRegister(host.data_ptr(), nbytes, 0) == cudart.cudaError.success

    def unpin(self, host: torch.Tensor) -> None:
        torch.cuda.cudart().cudaHostUnregister(host.data_ptr())


class HostRing:
    """Slots of host memory, filled on the training thread and drained by one consumer thread.

    Args:
        nbytes: size of one packed step.
        slots: number of slots (steps in flight).
        device: the device the packed steps live on; pinned slots and CUDA events when it is CUDA.
        consume: called on the consumer thread with ``(slot_bytes, meta)``; the slot is reused after it
            returns, so it must copy what it keeps. An exception stops the ring: :attr:`error` holds it,
            later :meth:`put` calls are ignored, and :meth:`close` returns.
        event_factory: makes one event per slot (tests pass a controllable stand-in).
        calls: the CUDA calls of the staged path; on CUDA the real ones. Tests pass stand-ins to run the
            staged path (staging copy, copy stream, its events, page-locked slots) on a CPU.
    """

    def __init__(
        self,
        nbytes: int,
        slots: int,
        device: torch.device,
        consume: Callable[[torch.Tensor, Any], None],
        event_factory: Callable[[], Event] | None = None,
        calls: RingCalls | None = None,
    ) -> None:
        if calls is None and device.type == "cuda":
            calls = RingCalls()
        self._calls = calls
        self._device = device
        self.slot_bytes = nbytes
        """Bytes of one host slot: exactly one packed step."""
        self._host = [torch.empty(nbytes, dtype=torch.uint8) for _ in range(slots)]
        self._pinned: list[torch.Tensor] = []
        self._staging: list[torch.Tensor] = []
        self._copy_stream: Any = None
        if calls is not None:
            for host in self._host:
                if calls.pin(host):
                    self._pinned.append(host)
            if len(self._pinned) < slots:
                log.warning(
                    "actrec: %d of %d host slots could not be page-locked; copies into them wait for the device.",
                    slots - len(self._pinned),
                    slots,
                )
            self._staging = [torch.empty(nbytes, dtype=torch.uint8, device=device) for _ in range(slots)]
            self._copy_stream = calls.new_stream(device)
        if event_factory is None:
            event_factory = calls.new_event if calls is not None else ReadyEvent
        self._events = [event_factory() for _ in range(slots)]
        self._free: queue.Queue[int] = queue.Queue()
        for slot in range(slots):
            self._free.put(slot)
        self._full: queue.Queue[tuple[int | None, Any] | None] = queue.Queue()
        self._consume = consume
        self.waits = 0
        """How many times the training thread found every slot busy and waited."""
        self.wait_seconds = 0.0
        """Total time it waited."""
        self.error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._drain, name="actrec-ring", daemon=True)
        self._thread.start()

    def put(self, packed: torch.Tensor, meta: Any) -> bool:
        """Copy ``packed`` into a free slot and queue it; returns False when the ring has stopped."""
        if self.error is not None or self._closed:
            return False
        try:
            slot = self._free.get_nowait()
        except queue.Empty:
            self.waits += 1
            start = time.perf_counter()
            slot = None
            while slot is None:
                if self.error is not None:
                    return False
                try:
                    slot = self._free.get(timeout=0.1)
                except queue.Empty:
                    continue
            self.wait_seconds += time.perf_counter() - start
        assert slot is not None, "the loop above ends only with a free slot"
        if self._calls is None:
            self._host[slot].copy_(packed)
            self._events[slot].record()
        else:
            # The slot is free, so its earlier device-to-host copy is done and its staging buffer reusable.
            self._staging[slot].copy_(packed)  # device-to-device, on the compute stream
            self._copy_stream.wait_stream(self._calls.current_stream(self._device))
            with self._calls.stream(self._copy_stream):
                self._host[slot].copy_(self._staging[slot], non_blocking=True)
                self._events[slot].record()  # on the copy stream: the consumer waits for this copy only
        self._full.put((slot, meta))
        return True

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the consumer thread, in order with the queued steps (no slot needed)."""
        if self.error is None and not self._closed:
            self._full.put((None, fn))

    def drain(self) -> None:
        """Block until every queued slot has been consumed."""
        self._full.join()

    def close(self) -> None:
        """Consume what is queued, then stop the consumer thread. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._full.put(None)
        self._thread.join()
        pinned, self._pinned = self._pinned, []
        for event in self._events if pinned else ():
            event.synchronize()  # a ring stopped by an error skipped its waits: no copy may still be landing
        if self._calls is not None:  # only a ring with calls pinned anything
            for host in pinned:
                self._calls.unpin(host)

    def _drain(self) -> None:
        while True:
            item = self._full.get()
            try:
                if item is None:
                    return
                slot, meta = item
                if self.error is None:
                    try:
                        if slot is None:
                            meta()
                        else:
                            self._events[slot].synchronize()
                            self._consume(self._host[slot], meta)
                    except BaseException as error:  # reported by the owner; training goes on
                        self.error = error
                if slot is not None:
                    self._free.put(slot)
            finally:
                self._full.task_done()
