"""The training loop: ``train(config) -> run_dir`` and the :class:`Trainer` behind it.

A run directory holds::

    RUN/
      config.yaml          # the resolved experiment config (absolute paths)
      metrics.csv          # one row per logged step: training losses and validation metrics
      tb/                  # TensorBoard events (same scalars)
      checkpoints/last/    # every ``ckpt_every`` steps and at the end (with optimiser state)
      checkpoints/best/    # best validation Dice (or lowest validation loss without labels)

Training minimises ``RegistrationLoss`` (similarity + diffusion/bending, + soft Dice of the
moving one-hot labels warped *linearly* when ``loss.weights.dice > 0``) with Adam. Validation
warps the moving label maps with *nearest-neighbour* interpolation and reports the mean Dice over
the evaluation labels and the percentage of voxels with a non-positive Jacobian determinant.

A non-finite loss stops training with :class:`NonFiniteLossError`; the checkpoints on disk are
then those of the last good step. ``resume=true`` continues a run from ``checkpoints/last`` at
the saved step, with the saved optimiser state, RNG state and position in the pair sequence, so
an interrupted and resumed run reproduces an uninterrupted one on the same device.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from maxca._optional import install_hint
from maxca.accel import resolve_memory_format, to_memory_format
from maxca.data import Learn2RegDataset, PairDataset, load_folder, read_volume
from maxca.data.dataset import as_dataset
from maxca.data.io import check_headers
from maxca.data.labelsynth import LabelSynthConfig, SynthPairDataset
from maxca.errors import MaxcaInputError, TrainingDivergedError
from maxca.losses import RegistrationLoss, one_hot
from maxca.metrics.jacobian import njd_percent
from maxca.metrics.overlap import dice as dice_per_label
from maxca.models import create_model
from maxca.models.checkpoint import (
    META,
    Preprocessing,
    load_checkpoint,
    load_optimizer_state,
    read_meta,
    save_checkpoint,
)
from maxca.spatial import warp
from maxca.training.config import (
    BudgetConfig,
    ExperimentConfig,
    OptimConfig,
    load_config,
    save_config,
)
from maxca.training.distributed import (
    DistContext,
    ShardSampler,
    init_distributed,
    resolve_device,
    shutdown,
    wrap_model,
)

__all__ = ["NonFiniteLossError", "Trainer", "learning_rate", "main_train", "train"]

logger = logging.getLogger("maxca.training")

LOSS_TERMS = ("similarity", "diffusion", "bending", "dice")
CSV_NAME, TB_NAME, CONFIG_NAME = "metrics.csv", "tb", "config.yaml"


# a time budget: estimate the run's length in steps after this many steps of a session
ESTIMATE_AFTER_STEPS = 3
# fewer steps than this (or a learning rate that never left warm-up): warn that the model
# barely trained
MIN_TRAINED_STEPS = 50
# hidden files a save interrupted by a crash can leave in checkpoints/
_TEMPORARY_PREFIXES = (".last.tmp-", ".last.old-", ".best.tmp-", ".best.old-")


class NonFiniteLossError(TrainingDivergedError):
    """The training loss (or a gradient/weight) became NaN or infinite; training stopped
    (``maxca train`` exits with :data:`maxca.errors.EXIT_DIVERGED`)."""


@dataclass
class _Progress:
    """Where the run stands (saved in every checkpoint's ``state``)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of ``epoch`` already consumed
    elapsed_s: float = 0.0
    best_metric: float = -math.inf
    best_step: int = -1
    saved_step: int = -1  # step of checkpoints/last on disk (-1: none yet)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def learning_rate(
    optim: OptimConfig,
    budget: BudgetConfig,
    step: int,
    elapsed_s: float,
    horizon_steps: int | None = None,
) -> float:
    """Learning rate of optimisation step ``step`` (0-based) after ``elapsed_s`` seconds.

    The schedule runs over the budget: its progress is ``step / budget.steps`` or
    ``elapsed_s / budget.minutes`` (the larger when both are set), so ``cosine`` and ``poly``
    reach 0 when the budget is spent. A linear warm-up multiplies the first ``warmup`` steps by
    ``(step + 1) / warmup``, where ``warmup`` is ``optim.warmup_steps``, shortened to a tenth
    of ``horizon_steps`` (the estimated length of a time-budgeted run) when that is shorter, so
    a run that ends after few steps still leaves warm-up.
    """
    fractions = []
    if budget.steps is not None:
        fractions.append(step / budget.steps)
    if budget.minutes is not None:
        fractions.append(elapsed_s / (60.0 * budget.minutes))
    t = min(1.0, max(fractions)) if fractions else 0.0
    if optim.schedule == "cosine":
        lr = 0.5 * optim.lr * (1.0 + math.cos(math.pi * t))
    elif optim.schedule == "poly":
        lr = optim.lr * (1.0 - t) ** optim.poly_power
    else:
        lr = optim.lr
    warmup = optim.warmup_steps
    if horizon_steps is not None and warmup > 0:
        warmup = min(warmup, max(1, horizon_steps // 10))
    if warmup > 0 and step < warmup:
        lr *= (step + 1) / warmup
    return lr


def _csv_row(row: dict[str, Any]) -> dict[str, Any]:
    """A metrics row as written to ``metrics.csv`` (floats with 6 significant digits)."""
    return {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}


def _checkpoint_step(ckpt: Path) -> int:
    try:
        return int(read_meta(ckpt).get("state", {}).get("step", -1))
    except (MaxcaInputError, TypeError, ValueError):
        return -1


def _set_tf32(enabled: bool) -> None:
    """Allow (or forbid) TF32 in CUDA matmuls and convolutions (the new per-backend API when
    this torch has it: mixing it with the legacy ``allow_tf32`` flags is an error)."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        value = "tf32" if enabled else "ieee"
        matmul.fp32_precision = value
        torch.backends.cudnn.conv.fp32_precision = value
    else:  # torch < 2.9
        matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def _metric(value: Any) -> float:
    """A saved best metric (``None`` in JSON when there was none yet) as a float."""
    return -math.inf if value is None else float(value)


def _listed(config: dict[str, Any]) -> dict[str, Any]:
    """Tuples as lists (a config as it reads back from JSON)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def _find_last(run_dir: Path) -> Path | None:
    """``checkpoints/last``, or the copy a save interrupted between its two renames left."""
    last = run_dir / "checkpoints" / "last"
    if (last / META).is_file():
        return last
    old = [p for p in (run_dir / "checkpoints").glob(".last.old-*") if (p / META).is_file()]
    if not old:
        return None
    # the newest copy: highest saved step, then latest write (never the names' text order)
    return max(old, key=lambda p: (_checkpoint_step(p), (p / META).stat().st_mtime_ns))


def _is_maxca_run(path: Path) -> bool:
    """Whether ``path`` holds a maxca run: checkpoints, or a metrics.csv with our header."""
    ckpts = path / "checkpoints"
    if ckpts.is_dir() and any((c / META).is_file() for c in ckpts.iterdir() if c.is_dir()):
        return True
    try:
        with open(path / CSV_NAME, newline="") as fh:
            return fh.readline().startswith("step,epoch,elapsed_s,lr,loss")
    except (OSError, UnicodeDecodeError):
        return False


def _remove_stale_temporaries(ckpt_dir: Path) -> None:
    """Remove the hidden copies an interrupted save left in ``checkpoints/`` (called after a
    save completed, when ``last`` and ``best`` are whole again)."""
    import shutil

    if not ckpt_dir.is_dir():
        return
    for p in ckpt_dir.iterdir():
        if p.name.startswith(_TEMPORARY_PREFIXES):
            kind = p.name[1:5]  # "last" or "best"
            if (ckpt_dir / kind / META).is_file():
                shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into ``KeyboardInterrupt`` (as SIGINT) while training, so a
    terminated run saves ``checkpoints/last`` first; the previous handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    names = [n for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n)]
    previous = {n: signal.signal(getattr(signal, n), handler) for n in names}
    try:
        yield
    finally:
        for n, h in previous.items():
            signal.signal(getattr(signal, n), h)


class Trainer:
    """Builds the model, data, loss and optimiser of an experiment and runs the loop.

    Args:
        config: the experiment.
        dist_ctx: data-parallel context (:func:`~maxca.training.distributed.init_distributed`);
            default: a single process.
        overwrite: allow an existing ``run_dir`` that is not a maxca run (its ``config.yaml``
            and ``metrics.csv`` are replaced; other files are left alone).

    Attributes:
        run_dir: the run directory (decided by rank 0, shared with every rank).
        model: the network (DDP-wrapped when distributed; :attr:`module` is the bare one).
        optimizer: Adam.
        progress: step, epoch, elapsed time and best metric.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        dist_ctx: DistContext | None = None,
        overwrite: bool = False,
    ) -> None:
        self.config = config
        self.overwrite = overwrite
        self.dist = dist_ctx or DistContext()
        self.is_main = self.dist.is_main
        cfg = config
        if cfg.data.path is None:
            raise MaxcaInputError("data.path is not set: give a dataset.json or an image folder")
        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        self.device = resolve_device(cfg.device, self.dist)
        self._setup_precision()
        self.run_dir = self._decide_run_dir()
        self.progress = _Progress()
        # running training-loss sums of the current log interval, the step of the last
        # validation and the rows not yet in metrics.csv: all saved in checkpoints/last
        self._loss_sums: list[float] = []
        self._loss_count = 0
        self._val_step = -1
        self._pending_rows: list[dict[str, Any]] = []
        self._logged_val_steps: set[int] = set()
        self.horizon_steps: int | None = None

        # ---- data ------------------------------------------------------------------------
        self.dataset = self._load_dataset()
        # every subject's header now: a bad file found at step 5,000 would cost the run
        entries = [*self.dataset.training, *self.dataset.validation]
        entries += [
            self.dataset.entry_for(p) for pair in self.dataset.registration_val for p in pair
        ]
        files = {path for e in entries for path in (e.image, e.label) if path is not None}
        check_headers(sorted(files))
        self.use_dice_loss = cfg.loss.weights.dice > 0
        self.eval_labels = self._evaluation_labels()
        shape = None if cfg.data.shape is None else tuple(cfg.data.shape)
        common: dict[str, Any] = dict(
            target_shape=shape,
            resize=cfg.data.resize,
            normalise=cfg.data.normalise,
            cache=cfg.data.cache,
            spatial_dims=None if shape is None else len(shape),
        )
        train_options: dict[str, Any] = dict(
            mode=cfg.data.pairs,
            num_pairs_per_epoch=cfg.data.pairs_per_epoch,
            seed=cfg.seed,
            atlas=cfg.data.atlas,
            **common,
        )
        if cfg.data.synth == "labels":  # images drawn from the label maps at every step
            synth = LabelSynthConfig(
                pair_contrast=cfg.data.synth_contrast, p_real=float(cfg.data.synth_real)
            )
            self.train_data: PairDataset = SynthPairDataset(
                self.dataset, synth=synth, **train_options
            )
        else:
            self.train_data = PairDataset(
                self.dataset,
                augment=bool(cfg.data.augment),
                use_labels=self.use_dice_loss,
                **train_options,
            )
        self.val_data = self._validation_data(common) if self.is_main else None
        first_image, first_label = self.train_data.load_subject(0)
        self.grid_shape = tuple(int(s) for s in first_image.shape)
        self.spatial_dims = len(self.grid_shape)
        if self.use_dice_loss and first_label is None:
            raise MaxcaInputError(
                "loss.weights.dice > 0 needs label maps, but the training subjects have none"
            )
        if cfg.data.workers > 0 and cfg.data.cache:
            self.train_data.preload()  # decoded once, shared with forked workers
        self.sampler = ShardSampler(len(self.train_data), self.dist.rank, self.dist.world_size)
        self.loader = DataLoader(
            self.train_data,
            batch_size=cfg.data.batch_size,
            sampler=self.sampler,
            num_workers=cfg.data.workers,
            pin_memory=self.device.type == "cuda",
            drop_last=False,
        )
        self.steps_per_epoch = math.ceil(self.sampler.shard_size / cfg.data.batch_size)

        # ---- model, loss, optimiser ------------------------------------------------------
        _seed_everything(cfg.seed)  # the same initial weights on every rank
        model_options = dict(cfg.model.config)
        given = model_options.setdefault("spatial_dims", self.spatial_dims)
        if given != self.spatial_dims:
            raise MaxcaInputError(
                f"model.config.spatial_dims is {given} but the training images have "
                f"{self.spatial_dims} axes {self.grid_shape}"
            )
        self.module = create_model(cfg.model.name, **model_options)
        self.loss_fn = RegistrationLoss(
            self.spatial_dims,
            similarity=cfg.loss.similarity,
            weights=dict(vars(cfg.loss.weights)),
            window=cfg.loss.window,
            labels=self.eval_labels or None,
        )
        self.terms = [t for t in LOSS_TERMS if getattr(cfg.loss.weights, t) > 0]
        start = _find_last(self.run_dir) if cfg.resume else None
        if start is not None:
            self._load_weights(start)
        self.module.to(self.device)
        self.memory_format = resolve_memory_format(
            cfg.memory_format, self.device, self.spatial_dims
        )
        to_memory_format(self.module, self.memory_format)  # before the optimiser sees them
        self.model = wrap_model(self.module, self.dist, self.device)
        self.optimizer = torch.optim.Adam(
            self.module.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay
        )
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype is torch.float16
        )
        if start is not None:
            self._resume_from(start)
        # different random streams per rank from here on (pairs/augmentation have their own)
        if start is None:
            _seed_everything(cfg.seed + 7919 * self.dist.rank + 1)
        elif self.dist.rank != 0:
            _seed_everything(cfg.seed + 7919 * self.dist.rank + 1 + self.progress.step)

        self._csv_columns = ["step", "epoch", "elapsed_s", "lr", "loss"]
        self._csv_columns += [f"loss_{t}" for t in self.terms]
        self._csv_columns += ["val_loss", "val_dice", "val_njd_percent"]
        self._tb: Any = None
        self._bar: Any = None

    # ------------------------------------------------------------------------------------------
    # setup helpers
    # ------------------------------------------------------------------------------------------
    def _setup_precision(self) -> None:
        cfg = self.config
        self.amp_dtype: torch.dtype | None = None
        if self.device.type == "cuda":
            _set_tf32(bool(cfg.tf32))
            self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp]
        elif cfg.amp != "none" and self.is_main:
            logger.warning("amp=%s is ignored on the CPU (float32 training)", cfg.amp)

    def _decide_run_dir(self) -> Path:
        cfg = self.config
        run_dir: str | None = None
        error: str | None = None
        if self.is_main:
            if cfg.run_dir is not None:
                path = Path(cfg.run_dir)
            else:
                stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
                path = Path(cfg.out) / f"{cfg.name or 'run'}-{stamp}"
                k = 1
                while path.exists():
                    k += 1
                    path = Path(cfg.out) / f"{cfg.name or 'run'}-{stamp}-{k}"
            path = path.resolve()
            has_ckpt = _find_last(path) is not None or (path / "checkpoints" / "best").exists()
            if cfg.resume:
                if cfg.run_dir is None:
                    error = "resume=true needs run_dir (the run directory to continue)"
                elif _find_last(path) is None:
                    error = f"cannot resume: no checkpoints/last in {path}"
            elif has_ckpt:
                error = (
                    f"run directory {path} already holds a run; pass resume=true to continue it "
                    "or choose another run_dir"
                )
            elif path.is_file():
                error = f"run directory {path} is a file"
            elif (
                path.is_dir()
                and any(path.iterdir())
                and not _is_maxca_run(path)
                and not self.overwrite
            ):
                error = (
                    f"run directory {path} exists and is not a maxca run; choose another run_dir "
                    "or pass --overwrite (its config.yaml and metrics.csv would be replaced)"
                )
            run_dir = str(path)
        run_dir, error = self.dist.broadcast_object((run_dir, error))
        if error:
            raise MaxcaInputError(error)
        assert run_dir is not None
        return Path(run_dir)

    def _load_dataset(self) -> Learn2RegDataset:
        d = self.config.data
        assert d.path is not None
        if d.labels is not None:
            return load_folder(d.path, d.labels)
        return as_dataset(d.path)

    def _evaluation_labels(self) -> list[int]:
        ids = self.config.loss.dice_labels or list(self.dataset.evaluation_labels)
        if self.use_dice_loss and not ids:
            raise MaxcaInputError(
                "loss.weights.dice > 0 needs label ids: set loss.dice_labels (the dataset "
                "defines no evaluation_labels)"
            )
        return [int(i) for i in ids]

    def _validation_data(self, common: dict[str, Any]) -> PairDataset | None:
        d = self.config.data
        if d.val_pairs is None or self.config.val_every == 0:
            return None
        if isinstance(d.val_pairs, str):
            pairs: list[tuple[Any, Any]] = list(getattr(self.dataset, d.val_pairs))
            if not pairs:
                logger.warning("the dataset has no %s pairs: no validation", d.val_pairs)
                return None
        else:
            pairs = [(f, m) for f, m in d.val_pairs]
        if d.max_val_pairs is not None:
            pairs = pairs[: d.max_val_pairs]
        return PairDataset(self.dataset, mode="pairs", pairs=pairs, use_labels=True, **common)

    def _load_weights(self, ckpt: Path) -> None:
        saved, info = load_checkpoint(ckpt)
        mine = _listed(self.module.config_dict())
        # the checkpoint's model as rebuilt (fields added since it was saved take their
        # defaults), so a checkpoint of an older release resumes
        rebuilt = getattr(saved, "config_dict", None)
        theirs = _listed(rebuilt() if callable(rebuilt) else dict(info.model_config))
        if mine != theirs:
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise MaxcaInputError(
                f"cannot resume: the model config differs from the checkpoint's in {diff}"
            )
        self.module.load_state_dict(saved.state_dict(), strict=True)

    def _resume_from(self, ckpt: Path) -> None:
        meta = read_meta(ckpt)
        state = dict(meta.get("state", {}))
        p = self.progress
        p.step = int(state.get("step", 0))
        p.epoch = int(state.get("epoch", 0))
        p.batch_in_epoch = int(state.get("batch_in_epoch", 0))
        p.elapsed_s = float(state.get("elapsed_s", 0.0))
        p.best_metric = _metric(state.get("best_metric"))
        p.best_step = int(state.get("best_step", -1))
        p.saved_step = p.step
        best = self.run_dir / "checkpoints" / "best"
        if (best / META).is_file():  # best may be newer than last (a crash after saving best)
            best_state = read_meta(best).get("state", {})
            if _metric(best_state.get("best_metric")) > p.best_metric:
                p.best_metric = _metric(best_state.get("best_metric"))
                p.best_step = int(best_state.get("best_step", -1))
        sums = state.get("loss_sums")
        if isinstance(sums, list) and len(sums) == 1 + len(self.terms):
            self._loss_sums = [float(v) for v in sums]
            self._loss_count = int(state.get("loss_count", 0))
        self._val_step = int(state.get("val_step", -1))
        pending = state.get("pending_rows")
        self._pending_rows = [dict(r) for r in pending] if isinstance(pending, list) else []
        opt = load_optimizer_state(ckpt)
        if opt is None:
            raise MaxcaInputError(f"cannot resume: {ckpt} has no optimizer state")
        try:
            self.optimizer.load_state_dict(opt["optimizer"])
            if opt.get("scaler"):
                self.scaler.load_state_dict(opt["scaler"])
            rng = opt.get("rng", {})
            if "torch" in rng:
                torch.set_rng_state(rng["torch"])
            if self.device.type == "cuda" and rng.get("cuda"):
                torch.cuda.set_rng_state(rng["cuda"], self.device)
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            raise MaxcaInputError(
                f"cannot resume: optimizer state {ckpt / 'optimizer.pt'} does not fit this "
                f"model and optimizer ({type(exc).__name__}: {exc})"
            ) from exc

    # ------------------------------------------------------------------------------------------
    # small pieces of the loop
    # ------------------------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def _elapsed(self) -> float:
        return self.progress.elapsed_s + (time.monotonic() - self._session_start)

    def _batches(self) -> Iterator[dict[str, Any]]:
        """Training batches from the saved position onwards, epoch after epoch."""
        p = self.progress
        while True:
            self.train_data.set_epoch(p.epoch)
            self.sampler.set_start(p.batch_in_epoch * self.config.data.batch_size)
            for batch in self.loader:
                p.batch_in_epoch += 1
                yield batch
            p.epoch += 1
            p.batch_in_epoch = 0

    def _loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        dev = self.device
        fixed = to_memory_format(batch["fixed"].to(dev, non_blocking=True), self.memory_format)
        moving = to_memory_format(batch["moving"].to(dev, non_blocking=True), self.memory_format)
        with self._autocast():
            out = self.model(fixed, moving)
        flow, warped = out.flow.float(), out.warped.float()
        fixed_oh = warped_oh = None
        if self.use_dice_loss:
            if "fixed_label" not in batch or "moving_label" not in batch:
                raise MaxcaInputError(
                    f"loss.weights.dice > 0 but a training pair has no label map "
                    f"({batch['fixed_path'][0]}, {batch['moving_path'][0]})"
                )
            fixed_oh = one_hot(batch["fixed_label"].to(dev), self.eval_labels)
            moving_oh = one_hot(batch["moving_label"].to(dev), self.eval_labels)
            warped_oh = warp(moving_oh, flow)  # linear: differentiable in the flow
        return self.loss_fn(fixed, warped, flow, fixed_oh, warped_oh)

    def _nonfinite(self, what: str, detail: str = "") -> NonFiniteLossError:
        p = self.progress
        last = self.run_dir / "checkpoints" / "last"
        if p.saved_step >= 0:
            kept = f"the last good checkpoint is {last} (step {p.saved_step})"
        else:
            kept = "no checkpoint had been saved yet"
        return NonFiniteLossError(
            f"training stopped: {what} became non-finite at step {p.step + 1}{detail}; {kept}; "
            "try a lower optim.lr or set optim.grad_clip"
        )

    def _weights_finite(self) -> bool:
        return all(
            bool(torch.isfinite(t).all())
            for t in self.module.state_dict().values()
            if t.is_floating_point()
        )

    # ------------------------------------------------------------------------------------------
    # validation
    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean ``val_loss``, ``val_dice`` (nearest-neighbour label warping, evaluation labels)
        and ``val_njd_percent`` over the validation pairs (rank 0; empty without pairs)."""
        if self.val_data is None or len(self.val_data) == 0:
            return {}
        module = self.module
        was_training = module.training
        module.eval()
        losses, dices, njds = [], [], []
        try:
            for i in range(len(self.val_data)):
                item = self.val_data[i]
                fixed = to_memory_format(item["fixed"][None].to(self.device), self.memory_format)
                moving = to_memory_format(item["moving"][None].to(self.device), self.memory_format)
                with self._autocast():
                    out = module(fixed, moving)
                flow, warped = out.flow.float(), out.warped.float()
                has_labels = "fixed_label" in item and "moving_label" in item
                if has_labels:
                    fixed_label = item["fixed_label"][None].to(self.device)
                    moving_label = item["moving_label"][None].to(self.device)
                if not self.use_dice_loss or has_labels:
                    fo = wo = None
                    if self.use_dice_loss:
                        fo = one_hot(fixed_label, self.eval_labels)
                        wo = warp(one_hot(moving_label, self.eval_labels), flow)
                    losses.append(float(self.loss_fn(fixed, warped, flow, fo, wo)[0]))
                if has_labels:
                    warped_label = warp(moving_label, flow, mode="nearest")
                    scores = dice_per_label(
                        fixed_label[0, 0].cpu().numpy(),
                        warped_label[0, 0].cpu().numpy(),
                        labels=self.eval_labels or None,
                    )
                    values = [v for v in scores.values() if not math.isnan(v)]
                    if values:
                        dices.append(float(np.mean(values)))
                njds.append(njd_percent(flow[0].cpu().numpy()))
        finally:
            module.train(was_training)
        result: dict[str, float] = {}
        if losses:
            result["val_loss"] = float(np.mean(losses))
        if dices:
            result["val_dice"] = float(np.mean(dices))
        if njds:
            result["val_njd_percent"] = float(np.mean(njds))
        return result

    # ------------------------------------------------------------------------------------------
    # checkpoints and logs (rank 0)
    # ------------------------------------------------------------------------------------------
    def data_record(self) -> Preprocessing:
        """What inference needs to reproduce the model grid and preprocessing (the checkpoint's
        ``data``): ``shape``/``spacing`` of the model grid, ``spatial_dims``, ``in_channels``,
        ``normalise``, ``percentiles``, ``resize``, ``label_ids``, ``dataset`` and the training
        ``loss`` (similarity, window, weights)."""
        d = self.config.data
        first = self.train_data.subjects[0].image
        volume = read_volume(first, "image", self.spatial_dims)
        spacing = list(volume.spacing)
        if d.resize == "resample" and d.shape is not None:
            spacing = [s * n / m for s, n, m in zip(spacing, volume.shape, self.grid_shape)]
        return Preprocessing(
            shape=tuple(int(n) for n in self.grid_shape),
            spacing=tuple(float(s) for s in spacing),
            spatial_dims=self.spatial_dims,
            in_channels=1,
            normalise=d.normalise,
            percentiles=(1.0, 99.0),  # PairDataset's percentile normalisation
            resize=d.resize,
            label_ids=tuple(int(v) for v in self.eval_labels),
            dataset=None if d.path is None else str(d.path),
            loss={  # defaults for instance optimisation at inference
                "similarity": self.config.loss.similarity,
                "window": self.config.loss.window,
                "weights": dict(vars(self.config.loss.weights)),
            },
        )

    def _state(self) -> dict[str, Any]:
        p = self.progress
        return {
            "step": p.step,
            "epoch": p.epoch,
            "batch_in_epoch": p.batch_in_epoch,
            "elapsed_s": self._elapsed(),
            "best_metric": p.best_metric if math.isfinite(p.best_metric) else None,
            "best_step": p.best_step,
            "best_metric_name": "val_dice" if self.eval_labels else "-val_loss",
            "train_config": self.config.to_dict(),
            "loss_sums": list(self._loss_sums),
            "loss_count": self._loss_count,
            "val_step": self._val_step,
            "pending_rows": list(self._pending_rows),
        }

    def _save(self, which: str, with_optimizer: bool) -> None:
        """Save ``checkpoints/<which>`` from rank 0 between two barriers."""
        self.dist.barrier()
        error: str | None = None
        try:
            if self.is_main:
                if not self._weights_finite():
                    error = "the weights"
                else:
                    opt_state = None
                    if with_optimizer:
                        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
                        if self.device.type == "cuda":
                            rng["cuda"] = torch.cuda.get_rng_state(self.device)
                        opt_state = {
                            "optimizer": self.optimizer.state_dict(),
                            "scaler": self.scaler.state_dict(),
                            "rng": rng,
                        }
                    save_checkpoint(
                        self.run_dir / "checkpoints" / which,
                        self.module,
                        optimizer_state=opt_state,
                        data=self._data_record,
                        state=self._state(),
                    )
        finally:
            error = self.dist.broadcast_object(error)
            self.dist.barrier()
        if error:
            raise self._nonfinite(error, " (checkpoint not written)")
        if which == "last":
            self.progress.saved_step = self.progress.step
        if self.is_main:
            _remove_stale_temporaries(self.run_dir / "checkpoints")

    def _prepare_csv(self, path: Path) -> None:
        """Create ``metrics.csv``, or on resume keep only the rows up to the resumed step and add
        the rows the checkpoint carries that a crash kept from reaching the file (one row per
        step)."""
        rows: list[dict[str, Any]] = []
        if self.config.resume and path.is_file():
            with open(path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= self.progress.step]
            logged = {int(r["step"]) for r in rows}
            missing = [r for r in self._pending_rows if int(r["step"]) not in logged]
            rows = sorted(rows + [_csv_row(r) for r in missing], key=lambda r: int(r["step"]))
        self._pending_rows = []
        self._logged_val_steps = {
            int(r["step"]) for r in rows if any(r.get(k) for k in ("val_loss", "val_dice"))
        }
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, self._csv_columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def _log(self, row: dict[str, float]) -> None:
        with open(self.run_dir / CSV_NAME, "a", newline="") as fh:
            writer = csv.DictWriter(fh, self._csv_columns, extrasaction="ignore")
            writer.writerow(_csv_row(row))
        if self._tb is not None:
            step = int(row["step"])
            for key, value in row.items():
                if key in ("step", "epoch") or not isinstance(value, float):
                    continue
                group = "val" if key.startswith("val_") else "train"
                name = key[4:] if key.startswith("val_") else key
                self._tb.add_scalar(f"{group}/{name}", value, step)
            self._tb.flush()

    def _echo(self, message: str) -> None:
        if not self.is_main:
            return
        if self.config.progress:
            tqdm.write(message, file=sys.stderr)
        else:
            logger.info(message)

    def _open_outputs(self) -> None:
        if not self.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config.run_dir = str(self.run_dir)
        save_config(self.config, self.run_dir / CONFIG_NAME)
        self._prepare_csv(self.run_dir / CSV_NAME)
        if self.config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(
                    str(self.run_dir / TB_NAME), purge_step=self.progress.step + 1
                )
            except ImportError:  # tensorboard is the optional extra maxca[tensorboard]
                logger.warning(
                    "TensorBoard is not installed: no tb/ events (%s)", install_hint("tensorboard")
                )
        b = self.config.budget
        self.bar_total = b.steps
        self._bar = tqdm(
            total=b.steps,
            initial=self.progress.step,
            disable=not self.config.progress,
            dynamic_ncols=True,
            desc="train",
            unit="step",
        )

    def _close_outputs(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    # ------------------------------------------------------------------------------------------
    # the loop
    # ------------------------------------------------------------------------------------------
    def _done(self, elapsed_s: float) -> bool:
        b = self.config.budget
        if b.steps is not None and self.progress.step >= b.steps:
            return True
        return b.minutes is not None and elapsed_s >= 60.0 * b.minutes

    def fit(self) -> Path:
        """Train until the budget is spent; returns the run directory.

        SIGINT, SIGTERM and SIGHUP stop training after saving ``checkpoints/last`` (single
        process) and raise ``KeyboardInterrupt``.
        """
        with _terminate_as_interrupt():
            return self._fit()

    def _estimate_horizon(self, session_steps: int, first_step_clock: float, now: float) -> None:
        """With a time budget: the run's expected length in steps from the measured step time
        of this session (after :data:`ESTIMATE_AFTER_STEPS` steps); drives the warm-up and the
        progress bar's total. ``now`` is rank 0's clock shared by every rank, so that every
        rank computes the same horizon (and learning rate)."""
        b = self.config.budget
        if b.minutes is None or session_steps < ESTIMATE_AFTER_STEPS:
            return
        per_step = (now - first_step_clock) / max(1, session_steps - 1)
        if per_step <= 0:
            return
        remaining = max(0.0, 60.0 * b.minutes - now)
        horizon = self.progress.step + int(remaining / per_step)
        if b.steps is not None:
            horizon = min(horizon, b.steps)
        self.horizon_steps = max(horizon, self.progress.step)
        if self._bar is not None and self._bar.total != self.horizon_steps:
            self._bar.total = self.horizon_steps
            self._bar.refresh()
        self.bar_total = self.horizon_steps

    def _warn_if_barely_trained(self, max_lr: float) -> None:
        p, optim = self.progress, self.config.optim
        reasons = []
        if p.step < MIN_TRAINED_STEPS:
            reasons.append(f"only {p.step} optimisation steps")
        if not self.config.resume and max_lr < 0.5 * optim.lr:
            reasons.append(
                f"the learning rate peaked at {max_lr:.3g}, under half of optim.lr={optim.lr:g}"
            )
        if reasons and self.is_main:
            logger.warning(
                "the model barely trained (%s): raise budget.steps/budget.minutes or lower "
                "optim.warmup_steps",
                "; ".join(reasons),
            )

    def _fit(self) -> Path:
        cfg = self.config
        p = self.progress
        self._session_start = time.monotonic()
        self._data_record = self.data_record() if self.is_main else Preprocessing()
        self._open_outputs()
        self.dist.barrier()
        if self.is_main:
            resumed = f", resumed at step {p.step}" if cfg.resume else ""
            self._echo(f"run directory: {self.run_dir}{resumed}")
        self.model.train()
        params = [q for q in self.module.parameters() if q.requires_grad]
        sums = torch.zeros(1 + len(self.terms), dtype=torch.float64)
        count = 0
        if self._loss_sums:  # the interval a resumed checkpoint was saved in
            sums += torch.tensor(self._loss_sums, dtype=torch.float64)
            count = self._loss_count
        last_ckpt_step = -1
        shared_elapsed = self._elapsed()
        batches = self._batches()
        session_steps, first_step_clock, max_lr = 0, 0.0, 0.0
        row: dict[str, Any] = {}
        try:
            while not self._done(shared_elapsed):
                lr = learning_rate(
                    cfg.optim, cfg.budget, p.step, shared_elapsed, self.horizon_steps
                )
                max_lr = max(max_lr, lr)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                batch = next(batches)
                total, terms = self._loss(batch)
                # one all-reduce (and one device sync) per step: loss, terms, a non-finite flag
                # and rank 0's clock
                values = torch.stack([total.detach(), *(terms[t].detach() for t in self.terms)])
                values = values.double()
                clock = self._elapsed() if self.is_main else 0.0
                extra = torch.tensor([0.0, clock], dtype=torch.float64, device=values.device)
                extra[0] = (~torch.isfinite(values).all()).double()
                packed = self.dist.all_reduce_sum(torch.cat([values, extra])).cpu()
                shared_elapsed = float(packed[-1])
                if packed[-2] > 0:
                    local = values.cpu().tolist()
                    detail = ", ".join(f"{n}={v:.4g}" for n, v in zip(["loss", *self.terms], local))
                    raise self._nonfinite("the loss", f" ({detail})")
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(total).backward()
                if cfg.optim.grad_clip is not None:
                    self.scaler.unscale_(self.optimizer)
                    norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
                    if not torch.isfinite(norm) and not self.scaler.is_enabled():
                        raise self._nonfinite("the gradient norm", f" ({float(norm)})")
                self.scaler.step(self.optimizer)
                self.scaler.update()
                p.step += 1
                session_steps += 1
                if session_steps == 1:
                    first_step_clock = shared_elapsed
                self._estimate_horizon(session_steps, first_step_clock, shared_elapsed)
                sums += packed[: 1 + len(self.terms)] / self.dist.world_size
                count += 1
                if self._bar is not None:
                    mean_loss = float(packed[0]) / self.dist.world_size
                    self._bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
                    self._bar.update(1)

                finishing = self._done(shared_elapsed)
                row: dict[str, Any] = {}
                if count and (p.step % cfg.log_every == 0 or finishing):
                    mean = (sums / count).tolist()
                    row.update(loss=mean[0], lr=lr)
                    row.update({f"loss_{t}": v for t, v in zip(self.terms, mean[1:])})
                    sums.zero_()
                    count = 0
                if cfg.val_every and (p.step % cfg.val_every == 0 or finishing):
                    row.update(self._validate_and_keep_best())
                    self._val_step = p.step
                if row:
                    row.update(step=p.step, epoch=p.epoch, elapsed_s=self._elapsed())
                saving = p.step % cfg.ckpt_every == 0 or finishing
                if saving:
                    # the checkpoint carries this step's row: a crash before it reaches
                    # metrics.csv loses nothing (the resume writes it)
                    self._pending_rows = [row] if row and self.is_main else []
                    self._loss_sums, self._loss_count = sums.tolist(), count
                    self._save("last", with_optimizer=True)
                    last_ckpt_step = p.step
                    self._pending_rows = []
                if row and self.is_main:
                    self._log(row)
                row = {}
            # the budget was spent before any step of this session (a resumed, finished run):
            # validate once unless the checkpoint's step was validated already
            validated = self._val_step == p.step or p.step in self._logged_val_steps
            if cfg.val_every and not validated and p.step > 0:
                metrics = self._validate_and_keep_best()
                self._val_step = p.step
                if metrics and self.is_main:
                    self._log({**metrics, "step": p.step, "epoch": p.epoch})
            if last_ckpt_step != p.step and p.saved_step != p.step:
                self._loss_sums, self._loss_count = sums.tolist(), count
                self._save("last", with_optimizer=True)
        except KeyboardInterrupt:
            if not self.dist.enabled and p.step > max(last_ckpt_step, p.saved_step, 0):
                self._echo(f"interrupted at step {p.step}: saving checkpoints/last")
                self._loss_sums, self._loss_count = sums.tolist(), count
                self._pending_rows = [row] if row.get("step") == p.step else []
                self._save("last", with_optimizer=True)
            raise
        finally:
            self._close_outputs()
        if self.is_main:
            self._echo(f"done: {p.step} steps; checkpoints in {self.run_dir / 'checkpoints'}")
            if session_steps:
                self._warn_if_barely_trained(max_lr)
        return self.run_dir

    def _validate_and_keep_best(self) -> dict[str, float]:
        """Validate (rank 0), save ``checkpoints/best`` when the score improves."""
        self.dist.barrier()
        metrics = self.validate() if self.is_main else {}
        if "val_dice" in metrics:
            score = metrics["val_dice"]
        elif "val_loss" in metrics:
            score = -metrics["val_loss"]
        else:
            score = math.nan
        improved = bool(self.dist.broadcast_object(score > self.progress.best_metric))
        if improved:
            self.progress.best_metric = score
            self.progress.best_step = self.progress.step
            self._save("best", with_optimizer=False)
        if metrics and self.is_main:
            text = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
            self._echo(f"step {self.progress.step}: {text}{' (best)' if improved else ''}")
        return metrics


# ---------------------------------------------------------------------------------------------
# entry points
# ---------------------------------------------------------------------------------------------
def train(
    config: ExperimentConfig,
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool | None = None,
    overwrite: bool = False,
) -> Path:
    """Train ``config`` (in the process group torchrun set up, if any); returns the run dir.

    Args:
        config: the experiment.
        run_dir: overrides ``config.run_dir``.
        resume: overrides ``config.resume``: continue ``run_dir`` from ``checkpoints/last``.
        overwrite: allow a ``run_dir`` that exists and is not a maxca run.
    """
    if run_dir is not None:
        config.run_dir = os.path.abspath(run_dir)
    if resume is not None:
        config.resume = bool(resume)
    ctx = init_distributed(config.device)
    try:
        return Trainer(config, ctx, overwrite=overwrite).fit()
    finally:
        shutdown(ctx)


def main_train(
    config_path: str | os.PathLike[str], overrides: Sequence[str] = (), overwrite: bool = False
) -> Path:
    """``maxca train CONFIG [key=value ...] [--overwrite]``: load the YAML (or a run
    directory's config), apply the overrides and train; returns the run directory."""
    return train(load_config(config_path, list(overrides)), overwrite=overwrite)
