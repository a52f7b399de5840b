"""The HDF5 store: round trips, SWMR reading, crash survival and resume, on real files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from actrec.store import (
    FORMAT_NAME,
    FORMAT_VERSION,
    LayerSpec,
    ProbeSet,
    StepRecord,
    StoreError,
    StoreReader,
    StoreWriter,
    resolve_store_path,
)
from actrec.store._process import WriterProcess

LAYERS = [
    LayerSpec("net.conv1", (2, 4, 4), "Sequential", "tanh", params={"0.weight": (2, 1, 3, 3), "0.bias": (2,)}),
    LayerSpec("net.conv2", (3, 2, 2), "Sequential", "symmetric"),
]


def _probes(num_probes: int = 3) -> ProbeSet:
    images = np.arange(num_probes * 16, dtype=np.float32).reshape(num_probes, 1, 4, 4) / 100
    return ProbeSet(images, np.arange(num_probes), np.arange(num_probes) * 7, ["a", "b", "c"])


def _record(step: int, num_probes: int = 3) -> StepRecord:
    rng = np.random.default_rng(step)
    return StepRecord(
        global_step=step,
        epoch=step // 10,
        batch_loss=1.0 / (step + 1),
        batch_acc=0.5,
        logits=rng.normal(size=(num_probes, 3)).astype(np.float32),
        activations={
            "net.conv1": rng.uniform(-1, 1, size=(num_probes, 2, 4, 4)),
            "net.conv2": rng.normal(0, 3, size=(num_probes, 3, 2, 2)),
        },
        params={"net.conv1": {"0.weight": np.full((2, 1, 3, 3), step, np.float32), "0.bias": np.zeros(2)}},
        wall_time=1000.0 + step,
    )


def _create(path: Path, **kwargs) -> StoreWriter:
    options = {"run_id": "run-a", "config": {"lr": 0.1}, "probes": _probes(), "layers": LAYERS, "num_classes": 3}
    options.update(kwargs)
    return StoreWriter.create(path, **options)


@pytest.mark.parametrize("background", [False, True])
def test_round_trip(tmp_path: Path, background: bool) -> None:
    path = tmp_path / "activations.h5"
    with _create(path, background=background) as writer:
        for step in range(5):
            writer.append(_record(step))
        writer.append_scalar("val/loss", 4, 0.25)

    with StoreReader(tmp_path) as store:  # a run folder resolves to its activations.h5
        assert store.format_version == FORMAT_VERSION
        assert store.run_id == "run-a"
        assert store.config == {"lr": 0.1}
        assert store.num_steps == 5
        assert store.layer_names == ["net.conv1", "net.conv2"]
        assert store.layer("net.conv1").sample_shape == (2, 4, 4)
        assert store.layer("net.conv1").param_names == ("0.bias", "0.weight")
        np.testing.assert_array_equal(store.global_steps(), np.arange(5))
        np.testing.assert_array_equal(store.probes.indices, [0, 7, 14])
        assert store.class_names == ["a", "b", "c"]
        expected = _record(3)
        np.testing.assert_array_equal(
            store.activations("net.conv1", np.array([3]))[0], expected.activations["net.conv1"].astype(np.float16)
        )
        np.testing.assert_array_equal(store.logits()[3], expected.logits)
        assert store.activations("net.conv2").dtype == np.float16
        np.testing.assert_array_equal(store.params("net.conv1")["0.weight"][:, 0, 0, 0, 0], np.arange(5))
        np.testing.assert_allclose(
            store.abs_max("net.conv2"),
            [np.abs(_record(s).activations["net.conv2"]).max() for s in range(5)],
            rtol=1e-3,
        )
        steps, values = store.scalars("val/loss")
        assert steps.tolist() == [4]
        assert values.tolist() == [0.25]
        # Rows in any order come back in that order.
        np.testing.assert_array_equal(store.logits(np.array([4, 0, 4]))[:, 0], store.logits()[[4, 0, 4], 0])

    # Plain h5py can read everything: the schema needs no actrec and holds no pickles.
    with h5py.File(path, "r") as raw:
        assert raw.attrs["format"] == FORMAT_NAME
        assert json.loads(raw.attrs["config"]) == {"lr": 0.1}
        assert raw["layers/net.conv1/activations"].shape == (5, 3, 2, 4, 4)
        # Several steps a chunk (8 here: rows of 192 bytes), the most the writer's 16-row blocks fill whole.
        assert raw["layers/net.conv1/activations"].chunks == (8, 3, 2, 4, 4)


def test_rows_due_writes_whole_blocks_then_whole_chunks_then_the_rest_after_the_wait() -> None:
    from actrec.store.writer import rows_due

    due = lambda arrivals, written=0, now=10.0: rows_due(arrivals, written, now, block=16, chunk=8, wait=1.0)  # noqa: E731
    assert due([]) == 0
    assert due([9.5] * 15) == 0  # the oldest has waited half a second: keep holding
    assert due([9.5] * 16) == 16  # a full block goes at once
    assert due([8.9] * 5) == 5  # waited long enough and no whole chunk: all of them, a chunk partly filled
    assert due([8.9] * 8 + [9.9] * 4) == 8  # one whole chunk; the rest came just now and waits for its chunk
    assert due([8.9] * 9 + [9.9] * 3) == 12  # the ninth has waited too: a chunk partly filled after all
    assert due([8.9] * 12) == 12  # the rest has waited as long: everything
    assert due([8.9] * 3 + [9.9] * 4, written=5) == 3  # rows 5-7 complete the chunk the last block left open
    assert due([8.9] * 3, written=5) == 3  # an open chunk: completing it takes all three held rows


def test_a_store_written_slower_than_a_chunk_a_second_is_compacted_when_closed(tmp_path: Path) -> None:
    # Every row flushed on its own (rows slower than the flush interval): each compressed chunk is written
    # again with each of its rows, and under SWMR HDF5 never reuses the space the earlier versions held.
    layers = [LayerSpec("wide", (64, 32, 32), "Conv2d", "symmetric")]  # 3 x 64 KiB rows: 2 steps a chunk
    rng = np.random.default_rng(0)
    rows = [rng.normal(size=(3, 64, 32, 32)).astype(np.float16) for _ in range(24)]
    path = tmp_path / "activations.h5"
    with _create(path, layers=layers, compression="gzip", background=False, rows_per_chunk=8) as writer:
        writer.flush_seconds = 0.0  # every row is written and flushed as it comes
        for step, values in enumerate(rows):
            writer.append(StepRecord(step, 0, 1.0, 0.5, np.zeros((3, 3), np.float32), {"wide": values}, wall_time=0.0))
        assert writer.rewritten_chunks == 21  # 24 rows, 3 chunks, each started anew 7 times
        assert writer.dead_bytes > 0
    with h5py.File(path, "r") as file:
        data = sum(file[key].id.get_storage_size() for key in ("layers/wide/activations",))
        assert file["layers/wide/activations"].chunks[0] == 8
    # Without compacting, the file holds every earlier version of every chunk (about 4.5x the data).
    assert path.stat().st_size < data * 1.1 + (1 << 20)
    with StoreReader(path) as reader:
        np.testing.assert_array_equal(reader.activations("wide"), np.stack(rows))
        assert reader.num_steps == 24


def test_a_few_rewritten_chunks_are_compacted_too(tmp_path: Path) -> None:
    # The quickstart's case: rows come a little slower than a chunk a second, so a few chunks are written partly
    # filled and again; their dead space (here 6 rows' worth, ~9% of the data) would leave the file that much
    # larger than what it holds.
    layers = [LayerSpec("wide", (64, 32, 32), "Conv2d", "symmetric")]  # 3 x 64 KiB rows
    rng = np.random.default_rng(0)
    rows = [rng.normal(size=(3, 64, 32, 32)).astype(np.float16) for _ in range(64)]
    path = tmp_path / "activations.h5"
    with _create(path, layers=layers, compression="gzip", background=False, rows_per_chunk=8, flush_every=8) as writer:
        for step, values in enumerate(rows):
            # Rows 56, 57 and 58 are flushed one at a time: the last chunk is written with 1, 2, 3 and then 8 rows.
            writer.flush_seconds = 0.0 if 56 <= step <= 58 else 3600.0
            writer.append(StepRecord(step, 0, 1.0, 0.5, np.zeros((3, 3), np.float32), {"wide": values}, wall_time=0.0))
    assert writer.rewritten_chunks == 3  # rows 57, 58 and 59-63 (at close) each began inside the last chunk
    with h5py.File(path, "r") as file:
        data = file["layers/wide/activations"].id.get_storage_size()
    # The versions left dead held 1, 2 and 3 rows: close() judged by their bytes, as HDF5 gave them.
    row = data / 64
    assert 5.5 * row < writer.dead_bytes < 6.5 * row
    assert path.stat().st_size < data * 1.02 + (1 << 20)
    with StoreReader(path) as reader:
        np.testing.assert_array_equal(reader.activations("wide"), np.stack(rows))


def test_rows_per_chunk_must_be_a_positive_whole_number(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"^rows_per_chunk must be a positive whole number, got 0\.$"):
        _create(tmp_path / "activations.h5", rows_per_chunk=0)
    assert not (tmp_path / "activations.h5").exists()


def test_a_folder_holding_a_store_resolves_to_it(tmp_path: Path) -> None:
    # Experiment folders (newest version_N) are actrec.runs' job: tests/test_runs.py.
    _create(tmp_path / "version_2" / "activations.h5", run_id="run-2").close()
    assert resolve_store_path(tmp_path / "version_2") == tmp_path / "version_2" / "activations.h5"
    with StoreReader(tmp_path / "version_2") as store:
        assert store.run_id == "run-2"
    assert resolve_store_path(tmp_path) == tmp_path  # not a store: StoreReader says so


def test_two_readers_of_one_file_in_one_process(tmp_path: Path) -> None:
    path = tmp_path / "activations.h5"
    with _create(path) as writer:
        for step in range(12):
            writer.append(_record(step))
    first, second = StoreReader(path), StoreReader(tmp_path)
    first.refresh()
    second.refresh()
    np.testing.assert_array_equal(first.activations("net.conv1", slice(0, 10)), second.activations("net.conv1")[:10])
    first.close()
    assert second.num_steps == 12  # closing one reader leaves the other working
    assert second.logits().shape == (12, 3, 3)
    second.close()


def test_create_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "activations.h5"
    _create(path).close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="already exists; resume its run, or pass overwrite"):
        _create(path)
    assert path.read_bytes() == before
    _create(path, overwrite=True, run_id="run-b").close()
    with StoreReader(path) as store:
        assert store.run_id == "run-b"


def test_create_refuses_unwritable_folder(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("not a folder")
        with pytest.raises(StoreError, match="cannot create the folder"):
            _create(blocker / "activations.h5")
        return
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    with pytest.raises(StoreError, match="permission denied"):
        _create(folder / "activations.h5")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no activation store at"),
        (b"hello, not hdf5", "not an HDF5 file"),
    ],
)
def test_reader_rejects_bad_files(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "activations.h5"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(StoreError, match=message):
        StoreReader(path)


def test_reader_rejects_foreign_truncated_and_newer(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = [1, 2, 3]
    with pytest.raises(StoreError, match="not an actrec activation store"):
        StoreReader(foreign)

    good = tmp_path / "good.h5"
    with _create(good) as writer:
        for step in range(20):
            writer.append(_record(step))
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[:3000])
    with pytest.raises(StoreError, match="truncated or damaged"):
        StoreReader(truncated)

    with h5py.File(good, "r+") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(StoreError, match="newer than this actrec reads"):
        StoreReader(good)


def test_unknown_layer_lists_known_ones(tmp_path: Path) -> None:
    path = tmp_path / "activations.h5"
    _create(path).close()
    message = "has no layer 'conv9'; it has: net.conv1, net.conv2"
    with StoreReader(path) as store, pytest.raises(StoreError, match=message):
        store.activations("conv9")


def test_resume_keeps_rows_through_the_checkpoint_step(tmp_path: Path) -> None:
    path = tmp_path / "activations.h5"
    with _create(path) as writer:
        for step in range(8):
            writer.append(_record(step))
        writer.append_scalar("val/acc", 3, 0.5)
        writer.append_scalar("val/acc", 7, 0.75)

    with pytest.raises(StoreError, match="belongs to run run-a, not to the checkpoint's run run-z"):
        StoreWriter.resume(path, run_id="run-z", keep_through_step=4)

    with StoreWriter.resume(path, run_id="run-a", keep_through_step=4) as writer:
        for step in range(5, 8):
            writer.append(_record(step))
    with StoreReader(path) as store:
        np.testing.assert_array_equal(store.global_steps(), np.arange(8))
        assert store.scalars("val/acc")[0].tolist() == [3]
        np.testing.assert_array_equal(store.params("net.conv1")["0.weight"][:, 0, 0, 0, 0], np.arange(8))
        expected = _record(6).activations["net.conv2"].astype(np.float16)
        np.testing.assert_array_equal(store.activations("net.conv2")[6], expected)


def test_resume_refuses_another_layer_set_naming_each_difference(tmp_path: Path) -> None:
    path = tmp_path / "activations.h5"
    with _create(path) as writer:
        writer.append(_record(0))
    before = path.read_bytes()
    changed = [
        LayerSpec("net.conv1", (2, 4, 4), "Sequential", "tanh", channels=(0, 3)),
        LayerSpec("net.head", (3,), "Linear", "symmetric"),
    ]
    message = (
        r"other layers than this run's \(layer 'net.head' is new; layer 'net.conv2' is no longer recorded; "
        r"layer 'net.conv1' keeps other channels\); record with the store's layer settings"
    )
    with pytest.raises(StoreError, match=message):
        StoreWriter.resume(path, run_id="run-a", keep_through_step=0, layers=changed)
    assert path.read_bytes() == before
    StoreWriter.resume(path, run_id="run-a", keep_through_step=0, layers=LAYERS).close()
    with StoreReader(path) as store:
        assert store.global_steps().tolist() == [0]


_WRITER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from test_store import _create, _record
    writer = _create({path!r}, background=True)
    step = 0
    while True:
        writer.append(_record(step))
        step += 1
        writer.flush()
        print(step, flush=True)
        time.sleep(0.01)
    """
)


