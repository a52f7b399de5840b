"""Where a run lives and what it holds: the one module that knows the run folder's layout.

A run is one folder, ``<runs_dir>/<experiment>/version_N/`` (TensorBoardLogger's layout)::

    activations.h5     the activation store (absent with record false; a resumed run keeps writing its
                       checkpoint's store, which summary.json then names)
    config.yaml        the fully resolved config
    summary.json       written at the start of training (state "running", with the writer's pid and host)
                       and rewritten at the end (finished, failed or interrupted, with the final metrics)
    checkpoints/       Lightning checkpoints, ``epoch=E-step=S.ckpt``
    events.out.tfevents.*, hparams.yaml   TensorBoard's

Nothing here imports torch, Lightning or h5py: listing a hundred runs reads only small text files.
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from typing import Any

from actrec.errors import UserError, terminal_safe
from actrec.names import STORE_FILENAME

__all__ = [
    "CHECKPOINT_DIRNAME",
    "CONFIG_FILENAME",
    "STORE_FILENAME",
    "SUMMARY_FILENAME",
    "VERSION_PREFIX",
    "Run",
    "RunError",
    "find_runs",
    "resolve_run",
    "store_for_resume",
]

CONFIG_FILENAME = "config.yaml"
SUMMARY_FILENAME = "summary.json"
CHECKPOINT_DIRNAME = "checkpoints"
HPARAMS_FILENAME = "hparams.yaml"
"""Lightning's TensorBoard logger writes the model's hyperparameters here."""
VERSION_PREFIX = "version_"

#: Files that mark a folder as a run folder, whoever wrote them.
_RUN_MARKERS = (SUMMARY_FILENAME, CONFIG_FILENAME, STORE_FILENAME, HPARAMS_FILENAME)
_STEP_IN_NAME = re.compile(r"step=(\d+)")


class RunError(UserError):
    """A run that cannot be found or read, in one sentence for the user."""


def _version_number(folder: Path) -> int | None:
    suffix = folder.name.removeprefix(VERSION_PREFIX)
    return int(suffix) if folder.name.startswith(VERSION_PREFIX) and suffix.isdigit() else None


def _is_run_folder(folder: Path) -> bool:
    return _version_number(folder) is not None or any((folder / marker).exists() for marker in _RUN_MARKERS)


class Run:
    """One run folder and the files in it.

    Args:
        path: the run folder.
        store_path: the store, when it is not ``path/activations.h5`` (a ``--recorder.path`` elsewhere).
        note: how an experiment folder was resolved to this run (which version, and why), for the user.
    """

    def __init__(
        self, path: str | os.PathLike, *, store_path: str | os.PathLike | None = None, note: str | None = None
    ):
        self.path = Path(path)
        self._store_path = Path(store_path) if store_path is not None else None
        self.note = note
        self._summary: dict[str, Any] | None = None
        self._summary_read = False

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Run) and self.path == other.path and self.store_path == other.store_path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def experiment(self) -> str:
        """The experiment's name: the parent folder's, for ``<runs_dir>/<experiment>/version_N``."""
        return self.path.parent.name if self.version is not None else self.path.name

    @property
    def version(self) -> int | None:
        """N of a ``version_N`` folder; ``None`` for a run folder named otherwise."""
        return _version_number(self.path)

    @property
    def name(self) -> str:
        """``experiment/version_N``, the run's name for people."""
        return f"{self.experiment}/{self.path.name}" if self.version is not None else self.path.name

    @property
    def store_path(self) -> Path:
        """The activation store: in the folder, else the one summary.json names (a resumed run's)."""
        if self._store_path is not None:
            return self._store_path
        own = self.path / STORE_FILENAME
        if own.exists():
            return own
        try:
            named = (self.summary() or {}).get("store_path")
        except RunError:
            named = None
        if isinstance(named, str) and named:
            named_path = Path(named)
            return named_path if named_path.is_absolute() else self.path / named_path
        return own

    def store_bytes(self) -> int | None:
        """The store's size, or ``None`` when it is missing or lies outside the run's experiment folder.

        A summary.json may name any file as its store; only one where a run of this experiment could have
        written it (this run's folder, or an earlier version's that a resume continued) is looked at.
        """
        experiment = self.path.parent if self.version is not None else self.path
        try:
            if not _inside(self.store_path, experiment.resolve()):
                return None
            return self.store_path.stat().st_size
        except OSError:
            return None

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILENAME

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY_FILENAME

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIRNAME

    def checkpoints(self) -> list[Path]:
        """The run's checkpoints, ordered by training step (``step=N`` in the name; else by time)."""
        if not self.checkpoint_dir.is_dir():
            return []
        found = [path for path in self.checkpoint_dir.iterdir() if path.suffix == ".ckpt" and path.is_file()]

        def order(path: Path) -> tuple[int, float]:
            match = _STEP_IN_NAME.search(path.name)
            return (int(match.group(1)) if match else -1, path.stat().st_mtime)

        return sorted(found, key=order)

    def last_checkpoint(self) -> Path | None:
        """The checkpoint of the latest step, or ``None``."""
        checkpoints = self.checkpoints()
        return checkpoints[-1] if checkpoints else None

    def config(self) -> dict[str, Any]:
        """The resolved config LightningCLI saved (``config.yaml``).

        Raises:
            RunError: the file is missing or not a YAML mapping.
        """
        import yaml  # only here: listing runs never parses YAML

        try:
            text = self.config_path.read_text()
        except OSError as error:
            raise RunError(f"{self.config_path} cannot be read ({error.strerror or error}).") from None
        try:
            config = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        except yaml.YAMLError:
            raise RunError(f"{self.config_path} is not valid YAML.") from None
        if not isinstance(config, dict):
            raise RunError(f"{self.config_path} does not hold a config mapping.")
        return config

    def summary(self) -> dict[str, Any] | None:
        """``summary.json`` as a dict, or ``None`` when it was never written (read once, then cached).

        Raises:
            RunError: the file exists but is not a JSON object.
        """
        if not self._summary_read:
            self._summary = read_summary(self.summary_path)
            self._summary_read = True
        return self._summary

    def status(self) -> str:
        """``finished``, ``failed``, ``interrupted``, ``running``, ``crashed`` or ``corrupt``.

        ``running`` is a summary in state "running" whose writer process is alive (on another host it
        cannot be checked and is trusted); ``crashed`` is a run whose writer is gone without a final
        summary, or a folder with no summary at all; ``corrupt`` is a summary that cannot be parsed.
        """
        try:
            summary = self.summary()
        except RunError:
            return "corrupt"
        if summary is None:
            return "crashed"
        state = summary.get("state")
        if state == "running":
            return "running" if writer_alive(summary) else "crashed"
        return state if state in ("finished", "failed", "interrupted") else "corrupt"


