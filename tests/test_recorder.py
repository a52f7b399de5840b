"""ActivationRecorder with a real Lightning Trainer, real HDF5 stores and real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from recorder_fixtures import TinyData, TinyNet, quiet_trainer
from torch import nn

from actrec.callbacks import ActivationRecorder, RecorderConfigError
from actrec.errors import UserError
from actrec.store import StoreReader, StoreWriter

TESTS = Path(__file__).parent


def _fit(
    tmp_path: Path,
    recorder: ActivationRecorder | None,
    seed: int = 7,
    also: tuple = (),
    dropout: float = 0.5,
    **trainer_options,
) -> TinyNet:
    pl.seed_everything(seed, verbose=False)
    model = TinyNet(dropout=dropout)
    callbacks = ([recorder] if recorder is not None else []) + list(also)
    quiet_trainer(tmp_path, callbacks=callbacks, **trainer_options).fit(model, TinyData())
    return model


def test_records_every_step_with_exact_values(tmp_path: Path) -> None:
    recorder = ActivationRecorder()
    model = _fit(tmp_path, recorder, max_epochs=1)
    store_path = tmp_path / "logs" / "version_0" / "activations.h5"
    assert recorder.store_path == store_path

    with StoreReader(store_path) as store:
        # Default layers: the conv blocks, post-activation; the flat head is not a conv block.
        assert store.layer_names == ["net.conv1", "net.conv2"]
        assert store.layer("net.conv1").scale_kind == "tanh"
        assert store.layer("net.conv2").scale_kind == "nonnegative"  # conv, batch norm, then ReLU
        # 48 images / batch 8 = 6 optimizer steps, plus step 0 before any update.
        np.testing.assert_array_equal(store.global_steps(), np.arange(7))
        steps = store.steps()
        assert np.isnan(steps["batch_loss"][0])
        assert np.all(np.isfinite(steps["batch_loss"][1:]))
        assert store.class_names == ["zero", "one", "two"]
        # The recorder's own settings, and not Lightning's bound methods (log, log_dict) or anything private.
        assert store.config["recorder"]["every_n_steps"] == 1
        assert not {"log", "log_dict"} & set(store.config["recorder"])
        assert not any(key.startswith("_") for key in store.config["recorder"])

        # Probes: the first image of each class in the validation split, as fed to the model.
        data = TinyData()
        data.setup("fit")
        images, labels = data.val_dataset.tensors
        expected_indices = [int(np.flatnonzero(labels.numpy() == k)[0]) for k in range(3)]
        probes = store.probes
        assert probes.indices.tolist() == expected_indices
        np.testing.assert_array_equal(probes.images, images[expected_indices].numpy())

        # The last row holds exactly what the trained network computes on the probes.
        model.eval()
        with torch.no_grad():
            block = model.net.conv1(torch.from_numpy(probes.images))
            logits = model(torch.from_numpy(probes.images))
        np.testing.assert_array_equal(store.activations("net.conv1")[-1], block.numpy().astype(np.float16))
        np.testing.assert_allclose(store.logits()[-1], logits.numpy(), rtol=1e-6)
        weights = store.params("net.conv1")
        np.testing.assert_array_equal(weights["0.weight"][-1], model.net.conv1[0].weight.detach().numpy())
        assert not np.array_equal(weights["0.weight"][0], weights["0.weight"][-1])
        # Validation metrics ride along, keyed by the step they were computed at.
        val_steps, val_acc = store.scalars("val/acc")
        assert val_steps.tolist() == [6]
        assert 0 <= val_acc[0] <= 1


def test_hand_set_weights_give_hand_computed_activations(tmp_path: Path) -> None:
    class HandSet(TinyNet):
        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.0)  # weights stay as set

    pl.seed_everything(0, verbose=False)
    model = HandSet()
    conv = model.net.conv1[0]
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 2.0  # channel 0: tanh(2 * pixel)
        conv.weight[1, 0, 1, 1] = -1.0  # channel 1: tanh(-pixel + 0.5)
        conv.bias.copy_(torch.tensor([0.0, 0.5]))
    recorder = ActivationRecorder(layers=["net.conv1"], dtype="float32", every_n_steps=2)
    quiet_trainer(tmp_path, callbacks=[recorder], max_epochs=1).fit(model, TinyData())
    with StoreReader(recorder.store_path) as store:
        assert store.global_steps().tolist() == [0, 2, 4, 6]
        pixels = store.probes.images[:, 0].astype(np.float64)
        values = store.activations("net.conv1")
        for row in range(4):
            np.testing.assert_allclose(values[row, :, 0], np.tanh(2 * pixels), rtol=1e-6)
            np.testing.assert_allclose(values[row, :, 1], np.tanh(0.5 - pixels), rtol=1e-6)


def test_recording_does_not_change_training(tmp_path: Path) -> None:
    plain = _fit(tmp_path / "off", None)
    recorded = _fit(tmp_path / "on", ActivationRecorder(layers=["net.*"]))
    for (name, a), (_, b) in zip(plain.state_dict().items(), recorded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name  # bitwise, batch-norm running statistics included
    with StoreReader(tmp_path / "on" / "logs" / "version_0") as store:
        assert store.layer_names == ["net.conv1", "net.conv2", "net.drop", "net.flat", "net.head"]


def test_steps_count_optimizer_steps_under_gradient_accumulation(tmp_path: Path) -> None:
    recorder = ActivationRecorder(every_n_steps=1)
    _fit(tmp_path, recorder, max_epochs=1, accumulate_grad_batches=2)
    with StoreReader(recorder.store_path) as store:
        assert store.global_steps().tolist() == [0, 1, 2, 3]


def test_final_step_is_recorded_between_strides(tmp_path: Path) -> None:
    recorder = ActivationRecorder(every_n_steps=4)
    _fit(tmp_path, recorder, max_epochs=1)
    with StoreReader(recorder.store_path) as store:
        assert store.global_steps().tolist() == [0, 4, 6]


@pytest.mark.slow  # three fits of three epochs
def test_resume_continues_the_store_without_gaps_or_duplicates(tmp_path: Path) -> None:
    # No dropout: a resumed run reseeds its random numbers, and only then can it match a straight run.
    straight = ActivationRecorder(path=str(tmp_path / "straight.h5"))
    _fit(tmp_path / "a", straight, max_epochs=3, dropout=0.0)

    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    first = ActivationRecorder(path=str(tmp_path / "resumed.h5"))
    _fit(tmp_path / "b", first, max_epochs=3, also=(checkpoints,), dropout=0.0)
    # Resume from the end of epoch 1 (step 12): steps 13..18 are dropped and recorded again.
    pl.seed_everything(7, verbose=False)
    second = ActivationRecorder(path=str(tmp_path / "resumed.h5"))
    trainer = quiet_trainer(tmp_path / "c", callbacks=[second], max_epochs=3)
    trainer.fit(TinyNet(dropout=0.0), TinyData(), ckpt_path=str(tmp_path / "ckpt" / "epoch=1-step=12.ckpt"))

    with StoreReader(tmp_path / "straight.h5") as expected, StoreReader(tmp_path / "resumed.h5") as store:
        assert store.global_steps().tolist() == list(range(19))
        assert store.run_id == first.state_dict()["run_id"] == second.state_dict()["run_id"]
        np.testing.assert_array_equal(store.activations("net.conv1"), expected.activations("net.conv1"))
        np.testing.assert_array_equal(store.logits(), expected.logits())
        assert store.scalars("val/acc")[0].tolist() == [6, 12, 18]


class _ReadsTheStoreAfterEachSave(ModelCheckpoint):
    """Writes checkpoints as usual, and after each one reads which steps the store has on disk."""

    def __init__(self, store: Path, **options) -> None:
        super().__init__(**options)
        self.store = store
        self.seen: list[tuple[int, list[int]]] = []

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        with StoreReader(self.store) as reader:
            self.seen.append((trainer.global_step, reader.global_steps().tolist()))


def test_the_rows_a_checkpoint_counts_are_on_disk_before_the_checkpoint_is(tmp_path: Path) -> None:
    # A run killed just after a checkpoint is resumed from it keeping the store's rows through its step; a row
    # still in the writer's hands (here it holds up to 64, or a second's worth) would reach the disk only when
    # the killed run's writer finishes, perhaps after the resumed run has copied the store.
    store = tmp_path / "activations.h5"
    checkpoints = _ReadsTheStoreAfterEachSave(store, dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    _fit(tmp_path, ActivationRecorder(path=str(store), flush_every=64), max_epochs=3, also=(checkpoints,))
    assert [step for step, _ in checkpoints.seen] == [6, 12, 18]
    for step, on_disk in checkpoints.seen:
        assert on_disk == list(range(step + 1)), step


def test_resume_with_other_channel_settings_is_refused_and_keeps_the_store(tmp_path: Path) -> None:
    # The checkpoint's state still matches (same layers and path): only the store can tell the change.
    path = tmp_path / "activations.h5"
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    _fit(tmp_path / "a", ActivationRecorder(path=str(path)), also=(checkpoints,), max_epochs=1)
    before = path.read_bytes()
    resumed = ActivationRecorder(path=str(path), max_channels=2)
    trainer = quiet_trainer(tmp_path / "b", callbacks=[resumed], max_epochs=2)
    message = r"other layers than this run's \(layer 'net.conv2' has sample shape \(2, 6, 6\), not \(3, 6, 6\)"
    with pytest.raises(MisconfigurationException, match=message):
        trainer.fit(TinyNet(), TinyData(), ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=6.ckpt"))
    assert path.read_bytes() == before


def test_unknown_layer_fails_at_setup_listing_names(tmp_path: Path) -> None:
    recorder = ActivationRecorder(layers=["net.conv9"])
    with pytest.raises(
        MisconfigurationException, match=r"no module matches layer 'net.conv9'; available: net, net.conv1"
    ) as caught:
        _fit(tmp_path, recorder)
    assert not list(tmp_path.rglob("*.h5"))
    # one actrec refusal (every command prints it as one sentence) and Lightning's exception, both
    assert isinstance(caught.value, RecorderConfigError)
    assert isinstance(caught.value, UserError)


def test_out_of_range_arguments_are_refused_as_one_sentence_both_ways_people_catch() -> None:
    with pytest.raises(UserError, match=r"every_n_steps"):
        ActivationRecorder(every_n_steps=0)
    with pytest.raises(MisconfigurationException, match=r"every_n_steps"):
        ActivationRecorder(every_n_steps=0)


def test_refuses_a_store_of_another_run_and_leaves_it_alone(tmp_path: Path) -> None:
    path = tmp_path / "activations.h5"
    _fit(tmp_path / "first", ActivationRecorder(path=str(path)), max_epochs=1)
    before = path.read_bytes()
    with pytest.raises(MisconfigurationException, match="already exists; resume its run, or pass overwrite"):
        _fit(tmp_path / "second", ActivationRecorder(path=str(path)), max_epochs=1)
    assert path.read_bytes() == before
    # Refused before anything but Lightning's own event file (opened before any callback hook runs) is written.
    written = [p.name for p in (tmp_path / "second").rglob("*") if p.is_file()]
    assert [name for name in written if not name.startswith("events.out.tfevents")] == []
    _fit(tmp_path / "third", ActivationRecorder(path=str(path), overwrite=True), max_epochs=1)
    assert path.read_bytes() != before


def test_refuses_an_unwritable_path(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder should be")
    recorder = ActivationRecorder(path=str(blocker / "activations.h5"))
    with pytest.raises(MisconfigurationException, match="cannot create the folder .* for the activation store"):
        _fit(tmp_path, recorder)
    assert blocker.read_text() == "a file where the store's folder should be"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"every_n_steps": 0}, "every_n_steps must be an integer >= 1, got 0"),
        ({"dtype": "int8"}, "dtype must be 'float16' or 'float32', got 'int8'"),
        ({"compression": "zstd"}, "compression must be 'none', 'lzf' or 'gzip', got 'zstd'"),
        ({"layers": []}, "layers must name at least one module"),
        ({"probe_indices": []}, "probe_indices must name at least one image"),
    ],
)
def test_invalid_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(MisconfigurationException, match=message):
        ActivationRecorder(**kwargs)


def test_probe_indices_and_per_class(tmp_path: Path) -> None:
    recorder = ActivationRecorder(probes_per_class=2)
    _fit(tmp_path / "a", recorder, max_epochs=1, limit_train_batches=1)
    with StoreReader(recorder.store_path) as store:
        assert store.probes.labels.tolist() == [0, 0, 1, 1, 2, 2]
    recorder = ActivationRecorder(probe_indices=[5, 1])
    _fit(tmp_path / "b", recorder, max_epochs=1, limit_train_batches=1)
    with StoreReader(recorder.store_path) as store:
        assert store.probes.indices.tolist() == [5, 1]
    with pytest.raises(MisconfigurationException, match="probe index 99 is outside the validation split of 12"):
        _fit(tmp_path / "c", ActivationRecorder(probe_indices=[99]), max_epochs=1)


def test_default_layers_of_a_flat_sequential(tmp_path: Path) -> None:
    from actrec.probe import resolve_layers as _resolve_layers

    flat = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3), nn.Flatten(), nn.Linear(8, 2))
    assert _resolve_layers(flat, None) == ["1", "2"]  # after conv 0's activation; bare conv 2
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assert _resolve_layers(mlp, None) == ["2"]  # the last linear layer is the output, not a layer


_TRAIN_FOREVER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    import pytorch_lightning as pl
    from recorder_fixtures import TinyData, TinyNet, quiet_trainer
    from actrec.callbacks import ActivationRecorder

    class Slow(TinyNet):
        def training_step(self, batch, batch_idx):
            time.sleep(0.02)
            return super().training_step(batch, batch_idx)

    pl.seed_everything(0)
    recorder = ActivationRecorder(path={path!r})
    quiet_trainer({root!r}, callbacks=[recorder], max_epochs=1000).fit(Slow(), TinyData())
    """
)