def _start_writer(path: Path) -> subprocess.Popen:
    script = _WRITER_SCRIPT.format(tests=str(Path(__file__).parent), path=str(path))
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)


def _wait_for_rows(process: subprocess.Popen, rows: int) -> int:
    flushed = 0
    while flushed < rows:
        line = process.stdout.readline()
        assert line, "the writer process died"
        flushed = int(line)
    return flushed


def test_reader_follows_a_writer_process_and_survives_its_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "activations.h5"
    writer = _start_writer(path)
    try:
        flushed = _wait_for_rows(writer, 5)
        with StoreReader(path) as store:
            seen_first = store.num_steps
            assert seen_first >= flushed
            flushed = _wait_for_rows(writer, seen_first + 5)
            assert store.refresh() >= flushed  # new rows appear without reopening
            np.testing.assert_array_equal(store.global_steps(), np.arange(store.num_steps))
        flushed = _wait_for_rows(writer, flushed + 3)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    finally:
        writer.kill()
        writer.stdout.close()

    with StoreReader(path) as store:  # the file is still flagged open for writing: no h5clear needed
        assert store.num_steps >= flushed
        steps = store.global_steps()
        np.testing.assert_array_equal(steps, np.arange(len(steps)))
        last = len(steps) - 1
        expected = _record(last).activations["net.conv1"].astype(np.float16)
        np.testing.assert_array_equal(store.activations("net.conv1", np.array([last]))[0], expected)

    # A killed run can be resumed: no external tool, nothing duplicated.
    with StoreWriter.resume(path, run_id="run-a", keep_through_step=2) as resumed:
        resumed.append(_record(3))
    with StoreReader(path) as store:
        assert store.global_steps().tolist() == [0, 1, 2, 3]


