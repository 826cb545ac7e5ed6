"""Self-describing, atomic checkpoints that never execute code on load.

A checkpoint is a directory::

    CKPT/
      model.safetensors   # weights (safetensors: plain tensors, no pickle)
      model.json          # {"format": 1, "maxca_version", "model": {"name", ...config},
                          #  "data": Preprocessing.to_dict(), "state": {...}}
      optimizer.pt        # optional optimiser/scheduler state, loaded with weights_only=True

A run directory holds ``checkpoints/last`` and ``checkpoints/best``; :func:`resolve_checkpoint`
accepts a run directory, a checkpoint directory or a ``.safetensors`` file.

Writes are atomic: everything goes into a temporary sibling directory that is renamed over the
old checkpoint only when complete, so a crash (even ``kill -9``) mid-save leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from maxca._version import __version__
from maxca.errors import MaxcaInputError
from maxca.models.preprocessing import Preprocessing

__all__ = [
    "CHECKSUM_KEY",
    "CheckpointInfo",
    "Preprocessing",
    "load_checkpoint",
    "load_optimizer_state",
    "read_meta",
    "resolve_checkpoint",
    "save_checkpoint",
    "weights_sha256",
]

FORMAT_VERSION = 1
WEIGHTS, META, OPTIM = "model.safetensors", "model.json", "optimizer.pt"
CHECKSUM_KEY = "maxca_sha256"  # safetensors metadata entry: sha256 of the tensor data


def weights_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 (hex) over every tensor's name, dtype, shape and raw bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _verify_weights(file: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse weights whose checksum (when the file has one) differs, or that are not finite."""
    try:
        with safe_open(str(file), framework="pt") as fh:
            stored = (fh.metadata() or {}).get(CHECKSUM_KEY)
    except Exception as exc:  # safetensors raises its own error types
        raise MaxcaInputError(f"unreadable weights {file}: {exc}") from exc
    if stored is not None and stored != weights_sha256(tensors):
        raise MaxcaInputError(
            f"corrupt weights {file}: the tensor data does not match the checksum saved with it"
        )
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise MaxcaInputError(f"corrupt weights {file}: tensor {name} has NaN/Inf values")


@dataclass
class CheckpointInfo:
    """What :func:`load_checkpoint` returns besides the model.

    Attributes:
        path: the checkpoint directory.
        model_config: the model's config (``model`` entry of ``model.json``).
        data: the stored preprocessing record as read (``data`` entry); typed access through
            :attr:`preprocessing`.
        state: the training state (step, best metric, training config).
    """

    path: Path
    model_config: dict[str, Any]
    data: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def preprocessing(self) -> Preprocessing:
        """:attr:`data` as a :class:`~maxca.models.preprocessing.Preprocessing` (old records,
        with ``normalize`` or without some keys, included)."""
        return Preprocessing.from_dict(self.data)


