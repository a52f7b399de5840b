"""The tutorials' pictures of convolutional networks as commands on a run: ``actrec inspect``.

Computation is pure and usable from Python on any sequential model (:func:`numpy_forward`, :func:`summarize`,
:func:`maximize_channels`, :func:`shift_probabilities`, :func:`apply_edge_filters`, :func:`feature_stages`); the
drawing functions return palette-index canvases; :mod:`actrec.inspection.commands` loads runs and writes the files.

Every name is imported only when first asked for (most need torch), so that ``actrec inspect --help``
(:mod:`actrec.inspection.cli`) prints at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from actrec.inspection.errors import InspectError
    from actrec.inspection.featuremaps import FeatureStage, draw_featuremaps, feature_stages
    from actrec.inspection.filters import conv_kernels, draw_kernels, stored_kernels
    from actrec.inspection.handcrafted import EDGE_FILTERS, HandcraftedResult, apply_edge_filters, draw_handcrafted
    from actrec.inspection.loading import LoadedModel, load_run_model, stored_weights, zoo_model
    from actrec.inspection.maximize import (
        MaximizeResult,
        MaximizeSettings,
        draw_maximized,
        maximize_channels,
        over_training_sheet,
    )
    from actrec.inspection.reference import Stage, layer_plan, numpy_forward, output_size
    from actrec.inspection.shift import (
        DEFAULT_SHIFTS,
        draw_accuracy_chart,
        draw_heatmap,
        shift_accuracy,
        shift_images,
        shift_probabilities,
    )
    from actrec.inspection.summary import SummaryRow, format_table, summarize

_LAZY = {
    "InspectError": "errors",
    "FeatureStage": "featuremaps",
    "draw_featuremaps": "featuremaps",
    "feature_stages": "featuremaps",
    "conv_kernels": "filters",
    "draw_kernels": "filters",
    "stored_kernels": "filters",
    "EDGE_FILTERS": "handcrafted",
    "HandcraftedResult": "handcrafted",
    "apply_edge_filters": "handcrafted",
    "draw_handcrafted": "handcrafted",
    "LoadedModel": "loading",
    "load_run_model": "loading",
    "stored_weights": "loading",
    "zoo_model": "loading",
    "MaximizeResult": "maximize",
    "MaximizeSettings": "maximize",
    "draw_maximized": "maximize",
    "maximize_channels": "maximize",
    "over_training_sheet": "maximize",
    "Stage": "reference",
    "layer_plan": "reference",
    "numpy_forward": "reference",
    "output_size": "reference",
    "DEFAULT_SHIFTS": "shift",
    "draw_accuracy_chart": "shift",
    "draw_heatmap": "shift",
    "shift_accuracy": "shift",
    "shift_images": "shift",
    "shift_probabilities": "shift",
    "SummaryRow": "summary",
    "format_table": "summary",
    "summarize": "summary",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"actrec.inspection.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'actrec.inspection' has no attribute {name!r}")


__all__ = [
    "DEFAULT_SHIFTS",
    "EDGE_FILTERS",
    "FeatureStage",
    "HandcraftedResult",
    "InspectError",
    "LoadedModel",
    "MaximizeResult",
    "MaximizeSettings",
    "Stage",
    "SummaryRow",
    "apply_edge_filters",
    "conv_kernels",
    "draw_accuracy_chart",
    "draw_featuremaps",
    "draw_handcrafted",
    "draw_heatmap",
    "draw_kernels",
    "draw_maximized",
    "feature_stages",
    "format_table",
    "layer_plan",
    "load_run_model",
    "maximize_channels",
    "numpy_forward",
    "output_size",
    "over_training_sheet",
    "shift_accuracy",
    "shift_images",
    "shift_probabilities",
    "stored_kernels",
    "stored_weights",
    "summarize",
    "zoo_model",
]
