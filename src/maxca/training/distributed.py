"""Data-parallel training with ``torchrun`` and ``torch.nn.parallel.DistributedDataParallel``.

Launch any training command under ``torchrun``, e.g.::

    torchrun --standalone --nproc_per_node 2 -m maxca.training configs/brain-synth-2mm.yaml

Each process reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` from the environment (set by
torchrun), joins the process group (``nccl`` on CUDA, ``gloo`` on the CPU) and trains on its own
shard of the pairs (:class:`ShardSampler`); DDP averages the gradients so every rank holds the
same weights. Only rank 0 writes files, logs and shows a progress bar; checkpoints are written by
rank 0 between two barriers. Without these variables (or with ``WORLD_SIZE=1``) everything runs
in a single process and :class:`DistContext` calls are no-ops.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import Sampler

from maxca._checks import resolve_device as _resolve_device
from maxca.errors import MaxcaInputError

__all__ = [
    "DistContext",
    "ShardSampler",
    "init_distributed",
    "resolve_device",
    "shutdown",
    "unwrap",
    "wrap_model",
]


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise MaxcaInputError(
            f"environment variable {name} must be an integer, got {value!r}"
        ) from None


@dataclass
class DistContext:
    """Where this process stands in a data-parallel job (a single process by default).

    Attributes:
        rank: global rank of this process.
        world_size: number of processes.
        local_rank: rank on this machine (selects the GPU).
        backend: process-group backend (``nccl``/``gloo``) or ``None`` when not distributed.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only process that writes files, logs and progress."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process (no-op in a single process)."""
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over processes, in place; returns it."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every process (picklable objects)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def resolve_device(spec: str, ctx: DistContext | None = None) -> torch.device:
    """The device for ``spec`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``), checked by
    :func:`maxca._checks.resolve_device`; under DDP on CUDA the GPU is this process's
    ``LOCAL_RANK``, and a bare ``cuda`` is the current GPU."""
    ctx = ctx or DistContext()
    device = _resolve_device(spec)
    if device.type != "cuda":
        return device
    if ctx.enabled:
        return torch.device("cuda", ctx.local_rank)
    if device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    if device.index >= torch.cuda.device_count():
        raise MaxcaInputError(
            f"device {spec!r} requested but only {torch.cuda.device_count()} GPU(s) exist"
        )
    return device


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group described by torchrun's environment variables.

    Returns a single-process :class:`DistContext` when ``WORLD_SIZE`` is unset or 1. The
    backend is ``nccl`` when the job trains on CUDA, else ``gloo``.
    """
    world = _env_int("WORLD_SIZE") or 1
    if world <= 1:
        return DistContext()
    rank, local_rank = _env_int("RANK"), _env_int("LOCAL_RANK")
    if rank is None:
        raise MaxcaInputError("WORLD_SIZE > 1 but RANK is not set; launch with torchrun")
    if not 0 <= rank < world:
        raise MaxcaInputError(f"RANK must be in [0, {world - 1}], got {rank}")
    local_rank = rank if local_rank is None else local_rank
    use_cuda = device != "cpu" and torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise MaxcaInputError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) visible"
            )
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {}
        if use_cuda:
            kwargs["device_id"] = torch.device("cuda", local_rank)
        dist.init_process_group(backend=backend, rank=rank, world_size=world, **kwargs)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, backend=backend)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (safe to call twice or without one)."""
    if ctx.enabled and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    """``model`` wrapped in ``DistributedDataParallel`` when distributed, else unchanged."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or ``model`` itself)."""
    return model.module if hasattr(model, "module") else model


class ShardSampler(Sampler[int]):
    """Indices ``0 .. n-1`` split across ranks: rank ``r`` takes ``r, r + W, r + 2W, ...``.

    The index list is padded by wrapping around to a multiple of the world size, so every rank
    gets the same number of items per epoch (DDP needs equal step counts). The order itself is
    left to the dataset (``PairDataset`` draws new pairs every epoch). ``start`` skips the first
    items of this rank's shard (resuming in the middle of an epoch).

    Args:
        size: number of items of the dataset (>= 1).
        rank: this process's rank.
        world_size: number of processes.
    """

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        if size < 1:
            raise MaxcaInputError(f"cannot shard an empty dataset (size {size})")
        if not 0 <= rank < world_size:
            raise MaxcaInputError(f"rank must be in [0, {world_size - 1}], got {rank}")
        self.size = int(size)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.start = 0

    @property
    def shard_size(self) -> int:
        """Items per rank and epoch."""
        return math.ceil(self.size / self.world_size)

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` items of this rank's shard on the next iteration."""
        self.start = max(0, int(start))

    def indices(self) -> list[int]:
        """This rank's whole shard for one epoch (before ``start`` is applied)."""
        total = self.shard_size * self.world_size
        padded = [i % self.size for i in range(total)]
        return padded[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        yield from self.indices()[self.start :]

    def __len__(self) -> int:
        return max(0, self.shard_size - self.start)
