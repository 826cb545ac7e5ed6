"""Image similarity losses: local normalised cross-correlation, MIND-SSC, MSE, soft Dice.

All are ``nn.Module``s on ``(B, C, *S)`` tensors (2 or 3 spatial axes, the file's voxel order)
that follow the inputs' device and dtype (half precision is computed in float32). Each returns
a scalar **loss** to minimise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from maxca._checks import check_same_shape, check_spatial_tensor, shape_str
from maxca.errors import MaxcaInputError
from maxca.layers.factories import check_spatial_dims

__all__ = ["MIND", "DiceLoss", "LocalNCC", "MSE", "box_sum", "mind_ssc", "one_hot"]


def working_dtype(x: torch.Tensor) -> torch.dtype:
    """Float32 for half-precision inputs (sums of squares overflow), the input dtype otherwise."""
    return torch.promote_types(x.dtype, torch.float32)


_CONV_AVG = {2: F.avg_pool2d, 3: F.avg_pool3d}


def box_sum(x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """Sums of ``x`` over a centred box window at every voxel, zero outside the image.

    ``x`` is ``(B, C, *S)`` with ``len(window)`` spatial axes; ``window`` holds one odd size per
    spatial axis. The box is separable: along each axis, after zero padding of ``w // 2`` on
    both sides, the window sum of length ``w`` is built by doubling (sums of 2, 4, 8, ...
    neighbours, each two shifted views of the previous one added) and adding the pieces that
    make up ``w`` in binary: ``log2(w) + popcount(w)`` additions of whole tensors per axis, in
    the input's dtype. Each output is a sum of exactly the ``w`` inputs of its window, like a
    convolution with a kernel of ones, but on CPU about 7x faster forward and backward than
    ``conv3d`` with a ``(w, 1, 1)`` kernel (a 5x80x96x112 tensor, window 9: section 2f of
    docs/benchmarks.md). Returns a tensor of ``x``'s shape.
    """
    d = x.dim() - 2
    if len(window) != d:
        raise MaxcaInputError(
            f"box_sum needs {d} window sizes for shape {shape_str(x.shape)}, got {window!r}"
        )
    if not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 and w % 2 for w in window):
        raise MaxcaInputError(f"box_sum window sizes must be odd integers >= 1, got {window!r}")
    for axis, w in enumerate(window):
        if w == 1:
            continue
        dim, half, size = 2 + axis, w // 2, x.shape[2 + axis]
        pad = [0] * (2 * d)
        pad[2 * (d - 1 - axis)] = pad[2 * (d - 1 - axis) + 1] = half
        s = F.pad(x, pad)  # s[j] = sum of `span` padded values from j on
        out: torch.Tensor | None = None
        offset, span, rest = 0, 1, int(w)
        while True:
            if rest & 1:
                piece = s.narrow(dim, offset, size)
                out = piece if out is None else out + piece
                offset += span
            rest >>= 1
            if not rest:
                break
            n = s.shape[dim] - span
            s = s.narrow(dim, 0, n) + s.narrow(dim, span, n)
            span *= 2
        assert out is not None  # every w >= 1 has a set bit
        x = out
    return x


class LocalNCC(nn.Module):
    """Local (windowed) normalised cross-correlation loss.

    For every voxel, over the ``n`` voxels of its ``window`` neighbourhood that lie inside the
    image (near a border the window is truncated, never padded, so ``n`` there is smaller than
    ``prod(window)``), with ``I`` fixed and ``J`` warped::

        cross = sum(I J) - sum(I) sum(J) / n
        var_I = sum(I^2) - sum(I)^2 / n          (clamped at 0; likewise var_J)
        cc    = cross / sqrt(var_I * var_J + eps)

    The window sums are separable box filters (:func:`box_sum`: shifted additions along each
    axis), never a dense ``window^d`` kernel. ``cc`` lies in ``[-1, 1]``: 1 for a local affine
    intensity relation with positive slope, -1 for a negative slope, 0 where either image is
    flat. Because the windows are truncated rather than zero-padded, ``cc`` is invariant to an
    affine intensity change of either image at every voxel, borders included (up to ``eps``).

    **Sign convention**: the loss is ``-mean(cc)`` over batch, channels and voxels, so a perfect
    match gives -1 (lower is better) and an inverted image +1.

    Args:
        spatial_dims: 2 or 3.
        window: odd window size (int, or one per axis), >= 1.
        eps: added to ``var_I * var_J`` under the square root (>= 0).
    """

    def __init__(self, spatial_dims: int, window: int | Sequence[int] = 9, eps: float = 1e-5):
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        sizes = (window,) * self.spatial_dims if isinstance(window, int) else tuple(window)
        if len(sizes) != self.spatial_dims or not all(
            isinstance(w, int) and not isinstance(w, bool) and w >= 1 and w % 2 == 1 for w in sizes
        ):
            raise MaxcaInputError(
                f"LocalNCC window must be an odd integer >= 1 (or {self.spatial_dims} of them), "
                f"got {window!r}"
            )
        if not eps >= 0:
            raise MaxcaInputError(f"LocalNCC eps must be >= 0, got {eps!r}")
        self.window = sizes
        self.eps = float(eps)

    def extra_repr(self) -> str:
        return f"spatial_dims={self.spatial_dims}, window={self.window}, eps={self.eps}"

    def _box_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Window sums of ``x`` ``(N, 1, *S)`` over the in-image voxels (see :func:`box_sum`)."""
        return box_sum(x, self.window)

    def _window_count(self, spatial: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """Number of in-image voxels of each voxel's window, ``(*S)``: a product of 1-D counts."""
        count = torch.ones((), dtype=like.dtype, device=like.device)
        for axis, (size, w) in enumerate(zip(spatial, self.window)):
            idx = torch.arange(size, device=like.device)
            half = w // 2
            n_axis = torch.clamp(idx + half, max=size - 1) - torch.clamp(idx - half, min=0) + 1
            shape = [1] * len(spatial)
            shape[axis] = size
            count = count * n_axis.to(like.dtype).reshape(shape)
        return count

    def local_cc(self, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        """The local correlation map ``cc`` of shape ``(B, C, *S)`` (see the class docstring)."""
        check_spatial_tensor(fixed, "fixed", self.spatial_dims)
        check_spatial_tensor(warped, "warped", self.spatial_dims)
        check_same_shape(fixed, warped, "fixed", "warped")
        dtype = working_dtype(fixed)
        I, J = fixed.to(dtype), warped.to(dtype)
        stacked = torch.stack([I, J, I * I, J * J, I * J])  # (5, B, C, *S)
        spatial = tuple(fixed.shape[2:])
        sums = self._box_sum(stacked.reshape(-1, 1, *spatial)).reshape(stacked.shape)
        s_i, s_j, s_ii, s_jj, s_ij = sums.unbind(0)
        n = self._window_count(spatial, I)  # (*S), broadcasts over (B, C)
        cross = s_ij - s_i * s_j / n
        var_i = (s_ii - s_i * s_i / n).clamp_min(0)
        var_j = (s_jj - s_j * s_j / n).clamp_min(0)
        return cross / torch.sqrt(var_i * var_j + self.eps)

    def forward(self, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        """Loss ``-mean(cc)`` of ``fixed`` and ``warped``, both ``(B, C, *S)``; a scalar."""
        return -self.local_cc(fixed, warped).mean()


def _ssc_pairs(spatial_dims: int, dilation: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The self-similarity context of MIND-SSC: unordered pairs of neighbours ``(a, b)`` of
    the ``2 d`` face neighbours at ``dilation`` voxels whose distance is ``sqrt(2) dilation``
    (12 pairs in 3-D, 4 in 2-D), in a fixed order."""
    d = spatial_dims
    neigh = []
    for axis in range(d):
        for sign in (-1, 1):
            v = [0] * d
            v[axis] = sign * dilation
            neigh.append(tuple(v))
    pairs = []
    for i, a in enumerate(neigh):
        for b in neigh[i + 1 :]:
            if (
                sum(abs(x - y) for x, y in zip(a, b)) == 2 * dilation
                and sum(x * y for x, y in zip(a, b)) == 0
            ):  # different axes: not opposite, not the same
                pairs.append((a, b))
    return pairs


def _shifted(x: torch.Tensor, offset: Sequence[int], margin: int) -> torch.Tensor:
    """``y(p) = x(p + offset)`` for ``x`` ``(N, C, *S)`` already padded by ``margin`` voxels
    on every side (border values replicated): ``(N, C, *S)``."""
    index = [slice(None), slice(None)]
    for o, n in zip(offset, x.shape[2:]):
        index.append(slice(margin + o, n - margin + o))
    return x[tuple(index)]


def mind_ssc(
    image: torch.Tensor, radius: int = 1, dilation: int = 2, eps: float = 1e-6
) -> torch.Tensor:
    """MIND-SSC descriptors (modality independent neighbourhood descriptor, self-similarity
    context; Heinrich et al., MICCAI 2013) of every voxel.

    For each pair ``(a, b)`` of face neighbours at ``dilation`` voxels that lie on different
    axes (:func:`_ssc_pairs`; ``P = 12`` in 3-D, 4 in 2-D), the patch distance
    ``D_ab(p) = mean over the (2 radius + 1)^d patch around p of (I(q + a) - I(q + b))^2``
    (borders replicated); the local variance estimate ``V(p) = mean_ab D_ab(p)``, clamped to
    ``[max(1e-3 mean(V), eps), 1e3 mean(V)]`` (means over the image); then
    ``MIND_ab(p) = exp(-D_ab(p) / V(p))`` divided by its maximum over the pairs, so every voxel's
    largest entry is 1. The descriptor depends on the image only through differences of
    intensities, relative to their local size: it is unchanged by ``I -> s I + t`` for any
    ``s != 0`` (a negated contrast included) and compares images of different contrasts.

    Args:
        image: ``(B, C, *S)`` with 2 or 3 spatial axes, floating.
        radius: patch half-width in voxels (``>= 0``).
        dilation: distance of the neighbours in voxels (``>= 1``).
        eps: floor of ``V`` (a flat image gives descriptors of 1).

    Returns:
        ``(B, C * P, *S)`` in ``(0, 1]``, channel ``c * P + k`` for image channel ``c`` and
        pair ``k``; in :func:`working_dtype`.
    """
    d = image.dim() - 2
    check_spatial_tensor(image, "image", d if d in (2, 3) else 3)
    for name, value, low in (("radius", radius, 0), ("dilation", dilation, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise MaxcaInputError(f"MIND {name} must be an integer >= {low}, got {value!r}")
    dtype = working_dtype(image)
    B, C, *S = image.shape
    x = image.to(dtype).reshape(B * C, 1, *S)
    pad_mode = "replicate"
    padded = F.pad(x, [dilation] * (2 * d), mode=pad_mode)
    pairs = _ssc_pairs(d, dilation)
    dist = torch.cat(
        [(_shifted(padded, a, dilation) - _shifted(padded, b, dilation)).pow(2) for a, b in pairs],
        dim=1,
    )  # (B C, P, *S)
    if radius:
        w = 2 * radius + 1
        P = len(pairs)
        flat = F.pad(dist.reshape(B * C * P, 1, *S), [radius] * (2 * d), mode=pad_mode)
        flat = _CONV_AVG[d](flat, w, stride=1)
        dist = flat.reshape(B * C, P, *S)
    var = dist.mean(dim=1, keepdim=True)  # (B C, 1, *S)
    mean = var.mean(dim=tuple(range(2, 2 + d)), keepdim=True)
    low = torch.clamp(mean * 1e-3, min=eps)
    var = torch.minimum(torch.maximum(var, low), torch.clamp(mean * 1e3, min=eps))
    mind = torch.exp(-dist / var)
    mind = mind / mind.amax(dim=1, keepdim=True)
    return mind.reshape(B, C * len(pairs), *S)


class MIND(nn.Module):
    """MIND-SSC similarity loss: ``mean((MIND(fixed) - MIND(warped))^2)`` (:func:`mind_ssc`).

    0 for identical images, and for images that differ by any intensity scaling and shift
    (a negated contrast included); it compares structure, not intensities, so it suits pairs
    of different contrasts. Lower is better; a scalar.

    Args:
        spatial_dims: 2 or 3.
        radius: patch half-width (voxels, ``>= 0``).
        dilation: neighbour distance (voxels, ``>= 1``).
    """

    def __init__(self, spatial_dims: int, radius: int = 1, dilation: int = 2) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        mind_ssc(torch.zeros((1, 1) + (1,) * self.spatial_dims), radius, dilation)  # checks
        self.radius = radius
        self.dilation = dilation

    def extra_repr(self) -> str:
        return f"spatial_dims={self.spatial_dims}, radius={self.radius}, dilation={self.dilation}"

    def forward(self, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        """``fixed``, ``warped``: ``(B, C, *S)`` -> scalar."""
        check_spatial_tensor(fixed, "fixed", self.spatial_dims)
        check_spatial_tensor(warped, "warped", self.spatial_dims)
        check_same_shape(fixed, warped, "fixed", "warped")
        a = mind_ssc(fixed, self.radius, self.dilation)
        b = mind_ssc(warped, self.radius, self.dilation)
        return (a - b).pow(2).mean()


class MSE(nn.Module):
    """Mean squared error ``mean((fixed - warped)^2)`` over all elements.

    Args:
        spatial_dims: optional 2 or 3 to check the inputs' rank (any rank otherwise).
    """

    def __init__(self, spatial_dims: int | None = None) -> None:
        super().__init__()
        self.spatial_dims = None if spatial_dims is None else check_spatial_dims(spatial_dims)

    def forward(self, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        """``fixed``, ``warped``: ``(B, C, *S)`` -> scalar."""
        if self.spatial_dims is not None:
            check_spatial_tensor(fixed, "fixed", self.spatial_dims)
            check_spatial_tensor(warped, "warped", self.spatial_dims)
        check_same_shape(fixed, warped, "fixed", "warped")
        dtype = working_dtype(fixed)
        return (fixed.to(dtype) - warped.to(dtype)).pow(2).mean()


def one_hot(
    labels: torch.Tensor, label_ids: Sequence[int], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """One channel per id of ``label_ids``: ``out[:, l] = (labels[:, 0] == label_ids[l])``.

    Ids absent from ``label_ids`` (e.g. background, unless listed) get no channel.

    Args:
        labels: ``(B, 1, *S)`` integer label map.
        label_ids: the ``L`` ids, in channel order.
        dtype: floating output dtype.

    Returns:
        ``(B, L, *S)`` tensor of 0/1 on the labels' device.
    """
    if not isinstance(labels, torch.Tensor) or labels.dim() not in (4, 5) or labels.shape[1] != 1:
        raise MaxcaInputError(
            "one_hot labels must be a (B, 1, *S) tensor with 2 or 3 spatial axes, got "
            f"{shape_str(labels.shape) if isinstance(labels, torch.Tensor) else type(labels)}"
        )
    if labels.is_floating_point() or labels.is_complex():
        raise MaxcaInputError(f"one_hot labels must be an integer tensor, got dtype {labels.dtype}")
    ids = [int(i) for i in label_ids]
    if not ids:
        raise MaxcaInputError("one_hot needs at least one label id, got an empty list")
    ids_t = torch.tensor(ids, dtype=labels.dtype, device=labels.device)
    view = (1, len(ids)) + (1,) * (labels.dim() - 2)
    return (labels == ids_t.view(view)).to(dtype)


class DiceLoss(nn.Module):
    """Soft Dice loss ``1 - mean_{b, l} Dice_{b, l}``.

    ``Dice = (2 sum(f w) + smooth) / (sum(f) + sum(w) + smooth)`` over the voxels of each batch
    element ``b`` and channel ``l``, with ``f`` the fixed and ``w`` the warped moving
    probabilities (a label absent from both counts as Dice 1).

    Inputs are either ``(B, L, *S)`` probabilities / one-hot maps (e.g. the moving one-hot map
    warped linearly) or ``(B, 1, *S)`` integer label maps, which are one-hot encoded with
    ``labels`` (then required).

    Args:
        labels: label ids used to encode integer inputs (and only for that).
        smooth: additive smoothing (> 0 keeps empty labels finite).
    """

    def __init__(self, labels: Sequence[int] | None = None, smooth: float = 1e-5) -> None:
        super().__init__()
        self.labels = None if labels is None else [int(i) for i in labels]
        if self.labels is not None and not self.labels:
            raise MaxcaInputError("DiceLoss labels must be a non-empty list of ids or None")
        if not smooth >= 0:
            raise MaxcaInputError(f"DiceLoss smooth must be >= 0, got {smooth!r}")
        self.smooth = float(smooth)

    def _prepare(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() not in (4, 5):
            raise MaxcaInputError(
                f"{name} must be a (B, L, *S) tensor with 2 or 3 spatial axes, got "
                f"{shape_str(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}"
            )
        if x.is_floating_point():
            return x
        if self.labels is None:
            raise MaxcaInputError(
                f"{name} is an integer label map (dtype {x.dtype}); DiceLoss needs `labels` "
                "to one-hot encode it, or pass one-hot probabilities"
            )
        return one_hot(x, self.labels)

    def dice(self, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        """Soft Dice per batch element and label, ``(B, L)``."""
        f = self._prepare(fixed, "fixed")
        w = self._prepare(warped, "warped")
        check_same_shape(f, w, "fixed one-hot", "warped one-hot")
        dtype = torch.promote_types(working_dtype(f), w.dtype)
        f, w = f.to(dtype), w.to(dtype)
        dims = tuple(range(2, f.dim()))
        inter = (f * w).sum(dims)
        total = f.sum(dims) + w.sum(dims)
        return (2 * inter + self.smooth) / (total + self.smooth)

    def forward(self, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        """``1 - mean(dice(fixed, warped))``: 0 for a perfect overlap; a scalar."""
        return 1 - self.dice(fixed, warped).mean()
