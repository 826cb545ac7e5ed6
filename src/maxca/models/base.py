"""What every registration network shares: its config, its output and its forward contract.

A host network (``pyramid``, ``unet``, ``hybrid``) subclasses :class:`RegistrationModel` and
implements only :meth:`RegistrationModel.predict_field` on inputs whose size is a multiple of
:attr:`RegistrationModel.size_multiple`. The base class validates the inputs, pads them at the
end of each axis, crops the predicted field back exactly (so the flow at a real voxel is the
network's output at that voxel, with no resampling), integrates it when the model is
diffeomorphic, and warps the moving image. Conventions: docs/conventions.md (arrays ``(B, C,
*S)`` in file axis order; flows ``(B, d, *S)`` voxel displacements, channel ``k`` along spatial
axis ``k``; backward warping ``warped(p) = moving(p + flow(p))``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from maxca.errors import MaxcaInputError
from maxca.layers.attention import ATTENTION_KINDS
from maxca.layers.factories import check_spatial_dims
from maxca.models._registry import registered_name
from maxca.spatial import integrate_velocity, warp

__all__ = ["ModelConfig", "RegistrationModel", "RegistrationOutput", "PAD_MODES"]

PAD_MODES = ("replicate", "zeros")


# ---------------------------------------------------------------------------------------------
# validation helpers for config fields (one-line messages: expected vs given)
# ---------------------------------------------------------------------------------------------
def as_int(value: object, name: str, minimum: int) -> int:
    """``value`` as an ``int >= minimum`` (bools and non-integral numbers are refused)."""
    if isinstance(value, bool):
        raise MaxcaInputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    try:
        out = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise MaxcaInputError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if out < minimum:
        raise MaxcaInputError(f"{name} must be an integer >= {minimum}, got {out}")
    return out


def as_bool(value: object, name: str) -> bool:
    """``value`` if it is a bool (``True``/``False``), else an error."""
    if not isinstance(value, bool):
        raise MaxcaInputError(f"{name} must be true or false, got {value!r}")
    return value


def as_choice(value: object, name: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``, else an error listing them."""
    if not isinstance(value, str) or value not in choices:
        raise MaxcaInputError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def as_int_tuple(
    value: object, name: str, minimum: int = 1, length: int | None = None
) -> tuple[int, ...]:
    """A sequence (tuple or list, e.g. from JSON) of ints ``>= minimum`` as a tuple."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise MaxcaInputError(f"{name} must be a sequence of integers, got {value!r}")
    out = tuple(as_int(v, f"{name}[{i}]", minimum) for i, v in enumerate(value))
    if length is not None and len(out) != length:
        raise MaxcaInputError(f"{name} must have {length} entries, got {len(out)}: {value!r}")
    if not out:
        raise MaxcaInputError(f"{name} must not be empty")
    return out


def per_axis(value: object, name: str, spatial_dims: int, minimum: int = 1) -> tuple[int, ...]:
    """A scalar or a per-axis sequence of ints as a tuple of ``spatial_dims`` ints."""
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        if len(value) == 1:
            value = value[0]
        else:
            return as_int_tuple(value, name, minimum, length=spatial_dims)
    return (as_int(value, name, minimum),) * spatial_dims


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class ModelConfig:
    """Options every host network takes. Subclasses add their channel widths.

    Attributes:
        spatial_dims: 2 or 3.
        in_channels: channels ``C`` of the fixed and of the moving image (each).
        attention: the attention block, one of ``ATTENTION_KINDS`` (``"maxca", "regional",
            "dilated", "window", "global_sa", "xca", "none"``; see maxca.layers.attention).
        heads: attention heads; must divide the channel width wherever attention runs.
        region: MAXCA region / window size, a scalar or one int per spatial axis (normalised to
            a ``spatial_dims``-tuple).
        attention_levels: resolution levels (0 = full resolution, ``l`` = ``1/2**l``) that get
            attention blocks; ``None`` = the host's default levels. An explicit tuple is strict:
            ``global_sa`` then runs at every listed level and refuses (``MaxcaInputError``) an
            input whose token count there exceeds its limit. With ``None``, ``global_sa`` runs
            only at the levels whose token count fits and is the identity elsewhere.
        diffeomorphic: predict a stationary velocity field and integrate it (scaling and
            squaring) into the flow.
        int_steps: squaring steps of the integration (``>= 1``).
        checkpoint: recompute activations in backward (gradient checkpointing) to save memory.
        pad_mode: how inputs are padded at the end of each axis to the size the network needs:
            ``"replicate"`` (edge values) or ``"zeros"``.
        global_sa_max_tokens: token limit of ``global_sa`` blocks (``None`` = the layer's
            default).
        drop: dropout rate inside every attention block (``0 <= drop < 1``).
    """

    spatial_dims: int = 3
    in_channels: int = 1
    attention: str = "maxca"
    heads: int = 4
    region: int | tuple[int, ...] = 8
    attention_levels: tuple[int, ...] | None = None
    diffeomorphic: bool = False
    int_steps: int = 7
    checkpoint: bool = False
    pad_mode: str = "replicate"
    global_sa_max_tokens: int | None = None
    drop: float = 0.0

    def __post_init__(self) -> None:
        self.spatial_dims = check_spatial_dims(as_int(self.spatial_dims, "spatial_dims", 0))
        self.in_channels = as_int(self.in_channels, "in_channels", 1)
        self.attention = as_choice(self.attention, "attention", ATTENTION_KINDS)
        self.heads = as_int(self.heads, "heads", 1)
        self.region = per_axis(self.region, "region", self.spatial_dims)
        if self.attention_levels is not None:
            levels = as_int_tuple(self.attention_levels, "attention_levels", 0)
            bad = [lv for lv in levels if lv not in self.level_choices()]
            if bad:
                raise MaxcaInputError(
                    f"attention_levels must be drawn from {list(self.level_choices())} for "
                    f"{type(self).__name__}, got {list(levels)}"
                )
            self.attention_levels = tuple(sorted(set(levels)))
        self.diffeomorphic = as_bool(self.diffeomorphic, "diffeomorphic")
        self.int_steps = as_int(self.int_steps, "int_steps", 1)
        self.checkpoint = as_bool(self.checkpoint, "checkpoint")
        self.pad_mode = as_choice(self.pad_mode, "pad_mode", PAD_MODES)
        if self.global_sa_max_tokens is not None:
            self.global_sa_max_tokens = as_int(self.global_sa_max_tokens, "global_sa_max_tokens", 1)
        if isinstance(self.drop, bool) or not isinstance(self.drop, (int, float)):
            raise MaxcaInputError(f"drop must be a number in [0, 1), got {self.drop!r}")
        if not 0.0 <= float(self.drop) < 1.0:
            raise MaxcaInputError(f"drop must be a number in [0, 1), got {self.drop!r}")
        self.drop = float(self.drop)

    def level_choices(self) -> tuple[int, ...]:
        """Resolution levels of the host that can hold attention blocks (hosts override)."""
        return (0,)

    def default_levels(self) -> tuple[int, ...]:
        """Levels that hold attention blocks when ``attention_levels`` is ``None``."""
        return self.level_choices()

    @property
    def levels_with_attention(self) -> tuple[int, ...]:
        """The levels that hold attention blocks (``attention_levels`` or the default)."""
        if self.attention == "none":
            return ()
        if self.attention_levels is not None:
            return self.attention_levels
        return self.default_levels()

    # -- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """All fields as a plain dict (tuples stay tuples; JSON writes them as lists)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Build a config from a dict of fields (lists are turned back into tuples)."""
        if not isinstance(data, Mapping):
            raise MaxcaInputError(f"expected a mapping of {cls.__name__} fields, got {data!r}")
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise MaxcaInputError(
                f"unknown field(s) {unknown} for {cls.__name__}; expected some of {allowed}"
            )
        return cls(**data)

    def to_json(self, indent: int | None = None) -> str:
        """The config as a JSON object string."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        """Inverse of :meth:`to_json`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MaxcaInputError(f"expected a JSON object for {cls.__name__}: {exc}") from None
        return cls.from_dict(data)


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------
@dataclass
class RegistrationOutput:
    """What ``model(fixed, moving)`` returns.

    Attributes:
        flow: ``(B, d, *S)`` voxel displacement at the full input resolution (channel ``k``
            along spatial axis ``k``), such that ``warped(p) = moving(p + flow(p))``.
        warped: ``(B, C, *S)`` the moving image warped by ``flow`` (linear, zero padding).
        velocity: ``(B, d, *S)`` the stationary velocity field with ``flow = exp(velocity)``
            when the model is diffeomorphic, else ``None``.
    """

    flow: torch.Tensor
    warped: torch.Tensor
    velocity: torch.Tensor | None = None


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------
class RegistrationModel(nn.Module):
    """Base class: ``forward(fixed (B, C, *S), moving (B, C, *S)) -> RegistrationOutput``.

    Subclasses set :attr:`config_cls` and :attr:`size_multiple` and implement
    :meth:`predict_field`. ``S`` may be any size: the inputs are padded at the end of each axis
    (``config.pad_mode``) to a multiple of ``size_multiple`` (see :meth:`padded_size`), the
    network runs on the padded grid and the field is cropped back by slicing. Padding at the end
    never moves a voxel, so no coordinate changes.
    """

    config_cls: ClassVar[type[ModelConfig]] = ModelConfig

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_cls):
            raise MaxcaInputError(
                f"{type(self).__name__} expects a {self.config_cls.__name__}, "
                f"got {type(config).__name__}"
            )
        self.config = config
        self.spatial_dims = config.spatial_dims
        self.model_name: str | None = None  # set by create_model

    # -- what subclasses implement ----------------------------------------------------------
    @property
    def size_multiple(self) -> int:
        """Every spatial size the network runs on is a multiple of this (``2**coarsest``)."""
        return 1

    def predict_field(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        """The network proper: ``(B, C, *P), (B, C, *P) -> (B, d, *P)`` with every ``P[k]`` a
        multiple of :attr:`size_multiple`. Returns the flow, or the velocity when
        ``config.diffeomorphic``."""
        raise NotImplementedError

    # -- helpers for subclasses -------------------------------------------------------------
    def field_to_flow(self, field: torch.Tensor) -> torch.Tensor:
        """``field`` (B, d, *S) as a displacement: integrated when the model is diffeomorphic."""
        if self.config.diffeomorphic:
            return integrate_velocity(field, self.config.int_steps)
        return field

    # -- public API ---------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        """``{"name": registry name, **config fields}``: ``model_from_config`` rebuilds it.

        A model built without ``create_model`` is named after the first registered name of its
        class (the dict holds every field, so variants of one class rebuild identically).
        """
        name = self.model_name or registered_name(type(self))
        if name is None:
            raise MaxcaInputError(
                f"{type(self).__name__} is not a registered model; register it with "
                "register_model or set model.model_name"
            )
        return {"name": name, **self.config.to_dict()}

    def attention_plan(self, size: Sequence[int]) -> dict[int, bool]:
        """For an input of spatial size ``size``: ``{level: runs}`` for every level holding an
        attention block, ``runs`` False where a ``global_sa`` block is skipped because its token
        count exceeds its limit (see ``ModelConfig.attention_levels``)."""
        padded = self.padded_size(size)
        plan: dict[int, bool] = {}
        for module in self.modules():
            level = getattr(module, "level", None)
            runs_at = getattr(module, "runs_at", None)
            if level is None or runs_at is None:
                continue
            shape = tuple(n // 2**level for n in padded)
            plan[level] = plan.get(level, False) or bool(runs_at(shape))
        return dict(sorted(plan.items()))

    def padded_size(self, size: Sequence[int]) -> tuple[int, ...]:
        """The spatial size the network runs on for an input of spatial size ``size``.

        Each axis is rounded up to a multiple of :attr:`size_multiple`; if the coarsest level
        would then hold a single voxel, the last axis gets one more block (instance norm needs
        more than one voxel).
        """
        m = self.size_multiple
        out = [max(m, math.ceil(int(n) / m) * m) for n in size]
        if all(n == m for n in out) and m > 1:
            out[-1] += m
        return tuple(out)

    def check_inputs(self, fixed: object, moving: object) -> None:
        """Raise :class:`MaxcaInputError` unless ``fixed`` and ``moving`` are valid inputs."""
        d = self.spatial_dims
        for name, x in (("fixed", fixed), ("moving", moving)):
            if not isinstance(x, torch.Tensor):
                raise MaxcaInputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
            if x.dim() != d + 2:
                raise MaxcaInputError(
                    f"{name} must have {d + 2} dims (B, C, {', '.join(f'D{k}' for k in range(d))})"
                    f" for spatial_dims={d}, got shape {tuple(x.shape)}"
                )
            if not x.is_floating_point():
                raise MaxcaInputError(f"{name} must be a floating tensor, got dtype {x.dtype}")
            if x.shape[1] != self.config.in_channels:
                raise MaxcaInputError(
                    f"{name} must have in_channels={self.config.in_channels} channels, "
                    f"got shape {tuple(x.shape)}"
                )
        assert isinstance(fixed, torch.Tensor) and isinstance(moving, torch.Tensor)
        if fixed.shape != moving.shape:
            raise MaxcaInputError(
                f"fixed and moving must have the same shape, got fixed {tuple(fixed.shape)} "
                f"and moving {tuple(moving.shape)}"
            )
        param = next(self.parameters(), None)
        if param is not None:
            for name, x in (("fixed", fixed), ("moving", moving)):
                if x.device != param.device or x.dtype != param.dtype:
                    raise MaxcaInputError(
                        f"{name} must be a {param.dtype} tensor on {param.device} like the "
                        f"model, got {x.dtype} on {x.device}"
                    )

    def _pad(self, x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        """Pad ``x`` (B, C, *S) at the end of each axis to ``size``."""
        pad: list[int] = []
        for n, target in zip(reversed(x.shape[2:]), reversed(size)):  # F.pad: last axis first
            pad += [0, target - n]
        if not any(pad):
            return x
        if self.config.pad_mode == "zeros":
            return F.pad(x, pad)
        return F.pad(x, pad, mode="replicate")

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> RegistrationOutput:
        """Register ``moving`` to ``fixed``.

        Args:
            fixed: ``(B, C, *S)`` floating, ``S`` of ``spatial_dims`` axes in file axis order,
                ``C = config.in_channels``.
            moving: same shape as ``fixed``.

        Returns:
            :class:`RegistrationOutput` with ``flow`` ``(B, d, *S)``, ``warped`` ``(B, C, *S)``
            and ``velocity`` ``(B, d, *S)`` or ``None``. When diffeomorphic,
            ``flow == integrate_velocity(velocity, config.int_steps)`` exactly (the velocity is
            cropped to the input grid first).
        """
        self.check_inputs(fixed, moving)
        size = tuple(fixed.shape[2:])
        padded = self.padded_size(size)
        field = self.predict_field(self._pad(fixed, padded), self._pad(moving, padded))
        if tuple(field.shape[2:]) != padded:  # a bug in the host, not a user error
            raise RuntimeError(f"predict_field returned {tuple(field.shape)} for size {padded}")
        field = field[(slice(None), slice(None)) + tuple(slice(0, n) for n in size)]
        # under autocast (e.g. bf16) the network's field comes out in the low precision; the
        # geometry (integration, warping) runs in the inputs' precision
        field = field.to(moving.dtype)
        velocity = field if self.config.diffeomorphic else None
        with torch.autocast(device_type=field.device.type, enabled=False):
            flow = self.field_to_flow(field)
            warped = warp(moving, flow)
        return RegistrationOutput(flow=flow, warped=warped, velocity=velocity)
