"""Experiment configuration: typed dataclasses <-> YAML, with ``key=value`` overrides.

A config file is a YAML mapping with the sections of :class:`ExperimentConfig`::

    model:  {name: pyramid_small, config: {attention: maxca}}
    data:   {path: ../shared/data/brain-synth-2mm/dataset.json, shape: [80, 96, 112]}
    loss:   {similarity: ncc, window: 9, weights: {similarity: 1, diffusion: 1}}
    optim:  {lr: 3.0e-4, schedule: cosine}
    budget: {steps: 2000}
    val_every: 100

Overrides use dotted keys and are parsed against the field's type, so ``optim.lr=3e-4`` is a
float (plain YAML would read ``3e-4`` as a string), ``data.shape=[80,96,112]`` or
``data.shape=80,96,112`` a list of ints, ``budget.minutes=none`` clears a field. Keys under
``model.config`` are free (they are the model's own options, checked by ``create_model``); any
other unknown key raises :class:`~maxca.errors.MaxcaInputError` naming the key and the valid ones.

Relative ``data.path`` / ``data.labels`` are resolved against the working directory, or, when
nothing exists there, against the config file's folder; the resolved config (absolute paths) is
what :func:`save_config` writes into the run directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from maxca._atomic import atomic_write_text
from maxca._checks import NORMALISATIONS, PAIR_MODES, SIMILARITIES, check_device_name
from maxca.accel import MEMORY_FORMATS
from maxca.errors import MaxcaInputError

__all__ = [
    "AMP_MODES",
    "PAIR_MODES",
    "SCHEDULES",
    "BudgetConfig",
    "DataConfig",
    "ExperimentConfig",
    "LossConfig",
    "LossWeights",
    "ModelSection",
    "OptimConfig",
    "apply_overrides",
    "config_from_dict",
    "config_reference",
    "load_config",
    "save_config",
]

RESIZE_MODES = ("crop_or_pad", "resample")
SCHEDULES = ("constant", "cosine", "poly")
AMP_MODES = ("none", "bf16", "fp16")
VAL_SPLITS = ("registration_val", "registration_test")
SYNTH_MODES = ("labels",)
SYNTH_CONTRASTS = ("independent", "shared")


def _choice(value: Any, key: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise MaxcaInputError(f"{key} must be one of {list(choices)}, got {value!r}")


def _positive(value: float | None, key: str, allow_zero: bool = False) -> None:
    if value is None:
        return
    if not (value >= 0 if allow_zero else value > 0):
        bound = ">= 0" if allow_zero else "> 0"
        raise MaxcaInputError(f"{key} must be {bound}, got {value!r}")


# ---------------------------------------------------------------------------------------------
# sections
# ---------------------------------------------------------------------------------------------
@dataclass
class ModelSection:
    """The network: a registered name and its options.

    Attributes:
        name: registry name (``maxca.models.list_models()``).
        config: options passed to ``create_model(name, **config)``; ``spatial_dims`` defaults to
            the number of axes of the training images.
    """

    name: str = "pyramid_small"
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            raise MaxcaInputError("model.name must be a registered model name, got empty")


def _check_model(model: ModelSection, shape: Sequence[int] | None) -> None:
    """Validate ``model.name`` and ``model.config`` now, before any data is read.

    The options are checked by the model's own config class (as ``create_model`` would); when
    the config gives no ``spatial_dims`` they are tried for the grid's axes (``data.shape``),
    or for 3-D and 2-D when the grid comes from the files.
    """
    from maxca.models import get_default_config, list_models

    if model.name not in list_models():
        raise MaxcaInputError(f"model.name must be one of {list_models()}, got {model.name!r}")
    options = dict(model.config)
    if "spatial_dims" in options:
        dims: tuple[int, ...] = (options.pop("spatial_dims"),)
    else:
        dims = (len(shape),) if shape else (3, 2)
    errors = []
    for d in dims:
        try:
            get_default_config(model.name, spatial_dims=d, **options)
            return
        except (MaxcaInputError, TypeError, ValueError) as exc:
            errors.append(exc)
    raise MaxcaInputError(f"model.config: {errors[0]}") from errors[0]


@dataclass
class DataConfig:
    """Training and validation data.

    Attributes:
        path: a Learn2Reg ``dataset.json`` (or its folder), or a plain folder of NIfTI images.
        labels: for a plain folder: a folder with a label map of the same name per image.
        pairs: training pairs: ``random`` inter-subject, ``atlas`` (``atlas`` is the fixed
            image) or ``pairs`` (the dataset's ``registration_val`` list).
        atlas: for ``pairs: atlas``: index into ``training`` or the path of an atlas image.
        pairs_per_epoch: pairs per epoch (default: one per subject).
        shape: the model grid: every volume is brought to this spatial shape (default: the
            file's shape).
        resize: how volumes reach ``shape``: ``crop_or_pad`` (centred) or ``resample``.
        normalise: intensity normalisation: ``minmax``, ``percentile``, ``zscore`` or ``null``.
        augment: random flips/affine/intensity jitter of each training volume.
        cache: keep preprocessed volumes in memory.
        workers: DataLoader worker processes (0: load in the training process).
        batch_size: pairs per optimisation step (per process under DDP).
        val_pairs: validation pairs: ``registration_val``/``registration_test`` (from the
            dataset json), a list of ``[fixed, moving]`` image paths, or ``null`` (none).
        max_val_pairs: validate on at most this many pairs (``null``: all).
        synth: ``labels`` to train on images synthesised afresh from the training label maps
            at every step (random contrast, bias, blur, resolution, noise and deformation;
            ``maxca.data.labelsynth``): contrast-agnostic training, needs label maps and
            ``loss.weights.dice > 0``; ``null`` (default) trains on the images as read.
        synth_contrast: with ``synth``: ``independent`` (default) draws the two images of a
            pair with independent contrasts (Dice-only training); ``shared`` gives both the
            same per-label intensities, so ``loss.weights.similarity`` (NCC) may be used too.
        synth_real: with ``synth``: the probability that a training pair uses the subjects' own
            images (as read, not synthesised) instead; 0 (default) synthesises every pair.
    """

    path: str | None = None
    labels: str | None = None
    pairs: str = "random"
    atlas: int | str = 0
    pairs_per_epoch: int | None = None
    shape: list[int] | None = None
    resize: str = "crop_or_pad"
    normalise: str | None = "minmax"
    augment: bool = False
    cache: bool = True
    workers: int = 0
    batch_size: int = 1
    val_pairs: str | list[list[str]] | None = "registration_val"
    max_val_pairs: int | None = None
    synth: str | None = None
    synth_contrast: str = "independent"
    synth_real: float = 0.0

    def __post_init__(self) -> None:
        _choice(self.pairs, "data.pairs", PAIR_MODES)
        if self.synth is not None:
            _choice(self.synth, "data.synth", SYNTH_MODES)
            if self.augment:
                raise MaxcaInputError("data.augment cannot be combined with data.synth")
        _choice(self.synth_contrast, "data.synth_contrast", SYNTH_CONTRASTS)
        if isinstance(self.synth_real, bool) or not (
            isinstance(self.synth_real, (int, float)) and 0 <= self.synth_real <= 1
        ):
            raise MaxcaInputError(f"data.synth_real must be in [0, 1], got {self.synth_real!r}")
        if self.synth_real and self.synth is None:
            raise MaxcaInputError("data.synth_real needs data.synth=labels")
        _choice(self.resize, "data.resize", RESIZE_MODES)
        if self.normalise is not None:
            _choice(self.normalise, "data.normalise", NORMALISATIONS)
        if self.shape is not None and (len(self.shape) not in (2, 3) or min(self.shape) < 2):
            raise MaxcaInputError(f"data.shape must have 2 or 3 sizes >= 2, got {list(self.shape)}")
        if self.pairs_per_epoch is not None and self.pairs_per_epoch < 1:
            raise MaxcaInputError(f"data.pairs_per_epoch must be >= 1, got {self.pairs_per_epoch}")
        if self.workers < 0:
            raise MaxcaInputError(f"data.workers must be >= 0, got {self.workers}")
        if self.batch_size < 1:
            raise MaxcaInputError(f"data.batch_size must be >= 1, got {self.batch_size}")
        if isinstance(self.val_pairs, str):
            _choice(self.val_pairs, "data.val_pairs", VAL_SPLITS)
        elif self.val_pairs is not None:
            for i, pair in enumerate(self.val_pairs):
                if len(pair) != 2:
                    raise MaxcaInputError(
                        f"data.val_pairs[{i}] must be [fixed, moving], got {pair!r}"
                    )
        if self.max_val_pairs is not None and self.max_val_pairs < 1:
            raise MaxcaInputError(f"data.max_val_pairs must be >= 1, got {self.max_val_pairs}")


@dataclass
class LossWeights:
    """Weights of the loss terms (0 disables a term).

    Attributes:
        similarity: weight of the image similarity (``loss.similarity``).
        diffusion: weight of the diffusion regulariser (mean squared flow gradient).
        bending: weight of the bending-energy regulariser (second derivatives of the flow).
        dice: weight of the soft Dice of the warped moving labels (needs label maps).
    """

    similarity: float = 1.0
    diffusion: float = 1.0
    bending: float = 0.0
    dice: float = 0.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _positive(getattr(self, f.name), f"loss.weights.{f.name}", allow_zero=True)
        if not any(getattr(self, f.name) for f in dataclasses.fields(self)):
            raise MaxcaInputError("all loss.weights are 0; at least one term must be weighted")


@dataclass
class LossConfig:
    """The training loss.

    Attributes:
        similarity: ``ncc`` (local normalised cross-correlation), ``mse`` or ``mind``
            (MIND-SSC descriptors: pairs of different contrasts, e.g. with
            ``data.synth_contrast=independent``).
        window: NCC window size (odd).
        weights: weights of ``similarity``, ``diffusion``, ``bending`` and ``dice``.
        dice_labels: label ids of the Dice term (``null``: the dataset's evaluation labels).
    """

    similarity: str = "ncc"
    window: int = 9
    weights: LossWeights = field(default_factory=LossWeights)
    dice_labels: list[int] | None = None

    def __post_init__(self) -> None:
        _choice(self.similarity, "loss.similarity", SIMILARITIES)
        if self.window < 1 or self.window % 2 == 0:
            raise MaxcaInputError(f"loss.window must be an odd integer >= 1, got {self.window}")
        if self.dice_labels is not None and not self.dice_labels:
            raise MaxcaInputError("loss.dice_labels must be null or a non-empty list of ids")


@dataclass
class OptimConfig:
    """Adam and its learning-rate schedule.

    Attributes:
        lr: peak learning rate.
        weight_decay: Adam's (L2) weight decay.
        grad_clip: clip the global gradient norm to this value (``null``: no clipping).
        schedule: ``constant``, ``cosine`` (to 0 at the end of the budget) or ``poly``
            (``(1 - progress) ** poly_power``).
        warmup_steps: linear warm-up steps from ``lr / warmup_steps``.
        poly_power: exponent of the ``poly`` schedule.
    """

    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float | None = None
    schedule: str = "constant"
    warmup_steps: int = 0
    poly_power: float = 0.9

    def __post_init__(self) -> None:
        _positive(self.lr, "optim.lr")
        _positive(self.weight_decay, "optim.weight_decay", allow_zero=True)
        _positive(self.grad_clip, "optim.grad_clip")
        _choice(self.schedule, "optim.schedule", SCHEDULES)
        if self.warmup_steps < 0:
            raise MaxcaInputError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        _positive(self.poly_power, "optim.poly_power")


@dataclass
class BudgetConfig:
    """When training stops: after ``steps`` optimisation steps or ``minutes`` of wall-clock
    training time (summed over resumed sessions), whichever comes first.

    Attributes:
        steps: stop after this many optimisation steps (``null``: no step limit).
        minutes: stop after this many minutes of training (``null``: no time limit); the
            schedule's warm-up and the progress bar follow the steps estimated from it.
    """

    steps: int | None = 1000
    minutes: float | None = None

    def __post_init__(self) -> None:
        if self.steps is None and self.minutes is None:
            raise MaxcaInputError("budget needs steps or minutes (or both), got neither")
        if self.steps is not None and self.steps < 1:
            raise MaxcaInputError(f"budget.steps must be >= 1, got {self.steps}")
        _positive(self.minutes, "budget.minutes")


@dataclass
class ExperimentConfig:
    """A whole training experiment.

    Attributes:
        model, data, loss, optim, budget: the sections.
        val_every: validate every this many steps (and at the end); 0 disables.
        log_every: write a training row (mean over the interval) every this many steps.
        ckpt_every: save ``checkpoints/last`` every this many steps (and at the end).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        amp: mixed precision on CUDA: ``none``, ``bf16`` or ``fp16`` (with a gradient
            scaler); ignored on the CPU.
        tf32: allow TF32 matmuls/convolutions on CUDA.
        memory_format: layout of the network's weights and input images: ``auto``
            (channels-last for 3-D images on the CPU, where oneDNN's convolutions are faster
            in it; contiguous otherwise), ``channels_last`` or ``contiguous``. Same values
            either way.
        seed: seed of weights, pairs and augmentation.
        out: folder that receives run directories named ``<name>-<date-time>``.
        name: run name (default: the config file's stem).
        run_dir: the run directory itself (overrides ``out``/``name``); needed to resume.
        resume: continue the run in ``run_dir`` from ``checkpoints/last``.
        num_threads: CPU threads of torch (``null``: torch's default).
        progress: show a progress bar.
        tensorboard: write TensorBoard events to ``<run_dir>/tb``.
    """

    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    val_every: int = 100
    log_every: int = 10
    ckpt_every: int = 100
    device: str = "auto"
    amp: str = "none"
    tf32: bool = True
    memory_format: str = "auto"
    seed: int = 0
    out: str = "runs"
    name: str | None = None
    run_dir: str | None = None
    resume: bool = False
    num_threads: int | None = None
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        for key in ("val_every", "log_every", "ckpt_every"):
            value = getattr(self, key)
            if value < 0 or (key != "val_every" and value == 0):
                bound = ">= 0" if key == "val_every" else ">= 1"
                raise MaxcaInputError(f"{key} must be {bound}, got {value}")
        check_device_name(self.device)
        _choice(self.amp, "amp", AMP_MODES)
        _choice(self.memory_format, "memory_format", MEMORY_FORMATS)
        if self.num_threads is not None and self.num_threads < 1:
            raise MaxcaInputError(f"num_threads must be >= 1, got {self.num_threads}")
        if self.data.synth is not None and not self.loss.weights.dice > 0:
            raise MaxcaInputError(
                "data.synth=labels trains on label maps: set loss.weights.dice > 0"
            )
        if (
            self.data.synth is not None
            and self.data.synth_contrast == "independent"
            and self.loss.weights.similarity > 0
            and self.loss.similarity != "mind"
        ):
            raise MaxcaInputError(
                "an intensity similarity between independently synthesised contrasts is "
                "meaningless: set data.synth_contrast=shared, loss.similarity=mind or "
                "loss.weights.similarity=0"
            )
        _check_model(self.model, self.data.shape)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON-ready)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExperimentConfig:
        """Inverse of :meth:`to_dict` (values are type-checked and coerced)."""
        return config_from_dict(data)


# ---------------------------------------------------------------------------------------------
# typed parsing
# ---------------------------------------------------------------------------------------------
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
_NONE = ("none", "null", "~", "")


_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _type_name(tp: Any) -> str:
    """Readable name of a field type for error messages ("an integer or null")."""
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple, Sequence):
        return "a list"
    if origin in (dict, Mapping) or dataclasses.is_dataclass(tp):
        return "a mapping"
    return _NAMES.get(tp, getattr(tp, "__name__", str(tp)))


class _Text(str):
    """An override's raw text: parsed according to the type of the field it sets."""


def _is_str_type(tp: Any) -> bool:
    return tp is str


def _as_number(value: Any, tp: type) -> int | float | None:
    """``value`` as an ``int`` (integral floats and numeric strings too) or a ``float``
    (ints and numeric strings too); ``None`` when it is not one (bools never are)."""
    if isinstance(value, str):
        try:
            return tp(value.strip())
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if tp is int and isinstance(value, float):
        return int(value) if value.is_integer() else None
    return tp(value)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` converted to type ``tp`` (raises MaxcaInputError naming ``key``)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (
            value is None or (isinstance(value, str) and value.strip().lower() in _NONE)
        ):
            return None
        # str last: override text like "0001" or "[1, 2]" means the other type when it can
        options = [a for a in args if a is not type(None)]
        options.sort(key=_is_str_type)
        for arg in options:
            try:
                return _coerce(value, arg, key)
            except MaxcaInputError:
                continue
        raise MaxcaInputError(f"{key} must be {_type_name(tp)}, got {value!r}")
    if isinstance(value, _Text):
        if tp is str or tp is Any:
            return str(value)
        value = _parse_scalar(str(value))
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            names = ", ".join(_fields(tp))
            raise MaxcaInputError(f"{key} must be a mapping with keys {names}, got {value!r}")
        return _build(tp, value, key)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise MaxcaInputError(f"{key} must be true or false, got {value!r}")
    if tp in (int, float):
        number = _as_number(value, tp)
        if number is None:
            kind = "an integer" if tp is int else "a number"
            raise MaxcaInputError(f"{key} must be {kind}, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return str(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise MaxcaInputError(f"{key} must be a string, got {value!r}")
    if origin in (list, tuple, Sequence):
        (item_tp,) = typing.get_args(tp)[:1] or (Any,)
        if isinstance(value, str) and "," in value and typing.get_origin(item_tp) is None:
            value = [v.strip() for v in value.strip().strip("[]()").split(",") if v.strip()]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise MaxcaInputError(f"{key} must be a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise MaxcaInputError(f"{key} must be a mapping, got {value!r}")
        return {str(k): _plain(v) for k, v in value.items()}
    raise TypeError(f"unsupported config field type {tp!r} for {key}")  # programming error


def _plain(value: Any) -> Any:
    """Free-form values (``model.config``): override text parsed as YAML, recursively."""
    if isinstance(value, _Text):
        return _parse_scalar(str(value))
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    hints = _hints(cls)
    names = _fields(cls)
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            where = f"in '{prefix}'" if prefix else "at the top level"
            raise MaxcaInputError(
                f"unknown config key '{full}'; valid keys {where}: {', '.join(names)}"
            )
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def config_from_dict(data: Mapping[str, Any] | None) -> ExperimentConfig:
    """Build an :class:`ExperimentConfig` from a (YAML-parsed) nested mapping."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise MaxcaInputError(f"a config must be a mapping of sections, got {type(data).__name__}")
    return _build(ExperimentConfig, data, "")


# ---------------------------------------------------------------------------------------------
# overrides
# ---------------------------------------------------------------------------------------------
def _parse_scalar(text: str) -> Any:
    """An override value: YAML (lists, null, bools, ints), with ``3e-4``-style floats too."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value) if value.strip().lower() not in ("nan", "inf") else value
        except ValueError:
            return value
    return value


def _free_section(cls: type, name: str) -> bool:
    """Whether field ``name`` of ``cls`` is a free-form mapping (sub-keys not checked here)."""
    return typing.get_origin(_hints(cls)[name]) in (dict, Mapping)


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key=value`` strings (dotted keys) to a raw config mapping; returns a new dict.

    Keys are checked against the dataclass schema, values are kept raw (parsed as YAML) and
    typed later by :func:`config_from_dict`.
    """
    out: dict[str, Any] = _deep_copy(dict(data or {}))
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise MaxcaInputError(f"override must look like key=value, got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if not all(parts):
            raise MaxcaInputError(f"override key must be dotted names like optim.lr, got {key!r}")
        cls: type | None = ExperimentConfig
        node = out
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if cls is not None:
                names = _fields(cls)
                if part not in names:
                    prefix = ".".join(parts[:depth])
                    where = f"in '{prefix}'" if prefix else "at the top level"
                    raise MaxcaInputError(
                        f"unknown config key '{key}'; valid keys {where}: {', '.join(names)}"
                    )
                tp = _hints(cls)[part]
                free = _free_section(cls, part)
                sub_cls = tp if dataclasses.is_dataclass(tp) else None
                if not last and sub_cls is None and not free:
                    raise MaxcaInputError(
                        f"config key '{'.'.join(parts[: depth + 1])}' is a value, not a "
                        f"section; cannot set '{key}'"
                    )
                cls = sub_cls
            if last:
                node[part] = _Text(text.strip())
            else:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = {}
                    node[part] = child
                node = child
    return out


def _deep_copy(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------
class _DuplicateKeyError(yaml.constructor.ConstructorError):
    """A key given twice in one YAML mapping."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping.

    PyYAML keeps the last of two equal keys without a word, so a config with ``lr`` in two places
    of one section would train with whichever came last. Keys brought in by a ``<<`` merge may
    still be overridden, as YAML intends."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class gives its own error
                break
            if first is not None:
                raise _DuplicateKeyError(
                    None,
                    None,
                    f"key {key!r} given twice (lines {first} and {line})",
                    key_node.start_mark,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MaxcaInputError(f"config file not found: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506
    except _DuplicateKeyError as exc:
        raise MaxcaInputError(f"{path}: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise MaxcaInputError(f"{path}: invalid YAML{where}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MaxcaInputError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def _resolve_path(value: str | None, base: Path | None) -> str | None:
    if value is None:
        return None
    p = Path(os.path.expanduser(value))
    if p.is_absolute():
        return str(p)
    if p.exists() or base is None or not (base / p).exists():
        return os.path.abspath(p)
    return os.path.abspath(base / p)


def resolve_paths(config: ExperimentConfig, base: str | os.PathLike[str] | None) -> None:
    """Make ``data.path``, ``data.labels``, explicit ``data.val_pairs``, a path ``data.atlas``
    and ``run_dir`` absolute (working directory first, then ``base``), in place."""
    b = None if base is None else Path(base)
    d = config.data
    d.path = _resolve_path(d.path, b)
    d.labels = _resolve_path(d.labels, b)
    if isinstance(d.atlas, str):
        d.atlas = _resolve_path(d.atlas, b)  # type: ignore[assignment]
    if isinstance(d.val_pairs, list):
        d.val_pairs = [[_resolve_path(v, b) for v in pair] for pair in d.val_pairs]  # type: ignore[misc]
    if config.run_dir is not None:
        config.run_dir = os.path.abspath(os.path.expanduser(config.run_dir))


def load_config(
    path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()
) -> ExperimentConfig:
    """Read a YAML config (or start from the defaults when ``path`` is None), apply
    ``overrides`` and resolve relative paths.

    ``path`` may also be a run directory: its ``config.yaml`` is read and ``run_dir`` set to it
    (so ``load_config(run, ["resume=true"])`` continues that run).
    """
    raw: dict[str, Any] = {}
    base: Path | None = None
    stem: str | None = None
    if path is not None:
        p = Path(path)
        if p.is_dir():
            if not (p / "config.yaml").is_file():
                raise MaxcaInputError(f"{p} is a folder without config.yaml (not a run directory)")
            raw = _read_yaml(p / "config.yaml")
            raw["run_dir"] = str(p.resolve())
            base = p.resolve()
        else:
            raw = _read_yaml(p)
            base = p.resolve().parent
            stem = p.name.split(".")[0]
    config = config_from_dict(apply_overrides(raw, overrides))
    if config.name is None and stem:
        config.name = stem
    resolve_paths(config, base)
    return config


def save_config(config: ExperimentConfig, path: str | os.PathLike[str]) -> Path:
    """Write ``config`` as YAML (atomically: a temporary file renamed over ``path``)."""
    return atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


# ---------------------------------------------------------------------------------------------
# reference table
# ---------------------------------------------------------------------------------------------
def _attribute_docs(cls: type) -> dict[str, str]:
    """``{field: meaning}`` from the ``Attributes:`` section of a dataclass docstring (a line
    ``a, b, c: text`` documents several fields; continuation lines are joined)."""
    doc = cls.__doc__ or ""
    out: dict[str, str] = {}
    inside, names = False, []
    for line in doc.splitlines():
        text = line.strip()
        if text == "Attributes:":
            inside = True
            continue
        if not inside or not text:
            continue
        head, sep, rest = text.partition(":")
        keys = [k.strip() for k in head.split(",")]
        if (
            sep
            and all(k.isidentifier() for k in keys)
            and line.startswith(" " * 8)
            and not (line.startswith(" " * 12))
        ):
            names = keys
            for k in keys:
                out[k] = rest.strip()
        elif names:
            for k in names:
                out[k] = f"{out[k]} {text}".strip()
    return out


def _default_text(f: dataclasses.Field[Any]) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:  # pragma: no cover - every config field has a default
        return "(required)"
    if dataclasses.is_dataclass(value):
        return "(section)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return json.dumps(_plain(value))


def config_reference(cls: type = ExperimentConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """Every config key as ``(dotted key, default as YAML, meaning)``, sections expanded, in
    the order of the dataclass fields (the meanings come from the ``Attributes:`` docstrings)."""
    docs = _attribute_docs(cls)
    hints = _hints(cls)
    rows: list[tuple[str, str, str]] = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(config_reference(tp, f"{key}."))
            continue
        rows.append((key, _default_text(f), docs.get(f.name, "").replace("``", "")))
    return rows


def format_config_reference(width: int = 100) -> str:
    """:func:`config_reference` as a plain-text table (``maxca config --show``)."""
    import textwrap

    rows = config_reference()
    kw = max(len(r[0]) for r in rows)
    dw = min(24, max(len(r[1]) for r in rows))
    lines = [f"{'key'.ljust(kw)}  {'default'.ljust(dw)}  meaning"]
    indent = " " * (kw + dw + 4)
    for key, default, meaning in rows:
        head = f"{key.ljust(kw)}  {default.ljust(dw)}  "
        body = textwrap.wrap(meaning, max(20, width - len(indent))) or [""]
        lines.append(head + body[0])
        lines.extend(indent + more for more in body[1:])
    return "\n".join(lines)
