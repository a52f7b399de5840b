"""Lightning callbacks that observe training."""

from actrec.callbacks.activation_recorder import ActivationRecorder

__all__ = ["ActivationRecorder"]