def read_summary(path: Path) -> dict[str, Any] | None:
    """Parse a ``summary.json``; ``None`` when it does not exist.

    Raises:
        RunError: it exists but cannot be read or is not a JSON object.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise RunError(f"{path} cannot be read ({getattr(error, 'strerror', None) or error}).") from None
    try:
        summary = json.loads(text)
    except json.JSONDecodeError:
        raise RunError(f"{path} is not valid JSON; the run's summary is damaged.") from None
    if not isinstance(summary, dict):
        raise RunError(f"{path} does not hold a JSON object; the run's summary is damaged.")
    return summary


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3 onwards of ``/proc/<pid>/stat`` (Linux): state, ppid, ...; ``None`` where unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count fields after its closing ")".
    return stat[stat.rfind(")") + 2 :].split()


def process_start_ticks(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), to tell a reused pid apart."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields is not None and len(fields) > 19 else None


def writer_alive(summary: dict[str, Any]) -> bool:
    """Whether the process that wrote a "running" summary still runs (trusted when on another host)."""
    host, pid = summary.get("hostname"), summary.get("pid")
    # Not a process id (0 and negatives name process groups; os.kill overflows past a C int): no writer.
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < 2**31:
        return False
    if host != socket.gethostname():
        return True  # another machine's process table cannot be read from here
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by someone else
    except OSError:
        return False
    fields = _proc_stat(pid)
    if fields is None:
        return True  # no /proc: the signal check is all there is
    if fields[0] in ("Z", "X"):
        return False  # killed, not yet reaped by its parent
    started = summary.get("process_start_ticks")
    if not isinstance(started, int) or len(fields) <= 19:
        return True  # an older summary without the start time: the pid is all there is
    return int(fields[19]) == started


def _describe(run: Run) -> str:
    """``model on dataset`` from the run's summary, or ``""`` when it has none."""
    try:
        summary = run.summary() or {}
    except RunError:
        return ""
    model, dataset = summary.get("model"), summary.get("dataset")
    return terminal_safe(f"{model} on {dataset}") if model and dataset else ""


