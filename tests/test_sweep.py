"""``actrec sweep``: planning, the trials' state, and real sweeps of real ``actrec train`` processes."""

from __future__ import annotations

import io
import json
import os
import signal
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


def test_more_than_16_trials_keep_the_16_best_by_the_metric_in_trial_order(tmp_path):
    from actrec.runs.sweeps import sweep_run_folders

    record = _plan(tmp_path, [{"model.lr": index / 100} for index in range(19)])
    accuracy = [0.5, 0.1, 0.9, 0.2, *[0.6] * 15]
    for index, acc in enumerate(accuracy):
        folder = _trial_run(record, index, index, "finished" if index != 18 else "failed", acc)
        (folder / "activations.h5").write_bytes(b"")
    _, kept, note = sweep_run_folders(tmp_path / "runs", "lr", limit=16)
    assert [state.index for state in kept] == [0, 2, *range(4, 18)]  # trial 18 failed; 1 and 3 scored lowest
    assert note == "sweep lr: showing 16 of 18 finished trials, the best by test/acc (max); left out: trials 1, 3."
    for folder in (tmp_path / "runs/lr").glob("version_*"):
        (folder / "activations.h5").unlink()
    with pytest.raises(SweepError, match=r"sweep lr \(20260101-000000-abcd\) has no finished trial"):
        sweep_run_folders(tmp_path / "runs", "lr")


def test_progress_is_one_line_rewritten_on_a_terminal_and_plain_lines_otherwise():
    import io

    from actrec.console import StatusLine

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal, log = Terminal(), io.StringIO()
    for stream in (terminal, log):
        progress = StatusLine(stream)
        progress.show("1/4 done")
        progress.show("1/4 done")  # unchanged: not written again
        progress.note("trial 0 finished")
        progress.show("2/4 done")
        progress.close()
    assert terminal.getvalue() == "\r\x1b[K1/4 done\r\x1b[Ktrial 0 finished\n1/4 done\r\x1b[K2/4 done\n"
    assert log.getvalue() == "1/4 done\ntrial 0 finished\n2/4 done\n"


