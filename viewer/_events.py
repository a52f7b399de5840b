"""TFRecord framing for TensorBoard event files, with a CRC-32C fast enough for image summaries.

TensorBoard's own ``EventFileWriter`` frames every record with a CRC-32C computed in pure Python,
about 11 ms for one 36 KB PNG frame: most of an export's time. This module computes the same
checksum with numpy (the message split into lanes updated in parallel, then the lanes' CRCs
combined with a precomputed linear map), about 10x faster (1.1 ms), and writes records in the format
TensorBoard reads (``tensorboard/summary/writer/record_writer.py``)::

    uint64 length, uint32 masked_crc32c(length), bytes data, uint32 masked_crc32c(data)

Events themselves are TensorBoard's protos; only the framing and the checksum are done here.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from functools import lru_cache
from typing import IO

import numpy as np

_POLYNOMIAL = 0x82F63B78  # CRC-32C (Castagnoli), reflected
_LANE = 64  # bytes per lane; 32-64 measured fastest for 36 KB images (128: 1.6x, 256: 2.2x slower)


def _byte_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint32)
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (_POLYNOMIAL if crc & 1 else 0)
        table[byte] = crc
    return table


_TABLE = _byte_table()
_TABLE_LIST = _TABLE.tolist()


def _update(crc: int, data: bytes | memoryview) -> int:
    """The raw CRC register after ``data``, starting from ``crc`` (no pre- or post-inversion)."""
    table = _TABLE_LIST
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


@lru_cache(maxsize=1)
def _shift_tables() -> tuple[tuple[int, ...], ...]:
    """Per byte of the register, the effect of feeding ``_LANE`` zero bytes: ``_update(r, zeros) = xor of 4 lookups``.

    Feeding zeros is linear in the register, so it is fixed by what it does to each byte value.
    """
    zeros = bytes(_LANE)
    basis = [_update(1 << bit, zeros) for bit in range(32)]
    tables = []
    for byte in range(4):
        entries = []
        for value in range(256):
            image = 0
            for bit in range(8):
                if value >> bit & 1:
                    image ^= basis[8 * byte + bit]
            entries.append(image)
        tables.append(tuple(entries))
    return tuple(tables)


def crc32c(data: bytes) -> int:
    """CRC-32C of ``data`` (as TensorBoard and TFRecord use it)."""
    lanes = len(data) // _LANE
    crc = 0xFFFFFFFF
    if lanes >= 2:
        block = np.frombuffer(data, dtype=np.uint8, count=lanes * _LANE).reshape(lanes, _LANE)
        state = np.zeros(lanes, dtype=np.uint32)
        for column in range(_LANE):  # every lane's register from zero, all lanes at once
            state = _TABLE[(state ^ block[:, column]) & 0xFF] ^ (state >> 8)
        table0, table1, table2, table3 = _shift_tables()
        for lane_crc in state.tolist():  # chain: register after lane k = shift(register before) ^ lane k
            crc = (
                table0[crc & 0xFF] ^ table1[(crc >> 8) & 0xFF] ^ table2[(crc >> 16) & 0xFF] ^ table3[crc >> 24]
            ) ^ lane_crc
        return _update(crc, memoryview(data)[lanes * _LANE :]) ^ 0xFFFFFFFF
    return _update(crc, data) ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The masked CRC-32C TFRecord stores (rotated and offset, so CRCs of CRCs stay strong)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


EVENTS_PREFIX = "events.out.tfevents."
STAGED_PREFIX = "staged.events."
"""Event files being written: TensorBoard loads only files whose name contains ``tfevents``."""


def publish_staged(folder: str | os.PathLike[str]) -> None:
    """Rename every staged event file in ``folder`` to its real name, so TensorBoard loads it."""
    for entry in os.scandir(folder):
        if entry.name.startswith(STAGED_PREFIX):
            os.replace(entry.path, os.path.join(os.fspath(folder), EVENTS_PREFIX + entry.name[len(STAGED_PREFIX) :]))


class EventFile:
    """Write serialized ``Event`` protos as records of one new event file in ``log_dir``.

    The name follows TensorBoard's pattern, ``events.out.tfevents.<time>.<host>.<pid>.<n><suffix>``,
    which is how TensorBoard finds and orders event files.

    Args:
        log_dir: the folder (created if missing).
        filename_suffix: appended to the name, e.g. ``".net.conv1"``.
        staged: write under a name TensorBoard ignores (:data:`STAGED_PREFIX` instead of
            ``events.out.tfevents.``); :func:`publish_staged` gives the files their real names.
    """

    _count = 0

    def __init__(self, log_dir: str | os.PathLike, filename_suffix: str = "", *, staged: bool = False) -> None:
        os.makedirs(log_dir, exist_ok=True)
        EventFile._count += 1
        prefix = STAGED_PREFIX if staged else EVENTS_PREFIX
        name = f"{prefix}{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{EventFile._count}"
        self.path = os.path.join(os.fspath(log_dir), name + filename_suffix)
        self._file: IO[bytes] | None = open(self.path, "wb")  # noqa: SIM115 - closed in close()

    def write(self, record: bytes) -> None:
        """Append one serialized event."""
        if self._file is None:
            raise ValueError("write() after close().")
        header = struct.pack("<Q", len(record))
        self._file.write(
            header + struct.pack("<I", masked_crc32c(header)) + record + struct.pack("<I", masked_crc32c(record))
        )

    def close(self) -> None:
        """Flush and close. Safe to call twice."""
        if self._file is not None:
            self._file.close()
            self._file = None
