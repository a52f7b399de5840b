"""``actrec train``: LightningCLI over :class:`ImageClassifier` and :class:`ImageDataModule`.

Every ``__init__`` argument of the model and the data module is a flag (``--model.lr 0.003``) and a YAML key
(``model: {lr: 0.003}``). There are no ``fit``/``test`` subcommands: one call fits, then tests the final weights,
so a run always ends with its test accuracy. With no ``--config`` the defaults are the quickstart run
(``configs/quickstart.yaml`` spells them out).

A run is written to ``<runs_dir>/<experiment>/version_N/`` (TensorBoardLogger's layout, owned by
:mod:`actrec.runs`): TensorBoard events, the resolved ``config.yaml``, ``checkpoints/`` and ``summary.json``
(written as "running" when training starts and rewritten with the outcome and final metrics at the end).
``--ckpt_path`` resumes training from a checkpoint into a new version folder. A run refused before its first
step (a bad flag found at setup, an existing store, a missing dataset) leaves no version folder behind.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

import h5py
import pytorch_lightning as pl
import torch
from jsonargparse import Namespace
from pytorch_lightning.callbacks import ModelSummary, ProgressBar
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities.exceptions import MisconfigurationException, SIGTERMException
from typing_extensions import override

from actrec.callbacks import ActivationRecorder, CompactModelSummary, LogLineProgress
from actrec.configs import config_names, config_path
from actrec.console import DEFAULT_EVERY_S
from actrec.errors import EXIT_INTERRUPTED, EXIT_TERMINATED, UserError, terminal_safe
from actrec.runs import (
    CHECKPOINT_DIRNAME,
    CONFIG_FILENAME,
    HPARAMS_FILENAME,
    SUMMARY_FILENAME,
    Run,
    config_digest,
    finished_summary,
    running_summary,
    scalar_metrics,
    sweep_trial_version,
    write_summary,
)
from actrec.store import StoreError, StoreReader
from actrec.trainer.data import ImageDataModule
from actrec.trainer.help import short_help
from actrec.trainer.module import ImageClassifier
from actrec.trainer.notices import quiet_lightning_notices

__all__ = ["CALLBACK_GROUPS", "QUICKSTART_DEFAULTS", "TrainCLI", "train_main"]

#: Callbacks configured from their own top-level YAML section, ``key -> class``. Each becomes a group of flags
#: (``--<key>.<argument>``) and is added to the trainer's callbacks, e.g. ``{"recorder": ActivationRecorder}``.
CALLBACK_GROUPS: dict[str, type[pl.Callback]] = {"recorder": ActivationRecorder}

#: Parser defaults (dotted keys) that differ from the classes' own: together they are the quickstart run, so
#: ``actrec train`` with no config does what ``configs/quickstart.yaml`` says.
QUICKSTART_DEFAULTS: dict[str, Any] = {
    "trainer.max_epochs": 30,
    "recorder.every_n_steps": 5,  # 30 epochs are ~1,900 steps; every 5th keeps the store and GIFs small
    "recorder.compression": "gzip",  # byte-shuffled gzip-1 in the writer process, 8 steps a chunk: 0.50x the bytes
    "trainer.log_every_n_steps": 1,  # train loss and accuracy reach TensorBoard at every step
    "model.lr": 2e-3,
}

# Depth 2 lists the zoo model's named blocks (net.conv1 ... net.fc3) with their output shapes.
_SUMMARY_MAX_DEPTH = 2


class _UsageError(UserError):
    """A mistake on the command line that deserves one sentence rather than a traceback."""


#: Errors that are the user's to fix, reported in one sentence: every actrec refusal (a missing dataset, a bad
#: store, a run folder or recorder problem) and Lightning's misconfiguration. Raised before the first training
#: step they are refusals: the run never started, and the version folder made for it is removed again.
_USER_ERRORS = (UserError, MisconfigurationException)

#: What a refused run may have put into its new version folder; anything else keeps the folder.
_REFUSED_RUN_FILES = (CONFIG_FILENAME, SUMMARY_FILENAME, HPARAMS_FILENAME)


class TrainCLI(LightningCLI):
    """LightningCLI that parses and instantiates a training run; :meth:`fit_and_test` then runs it.

    Adds three top-level keys to LightningCLI's ``trainer``/``model``/``data``/``seed_everything``:
    ``experiment`` and ``runs_dir`` place the run at ``<runs_dir>/<experiment>/version_N/``, and ``ckpt_path``
    resumes from a checkpoint. The optimizer is the model's own (Adam at ``model.lr``), so there is no
    ``--optimizer`` group to disagree with it.

    Args:
        args: Command-line arguments, e.g. ``["--config", "configs/quickstart.yaml"]``.
        **kwargs: Passed to :class:`~pytorch_lightning.cli.LightningCLI`, overriding this CLI's choices.
    """

    def __init__(self, args: list[str], **kwargs: Any) -> None:
        options: dict[str, Any] = {
            "model_class": ImageClassifier,
            "datamodule_class": ImageDataModule,
            "seed_everything_default": 0,
            "parser_kwargs": {"prog": "actrec train", "description": "Train a network from the actrec model zoo."},
            "auto_configure_optimizers": False,
            "save_config_kwargs": {"config_filename": CONFIG_FILENAME},  # the name actrec.runs reads
            "run": False,
            "args": args,
        }
        #: The run's version folder once :meth:`fit_and_test` starts; ``None`` without a logger or once refused.
        self.run_folder: Path | None = None
        self._fit_metrics: dict[str, float] = {}
        self._resumed_step = 0
        super().__init__(**{**options, **kwargs})

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--experiment", type=str, default="quickstart", help="Run name: runs go to <runs_dir>/<experiment>/."
        )
        parser.add_argument("--runs_dir", type=str, default="runs", help="Root folder of all runs.")
        parser.add_argument(
            "--ckpt_path",
            type=str | None,
            default=None,
            help="Checkpoint to resume training from (its run continues in a new version folder).",
        )
        parser.add_argument(
            "--record",
            type=bool,
            default=True,
            help="Record activations with the settings of the `recorder` section (false: train without recording).",
        )
        parser.add_argument(
            "--full_summary",
            type=bool,
            default=False,
            help="Print Lightning's full model table (modes, FLOPs, input sizes) instead of the compact one.",
        )
        parser.add_argument(
            "--progress_every",
            type=float,
            default=DEFAULT_EVERY_S,
            help="Seconds between plain progress lines when output is not a terminal (a log file, a pipe).",
        )
        for key, callback_class in CALLBACK_GROUPS.items():
            parser.add_lightning_class_args(callback_class, key)
        parser.set_defaults(QUICKSTART_DEFAULTS)

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # LightningCLI warns when both `args` and `sys.argv` are set; `actrec train` always passes its own args.
        self.config = parser.parse_args(args)
        # Checked here, before LightningCLI seeds (and logs it): a refusal is one sentence and nothing else.
        _check_runs_dir(Path(self.config.runs_dir), self.config.experiment)
        ckpt_path = self.config.get("ckpt_path")
        if ckpt_path is not None:
            self._resumed_step = _check_checkpoint(Path(ckpt_path))

    @override
    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as error:  # the model's and data module's own argument checks, e.g. a negative lr
            raise _UsageError(str(error)) from error

    @override
    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        trainer_config: Namespace = self.config_init.trainer
        if trainer_config.get("logger") in (None, True):
            kwargs["logger"] = TensorBoardLogger(
                save_dir=self.config_init.runs_dir,
                name=self.config_init.experiment,
                default_hp_metric=False,
                version=sweep_trial_version(),  # None (the next free one) outside `actrec sweep`
            )
        if trainer_config.get("default_root_dir") is None:
            kwargs["default_root_dir"] = str(Path(self.config_init.runs_dir) / self.config_init.experiment)
        callbacks = [_StartLine(self), *(trainer_config.get("callbacks") or [])]
        if trainer_config.get("enable_model_summary") is not False and not any(
            isinstance(callback, ModelSummary) for callback in callbacks
        ):
            summary_class = ModelSummary if self.config_init.get("full_summary") else CompactModelSummary
            callbacks.append(summary_class(max_depth=_SUMMARY_MAX_DEPTH))
        every_s = self.config_init.get("progress_every", DEFAULT_EVERY_S)
        if every_s is None or every_s <= 0:
            raise _UsageError(f"--progress_every must be a positive number of seconds, got {every_s}.")
        if (
            not _stdout_is_terminal()
            and trainer_config.get("enable_progress_bar") is not False
            and not any(isinstance(callback, ProgressBar) for callback in callbacks)
        ):
            callbacks.append(LogLineProgress(every_s=every_s))  # a log file gets lines, not redraws
        kwargs["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)

    @override
    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[pl.Callback]) -> pl.Trainer:
        if not self.config_init.get("record", True):
            callbacks = [callback for callback in callbacks if not isinstance(callback, ActivationRecorder)]
        return super()._instantiate_trainer(config, callbacks)

    def fit_and_test(self) -> dict[str, float]:
        """Fit the model (resuming from ``ckpt_path`` if set), then test the final weights.

        Writes ``summary.json`` into the run folder: "running" before fitting, then "finished", "interrupted"
        or "failed" (with the error's sentence) and the final metrics. A run refused before its first step
        removes the folders it created instead.

        Returns:
            The test metrics, e.g. ``{"test/loss": 0.12, "test/acc": 0.97}``.
        """
        self.run_folder = self._run_folder()
        created = _missing_folders(self.run_folder) if self.run_folder is not None else []
        started = time.time()
        if self.run_folder is not None:
            self.run_folder.mkdir(parents=True, exist_ok=True)
            write_summary(self.run_folder, running_summary(**self._run_facts()))
        test_metrics: dict[str, float] = {}
        try:
            self.trainer.fit(self.model, datamodule=self.datamodule, ckpt_path=self.config.ckpt_path)
            self._fit_metrics = _scalar_metrics(self.trainer.callback_metrics)  # testing replaces them
            if not self.trainer.interrupted:
                results = self.trainer.test(self.model, datamodule=self.datamodule, verbose=True)
                test_metrics = {name: float(value) for name, value in results[0].items()} if results else {}
        except (KeyboardInterrupt, SystemExit):  # Lightning turns Ctrl-C into SystemExit after its own shutdown
            self._finish("interrupted", started)
            raise
        except BaseException as error:
            # Before the first step of this process (0, or a resumed checkpoint's step) nothing was trained.
            untrained = self.trainer.global_step in (0, self._resumed_step)
            if isinstance(error, _USER_ERRORS) and untrained and created:
                _remove_refused_run(created)
                self.run_folder = None
            else:
                message = str(error) if isinstance(error, _USER_ERRORS) else f"{type(error).__name__}: {error}"
                self._finish("failed", started, error=message)
            raise
        self._finish("interrupted" if self.trainer.interrupted else "finished", started)
        return test_metrics

    def start_line(self) -> str:
        """``actrec train: runs/quickstart/version_0 · six_conv_tanh on mnist-sample, seed 0 · 1,890 steps ...``."""
        config = self.config
        where = str(self.run_folder) if self.run_folder is not None else "no run folder (no logger)"
        parts = [
            f"actrec train: {where}",
            f"{config.model.model} on {config.data.dataset}, seed {config.seed_everything}",
        ]
        schedule = f"{self.trainer.estimated_stepping_batches:,} steps" if _finite(self.trainer) else "steps unknown"
        if self.trainer.max_epochs and self.trainer.max_epochs > 0 and not (self.trainer.max_steps or 0) > 0:
            schedule += f" ({self.trainer.max_epochs} epochs of {self.trainer.num_training_batches:,} batches)"
        if self._resumed_step:
            schedule += f", resumed at step {self._resumed_step:,}"
        parts.append(schedule)
        recorder = self._recorder()
        if recorder is None:
            parts.append("not recording")
        else:
            every = "every step" if recorder.every_n_steps == 1 else f"every {recorder.every_n_steps} steps"
            parts.append(f"recording {every} to {recorder.store_path}")
        return " · ".join(parts)

    def _run_folder(self) -> Path | None:
        """The logger's version folder, where the run's files go; ``None`` without a logger or off rank 0."""
        if not self.trainer.is_global_zero or self.trainer.logger is None or self.trainer.logger.log_dir is None:
            return None
        return Path(self.trainer.logger.log_dir)

    def _recorder(self) -> ActivationRecorder | None:
        callbacks: list[pl.Callback] = getattr(self.trainer, "callbacks", [])  # set by Lightning's connector
        return next((cb for cb in callbacks if isinstance(cb, ActivationRecorder)), None)

    def _run_facts(self) -> dict[str, Any]:
        """What the run is, known before it starts."""
        config = self.config.as_dict()
        ckpt_path = self.config.get("ckpt_path")
        return {
            "experiment": self.config.experiment,
            "version": self.run_folder.name if self.run_folder is not None else None,
            "model": self.config.model.model,
            "dataset": self.config.data.dataset,
            "seed": self.config.seed_everything,
            "config_digest": config_digest(config),
            "resumed_from": str(Path(ckpt_path).resolve()) if ckpt_path else None,
        }

    def _finish(self, state: str, started: float, error: str | None = None) -> None:
        """Rewrite summary.json with the run's outcome and final numbers."""
        if self.run_folder is None or not self.run_folder.is_dir():
            return
        recorder = self._recorder()
        store_path = recorder.store_path.resolve() if recorder is not None and recorder.store_path else None
        metrics = {**self._fit_metrics, **_scalar_metrics(self.trainer.callback_metrics)}
        # The runs module's order (by step), so summary.json and `actrec runs` name the same checkpoint.
        last_checkpoint = Run(self.run_folder).last_checkpoint()
        summary = finished_summary(
            self._run_facts(),
            state=state,
            started=started,
            error=error,
            global_step=int(self.trainer.global_step),
            epoch=int(self.trainer.current_epoch),
            metrics=metrics,
            store_path=store_path,
            recorded_steps=_recorded_steps(store_path),
            last_checkpoint=str(last_checkpoint.resolve()) if last_checkpoint is not None else None,
        )
        write_summary(self.run_folder, summary)


class _StartLine(pl.Callback):
    """Prints the run's one start line as fit starts (before the model table): where, what, for how long."""

    def __init__(self, cli: TrainCLI) -> None:
        self._cli = cli

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            print(self._cli.start_line(), flush=True)


def _stdout_is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def _finite(trainer: pl.Trainer) -> bool:
    try:
        total = trainer.estimated_stepping_batches
    except Exception:  # an iterable dataset without a length
        return False
    return total not in (None, float("inf"))


def _scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The one-number entries of Lightning's ``callback_metrics`` as floats (the runs module's one rule)."""
    return scalar_metrics(metrics)


def _recorded_steps(store_path: Path | None) -> int | None:
    """Complete rows in the run's store, or ``None`` without a readable one."""
    if store_path is None or not store_path.is_file():
        return None
    try:
        with StoreReader(store_path) as store:
            return store.num_steps
    except (StoreError, OSError):
        return None


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its ancestors that do not exist yet, deepest first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    return missing


