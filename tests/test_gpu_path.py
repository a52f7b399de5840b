"""The recorder's GPU path, checked on a CPU: collectives under DDP, sharded strategies, host syncs,
precision, stale graphs, capture failures and the host ring."""

from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from recorder_fixtures import TinyData, TinyNet, quiet_trainer

from actrec.callbacks import ActivationRecorder
from actrec.callbacks.activation_recorder import sharded_strategy_refusal
from actrec.probe._engine import ProbeEngine
from actrec.store import StoreReader

TESTS = Path(__file__).parent

_NODE = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    import pytorch_lightning as pl
    import torch
    from recorder_fixtures import TinyData, TinyNet, quiet_trainer
    from actrec.callbacks import ActivationRecorder

    class GathersAtEpochEnd(TinyNet):
        '''Its own on_validation_epoch_end all_gathers: a collective the recorder must never cut across.'''

        gathered = []

        def on_validation_epoch_end(self):
            ranks = self.all_gather(torch.tensor([float(self.global_rank)]))
            assert ranks.flatten().tolist() == [0.0, 1.0], ranks
            self.gathered.append(self.trainer.sanity_checking)

    pl.seed_everything(0)
    trainer = quiet_trainer(
        {root!r}, callbacks=[ActivationRecorder()], max_epochs=2, strategy="ddp", devices=1, num_nodes=2,
        deterministic=False, num_sanity_val_steps=1,
    )
    module = GathersAtEpochEnd()
    trainer.fit(module, TinyData())
    print("global rank", trainer.global_rank, "local rank", trainer.local_rank, "steps", trainer.global_step,
          "gathered", module.gathered)
    """
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_node_ddp_with_a_module_that_all_gathers_at_validation_epoch_end(tmp_path: Path) -> None:
    """Two processes as two nodes of one device each (gloo): the module all_gathers in its own
    on_validation_epoch_end, sanity check included; only global rank 0 (node 0) writes a store, and the
    validation series holds each epoch's synced metrics."""
    port = _free_port()
    processes = []
    for node in (0, 1):
        root = tmp_path / f"node{node}"
        root.mkdir()
        script = root / "train.py"
        script.write_text(_NODE.format(tests=str(TESTS), root=str(root)))
        env = {
            **os.environ,
            "PL_DISABLE_FORK": "1",
            "OMP_NUM_THREADS": "1",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "NODE_RANK": str(node),
        }
        env.pop("LOCAL_RANK", None)
        processes.append(
            subprocess.Popen(
                [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
            )
        )
    outputs = []
    try:
        for process in processes:
            # A collective met on one rank only hangs: the timeout is the failure.
            outputs.append(process.communicate(timeout=240))
    finally:
        for process in processes:
            process.kill()
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-3000:]
    # 48 images over 2 ranks, batch 8: 3 steps an epoch; the sanity check gathered too, then each epoch.
    assert "global rank 0 local rank 0 steps 6 gathered [True, False, False]" in outputs[0][0]
    assert "global rank 1 local rank 0 steps 6 gathered [True, False, False]" in outputs[1][0]
    assert list((tmp_path / "node1").rglob("*.h5")) == []  # local rank 0 of node 1 is not global rank 0
    (store_path,) = (tmp_path / "node0").rglob("*.h5")
    with StoreReader(store_path) as store:
        assert store.global_steps().tolist() == list(range(7))
        steps, losses = store.scalars("val/loss")
        assert steps.tolist() == [3, 6]  # one value per epoch, none from the sanity check
        assert np.all(np.isfinite(losses))
        assert store.scalars("val/acc")[0].tolist() == [3, 6]


@pytest.mark.parametrize("package", ["pytorch_lightning", "lightning.pytorch"])
def test_sharded_strategies_are_refused_in_one_sentence(package: str) -> None:
    strategies = importlib.import_module(f"{package}.strategies")
    fsdp = strategies.FSDPStrategy()
    model_parallel = strategies.ModelParallelStrategy()
    # DeepSpeedStrategy's __init__ only checks that deepspeed is installed; the class itself is what counts.
    deepspeed = object.__new__(strategies.DeepSpeedStrategy)
    for strategy, name in ((fsdp, "FSDPStrategy"), (model_parallel, "ModelParallelStrategy"), (deepspeed, "DeepSpeed")):
        refusal = sharded_strategy_refusal(strategy)
        assert refusal is not None
        assert refusal.startswith(f"ActivationRecorder: {name}")
        assert refusal.count(". ") == 0
        assert refusal.endswith("on one device.")
    for strategy in (strategies.DDPStrategy(), strategies.SingleDeviceStrategy("cpu")):
        assert sharded_strategy_refusal(strategy) is None


