"""Peak of live tensor storage during one training step, and what is alive at the peak.

:class:`LiveBytes` is a ``TorchDispatchMode``: every storage an aten op returns is counted
(once, by data pointer) until its Python storage object is finalised (PyTorch preserves a
storage's Python object as long as the storage lives, so the finaliser fires when the memory
is released, whether the tensor was held by Python or saved by autograd). Each storage is
labelled with the phase (forward / loss / backward), the module being run (forward hooks; in
backward the modules re-run by checkpoint recomputation show as ``recompute:<module>``), the
autograd node being evaluated, the op and its shape. Temporaries allocated and freed inside
one op are not seen. Parameter storages are counted from the start (label ``param``),
parameter gradients as ``grad``.

Extrapolation to a larger input: besides the raw bytes, the tracker keeps a *scaled* running
sum in which a storage counts ``ratio`` times (the voxel ratio of the target size) when it
grows with the volume, once otherwise. A storage is taken to grow with the volume when its
element count is a multiple of ``unit``, the voxel count of the level-1 grid (the caller
passes it; every full-size or half-size feature map, its grouped copies and the regional
branch's per-region matrices are such multiples), and never for parameters and gradients.
Parameter-sized temporaries (weight gradients) and the dilated branch's fixed ``R^d`` groups
of per-group matrices count once, as they do not grow.
"""

from __future__ import annotations

