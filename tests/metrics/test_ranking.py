"""Exact AUROC, AP, F1max: equal to scikit-learn on random, tied and degenerate inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from resad_kit.metrics import (
    image_ap,
    image_auroc,
    image_f1max,
    pixel_ap,
    pixel_auroc,
    pixel_f1max,
)
from resad_kit.metrics._core import sort_inplace

TOL = 1e-12


def sk_f1max(y: np.ndarray, s: np.ndarray, eps: float = 0.0) -> float:
    """F1max from scikit-learn's precision-recall curve (eps as the official code)."""
    p, r, _ = precision_recall_curve(y, s)
    denom = p + r + eps
    f1 = np.divide(2 * p * r, denom, out=np.zeros_like(p), where=denom > 0)
    return float(f1[:-1].max())  # the last point (P=1, R=0) has F1 = 0 anyway


def check_all(y: np.ndarray, s: np.ndarray) -> None:
    """The three image metrics and the three pixel metrics against scikit-learn."""
    ys, st_ = torch.from_numpy(y), torch.from_numpy(s)
    assert image_auroc(st_, ys) == pytest.approx(roc_auc_score(y, s), abs=TOL)
    assert image_ap(st_, ys) == pytest.approx(average_precision_score(y, s), abs=TOL)
    assert image_f1max(st_, ys) == pytest.approx(sk_f1max(y, s), abs=TOL)
    maps, masks = st_.reshape(1, 1, -1), ys.reshape(1, 1, -1)
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(y, s), abs=TOL)
    assert pixel_ap(maps, masks) == pytest.approx(average_precision_score(y, s), abs=TOL)
    assert pixel_f1max(maps, masks) == pytest.approx(sk_f1max(y, s), abs=TOL)


def labelled(scores: st.SearchStrategy[float], max_size: int = 80):
    """(labels, scores) of equal length with both classes present."""
    return st.integers(2, max_size).flatmap(
        lambda n: st.tuples(
            arrays(np.bool_, n),
            arrays(np.float64, n, elements=scores),
        )
    )


@given(labelled(st.floats(-1e3, 1e3, width=32)))
def test_random_scores_equal_sklearn(data):
    y, s = data
    assume(0 < y.sum() < y.size)
    check_all(y, s)


@given(labelled(st.sampled_from([0.0, 0.25, 0.5, 1.0, -0.0])))
def test_heavily_tied_scores_equal_sklearn(data):
    """Few distinct values: most thresholds group ties of both classes (and ±0 are equal)."""
    y, s = data
    assume(0 < y.sum() < y.size)
    check_all(y, s)


@given(st.integers(1, 30), st.integers(1, 30), st.floats(-5, 5))
def test_constant_scores(n_pos, n_neg, c):
    """One threshold: AUROC ½, AP = precision = P/(P+N), F1 = 2P/(2P+N)."""
    y = np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]
    s = np.full(y.size, c)
    check_all(y, s)
    assert image_auroc(torch.from_numpy(s), torch.from_numpy(y)) == 0.5
    ap = image_ap(torch.from_numpy(s), torch.from_numpy(y))
    assert ap == pytest.approx(n_pos / (n_pos + n_neg), abs=TOL)
    f1 = image_f1max(torch.from_numpy(s), torch.from_numpy(y))
    assert f1 == pytest.approx(2 * n_pos / (2 * n_pos + n_neg), abs=TOL)


def test_perfect_and_inverted_rankings():
    y = torch.tensor([0, 0, 0, 1, 1])
    s = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5])
    assert (image_auroc(s, y), image_ap(s, y), image_f1max(s, y)) == (1.0, 1.0, 1.0)
    assert image_auroc(-s, y) == 0.0
    # the worst AP: both positives at the bottom, precisions 1/4 and 2/5
    assert image_ap(-s, y) == pytest.approx((1 / 4 + 2 / 5) / 2, abs=TOL)


@given(labelled(st.floats(-10, 10, width=16), max_size=60))
def test_f1_with_the_official_epsilon(data):
    """eps=1e-7 reproduces the official ``2PR/(P+R+1e-7)`` with the last point dropped."""
    y, s = data
    assume(0 < y.sum() < y.size)
    ys, st_ = torch.from_numpy(y), torch.from_numpy(s)
    assert image_f1max(st_, ys, eps=1e-7) == pytest.approx(sk_f1max(y, s, 1e-7), abs=TOL)
    assert pixel_f1max(st_[None, None], ys[None, None], eps=1e-7) == pytest.approx(
        sk_f1max(y, s, 1e-7), abs=TOL
    )
    assert image_f1max(st_, ys, eps=1e-7) <= image_f1max(st_, ys)


