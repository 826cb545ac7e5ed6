"""LocalNCC, MIND-SSC, MSE, soft Dice and one_hot."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from maxca.errors import MaxcaInputError
from maxca.losses import (
    MIND,
    MSE,
    DiceLoss,
    LocalNCC,
    RegistrationLoss,
    box_sum,
    mind_ssc,
    one_hot,
)


def dense_ncc_reference(
    fixed: np.ndarray, warped: np.ndarray, window: tuple[int, ...], eps: float
) -> np.ndarray:
    """Local NCC by explicit loops over every voxel's window, truncated at the borders."""
    d = len(window)
    out = np.zeros(fixed.shape)
    for lead in itertools.product(*[range(s) for s in fixed.shape[:-d]]):
        for p in itertools.product(*[range(s) for s in fixed.shape[-d:]]):
            box = tuple(
                slice(max(0, p[k] - window[k] // 2), p[k] + window[k] // 2 + 1) for k in range(d)
            )
            a, b = fixed[lead + box], warped[lead + box]
            n = a.size
            cross = (a * b).sum() - a.sum() * b.sum() / n
            va = max((a * a).sum() - a.sum() ** 2 / n, 0.0)
            vb = max((b * b).sum() - b.sum() ** 2 / n, 0.0)
            out[lead + p] = cross / np.sqrt(va * vb + eps)
    return out


@pytest.mark.parametrize(
    ("shape", "window"),
    [
        ((2, 1, 7, 6), 3),
        ((1, 2, 6, 5), 5),
        ((1, 1, 6, 7), (3, 5)),
        ((2, 1, 5, 4, 6), 3),
        ((1, 1, 6, 5), 9),  # windows wider than the image: every voxel's window truncated
    ],
)
def test_ncc_matches_dense_reference(shape: tuple[int, ...], window) -> None:  # noqa: ANN001
    g = torch.Generator().manual_seed(0)
    I = torch.rand(shape, generator=g, dtype=torch.float64)
    J = 0.5 * I + 0.5 * torch.rand(shape, generator=g, dtype=torch.float64)
    d = len(shape) - 2
    ncc = LocalNCC(d, window=window, eps=1e-5)
    win = (window,) * d if isinstance(window, int) else window
    ref = dense_ncc_reference(I.numpy(), J.numpy(), win, 1e-5)
    cc = ncc.local_cc(I, J)
    np.testing.assert_allclose(cc.numpy(), ref, atol=1e-5)
    torch.testing.assert_close(ncc(I, J), torch.tensor(-ref.mean(), dtype=torch.float64))
    # float32 agrees too
    cc32 = ncc.local_cc(I.float(), J.float())
    assert cc32.dtype == torch.float32
    np.testing.assert_allclose(cc32.numpy(), ref, atol=1e-4)


def conv_box_reference(x: torch.Tensor, window: tuple[int, ...]) -> torch.Tensor:
    """Window sums by convolution with a dense kernel of ones, zero padding."""
    conv = torch.nn.functional.conv2d if len(window) == 2 else torch.nn.functional.conv3d
    kernel = torch.ones((1, 1, *window), dtype=x.dtype)
    b, c = x.shape[:2]
    out = conv(x.reshape(b * c, 1, *x.shape[2:]), kernel, padding=tuple(w // 2 for w in window))
    return out.reshape(x.shape)


@pytest.mark.parametrize(
    ("shape", "window"),
    [
        ((2, 3, 11, 7), (9, 5)),
        ((1, 1, 6, 17), (13, 1)),  # wider than the axis; and a window of 1 (no sum)
        ((1, 2, 9, 8, 10), (3, 7, 9)),
        ((1, 1, 5, 6, 4), (21, 11, 15)),
        ((1, 1, 12, 9, 10), (1, 1, 1)),
    ],
)
def test_box_sum_equals_a_convolution_with_ones(shape: tuple[int, ...], window) -> None:  # noqa: ANN001
    g = torch.Generator().manual_seed(4)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    ref = conv_box_reference(x, window)
    torch.testing.assert_close(box_sum(x, window), ref, atol=1e-12, rtol=0)
    # float32: each output is a sum of the same inputs, to float32 rounding
    out32 = box_sum(x.float(), window)
    assert out32.dtype == torch.float32 and out32.shape == x.shape
    torch.testing.assert_close(out32.double(), ref, atol=1e-5, rtol=1e-6)


def test_box_sum_gradients_and_errors() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.rand(1, 2, 5, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: box_sum(t, (3, 5, 9)), (x,))
    # the adjoint of a symmetric box filter is the same box filter
    y = torch.rand(1, 2, 5, 4, 3, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad((box_sum(x, (3, 5, 9)) * y).sum(), x)
    torch.testing.assert_close(grad, box_sum(y, (3, 5, 9)))
    with pytest.raises(MaxcaInputError, match="box_sum needs 3 window sizes"):
        box_sum(x, (3, 3))
    for bad in ((3, 4, 3), (3, 0, 3), (3, 3.0, 3)):
        with pytest.raises(MaxcaInputError, match="odd integers >= 1"):
            box_sum(x, bad)


@pytest.mark.parametrize("d", [2, 3])
def test_ncc_self_and_negative(d: int) -> None:
    g = torch.Generator().manual_seed(1)
    I = torch.rand((2, 1) + (24,) * d if d == 2 else (1, 1, 12, 12, 12), generator=g)
    ncc = LocalNCC(d, window=5)
    assert abs(ncc(I, I).item() + 1) < 1e-3
    assert abs(ncc(I, -I).item() - 1) < 1e-3
    assert abs(ncc(I, 1 - I).item() - 1) < 1e-3


def test_ncc_invariant_to_affine_intensity_change() -> None:
    g = torch.Generator().manual_seed(2)
    I = torch.rand(1, 1, 20, 18, generator=g, dtype=torch.float64)
    J = torch.rand(1, 1, 20, 18, generator=g, dtype=torch.float64) + I
    ncc = LocalNCC(2, window=5, eps=1e-12)  # exact up to eps
    # at every voxel, borders included (windows are truncated, not zero-padded)
    cc = ncc.local_cc(I, J)
    default = LocalNCC(2, window=5)
    torch.testing.assert_close(default(2.5 * I + 7.0, J), default(I, J), atol=1e-4, rtol=0)
    torch.testing.assert_close(ncc.local_cc(2.5 * I + 7.0, J), cc, atol=1e-6, rtol=0)
    torch.testing.assert_close(ncc.local_cc(I, 0.5 * J - 3.0), cc, atol=1e-6, rtol=0)
    torch.testing.assert_close(ncc.local_cc(-2.0 * I + 1.0, J), -cc, atol=1e-6, rtol=0)
    # a flat image gives 0, not NaN
    flat = torch.full_like(I, 0.3)
    assert torch.isfinite(default.local_cc(flat, J)).all()
    assert default.local_cc(flat, J).abs().max() < 1e-6


def test_ncc_gradients() -> None:
    g = torch.Generator().manual_seed(3)
    I = torch.rand(1, 1, 4, 5, generator=g, dtype=torch.float64)
    J = torch.rand(1, 1, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: LocalNCC(2, window=3)(I, x), (J,))
    J3 = torch.rand(1, 1, 4, 4, 4, generator=g, requires_grad=True)
    LocalNCC(3, window=3)(torch.rand(1, 1, 4, 4, 4, generator=g), J3).backward()
    assert J3.grad is not None and torch.isfinite(J3.grad).all() and J3.grad.abs().sum() > 0


def test_ncc_bad_inputs() -> None:
    with pytest.raises(MaxcaInputError, match="window must be an odd integer >= 1"):
        LocalNCC(3, window=4)
    with pytest.raises(MaxcaInputError, match="window must be an odd integer >= 1"):
        LocalNCC(2, window=0)
    with pytest.raises(MaxcaInputError, match=r"or 2 of them\), got \(3, 3, 3\)"):
        LocalNCC(2, window=(3, 3, 3))
    with pytest.raises(MaxcaInputError, match="spatial_dims must be 2 or 3"):
        LocalNCC(4)
    ncc = LocalNCC(2, window=3)
    with pytest.raises(MaxcaInputError, match=r"must have the same shape, got \(1, 1, 5, 5\) and"):
        ncc(torch.rand(1, 1, 5, 5), torch.rand(1, 1, 5, 6))
    with pytest.raises(
        MaxcaInputError, match=r"warped must have shape \(B, C, \*S\) with 2 spatial"
    ):
        ncc(torch.rand(1, 1, 5, 5), torch.rand(1, 1, 5, 5, 5))
    with pytest.raises(MaxcaInputError, match="floating-point"):
        ncc(torch.ones(1, 1, 5, 5, dtype=torch.long), torch.ones(1, 1, 5, 5, dtype=torch.long))


def mind_reference(image: np.ndarray, radius: int, dilation: int) -> np.ndarray:
    """MIND-SSC of one ``(*S)`` image by explicit loops: ``(P, *S)``.

    Pairs: face neighbours at ``dilation`` on different axes; ``D`` the mean over the patch of
    squared differences, image indices clamped to the image (replicated borders) and patch
    voxels outside the image taking the value at the nearest voxel inside.
    """
    d, shape = image.ndim, image.shape
    neigh = [tuple(s * dilation if k == axis else 0 for k in range(d))
             for axis in range(d) for s in (-1, 1)]  # fmt: skip
    pairs = [(a, b) for i, a in enumerate(neigh) for b in neigh[i + 1 :]
             if np.dot(a, b) == 0]  # fmt: skip

    def at(q) -> float:  # noqa: ANN001
        return float(image[tuple(min(max(v, 0), n - 1) for v, n in zip(q, shape))])

    def clamp(q):  # noqa: ANN001, ANN202
        return tuple(min(max(v, 0), n - 1) for v, n in zip(q, shape))

    dist = np.zeros((len(pairs), *shape))
    offsets = list(itertools.product(range(-radius, radius + 1), repeat=d))
    for k, (a, b) in enumerate(pairs):
        for p in itertools.product(*[range(n) for n in shape]):
            total = 0.0
            for o in offsets:
                q = clamp(tuple(pi + oi for pi, oi in zip(p, o)))
                qa = tuple(qi + ai for qi, ai in zip(q, a))
                qb = tuple(qi + bi for qi, bi in zip(q, b))
                total += (at(qa) - at(qb)) ** 2
            dist[(k, *p)] = total / len(offsets)
    var = dist.mean(axis=0)
    mean = var.mean()
    var = np.clip(var, max(1e-3 * mean, 1e-6), max(1e3 * mean, 1e-6))
    mind = np.exp(-dist / var)
    return mind / mind.max(axis=0)


@pytest.mark.parametrize(("shape", "radius", "dilation"), [((6, 7), 1, 1), ((7, 5), 0, 2),
                                                           ((5, 4, 6), 1, 2)])  # fmt: skip
def test_mind_matches_loop_reference(shape, radius: int, dilation: int) -> None:  # noqa: ANN001
    g = torch.Generator().manual_seed(5)
    x = torch.rand(2, 2, *shape, generator=g, dtype=torch.float64)
    out = mind_ssc(x, radius, dilation)
    P = 4 if len(shape) == 2 else 12
    assert out.shape == (2, 2 * P, *shape) and out.dtype == torch.float64
    for b, c in itertools.product(range(2), range(2)):
        ref = mind_reference(x[b, c].numpy(), radius, dilation)
        np.testing.assert_allclose(out[b, c * P : (c + 1) * P].numpy(), ref, atol=1e-12)


def test_mind_known_answers() -> None:
    # a ramp along axis 0: the 8 pairs with a neighbour on axis 0 differ by the dilation, the
    # 4 others by 0, so D = (8 of dil^2, 4 of 0), V = 2/3 dil^2, MIND = exp(-1.5) or 1 inside
    ramp = torch.arange(12.0).reshape(1, 1, 12, 1, 1).expand(1, 1, 12, 9, 9).contiguous()
    m = mind_ssc(ramp, radius=1, dilation=2)[0, :, 6, 4, 4]
    assert sorted(m.tolist()) == pytest.approx([float(np.exp(-1.5))] * 8 + [1.0] * 4)
    # a flat image: every descriptor is 1 (no division by zero)
    flat = mind_ssc(torch.full((1, 1, 6, 6, 6), 3.0))
    assert torch.equal(flat, torch.ones_like(flat))
    # every voxel's largest entry is 1, all in (0, 1]
    r = mind_ssc(torch.rand(1, 1, 8, 9, generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(r.amax(dim=1), torch.ones(1, 8, 9)) and (r > 0).all()


def test_mind_invariant_to_intensity_scaling_and_negation() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 1, 9, 8, 7, generator=g, dtype=torch.float64)
    for scale, shift in ((3.0, 2.0), (-0.5, 1.0), (-1.0, 0.0)):
        torch.testing.assert_close(mind_ssc(scale * x + shift), mind_ssc(x))
        assert MIND(3)(x, scale * x + shift).item() == pytest.approx(0.0, abs=1e-20)
    shifted = torch.roll(x, 2, dims=2)
    assert MIND(3)(x, shifted).item() > 0.01


def test_mind_gradients_and_errors() -> None:
    g = torch.Generator().manual_seed(2)
    I = torch.rand(1, 1, 5, 6, generator=g, dtype=torch.float64)
    J = torch.rand(1, 1, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: MIND(2, radius=1, dilation=1)(I, x), (J,))
    x3 = torch.rand(1, 1, 6, 6, 6, generator=g)
    y3 = torch.rand(1, 1, 6, 6, 6, generator=g)
    total, terms = RegistrationLoss(3, "mind", {"similarity": 1.0})(
        x3, y3, torch.zeros(1, 3, 6, 6, 6)
    )
    torch.testing.assert_close(terms["similarity"], MIND(3)(x3, y3))
    for kw, what in (({"radius": -1}, "radius"), ({"dilation": 0}, "dilation"),
                     ({"radius": True}, "radius"), ({"dilation": 1.0}, "dilation")):  # fmt: skip
        with pytest.raises(MaxcaInputError, match=f"MIND {what} must be an integer"):
            MIND(3, **kw)
    with pytest.raises(MaxcaInputError, match="same shape"):
        MIND(2)(I, J[..., :5])
    with pytest.raises(MaxcaInputError, match="floating-point"):
        mind_ssc(torch.ones(1, 1, 5, 5, dtype=torch.long))
    with pytest.raises(MaxcaInputError, match="spatial axes"):
        mind_ssc(torch.ones(1, 5, 5))


def test_mse_known_value() -> None:
    a = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    b = torch.zeros_like(a)
    assert MSE()(a, b).item() == pytest.approx(30 / 4)
    assert MSE(2)(a, a).item() == 0
    with pytest.raises(MaxcaInputError, match="same shape"):
        MSE()(a, b[..., :1])


def test_one_hot() -> None:
    lab = torch.tensor([[[[0, 3], [5, 3]]]])
    oh = one_hot(lab, [3, 5])
    assert oh.shape == (1, 2, 2, 2) and oh.dtype == torch.float32
    assert oh[0, 0].tolist() == [[0, 1], [0, 1]] and oh[0, 1].tolist() == [[0, 0], [1, 0]]
    with pytest.raises(MaxcaInputError, match="integer tensor"):
        one_hot(lab.float(), [3])
    with pytest.raises(MaxcaInputError, match=r"\(B, 1, \*S\)"):
        one_hot(lab.expand(1, 2, 2, 2), [3])


def test_dice_known_values() -> None:
    fixed = torch.tensor([[[[1, 1], [2, 0]]]])
    warped = torch.tensor([[[[1, 2], [2, 2]]]])
    dice = DiceLoss(labels=[1, 2])
    # label 1: |F|=2, |W|=1, overlap 1 -> 2/3; label 2: |F|=1, |W|=3, overlap 1 -> 1/2
    torch.testing.assert_close(
        dice.dice(fixed, warped), torch.tensor([[2 / 3, 1 / 2]]), atol=1e-5, rtol=0
    )
    assert dice(fixed, warped).item() == pytest.approx(1 - 7 / 12, abs=1e-5)
    oh = one_hot(fixed, [1, 2])
    assert dice(oh, oh).item() == pytest.approx(0.0, abs=1e-6)
    # soft probabilities
    f = torch.tensor([[[[1.0, 0.0]]]])
    w = torch.tensor([[[[0.5, 0.5]]]])
    assert DiceLoss().dice(f, w).item() == pytest.approx(0.5, abs=1e-5)
    # a label absent from both counts as a perfect match
    empty = torch.zeros(1, 1, 3, 3)
    assert DiceLoss()(empty, empty).item() == pytest.approx(0.0, abs=1e-6)


def test_dice_gradients_and_errors() -> None:
    g = torch.Generator().manual_seed(4)
    f = one_hot(torch.randint(0, 3, (2, 1, 4, 4, 4), generator=g), [0, 1, 2]).double()
    w = torch.softmax(torch.randn(2, 3, 4, 4, 4, generator=g, dtype=torch.float64), 1)
    w.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: DiceLoss()(f, x), (w,))
    with pytest.raises(MaxcaInputError, match="needs `labels`"):
        DiceLoss()(torch.zeros(1, 1, 3, 3, dtype=torch.long), torch.zeros(1, 1, 3, 3))
    with pytest.raises(MaxcaInputError, match="same shape"):
        DiceLoss()(torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 3, 3))
