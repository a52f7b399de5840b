"""Lightning's notices that say nothing about an ``actrec train`` run, filtered out of its log.

Lightning announces, at INFO level on its ``rank_zero`` logger, that no GPU or TPU is used on a CPU-only
machine, advertises two other products ("💡 Tip: ... litlogger / litmodels"), notes that a model-summary
callback was configured (actrec configures it), that a seed was set (actrec's start line says so) and that the
train loader was loaded to count the steps (for the start line). A
:class:`logging.Filter` on that logger drops exactly these; everything else it logs (resuming from a checkpoint,
why fit stopped) and every warning still shows.
"""

from __future__ import annotations

import logging
import re

__all__ = ["LIGHTNING_LOGGERS", "NoticeFilter", "quiet_lightning_notices"]

LIGHTNING_LOGGERS = (
    "pytorch_lightning.utilities.rank_zero",
    "lightning.pytorch.utilities.rank_zero",
    "lightning_fabric.utilities.seed",
    "lightning.fabric.utilities.seed",
)

_DROPPED_PREFIXES = (
    "GPU available: False",  # a CPU-only machine: nothing to report (with a GPU, the line stays)
    "TPU available: False",
    "HPU available: False",
    "💡 Tip:",
    "Trainer already configured with model summary callbacks",
    "Seed set to",
    "Loading `train_dataloader` to estimate number of stepping batches",  # the start line's step count
)


class NoticeFilter(logging.Filter):
    """Drops the log records listed in this module's docstring; passes every other record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        message = _RANK_PREFIX.sub("", str(record.getMessage()).lstrip(), count=1)  # "[rank: 0] Seed set to 0"
        return not message.startswith(_DROPPED_PREFIXES)


_RANK_PREFIX = re.compile(r"^\[rank: \d+\] ")

_FILTER = NoticeFilter()


def quiet_lightning_notices() -> None:
    """Install the filter on Lightning's rank-zero loggers (both package names); safe to call twice."""
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