def test_a_trial_is_actrec_train_with_its_overrides_last_and_a_share_of_the_cores(tmp_path):
    from actrec.sweep import LocalLauncher, trial_spec

    record = _plan(tmp_path, [{"model.lr": 0.01, "seed_everything": 1, "record": False}])
    record.plan["train_args"] = ["--config", "fashion", "--model.lr=9"]
    launcher = LocalLauncher(2)
    assert launcher.threads() == max(1, (os.cpu_count() or 1) // 2)
    spec = trial_spec(record, record.plan["trials"][0], launcher.threads())
    runs_dir = str((tmp_path / "runs").resolve())
    assert spec.command[1:] == (
        "-m", "actrec.cli", "train", "--config", "fashion", "--model.lr=9", "--experiment", "lr", "--runs_dir",
        runs_dir, "--model.lr=0.01", "--seed_everything=1", "--record=false",
    )  # fmt: skip
    assert spec.env["OMP_NUM_THREADS"] == str(launcher.threads())
    assert json.loads(spec.env[SWEEP_TRIAL_ENV]) == {
        "sweep": {"name": "lr", "id": record.sweep_id, "trial": 0},
        "overrides": {"model.lr": 0.01, "seed_everything": 1, "record": False},
    }
    assert spec.log == str(record.experiment_dir / f"sweep-{record.sweep_id}-logs/trial-000.log")


def test_a_varied_config_comes_before_the_flags_it_must_not_override(tmp_path):
    from actrec.sweep import trial_spec

    record = _plan(tmp_path, [{"config": "fashion", "model.lr": 0.1}])
    record.plan["train_args"] = ["--trainer.max_steps=3"]
    command = trial_spec(record, record.plan["trials"][0], None).command
    assert command[4:6] == ("--config=fashion", "--trainer.max_steps=3")
    assert command[-1] == "--model.lr=0.1"


def test_a_sweep_another_live_process_drives_is_refused(tmp_path):
    import socket

    from actrec.runs._layout import process_start_ticks
    from actrec.sweep import LocalLauncher, run_sweep

    record = _plan(tmp_path, [{"model.lr": 0.1}])
    parent = os.getppid()
    record.plan["driver"] = {
        "pid": parent,
        "hostname": socket.gethostname(),
        "process_start_ticks": process_start_ticks(parent),
    }
    with pytest.raises(SweepError, match=rf"is being run by process {parent} on .*; wait for it to end or stop it"):
        run_sweep(record, LocalLauncher(1))
    assert read_plan(record.path)["trials"][0]["state"] == "pending"


class _ScriptLauncher:
    """The real local pool, each trial a real process running ``script`` instead of ``actrec train``."""

    def __init__(self, script: str, fail_on_poll: BaseException | None = None) -> None:
        from actrec.sweep import LocalLauncher

        self.pool = LocalLauncher(2)
        self.slots = 2
        self.script = script
        self.fail_on_poll = fail_on_poll
        self.processes: list[subprocess.Popen] = []

    def threads(self):
        return 1

    def start(self, specs):
        import dataclasses

        specs = [dataclasses.replace(spec, command=(sys.executable, "-c", self.script)) for spec in specs]
        self.processes += self.pool.start(specs)
        return self.processes[-len(specs) :]

    def poll(self, handle):
        if self.fail_on_poll is not None and all(self._ready(process) for process in self.processes):
            raise self.fail_on_poll
        return self.pool.poll(handle)

    @staticmethod
    def _ready(process) -> bool:
        return Path(f"{process.pid}.ready").exists()

    def stop(self, handles):
        self.pool.stop(handles)

    def close(self):
        self.pool.close()


#: A trial that says it started (``<pid>.ready``) and then runs until stopped.
_LONG_TRIAL = "import os, time; open(f'{os.getpid()}.ready', 'w').close(); time.sleep(120)"


@pytest.mark.parametrize(
    "error",
    [OSError(28, "No space left on device"), SweepError("the executor lost its trials."), RuntimeError("a bug")],
    ids=["disk-full", "sweep-error", "bug"],
)
def test_any_error_in_the_driver_stops_the_running_trials_and_marks_them(tmp_path, monkeypatch, error):
    from actrec.sweep import run_sweep

    monkeypatch.chdir(tmp_path)
    record = _plan(tmp_path, [{"model.lr": lr} for lr in (0.1, 0.2, 0.3)])
    launcher = _ScriptLauncher(_LONG_TRIAL, fail_on_poll=error)
    try:
        with pytest.raises(type(error)):
            run_sweep(record, launcher, stream=io.StringIO())
        assert len(launcher.processes) == 2  # two slots: both started, the third waited
        assert [process.poll() for process in launcher.processes] != [None, None]
        for process in launcher.processes:
            with pytest.raises(ProcessLookupError):
                os.kill(process.pid, 0)  # stopped and reaped, not left running in its own session
    finally:
        for process in launcher.processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    plan = read_plan(record.path)
    assert [trial["state"] for trial in plan["trials"]] == ["interrupted", "interrupted", "pending"]
    assert type(error).__name__ in plan["trials"][0]["error"]
    assert plan["driver"]["pid"] is None


def test_a_second_driver_of_the_same_sweep_is_refused_while_the_first_runs(tmp_path, monkeypatch):
    import threading

    from actrec.sweep import run_sweep

    monkeypatch.chdir(tmp_path)
    record = _plan(tmp_path, [{"model.lr": 0.1}])
    first_in, second_done = threading.Event(), threading.Event()
    outcome = {}

    def first_on_start(_record):
        first_in.set()
        second_done.wait(60)  # the first driver holds the sweep while the second one tries

    def first():
        outcome["first"] = run_sweep(record, _ScriptLauncher("pass"), stream=io.StringIO(), on_start=first_on_start)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert first_in.wait(60)
        # The same plan read again, as a second ``actrec sweep --resume`` would (here in the same process).
        again = SweepRecord(record.path, read_plan(record.path))
        second = _ScriptLauncher("pass")
        with pytest.raises(SweepError, match=r"is being run by another process \(it holds .*sweep-.*\.json\.lock\)"):
            run_sweep(again, second, stream=io.StringIO())
        assert second.processes == []
    finally:
        second_done.set()
        thread.join(60)
    assert [state.status for state in outcome["first"].states] == ["finished"]
    # Once the first one ended, the sweep can be driven again.
    assert (
        run_sweep(SweepRecord(record.path, read_plan(record.path)), _ScriptLauncher("pass"), stream=io.StringIO()).ran
        == []
    )


def test_actrec_sweep_resume_refuses_in_one_sentence_while_another_driver_holds_the_sweep(tmp_path):
    record = _plan(tmp_path, [{"model.lr": -0.1}])  # were it run anyway, actrec train refuses it at once
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'w'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('locked', flush=True); time.sleep(60)",
            f"{record.path}.lock",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = actrec("sweep", "--resume", record.sweep_id, cwd=tmp_path, timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()
    assert "is being run by another process" in line
    assert "Traceback" not in result.stderr
    assert read_plan(record.path)["trials"][0]["state"] == "pending"


def test_the_driver_gives_each_trial_its_own_version_folder(tmp_path):
    from actrec.runs import sweep_trial_version
    from actrec.sweep.launch import next_version

    experiment = tmp_path / "lr"
    assert next_version(experiment, set()) == 0
    for name in ("version_0", "version_4", "version_x", "notes"):
        (experiment / name).mkdir(parents=True)
    assert next_version(experiment, set()) == 5
    assert next_version(experiment, {5, 6}) == 7  # given to trials whose folders do not exist yet
    marker = {"sweep": {"id": "x"}, "overrides": {}, "version": 7}
    assert sweep_trial_version({SWEEP_TRIAL_ENV: json.dumps(marker)}) == 7
    assert sweep_trial_version({SWEEP_TRIAL_ENV: json.dumps({**marker, "version": "7"})}) is None
    assert sweep_trial_version({}) is None


def test_a_trial_is_told_the_version_folder_the_driver_gave_it(tmp_path):
    from actrec.runs import sweep_trial_version
    from actrec.sweep import trial_spec

    record = _plan(tmp_path, [{"model.lr": 0.1}])
    assert sweep_trial_version(trial_spec(record, record.plan["trials"][0], None, 7).env) == 7
    assert sweep_trial_version(trial_spec(record, record.plan["trials"][0], None).env) is None


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


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory):
    """lr x seed on the local pool, 2 at once: one trial given a bad value fails alone; fixed in the plan, resumed.

    Returns what each stage printed and left on disk; the tests below assert on it and read the sweep.
    """
    root = tmp_path_factory.mktemp("grid")
    stages = {"root": root}
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
        cwd=root,
    )
    assert made.returncode == 0, made.stderr
    (plan_file,) = (root / "runs/lr").glob("sweep-*.json")
    stages["plan_file"] = plan_file
    stages["planned"] = json.loads(plan_file.read_text())
    # A typo in one trial's value: a negative learning rate, which actrec train refuses.
    plan = json.loads(plan_file.read_text())
    plan["trials"][3]["overrides"]["model.lr"] = -0.02
    plan_file.write_text(json.dumps(plan))

    started = time.monotonic()
    stages["first"] = actrec("sweep", "--resume", plan["id"], "--parallel", "2", cwd=root)
    stages["first_wall"] = time.monotonic() - started
    stages["first_folders"] = {
        folder.name: (folder / "summary.json").read_text() for folder in sorted((root / "runs/lr").glob("version_*"))
    }
    stages["first_table"] = actrec("runs", "--sweep", "lr", cwd=root)

    plan = json.loads(plan_file.read_text())
    plan["trials"][3]["overrides"]["model.lr"] = 0.02  # fixed
    plan_file.write_text(json.dumps(plan))
    stages["second"] = actrec("sweep", "--resume", "lr", "--parallel", "2", cwd=root)
    stages["final_plan"] = json.loads(plan_file.read_text())
    return stages


