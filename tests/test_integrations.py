"""W&B (offline) and MLflow (file store) runs: two real fits in a row each get a store of their own beside the
logger's run, and the logged run names it. Read back from what the libraries wrote: the offline W&B run's
``.wandb`` record log and files, the MLflow file store through MLflow's client. Skipped when the optional
extra is absent (``pip install actrec[wandb]`` / ``actrec[mlflow]``)."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
from recorder_fixtures import TinyData, TinyNet

from actrec.callbacks import ActivationRecorder
from actrec.recording import Recording
from actrec.runs import Run, find_runs


def _fit(root: Path, logger: Any) -> ActivationRecorder:
    recorder = ActivationRecorder(background_writes=False)
    trainer = pl.Trainer(
        default_root_dir=str(root),
        logger=logger,
        callbacks=[recorder],
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(TinyNet(), TinyData(size=24))  # 3 steps
    return recorder


def _assert_store_opens(store_path: Path, folder: Path) -> None:
    assert store_path == folder / "activations.h5"
    with Recording.open(store_path.parent, announce=None) as recording:
        assert recording.store_path == store_path
        assert recording.timeline.global_steps.tolist() == [0, 1, 2, 3]
    summary = Run(folder).summary()
    assert summary["state"] == "finished"
    assert summary["store_path"] == str(store_path)


# -- W&B ---------------------------------------------------------------------------------------------------


def _wandb_records(run_dir: Path) -> list[Any]:
    """Every record of an offline run's ``run-<id>.wandb`` file, parsed with W&B's own protobuf messages.

    The file is a LevelDB-style log (W&B's documented offline format, read by ``wandb sync``): a 7-byte
    ``:W&B`` header, then 32 KiB blocks of chunks, each ``crc32 (4) length (2) type (1)`` and its bytes;
    type 1 is a whole record, 2/3/4 its first, middle and last parts.
    """
    from wandb.proto import wandb_internal_pb2

    data = next(run_dir.glob("run-*.wandb")).read_bytes()
    assert data[:4] == b":W&B"
    block, position, pending, records = 32768, 7, b"", []
    while position + 7 <= len(data):
        left = block - position % block
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if left < 7 or (length == 0 and kind == 0):  # a block's zero padding
            position += left
            continue
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def _wandb_values(records: list[Any], kind: str) -> dict[str, Any]:
    """The keys a run's config or summary records set, last value wins."""
    values: dict[str, Any] = {}
    for record in records:
        if record.WhichOneof("record_type") == kind:
            for update in getattr(record, kind).update:
                values[update.key or "/".join(update.nested_key)] = json.loads(update.value_json)
    return values


def test_wandb_offline_runs_name_their_own_stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wandb = pytest.importorskip("wandb", reason="the wandb extra is not installed (pip install actrec[wandb])")
    from pytorch_lightning.loggers import WandbLogger
    from wandb.proto.wandb_internal_pb2 import FilesItem

    monkeypatch.setenv("WANDB_MODE", "offline")  # no network, no account
    monkeypatch.setenv("WANDB_SILENT", "true")
    for variable in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / "wandb-home"))
    stores = []
    for _ in range(2):  # two runs in a row in one folder: two stores, neither refused
        logger = WandbLogger(project="proj", save_dir=str(tmp_path), offline=True)
        try:
            recorder = _fit(tmp_path, logger)
            run_id = logger.experiment.id
            run_dir = Path(logger.experiment.dir).parent
        finally:
            wandb.finish()  # Lightning leaves the W&B run open; its records are complete once it is finished

        store_path = recorder.store_path
        assert store_path is not None
        _assert_store_opens(store_path, tmp_path / "proj" / run_id)  # where Lightning puts the run's checkpoints
        assert (tmp_path / "proj" / run_id / "checkpoints").is_dir()
        records = _wandb_records(run_dir)
        assert _wandb_values(records, "config")["actrec.store_path"] == str(store_path)
        assert _wandb_values(records, "config")["actrec.task"] == "classification"
        assert _wandb_values(records, "config")["actrec.layer_count"] == 2
        assert _wandb_values(records, "summary")["actrec.store_path"] == str(store_path)
        saved = [f for r in records if r.WhichOneof("record_type") == "files" for f in r.files.files]
        policies = [FilesItem.PolicyType.Name(f.policy) for f in saved if f.path == "summary.json"]
        assert policies == ["END"]  # uploaded as it is when the run finishes
        saved_summary = json.loads((run_dir / "files" / "summary.json").read_text())
        assert saved_summary["state"] == "finished"
        assert saved_summary["store_path"] == str(store_path)
        # The store by reference (its path), never uploaded.
        (artifact,) = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
        assert artifact.type == "actrec-store"
        assert [entry.ref for entry in artifact.manifest.contents] == [store_path.as_uri()]
        stores.append(store_path)
    assert stores[0] != stores[1]
    # `actrec runs <save_dir>` lists both, and nothing from W&B's own folder
    assert sorted(run.path for run in find_runs(tmp_path)) == sorted(store.parent for store in stores)


