"""Pair samplers."""

from __future__ import annotations

import pickle

import pytest

from maxca.data.pairs import AtlasPairs, ExplicitPairs, RandomPairs, make_pair_sampler
from maxca.errors import MaxcaInputError


def test_random_pairs_never_self_and_reproducible() -> None:
    sampler = RandomPairs(5, num_pairs=200, seed=3)
    pairs = sampler.pairs(0)
    assert len(pairs) == 200 == len(sampler)
    assert all(f != m and 0 <= f < 5 and 0 <= m < 5 for f, m in pairs)
    assert pairs == RandomPairs(5, num_pairs=200, seed=3).pairs(0)
    assert pairs != RandomPairs(5, num_pairs=200, seed=4).pairs(0)
    assert pairs != sampler.pairs(1)
    # every ordered pair of distinct subjects shows up, as fixed and as moving
    assert {(f, m) for f, m in pairs} == {(f, m) for f in range(5) for m in range(5) if f != m}
    # moving subjects are balanced: each appears 40 times
    assert sorted(m for _, m in pairs) == sorted(list(range(5)) * 40)
    # iteration follows set_epoch, and the sampler pickles
    sampler.set_epoch(1)
    assert list(sampler) == sampler.pairs(1)
    assert pickle.loads(pickle.dumps(sampler)).pairs(1) == sampler.pairs(1)


def test_random_pairs_two_subjects_and_default_length() -> None:
    assert set(RandomPairs(2, num_pairs=10).pairs()) == {(0, 1), (1, 0)}
    assert len(RandomPairs(7)) == 7
    with pytest.raises(MaxcaInputError, match="at least 2 subjects, got 1"):
        RandomPairs(1)


def test_atlas_pairs() -> None:
    pairs = AtlasPairs(4, atlas_index=2, seed=1).pairs()
    assert sorted(pairs) == [(2, 0), (2, 1), (2, 3)]
    moving_atlas = AtlasPairs(4, atlas_index=2, num_pairs=6, atlas_role="moving").pairs()
    assert len(moving_atlas) == 6 and all(m == 2 and f != 2 for f, m in moving_atlas)
    with pytest.raises(MaxcaInputError, match=r"atlas_index must be in \[0, 3\], got 4"):
        AtlasPairs(4, atlas_index=4)


def test_explicit_pairs() -> None:
    sampler = ExplicitPairs([(0, 1), (2, 0)], num_subjects=3, num_pairs=5)
    assert sampler.pairs() == [(0, 1), (2, 0), (0, 1), (2, 0), (0, 1)]
    assert sampler.pairs(0) == sampler.pairs(9)
    with pytest.raises(MaxcaInputError, match=r"pairs\[1\] moving index 3 out of range"):
        ExplicitPairs([(0, 1), (1, 3)], num_subjects=3)
    with pytest.raises(MaxcaInputError, match="empty"):
        ExplicitPairs([], num_subjects=3)


def test_make_pair_sampler() -> None:
    assert isinstance(make_pair_sampler("random", 3), RandomPairs)
    assert isinstance(make_pair_sampler("atlas", 3, atlas_index=1), AtlasPairs)
    assert make_pair_sampler("pairs", 3, pairs=[(0, 2)]).pairs() == [(0, 2)]
    with pytest.raises(MaxcaInputError, match="pair mode must be 'random', 'atlas' or 'pairs'"):
        make_pair_sampler("all", 3)
