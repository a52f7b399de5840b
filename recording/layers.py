"""One recorded layer as every command sees it: kind, colour scale, channel plan, and reads that survive damage.

The rules here are the only copies: which kind a per-probe shape is, which channels are drawn when a
layer is too wide, which rows fix the colour scale, and what a damaged row does (it is left out and
named, never drawn and never fatal).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from actrec.recording.scale import ColourScale, colour_scale, sample_rows
from actrec.recording.timeline import RecordingError
from actrec.store import KIND_MAPS, KINDS_BY_RANK, LayerInfo, StoreError, StoreReader

DEFAULT_MAX_CHANNELS = 16
"""Channels (maps) or units (tokens, vectors) drawn by default; wider layers show a selection."""
ROWS_PER_READ = 64
"""Rows read at a time: bounded memory on long runs; one chunk is one HDF5 read per layer."""
SCALE_SAMPLE_ELEMENTS = 8_000_000
"""Activations read (at most) to fix a layer's colour scale and channel choice."""
DAMAGE = (StoreError, OSError)
"""What reading a damaged row raises: the reader's DamagedDataError (a StoreError) for a failed checksum,
h5py's OSError for a chunk its filter cannot decode (e.g. damaged lzf data in a store without checksums)."""


def layer_kind(info: Any) -> str:
    """A layer's kind: ``"maps"`` (C, H, W), ``"tokens"`` (T, D) or ``"vector"`` (D,).

    The rank of ``sample_shape`` decides; a stored ``kind`` (store format v2) must agree with it.

    Args:
        info: a :class:`~actrec.store.LayerInfo` (or anything with ``sample_shape``), or a shape.

    Raises:
        ValueError: the per-probe shape has no kind (e.g. 4-D); the message is one sentence.
    """
    stored = getattr(info, "kind", None)
    shape: tuple[int, ...] = tuple(getattr(info, "sample_shape", info))
    if len(shape) not in KINDS_BY_RANK or stored not in (None, KINDS_BY_RANK[len(shape)]):
        name = getattr(info, "name", "")
        subject = f"layer {name!r}" if name else "a layer"
        raise ValueError(
            f"cannot draw {subject} of per-probe shape {shape}: actrec draws (C, H, W) maps, (T, D) tokens "
            "and (D,) vectors."
        )
    return KINDS_BY_RANK[len(shape)]


def channel_axis(kind: str) -> int:
    """The channel (maps) or unit (tokens, vectors) axis of an array ending in a per-probe shape."""
    return -3 if kind == KIND_MAPS else -1


@dataclass(frozen=True)
class ChannelChoice:
    """Which channels (maps) or units (tokens, vectors) to draw: ``indices``, or the ``top`` most varying, or all."""

    indices: tuple[int, ...] | None = None
    top: int | None = None
    everything: bool = False


def parse_channels(text: str | None) -> ChannelChoice:
    """Parse a channel choice: ``"0,3,7"``, ``"top:K"`` (the K that vary most over training) or ``"all"``.

    Raises:
        RecordingError: the text is none of these.
    """
    if text is None:
        return ChannelChoice()
    text = text.strip()
    if text == "all":
        return ChannelChoice(everything=True)
    match = re.fullmatch(r"top:(\d+)", text)
    if match:
        if int(match[1]) < 1:
            raise RecordingError(f"--channels top:K needs K of at least 1, got {text!r}.")
        return ChannelChoice(top=int(match[1]))
    try:
        indices = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        indices = ()
    if not indices or min(indices) < 0:
        raise RecordingError(f"--channels takes indices ('0,3,7'), 'top:K' or 'all', got {text!r}.")
    return ChannelChoice(indices=tuple(dict.fromkeys(indices)))


@dataclass(frozen=True)
class ChannelPlan:
    """The channels (units) of a layer to draw.

    Args:
        select: positions along the stored channel (unit) axis, or ``None`` for all.
        labels: each drawn channel's index in the full layer (what labels say).
        width: channels (units) the store holds.
        note: a sentence for the user when a default choice left channels out, else ``""``.
    """

    select: tuple[int, ...] | None
    labels: tuple[int, ...]
    width: int
    note: str = ""


