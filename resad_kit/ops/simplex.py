"""Sparsemax: the Euclidean projection onto the probability simplex (paper App. C, Eq. 33).

``sparsemax(z) = argmin_{p ∈ Δ} ‖p − z‖²`` (Martins & Astudillo, 2016). Unlike softmax it
returns exact zeros: Res²CLIP uses it to pick a data-dependent handful of memory-bank
patches for every query patch (Eq. 33–34).

The threshold needs the entries of the support sorted in descending order: support size
``k(z) = max{m : 1 + m·z_(m) > Σ_{j≤m} z_(j)}``, threshold ``τ = (Σ_{j≤k(z)} z_(j) − 1)/k(z)``.
Three exact ways to get that sorted prefix are offered (argument ``k``):

* ``k=None``: sort each whole row (O(M log M));
* ``k=int``: sort only the ``k`` largest entries (``torch.topk``). A row whose support fills
  all ``k`` slots may extend further; only those rows are taken again, with a wider prefix
  (at least twice as wide, and wide enough to hold every entry above the current lower bound
  of τ), until every row is resolved, ending at the full sort at worst;
* ``k="auto"``: rows of at least ``SCREEN_MIN_COLUMNS`` entries are screened first: the
  threshold of a subset of a row's entries (here maxima of blocks of 8 entries) is a lower
  bound of the row's τ, so only the entries above it can be in the support. One comparison
  over the row gathers them; a tighter bound from those leaves the support and a few entries
  past it, which are sorted; a row whose support takes them all gets a wider pass. Shorter
  rows (or rows the screen cannot narrow to half their entries) take the top-``k`` path from
  ``AUTO_K``;
* ``k="dense"``: the full sort, stable (ties in column order), with every width taken from the
  shapes: no step reads a tensor value on the host (the other ways size their next step by the
  supports found, a device-to-host sync on a GPU). For hot paths that must not synchronise.

The prefix values are the same floats as those of the full sort and the threshold is computed
from them by the same operations, so all four give bit-identical results (tested with
``torch.equal``); with supports of tens out of thousands, the top-k and screened paths are an
order of magnitude faster (docs/benchmarks.md).
"""

from __future__ import annotations

import torch
from einops import rearrange

from resad_kit.ops._sorted_support import (
    AUTO_K,
    SCREEN_MIN_COLUMNS,
    SparsemaxK,
    check_k,
    sorted_support,
    support_threshold,
)
from resad_kit.ops._validation import (
    check_dim,
    check_tensor,
    checks_enabled,
    compute_dtype,
    value_check,
)

__all__ = ["sparsemax", "sparsemax_threshold"]

# The sorted-support engine lives in ops/_sorted_support.py; its names stay importable here
# (benchmarks/bench_sparsemax.py imports ``sorted_support`` from this module).
_ENGINE = (AUTO_K, SCREEN_MIN_COLUMNS, check_k, sorted_support, support_threshold)


