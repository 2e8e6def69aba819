"""Radial-penalty sparsemax retrieval from a memory bank (paper Sec. 3.2.3, Eq. 8, 33–34).

For every query patch ``i`` and bank entry ``j`` (``M = K·N`` patches of ``K`` reference
images, shot-major):

    S(i, j) = ⟨q_i, b_j⟩ − γ·|r_q(i) − r_ref(j)|        (Eq. 8)
    W(i, :) = sparsemax(S(i, :))                          (Eq. 33)
    F_ref   = W · B̂                                      (Eq. 34)

The weights are sparse (typically tens of non-zeros out of thousands), so they are returned
as ``(indices, values)`` of the support and the reference is aggregated with a gather-and-sum
(``F.embedding_bag``) instead of a dense ``N×M`` product. ``chunk_size`` bounds the peak
memory to O(chunk·M).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange

from resad_kit.ops._validation import (
    check_positive_int,
    check_tensor,
    compute_dtype,
)
from resad_kit.ops.simplex import _threshold_rows

__all__ = ["Retrieval", "SparseWeights", "radial_distance", "radial_penalty", "retrieve"]

_NORM_EPS = 1e-12
_GEMM_TILE = 64


class SparseWeights(NamedTuple):
    """Row-sparse retrieval weights: the support of every query row, largest weight first.

    Rows with a support smaller than ``S`` (the largest support in the call) are padded with
    weight 0 (and index 0), so every row sums to one over its ``S`` slots.

    Attributes:
        indices: ``(..., N, S)`` int64 bank indices in ``[0, M)``.
        values: ``(..., N, S)`` non-negative weights, float32 (float64 for float64 inputs).
        num_entries: ``M``, the bank size (needed to densify).
    """

    indices: torch.Tensor
    values: torch.Tensor
    num_entries: int

    def to_dense(self) -> torch.Tensor:
        """The dense weight matrix ``W``, ``(..., N, M)``.

        Example:
            >>> import torch
            >>> from resad_kit.ops import SparseWeights
            >>> w = SparseWeights(torch.tensor([[2, 0]]), torch.tensor([[0.75, 0.25]]), 3)
            >>> w.to_dense()
            tensor([[0.2500, 0.0000, 0.7500]])
        """
        dense = self.values.new_zeros((*self.values.shape[:-1], self.num_entries))
        return dense.scatter_add(-1, self.indices, self.values)

    def support_size(self) -> torch.Tensor:
        """Number of non-zero weights of every query row, ``(..., N)`` int64.

        Example:
            >>> import torch
            >>> from resad_kit.ops import SparseWeights
            >>> SparseWeights(torch.tensor([[2, 0]]), torch.tensor([[1.0, 0.0]]), 3).support_size()
            tensor([1])
        """
        return (self.values > 0).sum(dim=-1)


class Retrieval(NamedTuple):
    """Result of :func:`retrieve`.

    Attributes:
        reference: ``(..., N, D)`` aggregated reference ``W·B̂`` (Eq. 34), in the query's dtype.
            Not re-normalised: :func:`resad_kit.ops.visual_residual` normalises it, as the
            official code does (spec §3.3).
        weights: the sparse weights ``W`` (Eq. 33).

    Example:
        >>> import torch
        >>> from resad_kit.ops import retrieve
        >>> reference, weights = retrieve(torch.eye(3)[:2], torch.eye(3) * 2)
        >>> reference  # each query retrieves the normalised bank row it matches
        tensor([[1., 0., 0.],
                [0., 1., 0.]])
        >>> weights.support_size()
        tensor([1, 1])
    """

    reference: torch.Tensor
    weights: SparseWeights


def radial_distance(
    h: int,
    w: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Distance of every patch centre from the image centre, in patch units (Eq. 8's ``r``).

    ``r(n) = sqrt((x − (w−1)/2)² + (y − (h−1)/2)²)`` for patch ``n = y·w + x`` (row-major, the
    order of CLIP's patch tokens). For a 37×37 grid the centre is patch (18, 18) and
    ``r ∈ [0, 18√2]``. For a bank of ``K`` shots (shot-major) use
    ``radial_distance(h, w).repeat(K)``.

    Args:
        h: patch rows. w: patch columns.
        device: output device. dtype: output dtype (default float32).

    Returns:
        ``(h·w,)`` tensor of radii.

    Example:
        >>> from resad_kit.ops import radial_distance
        >>> radial_distance(3, 3).reshape(3, 3)
        tensor([[1.4142, 1.0000, 1.4142],
                [1.0000, 0.0000, 1.0000],
                [1.4142, 1.0000, 1.4142]])
    """
    check_positive_int("radial_distance", "h", h)
    check_positive_int("radial_distance", "w", w)
    dtype = dtype or torch.float32
    ys = torch.arange(h, device=device, dtype=dtype) - (h - 1) / 2
    xs = torch.arange(w, device=device, dtype=dtype) - (w - 1) / 2
    return rearrange(torch.hypot(ys[:, None], xs[None, :]), "h w -> (h w)")


