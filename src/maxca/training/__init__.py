"""Training: experiment configs (YAML + ``key=value`` overrides), the training loop with
validation, logging and atomic checkpoints, and data-parallel training under ``torchrun``.

    >>> from maxca.training import load_config, train
    >>> run_dir = train(load_config("configs/brain-synth-2mm.yaml", ["budget.steps=50"]))
"""

from maxca.models.checkpoint import (
    CheckpointInfo,
    load_checkpoint,
    load_optimizer_state,
    resolve_checkpoint,
    save_checkpoint,
)
from maxca.training.config import (
    ExperimentConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    save_config,
)
from maxca.training.trainer import NonFiniteLossError, Trainer, main_train, train

__all__ = [
    "CheckpointInfo",
    "ExperimentConfig",
    "NonFiniteLossError",
    "Trainer",
    "apply_overrides",
    "config_from_dict",
    "load_checkpoint",
    "load_config",
    "load_optimizer_state",
    "main_train",
    "resolve_checkpoint",
    "save_checkpoint",
    "save_config",
    "train",
]
