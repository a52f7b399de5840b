"""Layer dynamics: known answers on constructed arrays, a real store streamed in blocks, the command."""

from __future__ import annotations

import math
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from actrec.dynamics import (
    DynamicsError,
    compute_dynamics,
    constant_channels,
    linear_cka,
    read_dynamics,
    relative_change,
    saturated_fraction,
    settling_step,
    write_dynamics,
)
from actrec.dynamics.cli import dynamics_main
from actrec.recording import Recording
from actrec.store import FORMAT_VERSION, LayerSpec, ProbeSet, StepRecord, StoreWriter

# Four probes, one unit: X and Y are already centred, X.Y = 0 and X.Z = 1 with |X|^2 = |Z|^2 = 2.
X = np.array([1.0, -1.0, 0.0, 0.0])
Y = np.array([0.0, 0.0, 1.0, -1.0])
Z = np.array([1.0, 0.0, -1.0, 0.0])


def test_relative_change_known_values() -> None:
    assert relative_change(np.ones((2, 3)), 2 * np.ones((2, 3))) == pytest.approx(0.5)
    assert relative_change(np.zeros((2, 3)), np.zeros((2, 3))) == 0.0
    assert relative_change(np.ones((2, 3)), np.zeros((2, 3))) == math.inf
    with pytest.raises(ValueError, match="cannot be compared"):
        relative_change(np.ones((2, 3)), np.ones((2, 4)))


def test_linear_cka_known_values() -> None:
    assert linear_cka(X[:, None], Y[:, None]) == pytest.approx(0.0)
    assert linear_cka(X[:, None], Z[:, None]) == pytest.approx(0.25)  # (X.Z)^2 / (|X|^2 |Z|^2)
    assert linear_cka(X[:, None], X[:, None]) == pytest.approx(1.0)


def test_linear_cka_is_invariant_to_rotation_scale_and_shift_and_matches_the_feature_space_formula() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(10, 3, 4, 4))
    rotation, _ = np.linalg.qr(rng.normal(size=(48, 48)))
    transformed = 5.0 * features.reshape(10, -1) @ rotation + 3.0
    assert linear_cka(features, transformed) == pytest.approx(1.0)
    other = rng.normal(size=(10, 7))
    # Kornblith et al.'s definition in feature space: ||Y^T X||^2 / (||X^T X|| ||Y^T Y||), centred.
    a = features.reshape(10, -1) - features.reshape(10, -1).mean(axis=0)
    b = other - other.mean(axis=0)
    expected = np.linalg.norm(b.T @ a) ** 2 / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b))
    assert linear_cka(features, other) == pytest.approx(expected)


def test_linear_cka_is_undefined_for_fewer_than_three_probes_and_for_constant_representations() -> None:
    rng = np.random.default_rng(1)
    assert math.isnan(linear_cka(rng.normal(size=(1, 5)), rng.normal(size=(1, 5))))
    # With two probes any two non-constant representations would give exactly 1: reported as NaN.
    assert math.isnan(linear_cka(rng.normal(size=(2, 5)), rng.normal(size=(2, 5))))
    assert math.isnan(linear_cka(np.full((6, 5), 0.3), rng.normal(size=(6, 5))))
    assert not math.isnan(linear_cka(rng.normal(size=(3, 5)), rng.normal(size=(3, 5))))
    with pytest.raises(ValueError, match="same probes"):
        linear_cka(np.ones((3, 2)), np.ones((4, 2)))


def test_saturated_fraction_by_scale_kind() -> None:
    tanh = np.array([[0.995, -0.999], [0.5, 0.99]])  # 0.99 itself is not above 0.99
    assert saturated_fraction(tanh, "tanh") == pytest.approx(0.5)
    assert saturated_fraction(np.array([[0.001, 0.5], [0.995, 0.02]]), "sigmoid") == pytest.approx(0.5)
    assert math.isnan(saturated_fraction(tanh, "symmetric"))


def test_constant_channels_of_maps_and_tokens() -> None:
    maps = np.zeros((3, 3, 2, 2))
    maps[:, 1] = 0.7  # the same for every probe: constant, though not zero
    maps[:, 2] = np.arange(3)[:, None, None]  # differs between probes
    assert constant_channels(maps).tolist() == [True, True, False]
    tokens = np.zeros((3, 4, 2))  # (P, T, D): channels are the D features
    tokens[:, :, 0] = np.arange(3)[:, None]
    assert constant_channels(tokens).tolist() == [False, True]