def test_pixel_metrics_pool_all_images(dtype, device):
    """(B, H, W) maps are pooled over images; half inputs are compared widened (exact)."""
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(3, 9, 7, generator=g) < 0.2
    maps = (torch.rand(3, 9, 7, generator=g) + 0.3 * masks).to(dtype)
    y, s = masks.flatten().numpy(), maps.float().flatten().numpy()
    maps, masks = maps.to(device), masks.to(device)
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(y, s), abs=TOL)
    assert pixel_ap(maps, masks) == pytest.approx(average_precision_score(y, s), abs=TOL)
    assert pixel_f1max(maps, masks) == pytest.approx(sk_f1max(y, s), abs=TOL)


def test_float64_scores_are_not_rounded_to_float32():
    s = torch.tensor([1.0, 1.0 + 1e-12], dtype=torch.float64)
    y = torch.tensor([0, 1])
    assert image_auroc(s, y) == 1.0
    assert image_auroc(s.float(), y) == 0.5


def test_labels_may_be_bool_int_or_float():
    s = torch.tensor([0.3, 0.1, 0.7, 0.2])
    ref = image_auroc(s, torch.tensor([False, False, True, True]))
    for y in (torch.tensor([0, 0, 1, 1]), torch.tensor([0.0, 0.0, 1.0, 1.0])):
        assert image_auroc(s, y) == ref == 0.75


@given(arrays(np.float16, st.integers(0, 300), elements=st.floats(width=16, allow_nan=False)))
def test_float16_counting_sort_equals_numpy_sort(a):
    """The float16 path (order-preserving keys, counting sort) sorts like np.sort."""
    b = a.copy()
    sort_inplace(b)
    expected = np.sort(a)
    assert np.array_equal(b, expected)  # ±0 compare equal; everything else identical
    assert np.array_equal(b.view(np.uint16)[b != 0], expected.view(np.uint16)[expected != 0])


# --------------------------------------------------------------------------- bad input

S, Y = torch.tensor([0.1, 0.9, 0.4]), torch.tensor([0, 1, 0])


@pytest.mark.parametrize(
    ("scores", "labels", "match"),
    [
        (torch.tensor([0.1, float("nan"), 0.4]), Y, "finite"),
        (torch.tensor([0.1, float("inf"), 0.4]), Y, "finite"),
        (S, torch.tensor([0, 1]), "shapes must match"),
        (S.reshape(3, 1), Y.reshape(3, 1), "1 dimensions"),
        (S, torch.tensor([0, 2, 1]), "binary"),
        (S, torch.tensor([0.0, 0.5, 1.0]), "binary"),
        (S, torch.tensor([0, 0, 0]), "both classes"),
        (S, torch.tensor([1, 1, 1]), "both classes"),
        (torch.tensor([]), torch.tensor([]), "must not be empty"),
        (torch.tensor([1, 2, 3]), Y, "float16, bfloat16, float32 or float64"),
    ],
)
def test_image_metrics_reject_bad_input(scores, labels, match):
    for fn in (image_auroc, image_ap, image_f1max):
        with pytest.raises(ValueError, match=match):
            fn(scores, labels)


def test_pixel_metrics_reject_bad_input():
    maps, masks = torch.rand(2, 4, 4), torch.zeros(2, 4, 4)
    masks[0, 0, 0] = 1
    with_nan = maps.clone()
    with_nan[1, 2, 3] = float("nan")
    for fn in (pixel_auroc, pixel_ap, pixel_f1max):
        with pytest.raises(ValueError, match=r"`maps` must have 3 dimensions \(B, H, W\)"):
            fn(maps[0], masks[0])
        with pytest.raises(ValueError, match="shapes must match"):
            fn(maps, masks[:1])
        with pytest.raises(ValueError, match="both classes; got 0 positive and 32 negative"):
            fn(maps, torch.zeros_like(masks))
        with pytest.raises(ValueError, match="`masks` must be binary"):
            fn(maps, masks * 255)
        with pytest.raises(ValueError, match="1 NaN"):
            fn(with_nan, masks)
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        pixel_auroc(maps.numpy(), masks)
    for bad in (-0.1, 1.0, True, "0"):
        with pytest.raises(ValueError, match="`eps` must be a number in"):
            pixel_f1max(maps, masks, eps=bad)
