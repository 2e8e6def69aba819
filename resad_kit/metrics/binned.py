"""Binned approximations of P-AUROC, P-AP and AUPRO, as the official Res²CLIP evaluation.

The official code (hito2448/Res2CLIP, ``utils/metrics.py``) computes its pixel AUROC, AP
and PRO with ``adeval`` 1.1.0 (``EvalAccumulatorCuda``, ``nstrips=200``). These functions
reproduce that computation on the CPU so that numbers can be compared like with like:

* ``lo``, ``hi`` = min and max over all pixels; ``num_bins`` equal-width bins on
  ``[lo, hi]``; a pixel ``x`` goes to bin ``⌊(x − lo)·num_bins / (hi − lo)⌋`` computed in
  float32 (the last bin is closed), as ``torch.histc``; pixels with ``x ≥ hi`` are counted
  once more in an overflow bin (so the maximum is counted twice, as in adeval);
* at each of the ``num_bins + 1`` edges ``e_i`` the positives and negatives in bins
  ``≥ i`` (plus the overflow) give one (FPR, TPR), (recall, precision) and (FPR, PRO)
  point; precision is 1 where nothing is predicted positive;
* AUROC and AP are trapezoid areas over these points (no ``(0, 0)`` / ``(0, 1)``
  end point is added); PRO weighs each positive pixel by ``float32(1/A_r)`` and is
  normalised by the total weight, integrated with the trapezoid rule from the first point
  to FPR ``fpr_limit`` (the crossing segment interpolated linearly), divided by the limit.

Maps of every dtype are binned as float32 (as adeval accumulates float32 maps), so float64
maps give exactly the result of their float32 cast. These are approximations: scores within
one bin are treated as tied. Use the exact
functions (:func:`~resad_kit.metrics.pixel_auroc`, ...) unless you need the official numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from resad_kit.metrics._checks import check_fpr_limit
from resad_kit.metrics._store import PixelStore
from resad_kit.metrics.ranking import pixel_store
from resad_kit.ops._validation import check_positive_int

__all__ = ["binned_aupro", "binned_pixel_ap", "binned_pixel_auroc"]

_CHUNK = 1 << 22


@dataclass(frozen=True)
class BinnedCurves:
    """Points at the ``num_bins + 1`` bin edges, in increasing-FPR order (private)."""

    fpr: np.ndarray
    tpr: np.ndarray
    precision: np.ndarray
    pro: np.ndarray


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1])) / 2.0)


def _histogram(
    values: np.ndarray, lo: np.float32, hi: np.float32, num_bins: int, weights: np.ndarray | None
) -> np.ndarray:
    """Counts (or weight sums) of ``values`` per bin, plus the overflow bin, ``(num_bins + 1,)``."""
    out = np.zeros(num_bins + 1, dtype=np.float64)
    width = hi - lo
    for start in range(0, values.size, _CHUNK):
        x = values[start : start + _CHUNK]
        w = None if weights is None else weights[start : start + _CHUNK]
        t = np.subtract(x, lo, dtype=np.float32)  # ≥ 0: lo is the minimum
        t *= np.float32(num_bins)
        t /= width
        idx = t.astype(np.intp)  # truncation = floor for t ≥ 0
        np.minimum(idx, num_bins - 1, out=idx)
        out[:num_bins] += np.bincount(idx, weights=w, minlength=num_bins)
        over = x >= hi
        out[num_bins] += np.count_nonzero(over) if w is None else float(w[over].sum())
    return out


def binned_curves(store: PixelStore, num_bins: int) -> BinnedCurves:
    """The adeval-style curves of the pixels in ``store`` (unsorted or sorted: order is free)."""
    neg, pos = store.neg, store.pos
    lo = np.float32(min(neg.min(), pos.min()))
    hi = np.float32(max(neg.max(), pos.max()))
    if not lo < hi:
        raise ValueError(f"binned metrics need maps that are not constant; every pixel is {lo}")
    neg_hist = _histogram(neg, lo, hi, num_bins, None)
    pos_hist = _histogram(pos, lo, hi, num_bins, None)
    # adeval stores 1/area as float32 and normalises by the total weight
    weights = None
    if store.regions:
        weights = (1.0 / store.areas.astype(np.float64)).astype(np.float32).astype(np.float64)
    pro_hist = _histogram(pos, lo, hi, num_bins, weights) if weights is not None else pos_hist

    def at_or_above(hist: np.ndarray) -> np.ndarray:
        # entry i: everything in bins ≥ i plus the overflow, for edges i = 0..num_bins;
        # reversed so that the thresholds decrease and the rates increase
        bins_above = np.cumsum(hist[num_bins - 1 :: -1])[::-1]
        return np.append(bins_above, 0.0)[::-1] + hist[num_bins]

    tp, fp, wtp = at_or_above(pos_hist), at_or_above(neg_hist), at_or_above(pro_hist)
    predicted = tp + fp
    precision = np.divide(tp, predicted, out=np.ones_like(tp), where=predicted > 0)
    return BinnedCurves(fpr=fp / fp[-1], tpr=tp / tp[-1], precision=precision, pro=wtp / wtp[-1])


def curve_auroc(c: BinnedCurves) -> float:
    """Trapezoid area under the binned ROC points."""
    return _trapezoid(c.tpr, c.fpr)


def curve_ap(c: BinnedCurves) -> float:
    """Trapezoid area under the binned precision–recall points."""
    return _trapezoid(c.precision, c.tpr)


def curve_aupro(c: BinnedCurves, fpr_limit: float) -> float:
    """Trapezoid area of (FPR, PRO) from the first point to ``fpr_limit``, over the limit."""
    inside = int(np.count_nonzero(c.fpr <= fpr_limit))
    if inside == 0:
        raise ValueError(
            f"binned AUPRO is undefined: even the highest bin edge has FPR "
            f"{c.fpr[0]:.4g} > fpr_limit={fpr_limit} (too many normal pixels tie at the maximum)"
        )
    area = _trapezoid(c.pro[:inside], c.fpr[:inside])
    if inside < c.fpr.size:  # interpolate the segment that crosses the limit
        x0, x1 = c.fpr[inside - 1], c.fpr[inside]
        y0, y1 = c.pro[inside - 1], c.pro[inside]
        t = (fpr_limit - x0) / (x1 - x0)
        area += float((x1 - x0) * (y0 * t + (y1 - y0) * t * t / 2.0))
    return area / fpr_limit


def _curves(fn: str, maps: object, masks: object, num_bins: object, *, pro: bool) -> BinnedCurves:
    bins = check_positive_int(fn, "num_bins", num_bins)
    # always float32, as adeval's accumulator: float64 maps give their float32 cast's result
    store = pixel_store(fn, maps, masks, regions=pro, dtype=np.float32)
    return binned_curves(store, bins)  # type: ignore[arg-type]


def binned_pixel_auroc(maps: torch.Tensor, masks: torch.Tensor, *, num_bins: int = 200) -> float:
    """P-AUROC approximated on ``num_bins`` equal-width score bins (official: 200).

    Args:
        maps: anomaly maps, one per image.
        masks: ground-truth masks, 1 = anomalous pixel.
        num_bins: number of bins between the smallest and the largest pixel score.

    Returns:
        The binned AUROC (close to :func:`~resad_kit.metrics.pixel_auroc`, not equal).

    Raises:
        ValueError: as :func:`~resad_kit.metrics.pixel_auroc`, for constant maps, or a
            non-positive ``num_bins``.

    Shape:
        - maps: ``(B, H, W)``
        - masks: ``(B, H, W)``

    Example:
        >>> import torch
        >>> from resad_kit.metrics import binned_pixel_auroc, pixel_auroc
        >>> _ = torch.manual_seed(0)
        >>> masks = torch.rand(4, 32, 32) < 0.1
        >>> maps = torch.rand(4, 32, 32) + 0.5 * masks
        >>> round(pixel_auroc(maps, masks), 4), round(binned_pixel_auroc(maps, masks), 4)
        (0.8821, 0.8824)
    """
    return curve_auroc(_curves("binned_pixel_auroc", maps, masks, num_bins, pro=False))


def binned_pixel_ap(maps: torch.Tensor, masks: torch.Tensor, *, num_bins: int = 200) -> float:
    """P-AP approximated on ``num_bins`` score bins: trapezoid area under the binned PR curve.

    Args:
        maps: anomaly maps, one per image.
        masks: ground-truth masks, 1 = anomalous pixel.
        num_bins: number of bins between the smallest and the largest pixel score.

    Returns:
        The binned AP (the trapezoid rule, unlike the step-wise exact AP).

    Raises:
        ValueError: as :func:`binned_pixel_auroc`.

    Shape:
        - maps: ``(B, H, W)``
        - masks: ``(B, H, W)``

    Example:
        >>> import torch
        >>> from resad_kit.metrics import binned_pixel_ap, pixel_ap
        >>> maps = torch.tensor([[[0.0, 1.0], [0.5, 0.5]]])
        >>> masks = torch.tensor([[[0, 1], [0, 0]]])
        >>> pixel_ap(maps, masks)  # the anomalous pixel scores highest
        1.0
        >>> binned_pixel_ap(maps, masks, num_bins=2)  # the maximum counts twice; no (0, 1) point
        0.375
    """
    return curve_ap(_curves("binned_pixel_ap", maps, masks, num_bins, pro=False))


def binned_aupro(
    maps: torch.Tensor, masks: torch.Tensor, *, num_bins: int = 200, fpr_limit: float = 0.3
) -> float:
    """AUPRO approximated on ``num_bins`` score bins, as adeval (the official Res²CLIP PRO).

    Args:
        maps: anomaly maps, one per image.
        masks: ground-truth masks, 1 = anomalous pixel (8-connected regions per image).
        num_bins: number of bins between the smallest and the largest pixel score.
        fpr_limit: upper integration limit on the false-positive rate, in ``(0, 1]``.

    Returns:
        The binned AUPRO (close to :func:`~resad_kit.metrics.aupro`, not equal).

    Raises:
        ValueError: as :func:`binned_pixel_auroc`, for a bad ``fpr_limit``, or when no bin
            edge has an FPR within the limit.

    Shape:
        - maps: ``(B, H, W)``
        - masks: ``(B, H, W)``

    Example:
        >>> import torch
        >>> from resad_kit.metrics import aupro, binned_aupro
        >>> _ = torch.manual_seed(0)
        >>> masks = torch.zeros(4, 32, 32, dtype=torch.bool)
        >>> masks[:, 8:16, 8:20] = True
        >>> maps = torch.rand(4, 32, 32) + 0.5 * masks
        >>> round(aupro(maps, masks), 4), round(binned_aupro(maps, masks), 4)
        (0.6006, 0.6015)
    """
    limit = check_fpr_limit("binned_aupro", fpr_limit)
    return curve_aupro(_curves("binned_aupro", maps, masks, num_bins, pro=True), limit)
