"""The blocked retrieval engine behind :func:`resad_kit.ops.retrieve` (private, unchecked).

With ``k="dense"`` (:func:`_dense_block`) no step reads a tensor value on the host: the full
stable sort replaces the support search, a dense GEMM the gather-and-sum, and the radial table
spans all ``M`` radii (no period test).

Eq. 8 similarity blocks (GEMM written in place, the radial penalty as a per-period table),
the sparse sparsemax of each block (the support found by
:func:`resad_kit.ops._sorted_support.sorted_support`, the weights by the one threshold
:func:`resad_kit.ops._sorted_support.support_threshold`) and the gather-and-sum of Eq. 34. Inputs
are validated by :func:`resad_kit.ops.retrieve`; :func:`retrieve_core` is what a method that
has checked its inputs (or runs with ``resad_kit.checks(False)``) may call.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from resad_kit.ops._compile import compiled
from resad_kit.ops._sorted_support import SparsemaxK, sorted_support, support_threshold
from resad_kit.ops._validation import compute_dtype

__all__: list[str] = []

_NORM_EPS = 1e-12
_MIN_GEMM_ROWS = 64
_BLOCK_ENTRIES = 2**23  # default similarity block: 2²³ entries (32 MiB in float32)
_MIN_BLOCK_ROWS = 1024  # ... but at least this many rows (the GEMM packs the bank per call)


def retrieve_core(
    query: torch.Tensor,
    bank: torch.Tensor,
    query_radius: torch.Tensor | None,
    bank_radius: torch.Tensor | None,
    gamma: float,
    *,
    k: SparsemaxK,
    chunk_size: int | None,
    normalize: bool | Literal["query"],
    compile: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """:func:`resad_kit.ops.retrieve` without checks: ``(reference, indices, values, M)``."""
    n, m = query.shape[-2], bank.shape[-2]
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
        bank_radius = gamma * bank_radius.to(dtype)
        # the period test reads the radii on the host: the sync-free "dense" path takes all M
        penalty = (row_radius, bank_radius if k == "dense" else _period(bank_radius, n))
    reference, indices, values = _retrieve_groups(rows, banks, penalty, k, chunk_size, compile)
    return restore(reference).to(query.dtype), restore(indices), restore(values), m


def _period(bank_radius: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` bank radii if the ``M`` radii repeat them (a bank of ``K`` shots of the
    query's grid: ``radial_distance(h, w).repeat(K)``), else all ``M``."""
    m = bank_radius.shape[0]
    if m % n == 0 and torch.equal(bank_radius.view(m // n, n), bank_radius[:n].expand(m // n, n)):
        return bank_radius[:n]
    return bank_radius


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
    bank), so that the sparsemax and the gather-and-sum run once per block (``k="dense"``:
    the dense sparsemax and product of :func:`_dense_block`, ``S = M``). The chunks are
    computed from the shapes alone. Returns ``reference (G, R, D)``, ``indices (G, R, S)`` and
    ``values (G, R, S)``.
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
        if k == "dense":
            ref, idx, w = _dense_block(sim, banks, start, stop, total, compile)
            references.append(ref)
        else:
            idx, w, support = _sparse_sparsemax(sim, k, compile)
            flat_bank = banks.reshape(groups * m, d)  # one gather-and-sum over all the banks
            references.append(_gather_sum(idx + bank_offset[start:stop], w, support, flat_bank))
        del sim  # free this block before the next one is allocated
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row-wise sparsemax of ``(R, M)`` similarities in sparse form ``(indices, values)``.

    The support is found without gradients
    (:func:`resad_kit.ops._sorted_support.sorted_support`) and put in a canonical order:
    weight descending, ties by bank index, so that every ``k`` gives the same tensors. The
    weights are then recomputed from the gathered similarities with differentiable ops
    (:func:`_support_weights`). Returns ``(indices, weights, support)``: ``(R, W)``, ``(R, W)``
    (0 past each row's support) and ``(R, 1)``.
    """
    with torch.no_grad():
        top = sorted_support(sim, k)
        idx = top.indices
        if _ties_out_of_order(top.values, idx, top.support):
            by_index = idx.argsort(dim=-1)
            idx, vals = idx.gather(-1, by_index), top.values.gather(-1, by_index)
            idx = idx.gather(-1, vals.argsort(dim=-1, descending=True, stable=True))
    weights_fn = _COMPILED_SUPPORT_WEIGHTS if compile else _support_weights
    return (*weights_fn(sim, idx, top.support), top.support)


def _gather_sum(
    indices: torch.Tensor, weights: torch.Tensor, support: torch.Tensor, bank: torch.Tensor
) -> torch.Tensor:
    """Eq. 34, ``Σ_j w_j b_{idx_j}`` over the first ``support`` slots of every row: ``(R, D)``.

    Only the support's entries are passed to ``F.embedding_bag`` (one bag per row, by offsets),
    not the ``(R, W)`` slots padded to the widest support: the gather-and-sum reads a bank row
    per entry, so the padding would cost as much as real entries.
    """
    inside = torch.arange(indices.shape[-1], device=indices.device) < support
    counts = support.squeeze(-1)
    offsets = counts.cumsum(0) - counts
    return F.embedding_bag(
        indices[inside], bank, offsets, per_sample_weights=weights[inside], mode="sum"
    )


def _dense_block(
    sim: torch.Tensor,
    banks: torch.Tensor,
    start: int,
    stop: int,
    total: int,
    compile: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``k="dense"``: sparsemax and Eq. 34 of the similarity block of rows ``[start, stop)``
    with every width taken from the shapes (no device-to-host sync).

    The full stable sort lists every row's entries by similarity descending, ties in bank
    order: the canonical order of the sparse path without its tie check. The weights are
    :func:`_support_weights` over all ``M`` slots (index 0, weight 0 past the support), and the
    reference is the dense product ``W·B̂`` with each group's bank (a GEMM of at least 64 rows,
    as in :func:`_similarity_block`). Returns ``(reference (R, D), indices (R, M), values
    (R, M))``.
    """
    with torch.no_grad():
        top = sorted_support(sim, "dense")
    weights_fn = _COMPILED_SUPPORT_WEIGHTS if compile else _support_weights
    idx, weights = weights_fn(sim, top.indices, top.support)
    dense = torch.zeros_like(weights).scatter(-1, top.indices, weights)  # W in bank order
    parts = []
    for group in range(start // total, (stop - 1) // total + 1):
        first, last = max(start, group * total), min(stop, (group + 1) * total)
        segment = dense[first - start : last - start]
        pad = max(0, _MIN_GEMM_ROWS - (last - first))
        parts.append((F.pad(segment, (0, 0, 0, pad)) @ banks[group])[: last - first])
    return (parts[0] if len(parts) == 1 else torch.cat(parts)), idx, weights


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
    tau = support_threshold(shifted.cumsum(dim=-1), support)
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