def resolve_run(path: str | os.PathLike, *, need_store: bool = False) -> Run:
    """The run that ``path`` names.

    ``path`` may be a run folder, an activation store file (its folder is the run), or an experiment
    folder, which resolves to its newest ``version_N`` (holding a store when ``need_store``); then
    :attr:`Run.note` says which version was taken, out of how many, and which model it trained when the
    versions differ.

    Args:
        path: what the user typed.
        need_store: the caller reads the activation store: a run without one is an error, and an
            experiment folder resolves to its newest version that has one.

    Raises:
        RunError: nothing there, a folder that is not a run or an experiment, or no store when one is needed.
    """
    given = Path(path)
    if not given.exists():
        raise RunError(f"no activation store at {given}; pass a run folder, an experiment folder or an activations.h5.")
    if given.is_file():
        if given.name in (CONFIG_FILENAME, SUMMARY_FILENAME):  # a run's own file names the run
            return resolve_run(given.parent, need_store=need_store)
        return Run(given.parent, store_path=given)
    if _is_run_folder(given) and not _version_folders(given):
        run = Run(given)
        if need_store and not run.store_path.exists():
            raise RunError(f"{given} has no activation store (was it trained with record set to false?).")
        return run
    versions = _version_folders(given)
    if not versions:
        experiments = sorted(child.name for child in given.iterdir() if child.is_dir() and _version_folders(child))
        if experiments:
            shown = ", ".join(experiments[:5]) + (", ..." if len(experiments) > 5 else "")
            raise RunError(f"{given} holds experiments ({shown}), not a run; pass one of them or a run folder.")
        raise RunError(f"{given} is not a run folder, an experiment folder or an activation store.")
    candidates = [run for run in versions if run.store_path.exists()] if need_store else versions
    if not candidates:
        raise RunError(f"no version under {given} has an activation store (trained with record set to false?).")
    chosen = candidates[-1]
    skipped = [run.path.name for run in versions if _numbered(run) > _numbered(chosen)]
    note = f"{given}: taking {chosen.path.name}, the newest of {len(versions)} version(s)"
    if skipped:
        note += f" with a store ({', '.join(skipped)} {'has' if len(skipped) == 1 else 'have'} none)"
    what = _describe(chosen)
    if what:
        note += f", {what}"
        others = sorted({_describe(run) for run in versions if run is not chosen} - {"", what})
        if others:
            note += f"; other versions trained {', '.join(others)}"
    chosen.note = note + f"; pass {given / chosen.path.name} or another version_N to choose."
    return chosen