@pytest.mark.slow
def test_a_2x2_grid_runs_in_parallel_survives_a_failed_trial_and_resumes(grid_sweep):
    root, plan = grid_sweep["root"], grid_sweep["planned"]
    assert [trial["overrides"] for trial in plan["trials"]] == [
        {"model.lr": lr, "seed_everything": seed} for lr in (0.01, 0.02) for seed in (0, 1)
    ]

    first = grid_sweep["first"]
    assert first.returncode == 1
    last_line = first.stderr.strip().splitlines()[-1]
    assert last_line.startswith("actrec sweep: 1 of 4 trial(s) did not finish (trial 3 failed)")
    assert f"actrec sweep --resume {plan['id']}" in last_line
    assert "4 trial(s): 3 finished, 1 failed" in first.stdout
    assert "trial 3 failed (model.lr=-0.02 seed_everything=1)" in first.stderr  # the progress notes
    folders = grid_sweep["first_folders"]
    assert len(folders) == 3  # the refused trial left no run folder behind
    for name, text in folders.items():
        summary = json.loads(text)
        assert summary["state"] == "finished"
        assert summary["sweep"]["id"] == plan["id"]
        assert summary["sweep"]["name"] == "lr"
        trial = plan["trials"][summary["sweep"]["trial"]]
        assert summary["overrides"] == trial["overrides"]
        assert summary["seed"] == trial["overrides"]["seed_everything"]
        assert name == f"version_{summary['sweep']['trial']}"  # the driver numbered them, no race
        assert (root / "runs/lr" / name / "activations.h5").is_file()
    logs = sorted((root / "runs/lr" / f"sweep-{plan['id']}-logs").glob("trial-*.log"))
    assert [log.name for log in logs] == [f"trial-00{index}.log" for index in range(4)]
    assert "lr" in logs[3].read_text()

    table = grid_sweep["first_table"]
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

    second = grid_sweep["second"]
    assert second.returncode == 0, second.stderr
    assert "4 trial(s): 4 finished" in second.stdout
    now = sorted((root / "runs/lr").glob("version_*"))
    assert len(now) == 4
    for name, text in folders.items():  # the finished trials were not run again
        assert (root / "runs/lr" / name / "summary.json").read_text() == text
    resumed = json.loads((now[-1] / "summary.json").read_text())
    assert resumed["sweep"]["trial"] == 3
    assert resumed["overrides"] == {"model.lr": 0.02, "seed_everything": 1}
    assert resumed["state"] == "finished"
    assert [trial["attempts"] for trial in grid_sweep["final_plan"]["trials"]] == [1, 1, 1, 2]
    print(f"\n2x2 sweep, --parallel 2, first pass (3 trials + 1 refused): {grid_sweep['first_wall']:.0f} s")


