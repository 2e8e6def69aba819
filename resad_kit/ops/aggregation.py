"""Gaussian-weighted window aggregation of patch tokens over the patch grid (AF-CLIP Eq. 5-6).

AF-CLIP (Fang, Lv, Su, ACM MM 2025, Sec. 4.1 "Spatial Information Aggregation") replaces
every patch token by a Gaussian-weighted average of its ``r×r`` neighbourhood on the patch
grid before the adapter, for ``r ∈ {1, 3, 5}`` and σ = 4, and keeps the ``[CLS]`` token
untouched (Eq. 6: ``c = [a_CLS; b̃]``).

* :func:`gaussian_window` is the ``r×r`` kernel ``η_ij = exp(−((i−h)² + (j−w)²) / 2σ²)``
  normalised to sum 1 over the full window.
* :func:`spatial_aggregate` applies it to ``(..., N, D)`` patch tokens laid out row-major on
  an ``h×w`` grid, as one depthwise convolution (``groups = D``).

Two readings of the border (where part of the window falls off the grid):

* ``border="zero"`` (default; the official code, Faustinaqq/AF-CLIP, ``aggerate_neighbor``
  in ``clip/model.py``): zero padding of ``r // 2`` and the fixed kernel normalised over
  the full window, so border tokens shrink towards 0.
* ``border="renormalize"`` (the paper's Eq. 5 read literally): the weights are renormalised
  over the neighbours that lie on the grid, so every output is a convex combination of
  tokens (a constant map stays constant everywhere).

Shape legend: ``N = h·w`` patches (row-major, ``n = y·w + x``), ``D`` channels.
"""

from __future__ import annotations

import numbers
from typing import Literal

import torch
import torch.nn.functional as F
from einops import pack, rearrange, unpack

from resad_kit.ops._validation import (
    check_number,
    check_tensor,
    checks_enabled,
    compute_dtype,
    patch_grid,
)

__all__ = ["Border", "gaussian_window", "spatial_aggregate"]

Border = Literal["zero", "renormalize"]
"""How :func:`spatial_aggregate` treats windows that overhang the grid; see the module doc."""

_BORDERS: tuple[str, ...] = ("zero", "renormalize")


