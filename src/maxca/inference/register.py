"""Registering one pair of volumes with a trained model, in physical space.

The network runs on its own *model grid* (the shape and spacing it was trained at, from the
checkpoint's ``data`` entry), while the user's images live on their own grids. This module
moves between them through the affines only (``docs/conventions.md``):

1. The model grid takes the orientation of the fixed image (its direction cosines), the model's
   shape and spacing, and is centred on the fixed image's centre.
2. Fixed and moving images are normalised as at training time and resampled (linear, zero
   outside, Gaussian pre-smoothing where the model grid is coarser) onto the model grid: model
   voxel ``q`` takes the value of the image at the world point ``G q`` (``G`` the grid affine).
3. The network predicts a flow ``u_grid`` (voxels of the model grid). Its physical displacement
   at a fixed voxel ``p`` with world position ``x = A_f p`` is ``D(x) = R_grid u_grid(q(x))``
   (``R_grid = G[:3, :d]``, ``q(x)`` the model-grid index of ``x``, linear interpolation,
   border values beyond the grid). The voxel displacement on the fixed grid is
   ``u = A_f[:3, :d]^+ D`` (the pseudo-inverse is the inverse in 3-D).
4. The warped image is the moving image sampled at ``x + D(x)`` through the moving affine
   (linear, zero outside); label maps the same way with nearest neighbour, so every warped label
   is a value of the input map (or 0 outside it).

Voxel index ``p`` is voxel centre ``p`` throughout (``grid_sample`` with ``align_corners=True``
on ``2 p / (n - 1) - 1``), so the identity never shifts anything by half a voxel.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from scipy import ndimage

from maxca._checks import NORMALISATIONS, check_flow, resolve_device
from maxca.data.io import Volume, check_same_grid
from maxca.data.transforms import normalise_intensity
from maxca.errors import MaxcaInputError
from maxca.models.checkpoint import CheckpointInfo
from maxca.models.preprocessing import Preprocessing
from maxca.spatial import compose, identity_grid, integrate_velocity, warp
from maxca.spatial.sample import apply_affine, sample_grid, volume_tensor

__all__ = [
    "ModelGrid",
    "RegistrationResult",
    "check_passes",
    "index_map",
    "model_grid",
    "model_input",
    "register_pair",
    "resample_to_grid",
    "resolve_device",
    "sample_grid",
    "warp_volume",
]

# ----------------------------------------------------------------------------------------------
# grids and index maps


@dataclass(frozen=True)
class ModelGrid:
    """The grid the network runs on.

    Attributes:
        shape: spatial shape ``(D0, D1[, D2])``.
        affine: ``(4, 4)`` RAS voxel-to-world matrix (mm).
    """

    shape: tuple[int, ...]
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each array axis."""
        d = len(self.shape)
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :d], axis=0))


def _per_axis(value: Any, d: int, name: str, integer: bool) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64).ravel()
    if arr.size == 1:
        arr = np.repeat(arr, d)
    if arr.size != d or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise MaxcaInputError(
            f"checkpoint data.{name} must be {d} positive values for a {d}-D image, got {value!r}"
        )
    if integer and np.any(arr != np.round(arr)):
        raise MaxcaInputError(f"checkpoint data.{name} must hold integers, got {value!r}")
    return arr


