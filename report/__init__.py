"""One self-contained HTML report of a run: every layer driven by one step slider, curves, dynamics, probes."""

from actrec.report.build import (
    REPORT_FILENAME,
    ReportError,
    ReportResult,
    build_report,
    decode_frames,
    encode_frames,
    tile_grid,
)

__all__ = [
    "REPORT_FILENAME",
    "ReportError",
    "ReportResult",
    "build_report",
    "decode_frames",
    "encode_frames",
    "tile_grid",
]
