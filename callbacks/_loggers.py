"""The store's place beside a W&B or MLflow run, and its path recorded with that run.

Loggers without a ``log_dir`` of their own that name a unique run (W&B's run id, MLflow's run id) get the
store where Lightning puts that run's checkpoints, ``<save_dir>/<name>/<version>`` (for an MLflow file store,
the MLflow run's own folder; for W&B, ``<save_dir>/<project>/<run id>``), so a resume from one of those
checkpoints finds its store beside it. The store's path is recorded with the run at fit start (so a run
that dies still names it) and the small files (``summary.json``) at fit end; the multi-megabyte store is
referenced by its path, never uploaded. ``wandb`` and ``mlflow`` are imported only when such a logger is
attached (they are optional extras). A logger library that fails here costs one warning, never the training.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytorch_lightning.utilities.rank_zero import rank_zero_warn

__all__ = ["STORE_PATH_KEY", "logger_run_folder", "record_run_end", "record_run_start"]

#: The key under which the store's path is recorded: a W&B config and summary key, an MLflow tag.
STORE_PATH_KEY = "actrec.store_path"

_WANDB = "WandbLogger"
_MLFLOW = "MLFlowLogger"
_SAID = {_WANDB: "W&B", _MLFLOW: "MLflow"}


def _kind(logger: Any) -> str | None:
    """``"WandbLogger"``, ``"MLFlowLogger"`` or ``None``, by class name along the hierarchy, so that
    ``lightning.pytorch``'s, ``pytorch_lightning``'s and subclasses are all recognised without importing
    either library."""
    names = {cls.__name__ for cls in type(logger).__mro__}
    return next((kind for kind in (_WANDB, _MLFLOW) if kind in names), None)


def _disabled(logger: Any) -> bool:
    """A W&B run in ``disabled`` mode (``WANDB_MODE=disabled``) records nothing: nothing is said to be recorded."""
    return _kind(logger) == _WANDB and bool(getattr(logger.experiment, "disabled", False))


def logger_run_folder(loggers: Sequence[Any], default_root_dir: str | Path) -> Path | None:
    """The folder of the first logger's W&B or MLflow run, as Lightning's ``ModelCheckpoint`` lays it out
    (``<save_dir or default_root_dir>/<name>/<version>``), or ``None`` for any other logger or none.

    Lightning creates the loggers' experiments before any callback's ``setup``, so the run id is known there.
    """
    if not loggers or _kind(loggers[0]) is None:
        return None
    logger = loggers[0]
    version = logger.version
    if not version:
        return None
    save_dir = logger.save_dir if logger.save_dir is not None else default_root_dir
    return Path(save_dir, str(logger.name), str(version))


def record_run_start(loggers: Sequence[Any], store_path: Path, config: dict[str, Any]) -> list[str]:
    """Record the store's path (and ``config``, a few small values) with every W&B or MLflow run attached.

    Returns:
        what was recorded where, one phrase a run (``"W&B run 1a2b3c"``), for the recorder's line.
    """
    said = []
    for logger in loggers:
        kind = _kind(logger)
        if kind is None or _disabled(logger):
            continue
        try:
            if kind == _WANDB:
                said.append(_wandb_start(logger, store_path, config))
            else:
                said.append(_mlflow_start(logger, store_path, config))
        except Exception as error:  # a tracking library's failure must not stop the training it observes
            rank_zero_warn(f"ActivationRecorder: cannot record the store's path with the {_SAID[kind]} run: {error}")
    return said


def record_run_end(loggers: Sequence[Any], store_path: Path, small_files: Sequence[Path]) -> None:
    """At fit end: the run's small files (``summary.json``) saved with every W&B or MLflow run, and the store
    referenced by path (a W&B artifact reference, never an upload)."""
    files = [path for path in small_files if path.is_file()]
    for logger in loggers:
        kind = _kind(logger)
        if kind is None or _disabled(logger):
            continue
        try:
            if kind == _WANDB:
                _wandb_end(logger, store_path, files)
            else:
                _mlflow_end(logger, files)
        except Exception as error:  # a tracking library's failure must not fail a run that has finished
            rank_zero_warn(f"ActivationRecorder: cannot save the run's files with the {_SAID[kind]} run: {error}")


# -- W&B -------------------------------------------------------------------------------------------------


def _wandb_start(logger: Any, store_path: Path, config: dict[str, Any]) -> str:
    run = logger.experiment
    values = {STORE_PATH_KEY: str(store_path), **{f"actrec.{key}": value for key, value in config.items()}}
    run.config.update(values, allow_val_change=True)
    run.summary[STORE_PATH_KEY] = str(store_path)
    return f"W&B run {run.id}"


def _wandb_end(logger: Any, store_path: Path, files: Sequence[Path]) -> None:
    import wandb

    run = logger.experiment
    for path in files:
        # "end": the file as it is when the run finishes (summary.json is rewritten until then).
        run.save(str(path), base_path=str(path.parent), policy="end")
    artifact = wandb.Artifact(f"actrec-{run.id}", type="actrec-store", metadata={STORE_PATH_KEY: str(store_path)})
    # By path only: checksum=False never reads the (possibly many-gigabyte) store.
    artifact.add_reference(store_path.as_uri(), name=store_path.name, checksum=False)
    run.log_artifact(artifact)


# -- MLflow ----------------------------------------------------------------------------------------------


def _mlflow_start(logger: Any, store_path: Path, config: dict[str, Any]) -> str:
    client, run_id = logger.experiment, logger.run_id
    # A tag, not a param: params are immutable, and a second fit on the same run may record elsewhere.
    client.set_tag(run_id, STORE_PATH_KEY, str(store_path))
    for key, value in config.items():
        client.set_tag(run_id, f"actrec.{key}", str(value))
    return f"MLflow run {run_id}"


def _mlflow_end(logger: Any, files: Sequence[Path]) -> None:
    client, run_id = logger.experiment, logger.run_id
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path="actrec")