@pytest.mark.slow
def test_runs_sweep_lists_every_trial_sorted_by_a_metric(grid_sweep):
    root, plan = grid_sweep["root"], grid_sweep["final_plan"]
    as_json = json.loads(actrec("runs", "--sweep", plan["id"], "--json", cwd=root).stdout)
    assert [row["status"] for row in as_json["trials"]] == ["finished"] * 4
    assert [(row["model.lr"], row["seed_everything"]) for row in as_json["trials"]] == [
        (0.01, 0),
        (0.01, 1),
        (0.02, 0),
        (0.02, 1),
    ]
    by_test = actrec("runs", "--sweep", "lr", "--sort", "test", "--reverse", cwd=root)
    assert by_test.returncode == 0, by_test.stderr
    shown = [int(line.split()[0]) for line in by_test.stdout.splitlines()[2:6]]
    accuracy = {row["trial"]: row["test_acc"] for row in as_json["trials"]}
    assert [accuracy[trial] for trial in shown] == sorted(accuracy.values(), reverse=True)
    unknown = actrec("runs", "--sweep", "nope", cwd=root)
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == (
        f"actrec runs: no sweep named or with id nope under runs; sweeps there: lr ({plan['id']})."
    )


@pytest.mark.slow
def test_compare_sweep_draws_one_panel_per_trial_named_by_its_values(grid_sweep):
    from PIL import Image

    root = grid_sweep["root"]
    result = actrec("compare", "--sweep", "lr", "--layer", "net.conv3", "--out", "cmp", cwd=root)
    assert result.returncode == 0, result.stderr
    assert "lr/version_0: trial 0, model.lr=0.01 seed_everything=0" in result.stdout
    assert "compared lr=0.01 seed=0 (version_0), lr=0.01 seed=1 (version_1)" in result.stdout
    with Image.open(root / "cmp/compare-net.conv3.png") as gif:
        assert gif.n_frames == 4  # steps 0, 1, 2, 3
        width = gif.size[0]
    single = actrec(
        "compare", "runs/lr/version_0", "runs/lr/version_1", "--layer", "net.conv3", "--out", "two", cwd=root
    )
    assert single.returncode == 0, single.stderr
    with Image.open(root / "two/compare-net.conv3.png") as gif:
        assert width > 1.8 * gif.size[0]  # four panels against two


