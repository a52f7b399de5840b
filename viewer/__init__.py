"""Turn activation stores into pictures: red-white-blue frames, animations, contact sheets, curves.

Drawing is pure (arrays in, new uint8 arrays out: :mod:`.colors`, :mod:`.frames`, :mod:`.curves`);
writing is a thin layer on top (:mod:`.writers`); :func:`render_run` and :func:`export_tensorboard`
are what ``actrec render`` and ``actrec tensorboard`` run. Never imports Lightning.
"""

from actrec.recording import colors, layer_kind, predicted_classes
from actrec.recording.colors import (
    NEGATIVE_RGB,
    PALETTE,
    POSITIVE_RGB,
    ZERO_INDEX,
    ZERO_RGB,
    diverging_indices,
    grey_indices,
    to_rgb,
)
from actrec.recording.scale import ColourScale, LiveScaleState, colour_scale, live_scale
from actrec.viewer._events import EVENTS_PREFIX, STAGED_PREFIX, EventFile
from actrec.viewer._text import draw_text, fit_text, text_size
from actrec.viewer.curves import training_curves
from actrec.viewer.errors import ViewerError
from actrec.viewer.frames import (
    TILE_SIZE,
    FrameLayout,
    activation_frame,
    frame_title,
    live_frames,
)
from actrec.viewer.render import RenderResult, render_run
from actrec.viewer.tb_export import ExportResult, export_tensorboard
from actrec.viewer.writers import ApngWriter, GifWriter, Mp4Writer, TensorBoardImageWriter, encode_png, write_png

__all__ = [
    "ApngWriter",
    "EVENTS_PREFIX",
    "NEGATIVE_RGB",
    "PALETTE",
    "POSITIVE_RGB",
    "STAGED_PREFIX",
    "TILE_SIZE",
    "ZERO_INDEX",
    "ZERO_RGB",
    "ColourScale",
    "EventFile",
    "ExportResult",
    "FrameLayout",
    "GifWriter",
    "LiveScaleState",
    "Mp4Writer",
    "RenderResult",
    "TensorBoardImageWriter",
    "ViewerError",
    "activation_frame",
    "colors",
    "colour_scale",
    "diverging_indices",
    "draw_text",
    "encode_png",
    "export_tensorboard",
    "fit_text",
    "frame_title",
    "predicted_classes",
    "grey_indices",
    "layer_kind",
    "live_frames",
    "live_scale",
    "render_run",
    "text_size",
    "to_rgb",
    "training_curves",
    "write_png",
]
