"""Where ``retrieve``'s time goes: its stages timed one by one on the same blocks.

:func:`stage_times` runs the stages of :func:`resad_kit.ops.retrieve` (default ``k="auto"``,
one similarity block per layer, as ``retrieve`` chunks a 518 px image at K = 4) separately,
with the library's own private kernels, and returns the median time of each over ``rounds``:

* ``gemm``: the similarity product alone (what every exact retrieval pays: the floor);
* ``penalty``: the similarity block with the radial penalty, minus ``gemm``;
* ``screen``: the first pass of the sorted support (block maxima, bounds, gathering; or the
  top-64 start where the screen gives up), minus the sort of its candidates;
* ``sort``: the sort of the first pass's candidates (a ``(R, Q)`` sort, ``Q`` its width);
* ``widen``: the rest of ``sorted_support``: thresholds and the widening rounds of rows whose
  support fills the first prefix;
* ``weights``: the sparsemax weights on the support (gather, cumulative sum, threshold);
* ``gather_sum``: Eq. 34's gather-and-sum over the support's entries (``F.embedding_bag``).

Where the screen paid off, its parts are timed too (``SCREEN_PARTS``, a breakdown of
``screen``, not added to the sum): ``screen_maxima`` (the levels of block maxima, a pass over
the block), ``screen_bound`` (the threshold bounds on those levels), ``screen_select`` (the
comparison of the whole block with the bound and the compaction of the entries kept) and
``screen_tighten`` (the tighter bound on those and the second compaction).

It also reports whether the screen paid off (``screened``: the share of layers where it did)
and the widths of the first pass (``first_width``) and of the support (``support_width``).
The stages are timed separately, so their sum is close to, not equal to, ``retrieve``'s time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

import resad_kit.ops._retrieval_core as core
import resad_kit.ops._sorted_support as support

__all__ = ["SCREEN_PARTS", "STAGES", "stage_times"]

STAGES = ("gemm", "penalty", "screen", "sort", "widen", "weights", "gather_sum")
SCREEN_PARTS = ("screen_maxima", "screen_bound", "screen_select", "screen_tighten")


def _screen_parts(z: torch.Tensor, rounds: int) -> dict[str, float]:
    """The parts of :func:`resad_kit.ops._sorted_support._screened_top`, timed one by one."""

    t_maxima, levels = _time(lambda: support._block_maxima(z), rounds)
    t_bound, (step, entry) = _time(lambda: support._maxima_bound(levels), rounds)
    t_select, (values, columns, _) = _time(lambda: support._compact(z >= entry, z), rounds)
    t_tighten, _ = _time(lambda: support._tighten(values, columns, step, entry), rounds)
    return {
        "screen_maxima": t_maxima,
        "screen_bound": t_bound,
        "screen_select": t_select,
        "screen_tighten": t_tighten,
    }


def _time(fn: Callable[[], Any], rounds: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


@torch.no_grad()
def stage_times(
    queries: torch.Tensor,
    banks: torch.Tensor,
    query_radius: torch.Tensor,
    bank_radius: torch.Tensor,
    gamma: float,
    rounds: int = 3,
) -> dict[str, float]:
    """Median seconds of every stage, summed over the ``L`` layers (CPU).

    Args:
        queries: ``(L, 1, N, D)`` ℓ2-normalised query patches.
        banks: ``(L, 1, M, D)`` ℓ2-normalised banks.
        query_radius: ``(N,)``; bank_radius: ``(M,)``.
        gamma: the radial penalty γ.
        rounds: timed calls per stage.
    """
    n = queries.shape[-2]
    penalty = (gamma * query_radius, core._period(gamma * bank_radius, n))
    out = dict.fromkeys(STAGES + SCREEN_PARTS, 0.0)
    screened, first_width, support_width = 0, 0, 0
    for query, bank in zip(queries[:, 0], banks[:, 0], strict=True):
        rows, one_bank = query, bank[None]
        gemm, _ = _time(lambda: rows @ one_bank[0].T, rounds)  # noqa: B023
        block, sim = _time(
            lambda: core._similarity_block(rows, one_bank, penalty, 0, n, False, {}),  # noqa: B023
            rounds,
        )
        first, (values, _, length) = _time(lambda: support._first_pass(sim, "auto"), rounds)  # noqa: B023
        sort, _ = _time(lambda: values.sort(dim=-1, descending=True, stable=True), rounds)  # noqa: B023
        total, top = _time(lambda: support.sorted_support(sim, "auto"), rounds)  # noqa: B023
        weights, (idx, w) = _time(
            lambda: core._support_weights(sim, top.indices, top.support),  # noqa: B023
            rounds,
        )
        gather, _ = _time(
            lambda: core._gather_sum(idx, w, top.support, one_bank[0]),  # noqa: B023
            rounds,
        )
        is_screened = isinstance(length, torch.Tensor)
        if is_screened:
            for part, seconds in _screen_parts(sim, rounds).items():
                out[part] += seconds
        out["gemm"] += gemm
        out["penalty"] += block - gemm
        out["screen"] += first - (sort if is_screened else 0.0)
        out["sort"] += sort if is_screened else 0.0
        out["widen"] += total - first
        out["weights"] += weights
        out["gather_sum"] += gather
        screened += is_screened
        first_width = max(first_width, values.shape[-1])
        support_width = max(support_width, top.values.shape[-1])
    layers = queries.shape[0]
    return {
        **{f"stage_{k}_s": v for k, v in out.items()},
        "screened": screened / layers,
        "first_width": first_width,
        "support_width": support_width,
    }