def radial_penalty(
    r_query: torch.Tensor, r_bank: torch.Tensor, gamma: float = 0.01
) -> torch.Tensor:
    """The radial penalty ``γ·|r_q(i) − r_ref(j)|`` of Eq. 8.

    Args:
        r_query: ``(..., N)`` radii of the query patches (see :func:`radial_distance`).
        r_bank: ``(..., M)`` radii of the bank entries.
        gamma: penalty strength γ ≥ 0 (paper: 0.01 per patch unit).

    Returns:
        ``(..., N, M)`` penalty, in float32 (float64 for float64 inputs).

    Example:
        >>> from resad_kit.ops import radial_distance, radial_penalty
        >>> r = radial_distance(37, 37)
        >>> p = radial_penalty(r, r.repeat(2))  # 2-shot bank
        >>> tuple(p.shape), round(p.max().item(), 4)  # max 18·√2·γ
        ((1369, 2738), 0.2546)
    """
    fn = "radial_penalty"
    check_tensor(fn, "r_query", r_query, min_ndim=1, shape_doc="(..., N)", finite=True)
    check_tensor(fn, "r_bank", r_bank, min_ndim=1, shape_doc="(..., M)", finite=True)
    _check_gamma(fn, gamma)
    dtype = compute_dtype(r_query, r_bank)
    return gamma * (r_query.to(dtype)[..., :, None] - r_bank.to(dtype)[..., None, :]).abs()


def _check_gamma(fn: str, gamma: float) -> None:
    if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"{fn}: `gamma` must be a finite number ≥ 0; got {gamma!r}")


