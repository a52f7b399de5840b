"""HDF5's chunk filters, computed in numpy: what the writer hands HDF5 when it writes whole chunks itself.

A chunk written with ``write_direct_chunk`` skips HDF5's filter pipeline, so its bytes must be exactly what the
pipeline would have made: a reader runs the pipeline backwards and refuses a chunk whose Fletcher-32 checksum
does not match. Pure functions (arrays in, arrays or bytes out); the writer owns the I/O.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Sequence

import numpy as np

__all__ = ["DIRECT_FILTERS", "encode_chunk", "fletcher32", "shuffle"]

FILTER_DEFLATE = 1
FILTER_SHUFFLE = 2
FILTER_FLETCHER32 = 3
DIRECT_FILTERS = frozenset({FILTER_DEFLATE, FILTER_SHUFFLE, FILTER_FLETCHER32})
"""HDF5 filter ids :func:`encode_chunk` reproduces (``H5Z_FILTER_DEFLATE``, ``_SHUFFLE``, ``_FLETCHER32``); a
pipeline with any other (lzf, szip, scale-offset) is left to HDF5."""

_MODULUS = 65535
_SHORT_WORDS = 1 << 13
"""Chunks of up to this many 16-bit words are summed in one pass each; longer ones in blocks (faster per byte,
slower per call)."""
_BLOCK_WORDS = 2048
"""Words summed as one row of the (blocks, words) matrix :func:`fletcher32` reduces both ways: long enough that
numpy's per-call cost is spread thin, short enough that a block's sum of 16-bit words stays within 32 bits."""


def fletcher32(chunks: np.ndarray) -> np.ndarray:
    """HDF5's Fletcher-32 checksum (``H5_checksum_fletcher32``) of each row of ``chunks``, as ``uint32``.

    HDF5 sums the bytes as big-endian 16-bit words (an odd last byte as the high byte of a word), the plain sum
    ``s1`` and the sum of running sums ``s2``, folding both into 16 bits as it goes; a fold never turns a
    positive sum into 0, so each half is 0 only for all-zero data, and otherwise the sum's residue modulo 65535
    written as 1..65535 (0xffff, not 0, for a positive multiple). The checksum is ``s2 << 16 | s1``.

    Here the sums are taken exactly, over native little-endian words ``v`` (no byte swap: a big-endian word is
    ``256 * v`` modulo 65535, since 65536 is 1), in blocks of :data:`_BLOCK_WORDS`: ``s2`` weights word ``i`` of
    ``n`` by ``n - i``, which is the block's offset weight times the block's sum, minus the word's place in its
    block times that place's sum over blocks. No BLAS call, so no BLAS threads spinning in the writer process.

    Args:
        chunks: ``uint8`` array of shape ``(k, nbytes)``; each row's bytes contiguous (rows may be strided).

    Returns:
        ``uint32`` array of the ``k`` checksums.
    """
    if chunks.ndim != 2 or chunks.dtype != np.uint8:
        raise ValueError(f"fletcher32 takes a (chunks, bytes) uint8 array, not {chunks.dtype} of shape {chunks.shape}.")
    count, nbytes = chunks.shape
    if nbytes % 2:  # HDF5 sums a last odd byte as the high byte of a word: the same as padding with a zero byte
        padded = np.zeros((count, nbytes + 1), dtype=np.uint8)
        padded[:, :nbytes] = chunks
        chunks, nbytes = padded, nbytes + 1
    if chunks.strides[1] != 1:
        chunks = np.ascontiguousarray(chunks)
    words = chunks.view("<u2")  # (count, n)
    n = nbytes // 2
    if n <= _SHORT_WORDS:
        # Short chunks: two numpy calls instead of a dozen (s2 < 65535 * n**2 / 2 stays far inside int64).
        s1 = np.add.reduce(words, axis=1, dtype=np.uint64)
        s2 = np.einsum("kn,n->k", words, _descending(n))
        return _finish(s1, s2)
    blocks = n // _BLOCK_WORDS
    whole = blocks * _BLOCK_WORDS
    s1 = np.zeros(count, dtype=np.uint64)
    s2 = np.zeros(count, dtype=np.int64)  # modulo 65535
    if blocks:
        matrix = words[:, :whole].reshape(count, blocks, _BLOCK_WORDS)
        # A column sums `blocks` words: 32 bits hold 65537 of them.
        column_type = np.uint32 if blocks <= 65537 else np.uint64
        block_sums = np.add.reduce(matrix, axis=2, dtype=np.uint32)  # (count, blocks)
        place_sums = np.add.reduce(matrix, axis=1, dtype=column_type)  # (count, _BLOCK_WORDS)
        s1 += block_sums.sum(axis=1, dtype=np.uint64)
        block_weights = (n - np.arange(blocks, dtype=np.int64) * _BLOCK_WORDS) % _MODULUS
        places = np.arange(_BLOCK_WORDS, dtype=np.int64)
        # Residues below 2**16 and products below 2**32: the int64 dot products cannot overflow.
        s2 += (block_sums % _MODULUS).astype(np.int64) @ block_weights
        s2 -= (place_sums % _MODULUS).astype(np.int64) @ places
    if whole < n:
        tail = words[:, whole:].astype(np.int64)
        s1 += tail.sum(axis=1).astype(np.uint64)
        s2 += tail @ np.arange(n - whole, 0, -1, dtype=np.int64)
    return _finish(s1, s2)


def _finish(s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """The checksums from the exact little-endian sums ``s1`` and the sums ``s2`` (exact or modulo 65535)."""
    checksums = []
    # A few chunks at a time: Python's integers beat numpy's calls.
    for plain, running in zip(s1.tolist(), s2.tolist(), strict=True):
        if plain == 0:  # only all-zero data sums to 0; HDF5's folds write any other multiple of 65535 as 0xffff
            checksums.append(0)
            continue
        low = (plain * 256 - 1) % _MODULUS + 1
        high = (running * 256 - 1) % _MODULUS + 1
        checksums.append(high << 16 | low)
    return np.array(checksums, dtype=np.uint32)


@functools.lru_cache(maxsize=64)
def _descending(n: int) -> np.ndarray:
    """``n, n - 1, ..., 1``: the weights of ``s2`` (one array per chunk size, kept: a block reuses the same sizes)."""
    weights = np.arange(n, 0, -1, dtype=np.int64)
    weights.flags.writeable = False
    return weights


def shuffle(chunk: np.ndarray, itemsize: int) -> np.ndarray:
    """HDF5's byte shuffle (``H5Z_filter_shuffle``) of one chunk's bytes: every element's first byte, then every
    second byte ...; bytes after the last whole element stay at the end, and a chunk of fewer than two elements
    (or of one-byte elements) is left as it is.

    Args:
        chunk: the chunk's bytes, a contiguous ``uint8`` array.
        itemsize: bytes per element (the shuffle filter's parameter).
    """
    elements = chunk.size // itemsize
    if itemsize <= 1 or elements <= 1:
        return chunk
    whole = elements * itemsize
    shuffled = np.empty_like(chunk)
    shuffled[:whole].reshape(itemsize, elements)[...] = chunk[:whole].reshape(elements, itemsize).T
    shuffled[whole:] = chunk[whole:]
    return shuffled


def encode_chunk(chunk: np.ndarray, pipeline: Sequence[tuple[int, tuple[int, ...]]]) -> np.ndarray:
    """A chunk's bytes as HDF5 stores them after its filter ``pipeline`` (``(filter id, parameters)`` in HDF5's
    order, from :data:`DIRECT_FILTERS`): shuffle, deflate (zlib at the pipeline's level) and Fletcher-32 (the
    checksum of the bytes so far, appended little-endian).

    Args:
        chunk: the chunk's raw bytes, a contiguous ``uint8`` array.
        pipeline: the dataset's filters.

    Raises:
        ValueError: a filter outside :data:`DIRECT_FILTERS`.
    """
    data = chunk
    for filter_id, parameters in pipeline:
        if filter_id == FILTER_SHUFFLE:
            data = shuffle(data, parameters[0])
        elif filter_id == FILTER_DEFLATE:
            data = np.frombuffer(zlib.compress(data.data, parameters[0] if parameters else 6), dtype=np.uint8)
        elif filter_id == FILTER_FLETCHER32:
            checksum = fletcher32(data.reshape(1, -1)).astype("<u4").view(np.uint8)
            data = np.concatenate([data, checksum])
        else:
            raise ValueError(f"HDF5 filter {filter_id} cannot be applied outside HDF5.")
    return data
