"""Positional-embedding resize for ViT inputs of another size (as the official code resizes it)."""

from __future__ import annotations

import contextlib
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from resad_kit.clip.config import POS_MODES
from resad_kit.ops._validation import check_tensor, patch_grid

__all__ = ["interpolate_pos_embed"]


def interpolate_pos_embed(
    pos_embed: Tensor,
    grid: tuple[int, int],
    *,
    source_grid: tuple[int, int] | None = None,
    mode: Literal["bilinear", "bicubic"] = "bilinear",
) -> Tensor:
    """Resize a ViT positional-embedding table to another patch grid.

    The CLS entry (row 0) is kept; the ``h0×w0`` patch entries (row-major) are
    resized as a ``C``-channel image with ``F.interpolate(mode,
    align_corners=False)`` and flattened back row-major. At the source grid the
    table is returned unchanged. Computed in float32 (float64 for float64 input),
    returned in the input dtype.

    Args:
        pos_embed: the table, CLS entry first.
        grid: target patch grid ``(h, w)``.
        source_grid: the table's grid ``(h0, w0)``; ``None`` means square.
        mode: ``"bilinear"`` (official code) or ``"bicubic"``.

    Returns:
        The resized table.

    Shape:
        - pos_embed: ``(1 + h0·w0, C)``
        - output: ``(1 + h·w, C)``

    Paper: sec. 4.1 (inputs resized to 518); official code: 24×24 → 37×37, bilinear.

    Example:
        >>> import torch
        >>> from resad_kit.clip import interpolate_pos_embed
        >>> table = torch.randn(1 + 24 * 24, 1024)
        >>> interpolate_pos_embed(table, (37, 37)).shape
        torch.Size([1370, 1024])
        >>> interpolate_pos_embed(table, (24, 24)) is table  # native grid: unchanged
        True
    """
    fn = "interpolate_pos_embed"
    pe = check_tensor(fn, "pos_embed", pos_embed, ndim=2, shape_doc="(1 + N, C)")
    if pe.shape[0] < 2:
        raise ValueError(
            f"{fn}: `pos_embed` must hold a CLS row and at least one patch row (1 + N, C); "
            f"got shape {tuple(pe.shape)}"
        )
    h0, w0 = patch_grid(fn, "pos_embed", pe.shape[0] - 1, source_grid)
    if not (
        isinstance(grid, (tuple, list))
        and len(grid) == 2
        and all(isinstance(g, int) and not isinstance(g, bool) and g > 0 for g in grid)
    ):
        raise ValueError(f"{fn}: `grid` must be a pair of positive ints (h, w); got {grid!r}")
    if mode not in POS_MODES:
        raise ValueError(f"{fn}: `mode` must be one of {POS_MODES}; got {mode!r}")
    h, w = grid
    if (h, w) == (h0, w0):
        return pe
    cdtype = torch.float64 if pe.dtype == torch.float64 else torch.float32
    image = rearrange(pe[1:].to(cdtype), "(h w) c -> 1 c h w", h=h0, w=w0)
    resized = F.interpolate(image, size=(h, w), mode=mode, align_corners=False)
    patches = rearrange(resized, "1 c h w -> (h w) c").to(pe.dtype)
    return torch.cat([pe[:1], patches], dim=0)


def cached_pos_embed(
    cache: dict, table: Tensor, grid: tuple[int, int], native_grid: tuple[int, int], mode: str
) -> Tensor:
    """:func:`interpolate_pos_embed` of ``table`` for ``grid``, memoised in ``cache``.

    The key holds the grid and the table's device, dtype and version, so new weights or a
    move invalidate it; at most 8 grids are kept. Computed in float32 outside autocast and
    inference mode, without gradient. Shape: ``(1 + h·w, C)``.
    """
    key = (tuple(grid), table.device, table.dtype, table._version)
    cached = cache.get(key)
    if cached is None:
        device_type = table.device.type
        no_autocast = (
            torch.autocast(device_type, enabled=False)
            if device_type in ("cpu", "cuda")
            else contextlib.nullcontext()
        )
        with torch.inference_mode(False), torch.no_grad(), no_autocast:
            cached = interpolate_pos_embed(table, grid, source_grid=native_grid, mode=mode)
            cached = cached.detach()
        if len(cache) >= 8:
            cache.clear()
        cache[key] = cached
    return cached