def test_settling_step() -> None:
    steps = np.array([0, 10, 20, 30, 40])
    assert settling_step(steps, np.array([0.5, 0.95, 0.8, 0.92, 1.0]), 0.9) == 30
    assert settling_step(steps, np.full(5, 0.95), 0.9) == 0
    assert settling_step(steps, np.array([0.95, np.nan, 0.95, 0.95, 1.0]), 0.9) == 20  # NaN is not settled
    assert settling_step(steps, np.full(5, np.nan), 0.9) is None
    with pytest.raises(ValueError, match="threshold"):
        settling_step(steps, np.ones(5), 1.5)


STEPS = [0, 5, 10, 15, 20, 25]
SWITCH = 3  # layer "b" takes its final form at row 3


def _record(row: int) -> StepRecord:
    """Layer "a": the final pattern scaled by (row + 1); layer "b": Y before SWITCH, X from it on.

    Channel 1 of both layers is always 0 (dead); "b" is a tanh layer whose channel 0 is +-1 or 0.
    """
    a = np.zeros((4, 2, 1, 2))
    a[:, 0] = (Z * (row + 1))[:, None, None]
    b = np.zeros((4, 2, 1, 2))
    b[:, 0] = (X if row >= SWITCH else Y)[:, None, None]
    return StepRecord(
        global_step=STEPS[row],
        epoch=row // 2,
        batch_loss=1.0,
        batch_acc=0.5,
        logits=np.zeros((4, 2), np.float32),
        activations={"a": a.astype(np.float32), "b": b.astype(np.float32)},
        wall_time=0.0,
    )


def _make_run(folder: Path, probes: int = 4) -> Path:
    folder.mkdir(parents=True)
    layers = [LayerSpec("a", (2, 1, 2), "Conv", "symmetric"), LayerSpec("b", (2, 1, 2), "Conv", "tanh")]
    images = np.zeros((probes, 1, 2, 2), np.float32)
    probe_set = ProbeSet(images, np.arange(probes) % 2, np.arange(probes), ["even", "odd"])
    with StoreWriter.create(
        folder / "activations.h5", run_id="dyn", config={}, probes=probe_set, layers=layers, num_classes=2,
        background=False, dtype="float32",
    ) as writer:  # fmt: skip
        for row in range(len(STEPS)):
            record = _record(row)
            if probes != 4:
                record.activations = {key: value[:probes] for key, value in record.activations.items()}
                record.logits = record.logits[:probes]
            writer.append(record)
    return folder


@pytest.mark.parametrize("rows_per_read", [2, 64])
def test_compute_dynamics_on_a_store_streams_blocks_and_gets_known_answers(tmp_path: Path, rows_per_read: int) -> None:
    run = _make_run(tmp_path / "run")
    with Recording.open(run) as recording:
        store = recording.store
        largest = []
        original = store.activations

        def counting(name: str, rows: slice | None = None) -> np.ndarray:
            block = original(name, rows)
            largest.append(len(block))
            return block

        store.activations = counting
        dynamics = compute_dynamics(recording, rows_per_read=rows_per_read)
    assert max(largest) <= rows_per_read  # never the whole store at once
    a, b = dynamics.layers["a"], dynamics.layers["b"]
    assert np.allclose(a.relative_change[1:], [1 / (row + 1) for row in range(1, 6)])
    assert math.isnan(a.relative_change[0])
    assert np.allclose(a.cka_to_final, 1.0)
    assert a.settling_step == 0
    assert np.allclose(b.cka_to_final, [0, 0, 0, 1, 1, 1])
    assert np.allclose(b.cka_to_first, [1, 1, 1, 0, 0, 0])
    assert b.settling_step == STEPS[SWITCH]
    assert a.always_constant == (1,)
    assert b.always_constant == (1,)
    assert b.constant_channels.tolist() == [1] * 6
    assert np.allclose(b.saturated_fraction, 0.25)  # 2 of 4 probes at +-1, in 1 of 2 channels
    assert np.isnan(a.saturated_fraction).all()  # symmetric layers have no saturation
    assert dynamics.settling_steps() == {"a": 0, "b": 15}
    assert dynamics.converges_bottom_up() is True


