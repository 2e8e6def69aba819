"""Focal, L1 and Dice losses on probability maps (AF-CLIP Eq. 11, 13; AnomalyCLIP's Dice)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from resad_kit.ops.losses import binary_focal_loss, dice_loss, l1_loss

probabilities = st.floats(0, 1, width=32)


@st.composite
def maps(draw):
    """(probs, binary targets) pairs of a random (B, H, W) shape, float64."""
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    probs = torch.from_numpy(draw(arrays(np.float32, shape, elements=probabilities))).double()
    targets = torch.from_numpy(draw(arrays(np.bool_, shape))).double()
    return probs, targets


def _naive_focal(p, y, gamma, alpha=None):
    total = 0.0
    for pi, yi in zip(p.flatten().tolist(), y.flatten().tolist(), strict=True):
        bce = -(yi * max(math.log(pi), -100.0) if pi > 0 else yi * -100.0)
        bce -= (1 - yi) * max(math.log(1 - pi), -100.0) if pi < 1 else (1 - yi) * -100.0
        p_t = pi * yi + (1 - pi) * (1 - yi)
        weight = 1.0 if alpha is None else alpha * yi + (1 - alpha) * (1 - yi)
        total += weight * bce * (1 - p_t) ** gamma
    return total / p.numel()


@given(maps(), st.sampled_from([0.0, 1.0, 2.0, 4.0]), st.sampled_from([None, 0.25, 0.9]))
def test_focal_equals_naive_formula(pair, gamma, alpha):
    p, y = pair
    expected = _naive_focal(p, y, gamma, alpha)
    assert binary_focal_loss(p, y, gamma=gamma, alpha=alpha).item() == pytest.approx(expected)


@given(maps())
def test_focal_gamma_zero_is_binary_cross_entropy(pair):
    p, y = pair
    torch.testing.assert_close(binary_focal_loss(p, y, gamma=0), F.binary_cross_entropy(p, y))


def test_focal_down_weights_easy_examples():
    y = torch.tensor([1.0, 0.0])
    assert binary_focal_loss(y, y) == 0  # perfect predictions cost nothing
    easy, hard = torch.tensor([0.9, 0.1]), torch.tensor([0.6, 0.4])
    ratio_focal = binary_focal_loss(hard, y) / binary_focal_loss(easy, y)
    ratio_bce = binary_focal_loss(hard, y, gamma=0) / binary_focal_loss(easy, y, gamma=0)
    assert ratio_focal > ratio_bce  # γ > 0 shifts the weight towards the hard examples


@given(maps())
def test_l1_equals_torch(pair):
    p, y = pair
    torch.testing.assert_close(l1_loss(p, y), F.l1_loss(p, y))


@given(maps(), st.sampled_from([1.0, 1e-3]))
def test_dice_equals_per_sample_formula(pair, smooth):
    p, y = pair
    per_sample = [
        1 - (2 * (pb * yb).sum() + smooth) / (pb.sum() + yb.sum() + smooth)
        for pb, yb in zip(p, y, strict=True)
    ]
    torch.testing.assert_close(dice_loss(p, y, smooth=smooth), torch.stack(per_sample).mean())


@given(maps())
def test_dice_bounds(pair):
    p, y = pair
    value = dice_loss(p, y).item()
    assert 0 <= value < 1
    assert dice_loss(y, y).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("fn", [binary_focal_loss, l1_loss, dice_loss])
def test_gradcheck_float64(fn):
    g = torch.Generator().manual_seed(0)
    p = (torch.rand(2, 3, 3, generator=g, dtype=torch.float64) * 0.8 + 0.1).requires_grad_(True)
    y = (torch.rand(2, 3, 3, generator=g, dtype=torch.float64) > 0.5).double()
    y[..., 0] = 1 - (p[..., 0].detach() > 0.5).double()  # keep |p − y| away from the L1 kink
    assert torch.autograd.gradcheck(lambda t: fn(t, y), (p,))


@pytest.mark.parametrize("fn", [binary_focal_loss, l1_loss, dice_loss])
def test_dtypes(fn, dtype):
    p = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(1))
    y = (p > 0.5).float()
    out = fn(p.to(dtype), y.to(dtype))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, fn(p.to(dtype).float(), y))


@pytest.mark.parametrize("fn", [binary_focal_loss, l1_loss, dice_loss])
@pytest.mark.parametrize(
    ("probs", "targets", "match"),
    [
        (torch.tensor([[1.5, 0.0]]), torch.tensor([[1.0, 0.0]]), "`probs` must lie in"),
        (torch.tensor([[0.5, 0.0]]), torch.tensor([[2.0, 0.0]]), "`targets` must lie in"),
        (torch.tensor([[math.nan, 0.0]]), torch.tensor([[1.0, 0.0]]), "`probs` must be finite"),
        (torch.tensor([[0.5, 0.0]]), torch.tensor([[1.0, 0.0, 1.0]]), "shapes must match"),
    ],
)
def test_bad_input(fn, probs, targets, match):
    with pytest.raises(ValueError, match=match):
        fn(probs, targets)


@pytest.mark.parametrize(
    ("fn", "kwargs", "match"),
    [
        (binary_focal_loss, {"gamma": -1.0}, "`gamma`"),
        (binary_focal_loss, {"gamma": math.inf}, "`gamma`"),
        (binary_focal_loss, {"alpha": 1.5}, "`alpha`"),
        (dice_loss, {"smooth": 0.0}, "`smooth`"),
    ],
)
def test_bad_hyper_parameters(fn, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fn(torch.full((1, 2), 0.5), torch.ones(1, 2), **kwargs)
