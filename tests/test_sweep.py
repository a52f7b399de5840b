"""``actrec sweep``: planning, the trials' state, and real sweeps of real ``actrec train`` processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from actrec.runs._summary import running_summary, sweep_trial_fields, write_summary
from actrec.runs.sweeps import (
    SWEEP_TRIAL_ENV,
    SweepError,
    SweepRecord,
    read_plan,
    resolve_sweep,
    trial_states,
    write_plan,
)
from actrec.runs.sweeps import plan_path as sweep_plan_path
from actrec.sweep import expand_trials, new_plan, parse_grid, parse_space, parse_value
from actrec.sweep.launch import progress_text

#: The fastest real training that still records, validates and tests (3 steps, one val and test batch).
TINY_TRIAL = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=3",
    "--trainer.limit_val_batches=1",
    "--trainer.limit_test_batches=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.enable_checkpointing=false",
    "--data.batch_size=32",
    "--recorder.every_n_steps=1",
]


def actrec(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(SWEEP_TRIAL_ENV, None)
    return subprocess.run(
        [sys.executable, "-m", "actrec.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


# --- the search space -------------------------------------------------------------------------------------------


def test_values_are_typed_like_the_command_line():
    assert parse_value("3") == 3
    assert parse_value("1e-3") == pytest.approx(0.001)
    assert parse_value("true") is True
    assert parse_value("lenet") == "lenet"
    assert parse_value("nan") == "nan"


def test_grid_crosses_keys_in_order_and_splits_lists_outside_brackets():
    grid = parse_grid(["model.lr=0.01,0.02", "recorder.layers=[net.conv1,net.conv2],[net.fc3]"])
    assert grid == {"model.lr": [0.01, 0.02], "recorder.layers": ["[net.conv1,net.conv2]", "[net.fc3]"]}
    trials = expand_trials(parse_grid(["model.lr=0.01,0.02"]), seeds=2)
    assert trials == [
        {"model.lr": 0.01, "seed_everything": 0},
        {"model.lr": 0.01, "seed_everything": 1},
        {"model.lr": 0.02, "seed_everything": 0},
        {"model.lr": 0.02, "seed_everything": 1},
    ]


def test_random_draws_are_in_range_and_repeat_with_the_sweep_id():
    space = parse_space(["model.lr=1e-4:1e-2:log", "data.batch_size=16:64"])
    first = expand_trials({}, space, random_trials=20, rng_seed="abc")
    assert first == expand_trials({}, space, random_trials=20, rng_seed="abc")
    assert first != expand_trials({}, space, random_trials=20, rng_seed="abd")
    assert all(1e-4 <= trial["model.lr"] <= 1e-2 for trial in first)
    assert all(isinstance(trial["data.batch_size"], int) and 16 <= trial["data.batch_size"] <= 64 for trial in first)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: parse_grid(["model.lr"]), r"--grid model.lr: write KEY=V1,V2"),
        (lambda: parse_grid(["model.lr=1,,2"]), r"an empty value"),
        (lambda: parse_grid(["model.lr=1", "model.lr=2"]), r"model.lr is given twice"),
        (lambda: parse_grid(["experiment=a,b"]), r"set by the sweep itself"),
        (lambda: parse_grid(["model lr=1,2"]), r"is not a config key"),
        (lambda: parse_space(["model.lr=1:0"]), r"LOW must be below HIGH"),
        (lambda: parse_space(["model.lr=0:1:log"]), r"a log range needs LOW above 0"),
        (lambda: parse_space(["model.lr=a:b"]), r"LOW and HIGH must be numbers"),
        (lambda: expand_trials({}), r"nothing to vary"),
        (lambda: expand_trials({}, parse_space(["model.lr=0:1"])), r"--space needs --random N"),
        (lambda: expand_trials({"seed_everything": [1, 2]}, seeds=2), r"--seeds varies seed_everything"),
    ],
)
def test_bad_space_is_one_sentence(make, message):
    with pytest.raises(SweepError, match=message):
        make()


def test_bad_flags_are_one_sentence_and_write_nothing(tmp_path):
    for args, message in [
        (["--grid", "model.lr"], "write KEY=V1,V2"),
        (["--grid", "model.lr=0.1,0.2", "--parallel", "0"], "--parallel must be at least 1"),
        (["--resume", "nope"], "no sweep named or with id nope under runs; there are no sweeps there"),
    ]:
        tmp_path.joinpath("runs").mkdir(exist_ok=True)
        result = actrec("sweep", *args, cwd=tmp_path, timeout=60)
        assert result.returncode == 1, result.stderr
        assert result.stderr.strip().startswith("actrec sweep: ")
        assert message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert not list(tmp_path.joinpath("runs").rglob("sweep-*.json"))


# --- the trials' state, joined from the plan and the run folders -----------------------------------------------------


def _plan(tmp_path: Path, overrides: list[dict]) -> SweepRecord:
    plan = new_plan(
        name="lr",
        experiment="lr",
        runs_dir=tmp_path / "runs",
        overrides=overrides,
        train_args=[],
        metric="test/acc",
        mode="max",
        executor={"kind": "local", "parallel": 1},
        sweep_id="20260101-000000-abcd",
    )
    experiment = tmp_path / "runs" / "lr"
    experiment.mkdir(parents=True)
    return SweepRecord(write_plan(sweep_plan_path(experiment, plan["id"]), plan), plan)


def _trial_run(record: SweepRecord, version: int, trial: int, state: str, acc: float | None = None, **extra) -> Path:
    folder = record.experiment_dir / f"version_{version}"
    folder.mkdir()
    marker = {"sweep": {"name": record.name, "id": record.sweep_id, "trial": trial}, "overrides": {}}
    summary = running_summary(**sweep_trial_fields({SWEEP_TRIAL_ENV: json.dumps(marker)}))
    summary.update(state=state, metrics={"test/acc": acc} if acc is not None else {}, **extra)
    write_summary(folder, summary)
    return folder


def test_trial_state_comes_from_its_newest_run_folder_else_the_plan(tmp_path):
    record = _plan(tmp_path, [{"model.lr": lr} for lr in (0.1, 0.2, 0.3, 0.4)])
    _trial_run(record, 0, 0, "finished", 0.5)
    _trial_run(record, 1, 1, "failed", error="boom.")
    _trial_run(record, 2, 1, "finished", 0.7)  # the resumed attempt
    dead = _trial_run(record, 3, 2, "running")
    summary = json.loads((dead / "summary.json").read_text())
    summary["pid"] = 2**22 + 17  # a process that does not exist
    write_summary(dead, summary)
    record.plan["trials"][3].update(state="failed", error="actrec train: lr must be positive.", started=time.time())
    write_plan(record.path, record.plan)

    states = trial_states(SweepRecord(record.path, read_plan(record.path)))
    assert [state.status for state in states] == ["finished", "finished", "crashed", "failed"]
    assert states[1].run.path.name == "version_2"
    assert states[3].run is None
    assert states[3].error == "actrec train: lr must be positive."
    assert "best test/acc 70.0% (model.lr=0.2)" in progress_text(record, states)
    assert "2/4 done, 0 running, 2 failed" in progress_text(record, states)


def test_a_sweep_is_found_by_id_prefix_or_newest_of_its_name(tmp_path):
    record = _plan(tmp_path, [{"model.lr": 0.1}])
    assert resolve_sweep(tmp_path / "runs", "lr").path == record.path
    assert resolve_sweep(tmp_path / "runs", "20260101").path == record.path
    assert resolve_sweep(tmp_path / "runs/lr", record.sweep_id).path == record.path
    message = r"no sweep named or with id other .*sweeps there: lr \(20260101-000000-abcd\)"
    with pytest.raises(SweepError, match=message):
        resolve_sweep(tmp_path / "runs", "other")
    record.path.write_text("{not json")
    with pytest.raises(SweepError, match="is not valid JSON"):
        read_plan(record.path)


def test_a_summary_outside_a_sweep_has_no_sweep_fields():
    assert sweep_trial_fields({}) == {}
    assert sweep_trial_fields({SWEEP_TRIAL_ENV: "{garbage"}) == {}
    assert sweep_trial_fields({SWEEP_TRIAL_ENV: json.dumps({"sweep": {"id": "x"}, "overrides": {"a": 1}})}) == {
        "sweep": {"id": "x"},
        "overrides": {"a": 1},
    }


# --- a real sweep ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_2x2_grid_runs_in_parallel_survives_a_failed_trial_and_resumes(tmp_path):
    """lr x seed on the local pool: a trial with a bad value fails alone; fixed in the plan, --resume finishes it."""
    made = actrec(
        "sweep",
        "--grid",
        "model.lr=0.01,0.02",
        "--grid",
        "seed_everything=0,1",
        "--experiment",
        "lr",
        "--parallel",
        "2",
        "--dry-run",
        *TINY_TRIAL,
        cwd=tmp_path,
    )
    assert made.returncode == 0, made.stderr
    (plan_file,) = (tmp_path / "runs/lr").glob("sweep-*.json")
    plan = json.loads(plan_file.read_text())
    assert [trial["overrides"] for trial in plan["trials"]] == [
        {"model.lr": lr, "seed_everything": seed} for lr in (0.01, 0.02) for seed in (0, 1)
    ]
    # A typo in one trial's value: a negative learning rate, which actrec train refuses.
    plan["trials"][3]["overrides"]["model.lr"] = -0.02
    plan_file.write_text(json.dumps(plan))

    started = time.monotonic()
    first = actrec("sweep", "--resume", plan["id"], "--parallel", "2", cwd=tmp_path)
    first_wall = time.monotonic() - started
    assert first.returncode == 1
    last_line = first.stderr.strip().splitlines()[-1]
    assert last_line.startswith("actrec sweep: 1 of 4 trial(s) did not finish (trial 3 failed)")
    assert f"actrec sweep --resume {plan['id']}" in last_line
    assert "4 trial(s): 3 finished, 1 failed" in first.stdout
    assert "trial 3 failed (model.lr=-0.02 seed_everything=1)" in first.stderr  # the progress notes

    folders = sorted((tmp_path / "runs/lr").glob("version_*"))
    assert len(folders) == 3  # the refused trial left no run folder behind
    for folder in folders:
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["state"] == "finished"
        assert summary["sweep"]["id"] == plan["id"]
        assert summary["sweep"]["name"] == "lr"
        trial = plan["trials"][summary["sweep"]["trial"]]
        assert summary["overrides"] == trial["overrides"]
        assert summary["seed"] == trial["overrides"]["seed_everything"]
        assert (folder / "activations.h5").is_file()
    logs = sorted((tmp_path / "runs/lr" / f"sweep-{plan['id']}-logs").glob("trial-*.log"))
    assert [log.name for log in logs] == [f"trial-00{index}.log" for index in range(4)]
    assert "lr" in logs[3].read_text()

    table = actrec("runs", "--sweep", "lr", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    header = table.stdout.splitlines()[1].split()
    assert header[:3] == ["trial", "model.lr", "seed_everything"]
    rows = {line.split()[0]: line.split() for line in table.stdout.splitlines()[2:6]}
    assert rows["3"][1:3] == ["-0.02", "1"]
    assert rows["3"][-1] == "failed"
    assert rows["1"][1:3] == ["0.01", "1"]
    assert rows["1"][-1] == "finished"
    assert "trial 3: actrec train:" in table.stdout
    assert table.stdout.strip().endswith("4 trial(s): 3 finished, 1 failed")

    finished_before = {folder.name: (folder / "summary.json").read_text() for folder in folders}
    plan = json.loads(plan_file.read_text())
    plan["trials"][3]["overrides"]["model.lr"] = 0.02  # fixed
    plan_file.write_text(json.dumps(plan))
    second = actrec("sweep", "--resume", "lr", "--parallel", "2", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "4 trial(s): 4 finished" in second.stdout

    folders = sorted((tmp_path / "runs/lr").glob("version_*"))
    assert len(folders) == 4
    for name, text in finished_before.items():  # the finished trials were not run again
        assert (tmp_path / "runs/lr" / name / "summary.json").read_text() == text
    resumed = json.loads((folders[-1] / "summary.json").read_text())
    assert resumed["sweep"]["trial"] == 3
    assert resumed["overrides"] == {"model.lr": 0.02, "seed_everything": 1}
    assert resumed["state"] == "finished"
    plan = json.loads(plan_file.read_text())
    assert [trial["attempts"] for trial in plan["trials"]] == [1, 1, 1, 2]

    as_json = json.loads(actrec("runs", "--sweep", plan["id"], "--json", cwd=tmp_path).stdout)
    assert [row["status"] for row in as_json["trials"]] == ["finished"] * 4
    assert sorted((row["model.lr"], row["seed_everything"]) for row in as_json["trials"]) == [
        (0.01, 0),
        (0.01, 1),
        (0.02, 0),
        (0.02, 1),
    ]
    print(f"\n2x2 sweep, --parallel 2, first pass (3 trials + 1 refused): {first_wall:.0f} s")
