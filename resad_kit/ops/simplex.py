"""Sparsemax: the Euclidean projection onto the probability simplex (paper App. C, Eq. 33).

``sparsemax(z) = argmin_{p ∈ Δ} ‖p − z‖²`` (Martins & Astudillo, 2016). Unlike softmax it
returns exact zeros: Res²CLIP uses it to pick a data-dependent handful of memory-bank
patches for every query patch (Eq. 33–34).

Two exact algorithms are provided:

* ``k=None``: sort each row (O(M log M)), find the support size
  ``k(z) = max{m : 1 + m·z_(m) > Σ_{j≤m} z_(j)}`` and the threshold
  ``τ = (Σ_{j≤k(z)} z_(j) − 1) / k(z)``;
* ``k=int``: the same on the ``k`` largest entries only (``torch.topk``). If a row's support
  fills all ``k`` slots it may extend further, so that row falls back to the full sort. The
  result is therefore always exact, only faster when supports are small.
"""

from __future__ import annotations

import torch
from einops import rearrange

from resad_kit.ops._validation import (
    check_dim,
    check_positive_int,
    check_tensor,
    compute_dtype,
)

__all__ = ["sparsemax", "sparsemax_threshold"]


def _threshold_from_sorted(z_sorted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Threshold and support size from rows sorted in descending order.

    Args:
        z_sorted: ``(R, L)`` rows sorted descending (a prefix of the full sort is enough when
            the support is shorter than ``L``).

    Returns:
        ``(tau, support)``, both ``(R, 1)``: the threshold and the support size ``k(z)``.
    """
    rho = torch.arange(1, z_sorted.shape[-1] + 1, device=z_sorted.device, dtype=z_sorted.dtype)
    cumsum = z_sorted.cumsum(dim=-1)
    support = (1 + rho * z_sorted > cumsum).sum(dim=-1, keepdim=True)
    tau = (cumsum.gather(-1, support - 1) - 1) / support.to(z_sorted.dtype)
    return tau, support


def _threshold_rows(z: torch.Tensor, k: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact sparsemax threshold and support size of each row of ``z``.

    Args:
        z: ``(R, M)`` finite-or-``-inf`` rows in the compute dtype, each with a finite entry.
        k: ``None`` for the full sort, else the top-k algorithm with the sort as fallback for
            rows whose support does not fit in ``k``.

    Returns:
        ``(tau, support)``, both ``(R, 1)``.
    """
    if k is None or k >= z.shape[-1]:
        return _threshold_from_sorted(z.sort(dim=-1, descending=True).values)
    tau, support = _threshold_from_sorted(z.topk(k, dim=-1).values)
    unresolved = (support == k).squeeze(-1)
    if bool(unresolved.any()):
        full = z[unresolved].sort(dim=-1, descending=True).values
        tau[unresolved], support[unresolved] = _threshold_from_sorted(full)
    return tau, support


def _validated_rows(
    fn: str, x: torch.Tensor, dim: int, k: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check ``x``; return ``(rows − row_max, row_max)`` as ``(R, M)``/``(R, 1)`` in float32+."""
    check_tensor(fn, "x", x, min_ndim=1, nonempty=False)
    dim = check_dim(fn, x, dim)
    if x.shape[dim] == 0 or x.numel() == 0:
        raise ValueError(
            f"{fn}: `x` must have at least one entry along dim={dim}; got shape {tuple(x.shape)}"
        )
    check_positive_int(fn, "k", k, optional=True)
    rows = rearrange(x.movedim(dim, -1), "... m -> (...) m").to(compute_dtype(x))
    row_max = rows.amax(dim=-1, keepdim=True)
    bad = torch.isnan(rows).any() | torch.isposinf(rows).any() | torch.isneginf(row_max).any()
    if bool(bad):
        raise ValueError(
            f"{fn}: `x` must not contain NaN or +inf, and every slice along dim={dim} needs a "
            f"finite entry (-inf entries are allowed and get weight 0); got "
            f"{int(torch.isnan(rows).sum())} NaN, {int(torch.isposinf(rows).sum())} +inf and "
            f"{int(torch.isneginf(row_max).sum())} all--inf slices"
        )
    return rows - row_max, row_max


def _restore(rows: torch.Tensor, x: torch.Tensor, dim: int) -> torch.Tensor:
    """Inverse of the flattening in :func:`_validated_rows`: ``(R, m)`` → ``x``'s layout."""
    moved_shape = (*x.movedim(dim, -1).shape[:-1], rows.shape[-1])
    return rows.reshape(moved_shape).movedim(-1, dim)


class _Sparsemax(torch.autograd.Function):
    """Sparsemax with the closed-form backward ``J v = s ⊙ (v − Σ_S v / |S|)``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int, k: int | None) -> torch.Tensor:  # type: ignore[override]
        dim = dim % x.ndim
        z, _ = _validated_rows("sparsemax", x, dim, k)
        tau, _ = _threshold_rows(z, k)
        p = (z - tau).clamp_min(0)
        support = _restore(z > tau, x, dim)
        ctx.save_for_backward(support)
        ctx.dim = dim
        return _restore(p, x, dim).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        (support,) = ctx.saved_tensors
        g = grad.to(compute_dtype(grad)) * support
        size = support.sum(dim=ctx.dim, keepdim=True)
        mean = g.sum(dim=ctx.dim, keepdim=True) / size
        return ((g - mean) * support).to(grad.dtype), None, None


def sparsemax(x: torch.Tensor, dim: int = -1, k: int | None = None) -> torch.Tensor:
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
            which sorts only the ``k`` largest entries and falls back to the full sort for slices
            whose support does not fit. Both give the same result.

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
        >>> sparsemax(torch.tensor([0.3, 0.2, 0.1, 0.0]), k=2)  # support 4 > k: exact fallback
        tensor([0.4000, 0.3000, 0.2000, 0.1000])
    """
    check_tensor("sparsemax", "x", x, min_ndim=1, nonempty=False)
    dim = check_dim("sparsemax", x, dim)
    return _Sparsemax.apply(x, dim, k)


def sparsemax_threshold(x: torch.Tensor, dim: int = -1, k: int | None = None) -> torch.Tensor:
    """The threshold τ with ``sparsemax(x, dim) = clamp(x − τ, min=0)`` (App. C, step 3).

    ``τ(z) = (Σ_{j≤k(z)} z_(j) − 1) / k(z)`` with ``z`` sorted descending and support size
    ``k(z) = max{m : 1 + m·z_(m) > Σ_{j≤m} z_(j)}``. Not differentiable (use :func:`sparsemax`).

    Args:
        x: input as for :func:`sparsemax`.
        dim: dimension to project along.
        k: ``None`` (full sort) or the exact top-k algorithm, as for :func:`sparsemax`.

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
    check_tensor("sparsemax_threshold", "x", x, min_ndim=1, nonempty=False)
    dim = check_dim("sparsemax_threshold", x, dim)
    with torch.no_grad():
        z, row_max = _validated_rows("sparsemax_threshold", x, dim, k)
        tau, _ = _threshold_rows(z, k)
        return _restore(tau + row_max, x, dim)
