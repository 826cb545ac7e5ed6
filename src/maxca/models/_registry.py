"""A small model registry: ``@register_model``, ``create_model``, ``list_models``.

Every registered name maps to a builder (a model class or any callable taking one config
instance), the config dataclass it takes, and optional default overrides, so that variants
of one network (``pyramid`` / ``pyramid_small``) share one implementation and differ only in
their defaults::

    @register_model("pyramid", PyramidConfig)
    class PyramidNet(RegistrationModel): ...

    register_model("pyramid_small", PyramidConfig, defaults={"enc_channels": 8})(PyramidNet)

    model = create_model("pyramid_small", spatial_dims=2, attention="xca")
    same = model_from_config(model.config_dict())  # {"name": ..., **fields}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch.nn as nn

from maxca.errors import MaxcaInputError

__all__ = [
    "register_model",
    "create_model",
    "list_models",
    "get_config_class",
    "get_default_config",
    "model_from_config",
    "count_parameters",
    "registered_name",
]

T = TypeVar("T")


@dataclass(frozen=True)
class _Entry:
    name: str
    builder: Callable[[Any], nn.Module]
    config_cls: type
    defaults: Mapping[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, _Entry] = {}


def register_model(
    name: str, config_cls: type, defaults: Mapping[str, Any] | None = None
) -> Callable[[T], T]:
    """Register ``builder`` (a model class or a callable ``config -> nn.Module``) under ``name``.

    Args:
        name: the registry name (``create_model(name)``).
        config_cls: the config dataclass the builder takes; ``create_model`` builds it from
            keyword arguments.
        defaults: field values that replace ``config_cls``'s defaults for this name (variants).

    Returns:
        A decorator that registers its argument and returns it unchanged. Registering a
        different builder under a name already taken raises ``ValueError`` (a programming error).
    """
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"config_cls must be a dataclass, got {config_cls!r}")
    fields = {f.name for f in dataclasses.fields(config_cls)}
    defaults = dict(defaults or {})
    unknown = sorted(set(defaults) - fields)
    if unknown:
        raise TypeError(
            f"defaults for {name!r} name unknown fields of {config_cls.__name__}: {unknown}"
        )

    def decorator(builder: T) -> T:
        entry = _Entry(name, builder, config_cls, defaults)  # type: ignore[arg-type]
        old = _REGISTRY.get(name)
        if old is not None and (old.builder is not builder or old.config_cls is not config_cls):
            raise ValueError(f"a model named {name!r} is already registered")
        _REGISTRY[name] = entry
        return builder

    return decorator


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_REGISTRY)


def _entry(name: object) -> _Entry:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise MaxcaInputError(f"unknown model {name!r}; expected one of {list_models()}")
    return _REGISTRY[name]


def registered_name(builder: object) -> str | None:
    """The first registered name (sorted) whose builder is ``builder``, or ``None``."""
    for name in list_models():
        if _REGISTRY[name].builder is builder:
            return name
    return None


def get_config_class(name: str) -> type:
    """The config dataclass of the registered model ``name``."""
    return _entry(name).config_cls


def get_default_config(name: str, **overrides: Any) -> Any:
    """The config instance ``create_model(name, **overrides)`` would build the model from."""
    entry = _entry(name)
    allowed = [f.name for f in dataclasses.fields(entry.config_cls)]
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise MaxcaInputError(
            f"unknown option(s) {unknown} for model {name!r}; expected some of {allowed}"
        )
    return entry.config_cls(**{**entry.defaults, **overrides})


def create_model(name: str, **config: Any) -> nn.Module:
    """Build the registered model ``name`` with its config fields overridden by ``config``.

    Unknown names and unknown or invalid options raise :class:`MaxcaInputError`. The model gets
    a ``model_name`` attribute (the registry name) so that ``model.config_dict()`` can rebuild it.
    """
    entry = _entry(name)
    cfg = get_default_config(name, **config)
    model = entry.builder(cfg)
    model.model_name = name
    return model


def model_from_config(config: Mapping[str, Any]) -> nn.Module:
    """Rebuild a model from ``{"name": <registry name>, **config fields}`` (e.g. parsed JSON).

    Lists are accepted where the config holds tuples; the config's ``__post_init__`` turns
    them back into tuples.
    """
    if not isinstance(config, Mapping) or "name" not in config:
        raise MaxcaInputError(
            f"expected a mapping with a 'name' key and config fields, got {config!r}"
        )
    fields = dict(config)
    name = fields.pop("name")
    return create_model(name, **fields)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of scalar parameters of ``model`` (only those with ``requires_grad`` by default)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