def test_write_and_read_back(tmp_path: Path) -> None:
    run = _make_run(tmp_path / "run")
    with Recording.open(run) as recording:
        dynamics = compute_dynamics(recording, ["b"], threshold=0.5)
    path = write_dynamics(dynamics, tmp_path / "dynamics.npz")
    back = read_dynamics(path)
    assert list(back.layers) == ["b"]
    assert back.threshold == 0.5
    assert np.array_equal(back.layers["b"].cka_to_final, dynamics.layers["b"].cka_to_final)
    assert back.layers["b"].settling_step == 15
    with pytest.raises(DynamicsError, match="no dynamics file"):
        read_dynamics(tmp_path / "missing.npz")


def test_command_writes_dynamics_scalars_and_png_beside_the_store(tmp_path: Path, capsys) -> None:
    run = _make_run(tmp_path / "run")
    assert dynamics_main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "converges bottom up (threshold 0.9)? yes" in out
    assert read_dynamics(run / "dynamics.npz").settling_steps() == {"a": 0, "b": 15}
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert Image.open(run / "renders" / "dynamics.png").size[0] > 500
    events = EventAccumulator(str(run / "dynamics"))
    events.Reload()
    scalars = events.Scalars("dynamics/cka_to_final/b")
    assert [event.step for event in scalars] == STEPS
    assert [round(event.value, 6) for event in scalars] == [0, 0, 0, 1, 1, 1]
    assert dynamics_main([str(run), "--quiet"]) == 0  # a rerun replaces the scalars, never doubles them
    assert len(list((run / "dynamics").iterdir())) == 1


def test_command_with_two_probes_says_cka_is_undefined(tmp_path: Path, capsys) -> None:
    run = _make_run(tmp_path / "run", probes=2)
    assert dynamics_main([str(run), "--no-tensorboard", "--no-png"]) == 0
    assert "CKA needs at least 3 probes; this run has 2" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["missing"], r"no activation store at .*missing"),
        (["RUN", "--layers", "nope"], r"unknown layer 'nope'; this store records: a, b\."),
        (["RUN", "--threshold", "0"], r"threshold must be in \(0, 1\], got 0\."),
        (["NEWER"], r"uses store format version \d+, newer than this actrec reads"),
        (["TRUNCATED"], r"cannot be read; it may be truncated or damaged"),
    ],
)
def test_command_errors_are_one_sentence(tmp_path: Path, capsys, arguments: list[str], message: str) -> None:
    run = _make_run(tmp_path / "run")
    newer = _make_run(tmp_path / "newer")
    with h5py.File(newer / "activations.h5", "r+") as file:
        file.attrs["format_version"] = FORMAT_VERSION + 1
    truncated = _make_run(tmp_path / "truncated") / "activations.h5"
    truncated.write_bytes(truncated.read_bytes()[:2000])
    paths = {"RUN": str(run), "missing": str(tmp_path / "missing"), "NEWER": str(newer), "TRUNCATED": str(truncated)}
    arguments = [paths.get(item, item) for item in arguments]
    assert dynamics_main(arguments) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("actrec dynamics: ")
    assert re.search(message, err), err
    assert not (run / "dynamics.npz").exists()


def test_one_guard_turns_sigterm_and_missing_objects_into_one_sentence(capsys) -> None:
    import os
    import signal

    from actrec.errors import run_guarded

    def terminated() -> int:
        os.kill(os.getpid(), signal.SIGTERM)  # a real signal, as `kill` sends it
        return 0

    def missing_object() -> int:
        raise KeyError("Unable to synchronously open object (object 'abs_max' doesn't exist)")

    def program_bug() -> int:
        raise KeyError("a bug, not the store")

    assert run_guarded("actrec dynamics", terminated) == 143  # 128 + SIGTERM, as a shell reports it
    assert capsys.readouterr().err == "actrec dynamics: terminated; files not yet finished were discarded.\n"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back afterwards
    assert run_guarded("actrec report", missing_object) == 1
    assert capsys.readouterr().err == (
        "actrec report: the store is incomplete or damaged "
        "(Unable to synchronously open object (object 'abs_max' doesn't exist)).\n"
    )
    with pytest.raises(KeyError, match="a bug"):
        run_guarded("actrec compare", program_bug)
