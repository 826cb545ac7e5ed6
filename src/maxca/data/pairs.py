"""Pair samplers: which (fixed, moving) subject indices make up an epoch.

Every sampler is deterministic given its ``seed`` and the epoch: ``pairs(epoch)`` always returns
the same list, so a dataset built on it gives the same pair for the same item index in every
DataLoader worker. Iterating a sampler yields the pairs of its current epoch
(:meth:`PairSampler.set_epoch`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from maxca.errors import MaxcaInputError

__all__ = ["AtlasPairs", "ExplicitPairs", "PairSampler", "RandomPairs", "make_pair_sampler"]

Pair = tuple[int, int]


class PairSampler:
    """Base class: ``num_subjects`` subjects, ``num_pairs`` (fixed, moving) pairs per epoch."""

    def __init__(self, num_subjects: int, num_pairs: int, seed: int = 0) -> None:
        if int(num_subjects) < 1:
            raise MaxcaInputError(f"pair sampler needs at least 1 subject, got {num_subjects}")
        if int(num_pairs) < 1:
            raise MaxcaInputError(f"num_pairs must be >= 1, got {num_pairs}")
        self.num_subjects = int(num_subjects)
        self.num_pairs = int(num_pairs)
        self.seed = int(seed)
        self.epoch = 0

    def _rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(epoch)])

    def pairs(self, epoch: int | None = None) -> list[Pair]:
        """The ``(fixed_index, moving_index)`` pairs of ``epoch`` (default: the current one)."""
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose pairs iteration yields."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_pairs

    def __iter__(self) -> Iterator[Pair]:
        yield from self.pairs()


class RandomPairs(PairSampler):
    """Random inter-subject pairs, never a subject with itself.

    Each epoch the moving subjects run through a random permutation of all subjects (repeated as
    needed to reach ``num_pairs``), each with a uniformly drawn *other* subject as fixed.

    Args:
        num_subjects: number of subjects (>= 2).
        num_pairs: pairs per epoch (default ``num_subjects``).
        seed: seed of the per-epoch ``numpy.random.Generator``.
    """

    def __init__(self, num_subjects: int, num_pairs: int | None = None, seed: int = 0) -> None:
        if int(num_subjects) < 2:
            raise MaxcaInputError(
                f"random inter-subject pairs need at least 2 subjects, got {num_subjects}"
            )
        super().__init__(num_subjects, num_pairs or num_subjects, seed)

    def pairs(self, epoch: int | None = None) -> list[Pair]:
        rng = self._rng(self.epoch if epoch is None else epoch)
        n = self.num_subjects
        repeats = -(-self.num_pairs // n)
        moving = np.concatenate([rng.permutation(n) for _ in range(repeats)])[: self.num_pairs]
        # a uniform draw among the n - 1 others: shift by 1..n-1 modulo n
        fixed = (moving + rng.integers(1, n, size=self.num_pairs)) % n
        return [(int(f), int(m)) for f, m in zip(fixed, moving)]


class AtlasPairs(PairSampler):
    """Atlas-based pairs: one subject (the atlas) paired with every other subject.

    Args:
        num_subjects: number of subjects, atlas included (>= 2).
        atlas_index: index of the atlas.
        num_pairs: pairs per epoch (default: every other subject once).
        seed: seed of the per-epoch shuffling.
        atlas_role: ``"fixed"`` (subjects are warped to the atlas, the default) or ``"moving"``.
    """

    def __init__(
        self,
        num_subjects: int,
        atlas_index: int = 0,
        num_pairs: int | None = None,
        seed: int = 0,
        atlas_role: str = "fixed",
    ) -> None:
        if int(num_subjects) < 2:
            raise MaxcaInputError(f"atlas pairs need at least 2 subjects, got {num_subjects}")
        if not 0 <= int(atlas_index) < int(num_subjects):
            raise MaxcaInputError(
                f"atlas_index must be in [0, {int(num_subjects) - 1}], got {atlas_index}"
            )
        if atlas_role not in ("fixed", "moving"):
            raise MaxcaInputError(f"atlas_role must be 'fixed' or 'moving', got {atlas_role!r}")
        super().__init__(num_subjects, num_pairs or int(num_subjects) - 1, seed)
        self.atlas_index = int(atlas_index)
        self.atlas_role = atlas_role

    def pairs(self, epoch: int | None = None) -> list[Pair]:
        rng = self._rng(self.epoch if epoch is None else epoch)
        others = np.array([i for i in range(self.num_subjects) if i != self.atlas_index])
        repeats = -(-self.num_pairs // len(others))
        subjects = np.concatenate([rng.permutation(others) for _ in range(repeats)])
        subjects = subjects[: self.num_pairs]
        if self.atlas_role == "fixed":
            return [(self.atlas_index, int(s)) for s in subjects]
        return [(int(s), self.atlas_index) for s in subjects]


class ExplicitPairs(PairSampler):
    """A fixed list of ``(fixed_index, moving_index)`` pairs, in order, every epoch.

    Args:
        pairs: the pairs.
        num_subjects: number of subjects the indices refer to (checked).
        num_pairs: pairs per epoch (default ``len(pairs)``; a larger value cycles the list).
    """

    def __init__(
        self, pairs: Sequence[Sequence[int]], num_subjects: int, num_pairs: int | None = None
    ) -> None:
        checked: list[Pair] = []
        for i, pair in enumerate(pairs):
            if len(pair) != 2:
                raise MaxcaInputError(f"pairs[{i}] must be (fixed, moving), got {pair!r}")
            f, m = (int(v) for v in pair)
            for role, v in (("fixed", f), ("moving", m)):
                if not 0 <= v < int(num_subjects):
                    raise MaxcaInputError(
                        f"pairs[{i}] {role} index {v} out of range [0, {int(num_subjects) - 1}]"
                    )
            checked.append((f, m))
        if not checked:
            raise MaxcaInputError("explicit pair list is empty")
        super().__init__(num_subjects, num_pairs or len(checked), seed=0)
        self._pairs = checked

    def pairs(self, epoch: int | None = None) -> list[Pair]:
        k = len(self._pairs)
        return [self._pairs[i % k] for i in range(self.num_pairs)]


def make_pair_sampler(
    mode: str,
    num_subjects: int,
    num_pairs: int | None = None,
    seed: int = 0,
    atlas_index: int = 0,
    pairs: Sequence[Sequence[int]] | None = None,
) -> PairSampler:
    """Build a sampler by name: ``"random"``, ``"atlas"`` or ``"pairs"`` (needs ``pairs``)."""
    if mode == "random":
        return RandomPairs(num_subjects, num_pairs, seed)
    if mode == "atlas":
        return AtlasPairs(num_subjects, atlas_index, num_pairs, seed)
    if mode == "pairs":
        if pairs is None:
            raise MaxcaInputError("pair mode 'pairs' needs an explicit list of pairs")
        return ExplicitPairs(pairs, num_subjects, num_pairs)
    raise MaxcaInputError(f"pair mode must be 'random', 'atlas' or 'pairs', got {mode!r}")
