"""Exact k-nearest-neighbour cosine distances to a memory bank (PatchCore-style scoring).

:func:`knn_distance` scores every query row by its ``k`` nearest rows of a memory bank in
the cosine distance ``d(q, b) = (1 − cos(q, b)) / 2 ∈ [0, 1]``, as nearest-neighbour
anomaly detectors do with a bank of normal patch features (PatchCore, Roth et al.,
CVPR 2022, Eq. 6-7, with the cosine distance on ℓ2-normalised features as in WinCLIP+ and
AF-CLIP's few-shot branches). The search is exact (no approximation index), batched over
leading dims (views, layers, images) and chunked over query rows so that only one
``chunk × M`` similarity block exists at a time.

Shape legend: ``N`` query rows, ``M`` bank rows, ``D`` channels, ``k`` neighbours.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from resad_kit.ops._validation import (
    check_finite,
    check_positive_int,
    check_tensor,
    checks_enabled,
    compute_dtype,
)

__all__ = ["Neighbors", "knn_distance"]

_NORM_EPS = 1e-12
_BLOCK_ENTRIES = 2**23  # default similarity block: 32 MiB in float32
_MIN_BLOCK_ROWS = 64


class Neighbors(NamedTuple):
    """What ``knn_distance(..., return_index=True)`` returns.

    Attributes:
        distance: ``(..., N, k)`` cosine distances ``(1 − cos)/2``, ascending.
        index: ``(..., N, k)`` bank rows (``0 … M−1``) of those neighbours (int64).

    Example:
        >>> import torch
        >>> from resad_kit.ops import Neighbors, knn_distance
        >>> out = knn_distance(torch.eye(2), torch.eye(2).flip(0), return_index=True)
        >>> isinstance(out, Neighbors), out.index.tolist(), out.distance.tolist()
        (True, [[1], [0]], [[0.0], [0.0]])
    """

    distance: torch.Tensor
    index: torch.Tensor


def knn_distance(
    query: torch.Tensor,
    bank: torch.Tensor,
    *,
    k: int = 1,
    chunk_size: int | None = None,
    return_index: bool = False,
) -> torch.Tensor | Neighbors:
    """Cosine distances of every query row to its ``k`` nearest bank rows (exact search).

    ``d(q, b) = (1 − ⟨q̂, b̂⟩) / 2`` with ``x̂ = x / max(‖x‖, ε)``, so ``0`` for the same
    direction, ``½`` for orthogonal rows (and for an all-zero row) and ``1`` for opposite
    ones; the result is clamped to ``[0, 1]`` against rounding. For ``k = 1`` this is the
    nearest-neighbour anomaly score ``min_b d(q, b)`` of a patch against a memory bank of
    normal patches (PatchCore, Eq. 6). Computed in float32 (float64 for float64 inputs);
    differentiable with respect to ``query`` and ``bank``.

    Args:
        query: ``(..., N, D)`` query rows; any number of leading dims.
        bank: ``(M, D)`` bank shared by every query, or ``(..., M, D)`` whose leading dims
            broadcast with the query's, e.g. ``(L, 1, M, D)`` holds one bank per layer for a
            query ``(L, B, N, D)``.
        k: neighbours per query row, ``1 ≤ k ≤ M``.
        chunk_size: query rows per similarity block (memory ``O(chunk_size · M)``).
            ``None``: blocks of about 2²³ similarities (at least 64 rows). The result does not
            depend on the chunking beyond float rounding of the matrix product.
        return_index: also return the bank rows of the neighbours.

    Returns:
        ``(..., N, k)`` distances, ascending along the last dim, in the query's dtype; with
        ``return_index=True`` a :class:`Neighbors` ``(distance, index)``. For ``k = 1`` ties
        go to the first bank row; for ``k > 1`` tied neighbours come in any order.

    Raises:
        TypeError: ``query`` or ``bank`` is not a tensor.
        ValueError: fewer than 2 dims, non-float, empty or non-finite inputs, different
            ``D``, leading dims that do not broadcast, ``k`` not in ``1 … M``, a
            ``chunk_size`` that is not a positive int, a non-bool ``return_index``. Only
            with checks on (:func:`resad_kit.checks`); the finiteness checks, a device
            sync, are also skipped under ``torch.compile``.

    Shape:
        ``query (..., N, D)``, ``bank (M, D) | (..., M, D)`` → ``(..., N, k)``.

    Example:
        >>> import torch
        >>> from resad_kit.ops import knn_distance
        >>> bank = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> query = torch.tensor([[2.0, 0.0], [-1.0, 0.0], [1.0, 1.0]])
        >>> knn_distance(query, bank)[..., 0]  # same direction, opposite, 45°
        tensor([0.0000, 0.5000, 0.1464])
        >>> out = knn_distance(query, bank, k=2, return_index=True)
        >>> out.index.tolist()
        [[0, 1], [1, 0], [0, 1]]
        >>> layers = torch.randn(3, 4, 16, 8)  # (L, B, N, D), one bank per layer
        >>> knn_distance(layers, torch.randn(3, 1, 40, 8)).shape
        torch.Size([3, 4, 16, 1])
    """
    if checks_enabled():
        _check_knn(query, bank, k, chunk_size, return_index)
    distance, index = _knn_distance(query, bank, k, chunk_size)
    return Neighbors(distance, index) if return_index else distance


def _check_knn(
    query: torch.Tensor, bank: torch.Tensor, k: object, chunk_size: object, return_index: object
) -> None:
    """The checks of :func:`knn_distance` (finiteness is a sync: see ``value_check``)."""
    fn = "knn_distance"
    check_tensor(fn, "query", query, min_ndim=2, shape_doc="(..., N, D)")
    check_tensor(fn, "bank", bank, min_ndim=2, shape_doc="(M, D) or (..., M, D)")
    if bank.shape[-1] != query.shape[-1]:
        raise ValueError(
            f"{fn}: `bank` must have D={query.shape[-1]} channels like `query` "
            f"{tuple(query.shape)}; got {tuple(bank.shape)}"
        )
    try:
        torch.broadcast_shapes(query.shape[:-2], bank.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"{fn}: the leading dims of `query` {tuple(query.shape)} and `bank` "
            f"{tuple(bank.shape)} must broadcast"
        ) from None
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= bank.shape[-2]:
        raise ValueError(f"{fn}: `k` must be an int in 1..M={bank.shape[-2]}; got {k!r}")
    check_positive_int(fn, "chunk_size", chunk_size, optional=True)
    if not isinstance(return_index, bool):
        raise ValueError(f"{fn}: `return_index` must be True or False; got {return_index!r}")
    check_finite(fn, "query", query)
    check_finite(fn, "bank", bank)


def _knn_distance(
    query: torch.Tensor, bank: torch.Tensor, k: int, chunk_size: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unchecked core of :func:`knn_distance`: ``(distance, index)``, both ``(..., N, k)``."""
    dtype = compute_dtype(query, bank)
    lead = torch.broadcast_shapes(query.shape[:-2], bank.shape[:-2])
    (n, d), m = query.shape[-2:], bank.shape[-2]
    bank_lead = (1,) * (len(lead) - (bank.ndim - 2)) + tuple(bank.shape[:-2])
    # Dims with a bank per entry come first; the query rows of dims sharing a bank are
    # folded into one GEMM against it: rows (G, R, D) against banks (G, M, D).
    own = [i for i, s in enumerate(bank_lead) if s != 1]
    shared = [i for i, s in enumerate(bank_lead) if s == 1]
    order = [*own, *shared]
    q = F.normalize(query.to(dtype), dim=-1, eps=_NORM_EPS).expand(*lead, n, d)
    rows = q.permute(*order, -2, -1).reshape(-1, n * _prod(lead, shared), d)
    b = F.normalize(bank.to(dtype), dim=-1, eps=_NORM_EPS).reshape(*bank_lead, m, d)
    banks = b.permute(*order, -2, -1).reshape(-1, m, d)
    step = chunk_size or max(_MIN_BLOCK_ROWS, _BLOCK_ENTRIES // m)
    sims, indices = [], []
    for g in range(rows.shape[0]):
        for start in range(0, rows.shape[1], step):
            sim = rows[g, start : start + step] @ banks[g].T  # (chunk, M)
            if k == 1:
                best, idx = sim.max(dim=-1, keepdim=True)  # first maximum on ties
            else:
                best, idx = sim.topk(k, dim=-1)
            sims.append(best)
            indices.append(idx)
    arranged = [lead[i] for i in order]
    inverse = [order.index(i) for i in range(len(lead))]

    def restore(x: torch.Tensor) -> torch.Tensor:
        return torch.cat(x).reshape(*arranged, n, k).permute(*inverse, -2, -1)

    distance = ((1.0 - restore(sims)) / 2.0).clamp(0.0, 1.0)
    return distance.to(query.dtype), restore(indices)


def _prod(shape: tuple[int, ...], dims: list[int]) -> int:
    out = 1
    for i in dims:
        out *= shape[i]
    return out