def _model_config(model: nn.Module) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "to_dict"):
        raise MaxcaInputError("model has no .config with to_dict(); build it with create_model()")
    out = dict(cfg.to_dict())
    out.setdefault("name", getattr(model, "model_name", None) or getattr(cfg, "name", None))
    if not out.get("name"):
        raise MaxcaInputError("model config has no registered model name")
    return out


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    optimizer_state: dict[str, Any] | None = None,
    data: Preprocessing | Mapping[str, Any] | None = None,
    state: dict[str, Any] | None = None,
) -> Path:
    """Atomically write a checkpoint directory at ``path`` (replacing an existing one).

    Args:
        path: the checkpoint directory to write.
        model: a model built with :func:`maxca.models.create_model` (DDP-wrapped accepted).
        optimizer_state: optional optimiser/scheduler state (``optimizer.pt``).
        data: how the model expects its inputs; a plain mapping is read with
            :meth:`Preprocessing.from_dict`, so ``model.json`` always holds one format.
        state: training state (JSON-serialisable).
    """
    if not isinstance(data, Preprocessing):
        data = Preprocessing.from_dict(data)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = model.module if hasattr(model, "module") else model  # unwrap DDP
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a checkpoint is a normal folder
    try:
        tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        save_file(tensors, str(tmp / WEIGHTS), metadata={CHECKSUM_KEY: weights_sha256(tensors)})
        meta = {
            "format": FORMAT_VERSION,
            "maxca_version": __version__,
            "model": _model_config(module),
            "data": data.to_dict(),
            "state": state or {},
        }
        (tmp / META).write_text(json.dumps(meta, indent=2, default=_json_default))
        if optimizer_state is not None:
            torch.save(optimizer_state, tmp / OPTIM)
        for f in tmp.iterdir():  # flush file contents before the rename makes them visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, tuple):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def resolve_checkpoint(path: str | os.PathLike[str], which: str = "best") -> Path:
    """Find the checkpoint directory for a run dir (``checkpoints/<which>``, falling back to
    ``last``), a checkpoint dir, or a ``model.safetensors`` file."""
    p = Path(path)
    if not p.exists():
        raise MaxcaInputError(f"model not found: {p}")
    if p.is_file():
        if p.suffix != ".safetensors":
            raise MaxcaInputError(f"expected a run directory or a .safetensors file, got {p}")
        p = p.parent
    if (p / META).exists():
        return p
    for name in (which, "last", "best"):
        cand = p / "checkpoints" / name
        if (cand / META).exists():
            return cand
        # a save of `name` was interrupted between its two renames: the previous copy, moved
        # aside to `.<name>.old-<pid>`, is intact
        old = [c for c in p.glob(f"checkpoints/.{name}.old-*") if (c / META).exists()]
        if old:  # the newest copy by saved step, then write time (not the names' text order)
            return max(old, key=_step_and_mtime)
    raise MaxcaInputError(f"no checkpoint in {p} (expected {META} + {WEIGHTS} or checkpoints/)")


def _step_and_mtime(ckpt: Path) -> tuple[int, int]:
    try:
        step = int(json.loads((ckpt / META).read_text()).get("state", {}).get("step", -1))
    except (OSError, ValueError, TypeError, AttributeError):
        step = -1
    return step, (ckpt / META).stat().st_mtime_ns


def read_meta(ckpt: Path) -> dict[str, Any]:
    """Read and validate ``model.json`` of a checkpoint directory."""
    try:
        meta = json.loads((ckpt / META).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MaxcaInputError(f"unreadable checkpoint metadata {ckpt / META}: {exc}") from exc
    if not isinstance(meta, dict) or "model" not in meta or "name" not in meta.get("model", {}):
        raise MaxcaInputError(f"{ckpt / META} has no 'model' entry with a 'name'")
    return meta


def load_checkpoint(
    path: str | os.PathLike[str], which: str = "best", map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, CheckpointInfo]:
    """Rebuild the model from its config and load its weights strictly (no code executed).

    Raises :class:`MaxcaInputError` when the weights do not match the config (missing,
    unexpected or mis-shaped tensors), naming the first offending tensors.
    """
    from maxca.models import model_from_config

    ckpt = resolve_checkpoint(path, which)
    meta = read_meta(ckpt)
    model = model_from_config(dict(meta["model"]))
    try:
        tensors = load_file(str(ckpt / WEIGHTS), device=str(map_location))
    except Exception as exc:  # safetensors raises its own error types
        raise MaxcaInputError(f"unreadable weights {ckpt / WEIGHTS}: {exc}") from exc
    _verify_weights(ckpt / WEIGHTS, tensors)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    bad = sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    if missing or unexpected or bad:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}")
        if bad:
            k = bad[0]
            parts.append(
                f"shape of {k}: config expects {tuple(expected[k].shape)}, "
                f"file has {tuple(tensors[k].shape)}"
            )
        raise MaxcaInputError(f"checkpoint {ckpt} does not match its config: " + "; ".join(parts))
    model.load_state_dict(tensors, strict=True)
    model.to(map_location)
    info = CheckpointInfo(ckpt, dict(meta["model"]), meta.get("data", {}), meta.get("state", {}))
    return model, info


def load_optimizer_state(ckpt: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Optimiser/scheduler state saved beside the weights (``weights_only=True``), or None."""
    f = Path(ckpt) / OPTIM
    if not f.exists():
        return None
    try:
        state = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zip, or a pickle that asks for code: refused
        raise MaxcaInputError(f"unreadable optimizer state {f}: {_first_line(exc)}") from exc
    if not isinstance(state, dict):
        raise MaxcaInputError(f"unreadable optimizer state {f}: expected a dict")
    return state


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
