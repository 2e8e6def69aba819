"""Radial-penalty sparsemax retrieval from a memory bank (paper Sec. 3.2.3, Eq. 8, 33–34).

For every query patch ``i`` and bank entry ``j`` (``M = K·N`` patches of ``K`` reference
images, shot-major):

    S(i, j) = ⟨q_i, b_j⟩ − γ·|r_q(i) − r_ref(j)|        (Eq. 8)
    W(i, :) = sparsemax(S(i, :))                          (Eq. 33)
    F_ref   = W · B̂                                      (Eq. 34)

The weights are sparse (typically tens of non-zeros out of thousands), so the support of every
row is found exactly without sorting whole rows (:func:`resad_kit.ops.sparsemax`,
``k="auto"``: a screen by block maxima, then a sort of the few entries left), returned as
``(indices, values)``, and the reference is aggregated with a gather-and-sum
(``F.embedding_bag``) instead of a dense ``N×M`` product. The GEMM writes the similarity block
directly; the radial penalty of a ``K``-shot bank (radii repeating every ``N`` entries) is an
``N``-wide table subtracted from every shot's columns, never an ``N×M`` block. Many query
images and one bank per layer are handled in one call, in similarity blocks of bounded size
(``chunk_size``). docs/benchmarks.md measures all of this against a re-implementation of the
official code.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange

from resad_kit.ops._compile import compiled
from resad_kit.ops._validation import (
    check_finite,
    check_positive_int,
    check_tensor,
    compute_dtype,
    is_real,
)
from resad_kit.ops.simplex import SparsemaxK, check_k, sorted_support

__all__ = ["Retrieval", "SparseWeights", "radial_distance", "radial_penalty", "retrieve"]

_NORM_EPS = 1e-12
_MIN_GEMM_ROWS = 64
_BLOCK_ENTRIES = 2**23  # default similarity block: 2²³ entries (32 MiB in float32)
_MIN_BLOCK_ROWS = 1024  # ... but at least this many rows (the GEMM packs the bank per call)


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
    gamma = _check_gamma(fn, gamma)
    dtype = compute_dtype(r_query, r_bank)
    return gamma * (r_query.to(dtype)[..., :, None] - r_bank.to(dtype)[..., None, :]).abs()


def _check_gamma(fn: str, gamma: object) -> float:
    """``gamma`` as a float (numpy scalars accepted); ``ValueError`` unless finite and ≥ 0."""
    if not (is_real(gamma) and math.isfinite(gamma) and gamma >= 0):  # type: ignore[arg-type]
        raise ValueError(f"{fn}: `gamma` must be a finite number ≥ 0; got {gamma!r}")
    return float(gamma)  # type: ignore[arg-type]


def retrieve(
    query: torch.Tensor,
    bank: torch.Tensor,
    *,
    query_radius: torch.Tensor | None = None,
    bank_radius: torch.Tensor | None = None,
    gamma: float = 0.01,
    k: SparsemaxK = "auto",
    chunk_size: int | None = None,
    normalize: bool | Literal["query"] = True,
    compile: bool = False,
) -> Retrieval:
    """Res²CLIP reference retrieval: radial-penalised cosine similarity, sparsemax, aggregation.

    Computes Eq. 8 ``S = ⟨q, b⟩ − γ|r_q − r_ref|``, Eq. 33 ``W = sparsemax(S)`` row-wise over
    all ``M`` bank entries, and Eq. 34 ``F_ref = W·B̂``. The penalty is applied only when both
    radii are given. Differentiable with respect to ``query`` and ``bank`` (the method itself
    runs it under ``torch.no_grad``).

    Args:
        query: ``(..., N, D)`` query patch features; any number of leading dims (images,
            layers) are processed in one call.
        bank: ``(M, D)`` memory bank shared by all queries (``K`` shots concatenated
            shot-major), or ``(..., M, D)`` whose leading dims broadcast to the query's: e.g.
            ``(L, 1, M, D)`` holds one bank per layer for a query ``(L, B, N, D)`` of ``B``
            images, and ``(B, M, D)`` one bank per query image.
        query_radius: ``(N,)`` radius of every query patch, e.g. :func:`radial_distance`.
        bank_radius: ``(M,)`` radius of every bank entry, e.g. ``radial_distance(h, w).repeat(K)``.
        gamma: radial penalty strength γ ≥ 0 (paper and code: 0.01).
        k: how sparsemax finds each row's sorted support (see
            :func:`resad_kit.ops.sparsemax`): ``"auto"`` (default, the fastest measured: a
            screen by block maxima, or the adaptive top-k for banks under 2,048 entries), an
            int start width for the adaptive top-k, or ``None`` for the full sort. All give
            identical results.
        chunk_size: process this many query rows (flattened over the leading dims and ``N``;
            rounded up to a multiple of 64) at a time, so that the similarity block (one at a
            time) takes O(chunk_size·M) memory. ``None`` (default): blocks of about 2²³
            similarities (32 MiB in float32), or of 1,024 rows for banks too large for that,
            made of whole images and layers where one fits in twice that. Results are
            bit-identical whatever the chunking.
        normalize: ``True``: ℓ2-normalise query and bank first (cosine similarity; the bank
            aggregated in Eq. 34 is then ``B̂``). ``"query"``: normalise the query only, for a
            bank that is already normalised (built once per class, as the method does), which
            saves two passes over the bank per call. ``False``: use both as given (dot
            products).
        compile: run the similarity (GEMM and penalty) and the weight computation through
            ``torch.compile`` (compiled on first use, ``dynamic=True``).
            If compilation is unavailable or fails, the eager code runs instead. Off by
            default: on CPU it gave no speed-up (the GEMM dominates) and the first call, which
            compiles, took about 12 s on 2 cores (docs/benchmarks.md); results match eager to
            float rounding.

    Returns:
        :class:`Retrieval` with ``reference`` ``(..., N, D)`` in the query's dtype and sparse
        ``weights`` ``(..., N, S)``. Similarities, thresholds and aggregation are float32
        (float64 for float64 inputs). The support of every row is listed largest weight first,
        ties in bank order, so every ``k`` and ``chunk_size`` gives the same tensors.

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
        >>> layers = torch.stack([query, -query])[:, None]  # (L=2, B=1, N, D), a bank per layer
        >>> both = retrieve(layers, torch.stack([bank, -bank])[:, None])
        >>> both.reference.shape, torch.equal(both.reference[0, 0], retrieve(query, bank).reference)
        (torch.Size([2, 1, 16, 8]), True)
    """
    fn = "retrieve"
    check_tensor(fn, "query", query, min_ndim=2, shape_doc="(..., N, D)")
    check_tensor(fn, "bank", bank, min_ndim=2, shape_doc="(M, D) or (..., M, D)")
    _check_finite_fast(fn, "query", query)
    _check_finite_fast(fn, "bank", bank)
    gamma = _check_gamma(fn, gamma)
    n, d = query.shape[-2:]
    lead = query.shape[:-2]
    if bank.shape[-1] != d:
        raise ValueError(
            f"{fn}: `bank` must have D={d} channels like `query` {tuple(query.shape)}; "
            f"got {tuple(bank.shape)}"
        )
    bank_lead = bank.shape[:-2]
    if len(bank_lead) > len(lead) or not _broadcasts_to(bank_lead, lead):
        raise ValueError(
            f"{fn}: the leading dims of `bank` must broadcast to the query's leading dims "
            f"{tuple(lead)}; got bank {tuple(bank.shape)} for query {tuple(query.shape)}"
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
    check_k(fn, k)
    if normalize not in (True, False, "query"):
        raise ValueError(f'{fn}: `normalize` must be True, False or "query"; got {normalize!r}')
    if not isinstance(compile, bool):
        raise ValueError(f"{fn}: `compile` must be True or False; got {compile!r}")

    dtype = compute_dtype(query, bank)
    rows, banks, restore = _group_by_bank(query.to(dtype), bank.to(dtype))
    if normalize:
        rows = F.normalize(rows, dim=-1, eps=_NORM_EPS)
    if normalize is True:
        banks = F.normalize(banks, dim=-1, eps=_NORM_EPS)
    penalty = None
    if query_radius is not None and bank_radius is not None and gamma > 0:
        # γ folded into the radii: |γ·r_q − γ·r_ref| (the table is then one sub and one abs)
        row_radius = (gamma * query_radius.to(dtype)).repeat(rows.shape[1] // n)
        penalty = (row_radius, _period(gamma * bank_radius.to(dtype), n))
    reference, indices, values = _retrieve_groups(rows, banks, penalty, k, chunk_size, compile)
    weights = SparseWeights(restore(indices), restore(values), num_entries=m)
    return Retrieval(restore(reference).to(query.dtype), weights)


def _period(bank_radius: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` bank radii if the ``M`` radii repeat them (a bank of ``K`` shots of the
    query's grid: ``radial_distance(h, w).repeat(K)``), else all ``M``."""
    m = bank_radius.shape[0]
    if m % n == 0 and torch.equal(bank_radius.view(m // n, n), bank_radius[:n].expand(m // n, n)):
        return bank_radius[:n]
    return bank_radius


def _check_finite_fast(fn: str, name: str, x: torch.Tensor) -> None:
    """:func:`check_finite` behind a one-pass screen: a NaN or ±inf entry makes the sum
    non-finite, so only a non-finite sum (or an overflow of finite entries) needs the full
    element-wise check, which raises with the counts."""
    if not bool(torch.isfinite(x.sum(dtype=compute_dtype(x)))):
        check_finite(fn, name, x)


def _broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    padded = (1,) * (len(target) - len(shape)) + tuple(shape)
    return all(s in (1, t) for s, t in zip(padded, target, strict=True))


def _group_by_bank(query: torch.Tensor, bank: torch.Tensor):
    """Arrange the query rows by the bank they are matched against.

    Returns ``(rows (G, R, D), banks (G, M, D), restore)``: ``G`` distinct banks, the ``R``
    query rows of each (images sharing the bank, then patches), and a function that turns a
    ``(G, R, C)`` result back into the query's ``(..., N, C)`` layout.
    """
    lead, (n, d), m = query.shape[:-2], query.shape[-2:], bank.shape[-2]
    bank_lead = (1,) * (len(lead) - (bank.ndim - 2)) + tuple(bank.shape[:-2])
    own = [i for i, s in enumerate(bank_lead) if s != 1]  # dims with one bank per entry
    shared = [i for i, s in enumerate(bank_lead) if s == 1]  # dims sharing a bank
    order = [*own, *shared]
    groups = math.prod(lead[i] for i in own)
    rows = query.permute(*order, -2, -1).reshape(groups, -1, d).contiguous()
    banks = bank.reshape(*bank_lead, m, d).permute(*order, -2, -1).reshape(groups, m, d)
    banks = banks.contiguous()  # reductions round by memory layout: one layout for all
    arranged = [lead[i] for i in order]
    inverse = [order.index(i) for i in range(len(lead))]

    def restore(x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(*arranged, n, x.shape[-1])
        return x.permute(*inverse, -2, -1)

    return rows, banks, restore


def _retrieve_groups(
    rows: torch.Tensor,
    banks: torch.Tensor,
    penalty: tuple[torch.Tensor, torch.Tensor] | None,
    k: SparsemaxK,
    chunk_size: int | None,
    compile: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Retrieval of ``(G, R, D)`` rows, group ``g`` against its bank ``banks[g]`` ``(M, D)``.

    ``penalty`` is ``(γ·r of every row (R,), γ·r of the first P bank entries (P,))``, the bank
    radii repeating with period ``P`` (``P = M`` for arbitrary radii), or ``None``. The ``G·R``
    rows, flattened, are processed in chunks of ``chunk_size`` rows (rounded up to a multiple
    of 64; by default ``_BLOCK_ENTRIES`` similarities or ``_MIN_BLOCK_ROWS`` rows, whole
    groups where a group fits in twice that): one ``chunk × M``
    similarity block at a time, which may span groups (each group's rows against its own
    bank), so that the sparsemax and the gather-and-sum run once per block. Returns
    ``reference (G, R, D)``, ``indices (G, R, S)`` and ``values (G, R, S)``.
    """
    groups, total, d = rows.shape
    m = banks.shape[1]
    flat_rows = rows.reshape(groups * total, d)
    if chunk_size is None:
        budget = max(_MIN_BLOCK_ROWS, _BLOCK_ENTRIES // m)  # rows
        if total <= 2 * budget:  # whole groups, so that every GEMM takes a whole group
            step = total * max(1, budget // total)
        else:
            step = budget // _MIN_GEMM_ROWS * _MIN_GEMM_ROWS
    else:
        step = -(-chunk_size // _MIN_GEMM_ROWS) * _MIN_GEMM_ROWS
    bank_offset = m * torch.arange(groups, device=rows.device).repeat_interleave(total)[:, None]
    references, indices, values = [], [], []
    tables: dict[tuple[int, int], torch.Tensor] = {}  # the last penalty table, reused
    for start in range(0, groups * total, step):
        stop = min(start + step, groups * total)
        sim = _similarity_block(flat_rows, banks, penalty, start, stop, compile, tables)
        idx, w = _sparse_sparsemax(sim, k, compile)
        del sim  # free this block before the next one is allocated
        flat_idx = idx + bank_offset[start:stop]  # one gather-and-sum over all the banks
        flat_bank = banks.reshape(groups * m, d)
        references.append(F.embedding_bag(flat_idx, flat_bank, per_sample_weights=w, mode="sum"))
        indices.append(idx)
        values.append(w)
    reference = references[0] if len(references) == 1 else torch.cat(references)
    idx, val = _pad_and_stack(indices, values)
    return (
        reference.view(groups, total, d),
        idx.view(groups, total, -1),
        val.view(groups, total, -1),
    )


def _similarity_block(
    rows: torch.Tensor,
    banks: torch.Tensor,
    penalty: tuple[torch.Tensor, torch.Tensor] | None,
    start: int,
    stop: int,
    compile: bool,
    tables: dict[tuple[int, int], torch.Tensor],
) -> torch.Tensor:
    """Eq. 8 for the flattened rows ``[start, stop)``: ``(stop − start, M)``, every row against
    the bank of its group (``R = rows / G`` rows per group).

    Every group has the same row radii, so the penalty table of a span of rows within a group
    is the same in every group: ``tables`` keeps the last one (keyed by that span), which the
    next group's segment reuses (one table per call with the default whole-group blocks); only
    one is kept, so memory stays bounded by the block.

    Every GEMM covers at least 64 rows (shorter segments are padded): BLAS libraries take other
    kernels, which round differently, for very short matrices, so the results do not depend on
    the chunking (tested bit for bit).
    """
    groups, m = banks.shape[:2]
    total = rows.shape[0] // groups
    similarity = _COMPILED_SIMILARITY if compile else _similarity
    # GEMMs write into one block; with autograd (no out= there), the segments are joined
    differentiable = torch.is_grad_enabled() and (rows.requires_grad or banks.requires_grad)
    block = None if differentiable else rows.new_empty(stop - start, m)
    parts = []
    for group in range(start // total, (stop - 1) // total + 1):
        first, last = max(start, group * total), min(stop, (group + 1) * total)
        segment = rows[first:last]
        table = None
        if penalty is not None:
            span = (first - group * total, last - group * total)
            table = tables.get(span)
            if table is None:
                tables.clear()
                table = tables[span] = _radial_table(penalty[0][span[0] : span[1]], penalty[1])
        out = None if block is None else block[first - start : last - start]
        pad = max(0, _MIN_GEMM_ROWS - (last - first))
        if pad:
            table = None if table is None else F.pad(table, (0, 0, 0, pad))
            sim = similarity(F.pad(segment, (0, 0, 0, pad)), banks[group], table, None)
            sim = sim[: last - first]
            if out is None:
                parts.append(sim)
            else:
                out.copy_(sim)
        elif out is None:
            parts.append(similarity(segment, banks[group], table, None))
        else:
            similarity(segment, banks[group], table, out)
    return torch.cat(parts) if block is None else block


def _radial_table(row_radius: torch.Tensor, bank_radius: torch.Tensor) -> torch.Tensor:
    """``|γr_q(i) − γr_ref(j)|`` (Eq. 8's penalty) for rows ``(R,)`` and bank radii ``(P,)``."""
    return (row_radius[:, None] - bank_radius[None, :]).abs_()


def _similarity(
    rows: torch.Tensor,
    bank: torch.Tensor,
    table: torch.Tensor | None,
    out: torch.Tensor | None,
) -> torch.Tensor:
    """``rows @ bank.T − penalty`` (Eq. 8), ``(R, M)``, written into ``out`` if given.

    ``table`` ``(R, P)`` holds the penalty of the first ``P`` bank entries, whose radii repeat
    with period ``P`` (``P = N`` for a bank of ``K`` shots of the query's grid, ``P = M`` for
    arbitrary radii): it is subtracted from every period of the GEMM's output in place, so a
    ``K``-shot bank needs no ``R×M`` penalty block.
    """
    sim = rows @ bank.T if out is None else torch.mm(rows, bank.T, out=out)
    if table is not None:
        sim.view(sim.shape[0], -1, table.shape[-1]).sub_(table[:, None, :])
    return sim


def _sparse_sparsemax(
    sim: torch.Tensor, k: SparsemaxK, compile: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise sparsemax of ``(R, M)`` similarities in sparse form ``(indices, values)``.

    The support is found without gradients (:func:`resad_kit.ops.simplex.sorted_support`) and
    put in a canonical order: weight descending, ties by bank index, so that every ``k`` gives
    the same tensors. The weights are then recomputed from the gathered similarities with
    differentiable ops (:func:`_support_weights`).
    """
    with torch.no_grad():
        top = sorted_support(sim, k)
        idx = top.indices
        if _ties_out_of_order(top.values, idx, top.support):
            by_index = idx.argsort(dim=-1)
            idx, vals = idx.gather(-1, by_index), top.values.gather(-1, by_index)
            idx = idx.gather(-1, vals.argsort(dim=-1, descending=True, stable=True))
    weights_fn = _COMPILED_SUPPORT_WEIGHTS if compile else _support_weights
    return weights_fn(sim, idx, top.support)


def _ties_out_of_order(values: torch.Tensor, indices: torch.Tensor, support: torch.Tensor) -> bool:
    """Whether two equal weights of a support ``(R, W)`` (sorted descending, ``support``
    ``(R, 1)``) are listed against bank order (tied similarities are rare: usually no sort)."""
    inside = torch.arange(1, values.shape[-1], device=values.device) < support
    tied = values[:, 1:] == values[:, :-1]
    return bool((tied & inside & (indices[:, 1:] < indices[:, :-1])).any())


def _support_weights(
    sim: torch.Tensor, idx: torch.Tensor, support: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparsemax weights of the sorted support ``idx`` ``(R, W)`` of ``(R, M)`` ``sim``.

    ``τ = (Σ_S s − 1)/|S|`` relative to the row maximum, ``w = max(0, s − τ)`` on the first
    ``support`` slots and 0 (index 0) on the rest: exactly the sparsemax Jacobian with respect
    to ``sim``. Returns ``(indices, weights)``.
    """
    gathered = sim.gather(-1, idx)
    shifted = gathered - gathered[:, :1]
    in_support = torch.arange(idx.shape[-1], device=sim.device) < support
    cumsum = shifted.cumsum(dim=-1)
    tau = (cumsum.gather(-1, support - 1) - 1) / support.to(sim.dtype)
    weights = (shifted - tau).clamp_min(0) * in_support
    return idx.masked_fill(~in_support, 0), weights


def _pad_and_stack(
    indices: list[torch.Tensor], values: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate blocks of different support widths, padding with weight 0, index 0."""
    width = max(v.shape[-1] for v in values)
    idx = torch.cat([F.pad(i, (0, width - i.shape[-1])) for i in indices])
    val = torch.cat([F.pad(v, (0, width - v.shape[-1])) for v in values])
    return idx, val


_COMPILED_SIMILARITY = compiled(_similarity)
_COMPILED_SUPPORT_WEIGHTS = compiled(_support_weights)
