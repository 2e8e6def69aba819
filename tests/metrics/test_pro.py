"""AUPRO: equal to a slow direct implementation of the MVTec AD definition; analytic cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from skimage.measure import label

from resad_kit.metrics import aupro

TOL = 1e-12


def direct_aupro(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float:
    """The definition, literally: one (FPR, PRO) point per distinct score, from (0, 0).

    Regions: 8-connected components (skimage, connectivity=2) of each image's mask.
    PRO(t) = mean over regions of the fraction of the region scoring ≥ t; FPR(t) = the
    fraction of normal pixels scoring ≥ t. Trapezoid rule up to ``limit``, the crossing
    segment interpolated linearly, divided by ``limit``.
    """
    regions = []
    for b in range(masks.shape[0]):
        lab = label(masks[b], connectivity=2)
        regions += [maps[b][lab == r] for r in range(1, lab.max() + 1)]
    normal = maps[~masks]
    xs, ys = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        xs.append(float(np.mean(normal >= t)))
        ys.append(float(np.mean([np.mean(r >= t) for r in regions])))
    area = 0.0
    for x0, x1, y0, y1 in zip(xs[:-1], xs[1:], ys[:-1], ys[1:], strict=True):
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_lim) / 2
            break
    return area / limit


@st.composite
def maps_and_masks(draw, values=None):
    b, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 7)), draw(st.integers(1, 7))
    masks = draw(arrays(np.bool_, (b, h, w)))
    elements = values if values is not None else st.floats(0, 1, width=32)
    maps = draw(arrays(np.float32, (b, h, w), elements=elements))
    assume(masks.any() and not masks.all())
    return maps, masks


@given(maps_and_masks(), st.sampled_from([0.3, 0.05, 0.5, 1.0]))
def test_equals_direct_definition_on_random_masks(data, limit):
    maps, masks = data
    got = aupro(torch.from_numpy(maps), torch.from_numpy(masks), fpr_limit=limit)
    assert got == pytest.approx(direct_aupro(maps, masks, limit), abs=TOL)


@given(maps_and_masks(values=st.sampled_from([0.0, 0.5, 1.0])), st.sampled_from([0.3, 0.7]))
def test_equals_direct_definition_with_heavy_ties(data, limit):
    """Tied scores across classes give diagonal curve segments; the limit may cut one."""
    maps, masks = data
    got = aupro(torch.from_numpy(maps), torch.from_numpy(masks), fpr_limit=limit)
    assert got == pytest.approx(direct_aupro(maps, masks, limit), abs=TOL)


def test_regions_are_eight_connected_per_image():
    """A diagonal line is one region; the same pixels in two images are two regions."""
    masks = torch.zeros(2, 5, 5, dtype=torch.bool)
    masks[0, 1, 1] = masks[0, 2, 2] = masks[0, 3, 3] = True  # one diagonal region, 3 px
    masks[1, 1, 1] = masks[1, 3, 3] = True  # two 1-pixel regions
    maps = torch.zeros(2, 5, 5)
    maps[0, 1, 1] = 1.0  # a third of the diagonal region detected
    maps[1, 1, 1] = 1.0  # one of the two 1-pixel regions detected
    # at t = 1: FPR 0, PRO = (1/3 + 1 + 0) / 3 = 4/9; at t = 0: (1, 1)
    pro_at_limit = 4 / 9 + (5 / 9) * 0.3
    expected = (4 / 9 + pro_at_limit) / 2
    got = aupro(maps, masks)
    assert got == pytest.approx(expected, abs=TOL)
    assert got == pytest.approx(direct_aupro(maps.numpy(), masks.numpy()), abs=TOL)
    # 4-connectivity would give five regions, PRO(1) = 2/5 and a different area
    assert [label(m, connectivity=1).max() for m in masks.numpy()] == [3, 2]
    assert got != pytest.approx((2 / 5 + 2 / 5 + 3 / 5 * 0.3) / 2, abs=1e-3)


def test_perfect_predictor_scores_one():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(4, 16, 16, generator=g) < 0.2
    maps = torch.rand(4, 16, 16, generator=g) * 0.5 + masks.float()  # every defect on top
    assert aupro(maps, masks) == 1.0
    assert aupro(maps, masks, fpr_limit=1.0) == 1.0


def test_worst_predictor_scores_zero():
    masks = torch.zeros(2, 8, 8)
    masks[:, 2:5, 2:5] = 1
    assert aupro(-masks, masks) == 0.0


def test_scores_independent_of_masks_give_half_the_limit():
    """PRO(t) ≈ FPR(t) when scores ignore the masks, so the normalised area ≈ limit/2."""
    g = torch.Generator().manual_seed(1)
    masks = torch.zeros(24, 64, 64, dtype=torch.bool)
    for i in range(24):  # a few rectangles per image
        y, x = torch.randint(0, 48, (2,), generator=g).tolist()
        masks[i, y : y + 12, x : x + 10] = True
    maps = torch.rand(24, 64, 64, generator=g)
    assert aupro(maps, masks) == pytest.approx(0.15, abs=0.01)
    assert aupro(maps, masks, fpr_limit=0.1) == pytest.approx(0.05, abs=0.01)


def test_fpr_limit_at_a_curve_point_needs_no_interpolation():
    """With N = 10 normal pixels, FPR 0.3 is exactly a curve point."""
    maps = torch.tensor([[[9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0, 6.5, 8.5]]])
    masks = torch.tensor([[[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]]])
    masks[0, 0, 11] = 1  # two separate 1-pixel regions: at 8.5 and at 6.5
    got = aupro(maps, masks)
    # PRO: 0 up to FPR 0.1, ½ from 0.1 to 0.3 (the region at 6.5 enters at FPR 0.3)
    assert got == pytest.approx((0.2 * 0.5) / 0.3, abs=TOL)
    assert got == pytest.approx(direct_aupro(maps.numpy(), masks.numpy().astype(bool)), abs=TOL)


def test_bad_input():
    maps, masks = torch.rand(2, 4, 4), torch.zeros(2, 4, 4)
    masks[0, 1, 1] = 1
    for bad in (0.0, -0.1, 1.5, float("nan"), True, "0.3"):
        with pytest.raises(ValueError, match="`fpr_limit` must be a number in"):
            aupro(maps, masks, fpr_limit=bad)
    with pytest.raises(ValueError, match="both classes"):
        aupro(maps, torch.zeros_like(masks))
    with pytest.raises(ValueError, match="both classes"):
        aupro(maps, torch.ones_like(masks))
    with pytest.raises(ValueError, match="binary"):
        aupro(maps, masks * 0.5)
    with pytest.raises(ValueError, match="3 dimensions"):
        aupro(maps[None], masks[None])
