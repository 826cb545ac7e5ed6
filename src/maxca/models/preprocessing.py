"""How a trained model expects its inputs: the typed record stored in a checkpoint's ``data``.

The trainer (:meth:`maxca.training.trainer.Trainer.data_record`) and the benchmark helpers write
a :class:`Preprocessing`; :func:`maxca.models.checkpoint.save_checkpoint` stores it as the
``data`` entry of ``model.json`` (:meth:`Preprocessing.to_dict`) and inference
(:func:`maxca.inference.register_pair`) reads it back with :meth:`Preprocessing.of`.

Checkpoints written before this record existed hold an untyped dict with both spellings
``normalise`` and ``normalize``; :meth:`Preprocessing.from_dict` reads those unchanged (the
British spelling wins when both are present) and keeps keys it does not know in ``extra``.
Values are checked where their meaning depends on the image (grid ``shape``/``spacing`` against
the image dimension in :func:`maxca.inference.register.model_grid`, the normalisation name in
:func:`maxca.inference.register.register_pair`), so an odd record still loads and fails with a
clear message only when used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["DEFAULT_PERCENTILES", "Preprocessing"]

DEFAULT_PERCENTILES = (1.0, 99.0)
_OFF = (None, "none", "null", False)  # spellings of "no intensity normalisation"


def _as_tuple(value: Any) -> tuple[Any, ...] | None:
    """``None`` stays ``None``; a scalar becomes a 1-tuple; a sequence a tuple."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return (value,)
    return tuple(value.tolist() if hasattr(value, "tolist") else value)


@dataclass(frozen=True)
class Preprocessing:
    """The model grid and intensity preprocessing a registration network was trained with.

    Attributes:
        shape: spatial shape ``(D0, D1[, D2])`` of the model grid (array axis order), or
            ``None`` for the fixed image's own shape.
        spacing: voxel size in mm of the model grid per array axis (one value = all axes), or
            ``None``. With ``shape`` only, the spacing spreads the fixed image's extent.
        spatial_dims: 2 or 3 (``None``: unknown, taken from the model).
        in_channels: image channels per input (1).
        normalise: intensity normalisation of each image before resampling onto the model grid
            (a name of :data:`maxca.data.transforms.NORMALISATIONS`), or ``None`` for none.
        percentiles: ``(low, high)`` percentiles of the ``"percentile"`` normalisation.
        resize: how training brought images onto the grid (``"resample"``, ``"crop_pad"``).
        label_ids: evaluation labels of the training data.
        dataset: the training dataset path, as given in the config (information only).
        loss: training loss settings (``similarity``, ``window``, ``weights``), the defaults of
            instance optimisation at inference; ``None`` when unknown.
        int_steps: scaling-and-squaring steps used when inference integrates the output of a
            non-diffeomorphic model as a stationary velocity (``diffeomorphic=True``).
        extra: keys of a stored record that are none of the above, kept verbatim.
    """

    shape: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None
    spatial_dims: int | None = None
    in_channels: int = 1
    normalise: str | None = "minmax"
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES
    resize: str | None = None
    label_ids: tuple[int, ...] = ()
    dataset: str | None = None
    loss: Mapping[str, Any] | None = None
    int_steps: int = 7
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Preprocessing | Mapping[str, Any] | None) -> Preprocessing:
        """Read a checkpoint ``data`` entry, new or old format (``normalize`` accepted).

        Missing keys take the defaults that inference has always assumed: the fixed grid,
        ``"minmax"`` normalisation, percentiles ``(1, 99)``. A :class:`Preprocessing` is
        returned as it is.
        """
        if isinstance(data, Preprocessing):
            return data
        data = dict(data or {})
        known = {f.name for f in fields(cls)} - {"extra"}
        if "normalise" in data:
            mode = data.pop("normalise")
            data.pop("normalize", None)
        else:
            mode = data.pop("normalize", "minmax")
        pct = data.pop("percentiles", None)
        spatial_dims = data.pop("spatial_dims", None)
        loss = data.pop("loss", None)
        return cls(
            shape=_as_tuple(data.pop("shape", None)),
            spacing=_as_tuple(data.pop("spacing", None)),
            spatial_dims=None if spatial_dims is None else int(spatial_dims),
            in_channels=int(data.pop("in_channels", 1)),
            normalise=None if mode in _OFF else mode,
            percentiles=DEFAULT_PERCENTILES if pct is None else (float(pct[0]), float(pct[1])),
            resize=data.pop("resize", None),
            label_ids=tuple(int(v) for v in (data.pop("label_ids", None) or ())),
            dataset=data.pop("dataset", None),
            loss=dict(loss) if isinstance(loss, Mapping) else loss,
            int_steps=int(data.pop("int_steps", 7)),
            extra={k: v for k, v in data.items() if k not in known},
        )

    @classmethod
    def of(cls, info: Any) -> Preprocessing:
        """The record of a loaded checkpoint: ``info.preprocessing`` when it is one, else
        ``info.data`` read with :meth:`from_dict`; ``None`` gives the defaults."""
        if info is None:
            return cls()
        if isinstance(info, Preprocessing):
            return info
        prep = getattr(info, "preprocessing", None)
        if isinstance(prep, Preprocessing):
            return prep
        return cls.from_dict(getattr(info, "data", None))

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready ``data`` entry of ``model.json`` (one spelling: ``normalise``)."""
        out: dict[str, Any] = {
            "shape": None if self.shape is None else list(self.shape),
            "spacing": None if self.spacing is None else list(self.spacing),
            "spatial_dims": self.spatial_dims,
            "in_channels": self.in_channels,
            "normalise": self.normalise,
            "percentiles": list(self.percentiles),
            "resize": self.resize,
            "label_ids": list(self.label_ids),
            "dataset": self.dataset,
            "loss": None if self.loss is None else dict(self.loss),
            "int_steps": self.int_steps,
        }
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out
