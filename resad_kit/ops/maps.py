"""Map post-processing: bilinear upsampling and Gaussian smoothing (eqs. 6, 9, 11; App. F.2).

* :func:`upsample_patches` turns per-patch scores on an ``h×w`` grid (row-major,
  ``n = y·w + x``) into an ``H×W`` pixel map with bilinear interpolation
  (``align_corners=False``), as eqs. 6, 9 and 11 do with ``Upsample(·)``.
* :func:`gaussian_blur` smooths maps with a normalised Gaussian kernel (App. F.2:
  σ = 4, 5×5), applied separably. Zero padding is the default because the
  official code uses a ``Conv2d`` with zero padding (borders get darker).

Both compute in float32 (float64 for float64 inputs) and return the input dtype.
"""

from __future__ import annotations

import math
import numbers

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

__all__ = ["gaussian_blur", "upsample_patches"]

_PADDING_MODES = {
    "zeros": "constant",
    "reflect": "reflect",
    "replicate": "replicate",
    "symmetric": "symmetric",
}


def _symmetric_index(n: int, r: int, device: torch.device) -> torch.Tensor:
    """Indices of a side of ``n`` padded by ``r`` with scipy's ``mode="reflect"``
    (``d c b a | a b c d | d c b a``, the edge repeated), periodic beyond one reflection."""
    i = torch.arange(-r, n + r, device=device) % (2 * n)
    return torch.where(i < n, i, 2 * n - 1 - i)


