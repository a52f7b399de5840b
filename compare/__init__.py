"""Compare runs: one layer side by side as an animation, aligned by step, epoch or samples; curves overlaid."""

from actrec.compare.align import ALIGNMENTS, aligned_positions, rows_at, shared_timeline
from actrec.compare.build import CompareError, CompareResult, compare_runs, parse_layers, side_by_side

__all__ = [
    "ALIGNMENTS",
    "CompareError",
    "CompareResult",
    "aligned_positions",
    "compare_runs",
    "parse_layers",
    "rows_at",
    "shared_timeline",
    "side_by_side",
]