def test_writer_error_surfaces_on_the_next_call(tmp_path: Path) -> None:
    path = tmp_path / "activations.h5"
    writer = _create(path, background=True)
    bad = _record(0)
    bad.activations = {"net.conv1": np.zeros((3, 9, 9))}  # wrong shape
    writer.append(bad)
    with pytest.raises(StoreError, match="writing .* failed"):
        writer.flush()
    writer.close()


def test_format_v2_layer_attributes_checksums_and_nonfinite_counts(tmp_path: Path) -> None:
    path = tmp_path / "activations.h5"
    layers = [
        LayerSpec("lstm[0]", (5, 8), "LSTM", "tanh", output="[0]", full_shape=(5, 8)),
        LayerSpec("net.conv", (2, 3, 3), "Conv2d", "nonnegative", channels=(0, 3), full_shape=(4, 3, 3)),
        LayerSpec("gate", (6,), "Sigmoid", "sigmoid"),
    ]
    values = {
        "lstm[0]": np.zeros((3, 5, 8)),
        "net.conv": np.array([np.nan, np.inf, -np.inf, 70000.0, 2.0, -3.0] + [0.0] * 48).reshape(3, 2, 3, 3),
        "gate": np.full((3, 6), 0.5),
    }
    record = StepRecord(0, 0, 1.0, 0.5, np.zeros((3, 3), np.float32), values)
    with _create(path, layers=layers, compression="lzf") as writer:
        writer.append(record)
    with StoreReader(path) as store:
        assert store.format_version == 2
        lstm, conv, gate = (store.layer(name) for name in ("lstm[0]", "net.conv", "gate"))
        assert (lstm.kind, lstm.output, lstm.channels, lstm.full_shape) == ("tokens", "[0]", None, (5, 8))
        assert (conv.kind, conv.channels, conv.full_shape) == ("maps", (0, 3), (4, 3, 3))
        assert conv.scale_kind == "nonnegative"
        assert (gate.kind, gate.scale_kind) == ("vector", "sigmoid")
        # 70000 overflows float16 to inf: counted with the NaN and the two infinities, kept as stored.
        assert store.nonfinite("net.conv").tolist() == [4]
        assert store.abs_max("net.conv").tolist() == [3.0]
        assert np.isnan(store.activations("net.conv")[0, 0, 0, 0, 0])
        assert store.scalars("train/loss")[0].size == 0  # v2 stores keep only series that get written
    with h5py.File(path, "r") as raw:
        growable = []
        raw.visititems(lambda name, obj: growable.append(obj) if getattr(obj, "maxshape", None) else None)
        assert growable
        assert all(dataset.fletcher32 for dataset in growable if dataset.maxshape[0] is None)
        assert "scalars/train/loss" not in raw


