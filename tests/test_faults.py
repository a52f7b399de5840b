"""Fault injection: damaged, incomplete and malformed stores, and training killed at random moments.

Every refusal is checked for its exit code, its one sentence, the time it took (a damaged store must
never hang) and for leaving every existing file byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from actrec.cli import main
from actrec.store import LayerSpec, ProbeSet, StepRecord, StoreError, StoreReader, StoreWriter, _integrity
from actrec.store._integrity import DamagedDataError

NUM_STEPS = 12
LAYERS = [
    LayerSpec("net.conv1", (4, 8, 8), "Sequential", "tanh", params={"0.weight": (4, 1, 3, 3), "0.bias": (4,)}),
    LayerSpec("net.conv2", (6, 4, 4), "Sequential", "symmetric"),
]


def _record(step: int) -> StepRecord:
    rng = np.random.default_rng(step)
    return StepRecord(
        global_step=step * 5,
        epoch=step // 4,
        batch_loss=1.0 / (step + 1),
        batch_acc=0.5,
        logits=rng.normal(size=(3, 3)).astype(np.float32),
        activations={
            "net.conv1": rng.uniform(-1, 1, size=(3, 4, 8, 8)),
            "net.conv2": rng.normal(0, 3, size=(3, 6, 4, 4)),
        },
        params={"net.conv1": {"0.weight": np.full((4, 1, 3, 3), step, np.float32), "0.bias": np.zeros(4)}},
        wall_time=1000.0 + step,
    )


def _write_store(path: Path, rows_per_chunk: int | None = 1) -> Path:
    """A complete store of NUM_STEPS rows; format v2 puts every chunk under a Fletcher-32 checksum.

    One step a chunk by default, so a test can damage exactly one step (stores made with the default chunking,
    several steps a chunk, lose a whole chunk's steps: ``test_a_damaged_chunk_of_several_steps_...``)."""
    probes = ProbeSet(np.zeros((3, 1, 8, 8), np.float32), np.arange(3), np.arange(3), ["a", "b", "c"])
    options = {"run_id": "run-a", "config": {"lr": 0.1}, "probes": probes, "layers": LAYERS, "num_classes": 3}
    with StoreWriter.create(path, background=False, rows_per_chunk=rows_per_chunk, **options) as writer:
        for step in range(NUM_STEPS):
            writer.append(_record(step))
        writer.append_scalar("val/loss", 55, 0.25)
    with h5py.File(path, "r") as file:
        assert file["layers/net.conv1/activations"].fletcher32
    return path


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_store(tmp_path_factory.mktemp("pristine") / "activations.h5")


def _damage(path: Path, offset: int, length: int = 64) -> None:
    with path.open("r+b") as file:
        file.seek(offset)
        file.write(b"\xab" * length)


def _object_address(path: Path, key: str) -> int:
    with h5py.File(path, "r") as file:
        return h5py.h5o.get_info(file[key].id).addr


def _chunk_offset(path: Path, key: str, row: int) -> int:
    with h5py.File(path, "r") as file:
        return file[key].id.get_chunk_info_by_coord((row,) + (0,) * (file[key].ndim - 1)).byte_offset


def _fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


_HANG_S = 300
"""Past this a refusal hung (HDF5 retrying a damaged header took ~40 minutes); a refusal takes about a second,
and a 2-core machine shared by other test runs must never come near this bound."""


def _refuse(store: Path, capsys: pytest.CaptureFixture[str] | None = None) -> str:
    """``actrec render`` refuses ``store``: exit 1 with one sentence, quickly, nothing written or changed.

    Runs a real process unless ``capsys`` is given (then ``actrec.cli.main`` in this process: faster).
    """
    folder = store.parent
    before = _fingerprint(folder)
    argv = ["render", str(store), "--out", str(folder / "out"), "--quiet"]
    started = time.monotonic()
    if capsys is None:
        command = [sys.executable, "-m", "actrec.cli", *argv]
        result = subprocess.run(command, capture_output=True, text=True, timeout=_HANG_S, check=False)
        code, stderr = result.returncode, result.stderr
    else:
        code, stderr = main(argv), capsys.readouterr().err
    elapsed = time.monotonic() - started
    assert code == 1, stderr
    assert elapsed < _HANG_S, f"took {elapsed:.1f} s"  # a hang, not a slow machine: see _HANG_S
    message = stderr.strip()
    assert "\n" not in message
    assert "Traceback" not in message
    assert _fingerprint(folder) == before
    assert not (folder / "out").exists()
    return message.removeprefix("actrec render: ")


# -- damaged stores ------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["probes/labels", "layers/net.conv2", "layers/net.conv1/activations", "steps"])
@pytest.mark.slow  # HDF5 retries each damaged header
def test_damaged_object_header_is_refused_within_seconds(tmp_path: Path, pristine: Path, key: str) -> None:
    # The offsets 1,024 and 50,000 in a quickstart store hit the headers of probes/labels and
    # layers/net.conv5; SWMR reads then retried for ~40 minutes. Here the headers are found by address.
    store = tmp_path / "activations.h5"
    shutil.copy(pristine, store)
    _damage(store, _object_address(store, key) + 8)
    message = _refuse(store)
    assert message == (
        f"{store} is damaged: its object {key} cannot be read (incorrect metadata checksum after all read attempts)."
    )


@pytest.mark.slow  # opens the store damaged at every 512th byte
def test_no_offset_in_the_metadata_hangs_or_escapes_as_a_traceback(tmp_path: Path, pristine: Path) -> None:
    # Sweep the region holding the superblock, object headers and chunk indices, in this process
    # (a subprocess per offset would take minutes): every open either works or is one StoreError.
    with h5py.File(pristine, "r") as file:
        first_chunk = min(
            file[key].id.get_chunk_info(0).byte_offset for key in ("steps/global_step", "layers/net.conv1/activations")
        )
    store = tmp_path / "activations.h5"
    outcomes: dict[str, int] = {}
    for offset in range(0, first_chunk, 512):
        shutil.copy(pristine, store)
        _damage(store, offset)
        started = time.monotonic()
        try:
            with StoreReader(store) as reader:
                for name in reader.layer_names:
                    reader.activations(name)
                    reader.params(name)
                reader.logits()
                reader.probes  # noqa: B018
            outcome = "read"
        except DamagedDataError:
            outcome = "damaged row"
        except StoreError as error:
            outcome = "refused" if "\n" not in str(error) else f"several lines: {error}"
        assert time.monotonic() - started < _HANG_S / 3, f"offset {offset} hung"  # ~40 min without the fix
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert set(outcomes) <= {"read", "damaged row", "refused"}, outcomes
    assert outcomes.get("refused", 0) > 0, outcomes


@pytest.mark.parametrize("row", [0, 7, NUM_STEPS - 1])
def test_damaged_chunk_is_reported_per_row_and_the_rest_reads(tmp_path: Path, pristine: Path, row: int) -> None:
    store = tmp_path / "activations.h5"
    shutil.copy(pristine, store)
    _damage(store, _chunk_offset(store, "layers/net.conv1/activations", row) + 100)
    with StoreReader(store) as reader:
        with pytest.raises(
            DamagedDataError, match=rf"^step {row * 5} of layer net.conv1 is damaged \(checksum mismatch\)$"
        ) as caught:
            reader.activations("net.conv1")
        assert (caught.value.layer, caught.value.step, caught.value.row) == ("net.conv1", row * 5, row)
        assert caught.value.key == "layers/net.conv1/activations"
        good = [r for r in range(NUM_STEPS) if r != row]
        with StoreReader(pristine) as clean:
            np.testing.assert_array_equal(
                reader.activations("net.conv1", np.array(good)), clean.activations("net.conv1", np.array(good))
            )
            np.testing.assert_array_equal(reader.activations("net.conv2"), clean.activations("net.conv2"))
            np.testing.assert_array_equal(reader.logits(), clean.logits())
        with pytest.raises(DamagedDataError, match=rf"^step {row * 5} of layer net.conv1"):
            reader.activations("net.conv1", slice(row, row + 1))


def test_a_damaged_chunk_of_several_steps_costs_those_steps_and_the_rest_reads(tmp_path: Path, pristine: Path) -> None:
    store = _write_store(tmp_path / "activations.h5", rows_per_chunk=None)  # chunked as the recorder's stores are
    with h5py.File(store, "r") as file:
        rows = file["layers/net.conv1/activations"].chunks[0]
    assert rows == 8  # 3 probes x 4 x 8 x 8 float16: 8 steps a chunk, the most chunk_rows gives
    _damage(store, _chunk_offset(store, "layers/net.conv1/activations", 8) + 100)  # rows 8-11
    with StoreReader(store) as reader, StoreReader(pristine) as clean:
        with pytest.raises(DamagedDataError, match=r"^step 40 of layer net.conv1 is damaged \(checksum mismatch\)$"):
            reader.activations("net.conv1")
        for row in range(8, NUM_STEPS):
            with pytest.raises(DamagedDataError, match=rf"^step {row * 5} of layer net.conv1"):
                reader.activations("net.conv1", slice(row, row + 1))
        np.testing.assert_array_equal(reader.activations("net.conv1", slice(0, 8)), clean.activations("net.conv1")[:8])
        np.testing.assert_array_equal(reader.activations("net.conv2"), clean.activations("net.conv2"))
    from actrec.recording import Recording

    with Recording.open(store) as recording:
        read = recording.layer("net.conv1").read(np.arange(NUM_STEPS))
    assert read.rows.tolist() == list(range(8))
    assert read.damaged == [8, 9, 10, 11]


def test_damaged_step_column_is_reported_by_row(tmp_path: Path, pristine: Path) -> None:
    store = tmp_path / "activations.h5"
    shutil.copy(pristine, store)
    _damage(store, _chunk_offset(store, "steps/global_step", 0) + 8, length=8)
    with StoreReader(store) as reader:
        with pytest.raises(DamagedDataError, match=r"^row 0 of steps/global_step is damaged \(checksum mismatch\)$"):
            reader.global_steps()
        assert reader.activations("net.conv2").shape == (NUM_STEPS, 3, 6, 4, 4)


# -- incomplete and malformed stores -------------------------------------------------------------


def _edited(pristine: Path, tmp_path: Path, edit: Callable[[h5py.File], None]) -> Path:
    store = tmp_path / "activations.h5"
    shutil.copy(pristine, store)
    with h5py.File(store, "r+") as file:
        edit(file)
    return store


@pytest.mark.parametrize(
    ("keys", "listed"),
    [
        (["layers/net.conv1/activations"], "layers/net.conv1/activations"),
        (["steps/epoch"], "dataset steps/epoch"),
        (["probes"], "group probes, dataset probes/images, dataset probes/labels, dataset probes/indices"),
        (["steps/epoch", "layers/net.conv2/abs_max"], "dataset steps/epoch, layers/net.conv2/abs_max"),
        (["layers/net.conv1/nonfinite"], "layers/net.conv1/nonfinite"),
    ],
)
def test_store_missing_datasets_or_groups_is_refused_listing_them(
    tmp_path: Path, pristine: Path, keys: list[str], listed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    def delete(file: h5py.File) -> None:
        for key in keys:
            del file[key]

    store = _edited(pristine, tmp_path, delete)
    assert _refuse(store, capsys) == f"{store} is not a complete actrec store; it lacks {listed}."


@pytest.mark.parametrize(
    ("attribute", "value", "message"),
    [
        ("format_version", "two", "has a format_version attribute that is not a whole number ('two')."),
        ("format_version", 1.5, "has a format_version attribute that is not a whole number (np.float64(1.5))."),
        ("class_names", "zero,one", "has a class_names attribute that is not a JSON list."),
    ],
)
def test_malformed_attributes_the_pictures_need_are_one_sentence(
    tmp_path: Path, pristine: Path, attribute: str, value: object, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    def set_attribute(file: h5py.File) -> None:
        file.attrs[attribute] = value

    store = _edited(pristine, tmp_path, set_attribute)
    assert _refuse(store, capsys) == f"{store} {message}"


@pytest.mark.parametrize(
    ("attribute", "value", "message"),
    [
        ("config", "{not json", "has a config attribute that is not a JSON object."),
        ("config", "[1, 2]", "has a config attribute that is not a JSON object."),
        ("config", None, "has no config attribute."),
        ("run_id", None, "has no run_id attribute."),
    ],
)
def test_descriptive_attributes_are_checked_when_read(
    tmp_path: Path, pristine: Path, attribute: str, value: object, message: str
) -> None:
    # The store still opens and its arrays read (the viewer draws a store whose config it cannot decode);
    # whoever asks for the attribute gets one sentence.
    def edit(file: h5py.File) -> None:
        if value is None:
            del file.attrs[attribute]
        else:
            file.attrs[attribute] = value

    store = _edited(pristine, tmp_path, edit)
    with StoreReader(store) as reader:
        assert reader.activations("net.conv1").shape[0] == NUM_STEPS
        with pytest.raises(StoreError, match=f"^{re.escape(f'{store} {message}')}$"):
            getattr(reader, attribute)


def test_missing_attribute_is_listed(tmp_path: Path, pristine: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def delete(file: h5py.File) -> None:
        del file["layers/net.conv2"].attrs["scale_kind"]
        del file["layers/net.conv1"].attrs["sample_shape"]

    store = _edited(pristine, tmp_path, delete)
    assert _refuse(store, capsys) == (
        f"{store} is not a complete actrec store; it lacks attribute sample_shape of layers/net.conv1, "
        "attribute scale_kind of layers/net.conv2."
    )


def test_tensorboard_print_refuses_an_incomplete_store_in_one_sentence(
    tmp_path: Path, pristine: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = _edited(pristine, tmp_path, lambda file: file.__delitem__("steps/epoch"))
    assert main(["tensorboard", str(store), "--print"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"actrec tensorboard: {store} is not a complete actrec store; it lacks dataset steps/epoch."
    )


def test_a_pristine_store_reads_whole(pristine: Path) -> None:
    with StoreReader(pristine) as reader:
        assert reader.num_steps == NUM_STEPS
        assert reader.config == {"lr": 0.1}
        assert json.loads(json.dumps(reader.class_names)) == ["a", "b", "c"]
        np.testing.assert_array_equal(reader.global_steps(), np.arange(NUM_STEPS) * 5)


# -- SIGKILL at random moments of a real training --------------------------------------------------

# A parent process imports torch and Lightning once, then forks one `actrec train` after another: each
# child resumes from the newest checkpoint and is SIGKILLed after a random delay (seeded), so twenty
# kills cost seconds each instead of an interpreter start-up each. A child that finishes before its kill
# (training speed varies several-fold on a shared machine) ends a chain, and the next child starts
# another. After every kill the parent opens the store and checks it against what it saw just before
# the kill; the last child runs to the end.
_KILL_CHAIN = r"""
import json, os, random, signal, sys, time
from pathlib import Path

import torch
from actrec.store import StoreError, StoreReader
from actrec.trainer.cli import train_main

root, kills, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
args = sys.argv[4:]
rng = random.Random(seed)
chain = 0  # a run that finishes before its kill ends a chain; the next attempt starts another
runs_dir = root / f"chain_{chain}"


def step_of(checkpoint):
    return int(checkpoint.stem.rsplit("step=", 1)[1])


def size_of(path):
    try:
        return path.stat().st_size
    except FileNotFoundError:  # a live run's ModelCheckpoint removed it after rglob listed it
        return 0


def newest_checkpoint():
    checkpoints = [path for path in runs_dir.rglob("*.ckpt") if size_of(path)]
    return max(checkpoints, key=step_of) if checkpoints else None


def store_named_in(checkpoint):
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["callbacks"]
    (recorder,) = [value for key, value in state.items() if "ActivationRecorder" in key]
    return Path(recorder["store_path"])


def current_store():
    # While a run is live, its newest checkpoint can be replaced (removed, or still being written) between
    # listing and loading it: look again, a few times, before giving up.
    for attempt in range(20):
        checkpoint = newest_checkpoint()
        if checkpoint is None:
            break
        try:
            return store_named_in(checkpoint)
        except (OSError, EOFError, RuntimeError):
            if attempt == 19:
                raise
            time.sleep(0.05)
    stores = sorted(runs_dir.rglob("activations.h5"), key=lambda path: int(path.parent.name.split("_")[1]))
    return stores[-1] if stores else None


def steps_in(store):
    if store is None or not store.exists():
        return None
    with StoreReader(store) as reader:
        return reader.global_steps().tolist()


def run(args, kill_after):
    pid = os.fork()
    if pid == 0:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        torch.set_num_threads(1)
        os._exit(train_main(args))
    seen = None
    if kill_after is not None:
        time.sleep(kill_after)
        try:
            seen = steps_in(current_store())  # what the store shows just before the kill
        except StoreError:
            seen = None
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return status, seen


# The uninterrupted run first, timed: kills land at a fraction of its length, so that most runs are killed
# mid-training whether this machine is quick or loaded (fixed delays let quick runs finish first).
started = time.monotonic()
run(["--runs_dir", str(root / "uninterrupted"), *args], None)
whole = time.monotonic() - started
report = []
for attempt in range(kills + 1):
    checkpoint = newest_checkpoint()
    resume = ["--ckpt_path", str(checkpoint)] if checkpoint else []
    delay = rng.uniform(0.3, 0.7) * whole if attempt < kills else None
    try:
        before = steps_in(current_store())  # the store as the previous run left it
    except StoreError:
        before = None
    status, seen = run(["--runs_dir", str(runs_dir), *args, *resume], delay)
    store = current_store()
    try:
        after = steps_in(store)
    except StoreError as error:
        after = f"refused: {error}"
    report.append({"delay": delay, "status": status, "resumed_from": checkpoint and checkpoint.name,
                   "before": before, "seen_before_kill": seen, "after": after, "store": str(store)})
    if status == 0 and attempt < kills:
        chain += 1
        runs_dir = root / f"chain_{chain}"
print(json.dumps(report))
"""

_CHAIN_RUN = [
    "--trainer.max_epochs=20",
    "--trainer.limit_train_batches=4",
    "--trainer.limit_val_batches=1",
    "--trainer.limit_test_batches=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--data.batch_size=32",
    "--recorder.every_n_steps=1",
]


@pytest.mark.slow
def test_twenty_sigkills_each_leave_a_complete_store_and_resume_loses_or_repeats_no_step(tmp_path: Path) -> None:
    runs_dir = tmp_path / "chain"
    command = [sys.executable, "-c", _KILL_CHAIN, str(runs_dir), "20", "11", *_CHAIN_RUN]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    (tmp_path / "report.json").write_text(json.dumps(report, indent=1))

    assert len(report) == 21
    for entry in report[:-1]:
        # Killed, or (on a fast machine) finished before its kill came; never ended by an error.
        assert entry["status"] in (signal.SIGKILL, 0), entry
        after = entry["after"]
        if after is None:
            continue  # killed before its store was created
        # Every flushed step is there, in order, once: rows are steps 0, 1, 2, ... with nothing missing.
        assert after == list(range(len(after))), entry
        seen = entry["seen_before_kill"]
        if seen is not None and seen != entry["before"]:  # nothing this run flushed before the kill is lost
            assert len(after) >= len(seen), entry
        if entry["resumed_from"]:  # a resume keeps every row through its checkpoint's step
            # (Rows past it, left by the run killed before, are dropped by design; a kill that comes before
            # this run's resume has swapped the store in shows them in `seen`, which is why the check above
            # only counts rows this run itself flushed.)
            kept = int(entry["resumed_from"].rsplit("step=", 1)[1].removesuffix(".ckpt")) + 1
            assert len(after) >= kept, entry
    final = report[-1]
    assert final["status"] == 0, final
    assert final["after"] == list(range(81)), final  # 20 epochs of 4 steps, and step 0
    assert sum(entry["status"] == signal.SIGKILL for entry in report) >= 10, report
    resumes = [entry for entry in report if entry["resumed_from"]]
    assert len(resumes) >= 5, report  # the chain really resumed, not only restarted

    (uninterrupted,) = (runs_dir / "uninterrupted").rglob("activations.h5")
    with StoreReader(final["store"]) as chained, StoreReader(uninterrupted) as straight:
        for name in straight.layer_names:
            assert chained.activations(name).tobytes() == straight.activations(name).tobytes(), name
        assert chained.logits().tobytes() == straight.logits().tobytes()
        assert chained.steps()["batch_loss"].tobytes() == straight.steps()["batch_loss"].tobytes()


def _child_processes() -> list[int]:
    """This process's living child processes (Linux: read from /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            children.append(int(stat.parent.name))
    return children


@pytest.mark.slow  # child processes under a time limit
def test_without_access_to_hdf5s_retry_setting_a_child_process_walks_the_structure_under_a_time_limit(
    tmp_path: Path, pristine: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where h5py runs on an HDF5 that ctypes cannot reach, the structure is walked in a child process
    # (with HDF5's default 100 attempts) that is killed at the time limit.
    monkeypatch.setattr(_integrity, "_hdf5_library", lambda: None)
    monkeypatch.setattr(_integrity, "STRUCTURE_WALK_SECONDS", 3.0)
    with StoreReader(pristine) as reader:  # an intact store passes the walk
        assert reader.num_steps == NUM_STEPS
    store = tmp_path / "activations.h5"
    shutil.copy(pristine, store)
    _damage(store, _object_address(store, "layers/net.conv2") + 8)
    # The message names the time limit only when the child was stopped at it; and it was killed, not left running.
    with pytest.raises(StoreError, match=r"is damaged: its structure could not be read within 3 s\.$"):
        StoreReader(store)
    assert _child_processes() == []


def test_an_open_reader_never_keeps_the_writer_from_opening_the_store(tmp_path: Path, pristine: Path) -> None:
    # The writer opens the store to append right after creating or resuming it. A reader (a viewer
    # polling the run) that opened it just before used to hold HDF5's file lock, and the training ended
    # with "unable to lock file": seen in test_resume.py's poll. Readers now take no lock.
    store = tmp_path / "activations.h5"
    shutil.copy(pristine, store)
    append = (
        "import sys; from pathlib import Path; from actrec.store import StoreWriter\n"
        "StoreWriter.open_for_append(Path(sys.argv[1]), flush_every=1, background=False).close()"
    )
    with StoreReader(store) as reader:
        result = subprocess.run([sys.executable, "-c", append, str(store)], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr[-1000:]
        assert reader.num_steps == NUM_STEPS


# -- resuming a damaged or incomplete store ------------------------------------------------------


def test_resuming_an_incomplete_store_is_refused_listing_what_it_lacks(tmp_path: Path, pristine: Path) -> None:
    store = _edited(pristine, tmp_path, lambda file: file.__delitem__("steps/logits"))
    before = _fingerprint(tmp_path)
    with pytest.raises(StoreError, match=r"is not a complete actrec store; it lacks dataset steps/logits\.$"):
        StoreWriter.resume(store, run_id="run-a", keep_through_step=20, background=False)
    assert _fingerprint(tmp_path) == before


def test_resuming_over_a_damaged_kept_chunk_is_one_sentence_and_leaves_no_temporary_file(
    tmp_path: Path, pristine: Path
) -> None:
    store = tmp_path / "activations.h5"
    shutil.copy(pristine, store)
    _damage(store, _chunk_offset(store, "layers/net.conv2/activations", 1), length=16)
    before = _fingerprint(tmp_path)
    with pytest.raises(StoreError, match=r"could not be copied to resume it \(.+\); free disk space, or restore"):
        StoreWriter.resume(store, run_id="run-a", keep_through_step=20, background=False)
    assert _fingerprint(tmp_path) == before  # the store untouched, no .resuming file left


def test_resume_copies_a_store_longer_than_one_block_exactly(tmp_path: Path, pristine: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr("actrec.store.writer._COPY_BLOCK_ROWS", 5)  # 12 rows: blocks of 5, 5 and 2
    store = tmp_path / "activations.h5"
    shutil.copy(pristine, store)
    StoreWriter.resume(store, run_id="run-a", keep_through_step=50, background=False).close()
    with StoreReader(pristine) as expected, StoreReader(store) as resumed:
        assert resumed.global_steps().tolist() == expected.global_steps()[:11].tolist()
        np.testing.assert_array_equal(resumed.activations("net.conv2"), expected.activations("net.conv2")[:11])
        weights = expected.params("net.conv1")["0.weight"][:11]
        np.testing.assert_array_equal(resumed.params("net.conv1")["0.weight"], weights)


# -- reads that fail without a damaged row -------------------------------------------------------


def test_a_read_failing_once_with_every_row_intact_is_retried(pristine: Path) -> None:
    attempts = []

    def flaky_read() -> np.ndarray:  # a passing I/O error on the first try, as a network disk gives
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("Can't synchronously read data (passing I/O error)")
        return dataset[:4]

    with h5py.File(pristine, "r") as file:
        dataset = file["layers/net.conv1/activations"]
        data = _integrity.read_checked(flaky_read, dataset, np.arange(4), lambda row: row * 5)
        np.testing.assert_array_equal(data, dataset[:4])
    assert len(attempts) == 2


def test_a_read_failing_twice_with_every_row_intact_is_not_blamed_on_a_step(pristine: Path) -> None:
    def failing_read() -> np.ndarray:
        raise OSError("Can't synchronously read data (I/O error)")

    with h5py.File(pristine, "r") as file:
        dataset = file["layers/net.conv1/activations"]
        with pytest.raises(StoreError, match=r"could not be read \(I/O error\), though each of its rows") as raised:
            _integrity.read_checked(failing_read, dataset, np.arange(4), lambda row: row * 5)
    assert not isinstance(raised.value, DamagedDataError)


# -- a run's store belongs to its run ------------------------------------------------------------

_RESUME_RUN = [
    "--experiment=kill",
    "--trainer.limit_train_batches=3",
    "--trainer.limit_val_batches=1",
    "--trainer.limit_test_batches=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--data.batch_size=32",
    "--recorder.every_n_steps=2",
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<tmp>/runs/kill/version_0`` of a 2-epoch run, 3 batches each: checkpoint epoch=1-step=6, rows 0..6."""
    from actrec.trainer.cli import train_main

    runs_dir = tmp_path_factory.mktemp("original") / "runs"
    assert train_main(["--runs_dir", str(runs_dir), "--trainer.max_epochs=2", *_RESUME_RUN]) == 0
    return runs_dir / "kill" / "version_0"


def _copy_run(run: Path, root: Path) -> tuple[Path, Path]:
    """``run`` copied to ``root/runs/kill/version_0``; returns (the copy, its checkpoint)."""
    copy = root / "runs" / "kill" / "version_0"
    shutil.copytree(run, copy)
    return copy, next((copy / "checkpoints").iterdir())


def _train(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from actrec.trainer.cli import train_main

    code = train_main(args)
    return code, capsys.readouterr().err


@pytest.mark.slow  # two short fits
def test_resuming_a_copied_run_continues_the_copys_store_and_leaves_the_original_byte_identical(
    tmp_path: Path, trained_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The data loss: the checkpoint names the original's store by its absolute path, and the resume
    # trimmed and extended that store, leaving the copy's untouched.
    original = _fingerprint(trained_run.parent.parent)
    copy, checkpoint = _copy_run(trained_run, tmp_path)
    runs_dir = copy.parent.parent
    code, stderr = _train(
        ["--runs_dir", str(runs_dir), "--trainer.max_epochs=3", *_RESUME_RUN, "--ckpt_path", str(checkpoint)], capsys
    )
    assert code == 0, stderr
    assert _fingerprint(trained_run.parent.parent) == original
    with StoreReader(copy / "activations.h5") as store:
        assert store.global_steps().tolist() == [0, 2, 4, 6, 8, 9]
    summary = json.loads((runs_dir / "kill" / "version_1" / "summary.json").read_text())
    assert summary["store_path"] == str((copy / "activations.h5").resolve())


def test_resuming_a_copied_run_without_its_store_is_refused_and_touches_nothing(
    tmp_path: Path, trained_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    original = _fingerprint(trained_run.parent.parent)
    copy, checkpoint = _copy_run(trained_run, tmp_path)
    (copy / "activations.h5").unlink()
    before = _fingerprint(tmp_path)
    runs_dir = copy.parent.parent
    code, stderr = _train(
        ["--runs_dir", str(runs_dir), "--trainer.max_epochs=3", *_RESUME_RUN, "--ckpt_path", str(checkpoint)], capsys
    )
    assert code == 1
    assert stderr == (
        f"actrec train: the checkpoint {checkpoint} belongs to the run in {copy}, but the "
        f"activation store it continues, {trained_run / 'activations.h5'}, lies outside that run (a copied or "
        f"moved run?); copy that store into {copy}, set the recorder's path to it to continue it anyway, or set "
        "the recorder's overwrite option to start a new store.\n"
    )
    assert _fingerprint(trained_run.parent.parent) == original
    assert _fingerprint(tmp_path) == before
    assert not (runs_dir / "kill" / "version_1").exists()


def test_resuming_into_another_runs_store_is_refused_and_neither_store_is_trimmed(
    tmp_path: Path, trained_run: Path, pristine: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    original = _fingerprint(trained_run.parent.parent)
    copy, checkpoint = _copy_run(trained_run, tmp_path)
    shutil.copy(pristine, copy / "activations.h5")  # another run's store (run_id "run-a") in the copy's place
    before = _fingerprint(tmp_path)
    runs_dir = copy.parent.parent
    code, stderr = _train(
        ["--runs_dir", str(runs_dir), "--trainer.max_epochs=3", *_RESUME_RUN, "--ckpt_path", str(checkpoint)], capsys
    )
    assert code == 1
    assert re.fullmatch(
        rf"actrec train: .*{re.escape(str(copy / 'activations.h5'))} belongs to run run-a, not to the checkpoint's "
        r"run [0-9a-f]{32}; .*\.\n",
        stderr,
    ), stderr
    assert _fingerprint(trained_run.parent.parent) == original
    assert _fingerprint(tmp_path) == before


# -- paths and text that escape --------------------------------------------------------------------


@pytest.mark.parametrize("experiment", ["../../ESCAPED", "/tmp/ESCAPED-actrec", ".", "a/../.."])
def test_an_experiment_name_leading_outside_the_runs_dir_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], experiment: str
) -> None:
    runs_dir = tmp_path / "a" / "b" / "runs"
    runs_dir.mkdir(parents=True)
    code, stderr = _train(["--runs_dir", str(runs_dir), "--experiment", experiment], capsys)
    assert code == 1
    assert stderr == (
        f"actrec train: --experiment {experiment} leads outside --runs_dir {runs_dir}; pass a folder name inside it.\n"
    )
    assert [path for path in tmp_path.rglob("*") if path != runs_dir and path not in runs_dir.parents] == []
    assert not Path("/tmp/ESCAPED-actrec").exists()


@pytest.mark.slow  # a real `actrec train` process
def test_a_read_only_runs_dir_is_one_sentence(tmp_path: Path) -> None:
    # A read-only file system (root may write into a chmod 555 folder, not into a read-only mount): a private
    # mount namespace binds the folder read-only for the one `actrec train` process.
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    probe = (
        subprocess.run(["unshare", "-rm", "true"], capture_output=True, check=False)
        if shutil.which("unshare")
        else None
    )
    if probe is None or probe.returncode != 0:
        pytest.skip("unshare cannot make a mount namespace here, so no read-only folder can be made")
    script = (
        f"mount --bind {runs_dir} {runs_dir} && mount -o remount,bind,ro {runs_dir} && "
        f"exec {sys.executable} -m actrec.cli train --runs_dir {runs_dir}"
    )
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert result.stderr == (
        f"actrec train: --runs_dir {runs_dir} cannot be written ({runs_dir} is read-only); pass a writable folder.\n"
    )
    assert list(runs_dir.iterdir()) == []


@pytest.mark.parametrize("hostile", ["<!--<script>", "</script><script>alert(1)</script>", "<!--"])
def test_html_comment_and_script_openers_in_report_data_leave_the_page_script_whole(
    tmp_path: Path, hostile: str
) -> None:
    from actrec.report import build_report

    store = _write_store(tmp_path / f"{hostile.replace('/', '_')}x" / "version_0" / "activations.h5")
    page = build_report(store.parent).path.read_text(encoding="utf-8")
    # The JSON element holds no "<" at all: by the HTML spec nothing in it can then end the element early or
    # enter the escaped state that makes "<!--<script>" swallow the page script.
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>\n<script>', page, re.S)
    assert match is not None
    assert "<" not in match[1]
    assert hostile.replace("/", "_") in json.dumps(json.loads(match[1]), ensure_ascii=False)
    assert page.count("<script") == 2


EVIL = "net.\x1b]0;pwned\x07\x1b[2Jconv"


@pytest.fixture(scope="module")
def evil_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store whose second layer is named with terminal escapes (set the window title, clear the screen)."""
    path = tmp_path_factory.mktemp("evil") / "run" / "activations.h5"
    path.parent.mkdir()
    layers = [LAYERS[0], LayerSpec(EVIL, (6, 4, 4), "Sequential", "symmetric")]
    probes = ProbeSet(np.zeros((3, 1, 8, 8), np.float32), np.arange(3), np.arange(3), ["a", "b", "c"])
    options = {"run_id": "evil", "config": {}, "probes": probes, "layers": layers, "num_classes": 3}
    with StoreWriter.create(path, background=False, **options) as writer:
        for step in range(4):
            record = _record(step)
            record.activations[EVIL] = record.activations.pop("net.conv2")
            writer.append(record)
    return path


def test_terminal_escapes_in_layer_names_are_shown_not_obeyed(
    tmp_path: Path, evil_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["render", str(evil_store), "--layers", "nope", "--out", str(tmp_path / "out"), "--quiet"]) == 1
    stderr = capsys.readouterr().err
    assert "\x1b" not in stderr
    assert "\x07" not in stderr
    assert "net.\\x1b]0;pwned\\x07\\x1b[2Jconv" in stderr
    run = tmp_path / "run"
    shutil.copytree(evil_store.parent, run)
    assert main(["dynamics", str(run), "--no-png", "--no-tensorboard"]) == 0
    captured = capsys.readouterr()
    assert "\x1b" not in captured.out + captured.err
    assert "net.\\x1b]0;pwned\\x07\\x1b[2Jconv" in captured.out


def test_terminal_escapes_in_summary_fields_are_shown_not_obeyed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from actrec.runs import write_summary

    run = tmp_path / "runs" / "x" / "version_0"
    run.mkdir(parents=True)
    write_summary(run, {"state": "finished", "model": "\x1b]0;pwned\x07mlp\x1b[2J", "dataset": "mnist\x9b2J"})
    assert main(["runs", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "\x9b" not in out
    assert "\\x1b]0;pwned\\x07mlp\\x1b[2J" in out


def test_runs_never_looks_at_a_store_the_summary_names_outside_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from actrec.runs import write_summary

    secret = tmp_path / "secret"
    secret.write_bytes(b"x" * 651)
    run = tmp_path / "runs" / "x" / "version_0"
    run.mkdir(parents=True)
    write_summary(run, {"state": "finished", "store_path": str(secret)})
    assert main(["runs", str(tmp_path / "runs"), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["store_bytes"] is None
    inside = tmp_path / "runs" / "x" / "version_0" / "activations.h5"
    inside.write_bytes(b"x" * 651)
    assert main(["runs", str(tmp_path / "runs"), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["store_bytes"] == 651


@pytest.mark.parametrize("pid", [1099511627776, -1, 0, True, 2**31])
def test_a_summary_with_an_impossible_pid_shows_as_crashed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pid: int
) -> None:
    import socket

    from actrec.runs import write_summary

    run = tmp_path / "runs" / "x" / "version_0"
    run.mkdir(parents=True)
    write_summary(run, {"state": "running", "pid": pid, "hostname": socket.gethostname()})
    assert main(["runs", str(tmp_path / "runs"), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["status"] == "crashed"


def test_a_tensorboard_export_folder_that_is_a_link_is_refused_and_its_target_untouched(
    tmp_path: Path, pristine: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(pristine, elsewhere / "activations.h5")
    assert main(["tensorboard", str(elsewhere), "--export", "--print"]) == 0  # a real export: the link's target
    assert any(path.name.startswith("events.out.tfevents.") for path in (elsewhere / "activations").rglob("*"))
    capsys.readouterr()
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(pristine, run / "activations.h5")
    (run / "activations").symlink_to(elsewhere / "activations")
    before, listing = _fingerprint(elsewhere), sorted(path.name for path in run.iterdir())
    assert main(["tensorboard", str(run), "--export", "--print"]) == 1
    assert capsys.readouterr().err == (
        f"actrec tensorboard: {run / 'activations'} is a symbolic link and was not written by actrec tensorboard; "
        "move it away to export here.\n"
    )
    assert _fingerprint(elsewhere) == before
    assert sorted(path.name for path in run.iterdir()) == listing
    assert (run / "activations").is_symlink()


# -- attributes validated where every command opens a store -----------------------------------------

_COMMANDS = {
    "render": lambda store, out: ["render", str(store), "--out", str(out), "--quiet"],
    "report": lambda store, out: ["report", str(store), "--out", str(out / "report.html")],
    "dynamics": lambda store, out: ["dynamics", str(store), "--quiet", "--no-png", "--no-tensorboard"],
    "tensorboard": lambda store, out: ["tensorboard", str(store), "--print"],
    "compare": lambda store, out: ["compare", str(store), str(store), "--layer", "net.conv1", "--out", str(out)],
}


@pytest.mark.parametrize(
    ("attribute", "value", "reason"),
    [
        ("scale_kind", "sideways", "'sideways' is not one of tanh, sigmoid, nonnegative, symmetric"),
        ("sample_shape", np.array([4, 8, 9]), "[4, 8, 9] does not match its activations, (4, 8, 8) a probe"),
        ("sample_shape", np.array([4, 64]), "[4, 64] does not match its activations, (4, 8, 8) a probe"),
        ("sample_shape", np.array([0, 8, 8]), "[0, 8, 8] is not a list of positive whole numbers"),
        ("sample_shape", "4,8,8", "'4,8,8' is not a list of positive whole numbers"),
        ("kind", "vector", "'vector' does not fit its sample shape (4, 8, 8)"),
        ("kind", "pictures", "'pictures' is not one of maps, tokens, vector"),
        ("order", "first", "'first' is not a whole number"),
        ("channels", np.array([0.5, 1.5]), "[0.5, 1.5] is not a list of whole numbers"),
    ],
)
def test_a_bogus_layer_attribute_is_the_same_sentence_in_every_command(
    tmp_path: Path, pristine: Path, attribute: str, value: object, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = _edited(pristine, tmp_path, lambda file: file["layers/net.conv1"].attrs.__setitem__(attribute, value))
    before = _fingerprint(tmp_path)
    sentence = f"{store} is damaged: layer net.conv1's {attribute} attribute {reason}."
    for command, argv in _COMMANDS.items():
        assert main(argv(store, tmp_path / "out")) == 1, command
        assert capsys.readouterr().err == f"actrec {command}: {sentence}\n", command
    assert _fingerprint(tmp_path) == before
    assert not (tmp_path / "out").exists()


# -- derived files are checked before use -----------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "change"),
    [
        ("layer0/relative_change", lambda values: values[:-1]),  # one row short: IndexError in the report
        ("layer1/cka_to_final", lambda values: np.concatenate([values, values])),
        ("global_steps", lambda values: values[:3]),
        ("layer0/relative_change", lambda values: np.full_like(values, 1e308)),  # OverflowError in the curves
        ("layer1/cka_to_first", lambda values: np.full_like(values, -7.0)),
        ("layer0/constant_channels", lambda values: values + 1000),
    ],
)
def test_a_well_formed_dynamics_file_that_does_not_fit_the_run_is_recomputed_not_trusted(
    tmp_path: Path, pristine: Path, key: str, change: Callable[[np.ndarray], np.ndarray]
) -> None:
    from actrec.report import build_report

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(pristine, run / "activations.h5")
    assert main(["dynamics", str(run), "--quiet", "--no-png", "--no-tensorboard"]) == 0
    expected = json.loads(
        re.search(r'id="report-data">(.*?)</script>', build_report(run).path.read_text(encoding="utf-8"), re.S)[1]
    )["dynamics"]
    saved = run / "dynamics.npz"
    with np.load(saved, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    arrays[key] = change(arrays[key])
    np.savez(saved, **arrays)
    tampered = saved.read_bytes()
    page = build_report(run).path.read_text(encoding="utf-8")
    assert json.loads(re.search(r'id="report-data">(.*?)</script>', page, re.S)[1])["dynamics"] == expected
    assert saved.read_bytes() == tampered  # recomputed for the page; the user's file is left as it was


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("model: [unclosed\n", "is not valid YAML (expected ',' or ']', but got '<stream end>' at line 2, column 1)."),
        (
            "model:\n\t- tab\n",
            "is not valid YAML (found character '\\t' that cannot start any token at line 2, column 1).",
        ),
        ("- a\n- b\n", "holds a list, not a mapping of options."),
        ("just words\n", "holds a single value, not a mapping of options."),
    ],
)
def test_a_config_file_that_is_not_a_yaml_mapping_is_one_sentence_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, reason: str
) -> None:
    config = tmp_path / "my.yaml"
    config.write_text(text)
    code, stderr = _train(["--config", str(config), "--runs_dir", str(tmp_path / "runs")], capsys)
    assert code == 2
    assert stderr == f"actrec train: config file {config} {reason}\n"
    assert not (tmp_path / "runs").exists()


def _diverged_store(path: Path) -> Path:
    """A store whose rows from 4 on hold NaN (net.conv1) or inf and NaN (net.conv2): a run that diverged."""
    path.parent.mkdir(parents=True, exist_ok=True)
    probes = ProbeSet(np.zeros((3, 1, 8, 8), np.float32), np.arange(3), np.arange(3), ["a", "b", "c"])
    options = {"run_id": "diverged", "config": {}, "probes": probes, "layers": LAYERS, "num_classes": 3}
    with StoreWriter.create(path, background=False, **options) as writer:
        for step in range(8):
            record = _record(step)
            if step >= 4:
                record.activations["net.conv1"][:] = np.nan
                record.activations["net.conv2"][:] = np.inf if step % 2 else np.nan
                record.activations["net.conv2"][0, 0, 0, 0] = 1.0
            writer.append(record)
    return path


def test_dynamics_of_a_diverged_run_prints_its_table_and_no_numpy_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import warnings

    store = _diverged_store(tmp_path / "run" / "activations.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any RuntimeWarning ("invalid value encountered") fails the command
        assert main(["dynamics", str(store.parent), "--no-tensorboard"]) == 0
    captured = capsys.readouterr()
    assert "Warning" not in captured.err
    assert re.search(r"^net\.conv1 +never ", captured.out, re.M)


# -- partial results ------------------------------------------------------------------------------


def test_inspect_filters_over_a_damaged_weights_chunk_writes_nothing(
    tmp_path: Path, trained_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    store = run / "activations.h5"
    with h5py.File(store, "r") as file:
        keys = [
            f"layers/{layer}/params/{param}" for layer in file["layers"] for param in file[f"layers/{layer}/params"]
        ]
        last = max(
            (key for key in keys if key.endswith(".weight")),
            key=lambda key: file[f"layers/{key.split('/')[1]}"].attrs["order"],
        )
        layer = last.split("/")[1]
        steps = file["steps/global_step"][()]
        first = 2 // file[last].chunks[0] * file[last].chunks[0]  # the first step of row 2's chunk
    _damage(store, _chunk_offset(store, last, first) + 16)
    before = _fingerprint(tmp_path)
    assert main(["inspect", "filters", str(run)]) == 1
    assert capsys.readouterr().err == (
        f"actrec inspect filters: step {steps[first]} of layer {layer} is damaged (checksum mismatch)\n"
    )
    assert _fingerprint(tmp_path) == before
    assert sorted(path.name for path in run.iterdir()) == sorted(path.name for path in trained_run.iterdir())


def test_inspect_featuremaps_with_a_folder_for_image_says_it_is_a_folder(
    tmp_path: Path, trained_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", "featuremaps", str(trained_run), "--image", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (
        f"actrec inspect featuremaps: image {tmp_path} is a folder; pass an image file (PNG, JPEG, ...).\n"
    )


_WRITE_BIG_DYNAMICS = r"""
import sys
import numpy as np
from actrec.dynamics.compute import SERIES, Dynamics, LayerDynamics
from actrec.dynamics.tensorboard import write_scalars

steps = np.arange(int(sys.argv[2]))
layer = LayerDynamics(name="net.conv1", scale_kind="tanh", channels=4, always_constant=(), settling_step=None,
                      **{key: np.linspace(0.0, 1.0, len(steps)) for key in SERIES})
dynamics = Dynamics(run_id="big", global_steps=steps, epochs=steps // 100, num_probes=3, threshold=0.9,
                    layers={"net.conv1": layer})
print("writing", flush=True)
write_scalars(dynamics, sys.argv[1])
"""


def _event_points(path: Path) -> int:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    return sum(1 for event in EventFileLoader(str(path)).Load() if event.summary.value)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
@pytest.mark.slow  # processes, killed
def test_a_killed_dynamics_export_leaves_the_previous_events_file_whole(tmp_path: Path, how: str) -> None:
    log_dir = tmp_path / "dynamics"
    command = [sys.executable, "-c", _WRITE_BIG_DYNAMICS, str(log_dir)]
    subprocess.run([*command, "300"], check=True, capture_output=True, timeout=120)
    (previous,) = log_dir.iterdir()
    assert _event_points(previous) == 300
    before = _fingerprint(log_dir)
    process = subprocess.Popen([*command, "99999"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "writing\n"
    time.sleep(1.5)  # the 99,999-point file takes several seconds to write
    assert process.poll() is None, "the write ended before it could be killed"
    process.send_signal(getattr(signal, how))
    process.communicate(timeout=60)
    after = _fingerprint(log_dir)
    # The old complete file, byte-identical; TensorBoard loads nothing else. Ctrl-C also removes the partial
    # file; SIGKILL leaves it under its staged name, which TensorBoard ignores and the next write removes.
    assert {name: digest for name, digest in after.items() if "tfevents" in name} == before
    assert len(after) == (2 if how == "SIGKILL" else 1)
    subprocess.run([*command, "10"], check=True, capture_output=True, timeout=120)
    (rewritten,) = log_dir.iterdir()
    assert _event_points(rewritten) == 10


@pytest.mark.parametrize(("sheet_steps", "outside"), [("7777,3", "7777"), ("-5,0,99999", "-5, 99999")])
def test_sheet_steps_outside_the_recorded_steps_are_refused_like_steps(
    tmp_path: Path, pristine: Path, capsys: pytest.CaptureFixture[str], sheet_steps: str, outside: str
) -> None:
    out = tmp_path / "out"
    assert main(["render", str(pristine), f"--sheet-steps={sheet_steps}", "--out", str(out), "--quiet"]) == 1
    last = (NUM_STEPS - 1) * 5
    assert capsys.readouterr().err == (
        f"actrec render: --sheet-steps {outside} lies outside the drawn steps 0..{last}; choose steps within them.\n"
    )
    assert not out.exists()
    assert main(["render", str(pristine), "--steps", "99999:", "--out", str(out), "--quiet"]) == 1
    assert "no recorded step lies in the chosen range" in capsys.readouterr().err


def test_nan_in_abs_max_of_a_v2_store_is_not_counted_as_a_non_finite_step(
    tmp_path: Path, pristine: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def nan_peaks(file: h5py.File) -> None:
        file["layers/net.conv2/abs_max"][:] = np.nan

    store = _edited(pristine, tmp_path, nan_peaks)
    assert main(["render", str(store), "--layers", "net.conv2", "--out", str(tmp_path / "out")]) == 0
    assert "NaN or infinite" not in capsys.readouterr().err
    diverged = _diverged_store(tmp_path / "diverged" / "activations.h5")
    assert main(["render", str(diverged), "--layers", "net.conv2", "--out", str(tmp_path / "out2")]) == 0
    assert "net.conv2: 4 of 8 recorded steps hold NaN or infinite values" in capsys.readouterr().err


def test_a_damaged_probe_image_is_refused_not_drawn_as_data(
    tmp_path: Path, pristine: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with h5py.File(pristine, "r") as file:
        assert all(file[f"probes/{name}"].fletcher32 for name in ("images", "labels", "indices"))
    store = tmp_path / "activations.h5"
    shutil.copy(pristine, store)
    _damage(store, _chunk_offset(store, "probes/images", 0) + 40, length=16)
    assert _refuse(store, capsys) == "row 0 of probes/images is damaged (checksum mismatch)"


def test_a_run_shorter_than_the_recording_stride_does_not_claim_its_loss_was_never_logged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import warnings

    from actrec.trainer.cli import train_main

    short = [*_RESUME_RUN[:-1], "--trainer.max_epochs=1"]  # 3 batches, every_n_steps set below
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert train_main(["--runs_dir", str(tmp_path), *short, "--recorder.every_n_steps=5"]) == 0
    assert [str(w.message) for w in caught if "logged none of" in str(w.message)] == []
    with StoreReader(tmp_path / "kill" / "version_0") as store:
        assert store.global_steps().tolist() == [0, 3]


def test_ctrl_c_while_a_command_still_imports_is_one_line_not_a_traceback(
    pristine: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # On a loaded machine `actrec render` spends seconds importing numpy, h5py and Pillow before its own guard
    # is in place, and Ctrl-C there printed a traceback through importlib. A Ctrl-C that lands in the
    # subcommand's import, made certain: an import hook raises it exactly there.
    import importlib.abc

    class CtrlCOnImport(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: object, target: object = None) -> None:
            if name == "actrec.viewer.cli":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "actrec.viewer.cli", raising=False)
    monkeypatch.setattr(sys, "meta_path", [CtrlCOnImport(), *sys.meta_path])
    assert main(["render", str(pristine), "--quiet"]) == 130
    assert capsys.readouterr().err == "actrec: interrupted.\n"


def test_dynamics_leaves_a_damaged_row_out_and_says_so_as_render_does(
    tmp_path: Path, pristine: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from actrec.dynamics import compute_dynamics
    from actrec.recording import Recording

    run = tmp_path / "run"
    run.mkdir()
    store = run / "activations.h5"
    shutil.copy(pristine, store)
    _damage(store, _chunk_offset(store, "layers/net.conv1/activations", 7) + 100)
    sentence = "step 35 of layer net.conv1 is damaged (it failed its integrity check) and was left out."
    assert main(["dynamics", str(run), "--no-tensorboard", "--no-png"]) == 0
    assert f"note: {sentence}\n" in capsys.readouterr().err
    assert main(["render", str(run), "--layers", "net.conv1", "--out", str(tmp_path / "out")]) == 0
    assert sentence in capsys.readouterr().err
    with Recording.open(store) as damaged, Recording.open(pristine) as clean:
        left_out = compute_dynamics(damaged).layers["net.conv1"]
        whole = compute_dynamics(clean).layers["net.conv1"]
        other = compute_dynamics(damaged).layers["net.conv2"]
        assert other.cka_to_final.tolist() == compute_dynamics(clean).layers["net.conv2"].cka_to_final.tolist()
    assert left_out.damaged_steps == (35,)
    for key in ("cka_to_final", "cka_to_first", "saturated_fraction"):
        values = getattr(left_out, key)
        assert np.isnan(values[7]), key
        np.testing.assert_array_equal(np.delete(values, 7), np.delete(getattr(whole, key), 7), err_msg=key)
    assert np.isnan(left_out.relative_change[[7, 8]]).all()  # no change measured against a left-out row


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc to see the worker processes")
@pytest.mark.slow  # render processes, killed
def test_a_sigkilled_render_with_workers_leaves_no_leaked_semaphore_warning(tmp_path: Path, pristine: Path) -> None:
    # Killed once its worker processes run (their queues' semaphores exist): multiprocessing's resource tracker
    # cleaned them up and warned "There appear to be 8 leaked semaphore objects" on the user's terminal.
    # Large GIF frames keep the workers busy past their start-up: an APNG render of this small store at the
    # default size can end within the half second below, and the test skipped.
    command = [sys.executable, "-m", "actrec.cli", "render", str(pristine), "--jobs", "2", "--quiet", "--format", "gif"]
    command += ["--tile-size", "512"]
    command += ["--out", str(tmp_path / "out")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(_children(process.pid)) < 3 and process.poll() is None:  # the tracker and two workers
        assert time.monotonic() < deadline, "no worker processes within 60 s"
        time.sleep(0.02)
    time.sleep(0.5)  # past the workers' start-up: a worker whose parent dies while it starts says so (EOFError)
    if process.poll() is not None:
        pytest.skip("the render finished before its workers could be seen")
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert "leaked" not in stderr


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc to see the worker processes")
@pytest.mark.parametrize("group", [False, True], ids=["render-alone", "process-group"])
def test_ctrl_c_while_render_starts_its_workers_is_one_line(tmp_path: Path, pristine: Path, group: bool) -> None:
    # SIGINT to the render process alone while a worker still read its start-up data from it: the worker
    # printed an EOFError traceback. To the whole group (a terminal's Ctrl-C): the workers' own
    # KeyboardInterrupts. Sent as soon as the first worker process exists.
    command = [sys.executable, "-m", "actrec.cli", "render", str(pristine), "--jobs", "2", "--quiet"]
    command += ["--out", str(tmp_path / "out")]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 60
    while len(_children(process.pid)) < 2 and process.poll() is None:  # the tracker and a starting worker
        assert time.monotonic() < deadline, "no worker process within 60 s"
        time.sleep(0.005)
    if process.poll() is not None:
        pytest.skip("the render finished before its workers could be seen")
    if group:
        os.killpg(process.pid, signal.SIGINT)
    else:
        process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr == "actrec render: interrupted; files not yet finished were discarded.\n"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