def retrieve(
    query: torch.Tensor,
    bank: torch.Tensor,
    *,
    query_radius: torch.Tensor | None = None,
    bank_radius: torch.Tensor | None = None,
    gamma: float = 0.01,
    k: int | None = None,
    chunk_size: int | None = None,
    normalize: bool = True,
) -> Retrieval:
    """Res²CLIP reference retrieval: radial-penalised cosine similarity, sparsemax, aggregation.

    Computes Eq. 8 ``S = ⟨q, b⟩ − γ|r_q − r_ref|``, Eq. 33 ``W = sparsemax(S)`` row-wise over
    all ``M`` bank entries, and Eq. 34 ``F_ref = W·B̂``. The penalty is applied only when both
    radii are given. Differentiable with respect to ``query`` and ``bank`` (the method itself
    runs it under ``torch.no_grad``).

    Args:
        query: ``(..., N, D)`` query patch features.
        bank: ``(M, D)`` memory bank shared by all queries (``K`` shots concatenated
            shot-major), or ``(..., M, D)`` with one bank per query image (the query's leading
            dims).
        query_radius: ``(N,)`` radius of every query patch, e.g. :func:`radial_distance`.
        bank_radius: ``(M,)`` radius of every bank entry, e.g. ``radial_distance(h, w).repeat(K)``.
        gamma: radial penalty strength γ ≥ 0 (paper and code: 0.01).
        k: ``None`` for the exact sort-based sparsemax, or the size of the exact top-k
            algorithm (see :func:`resad_kit.ops.sparsemax`); the result is the same.
        chunk_size: process this many query rows (flattened over the leading dims and ``N``;
            rounded up to a multiple of 64) at a time, so that peak memory is O(chunk_size·M)
            instead of O(rows·M). Results are identical with and without chunking.
        normalize: L2-normalise query and bank first (cosine similarity; the bank aggregated
            in Eq. 34 is then ``B̂``). ``False`` uses the inputs as given (dot products).

    Returns:
        :class:`Retrieval` with ``reference`` ``(..., N, D)`` in the query's dtype and sparse
        ``weights`` ``(..., N, S)``. Similarities, thresholds and aggregation are float32
        (float64 for float64 inputs).

    Shape:
        ``query (..., N, D)``, ``bank (M, D) | (..., M, D)`` → ``reference (..., N, D)``.

    Example:
        >>> import torch
        >>> from resad_kit.ops import radial_distance, retrieve
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> h = w = 4
        >>> refs = torch.randn(2, h * w, 8)  # K=2 reference images, N=16 patches, D=8
        >>> bank = refs.reshape(-1, 8)  # (M=32, D) shot-major
        >>> query = refs[1] + 0.01 * torch.randn(h * w, 8)
        >>> r = radial_distance(h, w)
        >>> out = retrieve(query, bank, query_radius=r, bank_radius=r.repeat(2), gamma=0.01)
        >>> out.reference.shape, out.weights.values.sum(-1).allclose(torch.ones(16))
        (torch.Size([16, 8]), True)
        >>> bool((out.weights.indices[:, 0] == torch.arange(16) + 16).all())  # own patch wins
        True
    """
    fn = "retrieve"
    check_tensor(fn, "query", query, min_ndim=2, shape_doc="(..., N, D)", finite=True)
    check_tensor(fn, "bank", bank, min_ndim=2, shape_doc="(M, D) or (..., M, D)", finite=True)
    _check_gamma(fn, gamma)
    n, d = query.shape[-2:]
    lead = query.shape[:-2]
    if bank.shape[-1] != d:
        raise ValueError(
            f"{fn}: `bank` must have D={d} channels like `query` {tuple(query.shape)}; "
            f"got {tuple(bank.shape)}"
        )
    if bank.ndim > 2 and bank.shape[:-2] != lead:
        raise ValueError(
            f"{fn}: a per-query `bank` must have the query's leading dims {tuple(lead)}; "
            f"got bank {tuple(bank.shape)} for query {tuple(query.shape)}"
        )
    m = bank.shape[-2]
    if (query_radius is None) != (bank_radius is None):
        raise ValueError(f"{fn}: give both `query_radius` and `bank_radius`, or neither")
    if query_radius is not None and bank_radius is not None:
        check_tensor(fn, "query_radius", query_radius, shape_doc="(N,)", finite=True)
        check_tensor(fn, "bank_radius", bank_radius, shape_doc="(M,)", finite=True)
        if query_radius.shape != (n,):
            raise ValueError(
                f"{fn}: `query_radius` must have shape (N,)=({n},); got {tuple(query_radius.shape)}"
            )
        if bank_radius.shape != (m,):
            raise ValueError(
                f"{fn}: `bank_radius` must have shape (M,)=({m},); got {tuple(bank_radius.shape)}"
            )
    check_positive_int(fn, "chunk_size", chunk_size, optional=True)
    check_positive_int(fn, "k", k, optional=True)

    dtype = compute_dtype(query, bank)
    rows = rearrange(query, "... n d -> (...) n d").to(dtype)
    banks = rearrange(bank, "... m d -> (...) m d").to(dtype)
    if normalize:
        rows = F.normalize(rows, dim=-1, eps=_NORM_EPS)
        banks = F.normalize(banks, dim=-1, eps=_NORM_EPS)
    penalty_args = None
    if query_radius is not None and bank_radius is not None and gamma > 0:
        penalty_args = (query_radius.to(dtype), bank_radius.to(dtype), gamma)

    if banks.shape[0] == 1:  # shared bank: all query rows of all images in one stream
        radii = None if penalty_args is None else penalty_args[0].repeat(rows.shape[0])
        parts = [_retrieve_rows(rows.reshape(-1, d), banks[0], radii, penalty_args, k, chunk_size)]
    else:  # one bank per query image
        radii = None if penalty_args is None else penalty_args[0]
        parts = [
            _retrieve_rows(q, b, radii, penalty_args, k, chunk_size)
            for q, b in zip(rows, banks, strict=True)
        ]
    reference = torch.cat([p[0] for p in parts]).reshape(*lead, n, d).to(query.dtype)
    indices, values = _pad_and_stack([p[1] for p in parts], [p[2] for p in parts])
    weights = SparseWeights(
        indices.reshape(*lead, n, -1), values.reshape(*lead, n, -1), num_entries=m
    )
    return Retrieval(reference, weights)