@pytest.mark.filterwarnings("ignore:There is a wandb run already in progress")  # the case under test
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_a_reused_wandb_run_never_refuses_the_second_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two fits without ``wandb.finish()`` between them (a notebook): Lightning reuses the open W&B run, whose
    folder already holds the first store, so the second gets a versioned folder of its own and the run is
    told the newer path."""
    wandb = pytest.importorskip("wandb", reason="the wandb extra is not installed (pip install actrec[wandb])")
    from pytorch_lightning.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for variable in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / "wandb-home"))
    try:
        first = _fit(tmp_path, WandbLogger(project="proj", save_dir=str(tmp_path), offline=True))
        logger = WandbLogger(project="proj", save_dir=str(tmp_path), offline=True)
        second = _fit(tmp_path, logger)
        run_id, run_dir = logger.experiment.id, Path(logger.experiment.dir).parent
    finally:
        wandb.finish()
    assert first.store_path == tmp_path / "proj" / run_id / "activations.h5"
    assert second.store_path == tmp_path / "actrec" / "version_0" / "activations.h5"
    _assert_store_opens(second.store_path, tmp_path / "actrec" / "version_0")
    assert _wandb_values(_wandb_records(run_dir), "config")["actrec.store_path"] == str(second.store_path)


def test_a_wandb_run_finished_before_fit_end_costs_one_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The module finishes the W&B run itself in ``on_train_end``: saving summary.json with it fails, training
    and the store do not."""
    wandb = pytest.importorskip("wandb", reason="the wandb extra is not installed (pip install actrec[wandb])")
    from pytorch_lightning.loggers import WandbLogger

    class FinishesItsRun(TinyNet):
        def on_train_end(self) -> None:
            wandb.finish()

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for variable in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / "wandb-home"))
    recorder = ActivationRecorder(background_writes=False)
    trainer = pl.Trainer(
        default_root_dir=str(tmp_path),
        logger=WandbLogger(project="proj", save_dir=str(tmp_path), offline=True),
        callbacks=[recorder],
        accelerator="cpu",
        max_steps=3,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    try:
        with pytest.warns(UserWarning, match=r"^ActivationRecorder: cannot save the run's files with the W&B run: "):
            trainer.fit(FinishesItsRun(), TinyData(size=24))
    finally:
        wandb.finish()
    assert recorder.store_path is not None
    _assert_store_opens(recorder.store_path, recorder.store_path.parent)


@pytest.mark.filterwarnings("ignore:The dirpath has changed from")  # a new run: a new checkpoint folder
def test_a_new_wandb_run_resumed_from_a_checkpoint_continues_its_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint lies beside the first run's store (both where Lightning puts the run's checkpoints), so a
    second W&B run resumed from it continues that store, and names it."""
    wandb = pytest.importorskip("wandb", reason="the wandb extra is not installed (pip install actrec[wandb])")
    from pytorch_lightning.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for variable in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / "wandb-home"))
    try:
        first = _fit(tmp_path, WandbLogger(project="proj", save_dir=str(tmp_path), offline=True))
    finally:
        wandb.finish()
    assert first.store_path is not None
    (checkpoint,) = (first.store_path.parent / "checkpoints").glob("*.ckpt")
    logger = WandbLogger(project="proj", save_dir=str(tmp_path), offline=True)
    recorder = ActivationRecorder(background_writes=False)
    trainer = pl.Trainer(
        default_root_dir=str(tmp_path),
        logger=logger,
        callbacks=[recorder],
        accelerator="cpu",
        max_epochs=2,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    try:
        trainer.fit(TinyNet(), TinyData(size=24), ckpt_path=str(checkpoint))
        run_dir = Path(logger.experiment.dir).parent
    finally:
        wandb.finish()
    assert recorder.store_path == first.store_path
    with Recording.open(first.store_path, announce=None) as recording:
        assert recording.timeline.global_steps.tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert _wandb_values(_wandb_records(run_dir), "config")["actrec.store_path"] == str(first.store_path)


# -- MLflow ------------------------------------------------------------------------------------------------


def test_mlflow_file_store_runs_name_their_own_stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install actrec[mlflow])")
    from mlflow.tracking import MlflowClient
    from pytorch_lightning.loggers import MLFlowLogger

    # MLflow 3 refuses a file store unless told it is wanted (it prefers a database; the test wants files).
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    tracking = tmp_path / "mlruns"
    uri = tracking.as_uri()
    stores = []
    for _ in range(2):
        logger = MLFlowLogger(experiment_name="exp", tracking_uri=f"file:{tracking}")
        recorder = _fit(tmp_path, logger)
        store_path = recorder.store_path
        assert store_path is not None
        run_folder = tracking / logger.experiment_id / logger.run_id
        _assert_store_opens(store_path, run_folder)  # in the MLflow run's own folder, beside its checkpoints

        client = MlflowClient(tracking_uri=uri)
        run = client.get_run(logger.run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["actrec.store_path"] == str(store_path)
        assert run.data.tags["actrec.task"] == "classification"
        assert run.data.tags["actrec.layer_count"] == "2"
        assert [a.path for a in client.list_artifacts(logger.run_id, "actrec")] == ["actrec/summary.json"]
        saved = Path(client.download_artifacts(logger.run_id, "actrec/summary.json", str(tmp_path / "down")))
        assert json.loads(saved.read_text())["state"] == "finished"
        assert not any(a.path.endswith(".h5") for a in client.list_artifacts(logger.run_id))  # by path only
        stores.append(store_path)
    assert stores[0] != stores[1]
    # `actrec runs mlruns` lists both runs
    assert sorted(run.path for run in find_runs(tracking)) == sorted(store.parent for store in stores)


# -- the one line at fit start and end, as a user's script prints it ----------------------------------------

_SCRIPT = """
import os, sys
import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger
from recorder_fixtures import TinyData, TinyNet
from actrec.callbacks import ActivationRecorder