def test_reads_a_version_1_store(tmp_path: Path) -> None:
    path = tmp_path / "activations.h5"
    with _create(path) as writer:
        for step in range(3):
            writer.append(_record(step))
    with h5py.File(path, "r+") as raw:  # turn it into what version 1 wrote
        raw.attrs["format_version"] = 1
        for name in ("net.conv1", "net.conv2"):
            del raw[f"layers/{name}/nonfinite"]
            for key in ("kind", "output", "full_shape"):
                del raw[f"layers/{name}"].attrs[key]
    with StoreReader(path) as store:
        info = store.layer("net.conv1")
        assert (info.kind, info.output, info.channels, info.full_shape) == ("maps", "", None, (2, 4, 4))
        assert store.nonfinite("net.conv1").tolist() == [0, 0, 0]
        assert store.nonfinite("net.conv1", np.array([2])).tolist() == [0]
        np.testing.assert_array_equal(store.global_steps(), np.arange(3))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"compression": None}, "compression must be 'none', 'lzf' or 'gzip', got None"),
        ({"dtype": "int8"}, "dtype must be 'float16' or 'float32', got 'int8'"),
    ],
)
def test_one_vocabulary_for_settings(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        _create(tmp_path / "a.h5", **kwargs)


def test_a_folder_in_place_of_the_store_is_refused_in_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "activations.h5").mkdir()
    with pytest.raises(StoreError, match=r"activations.h5 is a folder; name a file for the activation store"):
        _create(tmp_path / "activations.h5", overwrite=True)


def test_a_writer_process_that_fails_to_start_is_refused_and_leaves_nothing_open(tmp_path: Path) -> None:
    path = tmp_path / "activations.h5"
    path.write_text("not an HDF5 file")
    descriptors = len(os.listdir("/proc/self/fd"))
    with pytest.raises(StoreError, match=f"cannot open {path} for writing"):
        WriterProcess(path, [], row_bytes=8, wait=True)
    # The child, its pipes, the shared rows and the log are all released, not left to the garbage collector.
    assert len(os.listdir("/proc/self/fd")) == descriptors


