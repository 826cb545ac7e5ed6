"""Instance optimisation: refine a predicted flow on one pair with the training loss.

The network's flow (or, for a diffeomorphic transform, its stationary velocity field) becomes a
free parameter on the model grid, initialised at the prediction, and is optimised with Adam on
``RegistrationLoss`` (local NCC + diffusion by default) for a fixed number of steps. The step
size is in voxels: with Adam each displacement moves by about ``lr`` voxel per step at most.

What the regulariser acts on (``regularise``):

* ``"field"`` (default): the whole field, as in training. The smoothness weight then also pulls
  the network's prediction towards a smoother (flatter) field.
* ``"update"``: the change from the prediction, ``field - prediction``. The network's own field
  is kept as the starting point and only the correction has to be smooth; with zero similarity
  weight nothing moves. On the packaged ``brain`` model (trained with a Dice term, so its field
  follows anatomy that the image similarity cannot see) ``"field"`` lowered Dice where
  ``"update"`` raised it; its record asks for ``"update"`` (docs/models.md).

With ``regularise="update"``, ``resolution=k`` optimises the change on a grid ``k`` times
coarser per axis and adds its linear upsampling to the prediction: fewer unknowns, a smoother
correction.

A checkpoint record may carry a ``refine`` entry (keyword arguments of :func:`refine_flow`,
e.g. ``{"regularise": "update", "lr": 0.05}``): ``register_pair`` uses it as the defaults of
its refinement.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from maxca.errors import MaxcaInputError
from maxca.losses import RegistrationLoss
from maxca.spatial import integrate_velocity, warp

__all__ = ["refine_flow"]

DEFAULT_WEIGHTS = {"similarity": 1.0, "diffusion": 1.0}
REGULARISE = ("update", "field")


def refine_flow(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    flow: torch.Tensor,
    steps: int,
    velocity: torch.Tensor | None = None,
    lr: float = 0.1,
    weights: Mapping[str, float] | None = None,
    similarity: str = "ncc",
    window: int | Sequence[int] = 9,
    int_steps: int = 7,
    progress: bool = False,
    regularise: str = "field",
    callback: Callable[[int, torch.Tensor], None] | None = None,
    resolution: int = 1,
) -> torch.Tensor:
    """Optimise a flow on one image pair, starting from the network's prediction.

    Args:
        fixed: ``(1, C, *S)`` normalised fixed image on the model grid.
        moving: ``(1, C, *S)`` normalised moving image on the same grid.
        flow: ``(1, d, *S)`` initial voxel displacement (used when ``velocity`` is ``None``).
        steps: number of Adam steps (``>= 0``; 0 returns ``flow`` unchanged).
        velocity: ``(1, d, *S)`` initial stationary velocity: when given, the velocity is
            optimised and the returned flow is its scaling-and-squaring integral
            (``int_steps``), so the result stays diffeomorphic.
        lr: Adam learning rate, in voxels.
        weights: loss weights (default ``{"similarity": 1, "diffusion": 1}``); the regulariser
            acts on the optimised field (flow or velocity) or on its change, see
            ``regularise``. A ``dice`` weight (a training term that needs label maps) is
            ignored.
        similarity: ``"ncc"``, ``"mse"`` or ``"mind"`` (MIND-SSC, for pairs of different
            contrasts).
        window: NCC window.
        int_steps: integration steps for ``velocity``.
        progress: show a progress bar on stderr (only when stderr is a terminal).
        regularise: ``"field"`` (the regulariser acts on the whole field) or ``"update"``
            (on ``field - initial field``); see the module docstring.
        callback: called after every step as ``callback(step, field)`` with the step number
            (from 1) and the optimised field (the velocity when ``velocity`` is given, else the
            flow; ``(1, d, *S)``, detached): to monitor or score the refinement.
        resolution: with ``regularise="update"``, the change is a ``(1, d, *ceil(S / k))``
            field on a ``k`` times coarser grid, upsampled linearly (corners aligned) to ``S``
            and added to the initial field; 1 (default) optimises every voxel.

    Returns:
        ``(1, d, *S)`` refined voxel displacement (detached, same device and dtype as ``flow``).
    """
    if isinstance(steps, bool) or int(steps) != steps or steps < 0:
        raise MaxcaInputError(f"refine steps must be an integer >= 0, got {steps!r}")
    if not lr > 0:
        raise MaxcaInputError(f"refine learning rate must be > 0, got {lr!r}")
    if regularise not in REGULARISE:
        raise MaxcaInputError(f"refine regularise must be one of {REGULARISE}, got {regularise!r}")
    if isinstance(resolution, bool) or int(resolution) != resolution or resolution < 1:
        raise MaxcaInputError(f"refine resolution must be an integer >= 1, got {resolution!r}")
    if resolution > 1 and regularise != "update":
        raise MaxcaInputError('refine resolution > 1 needs regularise="update"')
    d = fixed.dim() - 2
    if flow.shape != (fixed.shape[0], d, *fixed.shape[2:]):
        raise MaxcaInputError(
            f"flow must have shape {(fixed.shape[0], d, *fixed.shape[2:])}, got {tuple(flow.shape)}"
        )
    if steps == 0:
        return flow.detach()
    terms = {k: float(v) for k, v in (weights or DEFAULT_WEIGHTS).items() if k != "dice"}
    loss_fn = RegistrationLoss(d, similarity=similarity, weights=terms, window=window).to(
        fixed.device
    )
    init = velocity if velocity is not None else flow
    start = init.detach().clone().float()
    spatial = tuple(start.shape[2:])
    if resolution > 1:
        coarse = tuple(-(-n // int(resolution)) for n in spatial)
        param = torch.nn.Parameter(start.new_zeros((*start.shape[:2], *coarse)))
    else:
        param = torch.nn.Parameter(start.clone())
    mode = "bilinear" if d == 2 else "trilinear"

    def field_of(p: torch.Tensor) -> torch.Tensor:
        """The optimised field (velocity or flow) at full resolution, ``(1, d, *S)``."""
        if resolution == 1:
            return p
        return start + F.interpolate(p, size=spatial, mode=mode, align_corners=True)

    optimiser = torch.optim.Adam([param], lr=lr)
    fixed, moving = fixed.detach().float(), moving.detach().float()
    bar = tqdm(
        total=int(steps),
        desc="refine",
        unit="step",
        file=sys.stderr,
        disable=None if progress else True,
        dynamic_ncols=True,
    )
    with torch.enable_grad(), bar:
        for step in range(int(steps)):
            optimiser.zero_grad(set_to_none=True)
            full = field_of(param)
            current = integrate_velocity(full, int_steps) if velocity is not None else full
            regularised = full - start if regularise == "update" else full
            loss, _ = loss_fn(fixed, warp(moving, current), regularised)
            loss.backward()
            optimiser.step()
            bar.update(1)
            if callback is not None:
                with torch.no_grad():
                    callback(step + 1, field_of(param.detach()))
    with torch.no_grad():
        full = field_of(param)
        out = integrate_velocity(full, int_steps) if velocity is not None else full
    return out.detach().to(flow.dtype)
