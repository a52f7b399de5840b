"""``actrec train``: LightningCLI over :class:`ImageClassifier` and :class:`ImageDataModule`.

Every ``__init__`` argument of the model and the data module is a flag (``--model.lr 0.003``) and a YAML key
(``model: {lr: 0.003}``). There are no ``fit``/``test`` subcommands: one call fits, then tests the final weights,
so a run always ends with its test accuracy. With no ``--config`` the defaults are the quickstart run
(``configs/quickstart.yaml`` spells them out).

A run is written to ``<runs_dir>/<experiment>/version_N/`` (TensorBoardLogger's layout): TensorBoard events,
the resolved ``config.yaml`` and ``checkpoints/``. ``--ckpt_path`` resumes training from a checkpoint into a new
version folder.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from jsonargparse import Namespace
from pytorch_lightning.callbacks import ModelSummary
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from typing_extensions import override

from actrec.callbacks import ActivationRecorder
from actrec.store import StoreError
from actrec.trainer.data import DatasetUnavailableError, ImageDataModule
from actrec.trainer.module import ImageClassifier

__all__ = ["CALLBACK_GROUPS", "QUICKSTART_DEFAULTS", "TrainCLI", "train_main"]

#: Callbacks configured from their own top-level YAML section, ``key -> class``. Each becomes a group of flags
#: (``--<key>.<argument>``) and is added to the trainer's callbacks, e.g. ``{"recorder": ActivationRecorder}``.
CALLBACK_GROUPS: dict[str, type[pl.Callback]] = {"recorder": ActivationRecorder}

#: Parser defaults (dotted keys) that differ from the classes' own: together they are the quickstart run, so
#: ``actrec train`` with no config does what ``configs/quickstart.yaml`` says.
QUICKSTART_DEFAULTS: dict[str, Any] = {
    "trainer.max_epochs": 30,
    "recorder.every_n_steps": 5,  # 30 epochs are ~1,900 steps; every 5th keeps the store and GIFs small
    "recorder.compression": "none",  # at batch 64 compressing costs more than the disk it saves
    "trainer.log_every_n_steps": 1,  # train loss and accuracy reach TensorBoard at every step
    "model.lr": 2e-3,
}

# Depth 2 lists the zoo model's named blocks (net.conv1 ... net.fc3) with their output shapes.
_SUMMARY_MAX_DEPTH = 2


class _UsageError(Exception):
    """A mistake on the command line that deserves one sentence rather than a traceback."""


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
            "run": False,
            "args": args,
        }
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
        for key, callback_class in CALLBACK_GROUPS.items():
            parser.add_lightning_class_args(callback_class, key)
        parser.set_defaults(QUICKSTART_DEFAULTS)

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # LightningCLI warns when both `args` and `sys.argv` are set; `actrec train` always passes its own args.
        self.config = parser.parse_args(args)

    @override
    def before_instantiate_classes(self) -> None:
        ckpt_path = self.config.get("ckpt_path")
        if ckpt_path is not None and not Path(ckpt_path).is_file():
            raise _UsageError(f"--ckpt_path {ckpt_path} is not a file.")

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
                save_dir=self.config_init.runs_dir, name=self.config_init.experiment, default_hp_metric=False
            )
        if trainer_config.get("default_root_dir") is None:
            kwargs["default_root_dir"] = str(Path(self.config_init.runs_dir) / self.config_init.experiment)
        if trainer_config.get("enable_model_summary") is not False:
            callbacks = trainer_config.get("callbacks") or []
            if not any(isinstance(callback, ModelSummary) for callback in callbacks):
                kwargs["callbacks"] = [*callbacks, ModelSummary(max_depth=_SUMMARY_MAX_DEPTH)]
        return super().instantiate_trainer(**kwargs)

    @override
    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[pl.Callback]) -> pl.Trainer:
        if not self.config_init.get("record", True):
            callbacks = [callback for callback in callbacks if not isinstance(callback, ActivationRecorder)]
        return super()._instantiate_trainer(config, callbacks)

    def fit_and_test(self) -> dict[str, float]:
        """Fit the model (resuming from ``ckpt_path`` if set), then test the final weights.

        Returns:
            The test metrics, e.g. ``{"test/loss": 0.12, "test/acc": 0.97}``.
        """
        self.trainer.fit(self.model, datamodule=self.datamodule, ckpt_path=self.config.ckpt_path)
        if self.trainer.interrupted:
            return {}
        results = self.trainer.test(self.model, datamodule=self.datamodule, verbose=True)
        return {name: float(value) for name, value in results[0].items()} if results else {}


def train_main(argv: list[str]) -> int:
    """Run ``actrec train`` with ``argv`` (the arguments after ``train``).

    User errors (a missing dataset or file, a bad flag) are reported as one line on stderr, without a traceback.

    Args:
        argv: Command-line arguments, e.g. ``["--config", "configs/article.yaml"]``.

    Returns:
        The process exit code: 0 on success, non-zero on error.
    """
    missing = _missing_config_file(argv)
    if missing is not None:
        print(f"actrec train: config file {missing} does not exist.", file=sys.stderr)
        return 2
    try:
        with warnings.catch_warnings():
            # pytorch_lightning 2.6 still builds the pytree LeafSpec that torch 2.14 deprecates; nothing a user can
            # act on, so it is kept out of every run's output.
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)`", category=FutureWarning)
            cli = TrainCLI(args=argv)
            cli.fit_and_test()
    except SystemExit as exit_request:  # --help, --print_config and jsonargparse's usage errors
        code = exit_request.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except (DatasetUnavailableError, _UsageError, MisconfigurationException, StoreError) as error:
        print(f"actrec train: {error}", file=sys.stderr)
        return 1
    return 0


def _missing_config_file(argv: list[str]) -> str | None:
    """The first ``--config``/``-c`` path in ``argv`` that is not a file, if any."""
    for position, argument in enumerate(argv):
        if argument in ("--config", "-c") and position + 1 < len(argv):
            path = argv[position + 1]
        elif argument.startswith("--config="):
            path = argument.split("=", 1)[1]
        else:
            continue
        if not path.lstrip().startswith("{") and not Path(path).is_file():
            return path
    return None
