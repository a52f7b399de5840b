"""A writer process: HDF5 writing out of the training process, fed rows through shared memory.

Why a process: h5py holds the interpreter lock while it writes and compresses, which takes time from
the training thread, and HDF5 does not recover from a failed write (a full disk leaves it unable to
close the file, and it can crash the process at exit). In a child process neither reaches training.

The parent (:class:`WriterProcess`) copies each packed row into the next slot of a ring in a shared-memory file
and raises a counter there (no message, no system call); the child looks for new rows every 20 ms and appends the
rows it holds, straight from their slots, with :meth:`StoreWriter.append_block`: as one block every
``flush_every`` rows (or once it holds every slot), and once a row has waited a second (in whole chunks where it
can: :func:`~actrec.store.writer.rows_due`). It flushes each block, then raises its own counter to give the
block's slots back. Scalars, flushes, closing and errors still go as JSON lines through the child's pipes.
When the parent dies, the child sees its input end, writes what it received, closes the file and exits.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from actrec.store._schema import StoreError

_START_TIMEOUT = 120.0


def _shared_folder() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


_POLL_SECONDS = 0.02
"""How often the child looks for rows in the shared memory: no message or wake-up per row, so handing a row over
costs training a copy and two stores, not a system call (waking another process is an inter-processor interrupt,
which on a VM costs more than the copy)."""
_ALIGN = 64


class _SharedRows:
    """The shared memory both processes map: two counters, each slot's step, epoch and wall time, then the rows.

    Row ``n`` (counted from 0 over the writer's life) goes into slot ``n % slots``. The parent writes the row and its
    step into the slot, then raises ``handed`` to ``n + 1``; the child takes rows up to ``handed``, and raises
    ``freed`` once they are on disk. Each counter has one writer and is one aligned 8-byte store, so neither side
    takes a lock or makes a system call to hand a row over or to take a slot back.
    """

    def __init__(self, buffer: Any, slots: int, row_bytes: int) -> None:
        self.slots = slots
        self.counters = np.frombuffer(buffer, dtype=np.int64, count=2, offset=0)
        self.steps = np.frombuffer(buffer, dtype=np.int64, count=2 * slots, offset=_ALIGN).reshape(slots, 2)
        self.walls = np.frombuffer(buffer, dtype=np.float64, count=slots, offset=_ALIGN + 16 * slots)
        self.rows = np.frombuffer(
            buffer, dtype=np.uint8, count=slots * row_bytes, offset=self.rows_offset(slots)
        ).reshape(slots, row_bytes)

    @staticmethod
    def rows_offset(slots: int) -> int:
        return -(-(_ALIGN + 24 * slots) // _ALIGN) * _ALIGN

    @classmethod
    def size(cls, slots: int, row_bytes: int) -> int:
        return cls.rows_offset(slots) + slots * row_bytes

    @property
    def handed(self) -> int:
        return int(self.counters[0])

    @property
    def freed(self) -> int:
        return int(self.counters[1])


_NICENESS = 10
"""The writer child runs at this niceness: on a machine whose cores training keeps busy (a 2-core VM where torch
runs two compute threads) the writer takes the cores' idle moments instead of time from training's threads. A
writer that falls behind fills its slots and training waits for one (counted in ``waits``), so the child never
starves for long; at 10 it still gets about a tenth of a core from a busy one."""

_CHILD_COMMAND = (
    "import os\n"
    "try:\n"
    f"    os.nice({_NICENESS})\n"
    "except OSError:\n"
    "    pass\n"
    "from actrec.store._process import _child_main\n"
    "_child_main()\n"
)


class WriterChild:
    """A writer process started ahead of its store: it starts its interpreter and imports numpy and h5py (about
    0.2 s of CPU) while the caller goes on, e.g. while Lightning sets up, instead of during the first training
    steps. Hand it to :class:`WriterProcess`; call :meth:`discard` if it is never used.

    The rows' shared memory is made here too (unlinked at once, so nothing is left in ``/dev/shm`` whatever
    kills the processes); :class:`WriterProcess` sizes it.
    """

    def __init__(self) -> None:
        self.taken = False
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - the child writes into it for our whole life
        shared = _shared_folder() / f"actrec-{os.getpid()}-{uuid.uuid4().hex}.rows"
        self.descriptor = os.open(shared, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self._descriptor_open = True
        try:
            os.unlink(shared)
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            self.process = subprocess.Popen(
                [sys.executable, "-c", _CHILD_COMMAND],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self.log,
                env=env,
                pass_fds=(self.descriptor,),
                start_new_session=True,  # a Ctrl-C meant for training does not cut the store short
            )
        except BaseException:
            self.release_descriptor()
            self.log.close()
            raise

    def release_descriptor(self) -> None:
        if self._descriptor_open:
            self._descriptor_open = False
            os.close(self.descriptor)

    def discard(self) -> None:
        """End an unused child: it sees its input end before any store and exits. Safe to call twice."""
        if self.taken:
            return
        self.taken = True
        self.release_descriptor()
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


class WriterProcess:
    """Append packed rows to an existing store from a child process.

    Args:
        path: the store (created or resumed beforehand with :class:`StoreWriter`, and closed).
        fields: ``(column_key, dtype, shape, offset)`` of every value in a packed row, e.g.
            ``("layers/net.conv1/activations", "float16", (3, 2, 6, 6), 0)``.
        row_bytes: size of one packed row.
        slots: rows that may be in flight to the child.
        flush_every: write and flush rows in blocks of this many (and after a second with rows waiting).
        wait: wait here until the child has opened the store; ``False`` lets it start while the caller
            goes on (rows sent meanwhile queue up; a failure to start shows in :attr:`error`).
        child: a :class:`WriterChild` started earlier (its interpreter start-up already paid); ``None`` starts one.

    Raises:
        StoreError: with ``wait``, the child could not open the store.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fields: Sequence[tuple[str, str, tuple[int, ...], int]],
        row_bytes: int,
        slots: int = 4,
        flush_every: int = 16,
        flush_seconds: float = 1.0,
        wait: bool = True,
        child: WriterChild | None = None,
    ) -> None:
        self.path = Path(path)
        self.row_bytes = max(int(row_bytes), 1)
        self.error: str | None = None
        """One sentence once the child failed; later rows are dropped."""
        self.waits = 0
        """How often a row waited for the child to free a slot."""
        self.last_global_step = -1
        """The step of the store's last row when the child opened it (-1: none)."""
        self._slots = max(int(slots), 1)
        self._handed = 0
        self._flushed = threading.Condition()
        self._flush_seen = 0
        self._flush_sent = 0
        self._closed = False
        self._finished = threading.Event()
        self._ready = threading.Event()
        child = child if child is not None else WriterChild()
        if child.taken:
            raise RuntimeError("a WriterChild serves one WriterProcess")
        child.taken = True
        self._log = child.log
        self._child = child.process
        to_child, from_child = self._child.stdin, self._child.stdout
        assert to_child is not None, "opened as a pipe by WriterChild"
        assert from_child is not None, "opened as a pipe by WriterChild"
        self._to_child, self._from_child = to_child, from_child
        size = _SharedRows.size(self._slots, self.row_bytes)
        try:
            os.ftruncate(child.descriptor, size)
            self._mapping = mmap.mmap(child.descriptor, size)
            self._shared = _SharedRows(self._mapping, self._slots, self.row_bytes)
            self._send(
                {
                    "path": str(self.path),
                    "shared_fd": child.descriptor,
                    "slots": self._slots,
                    "row_bytes": self.row_bytes,
                    "flush_every": flush_every,
                    "flush_seconds": flush_seconds,
                    "fields": [[key, dtype, list(shape), offset] for key, dtype, shape, offset in fields],
                }
            )
        except BaseException:
            self._child.kill()
            self._child.wait()
            self._log.close()
            raise
        finally:
            child.release_descriptor()  # the child holds its own copy from the spawn, the mapping holds ours
        self._reader = threading.Thread(target=self._read_replies, name="actrec-writer-replies", daemon=True)
        self._reader.start()
        if wait and not self.wait_ready():
            message = self.error or "the store writer process did not start in time."
            # Nobody gets this object to close, so end the child and free the mapping and log here.
            self._abandon()
            raise StoreError(message)

    def wait_ready(self, timeout: float = _START_TIMEOUT) -> bool:
        """Block until the child has opened the store; False if it failed (see :attr:`error`) or timed out."""
        self._ready.wait(timeout)
        return self._ready.is_set() and self.error is None

    # -- parent side ---------------------------------------------------------------------------------

    def submit(self, row: np.ndarray, global_step: int, epoch: int, wall_time: float) -> bool:
        """Hand one packed row to the child (waits while every slot is in flight); False once failed."""
        if self.error is not None or self._closed:
            return False
        shared, row_number = self._shared, self._handed
        if row_number - shared.freed >= self._slots:
            self.waits += 1
            while row_number - shared.freed >= self._slots:
                if self.error is not None:
                    return False
                time.sleep(0.001)
        slot = row_number % self._slots
        shared.rows[slot, : row.nbytes] = row.view(np.uint8).reshape(-1)
        shared.steps[slot] = (global_step, epoch)
        shared.walls[slot] = wall_time
        # Last: the child takes rows up to this count, so it never reads a half-written one.
        self._handed = shared.counters[0] = row_number + 1
        return True

    def scalar(self, name: str, global_step: int, value: float) -> bool:
        """Append ``(global_step, value)`` to a scalar series."""
        if self.error is not None or self._closed:
            return False
        return self._send({"op": "scalar", "name": name, "step": int(global_step), "value": float(value)})

    def flush(self, timeout: float = 120.0) -> bool:
        """Block until every row sent so far is on disk; False if the child failed."""
        if self.error is not None or self._closed:
            return False
        self._flush_sent += 1
        wanted = self._flush_sent
        if not self._send({"op": "flush", "id": wanted}):
            return False
        with self._flushed:
            done = self._flushed.wait_for(lambda: self._flush_seen >= wanted or self.error is not None, timeout)
        # A timeout is not success: the rows may still be only in the child's hands.
        return done and self.error is None

    def close(self, timeout: float = 300.0) -> None:
        """Write what was sent, close the store and end the child. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._send({"op": "close"})
        with contextlib.suppress(OSError):
            self._to_child.close()
        try:
            self._child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._child.kill()
            self._child.wait()
            self._fail("the store writer process did not finish in time and was stopped")
        self._reader.join(timeout=10)
        self._log.close()
        del self._shared
        with contextlib.suppress(BufferError):  # a caller still holding a view keeps the mapping alive
            self._mapping.close()

    def _abandon(self) -> None:
        """Kill the child and release everything this object holds, after a failed start."""
        self._closed = True
        with contextlib.suppress(OSError):
            self._child.kill()
        with contextlib.suppress(OSError):
            self._to_child.close()
        self._child.wait()
        self._reader.join(timeout=10)
        self._from_child.close()
        self._log.close()
        del self._shared
        with contextlib.suppress(BufferError):
            self._mapping.close()

    def _send(self, message: dict[str, Any]) -> bool:
        try:
            self._to_child.write(json.dumps(message).encode() + b"\n")
            self._to_child.flush()
            return True
        except (BrokenPipeError, OSError, ValueError):
            self._fail(f"the store writer process ended unexpectedly ({self._stderr_tail()})")
            return False

    def _read_replies(self) -> None:
        for line in self._from_child:
            try:
                reply = json.loads(line)
            except ValueError:
                continue
            if "ready" in reply:
                self.last_global_step = int(reply.get("last_global_step", -1))
                self._ready.set()
            elif "flushed" in reply:
                with self._flushed:
                    self._flush_seen = int(reply["flushed"])
                    self._flushed.notify_all()
            elif "error" in reply:
                self._fail(str(reply["error"]))
            elif "closed" in reply:
                self._finished.set()
        code = self._child.wait()
        if not self._ready.is_set():
            self._fail(f"the store writer process did not start ({self._stderr_tail()})")
        elif not self._finished.is_set():
            self._fail(f"the store writer process ended unexpectedly (exit code {code})")
        self._ready.set()

    def _fail(self, message: str) -> None:
        if self.error is None:
            self.error = message
        self._ready.set()
        with self._flushed:
            self._flushed.notify_all()

    def _stderr_tail(self) -> str:
        try:
            self._log.seek(0)
            lines = [line for line in self._log.read().decode(errors="replace").splitlines() if line.strip()]
        except (OSError, ValueError):
            return "no message"
        return lines[-1][-300:] if lines else "no message"


# -- child side ------------------------------------------------------------------------------------------


def _lines(fd: int, tick: list[float]):  # noqa: ANN202 - a generator of bytes lines, None on idle ticks
    buffer = b""
    while True:
        while b"\n" not in buffer:
            ready, _, _ = select.select([fd], [], [], tick[0])
            if not ready:
                yield None
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return
            buffer += chunk
        line, buffer = buffer.split(b"\n", 1)
        yield line


def _reply(message: dict[str, Any]) -> None:
    try:
        sys.stdout.buffer.write(json.dumps(message).encode() + b"\n")
        sys.stdout.buffer.flush()
    except (BrokenPipeError, OSError):
        pass


def _child_main() -> None:
    from actrec.store.writer import StoreWriter, rows_due

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fd = sys.stdin.fileno()
    tick = [1.0]
    lines = _lines(fd, tick)
    # None only means a second passed without input (a slow parent); only the end of input ends the child.
    first = next((line for line in lines if line is not None), None)
    if first is None:
        return
    setup = json.loads(first)
    try:
        writer = StoreWriter.open_for_append(Path(setup["path"]), flush_every=setup["flush_every"], background=False)
    except (OSError, StoreError) as error:
        _reply({"error": f"cannot open {setup['path']} for writing: {error}"})
        return
    slots, row_bytes = int(setup["slots"]), int(setup["row_bytes"])
    mapping = mmap.mmap(setup["shared_fd"], _SharedRows.size(slots, row_bytes))
    shared = _SharedRows(mapping, slots, row_bytes)
    fields = [(key, np.dtype(dtype), tuple(shape), offset) for key, dtype, shape, offset in setup["fields"]]
    block = _Block(shared.rows, max(int(setup["flush_every"]), 1), fields)
    _reply({"ready": 1, "last_global_step": writer.last_global_step})
    taken = written = 0
    clean = True
    asked_to_close = False  # else the parent died (SIGKILL): its rows still go in, but the store is not compacted
    tick[0] = _POLL_SECONDS

    def write_block(count: int | None = None) -> None:
        """Write the first ``count`` held rows (all by default), flush, and give their slots back."""
        nonlocal written
        written += len(block.write_to(writer, count))
        writer._flush_now()
        shared.counters[1] = written  # on disk: the parent may refill these slots

    def take_rows() -> None:
        nonlocal taken
        handed = shared.handed
        while taken < handed:
            slot = taken % slots
            step, epoch = (int(value) for value in shared.steps[slot])
            block.add(slot, step, epoch, float(shared.walls[slot]), time.monotonic())
            taken += 1
            if block.full:
                write_block()
        due = rows_due(
            block.arrivals,
            writer.rows,
            time.monotonic(),
            block=block.capacity,
            chunk=writer.chunk_rows,
            wait=setup["flush_seconds"],
        )
        if due:
            write_block(due)

    try:
        for line in lines:
            take_rows()  # before any message: a flush or close covers every row handed over before it
            if line is None or not line.strip():
                continue
            message = json.loads(line)
            op = message.get("op")
            if op == "scalar":
                writer._write_scalar(message["name"], message["step"], message["value"])
            elif op == "flush":
                write_block()
                _reply({"flushed": message["id"]})
            elif op == "close":
                asked_to_close = True
                break
        take_rows()
        block.write_to(writer)  # the parent is gone or done: everything it handed over goes in
    except StoreError as error:
        # Refused before HDF5 wrote anything (a full disk): the file is still sound and closes cleanly.
        _reply({"error": str(error)})
    except Exception as error:
        # HDF5 failed mid-write; its state cannot be trusted, so leave without touching the file again.
        clean = False
        _reply({"error": f"writing {setup['path']} failed: {_first_line(error)}"})
    if not clean:
        os._exit(1)
    # The run of a parent that died may be resumed while this child is still closing; the resume replaces the
    # store with a fresh copy (compacted by the copy), which a compaction here would put the old file back over.
    writer.close(compact_if_needed=asked_to_close)
    _reply({"closed": 1})


class _Block:
    """Rows the parent handed over, still in their shared-memory slots, until they are written to the store together.

    Each field goes to the store as a view of the held slots when they follow each other in the ring (the store
    copies it once, into the chunk it writes), gathered with one copy when the block wraps round the ring's end;
    once the block is on disk its slots go back to the parent by raising the shared ``freed`` counter. A block
    is written once it has ``capacity`` rows or holds every slot the parent has (or when
    :func:`~actrec.store.writer.rows_due` says).
    """

    def __init__(
        self, memory: np.ndarray, capacity: int, fields: list[tuple[str, np.dtype, tuple[int, ...], int]]
    ) -> None:
        self.memory = memory  # (slots, row_bytes)
        self.capacity = min(capacity, memory.shape[0])
        self.fields = [
            (key, dtype, shape, offset, offset + dtype.itemsize * int(np.prod(shape, dtype=np.int64)))
            for key, dtype, shape, offset in fields
        ]
        self.slots: list[int] = []
        self.steps: list[int] = []
        self.epochs: list[int] = []
        self.walls: list[float] = []
        self.arrivals: list[float] = []

    @property
    def count(self) -> int:
        return len(self.slots)

    @property
    def full(self) -> bool:
        return len(self.slots) >= self.capacity

    def add(self, slot: int, step: int, epoch: int, wall: float, arrival: float) -> None:
        self.slots.append(slot)
        self.steps.append(step)
        self.epochs.append(epoch)
        self.walls.append(wall)
        self.arrivals.append(arrival)

    def write_to(self, writer: Any, count: int | None = None) -> list[int]:
        """Append the first ``count`` held rows (all by default) to ``writer`` (a :class:`StoreWriter`) as one block;
        return the slots now free."""
        count = len(self.slots) if count is None else min(count, len(self.slots))
        if not count:
            return []
        first = self.slots[0]
        if self.slots[count - 1] == first + count - 1:  # consecutive slots (the ring did not wrap): views, no copy
            held: slice | np.ndarray = slice(first, first + count)
        else:
            held = np.asarray(self.slots[:count])
        values = {
            key: self.memory[held, start:stop].view(dtype).reshape((count, *shape))
            for key, dtype, shape, start, stop in self.fields
        }
        writer.append_block(values, self.steps[:count], self.epochs[:count], self.walls[:count])
        freed = self.slots[:count]
        for held_list in (self.slots, self.steps, self.epochs, self.walls, self.arrivals):
            del held_list[:count]
        return freed


def _first_line(error: BaseException) -> str:
    text = str(error)
    for marker, sentence in (
        ("No space left", "no space left on the device"),
        ("errno = 5,", "an input/output error (EIO)"),
        ("Disk quota", "the disk quota is exceeded"),
    ):
        if marker in text:
            return sentence
    lines = text.strip().splitlines()
    return lines[0].rstrip(" (") if lines else type(error).__name__


if __name__ == "__main__":
    _child_main()
