"""The recorder's engine: host ring on a CPU stand-in, writer process, any data source, faults."""

from __future__ import annotations

import os
import subprocess
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from recorder_fixtures import TinyData, TinyNet, quiet_trainer
from torch.utils.data import DataLoader

from actrec.callbacks import ActivationRecorder
from actrec.probe._engine import ProbeEngine
from actrec.probe._ring import HostRing
from actrec.store import StoreReader


class GatedEvent:
    """A CPU stand-in for a CUDA event whose copy completes only when the test says so."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.recorded = 0

    def record(self) -> None:
        self.recorded += 1

    def synchronize(self) -> None:
        assert self.done.wait(10)


def test_ring_waits_for_events_and_counts_when_full() -> None:
    events: list[GatedEvent] = []

    def make_event() -> GatedEvent:
        events.append(GatedEvent())
        return events[-1]

    consumed: list[tuple[int, list[int]]] = []
    ring = HostRing(4, 2, torch.device("cpu"), lambda host, meta: consumed.append((meta, host.tolist())), make_event)
    assert ring.put(torch.tensor([1, 1, 1, 1], dtype=torch.uint8), 0)
    assert ring.put(torch.tensor([2, 2, 2, 2], dtype=torch.uint8), 1)
    time.sleep(0.1)
    assert consumed == []  # the consumer waits on the slot's event, never on training
    assert ring.waits == 0

    third = threading.Thread(target=ring.put, args=(torch.tensor([3, 3, 3, 3], dtype=torch.uint8), 2))
    third.start()
    time.sleep(0.2)
    assert third.is_alive()  # every slot is in flight: training waits rather than dropping a step
    events[0].done.set()
    third.join(5)
    assert not third.is_alive()
    assert ring.waits == 1
    events[1].done.set()
    ring.drain()
    ring.close()
    assert consumed == [(0, [1, 1, 1, 1]), (1, [2, 2, 2, 2]), (2, [3, 3, 3, 3])]


def test_ring_stops_on_a_consumer_error_without_blocking_training() -> None:
    def fail(host: torch.Tensor, meta: int) -> None:
        raise OSError(28, "No space left on device")

    ring = HostRing(2, 1, torch.device("cpu"), fail)
    assert ring.put(torch.zeros(2, dtype=torch.uint8), 0)
    ring.drain()
    assert isinstance(ring.error, OSError)
    assert not ring.put(torch.zeros(2, dtype=torch.uint8), 1)
    ring.close()


def test_engine_packs_every_field_and_caps_channels() -> None:
    model = TinyNet()
    images = torch.rand(3, 1, 6, 6)
    engine = ProbeEngine(model, images, ["net.conv1", "net.conv2"], dtype="float32", max_channels=2)
    assert engine.layouts["net.conv2"].channels == (0, 2)
    assert engine.layouts["net.conv2"].full_shape == (3, 6, 6)
    packed = engine.run(torch.tensor(0.5), 0.25)
    views = engine.host_views(packed.clone())
    model.eval()
    with torch.no_grad():
        expected = model.net.conv2(model.net.conv1(images))
    assert torch.equal(views["net.conv2/activations"], expected[:, [0, 2]])
    assert views["net.conv2/abs_max"] == expected[:, [0, 2]].abs().max()
    assert views["batch_loss"] == 0.5
    assert views["batch_acc"] == 0.25
    assert torch.equal(views["logits"], model(images))
    assert engine.graph_note == "eager (not on CUDA)"


def test_graph_decisions_on_a_cpu_stand_in(caplog: pytest.LogCaptureFixture) -> None:
    model = TinyNet()
    images = torch.rand(3, 1, 6, 6)
    engine = ProbeEngine(model, images, ["net.conv1"], dtype="float32")
    eager = engine.run().clone()

    def refuses(forward):  # noqa: ANN001, ANN202 - what capture does with a host sync inside forward
        raise RuntimeError("operation not permitted when stream is capturing")

    def drifts(forward):  # noqa: ANN001, ANN202 - a replay that is not the eager pass
        def replay() -> None:
            forward()
            engine.views["net.conv1/activations"].add_(0.25)

        return replay

    with caplog.at_level("WARNING", logger="actrec"):
        assert not engine.adopt_graph(refuses, "stand-in graph")
        assert not engine.adopt_graph(drifts, "stand-in graph")
    assert [r.getMessage() for r in caplog.records] == [
        "actrec: the probe pass runs eagerly: stand-in graph capture failed "
        "(operation not permitted when stream is capturing).",
        "actrec: the probe pass runs eagerly: a stand-in graph replay differed from an eager pass, by up to "
        "0.25 in net.conv1/activations; the model draws random numbers in eval mode or uses non-deterministic "
        "atomics (index_add_, scatter_add_).",
    ]
    assert engine.graph_note == "eager (a stand-in graph replay differed from an eager pass)"
    assert torch.equal(engine.run(), eager)  # fell back to the eager pass

    assert engine.adopt_graph(lambda forward: forward, "stand-in graph")  # bitwise equal: kept
    assert engine.graph_note == "stand-in graph"
    with torch.no_grad():
        model.net.conv1[0].bias.add_(0.5)  # the optimizer updates parameters in place; a replay sees it
    assert not torch.equal(engine.run(), eager)


def _val_loss_net() -> type[TinyNet]:
    class LogsValLoss(TinyNet):
        def validation_step(self, batch, batch_idx):  # noqa: ANN001, ANN202
            images, labels = batch
            self.log("val_loss", torch.nn.functional.cross_entropy(self(images), labels))

    return LogsValLoss


def test_probes_from_trainer_loaders_without_a_datamodule(tmp_path: Path) -> None:
    data = TinyData()
    data.setup("fit")
    recorder = ActivationRecorder(path=str(tmp_path / "a.h5"))
    pl.seed_everything(0, verbose=False)
    trainer = quiet_trainer(tmp_path, callbacks=[recorder], max_epochs=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(
            _val_loss_net()(),
            train_dataloaders=DataLoader(data.train_dataset, batch_size=8),
            val_dataloaders=DataLoader(data.val_dataset, batch_size=5),
        )
    with StoreReader(recorder.store_path) as store:
        labels = data.val_dataset.tensors[1]
        assert store.probes.labels.tolist() == [0, 1, 2]
        assert store.probes.indices.tolist() == [int(np.flatnonzero(labels.numpy() == k)[0]) for k in range(3)]
        assert store.scalars("val/loss")[0].tolist() == [6]  # "val_loss" found among the default names
        assert store.config["probes"]["source"] == "the validation loader"
    messages = [str(w.message) for w in caught]
    assert sum("the store's val/acc series is empty" in m for m in messages) == 1
    assert not any("column is empty" in m for m in messages)  # loss and acc come from training_step's dict
    assert not any("val/loss series is empty" in m for m in messages)


def test_probe_images_given_and_no_probes_at_all(tmp_path: Path) -> None:
    class ReturnsPlainLoss(TinyNet):
        def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN202
            return super().training_step(batch, batch_idx)["loss"]

    images = torch.rand(4, 1, 6, 6)
    recorder = ActivationRecorder(probe_images=images, probe_labels=[2, 1, 0, 2], path=str(tmp_path / "a.h5"))
    data = TinyData()
    data.setup("fit")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_trainer(tmp_path, callbacks=[recorder], max_epochs=1, limit_train_batches=2).fit(
            ReturnsPlainLoss(), train_dataloaders=DataLoader(data.train_dataset, batch_size=8)
        )
    with StoreReader(recorder.store_path) as store:
        np.testing.assert_array_equal(store.probes.images, images.numpy())
        assert store.probes.labels.tolist() == [2, 1, 0, 2]
        assert store.global_steps().tolist() == [0, 1, 2]
        assert np.isfinite(store.steps()["batch_loss"][1:]).all()  # a plain loss tensor is the batch loss
    empty = [str(w.message) for w in caught if "column is empty" in str(w.message)]
    assert len(empty) == 1
    assert "so the store's batch_acc column is empty (NaN); set batch_acc_names" in empty[0]

    lonely = ActivationRecorder(path=str(tmp_path / "b.h5"))
    with pytest.raises(MisconfigurationException, match="found no probe images: pass probe_images to the recorder"):
        quiet_trainer(tmp_path, callbacks=[lonely], max_epochs=1).fit(
            TinyNet(), train_dataloaders=DataLoader(data.train_dataset, batch_size=8)
        )
    assert not (tmp_path / "b.h5").exists()


@pytest.mark.parametrize(
    ("probe_images", "message"),
    [
        # TinyNet takes one channel; three-channel images fail inside its first convolution.
        (torch.rand(4, 3, 6, 6), r"^ActivationRecorder: the model could not run the probe images: .*channels"),
        ([[0.0, 1.0], [2.0]], r"^ActivationRecorder: probe_images cannot be made into one tensor: "),
    ],
)
def test_probe_images_the_model_cannot_take_are_one_sentence_at_setup(
    tmp_path: Path, probe_images: object, message: str
) -> None:
    def construct() -> None:
        recorder = ActivationRecorder(probe_images=probe_images, path=str(tmp_path / "a.h5"))
        quiet_trainer(tmp_path, callbacks=[recorder], max_epochs=1).fit(TinyNet(), TinyData())

    with pytest.raises(MisconfigurationException, match=message) as raised:
        construct()
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "a.h5").exists()


def test_diverging_run_stores_nonfinite_values_and_counts_them(tmp_path: Path) -> None:
    recorder = ActivationRecorder(path=str(tmp_path / "a.h5"), layers=["net.*"])
    pl.seed_everything(0, verbose=False)
    quiet_trainer(tmp_path, callbacks=[recorder], max_epochs=1).fit(TinyNet(lr=1e38), TinyData())
    with StoreReader(recorder.store_path) as store:
        assert store.global_steps().tolist() == list(range(7))
        counts = store.nonfinite("net.head")
        values = store.activations("net.head")
        assert counts[0] == 0
        assert counts[-1] > 0  # diverged: NaN/inf stored as they are, and counted
        np.testing.assert_array_equal(counts, (~np.isfinite(values)).reshape(len(values), -1).sum(axis=1))
        assert np.isfinite(store.abs_max("net.head")).all()  # peaks come from the finite values
        assert np.isnan(store.steps()["batch_loss"][-1])


def test_resume_off_schedule_adds_no_row_and_keeps_the_path_absolute(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.chdir(tmp_path)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    first = ActivationRecorder(path="store.h5", every_n_steps=4)
    pl.seed_everything(7, verbose=False)
    quiet_trainer(tmp_path / "a", callbacks=[first, checkpoints], max_epochs=2).fit(TinyNet(dropout=0.0), TinyData())
    state = torch.load(tmp_path / "ckpt" / "epoch=0-step=6.ckpt", weights_only=True)["callbacks"]
    (recorder_state,) = [v for k, v in state.items() if k.startswith("ActivationRecorder")]
    assert recorder_state["store_path"] == str(tmp_path / "store.h5")

    monkeypatch.chdir(tmp_path / "ckpt")  # another working directory
    second = ActivationRecorder(path="store.h5", every_n_steps=4)
    quiet_trainer(tmp_path / "b", callbacks=[second], max_epochs=2).fit(
        TinyNet(dropout=0.0), TinyData(), ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=6.ckpt")
    )
    with StoreReader(tmp_path / "store.h5") as store:
        assert store.global_steps().tolist() == [0, 4, 8, 12]  # no extra row at the restored step 6


def test_works_with_the_lightning_package(tmp_path: Path) -> None:
    import lightning as L  # noqa: N812

    class LitNet(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = TinyNet().net

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.net(images)

        training_step = TinyNet.training_step
        validation_step = TinyNet.validation_step

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    data = TinyData()
    data.setup("fit")
    recorder = ActivationRecorder(path=str(tmp_path / "a.h5"))
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        max_epochs=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
        callbacks=[recorder],
    )
    trainer.fit(
        LitNet(),
        train_dataloaders=DataLoader(data.train_dataset, batch_size=8),
        val_dataloaders=DataLoader(data.val_dataset, batch_size=8),
    )
    with StoreReader(recorder.store_path) as store:
        assert store.global_steps().tolist() == list(range(7))
        assert store.layer_names == ["net.conv1", "net.conv2"]
        assert np.all(np.isfinite(store.steps()["batch_loss"][1:]))
        assert store.scalars("val/acc")[0].tolist() == [6]


@pytest.fixture
def small_disk(tmp_path: Path):  # noqa: ANN201
    folder = tmp_path / "small"
    folder.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if result.returncode:
        pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.strip() or 'mount refused'})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.parametrize(
    ("background_writes", "guard"),
    [
        (True, "1"),
        (False, "1"),
        # Without the free-space check HDF5 itself meets ENOSPC mid-write; only the writer process survives that.
        (True, "0"),
    ],
)
@pytest.mark.slow  # two epochs on a filling disk, three times
def test_a_full_disk_stops_recording_cleanly_and_training_goes_on(
    small_disk: Path,
    background_writes: bool,
    guard: str,
    monkeypatch,  # noqa: ANN001
) -> None:
    monkeypatch.setenv("ACTREC_DISK_GUARD", guard)
    # 64 probes in float32: ~100 KB a row, so the 2 MB disk fills after a dozen of the 121 steps; blocks of 4
    # rows, so several are flushed (and must stay readable) before it does.
    recorder = ActivationRecorder(
        path=str(small_disk / "activations.h5"),
        flush_every=4,
        dtype="float32",
        background_writes=background_writes,
        layers=["net.*"],
        probe_images=torch.rand(64, 1, 6, 6),
    )
    data = TinyData(size=480)
    pl.seed_everything(0, verbose=False)
    model = TinyNet()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = quiet_trainer(
            small_disk.parent, callbacks=[recorder], max_epochs=2, logger=False, enable_checkpointing=False
        )
        trainer.fit(model, data)
    assert trainer.global_step == 120  # training finished
    stops = [str(w.message) for w in caught if "stopped recording" in str(w.message)]
    assert len(stops) == 1, stops
    assert "is full" in stops[0] or "no space left on the device" in stops[0]
    assert "Training continues without recording" in stops[0]
    with StoreReader(small_disk / "activations.h5") as store:
        steps = store.global_steps()
        assert 0 < len(steps) < 121
        # With the guard, HDF5 never meets the full disk and every row is whole. Without it, the rows of the
        # block HDF5 was writing when the disk filled may be torn (HDF5 cannot undo it); every block before is whole.
        whole = len(steps) if guard == "1" else max(1, len(steps) - recorder.flush_every)
        np.testing.assert_array_equal(steps[:whole], np.arange(whole))
        assert np.isfinite(store.activations("net.conv1", np.array([whole - 1]))).all()


class _FillsTheDiskAfterTheFirstEpoch(pl.Callback):
    """Leaves 1 MiB free on ``disk`` at the end of epoch 0, before that epoch's checkpoint is saved."""

    def __init__(self, disk: Path) -> None:
        self.disk = disk

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 0:
            stats = os.statvfs(self.disk)
            (self.disk / "filler").write_bytes(bytes(max(stats.f_bavail * stats.f_frsize - (1 << 20), 0)))