def store_for_resume(
    checkpoint: str | os.PathLike, stored: str | os.PathLike, explicit: str | os.PathLike | None
) -> Path:
    """The activation store a resume from ``checkpoint`` may continue: one that belongs to the checkpoint's run.

    A checkpoint records its store's absolute path, which still names the original after the run folder was
    copied: continuing it would trim and extend another run's store. So a checkpoint in a run's
    ``checkpoints/`` folder continues a store inside its own experiment folder: the one it names if it lies
    there (the run's own, or an earlier version's that a resumed run kept writing), else the store of the same
    name in the checkpoint's run folder or in the same version folder beside it (a copied run or experiment).
    A store outside is continued only when named explicitly (``explicit``, the recorder's ``path``). A
    checkpoint kept elsewhere (a ``ModelCheckpoint`` with its own ``dirpath``) has no run folder to check
    against, and continues the store it names.

    Args:
        checkpoint: the checkpoint being resumed.
        stored: the store path the checkpoint recorded (absolute; a relative one is taken as it is).
        explicit: the store path the user set for this run, or ``None``.

    Raises:
        RunError: the named store lies outside the checkpoint's experiment folder and no copy of it is there.
    """
    checkpoint = Path(checkpoint).absolute()
    stored = Path(stored)
    if checkpoint.parent.name != CHECKPOINT_DIRNAME:
        return stored.absolute()
    run_folder = checkpoint.parent.parent
    experiment = run_folder.parent.resolve()
    if _inside(stored, experiment):
        return stored.absolute()
    for candidate in (run_folder / stored.name, run_folder.parent / stored.parent.name / stored.name):
        if candidate.is_file():
            return candidate
    if explicit is not None and Path(explicit).expanduser().absolute() == stored.absolute():
        return stored.absolute()
    raise RunError(
        f"the checkpoint {checkpoint} belongs to the run in {run_folder}, but the activation store it continues, "
        f"{stored}, lies outside that run (a copied or moved run?); copy that store into {run_folder}, set the "
        "recorder's path to it to continue it anyway, or set the recorder's overwrite option to start a new store."
    )


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path`` (symbolic links resolved) lies under ``root`` (already resolved)."""
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):
        return False


def _version_folders(folder: Path) -> list[Run]:
    """The ``version_N`` run folders directly under ``folder``, by N."""
    try:
        children = list(os.scandir(folder))
    except OSError:
        return []
    runs = [Run(entry.path) for entry in children if entry.name.startswith(VERSION_PREFIX) and entry.is_dir()]
    return sorted((run for run in runs if run.version is not None), key=_numbered)


def _numbered(run: Run) -> int:
    """N of a ``version_N`` run, such as every run :func:`_version_folders` returns."""
    version = run.version
    assert version is not None, f"{run.path} is not a version_N folder"
    return version


def find_runs(root: str | os.PathLike) -> list[Run]:
    """Every run under ``root``: ``root`` itself if it is a run, else its versions, else its experiments' versions.

    An experiment folder without ``version_N`` folders contributes the runs a tracking logger named inside it
    (``<save_dir>/<project>/<run id>`` for W&B, ``mlruns/<experiment id>/<run id>`` for MLflow) when they hold
    a store or a summary. Ordered by experiment, then version (or run name).

    Raises:
        RunError: ``root`` does not exist or is not a folder.
    """
    root = Path(root)
    if not root.exists():
        raise RunError(f"no runs folder at {root}.")
    if not root.is_dir():
        raise RunError(f"{root} is a file, not a runs folder.")
    if _is_run_folder(root) and not _version_folders(root):
        return [Run(root)]
    own = _version_folders(root)
    if own:
        return own
    found: list[Run] = []
    for entry in sorted(os.scandir(root), key=lambda entry: entry.name):
        if not entry.is_dir():
            continue
        versions = _version_folders(Path(entry.path))
        if versions:
            found.extend(versions)
        elif _is_run_folder(Path(entry.path)):
            found.append(Run(entry.path))
        else:
            found.extend(_named_runs(Path(entry.path)))
    return found


def _named_runs(folder: Path) -> list[Run]:
    """Runs directly under ``folder`` that a tracking logger named (a W&B project's run ids, an MLflow
    experiment's run ids): folders holding a store or a summary, by name."""
    try:
        children = sorted((entry for entry in os.scandir(folder) if entry.is_dir()), key=lambda entry: entry.name)
    except OSError:
        return []
    marked = (STORE_FILENAME, SUMMARY_FILENAME)
    return [Run(entry.path) for entry in children if any(os.path.exists(os.path.join(entry.path, m)) for m in marked)]
