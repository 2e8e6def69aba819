"""The shared sort and the one pass over it that yields AUROC, AP, F1max and AUPRO (private).

Scores are split by class into two arrays, negatives and positives, each sorted ascending
in place (no index array for the negatives; the positives carry their region areas, so
they are arg-sorted). One chunked pass over the sorted positives, with two binary searches
of each positive into the sorted negatives, gives every exact threshold metric:

* ``lo = #{neg < s}`` and ``hi = #{neg ≤ s}`` for each positive score ``s``;
* AUROC ``= Σ_pos (lo + hi) / (2·P·N)`` — the trapezoid ROC with tied scores grouped,
  i.e. the Mann–Whitney statistic with ties counted ½;
* at the threshold ``t = s`` of a positive: ``TP = #{pos ≥ s}`` (from the position of the
  first positive equal to ``s``) and ``FP = #{neg ≥ s} = N − lo``. AP ``= (1/P) Σ_pos
  TP/(TP+FP)`` is scikit-learn's ``Σ_n (R_n − R_{n−1}) P_n`` (each distinct threshold
  contributes its precision once per positive it adds to the recall), and F1 is maximal at
  such thresholds (for a fixed TP it falls as FP grows);
* the PRO curve of the MVTec AD reference: each positive pixel weighs ``1/(area of its
  region)/R``; the trapezoid area up to FPR ``limit`` is a weighted Mann–Whitney sum over
  the negatives above the cut plus one interpolated partial segment.

Counts are int64 (Python ints for the sums); ratios are float64. No sum goes through BLAS
(whose rounding depends on the CPU's kernels): the PRO sums are grouped by region area, so
each group's sum is an exact integer and only the per-area terms are rounded, then added
with ``math.fsum`` (exactly rounded). A perfect predictor thus scores exactly 1.0 on every
CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__: list[str] = []

#: Positives processed per step of the pass (bounds the int64 temporaries to ~100 MB).
CHUNK = 1 << 21
_F16_KEYS = 1 << 16


def sort_inplace(a: np.ndarray) -> None:
    """Sort a 1-D float array ascending, in place, without an index array.

    float16 uses a counting sort of order-preserving 16-bit keys (exact, O(n), no
    auxiliary array); wider floats use NumPy's in-place sort.
    """
    if a.dtype != np.float16:
        a.sort()
        return
    keys = a.view(np.uint16)
    counts = np.zeros(_F16_KEYS, dtype=np.int64)
    for start in range(0, keys.size, CHUNK * 8):
        part = keys[start : start + CHUNK * 8]
        # sign bit set: flip all bits; clear: set the sign bit (monotone in the float value)
        part ^= (part >> 15) * np.uint16(0x7FFF) | np.uint16(0x8000)
        counts += np.bincount(part, minlength=_F16_KEYS)
    pos = 0
    for key in np.flatnonzero(counts):
        c = int(counts[key])
        keys[pos : pos + c] = key
        pos += c
    for start in range(0, keys.size, CHUNK * 8):
        part = keys[start : start + CHUNK * 8]
        part ^= np.uint16(0xFFFF) ^ ((part >> 15) * np.uint16(0x7FFF))


def sort_with_areas(pos: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """Sort ``pos`` ascending in place and return ``areas`` in the same order."""
    order = np.argsort(pos, kind="stable")
    pos[:] = pos[order]
    return areas[order]


def _ranks_in(neg: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(#{neg < s}, #{neg ≤ s})`` per entry of ``s``; the second search only where tied."""
    lo = np.searchsorted(neg, s, "left")
    hi = lo.copy()
    tied = neg[np.minimum(lo, neg.size - 1)] == s
    tied &= lo < neg.size
    if tied.any():
        hi[tied] = np.searchsorted(neg, s[tied], "right")
    return lo, hi


@dataclass(frozen=True)
class RankStats:
    """Exact threshold metrics of one sorted split (AUPRO only when areas were given)."""

    auroc: float
    ap: float
    f1max: float
    aupro: float | None


