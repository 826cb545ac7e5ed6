"""Inference: register pairs in physical space, refine, evaluate and export fields for other tools.

* :mod:`~maxca.inference.register`: :func:`register_pair` (model grid <-> image grids through the
  affines), :class:`RegistrationResult`.
* :mod:`~maxca.inference.refine`: :func:`refine_flow` (instance optimisation).
* :mod:`~maxca.inference.export`: ITK/ANTs (LPS mm) and Learn2Reg (voxel) displacement files.
* :mod:`~maxca.inference.evaluate`: scoring a voxel flow (:func:`evaluate_flow`).

Files in, files out (``maxca register``/``evaluate``/``show``) is the application layer,
:mod:`maxca.app`, which this package never imports.

Conventions: docs/conventions.md.
"""

from maxca.inference.evaluate import evaluate_flow
from maxca.inference.export import (
    itk_displacement_image,
    l2r_case_id,
    l2r_disp_name,
    read_itk_displacement,
    read_voxel_flow,
    write_itk_displacement,
    write_l2r_displacement,
    write_voxel_flow,
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
    "RegistrationResult",
    "evaluate_flow",
    "itk_displacement_image",
    "l2r_case_id",
    "l2r_disp_name",
    "model_grid",
    "read_itk_displacement",
    "read_voxel_flow",
    "refine_flow",
    "register_pair",
    "resample_to_grid",
    "resolve_device",
    "warp_volume",
    "write_itk_displacement",
    "write_l2r_displacement",
    "write_voxel_flow",
]