def model_grid(fixed: Volume, data: Preprocessing | Mapping[str, Any] | None) -> ModelGrid:
    """The model grid for a fixed image: orientation of ``fixed``, size from ``data``.

    ``data`` is the checkpoint's :class:`~maxca.models.preprocessing.Preprocessing` (or its
    ``data`` entry as a mapping). With ``shape`` and ``spacing`` both given the
    grid has exactly that shape and spacing; with only ``shape`` its spacing spreads the fixed
    image's extent over ``shape`` voxels (cells); with only ``spacing`` the shape is the fixed
    extent divided by it (rounded); with neither the grid is the fixed image's own grid. The grid
    is always centred on the fixed image's centre and shares its direction cosines.

    Args:
        fixed: the fixed image ``(*S_f)`` with its affine.
        data: record with optional ``shape`` (``d`` ints) and ``spacing`` (``d`` mm values or
            one value for all axes).

    Returns:
        the :class:`ModelGrid`.
    """
    if isinstance(data, Preprocessing):
        shape, spacing = data.shape, data.spacing
    else:
        data = data or {}
        shape, spacing = data.get("shape"), data.get("spacing")
    d = fixed.ndim
    f_shape = np.asarray(fixed.shape, dtype=np.float64)
    f_spacing = np.asarray(fixed.spacing, dtype=np.float64)
    if shape is None and spacing is None:
        return ModelGrid(tuple(fixed.shape), fixed.affine.copy())
    if shape is not None:
        g_shape = _per_axis(shape, d, "shape", integer=True)
        g_spacing = (
            f_shape * f_spacing / g_shape
            if spacing is None
            else _per_axis(spacing, d, "spacing", integer=False)
        )
    else:
        g_spacing = _per_axis(spacing, d, "spacing", integer=False)
        g_shape = np.maximum(1, np.round(f_shape * f_spacing / g_spacing))
    direction = fixed.affine[:3, :d] / f_spacing[None, :]
    affine = fixed.affine.copy()
    affine[:3, :d] = direction * g_spacing[None, :]
    centre = fixed.affine[:3, :d] @ ((f_shape - 1) / 2) + fixed.affine[:3, 3]
    affine[:3, 3] = centre - affine[:3, :d] @ ((g_shape - 1) / 2)
    return ModelGrid(tuple(int(s) for s in g_shape), affine)


def index_map(
    target_affine: np.ndarray, source_affine: np.ndarray, d: int
) -> tuple[np.ndarray, np.ndarray]:
    """The affine map from voxel indices of a target grid to those of a source grid.

    ``source_index = B @ target_index + b`` for the voxel of the source grid at the same world
    position (``B = A_s[:3, :d]^+ A_t[:3, :d]``, ``b = A_s[:3, :d]^+ (t_t - t_s)``; for 2-D grids
    the pseudo-inverse projects onto the source plane).

    Returns:
        ``(B (d, d), b (d,))`` float64.
    """
    s_inv = np.linalg.pinv(np.asarray(source_affine, dtype=np.float64)[:3, :d])
    t = np.asarray(target_affine, dtype=np.float64)
    B = s_inv @ t[:3, :d]
    b = s_inv @ (t[:3, 3] - np.asarray(source_affine, dtype=np.float64)[:3, 3])
    return B, b


# ----------------------------------------------------------------------------------------------
# sampling


def resample_to_grid(
    volume: Volume,
    grid: ModelGrid,
    kind: str = "image",
    device: torch.device | str = "cpu",
    antialias: bool = True,
) -> torch.Tensor:
    """Resample a volume onto a grid through both affines.

    Grid voxel ``q`` takes the value of ``volume`` at the world point of ``q``: linear for
    ``kind="image"`` (zero outside the volume; with ``antialias``, a Gaussian of
    ``sigma = (f - 1) / 2`` voxels first smooths every axis along which a grid voxel spans
    ``f > 1`` volume voxels), nearest for ``kind="label"`` (values and dtype kept).

    Returns:
        ``(1, 1, *grid.shape)`` tensor on ``device`` (float32 for images).
    """
    d = volume.ndim
    B, b = index_map(grid.affine, volume.affine, d)
    array = volume.array
    if kind == "image":
        array = np.asarray(array, dtype=np.float32)
        step = np.abs(B).max(axis=1)  # volume voxels spanned by one grid voxel, per volume axis
        sigma = np.where(step > 1.0 + 1e-6, (step - 1.0) / 2.0, 0.0)
        if antialias and np.any(sigma > 0):
            array = ndimage.gaussian_filter(array, sigma=sigma, mode="nearest").astype(np.float32)
    dev = torch.device(device)
    src = volume_tensor(array, dev)
    base = identity_grid(grid.shape, device=dev, dtype=torch.float32)
    coords = apply_affine(B, b, base)
    mode = "linear" if kind == "image" else "nearest"
    return sample_grid(src, coords, mode=mode, padding_mode="zeros")