def _gaussian_kernel1d(
    kernel_size: int, sigma: float, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Normalised 1-D Gaussian of odd length centred on the middle tap."""
    x = torch.arange(kernel_size, dtype=dtype, device=device) - (kernel_size - 1) / 2
    g = torch.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def _check_positive_int(fn: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{fn}: `{name}` must be an int; got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{fn}: `{name}` must be positive; got {value}")
    return int(value)


def gaussian_blur(
    maps: torch.Tensor,
    sigma: float = 4.0,
    kernel_size: int = 5,
    padding: str = "zeros",
) -> torch.Tensor:
    """Smooth maps with a normalised Gaussian kernel, applied separably (App. F.2).

    The kernel is ``g(x) ∝ exp(−x² / 2σ²)`` for ``x = −r … r``, ``r = (kernel_size − 1)/2``,
    normalised to sum 1. Two 1-D convolutions (rows, then columns) equal one 2-D
    convolution with the outer-product kernel ``g gᵀ`` — the official code's
    normalised 5×5 kernel. With ``padding="zeros"`` (default, like the code's
    ``Conv2d``) values near the border are pulled towards 0; ``"reflect"`` and
    ``"replicate"`` pad with mirrored or repeated border values instead; ``"symmetric"``
    mirrors with the edge value repeated, which is ``scipy.ndimage.gaussian_filter``'s
    default ``mode="reflect"`` (with ``kernel_size = 2·int(4σ + 0.5) + 1``, scipy's
    default truncation, this is ``gaussian_filter(σ)`` over the last two dims; AF-CLIP's
    map smoothing).

    Args:
        maps: maps to smooth.
        sigma: standard deviation of the Gaussian, in pixels (> 0).
        kernel_size: odd positive kernel side.
        padding: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"symmetric"``.

    Returns:
        The smoothed maps, same shape and dtype as ``maps`` (computed in float32).

    Raises:
        ValueError: on fewer than 2 dims, empty or non-finite maps, a non-positive
            ``sigma``, an even or non-positive ``kernel_size``, an unknown ``padding``,
            or ``padding="reflect"`` with a map side ≤ ``kernel_size // 2``.

    Shape:
        - maps: ``(..., H, W)``
        - output: ``(..., H, W)``

    Paper: App. F.2 (σ = 4, 5×5).

    Example:
        >>> import torch
        >>> from resad_kit.ops.maps import gaussian_blur
        >>> m = torch.ones(1, 5, 5)
        >>> gaussian_blur(m)[0, 2]  # zero padding darkens the borders
        tensor([0.6063, 0.8124, 1.0000, 0.8124, 0.6063])
        >>> gaussian_blur(m, padding="reflect")[0, 2]
        tensor([1., 1., 1., 1., 1.])
        >>> gaussian_blur(torch.zeros(2, 3, 37, 37)).shape
        torch.Size([2, 3, 37, 37])
    """
    if checks_enabled():
        _check_blur(maps, sigma, kernel_size, padding)
    return _gaussian_blur_core(maps, float(sigma), int(kernel_size), padding)


def _check_blur(maps: object, sigma: object, kernel_size: object, padding: object) -> None:
    fn = "gaussian_blur"
    check_number(fn, "sigma", sigma, minimum=0.0, strict=True, what="a float")
    k = _check_positive_int(fn, "kernel_size", kernel_size)
    if k % 2 == 0:
        raise ValueError(f"{fn}: `kernel_size` must be odd; got {kernel_size}")
    if padding not in _PADDING_MODES:
        raise ValueError(
            f"{fn}: `padding` must be one of {sorted(_PADDING_MODES)}; got {padding!r}"
        )
    m = check_tensor(fn, "maps", maps, min_ndim=2, shape_doc="(..., H, W)", finite=True)
    r = k // 2
    h, w = m.shape[-2:]
    if padding == "reflect" and min(h, w) <= r:
        raise ValueError(
            f"{fn}: `padding`='reflect' needs H and W > kernel_size // 2 = {r}; "
            f"got `maps` of shape {tuple(m.shape)}"
        )


def _gaussian_blur_core(m: torch.Tensor, sigma: float, k: int, padding: str) -> torch.Tensor:
    """:func:`gaussian_blur` without checks."""
    r = k // 2
    cdtype = compute_dtype(m)
    x, ps = pack([m.to(cdtype)], "* h w")
    x = rearrange(x, "b h w -> b 1 h w")
    if r > 0 and padding == "symmetric":
        x = x[..., _symmetric_index(x.shape[-2], r, x.device), :]
        x = x[..., _symmetric_index(x.shape[-1], r, x.device)]
    elif r > 0:
        x = F.pad(x, (r, r, r, r), mode=_PADDING_MODES[padding])
    g = _gaussian_kernel1d(k, float(sigma), cdtype, m.device)
    x = F.conv2d(x, rearrange(g, "k -> 1 1 k 1"))  # along H
    x = F.conv2d(x, rearrange(g, "k -> 1 1 1 k"))  # along W
    (out,) = unpack(rearrange(x, "b 1 h w -> b h w"), ps, "* h w")
    return out.to(m.dtype)


def _parse_pair(fn: str, name: str, value: object) -> tuple[int, int]:
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return (
            _check_positive_int(fn, f"{name}[0]", value[0]),
            _check_positive_int(fn, f"{name}[1]", value[1]),
        )
    if isinstance(value, (tuple, list)):
        raise ValueError(f"{fn}: `{name}` must be an int or a pair (H, W); got {value!r}")
    side = _check_positive_int(fn, name, value)
    return side, side


def upsample_patches(
    scores: torch.Tensor,
    size: int | tuple[int, int],
    grid: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Bilinearly upsample per-patch scores to a pixel map (``Upsample`` of eqs. 6, 9, 11).

    The N scores are laid out on the ``h×w`` patch grid in row-major order
    (``n = y·w + x``, the order of CLIP's patch embedding) and resized with
    ``F.interpolate(mode="bilinear", align_corners=False)``, as the official code
    does (37×37 → 518×518).

    Args:
        scores: per-patch scores.
        size: output size, an int ``S`` for ``S×S`` or a pair ``(H, W)``.
        grid: patch grid ``(h, w)`` with ``h·w = N``; ``None`` infers a square grid.

    Returns:
        The pixel map, in the dtype of ``scores`` (interpolated in float32).

    Raises:
        ValueError: on empty or non-finite scores, non-positive sizes, ``grid=None``
            with N not a perfect square, or ``h·w ≠ N``.

    Shape:
        - scores: ``(..., N)``
        - output: ``(..., H, W)``

    Paper: eqs. (6), (9), (11).

    Example:
        >>> import torch
        >>> from resad_kit.ops.maps import upsample_patches
        >>> upsample_patches(torch.zeros(2, 1369), 518).shape
        torch.Size([2, 518, 518])
        >>> upsample_patches(torch.tensor([0.0, 1.0]), (1, 4), grid=(1, 2))
        tensor([[0.0000, 0.2500, 0.7500, 1.0000]])
    """
    if checks_enabled():
        fn = "upsample_patches"
        s = check_tensor(fn, "scores", scores, min_ndim=1, shape_doc="(..., N)", finite=True)
        size = _parse_pair(fn, "size", size)
        grid = patch_grid(fn, "scores", s.shape[-1], grid)
    elif grid is None:
        side = math.isqrt(scores.shape[-1])
        grid = (side, side)
    out = size if isinstance(size, (tuple, list)) else (size, size)
    return _upsample_patches_core(scores, (int(out[0]), int(out[1])), grid)  # type: ignore[arg-type]


def _upsample_patches_core(
    s: torch.Tensor, size: tuple[int, int], grid: tuple[int, int]
) -> torch.Tensor:
    """:func:`upsample_patches` without checks."""
    (out_h, out_w), (gh, gw) = size, grid
    x, ps = pack([s.to(compute_dtype(s))], "* n")
    x = rearrange(x, "b (h w) -> b 1 h w", h=gh, w=gw)
    x = F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False)
    (out,) = unpack(rearrange(x, "b 1 h w -> b h w"), ps, "* h w")
    return out.to(s.dtype)
