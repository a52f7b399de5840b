"""The run folder: where a run lives, what it holds, its status and its summary; ``actrec runs``."""

from actrec.runs._layout import (
    CHECKPOINT_DIRNAME,
    CONFIG_FILENAME,
    HPARAMS_FILENAME,
    STORE_FILENAME,
    SUMMARY_FILENAME,
    VERSION_PREFIX,
    Run,
    RunError,
    find_runs,
    resolve_run,
    store_for_resume,
)
from actrec.runs._summary import (
    config_digest,
    finished_summary,
    running_summary,
    scalar_metrics,
    sweep_trial_version,
    write_summary,
)
from actrec.runs.atomic import atomic_path, discard_unfinished

__all__ = [
    "CHECKPOINT_DIRNAME",
    "CONFIG_FILENAME",
    "HPARAMS_FILENAME",
    "STORE_FILENAME",
    "SUMMARY_FILENAME",
    "VERSION_PREFIX",
    "Run",
    "RunError",
    "atomic_path",
    "config_digest",
    "discard_unfinished",
    "find_runs",
    "finished_summary",
    "resolve_run",
    "running_summary",
    "scalar_metrics",
    "store_for_resume",
    "sweep_trial_version",
    "write_summary",
]
