"""Trained models shipped inside the package: ``maxca register --model brain``, offline.

Each entry is an ordinary maxca checkpoint folder (``model.safetensors`` + ``model.json``,
loaded strictly, never executing code) under ``maxca/weights/<name>/``. Its model card is
``docs/models.md``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from maxca.errors import MaxcaInputError
from maxca.models.checkpoint import META, WEIGHTS, CheckpointInfo, load_checkpoint

__all__ = [
    "PRETRAINED",
    "PretrainedModel",
    "list_pretrained",
    "load_pretrained",
    "pretrained_path",
    "resolve_model",
]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class PretrainedModel:
    """A packaged model.

    Attributes:
        name: what ``--model`` accepts.
        description: one line for ``maxca models``.
        affine: whether ``maxca register`` pre-aligns affinely by default with this model.
        intended_use: the inputs it was trained for.
    """

    name: str
    description: str
    affine: bool
    intended_use: str

    @property
    def path(self) -> Path:
        """The checkpoint folder inside the installed package."""
        return WEIGHTS_DIR / self.name

    @property
    def available(self) -> bool:
        return (self.path / META).is_file() and (self.path / WEIGHTS).is_file()


PRETRAINED: dict[str, PretrainedModel] = {
    "brain": PretrainedModel(
        name="brain",
        description=(
            "pyramid_small + MAXCA, diffeomorphic, 2 mm model grid (80x96x112), trained on "
            "images synthesised from brain label maps (contrast-agnostic)"
        ),
        affine=True,
        intended_use="skull-stripped brain MRI of any contrast, 3-D",
    ),
}


def list_pretrained() -> list[PretrainedModel]:
    """The packaged models, by name."""
    return [PRETRAINED[k] for k in sorted(PRETRAINED)]


def pretrained_path(name: str) -> Path:
    """The checkpoint folder of a packaged model (``MaxcaInputError`` for an unknown name or
    missing weights)."""
    spec = PRETRAINED.get(name)
    if spec is None:
        raise MaxcaInputError(
            f"unknown packaged model {name!r}; available: {', '.join(sorted(PRETRAINED))}"
        )
    if not spec.available:
        raise MaxcaInputError(
            f"the weights of packaged model {name!r} are missing from {spec.path} "
            "(a broken installation: reinstall maxca)"
        )
    return spec.path


def resolve_model(model: str | os.PathLike[str]) -> tuple[Path, PretrainedModel | None]:
    """A ``--model`` argument as a path: an existing path as given, else a packaged name.

    Returns:
        ``(checkpoint path, the packaged model or None)``.
    """
    path = Path(model)
    if path.exists() or str(model) not in PRETRAINED:
        return path, None
    return pretrained_path(str(model)), PRETRAINED[str(model)]


def load_pretrained(
    name: str = "brain", device: str | torch.device = "cpu"
) -> tuple[nn.Module, CheckpointInfo]:
    """Load a packaged model (eval mode) and its :class:`CheckpointInfo`.

    Example::

        model, info = maxca.load_pretrained("brain")
    """
    model, info = load_checkpoint(pretrained_path(name), map_location=device)
    model.eval()
    return model, info
