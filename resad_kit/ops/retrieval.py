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

Finding a support of data-dependent size reads it on the host (a device-to-host sync on a
GPU). ``k="dense"`` is the sync-free alternative: a full stable sort of every row, the weights
over all ``M`` entries and the reference as the dense product ``W·B̂`` (a GEMM), every width
taken from the shapes, for hot paths run with ``resad_kit.checks(False)``.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from einops import rearrange

from resad_kit.ops._retrieval_core import retrieve_core
from resad_kit.ops._sorted_support import SparsemaxK, check_k
from resad_kit.ops._validation import (
    check_finite,
    check_number,
    check_positive_int,
    check_tensor,
    checks_enabled,
    compute_dtype,
    value_check,
)

__all__ = ["Retrieval", "SparseWeights", "radial_distance", "radial_penalty", "retrieve"]


class SparseWeights(NamedTuple):
    """Row-sparse retrieval weights: the support of every query row, largest weight first.

    Rows with a support smaller than ``S`` (the largest support in the call) are padded with
    weight 0 (and index 0), so every row sums to one over its ``S`` slots. With
    ``retrieve(..., k="dense")`` ``S = M``: the same support in the same order (weight
    descending, ties by bank index), then weight 0, index 0 in the other ``M − |support|``
    slots.

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
            official code does.
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
    if checks_enabled():
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
    if checks_enabled():
        fn = "radial_penalty"
        check_tensor(fn, "r_query", r_query, min_ndim=1, shape_doc="(..., N)", finite=True)
        check_tensor(fn, "r_bank", r_bank, min_ndim=1, shape_doc="(..., M)", finite=True)
        gamma = _check_gamma(fn, gamma)
    return _radial_penalty_core(r_query, r_bank, float(gamma))


def _radial_penalty_core(r_query: torch.Tensor, r_bank: torch.Tensor, gamma: float) -> torch.Tensor:
    """:func:`radial_penalty` without checks."""
    dtype = compute_dtype(r_query, r_bank)
    return gamma * (r_query.to(dtype)[..., :, None] - r_bank.to(dtype)[..., None, :]).abs()


def _check_gamma(fn: str, gamma: object) -> float:
    """``gamma`` as a float (numpy scalars accepted); ``ValueError`` unless finite and ≥ 0."""
    return check_number(
        fn, "gamma", gamma, minimum=0.0, what="a finite number ≥ 0", non_number=ValueError
    )


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
            :func:`resad_kit.ops.sparsemax`): ``"auto"`` (default: a screen by block maxima, or
            the adaptive top-k for banks under 2,048 entries and for rows the screen cannot
            narrow, as at the supports of real images; docs/benchmarks.md times both), an
            int start width for the adaptive top-k, or ``None`` for the full sort. All give
            identical results. ``"dense"``: no device-to-host sync (the others read the support
            sizes on the host): the full stable sort, weights over all ``M`` slots (``S = M``)
            and the reference as the dense GEMM ``W·B̂``; the radial radii are taken whole
            (the others test, on the host, whether they repeat every ``N`` entries). Weights
            bit-identical to ``"auto"``'s once densified (tested on CPU), reference equal to
            float rounding (GEMM against gather-and-sum), same gradients; costs a sort of
            every row and ``S = M`` output slots (docs/primitives.md measures it).
        chunk_size: process this many query rows (flattened over the leading dims and ``N``;
            rounded up to a multiple of 64) at a time, so that the similarity block (one at a
            time) takes O(chunk_size·M) memory. ``None`` (default): blocks of about 2²³
            similarities (32 MiB in float32), or of 1,024 rows for banks too large for that,
            made of whole images and layers where one fits in twice that. Results are
            bit-identical whatever the chunking in the tested cases (a BLAS may still round a
            similarity row at another position of a block 1 ulp differently).
        normalize: ``True``: ℓ2-normalise query and bank first (cosine similarity; the bank
            aggregated in Eq. 34 is then ``B̂``). ``"query"``: normalise the query only, for a
            bank that is already normalised (built once per class, as the method does), which
            saves two passes over the bank per call. ``False``: use both as given (dot
            products).
        compile: run the similarity (GEMM and penalty) and the weight computation through
            ``torch.compile`` (compiled on first use, ``dynamic=True``).
            If compilation is unavailable or fails, the eager code runs instead. Off by
            default: the first call compiles, and on CPU the GEMM dominates the cost (measure
            before switching it on: ``pytest benchmarks/bench_retrieval.py --benchmark-only
            --compile -k compiled``); results match eager to float rounding.

    Returns:
        :class:`Retrieval` with ``reference`` ``(..., N, D)`` in the query's dtype and sparse
        ``weights`` ``(..., N, S)``. Similarities, thresholds and aggregation are float32
        (float64 for float64 inputs). The support of every row is listed largest weight first,
        ties in bank order, so every ``k`` gives the same tensors (``k="dense"``:
        the same weights, padded to ``S = M``, and a reference equal to float rounding).

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
        >>> dense = retrieve(query, bank, k="dense")  # sync-free: S = M slots, a GEMM
        >>> (
        ...     dense.weights.values.shape,
        ...     torch.equal(dense.weights.to_dense(), retrieve(query, bank).weights.to_dense()),
        ... )
        (torch.Size([16, 32]), True)
        >>> torch.allclose(dense.reference, retrieve(query, bank).reference, atol=1e-6)
        True
    """
    if checks_enabled():
        gamma = _check_retrieve(
            query, bank, query_radius, bank_radius, gamma, k, chunk_size, normalize, compile
        )
    reference, indices, values, m = retrieve_core(
        query,
        bank,
        query_radius,
        bank_radius,
        float(gamma),
        k=k,
        chunk_size=chunk_size,
        normalize=normalize,
        compile=compile,
    )
    return Retrieval(reference, SparseWeights(indices, values, num_entries=m))


def _check_retrieve(
    query: object,
    bank: object,
    query_radius: object,
    bank_radius: object,
    gamma: object,
    k: object,
    chunk_size: object,
    normalize: object,
    compile: object,
) -> float:
    """The checks of :func:`retrieve`; returns ``gamma`` as a float."""
    fn = "retrieve"
    check_tensor(fn, "query", query, min_ndim=2, shape_doc="(..., N, D)")
    check_tensor(fn, "bank", bank, min_ndim=2, shape_doc="(M, D) or (..., M, D)")
    _check_finite_fast(fn, "query", query)
    _check_finite_fast(fn, "bank", bank)
    gamma_value = _check_gamma(fn, gamma)
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
    return gamma_value


def _check_finite_fast(fn: str, name: str, x: torch.Tensor) -> None:
    """:func:`check_finite` behind a one-pass screen: a NaN or ±inf entry makes the sum
    non-finite, so only a non-finite sum (or an overflow of finite entries) needs the full
    element-wise check, which raises with the counts."""
    if value_check(fn) and not bool(torch.isfinite(x.sum(dtype=compute_dtype(x)))):
        check_finite(fn, name, x)


def _broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    padded = (1,) * (len(target) - len(shape)) + tuple(shape)
    return all(s in (1, t) for s, t in zip(padded, target, strict=True))