def flow_to_fixed_grid(
    grid_flow: torch.Tensor, grid: ModelGrid, fixed_affine: np.ndarray, fixed_shape: tuple[int, ...]
) -> torch.Tensor:
    """Bring a model-grid flow onto the fixed grid (see the module docstring, step 3).

    Args:
        grid_flow: ``(1, d, *grid.shape)`` voxel displacement of the model grid.
        grid: the model grid.
        fixed_affine: ``(4, 4)`` affine of the fixed grid.
        fixed_shape: spatial shape of the fixed grid.

    Returns:
        ``(1, d, *fixed_shape)`` voxel displacement of the fixed grid (same device/dtype).
    """
    d = len(fixed_shape)
    if tuple(fixed_shape) == tuple(grid.shape) and np.allclose(
        grid.affine, fixed_affine, rtol=0, atol=1e-9
    ):
        return grid_flow
    B, b = index_map(fixed_affine, grid.affine, d)  # fixed index -> grid index
    base = identity_grid(fixed_shape, device=grid_flow.device, dtype=grid_flow.dtype)
    sampled = sample_grid(grid_flow, apply_affine(B, b, base), "linear", padding_mode="border")[0]
    K = np.linalg.pinv(np.asarray(fixed_affine)[:3, :d]) @ grid.affine[:3, :d]
    return apply_affine(K, np.zeros(d), sampled)[None]


def warp_volume(
    moving: Volume,
    flow: torch.Tensor,
    fixed_affine: np.ndarray,
    kind: str = "image",
) -> torch.Tensor:
    """Warp a moving volume onto the fixed grid by a fixed-grid voxel displacement.

    ``out(p) = moving(world -> moving index of A_f (p + u(p)))``: linear with zero padding for
    images, nearest (values kept) for label maps. With a zero flow this resamples the moving
    volume onto the fixed grid by the identity transform.

    Args:
        moving: the moving volume (any grid).
        flow: ``(1, d, *S_f)`` voxel displacement of the fixed grid (its device is used).
        fixed_affine: ``(4, 4)`` affine of the fixed grid.
        kind: ``"image"`` or ``"label"``.

    Returns:
        ``(1, 1, *S_f)`` tensor (float32 for images, the label dtype for label maps).
    """
    d = moving.ndim
    check_flow(flow, "flow", spatial_dims=d)
    B, b = index_map(fixed_affine, moving.affine, d)
    base = identity_grid(flow.shape[2:], device=flow.device, dtype=flow.dtype)
    coords = apply_affine(B, b, base + flow[0])
    src = volume_tensor(
        moving.array if kind == "label" else np.asarray(moving.array, np.float32), flow.device
    )
    return sample_grid(src, coords, "linear" if kind == "image" else "nearest", "zeros")


# ----------------------------------------------------------------------------------------------
# registration