def _remove_refused_run(created: list[Path]) -> None:
    """Remove the folders a refused run created (deepest first), if they hold only what the run itself wrote."""
    run_folder = created[0]
    for entry in list(run_folder.iterdir()) if run_folder.is_dir() else []:
        if entry.name == CHECKPOINT_DIRNAME and entry.is_dir() and not any(entry.iterdir()):
            entry.rmdir()
        elif entry.is_file() and (entry.name in _REFUSED_RUN_FILES or entry.name.startswith("events.out.tfevents.")):
            entry.unlink()
    for folder in created:
        try:
            folder.rmdir()  # only when empty: whatever else is there stays
        except OSError:
            return


def _check_runs_dir(runs_dir: Path, experiment: str) -> None:
    """Refuse a ``--runs_dir`` (or experiment folder) that is, or lies under, something other than a writable
    folder, and an ``--experiment`` that leads outside ``--runs_dir`` (``../x``, ``/x``, ``.``)."""
    root = runs_dir.absolute().resolve()
    if not (runs_dir / experiment).absolute().resolve().is_relative_to(root) or (
        (runs_dir / experiment).absolute().resolve() == root
    ):
        raise _UsageError(
            f"--experiment {experiment} leads outside --runs_dir {runs_dir}; pass a folder name inside it."
        )
    for folder in (runs_dir / experiment, runs_dir):
        existing = next((path for path in (folder, *folder.parents) if path.exists()), None)
        if existing is not None and not existing.is_dir():
            where = "" if existing == runs_dir else f" ({existing} is a file)"
            raise _UsageError(f"--runs_dir {runs_dir} is not a folder{where}; pass a folder for the runs.")
    folder = runs_dir / experiment
    existing = next((path for path in (folder, *folder.absolute().parents) if path.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise _UsageError(f"--runs_dir {runs_dir} cannot be written ({existing} is read-only); pass a writable folder.")


def _check_checkpoint(path: Path) -> int:
    """Refuse a ``--ckpt_path`` that is missing or not a Lightning checkpoint, without unpickling anything.

    Returns:
        The checkpoint's global step.
    """
    if not path.is_file():
        raise _UsageError(f"--ckpt_path {path} is not a file.")
    if h5py.is_hdf5(path):
        raise _UsageError(
            f"--ckpt_path {path} is not a Lightning checkpoint: it is an HDF5 file (an activation store?)."
        )
    try:
        # weights_only=True: tensors and plain containers only; a checkpoint that needs pickled objects is refused.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for foreign bytes
        # torch.save writes a zip archive; only inside one does a refused unpickling mean "pickled objects".
        if zipfile.is_zipfile(path) and "Weights only load failed" in str(error):
            reason = "it holds pickled Python objects, which actrec never loads"
        else:
            reason = "torch cannot read it as a checkpoint"
        raise _UsageError(f"--ckpt_path {path} is not a Lightning checkpoint: {reason}.") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "global_step" not in checkpoint:
        raise _UsageError(f"--ckpt_path {path} is not a Lightning checkpoint: it has no state_dict and global_step.")
    return int(checkpoint["global_step"])


def train_main(argv: list[str]) -> int:
    """Run ``actrec train`` with ``argv`` (the arguments after ``train``).

    User errors (a missing dataset or file, a bad flag) are reported as one line on stderr, without a traceback.

    Args:
        argv: Command-line arguments, e.g. ``["--config", "configs/article.yaml"]``.

    Returns:
        The process exit code: 0 on success, non-zero on error.
    """
    if "-h" in argv or "--help" in argv:
        print(short_help())
        return 0
    argv = ["--help" if argument == "--help-all" else argument for argument in argv]
    argv = _resolve_config_names(argv)
    missing = _missing_config_file(argv)
    if missing is not None:
        names = ", ".join(config_names())
        print(
            f"actrec train: config file {missing} does not exist, nor is it a shipped config ({names}).",
            file=sys.stderr,
        )
        return 2
    unusable = _unusable_config_file(argv)
    if unusable is not None:
        print(f"actrec train: {terminal_safe(unusable)}", file=sys.stderr)
        return 2
    cli: TrainCLI | None = None
    try:
        with warnings.catch_warnings():
            # pytorch_lightning 2.6 still builds the pytree LeafSpec that torch 2.14 deprecates; nothing a user can
            # act on, so it is kept out of every run's output.
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)`", category=FutureWarning)
            quiet_lightning_notices()
            cli = TrainCLI(args=argv)
            test_metrics = cli.fit_and_test()
    except (SystemExit, KeyboardInterrupt) as exit_request:  # --help, --print_config, usage errors, Ctrl-C, SIGTERM
        # Lightning ends a Ctrl-C'd fit with SystemExit(1) and a SIGTERM'd one with SIGTERMException (a SystemExit):
        # the shell's 130 (128 + SIGINT) and 143 (128 + SIGTERM), as every actrec command.
        terminated = isinstance(exit_request, SIGTERMException)
        started = cli is not None and cli.run_folder is not None
        if terminated or started or isinstance(exit_request, KeyboardInterrupt):
            where = f"; what was recorded so far is in {cli.run_folder}" if cli and cli.run_folder else ""
            print(f"actrec train: {'terminated' if terminated else 'interrupted'}{where}.", file=sys.stderr)
            return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
        code = exit_request.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except _USER_ERRORS as error:
        print(f"actrec train: {terminal_safe(str(error))}", file=sys.stderr)
        return 1
    if cli.run_folder is not None:
        print(_next_steps(cli.run_folder, test_metrics, interrupted=cli.trainer.interrupted))
    return 0


def _next_steps(run_folder: Path, test_metrics: dict[str, float], *, interrupted: bool) -> str:
    """Where the run went and what to run next, for the end of ``actrec train``."""
    outcome = "interrupted" if interrupted else "finished"
    if "test/acc" in test_metrics:
        outcome += f", test accuracy {test_metrics['test/acc']:.1%}"
    shown = str(run_folder)
    commands = [
        (f"actrec render {shown}", "animations, contact sheets, curves"),
        (f"actrec tensorboard {shown}", "every layer on one step slider in TensorBoard's actrec tab"),
        (f"actrec report {shown}", "one self-contained HTML page"),
        (f"actrec runs {run_folder.parent.parent}", "every run in a table"),
    ]
    width = max(len(command) for command, _ in commands)
    lines = [f"\nrun folder: {shown} ({outcome})", "next:"]
    lines += [f"  {command:<{width}}  # {what}" for command, what in commands]
    return "\n".join(lines)


def _config_arguments(argv: list[str]) -> list[tuple[int, str]]:
    """``(position, value)`` of every ``--config``/``-c`` value in ``argv`` (``--config=X`` included)."""
    found = []
    for position, argument in enumerate(argv):
        if argument in ("--config", "-c") and position + 1 < len(argv):
            found.append((position + 1, argv[position + 1]))
        elif argument.startswith("--config="):
            found.append((position, argument.split("=", 1)[1]))
    return found


def _resolve_config_names(argv: list[str]) -> list[str]:
    """Replace each ``--config NAME`` that is not a file but a shipped config's name by that config's path."""
    resolved = list(argv)
    for position, value in _config_arguments(argv):
        shipped = config_path(value) if not Path(value).is_file() and "/" not in value else None
        if shipped is not None:
            resolved[position] = str(shipped) if resolved[position] == value else f"--config={shipped}"
    return resolved


def _unusable_config_file(argv: list[str]) -> str | None:
    """Why the first ``--config`` file that cannot be a config (not YAML, not a mapping) cannot be, if any.

    Checked before LightningCLI sees it: its own message prints the whole usage and names ``<unicode string>``.
    """
    import yaml

    for _, path in _config_arguments(argv):
        if path.lstrip().startswith("{"):
            continue
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            return f"config file {path} cannot be read ({getattr(error, 'strerror', None) or error})."
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(error, "problem", None) or "malformed"
            return f"config file {path} is not valid YAML ({problem}{where})."
        if config is not None and not isinstance(config, dict):
            what = "a list" if isinstance(config, list) else "a single value"
            return f"config file {path} holds {what}, not a mapping of options."
    return None


def _missing_config_file(argv: list[str]) -> str | None:
    """The first ``--config``/``-c`` path in ``argv`` that is not a file, if any."""
    for _, path in _config_arguments(argv):
        if not path.lstrip().startswith("{") and not Path(path).is_file():
            return path
    return None