@dataclass(frozen=True)
class LayerRead:
    """Rows of one layer read with damaged rows left out.

    Args:
        rows: the rows read, ascending as asked, damaged ones removed.
        values: ``(len(rows), P, *sample_shape)`` activations of those rows.
        damaged: the rows that failed their integrity check.
    """

    rows: np.ndarray
    values: np.ndarray
    damaged: list[int]


class LayerView:
    """One layer of an open recording: what it is, how it is coloured, which channels to draw, its rows.

    Made by :meth:`actrec.recording.Recording.layer`; valid while the recording is open.
    """

    def __init__(self, store: StoreReader, name: str, num_rows: int) -> None:
        self._store = store
        self.name = name
        self.num_rows = num_rows
        self.info: LayerInfo = store.layer(name)

    def __repr__(self) -> str:
        return f"LayerView({self.name!r}, kind={self.kind!r}, shape={self.sample_shape})"

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The stored shape of one probe's activation."""
        return tuple(int(n) for n in self.info.sample_shape)

    @property
    def scale_kind(self) -> str:
        """The kind the recorder declared: ``"tanh"``, ``"sigmoid"``, ``"nonnegative"`` or ``"symmetric"``."""
        return str(self.info.scale_kind)

    @cached_property
    def kind(self) -> str:
        """``"maps"``, ``"tokens"`` or ``"vector"`` (:func:`layer_kind`).

        Raises:
            RecordingError: the shape has no kind.
        """
        try:
            return layer_kind(self.info)
        except ValueError as error:
            raise RecordingError(str(error)) from None

    @property
    def axis(self) -> int:
        """The channel (maps) or unit axis of an array ending in this layer's per-probe shape."""
        return channel_axis(self.kind)

    @property
    def width(self) -> int:
        """Channels (maps) or units (tokens, vectors) stored."""
        return self.sample_shape[0] if self.kind == KIND_MAPS else self.sample_shape[-1]

    @property
    def channel_labels(self) -> tuple[int, ...]:
        """Each stored channel's index in the full layer (a recorder may keep only some channels)."""
        stored = getattr(self.info, "channels", None)
        return tuple(int(c) for c in stored) if stored is not None else tuple(range(self.width))

    @cached_property
    def samples(self) -> np.ndarray:
        """Evenly spaced rows of the layer, bounded in size: what fixes its colour scale and channel choice.

        Damaged rows are left out; no good row gives an empty ``(0, P, *sample_shape)`` array.
        """
        num_probes = len(self._store.probes.labels)
        per_row = num_probes * int(np.prod(self.sample_shape))
        rows = sample_rows(self.num_rows, max(2, min(32, SCALE_SAMPLE_ELEMENTS // max(per_row, 1))))
        read = self.read(rows)
        if read.values.size == 0:
            return np.zeros((0, num_probes, *self.sample_shape), np.float32)
        return read.values

    @cached_property
    def scale(self) -> ColourScale:
        """The layer's colour scale over the whole run, every channel counted (the one rule:
        :func:`actrec.recording.scale.colour_scale` of the declared kind over :attr:`samples`)."""
        return self.scale_for(None)

    def scale_for(self, select: Sequence[int] | None) -> ColourScale:
        """The colour scale counting only the drawn channels (units) ``select``, so hidden ones do not
        wash out the drawn ones; ``None`` counts all."""
        samples = self.samples
        if select is not None:
            samples = np.take(samples, list(select), axis=self.axis)
        return colour_scale(self.scale_kind, samples if samples.size else np.zeros(1))

    def channel_variance(self) -> np.ndarray:
        """Variance of each channel (unit) over the sampled rows, probes and positions, from finite values
        (``-1`` for a channel with none)."""
        samples = self.samples
        if samples.size == 0:
            return np.zeros(self.width)
        axis = samples.ndim + self.axis
        moved = np.moveaxis(np.asarray(samples, dtype=np.float64), axis, 0).reshape(samples.shape[axis], -1)
        moved = np.where(np.isfinite(moved), moved, np.nan)
        with np.errstate(all="ignore"):
            variance = np.nanvar(moved, axis=1)
        return np.nan_to_num(variance, nan=-1.0)

    def channel_plan(
        self, choice: ChannelChoice | str | None = None, max_channels: int = DEFAULT_MAX_CHANNELS
    ) -> ChannelPlan:
        """Which channels (units) to draw: the chosen indices, the ``top`` K most varying, all, or by default
        all up to ``max_channels`` and else the ``max_channels`` that vary most (with a note).

        Raises:
            RecordingError: the choice names a channel the layer did not record, or cannot be parsed.
        """
        if not isinstance(choice, ChannelChoice):
            choice = parse_channels(choice)
        width, full_labels = self.width, self.channel_labels
        noun = "channels" if self.kind == KIND_MAPS else "units"
        select: tuple[int, ...] | None = None
        note = ""
        if choice.indices is not None:
            position = {label: i for i, label in enumerate(full_labels)}
            missing = [index for index in choice.indices if index not in position]
            if missing:
                recorded = getattr(self.info, "channels", None) is not None
                raise RecordingError(
                    f"layer {self.name!r} has no {noun[:-1]} {missing[0]}; it records {width} {noun}"
                    + (f" ({', '.join(map(str, full_labels[:8]))}, ...)." if recorded else ".")
                )
            select = tuple(position[index] for index in choice.indices)
        elif not choice.everything and (choice.top is not None or width > max_channels):
            keep = min(width, choice.top or max_channels)
            if keep < width:
                variance = self.channel_variance()
                select = tuple(sorted(np.argsort(-variance, kind="stable")[:keep].tolist()))
                if choice.top is None:
                    note = (
                        f"{self.name}: drawing {keep} of its {width} {noun}, the {keep} that vary most over training; "
                        "--channels picks others (a list, top:K or all)."
                    )
        labels = full_labels if select is None else tuple(full_labels[i] for i in select)
        return ChannelPlan(select, labels, width, note)

    def nonfinite_rows(self) -> int:
        """Rows holding NaN or infinities: the stored counts (v2), else a non-finite row maximum (v1)."""
        try:
            stored = np.asarray(self._store.nonfinite(self.name, slice(0, self.num_rows)))
            if self._store.format_version >= 2:
                # v2 counts them as written: a NaN in abs_max (which holds only finite values) is damage.
                return int((stored > 0).sum())
            peaks = np.asarray(self._store.abs_max(self.name, slice(0, self.num_rows)), dtype=np.float64)
        except (StoreError, KeyError):
            return 0
        return int((~np.isfinite(peaks)).sum())

    def read(self, rows: Sequence[int] | np.ndarray) -> LayerRead:
        """Read ``rows``; rows that fail their integrity check are left out and listed in ``damaged``."""
        rows = np.asarray(rows, dtype=np.int64)
        good: list[int] = []
        values: list[np.ndarray] = []
        damaged: list[int] = []
        for row, value in self.iter_rows(rows, damaged):
            good.append(row)
            values.append(value)
        stacked = np.stack(values) if values else np.zeros((0, *self._probe_shape()), np.float32)
        return LayerRead(np.asarray(good, np.int64), stacked, damaged)

    def iter_rows(
        self, rows: Sequence[int] | np.ndarray, damaged: list[int] | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(row, activations of the row)``, reading in bounded chunks.

        A damaged row is appended to ``damaged`` and skipped; with ``damaged=None`` the store's error is raised.
        """
        rows = np.asarray(rows, dtype=np.int64)
        for chunk_start in range(0, len(rows), ROWS_PER_READ):
            chunk = rows[chunk_start : chunk_start + ROWS_PER_READ]
            # A contiguous run of rows is one slice read; strided rows need an index read.
            contiguous = chunk[-1] - chunk[0] == len(chunk) - 1
            try:
                where = slice(int(chunk[0]), int(chunk[-1]) + 1) if contiguous else chunk
                activations = self._store.activations(self.name, where)
                readable = chunk.tolist()
            except DAMAGE:
                if damaged is None:
                    raise
                readable, single = [], []
                for row in chunk.tolist():
                    try:
                        single.append(self._store.activations(self.name, np.asarray([row]))[0])
                        readable.append(row)
                    except DAMAGE:
                        damaged.append(row)
                if not single:
                    continue
                activations = np.stack(single)
            yield from zip(readable, activations, strict=True)

    def _probe_shape(self) -> tuple[int, ...]:
        return (len(self._store.probes.labels), *self.sample_shape)