@dataclass
class RegistrationResult:
    """Everything :func:`register_pair` computed, on the fixed image's grid.

    Attributes:
        fixed, moving: the input volumes.
        warped: the moving image warped onto the fixed grid (float32, fixed affine/header).
        flow: ``(d, *S_f)`` float32 voxel displacement of the fixed grid (channel ``k`` along
            fixed axis ``k``): ``warped(p) = moving(A_m^-1 A_f (p + flow(p)))``.
        grid: the model grid the network ran on.
        grid_flow: ``(1, d, *grid.shape)`` the network's (refined) flow on the model grid (CPU).
        warped_labels: the moving label map warped (nearest) onto the fixed grid, or ``None``.
        fixed_labels, moving_labels: the label maps given, or ``None``.
        device: the device the network ran on.
        timings: seconds per stage (``"preprocess"``, ``"network"``, ``"refine"``, ``"resample"``,
            ``"total"``).
        affine: with affine pre-alignment (:func:`maxca.inference.affine.with_affine`), the
            ``(4, 4)`` RAS map ``T`` (fixed -> moving points); ``flow`` is then the total
            displacement ``T (x + D(x)) - x`` in fixed voxels.
        deformable_flow: with pre-alignment, the deformable part ``u`` alone (``(d, *S_f)``
            voxels): the chain ``T`` after ``x + A_f u`` equals ``flow``.
        passes: how many times the network ran (cascaded inference, see :func:`register_pair`).
    """

    fixed: Volume
    moving: Volume
    warped: Volume
    flow: np.ndarray
    grid: ModelGrid
    grid_flow: torch.Tensor
    warped_labels: Volume | None = None
    fixed_labels: Volume | None = None
    moving_labels: Volume | None = None
    device: str = "cpu"
    timings: dict[str, float] = field(default_factory=dict)
    affine: np.ndarray | None = None
    deformable_flow: np.ndarray | None = None
    passes: int = 1

    @property
    def displacement_mm(self) -> np.ndarray:
        """``(3, *S_f)`` physical displacement in RAS mm: ``A_f[:3, :d] @ flow``."""
        d = self.flow.shape[0]
        M = self.fixed.affine[:3, :d].astype(np.float32)
        return np.tensordot(M, self.flow, axes=1)

    def moving_on_fixed_grid(self, kind: str = "image") -> np.ndarray:
        """The moving image (or label map) resampled onto the fixed grid without deformation."""
        vol = self.moving if kind == "image" else self.moving_labels
        if vol is None:
            raise MaxcaInputError("no moving label map was given")
        zero = torch.zeros((1, self.flow.shape[0], *self.flow.shape[1:]), dtype=torch.float32)
        return warp_volume(vol, zero, self.fixed.affine, kind)[0, 0].numpy()


