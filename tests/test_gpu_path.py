"""The recorder's GPU path, checked on a CPU: collectives under DDP, sharded strategies, host syncs,
precision, stale graphs, capture failures and the host ring."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pytorch_lightning.callbacks import ModelPruning, StochasticWeightAveraging
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from recorder_fixtures import TinyData, TinyNet, quiet_trainer

from actrec.callbacks import ActivationRecorder
from actrec.callbacks.activation_recorder import sharded_strategy_refusal
from actrec.probe import _graph
from actrec.probe._engine import ProbeEngine
from actrec.probe._graph import CudaCalls
from actrec.probe._ring import HostRing, RingCalls
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


@pytest.mark.slow  # DDP worker processes
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


_DISTRIBUTED_ENV = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK")


def test_model_parallel_fit_on_cpu_is_refused_at_setup_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # FSDPStrategy needs a GPU to build a Trainer at all; ModelParallelStrategy builds one on a CPU.
    from pytorch_lightning.strategies import ModelParallelStrategy

    # Lightning sets these in this process and opens a one-process group on MASTER_PORT: both are undone after
    # the test, or a later test's DDP subprocesses inherit the port while it is still held here (EADDRINUSE).
    for key in _DISTRIBUTED_ENV:
        monkeypatch.setenv(key, "unset")
        monkeypatch.delenv(key)
    trainer = quiet_trainer(tmp_path, callbacks=[ActivationRecorder()], strategy=ModelParallelStrategy())
    try:
        with pytest.raises(MisconfigurationException, match=r"^ActivationRecorder: ModelParallelStrategy shards the"):
            trainer.fit(TinyNet(), TinyData())
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
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
            # .cpu()/.numpy() of a tensor already in host memory (the CPU writer path hands its packed step
            # over that way) moves nothing and waits for nothing; reading a value back always counts.
            host_copy = name in ("cpu", "numpy") and self.device.type == "cpu"
            if inside["hook"] is not None and threading.current_thread() is main and not host_copy:
                syncs.append(f"{name} in {inside['hook']}")
            return original(self, *args, **kwargs)

        return count

    # The hand-off to the store (_consume, _write_scalar) runs on the ring's consumer thread on CUDA; on a CPU,
    # where the packed step already is host memory, it runs inline. Either way it is the writer's side, where a
    # device value may be waited for; what this test holds is everything else the hooks do.
    for writer_side in ("_consume", "_write_scalar"):
        original_side = getattr(recorder, writer_side)

        def outside(*args, _original=original_side, **kwargs):  # noqa: ANN002, ANN003, ANN202
            hook, inside["hook"] = inside["hook"], None
            try:
                return _original(*args, **kwargs)
            finally:
                inside["hook"] = hook

        monkeypatch.setattr(recorder, writer_side, outside)

    # On a CPU the engine reads each layer's min and max back from host memory (no sync: the data is there);
    # this test holds the device path, which must read nothing back, so that CPU-only shortcut is turned off.
    from actrec.probe import ProbeEngine

    engine_init = ProbeEngine.__init__

    def device_path_init(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        engine_init(self, *args, **kwargs)
        self._host_statistics = False

    monkeypatch.setattr(ProbeEngine, "__init__", device_path_init)
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


def test_swa_replacing_batchnorm_buffers_is_detected_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Lightning's SWA gives every BatchNorm new running-stat tensors for its last epoch: a graph replay would
    read the old (freed) ones. The check before each pass notices, on the eager path too, and says so once."""
    path = tmp_path / "activations.h5"
    module = TinyNet(dropout=0.0)
    swa = StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=1)
    recorder = ActivationRecorder(path=str(path), layers=["net.conv2"], dtype="float32")
    with caplog.at_level(logging.INFO, logger="actrec"):
        quiet_trainer(tmp_path, callbacks=[swa, recorder], max_epochs=2).fit(module, TinyData())
    changes = [r.getMessage() for r in caplog.records if "tensors or hooks changed" in r.getMessage()]
    assert changes == [
        "actrec: the model's tensors or hooks changed (buffer net.conv2.1.running_mean was replaced by a new "
        "tensor (and 1 more change)); the eager probe pass follows them."
    ]
    with StoreReader(path) as store:
        images = torch.from_numpy(store.probes.images)
        last = store.activations("net.conv2", slice(-1, None))[0]
    module.eval()
    with torch.no_grad():
        expected = module.net.conv2(module.net.conv1(images))
    np.testing.assert_array_equal(last, expected.numpy())  # the final row saw SWA's averaged weights and stats


