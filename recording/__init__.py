"""A recorded run, opened for reading: the one public face every command that reads a run goes through.

``Recording.open(path)`` takes a run folder, an experiment folder (its newest version with a store,
named on stderr) or a store file, and gives the run folder, the open store, a :class:`Timeline` (steps,
epochs, samples seen, predictions, scalars; the one thinning rule, last row included) and a
:class:`LayerView` per layer (kind, colour scale, channel plan, reads that leave damaged rows out).

The rules a recording's readers share live here once: :mod:`.scale` (which value a colour means) and
:mod:`.colors` (the palette it points into), :mod:`.epochs` (which epoch a row belongs to), and
:func:`thin_rows`, :func:`layer_kind`, :func:`predicted_classes`, :func:`shows_predictions` (whether
a run's ``task`` has predictions to draw), and :mod:`.outputs` (how probe inputs and outputs are drawn:
pictures, token ids, strips of values). This package imports ``store``, ``runs`` and ``errors``
only; ``viewer``, ``report``, ``compare``, ``dynamics`` and ``inspection`` import it, never the other
way round.
"""

from actrec.recording import colors
from actrec.recording.layers import (
    DEFAULT_MAX_CHANNELS,
    DEFAULT_MAX_PROBES,
    ChannelChoice,
    ChannelPlan,
    LayerRead,
    LayerView,
    channel_axis,
    choose_probes,
    layer_kind,
    parse_channels,
)
from actrec.recording.outputs import (
    INPUT_IDS,
    INPUT_IMAGE,
    INPUT_VECTOR,
    OUTPUT_CLASSES,
    OUTPUT_IMAGE,
    OUTPUT_TOKENS,
    OUTPUT_VALUES,
    OutputDrawing,
    finite_range,
    input_kind,
    largest_magnitude,
    output_drawing,
)
from actrec.recording.run import Recording, announce_on_stderr
from actrec.recording.scale import ColourScale, colour_scale
from actrec.recording.timeline import (
    RecordingError,
    Timeline,
    auto_stride,
    nearest_rows,
    predicted_classes,
    shows_predictions,
    thin_rows,
)

__all__ = [
    "DEFAULT_MAX_CHANNELS",
    "DEFAULT_MAX_PROBES",
    "INPUT_IDS",
    "INPUT_IMAGE",
    "INPUT_VECTOR",
    "OUTPUT_CLASSES",
    "OUTPUT_IMAGE",
    "OUTPUT_TOKENS",
    "OUTPUT_VALUES",
    "OutputDrawing",
    "ChannelChoice",
    "ChannelPlan",
    "ColourScale",
    "LayerRead",
    "LayerView",
    "Recording",
    "RecordingError",
    "Timeline",
    "announce_on_stderr",
    "auto_stride",
    "channel_axis",
    "choose_probes",
    "colors",
    "colour_scale",
    "layer_kind",
    "finite_range",
    "input_kind",
    "largest_magnitude",
    "nearest_rows",
    "output_drawing",
    "parse_channels",
    "predicted_classes",
    "shows_predictions",
    "thin_rows",
]