def _rows(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` as rows ``(R, M)`` along ``dim`` in float32+, and their maxima ``(R, 1)``."""
    rows = rearrange(x.movedim(dim, -1), "... m -> (...) m").to(compute_dtype(x))
    return rows, rows.amax(dim=-1, keepdim=True)


def _validated_rows(
    fn: str, x: torch.Tensor, dim: int, k: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check ``x``; return ``(rows, row_max)`` as ``(R, M)``/``(R, 1)`` in float32+."""
    check_tensor(fn, "x", x, min_ndim=1, nonempty=False)
    dim = check_dim(fn, x, dim)
    if x.shape[dim] == 0 or x.numel() == 0:
        raise ValueError(
            f"{fn}: `x` must have at least one entry along dim={dim}; got shape {tuple(x.shape)}"
        )
    check_k(fn, k)
    rows, row_max = _rows(x, dim)
    # amax propagates NaN and +inf and is -inf only for all--inf rows: one cheap check.
    if value_check(fn) and not bool(torch.isfinite(row_max).all()):
        raise ValueError(
            f"{fn}: `x` must not contain NaN or +inf, and every slice along dim={dim} needs a "
            f"finite entry (-inf entries are allowed and get weight 0); got "
            f"{int(torch.isnan(rows).sum())} NaN, {int(torch.isposinf(rows).sum())} +inf and "
            f"{int((torch.isneginf(rows).all(dim=-1)).sum())} all--inf slices"
        )
    return rows, row_max


def _restore(rows: torch.Tensor, x: torch.Tensor, dim: int) -> torch.Tensor:
    """Inverse of the flattening in :func:`_validated_rows`: ``(R, m)`` → ``x``'s layout."""
    moved_shape = (*x.movedim(dim, -1).shape[:-1], rows.shape[-1])
    return rows.reshape(moved_shape).movedim(-1, dim)


class _Sparsemax(torch.autograd.Function):
    """Sparsemax with the closed-form backward ``J v = s ⊙ (v − Σ_S v / |S|)``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int, k: SparsemaxK, validate: bool) -> torch.Tensor:  # type: ignore[override]
        rows, row_max = _validated_rows("sparsemax", x, dim, k) if validate else _rows(x, dim)
        z = rows - row_max  # shift first: x − (max + τ) would lose τ's low bits for large x
        tau = sorted_support(z, k).tau
        # z > τ ⇔ z − τ > 0 in IEEE arithmetic, so the support is p > 0 (kept for backward).
        p = _restore(z.sub_(tau).clamp_min_(0), x, dim)
        ctx.save_for_backward(p)
        ctx.dim = dim
        return p.to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:  # type: ignore[override]
        (p,) = ctx.saved_tensors
        support = p > 0
        g = grad.to(compute_dtype(grad)) * support
        size = support.sum(dim=ctx.dim, keepdim=True)
        mean = g.sum(dim=ctx.dim, keepdim=True) / size
        return ((g - mean) * support).to(grad.dtype), None, None, None


def sparsemax(x: torch.Tensor, dim: int = -1, k: SparsemaxK = None) -> torch.Tensor:
    """Sparsemax along ``dim``: the Euclidean projection of ``x`` onto the simplex (Eq. 33).

    ``sparsemax(x) = clamp(x − τ(x), min=0)`` where τ is chosen so that every slice sums to one.
    Entries at or below τ (including every ``-inf``) are exactly zero. Differentiable with the
    closed-form Jacobian-vector product of Martins & Astudillo (2016):
    ``J v = s ⊙ (v − Σ_{j∈S} v_j / |S|)`` with ``s`` the support indicator.

    Args:
        x: input of any shape, float16/bfloat16/float32/float64, on any device. ``-inf``
            entries are allowed (weight 0); NaN, ``+inf`` and slices with no finite entry raise.
        dim: dimension to project along (negative values count from the end).
        k: ``None`` for the exact sort-based algorithm; an int for the exact top-k algorithm,
            which sorts only the ``k`` largest entries and takes again, with a wider prefix,
            only the slices whose support does not fit; ``"auto"``:
            slices of at least 2,048 entries are screened by block maxima first (only the
            entries above a lower bound of τ are sorted), shorter ones, and slices the screen
            cannot narrow, take the top-k algorithm from ``AUTO_K`` = 64 (see the module
            doc); ``"dense"`` for the full stable sort without any device-to-host sync (for
            GPU hot paths). All give bit-identical results; the top-k and screened ones are
            faster than the full sort when supports are small against the slice
            (docs/benchmarks.md).

    Returns:
        Tensor of ``x``'s shape and dtype, non-negative, summing to one along ``dim``.
        The threshold is computed in float32 (float64 for float64 input).

    Shape:
        ``(..., M, ...) → (..., M, ...)``.

    Example:
        >>> import torch
        >>> from resad_kit.ops import sparsemax
        >>> sparsemax(torch.tensor([[2.0, 1.0, 0.1], [0.5, 0.4, -float("inf")]]))
        tensor([[1.0000, 0.0000, 0.0000],
                [0.5500, 0.4500, 0.0000]])
        >>> sparsemax(torch.tensor([0.3, 0.2, 0.1, 0.0]), k=2)  # support 4 > k: wider prefix
        tensor([0.4000, 0.3000, 0.2000, 0.1000])
        >>> x = torch.randn(3, 5000)
        >>> torch.equal(sparsemax(x, k="auto"), sparsemax(x))
        True
        >>> torch.equal(sparsemax(x, k="dense"), sparsemax(x))  # no device-to-host sync
        True
    """
    if not checks_enabled():
        return _sparsemax_core(x, dim, k)
    check_tensor("sparsemax", "x", x, min_ndim=1, nonempty=False)
    dim = check_dim("sparsemax", x, dim)
    return _Sparsemax.apply(x, dim, k, True)


def _sparsemax_core(x: torch.Tensor, dim: int, k: SparsemaxK) -> torch.Tensor:
    """:func:`sparsemax` without any check (``dim`` may be negative)."""
    return _Sparsemax.apply(x, dim % x.ndim, k, False)


def sparsemax_threshold(x: torch.Tensor, dim: int = -1, k: SparsemaxK = None) -> torch.Tensor:
    """The threshold τ with ``sparsemax(x, dim) = clamp(x − τ, min=0)`` (App. C, step 3).

    ``τ(z) = (Σ_{j≤k(z)} z_(j) − 1) / k(z)`` with ``z`` sorted descending and support size
    ``k(z) = max{m : 1 + m·z_(m) > Σ_{j≤m} z_(j)}``. Not differentiable (use :func:`sparsemax`).

    Args:
        x: input as for :func:`sparsemax`.
        dim: dimension to project along.
        k: ``None`` (full sort), an int (exact top-k), ``"auto"`` or ``"dense"`` (sync-free
            full sort), as for :func:`sparsemax`.

    Returns:
        τ with ``x``'s shape except size 1 along ``dim`` (so it broadcasts against ``x``), in
        float32 (float64 for float64 input).

    Shape:
        ``(..., M, ...) → (..., 1, ...)``.

    Example:
        >>> import torch
        >>> from resad_kit.ops import sparsemax, sparsemax_threshold
        >>> x = torch.tensor([[0.9, 0.5, -0.2], [3.0, 0.0, 0.0]])
        >>> tau = sparsemax_threshold(x)
        >>> tau
        tensor([[0.2000],
                [2.0000]])
        >>> torch.allclose((x - tau).clamp(min=0), sparsemax(x))
        True
    """
    if not checks_enabled():
        return _sparsemax_threshold_core(x, dim, k)
    fn = "sparsemax_threshold"
    check_tensor(fn, "x", x, min_ndim=1, nonempty=False)
    dim = check_dim(fn, x, dim)
    with torch.no_grad():
        rows, row_max = _validated_rows(fn, x, dim, k)
        return _restore(sorted_support(rows, k).tau + row_max, x, dim)


def _sparsemax_threshold_core(x: torch.Tensor, dim: int, k: SparsemaxK) -> torch.Tensor:
    """:func:`sparsemax_threshold` without any check (``dim`` may be negative)."""
    dim = dim % x.ndim
    with torch.no_grad():
        rows, row_max = _rows(x, dim)
        return _restore(sorted_support(rows, k).tau + row_max, x, dim)