@pytest.mark.slow  # a training process, killed
def test_sigkill_mid_training_leaves_a_readable_store(tmp_path: Path) -> None:
    path = tmp_path / "activations.h5"
    script = _TRAIN_FOREVER.format(tests=str(TESTS), path=str(path), root=str(tmp_path))
    process = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        seen = 0
        while seen < 30:
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "training never recorded 30 steps"
            time.sleep(0.2)
            if path.exists():
                with StoreReader(path) as live:  # a reader while training runs
                    seen = live.num_steps
                    np.testing.assert_array_equal(live.global_steps(), np.arange(seen))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
        process.stderr.close()

    with StoreReader(path) as store:
        steps = store.global_steps()
        assert len(steps) >= seen
        np.testing.assert_array_equal(steps, np.arange(len(steps)))
        assert store.activations("net.conv2").shape[0] == len(steps)
        assert np.all(np.isfinite(store.activations("net.conv1").astype(np.float32)))


_DDP = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    import pytorch_lightning as pl
    import torch
    from recorder_fixtures import TinyData, TinyNet, quiet_trainer
    from actrec.callbacks import ActivationRecorder

    pl.seed_everything(0)
    recorder = ActivationRecorder(path={path!r})
    trainer = quiet_trainer(
        {root!r}, callbacks=[recorder], max_epochs=2, strategy="ddp", devices=2,
        deterministic=False,
    )
    trainer.fit(TinyNet(), TinyData())
    print("rank", trainer.global_rank, "steps", trainer.global_step)
    """
)


@pytest.mark.slow  # two DDP processes
def test_ddp_two_processes_only_rank_zero_writes(tmp_path: Path) -> None:
    path = tmp_path / "activations.h5"
    script = tmp_path / "train_ddp.py"
    script.write_text(_DDP.format(tests=str(TESTS), path=str(path), root=str(tmp_path)))
    # A fresh launch: no rank or port another test of this process may have left in the environment.
    inherited = {key: value for key, value in os.environ.items() if key not in ("MASTER_ADDR", "MASTER_PORT")}
    env = {**inherited, "PL_DISABLE_FORK": "1", "OMP_NUM_THREADS": "1"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK"):
        env.pop(key, None)
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # (SyncBatchNorm refuses CPU modules under DDP, so batch norm here is per process.)
    assert "rank 0 steps 6" in result.stdout
    assert "rank 1 steps 6" in result.stdout
    # 48 images over 2 ranks, batch 8: 3 steps per epoch, 2 epochs, plus step 0.
    with StoreReader(path) as store:
        assert store.global_steps().tolist() == list(range(7))
    assert sorted(p.name for p in tmp_path.rglob("*.h5")) == ["activations.h5"]


def test_store_writer_is_closed_after_fit(tmp_path: Path) -> None:
    recorder = ActivationRecorder()
    _fit(tmp_path, recorder, max_epochs=1, limit_train_batches=2)
    # Closed cleanly: the writer can reopen it for another run of the same id.
    StoreWriter.resume(recorder.store_path, run_id=recorder.state_dict()["run_id"], keep_through_step=1).close()


def test_logs_activation_grids_to_tensorboard(tmp_path: Path) -> None:
    from io import BytesIO

    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from actrec.viewer import frame_title, live_frames

    recorder = ActivationRecorder(log_images_every_n_steps=3)
    _fit(tmp_path, recorder, max_epochs=1)
    events = EventAccumulator(str(recorder.store_path.parent), size_guidance={"images": 0})
    events.Reload()
    tags = sorted(events.Tags()["images"])
    assert {tag.split("/")[1] for tag in tags} == {"net.conv1", "net.conv2"}
    # Every logged image is exactly what the viewer's one colour-scale rule draws from the stored rows,
    # replayed step after step with the same running state.
    with StoreReader(recorder.store_path) as store:
        probes = store.probes
        steps = store.global_steps()
        logged_steps = [int(step) for step in steps if step % 3 == 0]
        assert len(logged_steps) >= 2
        for layer in ("net.conv1", "net.conv2"):
            state = None
            for step in logged_steps:
                row = int(np.flatnonzero(steps == step)[0])
                expected, state = live_frames(
                    store.layer(layer).scale_kind,
                    store.activations(layer, np.array([row]))[0],
                    state,
                    title=frame_title(layer, step, int(store.steps()["epoch"][row])),
                    probe_images=probes.images,
                    labels=probes.labels,
                    predictions=store.logits(np.array([row]))[0].argmax(-1),
                    class_names=store.class_names,
                )
                for suffix, image in expected:
                    logged = [e for e in events.Images(f"activations/{layer}{suffix}") if e.step == step]
                    assert len(logged) == 1
                    pixels = np.asarray(Image.open(BytesIO(logged[0].encoded_image_string)).convert("RGB"))
                    np.testing.assert_array_equal(pixels, image)
