"""Tests of ``actrec inspect`` on small real runs: numbers first, then the files and the refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import train_short_run
from PIL import Image

from actrec.cli import main as actrec_main
from actrec.inspection.cli import inspect_main
from actrec.inspection.handcrafted import EDGE_FILTERS, apply_edge_filters
from actrec.inspection.loading import load_run_model, zoo_model
from actrec.inspection.maximize import MaximizeSettings, maximize_channels
from actrec.inspection.reference import conv2d, layer_plan, max_pool2d, numpy_forward
from actrec.inspection.shift import DEFAULT_SHIFTS, shift_accuracy, shift_images, shift_probabilities
from actrec.inspection.summary import summarize
from actrec.probe import capture
from actrec.store import StoreReader
from actrec.trainer import MODEL_NAMES

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:pytorch_lightning.cli"),
    pytest.mark.filterwarnings(r"ignore:.*isinstance\(treespec, LeafSpec\):FutureWarning"),
]


def _train(runs_dir: Path, model: str, steps: int = 20) -> Path:
    """A short real training run of a zoo model; quickstart records every 5th step, weights included."""
    return train_short_run(runs_dir, model, f"--trainer.limit_train_batches={steps}")


@pytest.fixture(scope="module")
def run(short_six_conv_run: Path) -> Path:
    return short_six_conv_run


# ------------------------------------------------------------------------------------------------ numpy reference


def test_numpy_conv_and_pool_with_padding_and_stride_match_torch() -> None:
    generator = torch.Generator().manual_seed(0)
    images, weight, bias = (torch.randn(shape, generator=generator) for shape in ((2, 3, 9, 9), (5, 3, 3, 3), (5,)))
    for stride, padding in ((1, 0), (1, 1), (2, 1), (3, 2)):
        expected = torch.nn.functional.conv2d(images, weight, bias, stride=stride, padding=padding).numpy()
        got = conv2d(images.double().numpy(), weight.double().numpy(), bias.double().numpy(), stride, padding)
        np.testing.assert_allclose(got, expected, atol=1e-5)
    for kernel, stride in ((2, 2), (3, 1), (3, 2)):
        expected = torch.nn.functional.max_pool2d(images, kernel, stride).numpy()
        np.testing.assert_array_equal(max_pool2d(images.numpy(), kernel, stride), expected)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_numpy_forward_agrees_with_pytorch_at_every_stage(name: str) -> None:
    torch.manual_seed(0)
    model = zoo_model(name)
    images = torch.rand(4, 1, 28, 28)
    stages = layer_plan(model)
    seen = capture(model, images, [stage.name for stage in stages])
    reference = numpy_forward(stages, images.numpy())
    for stage in stages:
        np.testing.assert_allclose(reference[stage.name], seen.activations[stage.name].numpy(), atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(reference["net"], seen.output.numpy(), atol=2e-5, rtol=1e-4)


def test_numpy_forward_reproduces_the_stored_activations_at_the_checkpointed_step(run: Path) -> None:
    loaded = load_run_model(run)
    assert loaded.step == 20
    with StoreReader(run) as store:
        row = int(np.flatnonzero(store.global_steps() == loaded.step)[0])
        probes = store.probes.images
        reference = numpy_forward(layer_plan(loaded.model), probes)
        for layer in store.layer_names:
            stored = store.activations(layer, np.array([row]))[0].astype(np.float64)
            # float16 keeps 11 significant bits: half a unit in the last place is at most 2**-12 for |x| <= 1.
            np.testing.assert_allclose(reference[layer], stored, rtol=0, atol=2.0**-11)
            assert np.abs(reference[layer] - stored).max() > 0  # the store really is float16, not a copy


# ------------------------------------------------------------------------------------------------ summary


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_summary_shapes_equal_a_forward_pass(name: str) -> None:
    rows = summarize(zoo_model(name))
    assert all(row.shape == row.forward_shape for row in rows)
    assert sum(row.params for row in rows) == sum(p.numel() for p in zoo_model(name).parameters())


def test_summary_rule_and_receptive_fields_of_the_six_conv_network(capsys: pytest.CaptureFixture[str]) -> None:
    rows = {row.name: row for row in summarize(zoo_model("six_conv_tanh"))}
    assert rows["net.conv1.0"].rule == "(28 - 3 + 2*1)/1 + 1 = 28"
    assert rows["net.pool2"].rule == "(14 - 2 + 2*0)/2 + 1 = 7"
    assert rows["net.conv6.0"].forward_shape == (16, 7, 7)
    # 3, 5, pool 6, 10, 14, pool 16, then each 3x3 conv on the 4x-strided grid adds 8: 24, 32.
    fields = [rows[f"net.conv{k}.0"].receptive_field for k in range(1, 7)]
    assert fields == [3, 5, 10, 14, 24, 32]
    assert actrec_main(["inspect", "summary", "--model", "lenet"]) == 0
    out = capsys.readouterr().out
    assert "net.conv2.0  Conv2d     64×14×14" in out
    assert "the rule matched all 4 conv and pool layers" in out


# ------------------------------------------------------------------------------------------------ hand-made filters


def test_the_vertical_filter_responds_most_to_a_vertical_edge() -> None:
    vertical_edge = np.zeros((28, 28), np.float32)
    vertical_edge[:, 14:] = 1.0  # dark left half, bright right half
    horizontal_edge = vertical_edge.T.copy()
    names = list(EDGE_FILTERS)
    # Inside the border: zero padding makes the picture's own border an edge to every filter.
    on_vertical = apply_edge_filters(vertical_edge).conv[:, 1:-1, 1:-1].max(axis=(1, 2))
    on_horizontal = apply_edge_filters(horizontal_edge).conv[:, 1:-1, 1:-1].max(axis=(1, 2))
    assert names[int(on_vertical.argmax())] == "vertical"
    assert on_vertical[names.index("vertical")] == pytest.approx(3.0)  # a full-contrast edge: 3 rows of +1
    assert on_horizontal[names.index("vertical")] == pytest.approx(0.0)
    assert names[int(on_horizontal.argmax())] == "horizontal"
    result = apply_edge_filters(vertical_edge)
    assert result.pooled.shape == (4, 14, 14)
    np.testing.assert_allclose(result.activation, np.tanh(result.conv), atol=1e-6)


# ------------------------------------------------------------------------------------------------ shift


def test_shift_moves_pixels_and_fills_with_black() -> None:
    image = np.zeros((1, 1, 28, 28), np.float32)
    image[..., 10, 3] = 1.0
    assert shift_images(image, 2)[0, 0, 10, 5] == 1.0
    assert shift_images(image, -3)[0, 0, 10, 0] == 1.0
    assert shift_images(image, -4).sum() == 0  # moved out of the picture
    np.testing.assert_array_equal(shift_images(image, 0), image)


def test_shift_heatmap_rows_sum_to_one_and_accuracy_at_zero_shift_is_plain_accuracy(run: Path) -> None:
    loaded = load_run_model(run)
    from actrec.inspection.images import dataset_split

    images, labels, _ = dataset_split(loaded.config)
    probabilities = shift_probabilities(loaded.model, images[:1], DEFAULT_SHIFTS)
    assert probabilities.shape == (11, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    with torch.no_grad():
        plain = (loaded.model(torch.from_numpy(images[:200])).argmax(1).numpy() == labels[:200]).mean()
    assert shift_accuracy(loaded.model, images[:200], labels[:200], [0])[0] == pytest.approx(plain)


@pytest.mark.slow  # trains a second run, shifts 300 images twice
def test_shift_compare_draws_both_runs_and_their_accuracy(run: Path, tmp_path: Path) -> None:
    mlp_run = _train(tmp_path / "runs", "mlp", steps=5)
    out = tmp_path / "out"
    assert (
        inspect_main(
            ["shift", str(run), "--compare", str(mlp_run), "--index", "3", "--images", "300", "--out", str(out)]
        )
        == 0
    )
    picture = Image.open(out / "shift-test3-compare.png")
    assert picture.width > 1200  # two heatmaps and the chart side by side
    assert inspect_main(["shift", str(run), "--out", str(out)]) == 0
    assert (out / "shift-test0.png").is_file()


# ------------------------------------------------------------------------------------------------ maximisation


def test_maximisation_raises_each_channels_mean_activation_far_above_the_noise(run: Path) -> None:
    loaded = load_run_model(run)
    settings = MaximizeSettings(steps=60)
    result = maximize_channels(loaded.model, "net.conv5", range(16), settings=settings)
    gain = result.final_activation - result.start_activation
    # On the dark starting noise the 16 channels average about 0 (|mean| < 0.05); optimised, they average over
    # 0.2 on tanh's scale of 1: at least 10x the noise's magnitude, and every channel gains.
    assert abs(result.start_activation.mean()) < 0.05
    assert result.final_activation.mean() > 0.2
    assert result.final_activation.mean() - result.start_activation.mean() > 10 * abs(result.start_activation.mean())
    assert (gain > 0).all()
    assert result.images.shape == (16, 1, 28, 28)
    assert result.images.min() >= 0
    assert result.images.max() <= 1
    again = maximize_channels(loaded.model, "net.conv5", [3, 7], settings=MaximizeSettings(steps=10))
    twice = maximize_channels(loaded.model, "net.conv5", [3, 7], settings=MaximizeSettings(steps=10))
    np.testing.assert_array_equal(again.images, twice.images)  # seeded
    assert not loaded.model.training
    assert all(parameter.requires_grad for parameter in loaded.model.parameters())


def test_maximize_over_training_animates_the_stored_steps(run: Path, tmp_path: Path) -> None:
    args = [
        "maximize",
        str(run),
        "--layer",
        "net.conv3",
        "--channels",
        "0,5",
        "--steps",
        "10",
        "--over-training",
        "--frames",
        "3",
        "--out",
        str(tmp_path),
    ]
    assert inspect_main(args) == 0
    gif = Image.open(tmp_path / "maximize-net.conv3-over-training.gif")
    assert gif.n_frames == 3  # steps 0, ... and 20 out of the five recorded (0, 5, 10, 15, 20)
    sheet = Image.open(tmp_path / "maximize-net.conv3-over-training.png")
    assert sheet.height > 3 * 40
    assert (tmp_path / "maximize-net.conv3.png").is_file()


def test_maximize_over_training_falls_back_to_checkpoints_without_stored_weights(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "exp" / "version_0"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("activations.h5", "summary.json", "inspect"))
    saved = torch.load(next((copy / "checkpoints").glob("*.ckpt")), weights_only=True)
    for step in (5, 10):  # earlier checkpoints of the same run, as a ModelCheckpoint with save_top_k=-1 keeps
        torch.save({**saved, "global_step": step}, copy / "checkpoints" / f"epoch=0-step={step}.ckpt")
    args = ["maximize", str(copy), "--layer", "net.conv2", "--channels", "1", "--steps", "5", "--over-training"]
    assert inspect_main(args) == 0
    assert Image.open(copy / "inspect" / "maximize-net.conv2-over-training.gif").n_frames == 3
    (copy / "checkpoints" / "epoch=0-step=5.ckpt").unlink()
    (copy / "checkpoints" / "epoch=0-step=10.ckpt").unlink()
    capsys.readouterr()
    assert "--over-training needs the weights at several steps" in _refusal(args, capsys)  # one checkpoint, no store


# ------------------------------------------------------------------------------------------------ pictures


def test_filters_draws_every_conv_and_animates_the_stored_weights(run: Path) -> None:
    assert inspect_main(["filters", str(run)]) == 0
    out = run / "inspect"
    assert sorted(path.name for path in out.glob("filters-*.png")) == [
        f"filters-net.conv{k}.0.png" for k in range(1, 7)
    ]
    assert Image.open(out / "filters-net.conv3.0.gif").n_frames == 5  # steps 0, 5, 10, 15, 20


def test_featuremaps_from_an_index_and_from_an_image_file(run: Path, tmp_path: Path) -> None:
    assert inspect_main(["featuremaps", str(run), "--index", "0", "--out", str(tmp_path)]) == 0
    assert Image.open(tmp_path / "featuremaps-test0.png").height > 1000  # input + 14 stages
    digit = np.full((80, 60), 255, np.uint8)
    digit[15:65, 27:33] = 0  # a dark "1" on white paper: inverted to MNIST's white on black
    Image.fromarray(digit).save(tmp_path / "one.png")
    assert inspect_main(["featuremaps", str(run), "--image", str(tmp_path / "one.png"), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "featuremaps-one.png").is_file()
    assert inspect_main(["handcrafted", "--image", str(tmp_path / "one.png"), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "handcrafted-one.png").is_file()


# ------------------------------------------------------------------------------------------------ refusals


def _refusal(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert inspect_main(argv) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(error)
    return error[-1]


def test_bad_input_is_one_sentence(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere"
    assert _refusal(["filters", str(missing)], capsys) == (
        f"actrec inspect filters: {missing} does not exist; pass a run folder, e.g. runs/quickstart/version_0."
    )
    assert "no module matches layer 'net.conv9'" in _refusal(["maximize", str(run), "--layer", "net.conv9"], capsys)
    assert _refusal(["maximize", str(run), "--layer", "net.conv1", "--channels", "7"], capsys).endswith(
        "net.conv1 has channels 0 to 3; got '7'."
    )
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    assert f"{text} is not an image Pillow can read" in _refusal(
        ["featuremaps", str(run), "--image", str(text)], capsys
    )
    assert "--index 5000 is out of range: the test split has 500 images." in _refusal(
        ["featuremaps", str(run), "--index", "5000"], capsys
    )
    bare = tmp_path / "bare" / "version_0"
    bare.mkdir(parents=True)
    shutil.copy(run / "config.yaml", bare / "config.yaml")
    assert _refusal(["summary", str(bare)], capsys) == (
        f"actrec inspect summary: {bare} has no checkpoints in {bare / 'checkpoints'}; train it to the end of an epoch."
    )
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["model"] = "resnet18"
    (bare / "config.yaml").write_text(yaml.safe_dump(config))
    assert "was trained with model 'resnet18', which is not in actrec's zoo" in _refusal(["summary", str(bare)], capsys)
    assert "does not exist" in _refusal(["summary", str(run), "--checkpoint", "epoch=9-step=99.ckpt"], capsys)


@pytest.mark.slow  # a real `actrec inspect` process
def test_inspect_shows_plain_progress_lines_when_piped(run: Path, tmp_path: Path) -> None:
    """The one progress rule (actrec.console): piped into a log, a plain line per interval, no carriage returns."""
    import os
    import subprocess
    import sys

    command = [sys.executable, "-m", "actrec.cli", "inspect", "maximize", str(run), "--layer", "net.conv1"]
    command += ["--channels", "0", "--steps", "4", "--out", str(tmp_path)]
    env = {**os.environ, "ACTREC_PROGRESS_EVERY": "0"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert "\r" not in result.stderr
    assert "actrec inspect maximize: net.conv1: 1/4 steps (25%)" in "\n".join(lines)
    assert any(line.startswith("actrec inspect maximize: net.conv1: 4/4 steps (100%)") for line in lines)
