"""Sliding windows over the patch grid and harmonic aggregation of window scores (WinCLIP).

WinCLIP (Jeong et al., CVPR 2023, Sec. 3.3) scores windows of ``s×s`` patches and turns
the window scores into a per-patch map: each patch gets the *harmonic mean* of the scores
of the windows that cover it,

    ``M(p) = |W_p| / Σ_{w ∈ W_p} 1 / score(w)``,    ``W_p`` = the windows covering ``p``

(anomalib ``anomalib.models.image.winclip.utils.harmonic_aggregation``; the harmonic mean
is pulled towards the lowest score). A patch no window covers gets 0, and so does a patch
covered by a window of score 0 (the limit of the harmonic mean, as anomalib's
``nan_to_num(posinf=0)``).

* :func:`window_indices`: the patches of every ``s×s`` window at stride ``t``, windows in
  row-major order of their top-left corner, patches row-major inside a window (anomalib's
  ``make_masks``, transposed).
* :func:`harmonic_aggregate`: the per-patch harmonic mean, one scatter-add (no loop).

Shape legend: ``B`` images, ``W`` windows, ``S = s²`` patches per window, ``h×w`` patch
grid (``N = h·w``, row-major ``n = y·w + x``).
"""

from __future__ import annotations

import torch
from einops import rearrange, repeat

from resad_kit.ops._validation import (
    check_positive_int,
    check_tensor,
    checks_enabled,
    compute_dtype,
    patch_grid,
    value_check,
)

__all__ = ["harmonic_aggregate", "window_indices"]


def window_indices(
    grid: tuple[int, int], size: int, stride: int = 1, *, device: torch.device | str | None = None
) -> torch.Tensor:
    """The patch indices of every ``size×size`` window sliding over a patch grid.

    Window ``(i, j)`` (top-left patch at row ``i·stride``, column ``j·stride``) is row
    ``i·n_cols + j``; its entries are the row-major indices ``y·w + x`` of its patches, in
    row-major order. Only windows that fit the grid are listed (no padding).

    Args:
        grid: patch grid ``(h, w)``.
        size: window side ``s`` in patches (WinCLIP: 2 and 3 on ViT-B/16+'s 15×15 grid).
        stride: step between windows in patches (WinCLIP: 1).
        device: device of the result.

    Returns:
        int64 indices, ``W = (⌊(h−s)/t⌋+1)·(⌊(w−s)/t⌋+1)`` windows.

    Raises:
        ValueError: ``grid`` is not a pair of positive ints, ``size`` or ``stride`` not a
            positive int, or ``size`` larger than a side of the grid (with checks on,
            :func:`resad_kit.checks`).

    Shape:
        ``(W, s²)``.

    Example:
        >>> from resad_kit.ops import window_indices
        >>> window_indices((3, 3), 2)
        tensor([[0, 1, 3, 4],
                [1, 2, 4, 5],
                [3, 4, 6, 7],
                [4, 5, 7, 8]])
        >>> window_indices((15, 15), 2).shape, window_indices((15, 15), 3).shape
        (torch.Size([196, 4]), torch.Size([169, 9]))
    """
    fn = "window_indices"
    if checks_enabled():
        h, w = patch_grid(fn, "grid", _area(grid), grid)
        check_positive_int(fn, "size", size)
        check_positive_int(fn, "stride", stride)
        if size > min(h, w):
            raise ValueError(f"{fn}: `size`={size} does not fit the grid ({h}, {w})")
    else:
        h, w = grid
    rows = torch.arange(0, h - size + 1, stride, device=device)
    cols = torch.arange(0, w - size + 1, stride, device=device)
    offset = torch.arange(size, device=device)
    y = repeat(rows, "i -> i j a b", j=len(cols), a=size, b=size) + rearrange(offset, "a -> a 1")
    x = repeat(cols, "j -> i j a b", i=len(rows), a=size, b=size) + offset
    return rearrange(y * w + x, "i j a b -> (i j) (a b)")


def _area(grid: object) -> int:
    if isinstance(grid, (tuple, list)) and len(grid) == 2:
        return grid[0] * grid[1] if all(isinstance(g, int) for g in grid) else -1
    return -1