@pytest.mark.slow
def test_dynamics_sweep_tabulates_settling_steps_against_the_varied_keys(grid_sweep):
    root = grid_sweep["root"]
    result = actrec("dynamics", "--sweep", "lr", cwd=root)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].split()[:9] == [
        "trial",
        "model.lr",
        "seed_everything",
        "conv1",
        "conv2",
        "conv3",
        "conv4",
        "conv5",
        "conv6",
    ]
    trials = [line.split() for line in lines[2:6]]
    assert [row[:3] for row in trials] == [
        ["0", "0.01", "0"],
        ["1", "0.01", "1"],
        ["2", "0.02", "0"],
        ["3", "0.02", "1"],
    ]
    for row in trials:  # a settling step is a recorded step (0 ... 3) or never
        assert all(cell in ("0", "1", "2", "3", "never") for cell in row[3:9])
    assert "median settling step over seeds, by model.lr:" in result.stdout
    assert not list((root / "runs/lr").glob("version_*/dynamics.npz"))  # reading a sweep writes nothing


@pytest.mark.slow
def test_report_compare_accepts_a_sweep(grid_sweep):
    root = grid_sweep["root"]
    result = actrec("report", "runs/lr/version_0", "--compare", "sweep:lr", "--out", "report.html", cwd=root)
    assert result.returncode == 0, result.stderr
    page = (root / "report.html").read_text()
    for version in (1, 2, 3):
        assert f"lr/version_{version}" in page