def test_pruning_is_detected_and_recorded_weights_are_the_pruned_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """ModelPruning re-parametrises ``weight`` as ``weight_orig * weight_mask`` with a forward pre-hook; the
    recorded weights are what forward uses (half of them zero after the first epoch), not ``weight_orig``."""
    path = tmp_path / "activations.h5"
    module = TinyNet()
    pruning = ModelPruning("l1_unstructured", parameters_to_prune=[(module.net.conv1[0], "weight")], amount=0.5)
    recorder = ActivationRecorder(path=str(path), layers=["net.conv1"], record_weights=True, dtype="float32")
    with caplog.at_level(logging.INFO, logger="actrec"):
        quiet_trainer(tmp_path, callbacks=[pruning, recorder], max_epochs=2).fit(module, TinyData())
    changes = [r.getMessage() for r in caplog.records if "tensors or hooks changed" in r.getMessage()]
    assert len(changes) == 1
    assert "net.conv1.0" in changes[0]
    with StoreReader(path) as store:
        steps = store.global_steps().tolist()
        weights = store.params("net.conv1")["0.weight"]
    assert steps == list(range(13))
    zeros = (weights.reshape(len(steps), -1) == 0).sum(axis=1)
    assert zeros[:7].tolist() == [0] * 7  # epoch 0: not pruned yet
    assert zeros[7:].tolist() == [9] * 6  # epoch 1: pruned after epoch 0, 9 of 18 weights


class ChangingGraph:
    """A stand-in capture: replays the eager pass and counts how often it was (re-)captured."""

    def __init__(self) -> None:
        self.captures = 0

    def __call__(self, forward):  # noqa: ANN001, ANN204
        self.captures += 1
        return forward


def test_a_changed_model_is_recaptured_then_run_eagerly(caplog: pytest.LogCaptureFixture) -> None:
    model = TinyNet()
    engine = ProbeEngine(model, torch.rand(3, 1, 6, 6), ["net.conv2"], dtype="float32")
    graph = ChangingGraph()
    assert engine.adopt_graph(graph, "stand-in graph")
    engine.run()
    assert graph.captures == 1  # nothing changed: the captured replay is used
    batch_norm = model.net.conv2[1]
    with caplog.at_level(logging.INFO, logger="actrec"):
        for round_ in range(4):
            batch_norm.running_var = batch_norm.running_var.clone() + round_
            engine.run()
            engine.run()
    assert graph.captures == 4  # three re-captures, then eager for good
    assert engine.model_changes == 4
    assert engine.graph_note == "eager (the model changed 4 times)"
    assert [r.getMessage() for r in caplog.records] == [
        "actrec: the model's tensors or hooks changed (buffer net.conv2.1.running_var was replaced by a new "
        "tensor); re-capturing the probe pass's graph.",
        "actrec: the probe pass runs eagerly: the model keeps changing (buffer net.conv2.1.running_var was "
        "replaced by a new tensor).",
    ]
    model.eval()
    with torch.no_grad():
        expected = model.net.conv2(model.net.conv1(engine.images))
    assert torch.equal(engine.host_views(engine.packed)["net.conv2/activations"], expected)