import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def _status_bytes(key: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


@dataclass
class PhasePeak:
    """Peak live bytes of one phase, the op that reached it and the live storages by label."""

    peak: int = 0
    scaled_peak: float = 0.0
    scaled_at: str = ""
    scaled_alive: list[tuple[str, float]] = field(default_factory=list)
    at: str = ""
    alive: list[tuple[str, int]] = field(default_factory=list)
    #: bytes of parameters and of parameter gradients alive at the peak (do not scale)
    fixed: int = 0
    #: with op temporaries (``LiveBytes(rss=True)``): the scaled peak of live storage plus
    #: the memory an op allocated and freed inside itself, and the op where it was reached
    temp_scaled_peak: float = 0.0
    temp_at: str = ""


class LiveBytes(TorchDispatchMode):
    """Track live tensor-storage bytes per phase (see the module docstring)."""

    def __init__(
        self,
        model: torch.nn.Module,
        top: int = 24,
        ratio: float = 1.0,
        unit: int = 0,
        rss: bool = False,
    ) -> None:
        super().__init__()
        #: measure each op's internal temporaries: reset the process's peak resident memory
        #: before the op (``/proc/self/clear_refs``), read it after (Linux only)
        self.rss = rss
        self.temporaries: Counter[str] = Counter()
        self.live: dict[int, tuple[int, str, float]] = {}
        self.current = 0
        self.scaled = 0.0
        self.ratio, self.unit = ratio, unit
        self.phase = "setup"
        self.peaks: dict[str, PhasePeak] = {}
        self.top = top
        self._stack: list[str] = []
        self._names = {m: n or "model" for n, m in model.named_modules()}
        self._hooks = [
            torch.nn.modules.module.register_module_forward_pre_hook(self._enter),
            # always_call: pop also when a checkpoint's recomputation stops early by raising
            torch.nn.modules.module.register_module_forward_hook(self._leave, always_call=True),
        ]
        for p in model.parameters():
            self._add(p.untyped_storage(), "param")

    def close(self) -> None:
        for h in self._hooks:
            h.remove()

    def _enter(self, module: torch.nn.Module, args: Any) -> None:
        self._stack.append(self._names.get(module, type(module).__name__))

    def _leave(self, module: torch.nn.Module, args: Any, out: Any) -> None:
        if self._stack:
            self._stack.pop()

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        alive, fixed = self._alive()
        self.peaks.setdefault(
            phase,
            PhasePeak(
                peak=self.current,
                scaled_peak=self.scaled,
                scaled_at="start",
                scaled_alive=self._scaled_alive(),
                at="start",
                alive=alive,
                fixed=fixed,
            ),
        )

    def _free(self, key: int) -> None:
        rec = self.live.pop(key, None)
        if rec is not None:
            self.current -= rec[0]
            self.scaled -= rec[0] * rec[2]

    def weight(self, label: str, numel: int) -> float:
        """How many times a storage counts in the scaled sum (see the module docstring)."""
        if label in ("param", "grad") or self.unit <= 0 or numel % self.unit:
            return 1.0
        return self.ratio

    def _scaled_alive(self) -> list[tuple[str, float]]:
        agg: Counter[str] = Counter()
        for nbytes, label, w in self.live.values():
            agg[label] += nbytes * w
        return agg.most_common(self.top)

    def _alive(self) -> tuple[list[tuple[str, int]], int]:
        """The ``top`` labels by live bytes, and the bytes of parameters + gradients."""
        agg: Counter[str] = Counter()
        for nbytes, label, _ in self.live.values():
            agg[label] += nbytes
        return agg.most_common(self.top), agg["param"] + agg["grad"]

    def _add(self, st: torch.UntypedStorage, label: str, itemsize: int = 4) -> None:
        nbytes, key = st.nbytes(), st.data_ptr()
        if nbytes == 0 or key in self.live:
            return
        w = self.weight(label, nbytes // itemsize)
        self.live[key] = (nbytes, label, w)
        self.current += nbytes
        self.scaled += nbytes * w
        weakref.finalize(st, self._free, key)

    def _label(self, func: Any, shape: tuple[int, ...]) -> str:
        module = self._stack[-1] if self._stack else "-"
        op = str(func.overloadpacket.__name__)
        if self.phase != "backward":
            return f"{self.phase} {module} {op} {shape}"
        node = torch._C._current_autograd_node()
        nname = type(node).__name__ if node is None else node.name()
        if "AccumulateGrad" in nname:
            return "grad"
        where = f"recompute:{module}" if self._stack else nname
        return f"backward {where} {op} {shape}"

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if self.rss:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # VmHWM := VmRSS
            rss0 = _status_bytes("VmRSS")
            before_s = self.scaled
        out = func(*args, **(kwargs or {}))
        if self.rss:
            inner = _status_bytes("VmHWM") - max(rss0, _status_bytes("VmRSS"))
            if inner > 0:
                self._temporary(func, args, out, inner, before_s)
        new = False
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                st = t.untyped_storage()
                if st.data_ptr() not in self.live and st.nbytes() > 0:
                    self._add(st, self._label(func, tuple(t.shape)), t.element_size())
                    new = True
        if new:
            pk = self.peaks.setdefault(self.phase, PhasePeak())
            if self.current > pk.peak:
                pk.peak = self.current
                pk.at = self._label(func, tuple(tree_flatten(out)[0][0].shape))
                pk.alive, pk.fixed = self._alive()
            pk.temp_scaled_peak = max(pk.temp_scaled_peak, self.scaled)
            if self.scaled > pk.scaled_peak:
                pk.scaled_peak = self.scaled
                pk.scaled_at = self._label(func, tuple(tree_flatten(out)[0][0].shape))
                pk.scaled_alive = self._scaled_alive()
        return out

    def _temporary(self, func: Any, args: Any, out: Any, inner: int, before_s: float) -> None:
        """Record ``inner`` bytes allocated and freed inside one op (scaled like the op's
        largest tensor argument or output)."""
        sizes = [t.numel() for t in tree_flatten((args, out))[0] if isinstance(t, torch.Tensor)]
        grows = any(self.unit > 0 and n >= self.unit and n % self.unit == 0 for n in sizes)
        w = self.ratio if grows else 1.0
        label = self._label(func, ())
        self.temporaries[label] = max(self.temporaries[label], int(inner * w))
        # after the op its outputs are counted; during it, the larger of before/after + inner
        cand = max(before_s, self.scaled_after(out)) + inner * w
        pk = self.peaks.setdefault(self.phase, PhasePeak())
        if cand > pk.temp_scaled_peak:
            pk.temp_scaled_peak, pk.temp_at = cand, label

    def scaled_after(self, out: Any) -> float:
        """The scaled live sum once ``out``'s new storages are counted."""
        extra = 0.0
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                st = t.untyped_storage()
                if st.data_ptr() not in self.live:
                    nb = st.nbytes()
                    extra += nb * self.weight("", nb // max(1, t.element_size()))
        return self.scaled + extra

    def add(self, *tensors: torch.Tensor, label: str = "input") -> None:
        """Count tensors created before the mode was entered (the inputs)."""
        for t in tensors:
            self._add(t.untyped_storage(), label)