def _retrieve_rows(
    rows: torch.Tensor,
    bank: torch.Tensor,
    row_radius: torch.Tensor | None,
    penalty_args: tuple[torch.Tensor, torch.Tensor, float] | None,
    k: int | None,
    chunk_size: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Retrieval for ``(R, D)`` rows against one ``(M, D)`` bank, chunk by chunk.

    Returns ``(reference (R, D), indices (R, S), values (R, S))``.
    """
    # Chunks start at multiples of the GEMM tile, so every row sits at the same place of an
    # equally shaped tile whatever the chunking (see _similarity).
    step = -(-(chunk_size or rows.shape[0]) // _GEMM_TILE) * _GEMM_TILE
    refs, indices, values = [], [], []
    for start in range(0, rows.shape[0], step):
        sim = _similarity(rows[start : start + step], bank)
        if penalty_args is not None and row_radius is not None:
            _, bank_radius, gamma = penalty_args
            radius = row_radius[start : start + step]
            sim = sim - gamma * (radius[:, None] - bank_radius[None, :]).abs()
        idx, w = _sparse_sparsemax(sim, k)
        refs.append(F.embedding_bag(idx, bank, per_sample_weights=w, mode="sum"))
        indices.append(idx)
        values.append(w)
    ref = torch.cat(refs)
    idx_all, val_all = _pad_and_stack(indices, values)
    return ref, idx_all, val_all


def _similarity(rows: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """``rows @ bank.T`` computed as a batch of equally shaped ``(64, D)`` row tiles.

    BLAS libraries choose kernels (and so rounding) by matrix shape, and a row's rounding can
    depend on its position in a micro-tile. Fixed tiles, with chunks that start at multiples of
    the tile, make every row's similarities bit-identical whatever the chunking.
    """
    n_rows = rows.shape[0]
    tiles = rearrange(
        F.pad(rows, (0, 0, 0, -n_rows % _GEMM_TILE)), "(t r) d -> t r d", r=_GEMM_TILE
    )
    return rearrange(tiles @ bank.T, "t r m -> (t r) m")[:n_rows]


def _sparse_sparsemax(sim: torch.Tensor, k: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise sparsemax of ``(R, M)`` similarities in sparse form ``(indices, values)``.

    The support is found without gradients; the weights are then recomputed from the gathered
    similarities with differentiable ops (``τ = (Σ_S s − 1)/|S|``), which gives exactly the
    sparsemax Jacobian with respect to ``sim``.
    """
    with torch.no_grad():
        shifted = sim - sim.amax(dim=-1, keepdim=True)
        _, support = _threshold_rows(shifted, k)
        width = int(support.max())
        idx = shifted.topk(width, dim=-1).indices
    gathered = sim.gather(-1, idx)
    in_support = torch.arange(width, device=sim.device) < support
    cumsum = gathered.cumsum(dim=-1)
    tau = (cumsum.gather(-1, support - 1) - 1) / support.to(sim.dtype)
    weights = (gathered - tau).clamp_min(0) * in_support
    return idx.masked_fill(~in_support, 0), weights


def _pad_and_stack(
    indices: list[torch.Tensor], values: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate row blocks of different support widths, padding with weight 0, index 0."""
    width = max(v.shape[-1] for v in values)
    idx = torch.cat([F.pad(i, (0, width - i.shape[-1])) for i in indices])
    val = torch.cat([F.pad(v, (0, width - v.shape[-1])) for v in values])
    return idx, val