def _negatives_within(limit: float, n_neg: int) -> int:
    """The largest ``k`` in ``[0, N]`` with ``k/N ≤ limit`` (float64, as the reference)."""
    k = min(n_neg, math.floor(limit * n_neg))
    while k < n_neg and (k + 1) / n_neg <= limit:
        k += 1
    while k > 0 and k / n_neg > limit:
        k -= 1
    return k


def rank_stats(
    neg: np.ndarray,
    pos: np.ndarray,
    areas: np.ndarray | None = None,
    num_regions: int = 0,
    *,
    f1_eps: float = 0.0,
    fpr_limit: float = 0.3,
) -> RankStats:
    """AUROC, AP, F1max (and AUPRO with ``areas``) from ascending ``neg`` and ``pos``.

    ``areas[i]`` is the pixel count of the ground-truth region of ``pos[i]`` and
    ``num_regions`` the number of regions ``R``. ``f1_eps`` is added to ``P + R`` in the
    F1 denominator (0: the exact F1; the official code uses 1e-7).
    """
    n_neg, n_pos = int(neg.size), int(pos.size)
    with_pro = areas is not None
    if with_pro:
        k_max = _negatives_within(fpr_limit, n_neg)
        if k_max >= n_neg:  # every negative lies inside the limit
            cut, n_above = -math.inf, n_neg
            n_at_least = n_neg
        else:  # the tie group of the (k_max+1)-th largest negative crosses the limit
            cut = neg[n_neg - 1 - k_max]
            n_above = n_neg - int(np.searchsorted(neg, cut, "right"))
            n_at_least = n_neg - int(np.searchsorted(neg, cut, "left"))
    auroc_num, ap_sum, f1max = 0, 0.0, 0.0
    if with_pro:
        # per distinct area a: Σ 2·(ties_half) over positives above the cut, and the counts
        # above / at least the cut (exact int64); weights 1/a are applied once per area
        area_values, area_index = np.unique(areas, return_inverse=True)
        twice_ties = np.zeros(area_values.size, dtype=np.int64)
        count_above = np.zeros(area_values.size, dtype=np.int64)
        count_at_least = np.zeros(area_values.size, dtype=np.int64)
    for start in range(0, n_pos, CHUNK):
        s = pos[start : start + CHUNK]
        lo, hi = _ranks_in(neg, s)
        auroc_num += int(lo.sum()) + int(hi.sum())
        tp = (n_pos - np.searchsorted(pos, s, "left")).astype(np.float64)
        fp = (n_neg - lo).astype(np.float64)
        precision = tp / (tp + fp)
        ap_sum += float(precision.sum())
        if f1_eps == 0.0:
            f1 = 2.0 * tp / (tp + fp + n_pos)
        else:
            recall = tp / n_pos
            f1 = 2.0 * precision * recall / (precision + recall + f1_eps)
        f1max = max(f1max, float(f1.max()))
        if with_pro:
            idx = area_index[start : start + CHUNK]
            above = s > cut
            ia = idx[above]
            twice = lo[above] + hi[above] - 2 * (n_neg - n_above)
            np.add.at(twice_ties, ia, twice)
            count_above += np.bincount(ia, minlength=area_values.size)
            count_at_least += np.bincount(idx[s >= cut], minlength=area_values.size)
    aupro = None
    if with_pro:
        inv = [float(a) for a in area_values]
        pro_num = math.fsum(int(t) / (2.0 * a) for t, a in zip(twice_ties, inv, strict=True))
        w_above = math.fsum(int(c) / a for c, a in zip(count_above, inv, strict=True))
        w_at_least = math.fsum(int(c) / a for c, a in zip(count_at_least, inv, strict=True))
        area = pro_num / (n_neg * num_regions)
        if n_above < n_neg:  # interpolate the segment that crosses the limit
            x0, x1 = n_above / n_neg, n_at_least / n_neg
            y0, y1 = w_above / num_regions, w_at_least / num_regions
            dx = fpr_limit - x0
            y_cut = y0 + (y1 - y0) * dx / (x1 - x0)
            area += dx * (y0 + y_cut) / 2.0
        aupro = area / fpr_limit
    return RankStats(
        auroc=auroc_num / (2.0 * n_pos * n_neg),
        ap=ap_sum / n_pos,
        f1max=f1max,
        aupro=aupro,
    )
