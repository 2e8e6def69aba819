"""The exact sorted support of sparsemax rows (private; the engine of :mod:`resad_kit.ops.simplex`).

:func:`sorted_support` finds, for every row, the sorted prefix that holds its sparsemax
support by one of the exact ways described in :mod:`resad_kit.ops.simplex` (full sort,
top-k with widening, the screen by block maxima, or the sync-free full stable sort
``"dense"``), and :func:`support_threshold` is the one
place where the threshold ``τ = (Σ_{j≤k} z_(j) − 1)/k`` is formed (App. C, step 3).
No input checks here: callers validate.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

from resad_kit.ops._validation import check_positive_int

__all__: list[str] = []

SparsemaxK = int | Literal["auto", "dense"] | None
"""How the sorted prefix is found: ``None`` full sort, an int start width, ``"auto"``, or
``"dense"`` (the full stable sort, every row kept ``M`` wide: no device-to-host sync)."""

AUTO_K = 64
"""Start width of the top-k path of ``k="auto"`` (rows shorter than ``SCREEN_MIN_COLUMNS``, and
rows the screen cannot narrow): rows whose support does not fit are widened, so the result does
not depend on it; docs/benchmarks.md ("first pass") times it against a wider start."""

SCREEN_MIN_COLUMNS = 2048
"""``k="auto"`` screens rows of at least this many entries (:func:`_screened_top`); shorter
rows take the top-``AUTO_K`` path."""

_SCREEN_BLOCK = 8  # entries per block maximum (each level of block maxima is 8× narrower)
_SCREEN_COARSE = 512  # coarser levels of maxima (they start the bound) while this wide
_SCREEN_MAX_SHARE = 0.5  # give up when more than this share of a row reaches the bound
_SCREEN_STEPS = 3  # Michelot steps of the coarse bound (every step is a valid bound)
_SCREEN_FINE_STEPS = 1  # and of the bound on the gathered entries
_BELOW_SCALE = 2.0**100  # see _largest_at_or_below


def check_k(fn: str, k: object) -> SparsemaxK:
    """Return ``k`` if it is ``None``, ``"auto"``, ``"dense"`` or a positive int; else raise
    ``ValueError``."""
    if isinstance(k, str):
        if k not in ("auto", "dense"):
            raise ValueError(
                f'{fn}: `k` must be None, "auto", "dense" or a positive int; got {k!r}'
            )
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
    return support_threshold(cumsum, support), support


def support_threshold(cumsum: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """The sparsemax threshold ``τ = (Σ_{j≤k} z_(j) − 1)/k`` of a known support size ``k``.

    The one place where τ is formed (App. C, step 3): used by :func:`sparsemax`,
    :func:`sparsemax_threshold` and the differentiable weights of
    :func:`resad_kit.ops.retrieve`.

    Args:
        cumsum: ``(R, W)`` running sums of rows sorted in descending order.
        support: ``(R, 1)`` int64 support sizes ``k`` in ``[1, W]``.

    Returns:
        ``(R, 1)`` thresholds in ``cumsum``'s dtype (differentiable with respect to it).
    """
    return (cumsum.gather(-1, support - 1) - 1) / support.to(cumsum.dtype)


class SortedSupport(NamedTuple):
    """The sorted prefix of every row that holds its sparsemax support (private helper type).

    Attributes:
        values: ``(R, W)`` the ``W`` largest entries of each row, descending, ``W`` the largest
            support of all rows (``W = M`` for ``k="dense"``; entries past a row's own support
            are unspecified, except with ``"dense"``: the rest of the sorted row).
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
    of ``y`` at or below it (:func:`_largest_at_or_below`). Rows without a finite entry get
    ``-inf``.
    """
    top = y.amax(dim=-1, keepdim=True)
    shifted = y - top
    tau = torch.full_like(top, -1.0) if start is None else (start - top).clamp_min(-1.0)
    # a start that rounds up to the maximum (huge entries) leaves no entry above it: use −1
    tau = torch.where(tau < 0, tau, -1.0)
    excess = torch.empty_like(shifted)  # one buffer for every step (fresh large buffers fault)
    for _ in range(steps):
        torch.sub(shifted, tau, out=excess).clamp_min_(0)
        total = excess.sum(dim=-1, keepdim=True)
        tau = tau + (total - 1) / excess.sign_().sum(dim=-1, keepdim=True)
    finite = torch.isfinite(top)
    bound = torch.where(finite, top + tau, -torch.inf)
    below = _largest_at_or_below(y, bound, out=excess)
    return bound, torch.where(finite & (below > -torch.inf), below, bound)


def _largest_at_or_below(
    y: torch.Tensor, bound: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``max{y_j : y_j ≤ bound}`` of every row ``(R, 1)``, at most ``bound`` (``-inf`` or NaN
    where no entry qualifies; callers replace those).

    Written with arithmetic rather than a boolean mask (masked fills are several times slower
    on CPU): an entry above the bound becomes ``(bound − y)·2¹⁰⁰ + bound``, far below every
    entry of the row, and an entry at or below it stays itself exactly. Where an entry lies
    above the bound by less than about ``2⁻¹⁰⁰`` times the row's spread, the result may be a
    value between the entries (still at most ``bound``): a valid but looser cut. ``out``: a
    scratch buffer shaped like ``y``.
    """
    lifted = torch.sub(bound, y, out=out).mul_(_BELOW_SCALE).add_(bound)
    return torch.minimum(y, lifted, out=lifted).amax(dim=-1, keepdim=True)


