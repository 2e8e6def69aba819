"""Binned P-AUROC / P-AP / AUPRO: equal to a literal re-statement of adeval's computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from skimage.measure import label

from resad_kit.metrics import (
    aupro,
    binned_aupro,
    binned_pixel_ap,
    binned_pixel_auroc,
    pixel_ap,
    pixel_auroc,
)

trapezoid = getattr(np, "trapezoid", None) or np.trapz  # noqa: NPY201 (NumPy < 2)


def adeval_reference(maps: np.ndarray, masks: np.ndarray, bins: int, limit: float = 0.3):
    """adeval 1.1.0 ``EvalAccumulatorCuda`` with ``nstrips=200`` (as hito2448/Res2CLIP
    `utils/metrics.py` calls it), step by step.

    Per image: pro weights float32(1/area) of 8-connected regions (1 for normal pixels);
    for each distinct weight, ``torch.histc`` of the positives and negatives with an
    underflow (< min) and an overflow (≥ max) count; curves from cumulative sums at the
    ``bins + 1`` edges; ``np.trapezoid`` on the reversed arrays; AUPRO as the area below
    the limit plus the interpolated part of the crossing segment (obtained by subtraction).
    """
    x = torch.from_numpy(maps.astype(np.float32))
    lo, hi = float(x.min()), float(x.max())

    def hist(v: torch.Tensor) -> torch.Tensor:
        stat = torch.zeros(bins + 2, dtype=torch.float64)
        stat[1:-1] = torch.histc(v, bins=bins, min=lo, max=hi).double()
        stat[0] = (v < lo).sum()
        stat[-1] = (v >= hi).sum()
        return stat

    pos, neg, wpos = (torch.zeros(bins + 2, dtype=torch.float64) for _ in range(3))
    for b in range(maps.shape[0]):
        lab = label(masks[b], connectivity=2)
        weight = np.ones(masks[b].shape, np.float32)
        for r in range(1, lab.max() + 1):
            weight[lab == r] = np.float32(1.0) / np.float32((lab == r).sum())
        for wt in np.unique(weight):
            sel = torch.from_numpy(weight == wt)
            m = torch.from_numpy(masks[b])
            hp, hn = hist(x[b][sel & m]), hist(x[b][sel & ~m])
            pos += hp
            neg += hn
            wpos += hp * float(wt)

    def rates(p: torch.Tensor, n: torch.Tensor):
        cp, cn = torch.cumsum(p, 0).numpy(), torch.cumsum(n, 0).numpy()
        tp, fp = cp[-1] - cp[:-1], cn[-1] - cn[:-1]
        return tp, fp, cp[-1], cn[-1]

    tp, fp, n_pos, n_neg = rates(pos, neg)
    fpr, tpr = fp / n_neg, tp / n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 1.0)
    auroc = trapezoid(tpr[::-1], fpr[::-1])
    ap = trapezoid(precision[::-1], tpr[::-1])
    wtp, _, w_total, _ = rates(wpos, neg)
    pro = wtp / w_total
    inside = fpr <= limit
    lo_pro, lo_fpr = pro[inside][::-1], fpr[inside][::-1]
    hi_pro, hi_fpr = pro[~inside][::-1], fpr[~inside][::-1]
    lo_area, hi_area = trapezoid(lo_pro, lo_fpr), trapezoid(hi_pro, hi_fpr)
    crossing = trapezoid(pro[::-1], fpr[::-1]) - (lo_area + hi_area)
    t = (limit - lo_fpr[-1]) / (hi_fpr[0] - lo_fpr[-1])
    y1, y2 = lo_pro[-1], hi_pro[0]
    rect = y1 / (y1 + 0.5 * (y2 - y1)) if y1 + y2 > 0 else 0.0
    partial = crossing * rect * t + crossing * (1 - rect) * t * t
    return float(auroc), float(ap), float((lo_area + partial) / limit)


@st.composite
def maps_and_masks(draw, values=None):
    b, h, w = draw(st.integers(1, 3)), draw(st.integers(2, 9)), draw(st.integers(2, 9))
    masks = draw(arrays(np.bool_, (b, h, w)))
    elements = values if values is not None else st.floats(-3, 3, width=32)
    maps = draw(arrays(np.float32, (b, h, w), elements=elements))
    assume(masks.any() and not masks.all() and maps.min() < maps.max())
    return maps, masks


def _check(maps: np.ndarray, masks: np.ndarray, bins: int) -> None:
    auroc, ap, pro = adeval_reference(maps, masks, bins)
    m, g = torch.from_numpy(maps), torch.from_numpy(masks)
    assert binned_pixel_auroc(m, g, num_bins=bins) == pytest.approx(auroc, abs=1e-12)
    assert binned_pixel_ap(m, g, num_bins=bins) == pytest.approx(ap, abs=1e-12)
    assert binned_aupro(m, g, num_bins=bins) == pytest.approx(pro, abs=1e-9)


@given(maps_and_masks(), st.sampled_from([5, 7, 200]))
def test_equals_adeval_reference(data, bins):
    maps, masks = data
    normal = maps[~masks]
    # adeval itself fails when >30 % of the normal pixels tie at the maximum
    assume(np.mean(normal >= maps.max()) <= 0.3)
    _check(maps, masks, bins)


@given(maps_and_masks(values=st.sampled_from([0.0, 0.1, 0.5, 0.5001, 1.0])), st.just(200))
def test_equals_adeval_reference_with_ties(data, bins):
    maps, masks = data
    assume(np.mean(maps[~masks] >= maps.max()) <= 0.3)
    _check(maps, masks, bins)


def test_bin_assignment_equals_torch_histc():
    """Scores spread over many magnitudes; the counts of every bin equal torch.histc."""
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(4, 64, 64, generator=g) * 37.5 + 3.0
    masks = torch.zeros(4, 64, 64)
    masks[:, :8] = 1
    auroc, ap, pro = adeval_reference(maps.numpy(), masks.numpy().astype(bool), 200)
    assert binned_pixel_auroc(maps, masks) == pytest.approx(auroc, abs=1e-12)
    assert binned_pixel_ap(maps, masks) == pytest.approx(ap, abs=1e-12)
    assert binned_aupro(maps, masks) == pytest.approx(pro, abs=1e-9)


def test_binned_is_close_to_exact():
    """Continuous scores: 200 bins are within 1e-3 of the exact metrics."""
    g = torch.Generator().manual_seed(2)
    masks = torch.zeros(8, 48, 48, dtype=torch.bool)
    masks[:, 10:22, 14:30] = True
    maps = torch.rand(8, 48, 48, generator=g) + 0.4 * masks
    assert binned_pixel_auroc(maps, masks) == pytest.approx(pixel_auroc(maps, masks), abs=1e-3)
    assert binned_pixel_ap(maps, masks) == pytest.approx(pixel_ap(maps, masks), abs=1e-3)
    assert binned_aupro(maps, masks) == pytest.approx(aupro(maps, masks), abs=1e-3)


def test_binned_auroc_counts_the_maximum_twice():
    """With a bin per distinct score, binned AUROC is the exact AUROC with the top pixel doubled.

    That is adeval's overflow bin (``x ≥ max`` counted besides the last ``histc`` bin); the
    bias is O(1/P) and vanishes on real data, but it is why more bins do not converge to
    the exact value.
    """
    g = torch.Generator().manual_seed(3)
    masks = torch.rand(2, 16, 16, generator=g) < 0.1
    maps = torch.rand(2, 16, 16, generator=g) + 0.3 * masks
    flat_maps = torch.cat([maps.flatten(), maps.max()[None]])[None, None]
    top = masks.flatten()[maps.flatten().argmax()]
    flat_masks = torch.cat([masks.flatten(), top[None]])[None, None]
    doubled = pixel_auroc(flat_maps, flat_masks)
    binned = binned_pixel_auroc(maps, masks, num_bins=1_000_000)
    assert binned == pytest.approx(doubled, abs=1e-9)
    assert binned != pytest.approx(pixel_auroc(maps, masks), abs=1e-5)


def test_bad_input():
    maps, masks = torch.rand(2, 4, 4), torch.zeros(2, 4, 4)
    masks[0, 1, 1] = 1
    for fn in (binned_pixel_auroc, binned_pixel_ap, binned_aupro):
        with pytest.raises(ValueError, match="`num_bins` must be a positive int"):
            fn(maps, masks, num_bins=0)
        with pytest.raises(ValueError, match="not constant"):
            fn(torch.ones(2, 4, 4), masks)
        with pytest.raises(ValueError, match="both classes"):
            fn(maps, torch.zeros_like(masks))
    with pytest.raises(ValueError, match="`fpr_limit`"):
        binned_aupro(maps, masks, fpr_limit=0.0)
    tied_top = torch.zeros(1, 4, 4)
    tied_top[0, :2] = 1.0  # 8 of 15 normal pixels tie at the maximum: FPR ≥ 0.5 at every edge
    top_mask = torch.zeros(1, 4, 4)
    top_mask[0, 3, 3] = 1
    with pytest.raises(ValueError, match="binned AUPRO is undefined"):
        binned_aupro(tied_top, top_mask)