def test_model_parallel_fit_on_cpu_is_refused_at_setup_before_anything_is_written(tmp_path: Path) -> None:
    # FSDPStrategy needs a GPU to build a Trainer at all; ModelParallelStrategy builds one on a CPU.
    from pytorch_lightning.strategies import ModelParallelStrategy

    trainer = quiet_trainer(tmp_path, callbacks=[ActivationRecorder()], strategy=ModelParallelStrategy())
    with pytest.raises(MisconfigurationException, match=r"^ActivationRecorder: ModelParallelStrategy shards the"):
        trainer.fit(TinyNet(), TinyData())
    assert list(tmp_path.rglob("*.h5")) == []


class LogsProgressBarMetrics(TinyNet):
    """Returns the bare loss and logs accuracy to the progress bar: the recorder must find the accuracy
    among the logged tensors, where Lightning's callback_metrics would ``.item()`` every progress-bar value."""

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        images, labels = batch
        logits = self(images)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", (logits.argmax(-1) == labels).float().mean(), prog_bar=True)
        self.accuracies.append(float((logits.argmax(-1) == labels).float().mean()))
        return loss

    def on_fit_start(self) -> None:
        self.accuracies: list[float] = []


def test_recorder_hooks_make_no_host_sync_during_a_fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = ActivationRecorder(path=str(tmp_path / "activations.h5"))
    inside = {"hook": None}
    syncs: list[str] = []
    main = threading.main_thread()
    for hook in ("on_train_batch_end", "on_validation_end", "on_train_start", "on_train_end"):
        original = getattr(recorder, hook)

        def wrapped(*args, _original=original, _hook=hook, **kwargs):  # noqa: ANN002, ANN003, ANN202
            inside["hook"] = _hook
            try:
                return _original(*args, **kwargs)
            finally:
                inside["hook"] = None

        monkeypatch.setattr(recorder, hook, wrapped)

    def counting(name: str):  # noqa: ANN202
        original = getattr(torch.Tensor, name)

        def count(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            if inside["hook"] is not None and threading.current_thread() is main:
                syncs.append(f"{name} in {inside['hook']}")
            return original(self, *args, **kwargs)

        return count

    for name in ("item", "tolist", "__float__", "__bool__", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    module = LogsProgressBarMetrics()
    quiet_trainer(tmp_path, callbacks=[recorder], max_epochs=1).fit(module, TinyData())
    monkeypatch.undo()
    assert syncs == []
    with StoreReader(tmp_path / "activations.h5") as store:
        steps = store.steps()
        # Read from the logged tensors, not converted: step k's row holds the accuracy of batch k-1.
        np.testing.assert_allclose(steps["batch_acc"][1:], module.accuracies, rtol=1e-6)
        assert np.all(np.isfinite(steps["batch_loss"][1:]))


def test_bf16_mixed_probe_pass_computes_what_training_computes(tmp_path: Path) -> None:
    """Under bf16-mixed the probe pass runs inside Lightning's autocast, as training_step does; its bfloat16
    activations are stored as float32 (exactly), not float16."""
    torch.manual_seed(0)
    path = tmp_path / "activations.h5"
    module = TinyNet()
    recorder = ActivationRecorder(path=str(path), layers=["net.conv1", "net.conv2"], dtype="float16")
    quiet_trainer(tmp_path, callbacks=[recorder], max_epochs=1, precision="bf16-mixed").fit(module, TinyData())
    with StoreReader(path) as store:
        images = torch.from_numpy(store.probes.images)
        stored = store.activations("net.conv2", slice(-1, None))[0]
        assert stored.dtype == np.float32
    module.eval()
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = module.net.conv2(module.net.conv1(images))
        full = module.net.conv2(module.net.conv1(images))
    assert autocast.dtype == torch.bfloat16
    np.testing.assert_array_equal(stored, autocast.float().numpy())
    assert not np.array_equal(stored, full.numpy())  # a float32 pass differs: the probes saw what training saw


def test_bfloat16_layers_beyond_float16_range_are_stored_finite() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2)).to(torch.bfloat16)
    with torch.no_grad():
        model[0].weight.fill_(1e5)  # 4e5 after the first layer: inf in float16
    engine = ProbeEngine(model, torch.ones(2, 4), ["0", "2"], dtype="float16")
    assert engine.dtype == "float32"
    views = engine.host_views(engine.run().clone())
    assert torch.isfinite(views["0/activations"]).all()
    assert views["0/activations"].min() >= 3.9e5
    assert views["0/nonfinite"] == 0