def model_input(
    volume: Volume, grid: ModelGrid, info: Any, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """An image as the network sees it: intensities normalised as the checkpoint records
    (statistics of the whole image as read, as in training), then resampled onto ``grid``.

    Args:
        volume: the image (2-D or 3-D, any grid).
        grid: the model grid (:func:`model_grid`).
        info: the checkpoint's :class:`~maxca.models.checkpoint.CheckpointInfo` or its
            :class:`~maxca.models.preprocessing.Preprocessing` (``None``: min-max).
        device: where the returned tensor lives.

    Returns:
        ``(1, 1, *grid.shape)`` float32 tensor.
    """
    mode, percentiles = _normalisation(Preprocessing.of(info))
    array = volume.array
    if mode is not None:
        array = normalise_intensity(array, mode, percentiles)  # type: ignore[arg-type]
    return resample_to_grid(Volume(array, volume.affine), grid, "image", device)


def _normalisation(prep: Preprocessing) -> tuple[str | None, tuple[float, float]]:
    mode = prep.normalise
    if mode is None:
        return None, (1.0, 99.0)
    if mode not in NORMALISATIONS:
        raise MaxcaInputError(
            f"checkpoint data.normalise must be one of {list(NORMALISATIONS)} or null, got {mode!r}"
        )
    return str(mode), prep.percentiles


def _check_labels(image: Volume, labels: Volume | None, what: str) -> None:
    if labels is None:
        return
    if labels.ndim != image.ndim:
        raise MaxcaInputError(
            f"{what} label map is {labels.ndim}-D but its image is {image.ndim}-D"
        )
    if np.issubdtype(labels.array.dtype, np.floating):
        raise MaxcaInputError(f"{what} label map must hold integers, got {labels.array.dtype}")
    check_same_grid(image, labels, f"{what} label map grid differs from its image")


def _spatial_dims(model: nn.Module, prep: Preprocessing) -> int | None:
    dims = getattr(model, "spatial_dims", None)
    if dims is None:
        dims = prep.spatial_dims
    return None if dims is None else int(dims)


def check_passes(passes: Any) -> int:
    """``passes`` as an ``int >= 1`` (network passes of :func:`register_pair`), or
    :class:`MaxcaInputError`."""
    if isinstance(passes, bool) or not isinstance(passes, (int, np.integer)) or passes < 1:
        raise MaxcaInputError(f"passes must be an integer >= 1, got {passes!r}")
    return int(passes)


def register_pair(
    model: nn.Module,
    info: CheckpointInfo | Preprocessing | None,
    fixed: Volume,
    moving: Volume,
    moving_labels: Volume | None = None,
    fixed_labels: Volume | None = None,
    device: str | torch.device = "cpu",
    diffeomorphic: bool | None = None,
    refine_steps: int = 0,
    refine_options: Mapping[str, Any] | None = None,
    precision: str = "fp32",
    passes: int | None = None,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` with a trained network, in physical space.

    See the module docstring for the geometry. The network runs without gradients in eval mode.

    Args:
        model: a registration network, ``model(fixed (1, 1, *S_g), moving) -> RegistrationOutput``.
        info: the :class:`~maxca.models.checkpoint.CheckpointInfo` of ``model`` or directly its
            :class:`~maxca.models.preprocessing.Preprocessing` (model grid ``shape``/``spacing``,
            ``normalise`` mode, ``percentiles``); ``None`` = the fixed grid, min-max
            normalisation.
        fixed, moving: the images (2-D or 3-D, any grids and orientations).
        moving_labels: optional label map on the moving image's grid, warped with nearest
            neighbour.
        fixed_labels: optional label map on the fixed image's grid (kept for evaluation).
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        diffeomorphic: ``True`` makes the transform diffeomorphic: a model that is not is taken to
            predict a stationary velocity field, integrated by scaling and squaring
            (``int_steps`` of the record, 7 by default).
            ``None``/``False``: the model's flow as it is (a diffeomorphic model's is integrated).
        refine_steps: instance-optimisation steps on the model grid (0 = none), see
            :func:`maxca.inference.refine.refine_flow`.
        refine_options: keyword arguments for :func:`~maxca.inference.refine.refine_flow`
            (``lr``, ``weights``, ``similarity``, ``window``, ``regularise``); defaults from the
            record's ``refine`` entry when it has one, then ``similarity`` and ``window`` from
            its ``loss``, and ``weights`` too unless ``regularise="update"`` (training weights
            are for the whole field; refine_flow's own weights apply).
        precision: ``"fp32"`` (default) or ``"bf16"``: the network's forward pass under
            bfloat16 autocast (:func:`maxca.accel.precision_context`); the flow, the refinement
            and the resampling stay in float32. docs/benchmarks.md (section 2c) gives its
            accuracy and speed on the validation pairs.
        passes: how many times the network runs (cascaded inference, ``>= 1``): pass ``k``
            registers the fixed image with the moving image warped (on the model grid) by the
            composition of the flows of passes ``1 .. k-1``, and the flows are composed
            (:func:`maxca.spatial.compose`). Each pass of a diffeomorphic model is
            diffeomorphic; ``refine_steps`` refine the last pass. ``None``: the record's
            ``refine`` entry's ``passes`` when refining and it has one, else 1.

    Returns:
        a :class:`RegistrationResult` on the fixed grid.

    Raises:
        MaxcaInputError: mismatched dimensions, a label map whose grid differs from its image,
            an unusable checkpoint ``data`` entry, an unavailable device.
    """
    from maxca.accel import precision_context
    from maxca.inference.refine import refine_flow

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    d = fixed.ndim
    if moving.ndim != d:
        raise MaxcaInputError(f"fixed image is {d}-D but moving image is {moving.ndim}-D")
    prep = Preprocessing.of(info)
    dims = _spatial_dims(model, prep)
    if dims is not None and dims != d:
        raise MaxcaInputError(f"the model registers {dims}-D images, got {d}-D images")
    _check_labels(fixed, fixed_labels, "fixed")
    _check_labels(moving, moving_labels, "moving")
    if isinstance(refine_steps, bool) or int(refine_steps) != refine_steps or refine_steps < 0:
        raise MaxcaInputError(f"refine_steps must be an integer >= 0, got {refine_steps!r}")
    options = dict(refine_options or {})
    recorded = prep.extra.get("refine") if refine_steps else None  # the model's own defaults
    if recorded is not None:
        allowed = {"lr", "weights", "similarity", "window", "regularise", "resolution", "passes"}
        if not isinstance(recorded, Mapping) or set(recorded) - allowed:
            raise MaxcaInputError(
                f"checkpoint data.refine must be a mapping with keys among {sorted(allowed)}, "
                f"got {recorded!r}"
            )
        recorded = dict(recorded)
        recorded_passes = recorded.pop("passes", None)
        if passes is None and recorded_passes is not None:
            passes = recorded_passes
    passes = check_passes(1 if passes is None else passes)
    dev = resolve_device(device)
    autocast = precision_context(precision, dev)  # checks the name before any work
    grid = model_grid(fixed, prep)
    f_grid, m_grid = model_input(fixed, grid, prep, dev), model_input(moving, grid, prep, dev)
    timings["preprocess"] = time.perf_counter() - t_start

    t = time.perf_counter()
    model = model.to(dev)
    was_training = model.training
    model.eval()
    config = getattr(model, "config", None)
    model_diffeo = bool(getattr(config, "diffeomorphic", False))
    int_steps = int(getattr(config, "int_steps", 7)) if model_diffeo else prep.int_steps

    def predict(moving_input: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The network's ``(velocity or None, flow)`` for ``moving_input`` onto ``f_grid``."""
        with torch.no_grad(), autocast:
            out = model(f_grid, moving_input)
        velocity = out.velocity.float() if model_diffeo and out.velocity is not None else None
        flow = out.flow.detach().float()  # float32 already: the model integrates outside autocast
        if diffeomorphic and not model_diffeo:
            velocity = flow
            flow = integrate_velocity(velocity, int_steps)
        return velocity, flow

    prior: torch.Tensor | None = None  # the composed flow of the passes before the last
    m_last = m_grid  # the moving image the last pass saw
    try:
        velocity, flow = predict(m_grid)
        for _ in range(passes - 1):
            prior = flow if prior is None else compose(prior, flow)
            with torch.no_grad():
                m_last = warp(m_grid, prior, mode="linear")
            velocity, flow = predict(m_last)
    finally:
        model.train(was_training)
    timings["network"] = time.perf_counter() - t

    if refine_steps:
        t = time.perf_counter()
        if recorded is not None:
            for key, value in recorded.items():
                options.setdefault(key, value)
        loss_cfg = prep.loss
        if isinstance(loss_cfg, Mapping):
            options.setdefault("similarity", loss_cfg.get("similarity", "ncc"))
            if "window" in loss_cfg:
                options.setdefault("window", loss_cfg["window"])
            # the training weights were set for the whole field, not for an update of it
            field_mode = options.get("regularise", "field") == "field"
            if field_mode and isinstance(loss_cfg.get("weights"), Mapping):
                options.setdefault("weights", dict(loss_cfg["weights"]))
        flow = refine_flow(
            f_grid,
            m_last,
            flow,
            int(refine_steps),
            velocity=velocity,
            int_steps=int_steps,
            **options,
        )
        timings["refine"] = time.perf_counter() - t
    if prior is not None:
        with torch.no_grad():
            flow = compose(prior, flow)

    t = time.perf_counter()
    with torch.no_grad():
        fixed_flow = flow_to_fixed_grid(flow.float(), grid, fixed.affine, fixed.shape)
        warped = warp_volume(moving, fixed_flow, fixed.affine, "image")[0, 0]
        warped_labels = None
        if moving_labels is not None:
            lab = warp_volume(moving_labels, fixed_flow, fixed.affine, "label")[0, 0].cpu().numpy()
            dtype = moving_labels.array.dtype
            warped_labels = Volume(lab.astype(dtype, copy=False), fixed.affine, fixed.header)
    timings["resample"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start
    return RegistrationResult(
        fixed=fixed,
        moving=moving,
        warped=Volume(warped.cpu().numpy().astype(np.float32), fixed.affine, fixed.header),
        flow=fixed_flow[0].cpu().numpy().astype(np.float32),
        grid=grid,
        grid_flow=flow.detach().cpu(),
        warped_labels=warped_labels,
        fixed_labels=fixed_labels,
        moving_labels=moving_labels,
        device=str(dev),
        timings=timings,
        passes=passes,
    )