@pytest.mark.slow  # a real mount and a two-epoch fit
def test_a_full_disk_when_a_checkpoint_flushes_the_store_stops_recording_not_training(small_disk: Path) -> None:
    # The synchronous writer holds up to 64 rows (or a second's worth); the checkpoint's flush meets the full disk.
    recorder = ActivationRecorder(path=str(small_disk / "activations.h5"), flush_every=64, background_writes=False)
    pl.seed_everything(0, verbose=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = quiet_trainer(
            small_disk.parent,
            callbacks=[recorder, _FillsTheDiskAfterTheFirstEpoch(small_disk)],
            logger=False,
            limit_val_batches=0,  # no validation: its scalars would flush the rows; the checkpoint comes at epoch end
        )
        trainer.fit(TinyNet(), TinyData())
    assert trainer.global_step == 12  # training finished, its checkpoints saved (outside the full disk)
    assert sorted(path.name for path in (small_disk.parent / "checkpoints").iterdir()) == ["epoch=1-step=12.ckpt"]
    stops = [str(w.message) for w in caught if "stopped recording" in str(w.message)]
    assert len(stops) == 1, stops
    assert "is full" in stops[0]
    with StoreReader(small_disk / "activations.h5") as store:
        steps = store.global_steps()
        np.testing.assert_array_equal(steps, np.arange(len(steps)))


class _Fixed(torch.nn.Module):
    """Returns hand-set values per probe, whatever the input: finite ones, one too large for float16, a NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.values = torch.tensor([[0.5, -3.0, 2.0], [1.0, 70000.0, float("nan")]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.values[: x.shape[0]] * self.scale


class _Outputs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fixed = _Fixed()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fixed(x)


def test_engine_peaks_and_nonfinite_counts_follow_the_stored_float16_values() -> None:
    model = _Outputs()
    finite_only = ProbeEngine(model, torch.zeros(1, 2), ["fixed"])  # first probe: every value finite (fast path)
    views = finite_only.host_views(finite_only.run().clone())
    assert views["fixed/abs_max"] == 3.0
    assert views["fixed/nonfinite"] == 0
    both = ProbeEngine(model, torch.zeros(2, 2), ["fixed"])  # 70000 becomes inf in float16, and a NaN
    views = both.host_views(both.run().clone())
    stored = views["fixed/activations"].float()
    assert torch.isinf(stored).sum() == 1
    assert views["fixed/nonfinite"] == 2
    assert views["fixed/abs_max"] == 3.0  # from the finite values only


def test_default_weights_are_conv_kernels_and_small_layers_only() -> None:
    model = torch.nn.Sequential(
        torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Tanh()),
        torch.nn.Flatten(),
        torch.nn.Sequential(torch.nn.Linear(2 * 4 * 4, 300), torch.nn.ReLU()),
        torch.nn.Linear(300, 3),
    )
    images = torch.rand(2, 1, 6, 6)
    layers = ["0", "2", "3"]
    capped = ProbeEngine(model, images, layers, record_params=True, params_cap=1000)
    assert set(capped.layouts["0"].params) == {"0.weight", "0.bias"}  # a conv: its kernels, always
    assert capped.layouts["2"].params == {}  # 32 x 300 dense weights: left out
    assert set(capped.layouts["3"].params) == {"weight", "bias"}  # 903 values: under the cap
    views = capped.host_views(capped.run().clone())
    assert torch.equal(views["0/params/0.weight"], model[0][0].weight.detach())
    everything = ProbeEngine(model, images, layers, record_params=True)
    assert set(everything.layouts["2"].params) == {"0.weight", "0.bias"}
    assert everything.nbytes > capped.nbytes + 32 * 300 * 4


class _FrozenNorm(torch.nn.BatchNorm1d):
    """A module whose own train() keeps it in eval mode, as frozen-BatchNorm code does."""

    calls: list[bool] = []

    def train(self, mode: bool = True) -> _FrozenNorm:
        _FrozenNorm.calls.append(mode)
        return super().train(False)


def test_the_probe_pass_calls_a_modules_own_train_and_restores_every_flag() -> None:
    from actrec.probe import eval_mode

    plain = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Dropout(0.5), torch.nn.Sequential(torch.nn.ReLU()))
    plain.train()
    plain[1].eval()  # a mix of flags, each restored as it was
    with eval_mode(plain):
        assert not any(module.training for module in plain.modules())
    assert [module.training for module in plain.modules()] == [True, True, False, True, True]

    frozen = torch.nn.Sequential(torch.nn.Linear(3, 3), _FrozenNorm(3))
    frozen.train()
    _FrozenNorm.calls.clear()
    with eval_mode(frozen):  # eval() itself, so the override runs
        assert not any(module.training for module in frozen.modules())
    assert _FrozenNorm.calls == [False]
    assert [module.training for module in frozen.modules()] == [True, True, False]


def test_the_pass_follows_a_model_cast_or_given_a_new_child_after_setup() -> None:
    # The engine keeps the probes on the model's device and dtype, and the module list whose flags it switches,
    # instead of looking them up every pass: both must follow the model when it changes.
    model = TinyNet()
    images = torch.rand(3, 1, 6, 6)
    engine = ProbeEngine(model, images, ["net.conv1"], dtype="float32")
    model.double()
    views = engine.host_views(engine.run().clone())
    model.eval()
    with torch.no_grad():
        expected = model(images.double())
    assert torch.equal(views["logits"], expected.float())
    # To 16 bits and back: the pass takes the probes as they were, not as a float16 copy rounded them.
    model.half()
    engine.run()
    model.float()
    views = engine.host_views(engine.run().clone())
    with torch.no_grad():
        assert torch.equal(views["logits"], model(images))

    seen: list[bool] = []

    class Probe(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(self.training)
            return x

    model.train()
    model.net.append(Probe())
    engine.run()
    assert seen == [False]  # switched to eval with the rest, and given its flag back after
    assert model.net[-1].training