def _compact(
    keep: torch.Tensor, values: torch.Tensor, columns: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The entries of ``values`` ``(R, W)`` where ``keep`` holds, moved to the front of their row
    in order: :func:`_pack` of them, their ``columns`` (the entries of ``columns`` if given,
    else the column numbers)."""
    rows, kept = keep.nonzero(as_tuple=True)
    flat = rows * keep.shape[1] + kept
    picked = values.reshape(-1).index_select(0, flat)
    where = kept if columns is None else columns.reshape(-1).index_select(0, flat)
    return _pack(rows, picked, where, keep.shape[0])


def _pack(
    rows: torch.Tensor, values: torch.Tensor, columns: torch.Tensor, n_rows: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Entries listed row by row (``rows`` ascending, ``(P,)`` each) as ``(values, columns,
    counts)``: ``(R, Q)`` values (``-inf`` past each row's count), ``(R, Q)`` columns (0
    there), ``Q`` the largest count, and the counts ``(R, 1)``. Each entry goes to the slot of
    its rank within its row, by flat index copies (cheaper on CPU than indexing by rows and
    columns, or than a running count over whole rows)."""
    counts = torch.bincount(rows, minlength=n_rows)
    width = int(counts.max())
    starts = counts.cumsum(0) - counts
    slots = rows * width + torch.arange(rows.shape[0], device=rows.device)
    slots -= starts.index_select(0, rows)
    out_values = values.new_full((n_rows * width,), -torch.inf).index_copy_(0, slots, values)
    out_columns = columns.new_zeros(n_rows * width).index_copy_(0, slots, columns)
    return out_values.view(n_rows, width), out_columns.view(n_rows, width), counts[:, None]


def _screened_top(
    z: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Every entry at or above a lower bound of τ, sorted descending (first pass of ``"auto"``).

    The sparsemax threshold only grows when entries are added (τ = max over ``m`` of
    ``(Σ_{j≤m} z_(j) − 1)/m``), so the threshold of any subset of a row's entries is a lower
    bound of the row's τ, and every entry of the support lies above it. The subsets used are
    block maxima (levels of :func:`_strided_max`, each 8× narrower than the one below; each is
    a subset of the next finer one, so the bound of a coarse level starts the finer one's):
    an entry ``b`` at or below the bound of the finest level of maxima selects the entries
    ``≥ b`` of the row (one comparison over the row). A tighter bound from those
    (``≥ b``) leaves the candidates: exactly the entries of the row at or above it, sorted
    stably (ties stay in column order), which is a prefix of the full sort whatever the
    rounding of the bounds. Being entries at or below τ, the bounds keep at least one entry
    outside the support; a row whose support takes all candidates nevertheless is resolved by
    the widening rounds of :func:`sorted_support`.

    Returns:
        ``(values, indices, counts)``: ``(R, Q)`` descending values and their columns, padded
        with ``-inf`` (column 0) past each row's ``counts`` ``(R, 1)``; or ``None`` when the
        bound leaves too many entries for the screen to pay off.
    """
    step, entry = _maxima_bound(_block_maxima(z))
    values, columns, counts = _compact(z >= entry, z)
    if not 0 < values.shape[-1] <= _SCREEN_MAX_SHARE * z.shape[-1]:  # no gain (or no bound)
        return None
    values, columns, counts = _tighten(values, columns, step, entry)
    if int(counts.min()) == 0:  # a bound rounded up to a row's maximum (huge entries)
        return None
    values, order = values.sort(dim=-1, descending=True, stable=True)
    return values, columns.gather(-1, order), counts


def _block_maxima(z: torch.Tensor) -> list[torch.Tensor]:
    """``[z, maxima of z, maxima of those, …]`` (:func:`_strided_max`), while the last level
    is at least ``_SCREEN_COARSE`` wide."""
    levels = [z]
    while levels[-1].shape[-1] >= _SCREEN_COARSE:
        levels.append(_strided_max(levels[-1]))
    return levels


def _maxima_bound(levels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(bound, entry)`` of :func:`_threshold_lower_bound` on the finest level of maxima
    (on ``z`` itself if there is none), each coarser level's bound starting the next: a
    coarse level is a subset of the finer one, so its bound is a valid start."""
    step, entry = None, None
    for level in reversed(levels[1:] or levels):
        step, entry = _threshold_lower_bound(level, step, _SCREEN_STEPS)
    return step, entry


def _tighten(
    values: torch.Tensor, columns: torch.Tensor, step: torch.Tensor, entry: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The entries of ``values`` ``(R, Q)`` (every entry of the row ``≥ entry``, and
    ``-inf``) at or above a tighter bound started at ``step``: :func:`_pack` of them."""
    _, tighter = _threshold_lower_bound(values, step, _SCREEN_FINE_STEPS)
    return _compact(values >= torch.maximum(tighter, entry), values, columns)


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
        k: ``None`` (full sort), a start width, ``"auto"`` (the screen, or ``AUTO_K``), or
            ``"dense"``: the full *stable* sort (ties in column order), returned ``M`` wide
            whatever the supports, with no data-dependent width, so no device-to-host sync
            (``nonzero``, ``int(tensor)``); see the module doc.

    Returns:
        :class:`SortedSupport`. Its values are the same floats, in the same order, as a prefix of
        the full descending sort, whatever ``k``, so ``tau`` and ``support`` are bit-identical
        for every ``k``. Only the order of tied entries (and so ``indices``) may differ; with
        ``"dense"`` the values and indices are the whole sorted row (``W = M``).
    """
    m = z.shape[-1]
    if k == "dense":  # shapes only: every width is M
        values, indices = z.sort(dim=-1, descending=True, stable=True)
        return SortedSupport(values, indices, *_prefix_threshold(values))
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