def gaussian_window(
    window: int,
    sigma: float = 4.0,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The ``r×r`` Gaussian window of AF-CLIP's spatial aggregation, summing to 1 (Eq. 5).

    ``η_ij = exp(−(i² + j²) / 2σ²)`` for offsets ``i, j ∈ {−r//2, …, r//2}`` from the centre,
    divided by their sum over the full window (the official code's ``gaussian_kernel``).
    Computed in float32 (float64 when ``dtype`` is float64), then cast to ``dtype``.

    Args:
        window: odd window side ``r ≥ 1`` (AF-CLIP uses 1, 3 and 5).
        sigma: standard deviation σ > 0 of the Gaussian, in patches (AF-CLIP: 4).
        dtype: dtype of the kernel; ``None``: the default float dtype.
        device: device of the kernel; ``None``: the default device.

    Returns:
        The kernel, symmetric, with its maximum at the centre and entries summing to 1.

    Raises:
        TypeError: ``window`` is not an int, ``sigma`` not a real number.
        ValueError: ``window`` even or < 1, ``sigma`` ≤ 0 or not finite, ``dtype`` not a
            floating dtype.

    Shape:
        ``()`` → ``(r, r)``.

    Example:
        >>> from resad_kit.ops import gaussian_window
        >>> gaussian_window(1)
        tensor([[1.]])
        >>> k = gaussian_window(3)  # σ = 4: nearly flat
        >>> k
        tensor([[0.1088, 0.1123, 0.1088],
                [0.1123, 0.1158, 0.1123],
                [0.1088, 0.1123, 0.1088]])
        >>> float(k.sum())
        1.0
    """
    fn = "gaussian_window"
    out_dtype = torch.get_default_dtype() if dtype is None else dtype
    if not checks_enabled():
        return _gaussian_window_core(window, sigma, out_dtype, device)
    r = _check_window(fn, window)
    s = check_number(fn, "sigma", sigma, minimum=0.0, strict=True, what="a float")
    if not isinstance(out_dtype, torch.dtype) or not out_dtype.is_floating_point:
        raise ValueError(f"{fn}: `dtype` must be a floating torch.dtype; got {dtype!r}")
    return _gaussian_window_core(r, s, out_dtype, device)


def _gaussian_window_core(
    r: int, sigma: float, dtype: torch.dtype, device: torch.device | str | None
) -> torch.Tensor:
    """:func:`gaussian_window` without checks."""
    cdtype = torch.float64 if dtype == torch.float64 else torch.float32
    x = torch.arange(r, dtype=cdtype, device=device) - (r - 1) / 2
    y = rearrange(x, "i -> i 1")
    kernel = torch.exp(-(y**2 + x**2) / (2.0 * sigma**2))
    return (kernel / kernel.sum()).to(dtype)


def spatial_aggregate(
    patches: torch.Tensor,
    grid: tuple[int, int] | None,
    window: int,
    *,
    sigma: float = 4.0,
    border: Border = "zero",
) -> torch.Tensor:
    """Gaussian-weighted ``r×r`` window average of patch tokens on their grid (AF-CLIP Eq. 5).

    ``b̃_hw = Σ_{i,j in the r×r window at (h, w)} η^r_ij · b_ij`` with the kernel of
    :func:`gaussian_window`. With ``border="zero"`` (official code) the off-grid neighbours
    count as zero tokens, so ``η^r = η`` (normalised over the full window) and border tokens
    shrink; with ``border="renormalize"`` (the paper's Eq. 5) ``η^r_ij = η_ij / Σ η_i'j'``
    over the on-grid neighbours only. Pass the patch tokens only: the caller keeps ``[CLS]``
    as it is (Eq. 6). ``window = 1`` returns ``patches`` itself (no copy, no arithmetic).

    Implemented as a depthwise convolution (``groups = D``) in float32 (float64 for
    float64 inputs); the result has the input dtype. Linear in ``patches`` and
    differentiable with respect to it.

    Args:
        patches: patch tokens, row-major over the grid (``n = y·w + x``), any leading dims.
        grid: patch grid ``(h, w)`` with ``h·w = N``; ``None`` infers a square grid.
        window: odd window side ``r ≥ 1`` (AF-CLIP: 1, 3, 5).
        sigma: standard deviation σ > 0 of the Gaussian weights, in patches (AF-CLIP: 4).
        border: ``"zero"`` (official code) or ``"renormalize"`` (paper); see above.

    Returns:
        The aggregated tokens ``b̃``, same shape and dtype as ``patches``.

    Raises:
        TypeError: ``patches`` is not a tensor, ``window`` not an int, ``sigma`` not a real
            number.
        ValueError: fewer than 2 dims, non-float, empty or non-finite ``patches``; a ``grid``
            that is not a pair of positive ints with ``h·w = N`` (or ``grid=None`` with ``N``
            not a square); ``window`` even or < 1; ``sigma`` ≤ 0; an unknown ``border``.
            Only with checks on (:func:`resad_kit.checks`).

    Shape:
        ``patches (..., N, D)`` → ``(..., N, D)``.

    Example:
        >>> import torch
        >>> from resad_kit.ops import spatial_aggregate
        >>> x = torch.ones(1, 9, 2)  # a constant 3×3 map, D = 2
        >>> spatial_aggregate(x, (3, 3), 3)[0, :, 0]  # zero padding: borders shrink
        tensor([0.4491, 0.6702, 0.4491, 0.6702, 1.0000, 0.6702, 0.4491, 0.6702, 0.4491])
        >>> spatial_aggregate(x, (3, 3), 3, border="renormalize")[0, :, 0]
        tensor([1., 1., 1., 1., 1., 1., 1., 1., 1.])
        >>> spatial_aggregate(x, None, 1) is x  # r = 1: the input itself
        True
        >>> tokens = torch.randn(2, 1 + 37 * 37, 16)  # (B, 1 + N, D), [CLS] first
        >>> c = torch.cat([tokens[:, :1], spatial_aggregate(tokens[:, 1:], (37, 37), 5)], 1)
        >>> c.shape
        torch.Size([2, 1370, 16])
    """
    if checks_enabled():
        grid = _check_aggregate(patches, grid, window, sigma, border)
    elif grid is None:
        side = round(patches.shape[-2] ** 0.5)
        grid = (side, side)
    return _spatial_aggregate_core(patches, grid, int(window), float(sigma), border)


def _check_window(fn: str, window: object) -> int:
    if isinstance(window, bool) or not isinstance(window, numbers.Integral):
        raise TypeError(f"{fn}: `window` must be an int; got {type(window).__name__} {window!r}")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"{fn}: `window` must be an odd int ≥ 1 (e.g. 1, 3, 5); got {window}")
    return int(window)


def _check_aggregate(
    patches: object, grid: object, window: object, sigma: object, border: object
) -> tuple[int, int]:
    """The checks of :func:`spatial_aggregate`; returns the ``(h, w)`` grid."""
    fn = "spatial_aggregate"
    x = check_tensor(fn, "patches", patches, min_ndim=2, shape_doc="(..., N, D)", finite=True)
    hw = patch_grid(fn, "patches", x.shape[-2], grid)
    _check_window(fn, window)
    check_number(fn, "sigma", sigma, minimum=0.0, strict=True, what="a float")
    if border not in _BORDERS:
        raise ValueError(f"{fn}: `border` must be one of {_BORDERS}; got {border!r}")
    return hw


def _spatial_aggregate_core(
    patches: torch.Tensor, grid: tuple[int, int], window: int, sigma: float, border: str
) -> torch.Tensor:
    """:func:`spatial_aggregate` without checks."""
    if window == 1:
        return patches
    h, w = grid
    d = patches.shape[-1]
    cdtype = compute_dtype(patches)
    kernel = _gaussian_window_core(window, sigma, cdtype, patches.device)
    x, ps = pack([patches.to(cdtype)], "* n d")
    x = rearrange(x, "b (h w) d -> b d h w", h=h, w=w)
    weight = rearrange(kernel, "i j -> 1 1 i j").expand(d, 1, window, window)
    out = F.conv2d(x, weight, padding=window // 2, groups=d)
    if border == "renormalize":
        ones = torch.ones(1, 1, h, w, dtype=cdtype, device=patches.device)
        out = out / F.conv2d(ones, rearrange(kernel, "i j -> 1 1 i j"), padding=window // 2)
    (y,) = unpack(rearrange(out, "b d h w -> b (h w) d"), ps, "* n d")
    return y.to(patches.dtype)