def harmonic_aggregate(
    window_scores: torch.Tensor, windows: torch.Tensor, grid: tuple[int, int]
) -> torch.Tensor:
    """Per-patch harmonic mean of the scores of the windows covering it (WinCLIP Sec. 3.3).

    ``M_b(p) = |W_p| / Σ_{w ∈ W_p} 1 / s_b(w)`` with ``W_p`` the windows whose index row
    holds ``p``; 0 where no window covers ``p`` or a covering window scores 0. Each value
    lies between the smallest and the largest score of the windows covering it (the
    harmonic mean's bounds). Computed in float32 (float64 for float64 input) by one
    scatter-add of the reciprocals; differentiable where every score is positive.

    Args:
        window_scores: non-negative scores of the windows (e.g. WinCLIP's anomaly
            probabilities or visual-association distances).
        windows: integer patch indices of each window (:func:`window_indices`), each in
            ``[0, h·w)``.
        grid: patch grid ``(h, w)``.

    Returns:
        The per-patch map, in the compute dtype.

    Raises:
        TypeError: ``window_scores`` or ``windows`` is not a tensor.
        ValueError: wrong ranks, ``W`` differing between the two, non-integer ``windows``,
            a bad ``grid``; with checks on (:func:`resad_kit.checks`) also negative or
            non-finite scores and indices outside the grid.

    Shape:
        - window_scores: ``(B, W)``
        - windows: ``(W, S)``
        - output: ``(B, h, w)``

    Example:
        >>> import torch
        >>> from resad_kit.ops import harmonic_aggregate, window_indices
        >>> windows = window_indices((3, 3), 2)
        >>> harmonic_aggregate(torch.tensor([[1.0, 2.0, 4.0, 8.0]]), windows, (3, 3))
        tensor([[[1.0000, 1.3333, 2.0000],
                 [1.6000, 2.1333, 3.2000],
                 [4.0000, 5.3333, 8.0000]]])
    """
    if checks_enabled():
        _check(window_scores, windows, grid)
    return _harmonic_aggregate_core(window_scores, windows, grid)


def _check(window_scores: object, windows: object, grid: object) -> None:
    fn = "harmonic_aggregate"
    s = check_tensor(fn, "window_scores", window_scores, ndim=2, shape_doc="(B, W)")
    idx = check_tensor(
        fn, "windows", windows, ndim=2, shape_doc="(W, S)", floating=False, nonempty=True
    )
    if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
        raise ValueError(f"{fn}: `windows` must hold integer patch indices; got {idx.dtype}")
    if idx.shape[0] != s.shape[1]:
        raise ValueError(
            f"{fn}: `windows` has {idx.shape[0]} windows but `window_scores` scores "
            f"{s.shape[1]} (shape {tuple(s.shape)})"
        )
    h, w = patch_grid(fn, "grid", _area(grid), grid)
    if value_check(fn):
        if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
            raise ValueError(f"{fn}: `window_scores` must be finite and ≥ 0")
        if bool(((idx < 0) | (idx >= h * w)).any()):
            raise ValueError(f"{fn}: `windows` holds indices outside [0, {h * w})")


def _harmonic_aggregate_core(
    window_scores: torch.Tensor, windows: torch.Tensor, grid: tuple[int, int]
) -> torch.Tensor:
    """:func:`harmonic_aggregate` without checks."""
    h, w = grid
    s = window_scores.to(compute_dtype(window_scores))
    idx = windows.to(device=s.device, dtype=torch.long).flatten()  # (W·S,)
    per_entry = windows.shape[1]
    reciprocal = repeat(1.0 / s, "b w -> b (w k)", k=per_entry)  # 1/0 = inf: the limit 0
    total = s.new_zeros(s.shape[0], h * w).index_add_(1, idx, reciprocal)
    count = s.new_zeros(h * w).index_add_(0, idx, s.new_ones(idx.shape[0]))
    out = torch.where(count > 0, count / total, s.new_zeros(()))
    return rearrange(out, "b (h w) -> b h w", h=h, w=w)
