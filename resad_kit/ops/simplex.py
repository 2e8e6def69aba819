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
  threshold of a subset of a row's entries (here maxima of blocks of entries) is a lower bound
  of the row's τ, so only the entries above it can be in the support, and only the blocks
  whose maximum reaches it need to be opened. The few tens of entries left (out of thousands
  in retrieval) are sorted; a row whose support takes them all gets a wider pass. Shorter rows
  (or rows the screen cannot narrow down) take the top-``k`` path from ``AUTO_K``.

The prefix values are the same floats as those of the full sort and the threshold is computed
from them by the same operations, so all three give bit-identical results (tested with
``torch.equal``); with supports of tens out of thousands, the top-k and screened paths are an
order of magnitude faster (docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from einops import rearrange

from resad_kit.ops._validation import (
    check_dim,
    check_positive_int,
    check_tensor,
    compute_dtype,
)

__all__ = ["sparsemax", "sparsemax_threshold"]

SparsemaxK = int | Literal["auto"] | None
"""How the sorted prefix is found: ``None`` full sort, an int start width, ``"auto"``."""

AUTO_K = 64
"""Start width of the top-k path of ``k="auto"`` (rows shorter than ``SCREEN_MIN_COLUMNS``).
Measured (docs/benchmarks.md, "first pass") on retrieval similarities with N = 1,369: close
to the fastest start at K = 4 shots and several times faster than narrower starts at K = 16,
whose supports approach 64."""

SCREEN_MIN_COLUMNS = 2048
"""``k="auto"`` screens rows of at least this many entries (:func:`_screened_top`; faster than
the top-k path from K = 2 shots of N = 1,369 patches on, docs/benchmarks.md)."""

_SCREEN_BLOCK = 8  # entries per block maximum (each level of block maxima is 8× narrower)
_SCREEN_COARSE = 512  # levels of block maxima are added while the last is at least this wide
_SCREEN_MAX_SHARE = 0.5  # give up when the kept blocks hold more than this share of a level
_SCREEN_STEPS = 3  # Michelot steps of the coarse bound (every step is a valid bound)
_SCREEN_FINE_STEPS = 1  # and of the bound on the gathered entries


def check_k(fn: str, k: object) -> SparsemaxK:
    """Return ``k`` if it is ``None``, ``"auto"`` or a positive int; else raise ``ValueError``."""
    if isinstance(k, str):
        if k != "auto":
            raise ValueError(f'{fn}: `k` must be None, "auto" or a positive int; got {k!r}')
        return k
    return check_positive_int(fn, "k", k, optional=True)


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


class SortedSupport(NamedTuple):
    """The sorted prefix of every row that holds its sparsemax support (private helper type).

    Attributes:
        values: ``(R, W)`` the ``W`` largest entries of each row, descending, ``W`` the largest
            support of all rows (entries past a row's own support are unspecified).
        indices: ``(R, W)`` int64 column of each value.
        tau: ``(R, 1)`` the threshold relative to the row maximum (``z − max(z)`` coordinates:
            the prefix is shifted by its first value, so every ``k`` computes τ from the same
            floats as the full sort of ``z − max(z)``).
        support: ``(R, 1)`` int64 support size.
    """

    values: torch.Tensor
    indices: torch.Tensor
    tau: torch.Tensor
    support: torch.Tensor


def _top(z: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    if width >= z.shape[-1]:
        return z.sort(dim=-1, descending=True)
    return z.topk(width, dim=-1)


def _prefix_threshold(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """τ (relative to the row max, the first value) and support of descending prefixes."""
    return _threshold_from_sorted(values - values[:, :1])


def _block_stride(width: int) -> int:
    """Stride (and count) of the blocks of a ``width``-wide level: ``⌈width / 8⌉``."""
    return -(-width // _SCREEN_BLOCK)


def _strided_max(x: torch.Tensor) -> torch.Tensor:
    """Block maxima ``(R, W) → (R, c)``, ``c = ⌈W / 8⌉``: entry ``j`` is the maximum of the
    columns ``j + c·i < W``, ``i = 0, …, 7``. Strided blocks make the reduction an element-wise
    maximum of contiguous slices."""
    width = x.shape[-1]
    c = _block_stride(width)
    full = (width - 1) // c  # slices of c columns; the last one, [full·c, W), may be shorter
    out = x[:, : full * c].unflatten(-1, (full, c)).amax(dim=1)
    last = x[:, full * c :]
    head = out[:, : last.shape[-1]]
    torch.maximum(head, last, out=head)
    return out


def _threshold_lower_bound(
    y: torch.Tensor, start: torch.Tensor | None, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower bounds of the sparsemax threshold of every row of ``y`` ``(R, W)`` (``-inf``
    entries allowed): ``(bound, entry)``, both ``(R, 1)``.

    Michelot's fixed point ``τ ← (Σ_{y>τ} y − 1)/|{y > τ}|``, started at any lower bound of
    ``τ(y)`` (``start``, else ``max(y) − 1``), rises monotonically to ``τ(y)`` without passing
    it, so every step is a lower bound: ``bound`` is the last step, ``entry`` the largest entry
    of ``y`` at or below it (``bound`` where there is none). Rows without a finite entry get
    ``-inf``.
    """
    top = y.amax(dim=-1, keepdim=True)
    shifted = y - top
    tau = torch.full_like(top, -1.0) if start is None else (start - top).clamp_min(-1.0)
    for _ in range(steps):
        excess = (shifted - tau).clamp_min_(0)
        total = excess.sum(dim=-1, keepdim=True)
        tau = tau + (total - 1) / excess.sign_().sum(dim=-1, keepdim=True)
    finite = torch.isfinite(top)
    bound = torch.where(finite, top + tau, -torch.inf)
    below = y.masked_fill(shifted > tau, -torch.inf).amax(dim=-1, keepdim=True)
    return bound, torch.where(finite & ~torch.isneginf(below), below, bound)


def _compact(keep: torch.Tensor, payload: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``payload`` entries where ``keep`` holds, moved to the front of their row in order.

    Returns ``(R, Q)`` (``Q`` the largest count; the rest of every row is 0) and the counts
    ``(R, 1)``. A running count gives every kept entry its slot, and one scatter moves it
    there (the entries not kept all go to a spare column, dropped), which is cheaper than
    ``nonzero`` on CPU.
    """
    slots = keep.cumsum(dim=-1)
    counts = slots[:, -1:]
    width = int(counts.max())
    target = torch.where(keep, slots - 1, width)
    out = payload.new_zeros(keep.shape[0], width + 1).scatter_(-1, target, payload)
    return out[:, :width], counts


def _children(parents: torch.Tensor, counts: torch.Tensor, width: int):
    """Columns ``(R, 8·P)`` of a ``width``-wide level under the blocks ``parents`` ``(R, P)``
    (the first ``counts`` of every row real), and which of them are real: the columns
    ``j + c·i`` of every block ``j``, offset-major, so ascending where the parents are."""
    c = _block_stride(width)
    offsets = c * torch.arange(_SCREEN_BLOCK, device=parents.device)[:, None]
    columns = parents[:, None, :] + offsets  # (R, 8, P)
    real = (torch.arange(parents.shape[-1], device=parents.device) < counts)[:, None, :]
    real = real & (columns < width)
    return columns.flatten(1).clamp_max_(width - 1), real.flatten(1)


def _screened_top(
    z: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Every entry at or above a lower bound of τ, sorted descending (first pass of ``"auto"``).

    The sparsemax threshold only grows when entries are added (τ = max over ``m`` of
    ``(Σ_{j≤m} z_(j) − 1)/m``), so the threshold of any subset of a row's entries is a lower
    bound of the row's τ, and every entry of the support lies above it. The subsets used are
    block maxima (levels of :func:`_strided_max`, each 8× narrower than the one below): an
    entry ``b`` at or below the threshold of the coarsest level keeps only the blocks whose
    maximum reaches it, level by level down to the entries, so every entry ``≥ b`` is gathered.
    There a tighter bound (``≥ b``, from the entries gathered) selects the candidates: exactly
    the entries of the row at or above it, sorted stably (ties stay in column order), which is
    a prefix of the full sort whatever the rounding of the bounds. Being entries at or below
    τ, the bounds keep at least one entry outside the support; a row whose support takes all
    candidates nevertheless is resolved by the widening rounds of :func:`sorted_support`.

    Returns:
        ``(values, indices, counts)``: ``(R, Q)`` descending values and their columns, padded
        with ``-inf`` (column 0) past each row's ``counts`` ``(R, 1)``; or ``None`` when the
        bound leaves too many entries for the screen to pay off.
    """
    levels = [z]
    while levels[-1].shape[-1] >= _SCREEN_COARSE:
        levels.append(_strided_max(levels[-1]))
    values = levels[-1]
    columns = torch.arange(values.shape[-1], device=z.device).expand(values.shape[0], -1)
    step, entry = _threshold_lower_bound(values, None, _SCREEN_STEPS)
    for level in range(len(levels) - 1, 0, -1):
        parents, counts = _compact(values >= entry, columns)
        width = levels[level - 1].shape[-1]
        if parents.shape[-1] * _SCREEN_BLOCK > _SCREEN_MAX_SHARE * width:  # no gain
            return None
        columns, real = _children(parents, counts, width)
        values = levels[level - 1].gather(-1, columns).masked_fill_(~real, -torch.inf)
    # every entry at or above the coarse `entry` has been gathered: a tighter bound is safe
    _, tighter = _threshold_lower_bound(values, step, _SCREEN_FINE_STEPS)
    columns, counts = _compact(values >= torch.maximum(tighter, entry), columns)
    if int(counts.min()) == 0:  # a bound rounded up to a row's maximum (huge entries)
        return None
    filled = torch.arange(columns.shape[-1], device=z.device) < counts
    candidates = z.gather(-1, columns).masked_fill_(~filled, -torch.inf)
    values, order = candidates.sort(dim=-1, descending=True, stable=True)
    return values, columns.gather(-1, order), counts


def _first_pass(
    z: torch.Tensor, k: SparsemaxK
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | int]:
    """The first sorted prefix of every row: ``(values, indices, length)``, where ``length``
    (an int, or ``(R, 1)`` per row) counts the entries of the prefix that are real."""
    m = z.shape[-1]
    if k == "auto" and m >= SCREEN_MIN_COLUMNS:
        screened = _screened_top(z)
        if screened is not None:
            return screened
    width = m if k is None else min(m, AUTO_K if k == "auto" else int(k))
    return *_top(z, width), width


def sorted_support(z: torch.Tensor, k: SparsemaxK) -> SortedSupport:
    """Exact sparsemax threshold, support and sorted support entries of every row of ``z``.

    Args:
        z: ``(R, M)`` rows of finite-or-``-inf`` entries in the compute dtype, each with a
            finite entry (not necessarily shifted by the row maximum).
        k: ``None`` (full sort), a start width, or ``"auto"`` (the screen, or ``AUTO_K``); see
            the module doc.

    Returns:
        :class:`SortedSupport`. Its values are the same floats, in the same order, as a prefix of
        the full descending sort, whatever ``k``, so ``tau`` and ``support`` are bit-identical
        for every ``k``. Only the order of tied entries (and so ``indices``) may differ.
    """
    m = z.shape[-1]
    values, indices, length = _first_pass(z, k)
    width = values.shape[-1]
    tau, support = _prefix_threshold(values)
    if isinstance(length, torch.Tensor):  # screened: make the padding a copy of a real entry
        last = length - 1
        padding = torch.arange(width, device=z.device) >= length
        values = torch.where(padding, values.gather(-1, last), values)
        indices = torch.where(padding, indices.gather(-1, last), indices)
    rounds = [(None, values, indices)]
    unresolved = (support == length) & (length < m)
    todo = unresolved.squeeze(-1).nonzero().squeeze(-1)
    while todo.numel() > 0:
        rows = z if todo.numel() == z.shape[0] else z[todo]
        # τ of the short prefix is a lower bound of the true τ (τ = max_j (Σ_{i≤j} z_(i) − 1)/j),
        # so the support lies within the entries above it: take them all in one step.
        # (Compared in unshifted coordinates: the count only sizes the next prefix, the
        # support test below decides exactness.)
        above = (rows > values[todo, :1] + tau[todo]).sum(dim=-1).max()
        width = min(m, max(2 * width, int(above) + 1))
        sub_values, sub_indices = _top(rows, width)
        sub_tau, sub_support = _prefix_threshold(sub_values)
        tau[todo], support[todo] = sub_tau, sub_support
        rounds.append((todo, sub_values, sub_indices))
        unresolved = (sub_support.squeeze(-1) == width) & (width < m)
        todo = todo[unresolved]

    width = int(support.max())
    if len(rounds) == 1:
        return SortedSupport(values[:, :width], indices[:, :width], tau, support)
    out_values = _fit(values, width)
    out_indices = _fit(indices, width)
    for rows, sub_values, sub_indices in rounds[1:]:
        out_values[rows] = _fit(sub_values, width)
        out_indices[rows] = _fit(sub_indices, width)
    return SortedSupport(out_values, out_indices, tau, support)


def _fit(x: torch.Tensor, width: int) -> torch.Tensor:
    """``x`` cut or right-padded (with its last column) to ``width`` columns."""
    if x.shape[-1] >= width:
        return x[:, :width].clone()
    return torch.cat([x, x[:, -1:].expand(-1, width - x.shape[-1])], dim=-1)


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
    rows = rearrange(x.movedim(dim, -1), "... m -> (...) m").to(compute_dtype(x))
    row_max = rows.amax(dim=-1, keepdim=True)
    # amax propagates NaN and +inf and is -inf only for all--inf rows: one cheap check.
    if not bool(torch.isfinite(row_max).all()):
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
    def forward(ctx, x: torch.Tensor, dim: int, k: SparsemaxK) -> torch.Tensor:  # type: ignore[override]
        rows, row_max = _validated_rows("sparsemax", x, dim, k)
        z = rows - row_max  # shift first: x − (max + τ) would lose τ's low bits for large x
        tau = sorted_support(z, k).tau
        # z > τ ⇔ z − τ > 0 in IEEE arithmetic, so the support is p > 0 (kept for backward).
        p = _restore(z.sub_(tau).clamp_min_(0), x, dim)
        ctx.save_for_backward(p)
        ctx.dim = dim
        return p.to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        (p,) = ctx.saved_tensors
        support = p > 0
        g = grad.to(compute_dtype(grad)) * support
        size = support.sum(dim=ctx.dim, keepdim=True)
        mean = g.sum(dim=ctx.dim, keepdim=True) / size
        return ((g - mean) * support).to(grad.dtype), None, None


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
            only the slices whose support does not fit; ``"auto"`` for the fastest measured:
            slices of at least 2,048 entries are screened by block maxima first (only the
            entries above a lower bound of τ are sorted), shorter ones take the top-k
            algorithm from ``AUTO_K`` = 64 (see the module doc). All give bit-identical
            results; the top-k and screened ones are much faster when supports are small (tens
            out of thousands, as in retrieval).

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
    """
    check_tensor("sparsemax", "x", x, min_ndim=1, nonempty=False)
    dim = check_dim("sparsemax", x, dim)
    return _Sparsemax.apply(x, dim, k)


def sparsemax_threshold(x: torch.Tensor, dim: int = -1, k: SparsemaxK = None) -> torch.Tensor:
    """The threshold τ with ``sparsemax(x, dim) = clamp(x − τ, min=0)`` (App. C, step 3).

    ``τ(z) = (Σ_{j≤k(z)} z_(j) − 1) / k(z)`` with ``z`` sorted descending and support size
    ``k(z) = max{m : 1 + m·z_(m) > Σ_{j≤m} z_(j)}``. Not differentiable (use :func:`sparsemax`).

    Args:
        x: input as for :func:`sparsemax`.
        dim: dimension to project along.
        k: ``None`` (full sort), an int (exact top-k) or ``"auto"``, as for :func:`sparsemax`.

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
        rows, row_max = _validated_rows("sparsemax_threshold", x, dim, k)
        return _restore(sorted_support(rows, k).tau + row_max, x, dim)