class NoisyInEval(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.linear(inputs + torch.randn_like(inputs))


def test_eager_passes_leave_the_random_numbers_of_training_alone() -> None:
    engine = ProbeEngine(NoisyInEval(), torch.zeros(3, 4), ["linear"], dtype="float32")
    state = torch.get_rng_state()
    engine.run()
    engine.run()
    assert torch.equal(torch.get_rng_state(), state)


class StandInStream:
    def __init__(self, name: str, calls: StandInCuda) -> None:
        self.name = name
        self.calls = calls

    def wait_stream(self, other: StandInStream) -> None:
        self.calls.log.append(f"{self.name} waits for {other.name}")


class StandInCuda(CudaCalls):
    """torch.cuda as capture_replay uses it, on a CPU: a current stream, a sync debug mode, and a graph
    context whose exit can fail the way capture_end does, before leaving its stream (as PyTorch's does)."""

    def __init__(self, fail_capture: bool = False) -> None:
        self.log: list[str] = []
        self.default = StandInStream("default", self)
        self.current = self.default
        self.sync_mode: int | str = 0
        self.fail_capture = fail_capture

    def current_stream(self, device: torch.device) -> StandInStream:
        return self.current

    def set_stream(self, stream: StandInStream) -> None:
        self.current = stream

    def new_stream(self, device: torch.device) -> StandInStream:
        return StandInStream("side", self)

    @contextlib.contextmanager
    def stream(self, stream: StandInStream):  # noqa: ANN201
        previous, self.current = self.current, stream
        yield
        self.current = previous

    def new_graph(self) -> SimpleNamespace:
        return SimpleNamespace(replay=lambda: self.log.append("replay"))

    @contextlib.contextmanager
    def graph(self, graph: SimpleNamespace, stream: StandInStream):  # noqa: ANN201
        self.log.append(f"capture on {stream.name}")
        self.current = stream
        yield
        if self.fail_capture:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        self.current = self.default

    def get_sync_debug_mode(self) -> int | str:
        return self.sync_mode

    def set_sync_debug_mode(self, mode: int | str) -> None:
        self.sync_mode = mode


@pytest.fixture
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_graph, "_capture_failure", None)


@pytest.mark.usefixtures("fresh_process")
def test_a_forward_that_syncs_is_never_captured() -> None:
    cuda = StandInCuda()
    passes = []

    def forward() -> None:
        passes.append(cuda.sync_mode)
        if cuda.sync_mode == "error":
            raise RuntimeError("called a synchronizing CUDA operation\nmore detail")

    with pytest.raises(_graph.CaptureRefused, match=r"^the forward synchronises with the host \(called a sync"):
        _graph.capture_replay(forward, torch.device("cpu"), cuda)
    assert passes == ["error"]  # one probing pass, no capture
    assert cuda.sync_mode == 0  # restored
    assert cuda.current is cuda.default
    assert _graph.capture_failure() is None  # nothing was captured: later models may still be


@pytest.mark.usefixtures("fresh_process")
def test_a_failed_capture_restores_the_stream_and_turns_capture_off() -> None:
    cuda = StandInCuda(fail_capture=True)
    passes = []
    with pytest.raises(RuntimeError, match="operation not permitted"):
        _graph.capture_replay(lambda: passes.append(cuda.current.name), torch.device("cpu"), cuda)
    assert cuda.current is cuda.default  # PyTorch left the side stream current; the finally put it back
    assert passes == ["default", "side", "side", "side"]  # sync probe, two warm-ups, the capture
    assert cuda.log == ["side waits for default", "default waits for side", "capture on side"]
    assert _graph.capture_failure() == "RuntimeError: CUDA error: operation not permitted when stream is capturing"
    again = StandInCuda()
    with pytest.raises(_graph.CaptureRefused, match="an earlier capture in this process failed"):
        _graph.capture_replay(lambda: passes.append("again"), torch.device("cpu"), again)
    assert passes[-1] != "again"
    assert again.log == []


@pytest.mark.usefixtures("fresh_process")
def test_a_capture_that_works_replays_and_the_engine_adopts_it() -> None:
    cuda = StandInCuda()
    replay = _graph.capture_replay(lambda: None, torch.device("cpu"), cuda)
    replay()
    assert cuda.log[-2:] == ["capture on side", "replay"]
    assert cuda.current is cuda.default


def test_the_real_capture_is_thread_local_on_the_given_side_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def graph(cuda_graph, **kwargs):  # noqa: ANN001, ANN003, ANN202
        seen.update(kwargs)
        return contextlib.nullcontext()

    monkeypatch.setattr(torch.cuda, "graph", graph)
    CudaCalls().graph("the graph", stream="the side stream")
    assert seen == {"stream": "the side stream", "capture_error_mode": "thread_local"}


class StandInEvent:
    def __init__(self, cuda: StandInRingCalls) -> None:
        self.cuda = cuda
        self.streams: list[str] = []

    def record(self) -> None:
        self.streams.append(self.cuda.current.name)

    def synchronize(self) -> None:
        pass