@pytest.mark.slow
def test_ctrl_c_stops_the_running_trial_and_marks_it_interrupted(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "actrec.cli", "sweep", "--grid", "model.lr=0.01,0.02", "--experiment", "c"]
    long_trial = [arg for arg in TINY_TRIAL if "limit_train_batches" not in arg and "max_epochs" not in arg]
    driver = subprocess.Popen(
        [*command, *long_trial, "--trainer.max_epochs=50"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    summary_path = tmp_path / "runs/c/version_0/summary.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and driver.poll() is None:
        if summary_path.is_file() and json.loads(summary_path.read_text()).get("global_step", 0) == 0:
            break  # the first trial is training
        time.sleep(0.5)
    assert summary_path.is_file(), driver.communicate(timeout=60)
    time.sleep(3)
    driver.send_signal(signal.SIGINT)
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130, stderr
    summary = json.loads(summary_path.read_text())
    assert summary["state"] == "interrupted"
    with pytest.raises(ProcessLookupError):
        os.kill(summary["pid"], 0)  # the trial's process is gone
    (plan_file,) = (tmp_path / "runs/c").glob("sweep-*.json")
    plan = json.loads(plan_file.read_text())
    assert [trial["state"] for trial in plan["trials"]] == ["interrupted", "pending"]
    table = actrec("runs", "--sweep", "c", cwd=tmp_path)
    assert table.stdout.strip().endswith("2 trial(s): 1 interrupted, 1 pending")


# --- the cluster executors --------------------------------------------------------------------------------------


def _two_by_two(root: Path, *executor: str) -> dict:
    result = actrec(
        "sweep",
        "--grid",
        "model.lr=0.01,0.02",
        "--seeds",
        "2",
        "--experiment",
        "x",
        *executor,
        *TINY_TRIAL,
        cwd=root,
    )
    assert result.returncode == 0, result.stderr
    assert "4 trial(s): 4 finished" in result.stdout
    summaries = [json.loads((folder / "summary.json").read_text()) for folder in (root / "runs/x").glob("version_*")]
    assert sorted(summary["sweep"]["trial"] for summary in summaries) == [0, 1, 2, 3]
    assert all(summary["state"] == "finished" for summary in summaries)
    return {summary["sweep"]["trial"]: summary for summary in summaries}


@pytest.mark.slow
def test_the_sweep_runs_on_a_local_ray_instance(tmp_path):
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")
    summaries = _two_by_two(tmp_path, "--executor", "ray", "--ray-num-cpus", "2", "--cpus-per-trial", "1")
    assert summaries[3]["overrides"] == {"model.lr": 0.02, "seed_everything": 1}


@pytest.mark.slow
def test_the_sweep_runs_through_submitits_local_executor(tmp_path):
    pytest.importorskip("submitit", reason="the slurm extra is not installed (pip install -e '.[slurm]')")
    summaries = _two_by_two(
        tmp_path, "--executor", "slurm", "--slurm-cluster", "local", "--slurm-array", "--parallel", "2"
    )
    assert summaries[2]["overrides"] == {"model.lr": 0.02, "seed_everything": 0}
    assert list((tmp_path / "runs/x").glob("sweep-*-slurm/*"))  # submitit's own job files


@pytest.mark.parametrize(("executor", "extra", "module"), [("ray", "ray", "ray"), ("slurm", "slurm", "submitit")])
def test_an_executor_whose_extra_is_missing_is_one_sentence(tmp_path, executor, extra, module):
    hidden = tmp_path / "hidden" / module
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'hidden'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run(
        [sys.executable, "-m", "actrec.cli", "sweep", "--executor", executor, "--grid", "model.lr=0.1,0.2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"actrec sweep: --executor {executor} needs {'Ray' if module == 'ray' else 'submitit'}, which is not "
        f"installed: pip install -e '.[{extra}]'."
    )
    assert not (tmp_path / "runs").exists()  # nothing planned, nothing made


def test_a_runs_folder_some_node_cannot_see_is_named():
    from actrec.sweep.executors import unshared_nodes

    assert unshared_nodes({"10.0.0.1": True, "10.0.0.2": True}) == []
    assert unshared_nodes({"10.0.0.2": False, "10.0.0.1": True, "10.0.0.3": False}) == ["10.0.0.2", "10.0.0.3"]


@pytest.mark.slow
def test_a_two_node_ray_cluster_has_every_node_look_for_the_runs_folder(tmp_path, monkeypatch):
    """Two real raylets on this machine: both must be asked, and both see the folder (one filesystem).

    That a node cannot see it is simulated by turning one real answer into False: the refusal then names it.
    """
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")
    from ray.cluster_utils import Cluster

    from actrec.sweep import executors

    record = _plan(tmp_path, [{"model.lr": 0.1}])
    answers = []
    real = executors.unshared_nodes

    def record_answers(visible):
        answers.append(dict(visible))
        return real(visible if len(answers) == 1 else {**visible, next(iter(visible)): False})

    monkeypatch.setattr(executors, "unshared_nodes", record_answers)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        executors.RayLauncher(record, {"address": cluster.address}).close()
        assert len(answers) == 1
        assert len(answers[0]) == 2
        assert all(answers[0].values())
        with pytest.raises(
            SweepError, match=r"is not shared: 1 of 2 Ray nodes \(.+\) cannot see it; pass a --runs_dir"
        ):
            executors.RayLauncher(record, {"address": cluster.address})
    finally:
        cluster.shutdown()
    assert not list(record.experiment_dir.glob(".shared-check-*"))  # the marker is removed either way


_IGNORING_DRIVER = """
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)  # what a background job of a script (`actrec sweep ... &`) starts with
from actrec.sweep.launch import LocalLauncher, TrialSpec

trial = "import os, time; open(f'{os.getpid()}.ready', 'w').close(); time.sleep(120)"
launcher = LocalLauncher(1)
(process,) = launcher.start([TrialSpec(0, (sys.executable, "-c", trial), {}, "trial.log", os.getcwd())])
while not os.path.exists(f"{process.pid}.ready"):
    time.sleep(0.05)
began = time.monotonic()
launcher.stop([process])
print(process.returncode, round(time.monotonic() - began, 1))
"""


def test_trials_of_a_driver_that_ignores_ctrl_c_still_stop_at_its_signal(tmp_path):
    # Trials inherited the ignored SIGINT: the driver's "stop as Ctrl-C would" went unheard for the 30 s grace.
    done = subprocess.run(
        [sys.executable, "-c", _IGNORING_DRIVER], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True
    )
    code, seconds = done.stdout.split()
    assert int(code) == -signal.SIGINT  # stopped by the SIGINT itself, not the kill after the grace
    assert float(seconds) < 10
