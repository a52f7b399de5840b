"""A small ring of host slots between the training thread and a consumer thread.

The training thread copies a packed step from the device into a free slot with one ``non_blocking``
copy and records an event; it never waits for the device. The consumer thread waits on that slot's
event, hands the bytes on, and frees the slot. When every slot is busy the training thread waits for
one (never dropping a step) and :attr:`HostRing.waits` counts how often that happened.

On CUDA the slots are pinned and the events are CUDA events. Elsewhere the copy is synchronous and a
:class:`ReadyEvent` stands in, so the same logic runs, and is tested, on a CPU.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import torch


class Event(Protocol):
    def record(self) -> None: ...

    def synchronize(self) -> None: ...


class ReadyEvent:
    """The CPU stand-in for a CUDA event: a CPU copy is complete when ``copy_`` returns."""

    def record(self) -> None:
        pass

    def synchronize(self) -> None:
        pass


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
    """

    def __init__(
        self,
        nbytes: int,
        slots: int,
        device: torch.device,
        consume: Callable[[torch.Tensor, Any], None],
        event_factory: Callable[[], Event] | None = None,
    ) -> None:
        cuda = device.type == "cuda"
        self._host = [torch.empty(nbytes, dtype=torch.uint8, pin_memory=cuda) for _ in range(slots)]
        if event_factory is None:
            event_factory = torch.cuda.Event if cuda else ReadyEvent
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
        self._host[slot].copy_(packed, non_blocking=True)
        self._events[slot].record()
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
