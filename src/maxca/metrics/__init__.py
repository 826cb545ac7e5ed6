"""Evaluation metrics of a registration, in numpy (arrays or torch tensors accepted).

Spatial arrays are in file voxel order ``(*S)``; flows are ``(d, *S)`` voxel displacements with
channel ``k`` along spatial axis ``k`` (``docs/conventions.md``). Definitions, and how the
Learn2Reg-compatible variants differ, are in ``docs/metrics.md``.
"""

from maxca.metrics.consistency import inverse_consistency_error, inverse_consistency_map
from maxca.metrics.jacobian import (
    jacobian_determinant,
    jacobian_determinant_array,
    njd_percent,
    sdlogj,
)
from maxca.metrics.l2r import (
    l2r_dice,
    l2r_hd95,
    l2r_jacobian_determinant,
    l2r_njd,
    l2r_sdlogj,
    l2r_tre,
    l2r_warp_labels,
)
from maxca.metrics.landmarks import read_landmarks_csv, tre, warp_points
from maxca.metrics.overlap import dice, hd95
from maxca.metrics.summary import (
    PairResult,
    evaluate_pair,
    summarize,
    summary_markdown,
    write_pair_csv,
    write_summary,
)

__all__ = [
    "PairResult",
    "dice",
    "evaluate_pair",
    "hd95",
    "inverse_consistency_error",
    "inverse_consistency_map",
    "jacobian_determinant",  # deprecated: jacobian_determinant_array
    "jacobian_determinant_array",
    "l2r_dice",
    "l2r_hd95",
    "l2r_jacobian_determinant",
    "l2r_njd",
    "l2r_sdlogj",
    "l2r_tre",
    "l2r_warp_labels",
    "njd_percent",
    "read_landmarks_csv",
    "sdlogj",
    "summarize",
    "summary_markdown",
    "tre",
    "warp_points",
    "write_pair_csv",
    "write_summary",
]