def logger(kind):
    if kind == "none":
        return False
    if kind == "csv":
        return CSVLogger(".", name="csv")
    if kind == "wandb":
        from pytorch_lightning.loggers import WandbLogger
        return WandbLogger(project="proj", save_dir=".", offline=True)
    from pytorch_lightning.loggers import MLFlowLogger
    return MLFlowLogger(experiment_name="exp", tracking_uri="file:" + os.path.abspath("mlruns"))

for kind in sys.argv[1:]:
    recorder = ActivationRecorder()  # as a user writes it: the writer process and all
    trainer = pl.Trainer(logger=logger(kind), callbacks=[recorder], max_steps=2, accelerator="cpu",
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(TinyNet(), TinyData(size=24))
    print(f"STORE {kind} {recorder.store_path}", flush=True)
    print(f"IMPORTED {kind} {'wandb' in sys.modules} {'mlflow' in sys.modules}", flush=True)
    if kind == "wandb":
        import wandb
        wandb.finish()
"""


@pytest.mark.slow  # a user's script in its own process, once per logger
def test_every_logger_or_none_prints_where_the_store_is_at_fit_start_and_end(tmp_path: Path) -> None:
    import importlib.util
    import os
    import subprocess
    import sys

    kinds = ["none", "csv", "none"]  # two runs without a logger: two versioned stores
    kinds += [kind for kind, module in (("wandb", "wandb"), ("mlflow", "mlflow")) if importlib.util.find_spec(module)]
    # Without WANDB_SERVICE: an earlier test's W&B service (started in the repository) would serve the script too.
    environment = {
        **{name: value for name, value in os.environ.items() if name != "WANDB_SERVICE"},
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": str(tmp_path),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "MLFLOW_ALLOW_FILE_STORE": "true",
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, *kinds],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    stores = [line.split(" ", 2)[1:] for line in done.stdout.splitlines() if line.startswith("STORE ")]
    assert [kind for kind, _ in stores] == kinds
    said = [line for line in (done.stdout + done.stderr).splitlines() if "ActivationRecorder: " in line]
    said = [line for line in said if "recording to" in line or "the store is" in line]
    run = {"wandb": r" \(path recorded with the W&B run \w+\)", "mlflow": r" \(path recorded with the MLflow run \w+\)"}
    expected = []
    for kind, store in stores:
        expected += [
            f"ActivationRecorder: recording to {re.escape(store)}{run.get(kind, '')}",
            f"ActivationRecorder: finished; the store is {re.escape(store)}{run.get(kind, '')}",
        ]
    assert len(said) == len(expected), said
    for line, pattern in zip(said, expected, strict=True):
        assert re.fullmatch(pattern, line), (line, pattern)
    imported = [line.split()[1:] for line in done.stdout.splitlines() if line.startswith("IMPORTED ")]
    assert imported[:3] == [["none", "False", "False"], ["csv", "False", "False"], ["none", "False", "False"]]
    assert stores[0][1] != stores[2][1]  # two runs without a logger: two stores
    assert stores[0][1] == str(tmp_path / "actrec" / "version_0" / "activations.h5")
    assert stores[1][1] == str(tmp_path / "csv" / "version_0" / "activations.h5")