def test_the_writer_child_waits_for_a_parent_slower_than_its_idle_tick(tmp_path: Path) -> None:
    path = tmp_path / "activations.h5"
    _create(path, background=False).close()
    shared = os.memfd_create("rows")
    os.ftruncate(shared, 4096)  # room for the counters, the slot table and one 8-byte row
    child = subprocess.Popen(
        [sys.executable, "-m", "actrec.store._process"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        pass_fds=(shared,),
    )
    try:
        time.sleep(1.5)  # longer than the child's 1 s idle tick before the first line arrives
        setup = {"path": str(path), "shared_fd": shared, "slots": 1, "row_bytes": 8, "flush_every": 1}
        child.stdin.write(json.dumps({**setup, "flush_seconds": 1.0, "fields": []}).encode() + b"\n")
        child.stdin.close()
        assert json.loads(child.stdout.readline()) == {"ready": 1, "last_global_step": -1}
        assert child.wait(timeout=60) == 0
    finally:
        os.close(shared)
        if child.poll() is None:
            child.kill()
            child.wait()


def _packed_row(step: int) -> tuple[list[tuple[str, str, tuple[int, ...], int]], np.ndarray]:
    """The fields of a packed row (as the recorder's engine lays them out) and row ``step`` in them."""
    record = _record(step)
    values = {
        "layers/net.conv1/activations": record.activations["net.conv1"].astype(np.float16),
        "layers/net.conv2/activations": record.activations["net.conv2"].astype(np.float16),
        "layers/net.conv1/params/0.weight": record.params["net.conv1"]["0.weight"],
        "steps/logits": record.logits,
        "steps/batch_loss": np.float32(record.batch_loss),
        "steps/batch_acc": np.float32(record.batch_acc),
    }
    fields, offset = [], 0
    for key, value in values.items():
        fields.append((key, str(value.dtype), tuple(value.shape), offset))
        offset += -(-value.nbytes // 8) * 8
    row = np.zeros(offset, dtype=np.uint8)
    for (_, _, _, start), value in zip(fields, values.values(), strict=True):
        row[start : start + value.nbytes] = np.frombuffer(np.ascontiguousarray(value).tobytes(), dtype=np.uint8)
    return fields, row


@pytest.mark.slow  # waits out the flush interval
def test_the_writer_process_writes_blocks_when_full_or_after_the_flush_interval(tmp_path: Path) -> None:
    path = tmp_path / "activations.h5"
    _create(path).close()
    fields, row = _packed_row(0)
    writer = WriterProcess(path, fields, row.nbytes, slots=5, flush_every=4, flush_seconds=3.0)
    try:
        with StoreReader(path) as live:
            for step in range(3):
                assert writer.submit(_packed_row(step)[1], step, 0, 0.0)
            time.sleep(0.5)
            assert live.refresh() == 0  # a block waits in the writer until it is full ...
            assert writer.submit(_packed_row(3)[1], 3, 0, 0.0)
            deadline = time.monotonic() + 30
            while live.refresh() < 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert live.num_steps == 4  # ... then goes out as one
            assert writer.submit(_packed_row(4)[1], 4, 0, 0.0)
            time.sleep(0.3)
            assert live.refresh() == 4
            while live.refresh() < 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert live.num_steps == 5  # ... or once the flush interval has passed
            np.testing.assert_array_equal(live.global_steps(), np.arange(5))
            np.testing.assert_array_equal(
                live.activations("net.conv2", np.array([4]))[0], _record(4).activations["net.conv2"].astype(np.float16)
            )
            assert live.params("net.conv1")["0.weight"][:, 0, 0, 0, 0].tolist() == [0, 1, 2, 3, 4]
            assert writer.submit(_packed_row(5)[1], 5, 0, 0.0)
    finally:
        writer.close()  # what it holds goes in at close
    with StoreReader(path) as store:
        assert store.global_steps().tolist() == [0, 1, 2, 3, 4, 5]
    with h5py.File(path, "r") as raw:
        assert raw["layers/net.conv1/activations"].fletcher32  # checksums kept in blocks


def test_a_writer_process_holding_every_slot_writes_them_instead_of_waiting_for_a_full_block(tmp_path: Path) -> None:
    # The child keeps rows in their shared slots until their block is on disk; with fewer slots than a block
    # it writes once it holds them all, or training would wait forever for a slot.
    path = tmp_path / "activations.h5"
    _create(path).close()
    fields, row = _packed_row(0)
    writer = WriterProcess(path, fields, row.nbytes, slots=2, flush_every=4, flush_seconds=30.0)
    try:
        started = time.monotonic()
        for step in range(5):
            assert writer.submit(_packed_row(step)[1], step, 0, 0.0)
        assert time.monotonic() - started < 20  # never waited for the 30 s flush interval
        with StoreReader(path) as live:
            assert live.num_steps >= 2
            np.testing.assert_array_equal(live.global_steps(), np.arange(live.num_steps))
    finally:
        writer.close()
    with StoreReader(path) as store:
        assert store.global_steps().tolist() == [0, 1, 2, 3, 4]
        np.testing.assert_array_equal(
            store.activations("net.conv2", np.array([3]))[0], _record(3).activations["net.conv2"].astype(np.float16)
        )
    assert writer.waits >= 1


@pytest.mark.parametrize("compression", ["lzf", "gzip"])
def test_compressed_stores_shuffle_bytes_and_keep_it_through_a_resume(tmp_path: Path, compression: str) -> None:
    path = tmp_path / "activations.h5"
    with _create(path, compression=compression) as writer:
        for step in range(20):
            writer.append(_record(step))
    with StoreWriter.resume(path, run_id="run-a", keep_through_step=9):
        pass
    with h5py.File(path, "r") as raw:
        activations = raw["layers/net.conv1/activations"]
        assert (activations.compression, activations.shuffle, activations.fletcher32) == (compression, True, True)
    with StoreReader(path) as store:
        assert store.global_steps().tolist() == list(range(10))
        expected = np.stack([_record(step).activations["net.conv1"] for step in range(10)]).astype(np.float16)
        np.testing.assert_array_equal(store.activations("net.conv1"), expected)


def _hdf5s_chunk(tmp_path: Path, data: np.ndarray, **filters) -> bytes:
    """The bytes HDF5's own pipeline stores for ``data`` written as one chunk (the oracle for ``_chunks``)."""
    with h5py.File(tmp_path / "oracle.h5", "w") as file:
        dataset = file.create_dataset("x", data=data, chunks=data.shape, **filters)
        return dataset.id.read_direct_chunk((0,) * data.ndim)[1]


@pytest.mark.parametrize(
    "data",
    [
        np.frombuffer(b"\x00\x01", np.uint8),  # one word: s1 = s2 = 1
        np.zeros(6, np.uint8),  # all zero: 0, not 0xffff
        np.full(4, 0xFF, np.uint8),  # words of 0xffff: sums that are positive multiples of 65535 are 0xffff
        np.full(7, 0xFF, np.uint8),  # odd: the last byte is a word's high byte
        np.arange(1, 2, dtype=np.uint8),  # a single byte
        np.random.default_rng(0).integers(0, 256, 8191, dtype=np.uint8),  # odd, below the short-chunk limit
        np.random.default_rng(1).integers(0, 256, 2 * 2048 * 40, dtype=np.uint8),  # whole blocks only
        np.random.default_rng(2).integers(0, 256, 2 * 2048 * 40 + 11, dtype=np.uint8),  # blocks, a tail, odd
        np.where(np.random.default_rng(3).random(300_000) < 0.999, 0xFF, 0).astype(np.uint8),  # near 65535 a word
    ],
    ids=["one-word", "zeros", "ones", "ones-odd", "one-byte", "short-odd", "blocks", "blocks-tail-odd", "dense"],
)
def test_fletcher32_is_hdf5s_checksum_bit_for_bit(tmp_path: Path, data: np.ndarray) -> None:
    from actrec.store._chunks import fletcher32

    stored = _hdf5s_chunk(tmp_path, data, fletcher32=True)
    assert stored[:-4] == data.tobytes()
    expected = int.from_bytes(stored[-4:], "little")
    assert fletcher32(data.reshape(1, -1)).tolist() == [expected]
    # Rows of a strided buffer (a block's chunks, each followed by room for its checksum) give the same.
    rows = np.zeros((3, data.size + 5), np.uint8)
    rows[:, : data.size] = data
    assert fletcher32(rows[:, : data.size]).tolist() == [expected] * 3


def test_fletcher32_known_values() -> None:
    from actrec.store._chunks import fletcher32

    def one(data: bytes) -> int:
        return int(fletcher32(np.frombuffer(data, np.uint8).reshape(1, -1))[0])

    assert one(b"\x00\x01") == 0x0001_0001
    assert one(b"\x00\x01\x00\x02") == (1 + 3) << 16 | 3  # s2 sums the running sums 1 and 3
    assert one(b"\x01") == 0x0100_0100  # a lone byte is the high byte of a word
    assert one(b"\x00" * 10) == 0
    assert one(b"\xff\xff") == 0xFFFF_FFFF


@pytest.mark.parametrize("itemsize", [2, 4])
def test_shuffle_and_deflate_are_what_hdf5_stores(tmp_path: Path, itemsize: int) -> None:
    from actrec.store._chunks import FILTER_DEFLATE, FILTER_FLETCHER32, FILTER_SHUFFLE, encode_chunk

    data = np.random.default_rng(itemsize).normal(size=(5, 37)).astype(f"f{itemsize}")
    raw = data.view(np.uint8).reshape(-1)
    stored = _hdf5s_chunk(tmp_path, data, shuffle=True)
    assert encode_chunk(raw, [(FILTER_SHUFFLE, (itemsize,))]).tobytes() == stored
    # Deflate's bytes depend on the zlib build; what must hold is that HDF5 reads them back (checked on read).
    encoded = encode_chunk(raw, [(FILTER_SHUFFLE, (itemsize,)), (FILTER_DEFLATE, (1,)), (FILTER_FLETCHER32, ())])
    with h5py.File(tmp_path / "direct.h5", "w") as file:
        dataset = file.create_dataset(
            "x", shape=data.shape, dtype=data.dtype, chunks=data.shape, shuffle=True, compression="gzip",
            compression_opts=1, fletcher32=True,
        )  # fmt: skip
        dataset.id.write_direct_chunk((0, 0), encoded)
        np.testing.assert_array_equal(dataset[()], data)


_BLOCKS = [16, 3, 5, 8, 16, 1, 11, 4]
"""Rows per block: whole chunks, blocks that start or end inside one, and blocks inside a single chunk."""


def _block_values(first_step: int, count: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(first_step)
    return {
        "layers/net.conv1/activations": rng.normal(0, 2, size=(count, 3, 2, 4, 4)).astype(np.float16),
        "layers/net.conv2/activations": rng.normal(0, 2, size=(count, 3, 3, 2, 2)).astype(np.float16),
        "layers/net.conv1/params/0.weight": rng.normal(size=(count, 2, 1, 3, 3)).astype(np.float32),
        "layers/net.conv1/params/0.bias": rng.normal(size=(count, 2)).astype(np.float32),
        "layers/net.conv1/abs_max": rng.random(count).astype(np.float32),
        "layers/net.conv2/abs_max": rng.random(count).astype(np.float32),
        "layers/net.conv1/nonfinite": np.zeros(count, np.int64),
        "layers/net.conv2/nonfinite": np.zeros(count, np.int64),
        "steps/logits": rng.normal(size=(count, 3, 3)).astype(np.float32),
        "steps/batch_loss": rng.random(count).astype(np.float32),
        "steps/batch_acc": rng.random(count).astype(np.float32),
    }


def _write_blocks(path: Path, compression: str, rows_per_chunk: int) -> dict[str, np.ndarray]:
    """Write :data:`_BLOCKS` with ``append_block``, flushing each as the writer process does; return every column."""
    written: dict[str, list[np.ndarray]] = {}
    with _create(path, compression=compression, rows_per_chunk=rows_per_chunk, background=False) as writer:
        step = 0
        for count in _BLOCKS:
            values = _block_values(step, count)
            # Strided views, as the writer process hands over rows still in their shared-memory slots.
            # Each row contiguous, rows apart (twice a row's bytes), like fields of consecutive slots.
            padded = {key: np.stack([array, array], axis=1)[:, 0] for key, array in values.items()}
            assert count == 1 or not any(padded[key].flags.c_contiguous for key in padded if "activations" in key)
            writer.append_block(padded, list(range(step, step + count)), [0] * count, [0.0] * count)
            writer.flush()
            for key, array in values.items():
                written.setdefault(key, []).append(array)
            step += count
    return {key: np.concatenate(arrays) for key, arrays in written.items()}


@pytest.mark.parametrize("compression", ["none", "gzip", "lzf"])
@pytest.mark.parametrize("rows_per_chunk", [1, 2, 8])
def test_rows_filling_whole_chunks_are_written_past_hdf5s_pipeline_and_read_back_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compression: str, rows_per_chunk: int
) -> None:
    from actrec.store import writer as store_writer

    direct_rows = []
    write_chunks = store_writer._Column._write_chunks

    def spy(column: store_writer._Column, values: np.ndarray, first_row: int, pipeline: tuple) -> None:
        assert first_row % column.chunk_rows == 0
        assert len(values) % column.chunk_rows == 0
        direct_rows.append(len(values))
        write_chunks(column, values, first_row, pipeline)

    monkeypatch.setattr(store_writer._Column, "_write_chunks", spy)
    path = tmp_path / "activations.h5"
    expected = _write_blocks(path, compression, rows_per_chunk)

    # Whole chunks of the four per-step columns went past HDF5, the rest through it (lzf only exists inside HDF5).
    start = whole = 0
    for count in _BLOCKS:
        head = min(-start % rows_per_chunk, count)
        whole += (count - head) // rows_per_chunk * rows_per_chunk
        start += count
    assert sum(direct_rows) == (0 if compression == "lzf" else 4 * whole)
    # HDF5 reads every row back, verifying each chunk's Fletcher-32 checksum on the way.
    with h5py.File(path, "r") as raw:
        for key, values in expected.items():
            np.testing.assert_array_equal(raw[key][()], values, err_msg=key)
        np.testing.assert_array_equal(raw["steps/global_step"][()], np.arange(sum(_BLOCKS)))
    with StoreReader(path) as store:
        assert store.num_steps == sum(_BLOCKS)
        np.testing.assert_array_equal(store.activations("net.conv2"), expected["layers/net.conv2/activations"])

    # Uncompressed chunks are byte for byte what HDF5 itself stores (gzip's depend on the zlib build).
    monkeypatch.setattr(store_writer, "_DIRECT_CHUNKS", False)
    reference = tmp_path / "reference.h5"
    _write_blocks(reference, compression, rows_per_chunk)
    if compression == "none":
        with h5py.File(path, "r") as ours, h5py.File(reference, "r") as theirs:
            dataset, hdf5s = ours["layers/net.conv1/activations"], theirs["layers/net.conv1/activations"]
            for row in range(0, dataset.shape[0], rows_per_chunk):
                offset = (row, 0, 0, 0, 0)
                assert dataset.id.read_direct_chunk(offset) == hdf5s.id.read_direct_chunk(offset), row


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_a_chunk_written_with_a_wrong_checksum_is_refused_on_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compression: str
) -> None:
    # The round trip above can fail: HDF5 does check the checksum of a chunk written past its pipeline.
    from actrec.store import _chunks
    from actrec.store import writer as store_writer

    fletcher32 = _chunks.fletcher32

    def off_by_one(chunks: np.ndarray) -> np.ndarray:
        return fletcher32(chunks) ^ np.uint32(1)

    monkeypatch.setattr(store_writer, "fletcher32", off_by_one)
    monkeypatch.setattr(_chunks, "fletcher32", off_by_one)
    path = tmp_path / "activations.h5"
    with _create(path, compression=compression, rows_per_chunk=8, background=False) as writer:
        values = _block_values(0, 16)
        writer.append_block(values, list(range(16)), [0] * 16, [0.0] * 16)
    with h5py.File(path, "r") as raw:
        np.testing.assert_array_equal(raw["steps/logits"][()], values["steps/logits"])  # written by HDF5: sound
        with pytest.raises(OSError, match="filter returned failure during read"):
            raw["layers/net.conv1/activations"][()]


def test_a_block_hands_over_its_rows_in_order_whether_or_not_the_ring_wrapped() -> None:
    from actrec.store._process import _Block

    memory = np.arange(4 * 12, dtype=np.uint8).reshape(4, 12)  # four slots of 12-byte rows
    fields = [("a", np.dtype(np.uint16), (2,), 0), ("b", np.dtype(np.float32), (2,), 4)]
    received: list[dict[str, np.ndarray]] = []

    class Writer:
        def append_block(self, values: dict, steps: list, epochs: list, walls: list) -> None:
            received.append({key: np.array(value) for key, value in values.items()})  # copied, as columns do

    block = _Block(memory, 4, fields)
    for slots in ([1, 2], [3, 0, 1]):  # consecutive slots, then slots across the end of the ring
        for slot in slots:
            block.add(slot, slot, 0, 0.0, 0.0)
        assert block.write_to(Writer()) == slots
        rows = memory[slots]
        np.testing.assert_array_equal(received[-1]["a"], rows[:, 0:4].view(np.uint16))
        np.testing.assert_array_equal(received[-1]["b"], rows[:, 4:12].view(np.float32))


# -- writers that end, die or overlap with readers and resumes ---------------------------------------------------

_DYING_PARENT = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from actrec.store import LayerSpec, WriterChild, WriterProcess
    from test_store import _create

    path = Path({path!r})
    # Rows written one at a time into 8-row gzip chunks: each write leaves the chunk's earlier version dead.
    _create(path, layers=[LayerSpec("wide", (64, 32, 32), "Conv2d", "symmetric")], compression="gzip",
            rows_per_chunk=8).close()
    wide = 3 * 64 * 32 * 32 * 2
    fields = [("layers/wide/activations", "float16", (3, 64, 32, 32), 0), ("steps/logits", "float32", (3, 3), wide),
              ("steps/batch_loss", "float32", (), wide + 40), ("steps/batch_acc", "float32", (), wide + 48)]
    child = WriterChild()
    writer = WriterProcess(path, fields, wide + 56, flush_every=1, flush_seconds=0.0, child=child)
    rng = np.random.default_rng(0)
    for step in range(24):
        row = np.zeros(wide + 56, np.uint8)
        row[:wide] = rng.normal(size=wide // 2).astype(np.float16).view(np.uint8)
        writer.submit(row, step, 0, 0.0)
        if step < 21:  # the last three may still be in the child's hands when the parent dies
            writer.flush()
    print(child.process.pid, os.stat(path).st_ino, flush=True)
    if {die}:
        os.kill(os.getpid(), signal.SIGKILL)  # the child sees its input end without being asked to close
    writer.close()
    """
)


def _gone(pid: int, timeout: float = 120.0) -> bool:
    """Whether process ``pid`` (not ours: an orphan) ends within ``timeout``; a zombie has ended (where nobody
    reaps orphans, e.g. under a container's init, it stays a zombie)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="watches the orphaned writer through /proc")
@pytest.mark.parametrize("dies", [False, True], ids=["closed", "parent-killed"])
def test_the_writer_of_a_killed_run_writes_its_rows_but_leaves_the_store_where_a_resume_may_have_put_another(
    tmp_path: Path, dies: bool
) -> None:
    path = tmp_path / "activations.h5"
    script = _DYING_PARENT.format(tests=str(Path(__file__).parent), path=str(path), die=dies)
    parent = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert parent.returncode == (-signal.SIGKILL if dies else 0), parent.stderr[-2000:]
    child_pid, inode = (int(word) for word in parent.stdout.split())
    assert _gone(child_pid), "the writer child did not finish"
    with StoreReader(path) as store:
        assert store.global_steps().tolist() == list(range(24))
    # Asked to close, the writer compacts away the dead chunk versions: a new file takes the store's name. The
    # writer of a killed run does not, since by then a resumed run may have replaced the store with its own.
    assert (os.stat(path).st_ino == inode) is dies


def test_a_reader_opening_the_store_as_a_writer_opens_it_is_never_refused(tmp_path: Path) -> None:
    # h5py's "r+" then `swmr_mode = True` left a moment when the file was open for plain writing, and a reader
    # opening then got HDF5's "file is already open for write" (1 read in 17 here; 0 to 8 in each 3 s).
    path = tmp_path / "activations.h5"
    with _create(path) as writer:
        writer.append(_record(0))
    script = textwrap.dedent(
        f"""
        import time
        from actrec.store import StoreWriter
        end = time.monotonic() + 5
        while time.monotonic() < end:
            StoreWriter.open_for_append({str(path)!r}, background=False).close()
        """
    )
    opener = subprocess.Popen([sys.executable, "-c", script])
    reads = 0
    try:
        while opener.poll() is None:
            with StoreReader(path) as store:
                assert store.num_steps == 1
            reads += 1
    finally:
        opener.wait(timeout=60)
    assert opener.returncode == 0
    assert reads > 20


def test_a_store_another_program_holds_open_for_plain_writing_is_refused_in_one_sentence(tmp_path: Path) -> None:
    path = tmp_path / "activations.h5"
    with _create(path) as writer:
        writer.append(_record(0))
    # Another process: not SWMR, so HDF5 marks the file open for writing until that program closes it.
    script = f"import h5py, sys\nwith h5py.File({str(path)!r}, 'r+', libver='latest'):\n print(1)\n sys.stdin.read()"
    holder = subprocess.Popen(
        [sys.executable, "-u", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "1\n"
        with pytest.raises(StoreError, match="open for writing by a program that does not share it"):
            StoreReader(path)
    finally:
        holder.communicate("", timeout=60)
    with StoreReader(path) as store:  # once that program closed it
        assert store.num_steps == 1
