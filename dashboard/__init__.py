"""The actrec tab in TensorBoard: every layer of a run on one step slider, live while it trains.

A dynamic TensorBoard plugin (registered under the ``tensorboard_plugins`` entry point), so a plain
``tensorboard --logdir runs`` shows an **actrec** tab whenever a run under the logdir has an activation
store. It reads the store on demand (no export step, no second copy of the data) and never writes.
"""

from actrec.dashboard._source import DashboardError, find_runs, grid_indices
from actrec.dashboard.plugin import PLUGIN_NAME, ActrecPlugin

__all__ = ["PLUGIN_NAME", "ActrecPlugin", "DashboardError", "find_runs", "grid_indices"]
