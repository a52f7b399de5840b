"""Layer dynamics: how much each layer changes per step, how like its final self it is, when it settles.

Pure functions on arrays in :mod:`.metrics`; :func:`compute_dynamics` streams them out of a store;
:func:`write_dynamics` / :func:`read_dynamics` keep them beside it; ``actrec dynamics`` runs it all.
"""

from actrec.dynamics.compute import (
    DEFAULT_THRESHOLD,
    DYNAMICS_FILENAME,
    Dynamics,
    DynamicsError,
    LayerDynamics,
    compute_dynamics,
    read_dynamics,
    write_dynamics,
)
from actrec.dynamics.metrics import (
    MIN_CKA_PROBES,
    centered_gram,
    cka_from_grams,
    constant_channels,
    linear_cka,
    relative_change,
    saturated_fraction,
    settling_step,
)

__all__ = [
    "DEFAULT_THRESHOLD",
    "DYNAMICS_FILENAME",
    "MIN_CKA_PROBES",
    "Dynamics",
    "DynamicsError",
    "LayerDynamics",
    "centered_gram",
    "cka_from_grams",
    "compute_dynamics",
    "constant_channels",
    "linear_cka",
    "read_dynamics",
    "relative_change",
    "saturated_fraction",
    "settling_step",
    "write_dynamics",
]