class StandInRingCalls(RingCalls, StandInCuda):
    """The staged ring's CUDA calls on a CPU: which stream each event is recorded on, what gets page-locked."""

    def __init__(self) -> None:
        StandInCuda.__init__(self)
        self.pinned: list[int] = []
        self.unpinned = 0
        self.events: list[StandInEvent] = []

    def new_stream(self, device: torch.device) -> StandInStream:
        return StandInStream("copy", self)

    def new_event(self) -> StandInEvent:
        self.events.append(StandInEvent(self))
        return self.events[-1]

    def pin(self, host: torch.Tensor) -> bool:
        self.pinned.append(host.numel() * host.element_size())
        return True

    def unpin(self, host: torch.Tensor) -> None:
        self.unpinned += 1


def test_staged_ring_copies_every_put_intact_through_exact_slots() -> None:
    nbytes = 200_003  # not a power of two: a slot is exactly one step, never rounded up
    cuda = StandInRingCalls()
    consumed: list[int] = []

    def consume(host: torch.Tensor, meta: int) -> None:
        time.sleep(0.002)  # a slow writer: training finds every slot busy and waits
        consumed.append(zlib.crc32(host.numpy().tobytes()))

    ring = HostRing(nbytes, 3, torch.device("cpu"), consume, calls=cuda)
    packed = torch.empty(nbytes, dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)
    sent = []
    for step in range(50):
        packed.copy_(torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=generator))  # reused buffer
        sent.append(zlib.crc32(packed.numpy().tobytes()))
        assert ring.put(packed, step)
    ring.drain()
    ring.close()
    assert consumed == sent
    assert ring.slot_bytes == nbytes
    assert cuda.pinned == [nbytes] * 3
    assert cuda.unpinned == 3
    assert ring.waits > 0
    # Each device-to-host copy is ordered after the compute stream, and its event is the copy stream's.
    assert cuda.log.count("copy waits for default") == 50
    assert sorted(s for event in cuda.events for s in event.streams) == ["copy"] * 50
    assert cuda.current is cuda.default


def test_ring_events_on_cuda_are_blocking(monkeypatch: pytest.MonkeyPatch) -> None:
    made = []
    monkeypatch.setattr(torch.cuda, "Event", lambda **kwargs: made.append(kwargs))
    RingCalls().new_event()
    assert made == [{"blocking": True}]


@pytest.mark.slow  # bench/gpu_check.py end to end in its own process
def test_gpu_check_runs_on_a_cpu_and_says_what_it_skipped() -> None:
    result = subprocess.run(
        [sys.executable, str(TESTS.parent / "bench" / "gpu_check.py")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    lines = result.stdout.splitlines()
    verdicts = {line[6:].split(":")[0]: line[:4].strip() for line in lines if line[:4] in ("PASS", "FAIL", "SKIP")}
    assert verdicts == {
        "graph adopted on a CNN with BatchNorm and Dropout": "SKIP",
        "graph replay bitwise equal to eager after each of 5 SGD steps": "SKIP",
        "a forward with .item() falls back to eager, stream and allocator restored": "SKIP",
        "SWA-style BatchNorm buffer replacement detected": "PASS",
        "host ring": "PASS",
        "50-step fit under set_sync_debug_mode('warn')": "SKIP",
        "recorder cost": "SKIP",
        "bench_recorder.py --accelerator gpu": "SKIP",
        "bf16-mixed": "PASS",
    }
    assert all("no CUDA device here" in line for line in lines if line.startswith("SKIP"))
    assert lines[-1] == "all checks passed"


def test_plain_loop_recorder_stores_bfloat16_layers_finite(tmp_path: Path) -> None:
    """The plain-loop Recorder stores in the engine's dtype (float32 for bfloat16 layers), as the callback does."""
    from actrec.recorder import Recorder

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2)).to(torch.bfloat16)
    with torch.no_grad():
        model[0].weight.fill_(1e5)  # 4e5 after the first layer: inf in float16
    path = tmp_path / "activations.h5"
    with Recorder(model, torch.ones(2, 4, dtype=torch.bfloat16), path, ["0", "2"], verbose=False, task="none"):
        pass
    with StoreReader(path) as store:
        first = store.activations("0")
        assert first.dtype == np.float32
        assert np.isfinite(first).all()
        assert first.min() >= 3.9e5
