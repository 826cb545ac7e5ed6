"""Inference: register pairs in physical space, refine, evaluate and export fields for other tools.

* :mod:`~maxca.inference.register`: :func:`register_pair` (model grid <-> image grids through the
  affines), :class:`RegistrationResult`.
* :mod:`~maxca.inference.refine`: :func:`refine_flow` (instance optimisation).
* :mod:`~maxca.inference.export`: ITK/ANTs (LPS mm) and Learn2Reg (voxel) displacement files.
* :mod:`~maxca.inference.evaluate`: scoring flows and ``disp_*`` folders from files.
* :mod:`~maxca.inference.pipeline`: results folders for ``maxca register`` / ``maxca show``.

Conventions: docs/conventions.md.
"""

from maxca.inference.evaluate import (
    evaluate_dataset,
    evaluate_files,
    evaluate_flow,
    write_evaluation,
)
from maxca.inference.export import (
    itk_displacement_image,
    l2r_case_id,
    l2r_disp_name,
    read_voxel_flow,
    write_itk_displacement,
    write_l2r_displacement,
    write_voxel_flow,
)
from maxca.inference.pipeline import (
    PairReport,
    load_model,
    pair_metrics,
    register_dataset,
    register_files,
    show_results,
)
from maxca.inference.refine import refine_flow
from maxca.inference.register import (
    ModelGrid,
    RegistrationResult,
    model_grid,
    register_pair,
    resample_to_grid,
    resolve_device,
    warp_volume,
)

__all__ = [
    "ModelGrid",
    "PairReport",
    "RegistrationResult",
    "evaluate_dataset",
    "evaluate_files",
    "evaluate_flow",
    "itk_displacement_image",
    "l2r_case_id",
    "l2r_disp_name",
    "load_model",
    "model_grid",
    "pair_metrics",
    "read_voxel_flow",
    "refine_flow",
    "register_dataset",
    "register_files",
    "register_pair",
    "resample_to_grid",
    "resolve_device",
    "show_results",
    "warp_volume",
    "write_evaluation",
    "write_itk_displacement",
    "write_l2r_displacement",
    "write_voxel_flow",
]
