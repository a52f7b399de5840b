"""Lightning callbacks that observe training."""

from actrec.callbacks.activation_recorder import ActivationRecorder, RecorderConfigError
from actrec.callbacks.progress import CompactModelSummary, LogLineProgress

__all__ = ["ActivationRecorder", "CompactModelSummary", "LogLineProgress", "RecorderConfigError"]
