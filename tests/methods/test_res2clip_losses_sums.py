"""Tests for resad_kit.methods.res2clip_losses: Res²CLIP's branch sums (eqs. 13–15).

What they prove:

* each branch loss is exactly the sum of the generic losses of :mod:`resad_kit.ops.losses`
  it composes (eqs. 13, 14, 15), for both reductions; a shared mask equals a repeated one;
* gradients are correct (``gradcheck`` in float64); raw norms and targets get none;
* half-precision inputs are computed in float32;
* invalid input raises ``ValueError`` (``TypeError`` for wrong types) naming the argument,
  and with ``resad_kit.checks(False)`` the sums skip validation but return the same values.
"""

from __future__ import annotations

import pytest
import torch

import resad_kit
from resad_kit.methods.res2clip_losses import (
    residual_branch_loss,
    text_branch_loss,
    visual_branch_loss,
)
from resad_kit.ops.losses import (
    direction_regularizer,
    global_hinge_loss,
    local_hinge_loss,
    magnitude_loss,
    magnitude_regularizer,
)

REDUCTIONS = ("batch", "per_sample")


def _uniform(shape, gen, low, high):
    return low + (high - low) * torch.rand(shape, generator=gen, dtype=torch.float64)


def _away_from_kinks(shape, gen, kinks=(0.0, 1.0)):
    """Float64 values at least 0.2 from every kink (0 and the target 1 by default)."""
    centres = torch.tensor([-0.6, 0.5, 1.6], dtype=torch.float64)
    idx = torch.randint(0, 3, shape, generator=gen)
    values = centres[idx] + _uniform(shape, gen, -0.1, 0.1)
    assert all(float((values - k).abs().min()) > 0.2 for k in kinks)
    return values


def _norm_pair(shape, gen):
    """Raw norms in [1, 2] and adapted ones at least 0.2 away (so |a − r| is smooth)."""
    raw = _uniform(shape, gen, 1.0, 2.0)
    sign = torch.where(torch.rand(shape, generator=gen) < 0.5, -1.0, 1.0).double()
    return raw + sign * _uniform(shape, gen, 0.2, 0.6), raw


def _mixed_mask(shape, gen):
    mask = (torch.rand(shape, generator=gen) < 0.5).double()
    mask.view(shape[0], -1)[0, 0] = 1  # both classes present
    mask.view(shape[0], -1)[0, 1] = 0
    return mask


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_branch_losses(reduction):
    gen = torch.Generator().manual_seed(2)
    labels = torch.tensor([0.0, 1.0, 1.0])
    masks = [_mixed_mask((3, 4), gen), _mixed_mask((3, 2, 2), gen)]
    g = _away_from_kinks((3,), gen).requires_grad_()
    l0 = _away_from_kinks((3, 4), gen).requires_grad_()
    l1 = _away_from_kinks((3, 2, 2), gen).requires_grad_()
    adapted_text = _uniform((3, 5), gen, -1.0, 1.0).requires_grad_()
    raw_text = _uniform((5,), gen, -1.0, 1.0)
    assert torch.autograd.gradcheck(
        lambda g, a, b, t: text_branch_loss(
            g, [a, b], t, raw_text, labels, masks, reduction=reduction
        ),
        (g, l0, l1, adapted_text),
    )

    (a0, r0), (a1, r1) = _norm_pair((3, 4), gen), _norm_pair((3, 2, 2), gen)
    a0.requires_grad_()
    a1.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: visual_branch_loss([a, b], [r0, r1], masks, reduction=reduction), (a0, a1)
    )

    ones_g, ones_0, ones_1 = (torch.ones_like(x) for x in (g, l0, l1))  # targets = margin = 1
    reg = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda g, a, b, r: residual_branch_loss(
            g, ones_g, [a, b], [ones_0, ones_1], labels, masks, regularizer=r, reduction=reduction
        ),
        (g, l0, l1, reg),
    )


def test_raw_norms_receive_no_gradient():
    """Targets of the residual branch (raw norms) are constants, as in the official code."""
    gen = torch.Generator().manual_seed(3)
    mask = _mixed_mask((2, 5), gen)
    labels = torch.tensor([0.0, 1.0])
    score_map = _uniform((2, 5), gen, -1.0, 1.0).requires_grad_()
    p = _uniform((2,), gen, -1.0, 1.0).requires_grad_()
    raw_g = _uniform((2,), gen, 1.0, 2.0).requires_grad_()
    raw_l = _uniform((2, 5), gen, 1.0, 2.0).requires_grad_()
    residual_branch_loss(
        p, raw_g, [score_map], [raw_l], labels, mask, regularizer=torch.tensor(0.0)
    ).backward()
    assert raw_g.grad is None
    assert raw_l.grad is None
    assert p.grad is not None
    assert score_map.grad is not None


# --------------------------------------------------------------------------------------------
# Branch losses equal the sum of their parts
# --------------------------------------------------------------------------------------------


def _branch_inputs(gen, dtype=torch.float64, device="cpu"):
    def u(shape, lo, hi):
        return _uniform(shape, gen, lo, hi).to(device=device, dtype=dtype)

    labels = torch.tensor([0, 1, 1, 0], device=device)
    masks = [
        (torch.rand(4, 6, generator=gen) < 0.4).to(device),
        (torch.rand(4, 3, 3, generator=gen) < 0.4).to(device),
    ]
    masks[1][0] = False  # an all-normal sample
    return {
        "labels": labels,
        "masks": masks,
        "global": u((4,), -1.0, 2.0),
        "local": [u((4, 6), -1.0, 2.0), u((4, 3, 3), -1.0, 2.0)],
        "adapted_text": u((4, 5), -1.0, 1.0),
        "raw_text": u((5,), -1.0, 1.0),
        "global_norm": u((4,), 0.0, 2.0),
        "local_norms": [u((4, 6), 0.0, 2.0), u((4, 3, 3), 0.0, 2.0)],
        "adapted_norms": [u((4, 6), 0.0, 2.0), u((4, 3, 3), 0.0, 2.0)],
    }


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_text_branch_is_sum_of_parts(reduction, device):
    x = _branch_inputs(torch.Generator().manual_seed(5), device=device)
    margin = 0.8
    got = text_branch_loss(
        x["global"],
        x["local"],
        x["adapted_text"],
        x["raw_text"],
        x["labels"],
        x["masks"],
        margin=margin,
        reduction=reduction,
    )
    want = (
        global_hinge_loss(x["global"], x["labels"], target=margin, reduction=reduction)
        + sum(
            local_hinge_loss(s, m, target=margin, reduction=reduction)
            for s, m in zip(x["local"], x["masks"], strict=True)
        )
        + direction_regularizer(x["adapted_text"], x["raw_text"])
    )
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_visual_branch_is_sum_of_parts(reduction, device):
    x = _branch_inputs(torch.Generator().manual_seed(6), device=device)
    got = visual_branch_loss(x["adapted_norms"], x["local_norms"], x["masks"], reduction=reduction)
    want = sum(
        magnitude_loss(a, r, m, reduction=reduction)
        for a, r, m in zip(x["adapted_norms"], x["local_norms"], x["masks"], strict=True)
    )
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_residual_branch_is_sum_of_parts(reduction, device):
    x = _branch_inputs(torch.Generator().manual_seed(7), device=device)
    margin = 1.3
    reg = magnitude_regularizer(x["adapted_norms"][0], x["local_norms"][0])
    got = residual_branch_loss(
        x["global"],
        x["global_norm"],
        x["local"],
        x["local_norms"],
        x["labels"],
        x["masks"],
        regularizer=reg,
        margin=margin,
        reduction=reduction,
    )
    want = (
        global_hinge_loss(
            x["global"], x["labels"], target=margin * x["global_norm"], reduction=reduction
        )
        + sum(
            local_hinge_loss(p, m, target=margin * r, reduction=reduction)
            for p, r, m in zip(x["local"], x["local_norms"], x["masks"], strict=True)
        )
        + reg
    )
    torch.testing.assert_close(got, want)


def test_shared_mask_equals_repeated_mask():
    gen = torch.Generator().manual_seed(8)
    mask = _mixed_mask((2, 3, 3), gen)
    maps = [_uniform((2, 3, 3), gen, -1.0, 2.0) for _ in range(3)]
    norms = [_uniform((2, 3, 3), gen, 0.0, 2.0) for _ in range(3)]
    g, labels = _uniform((2,), gen, -1.0, 2.0), torch.tensor([0, 1])
    t = _uniform((4,), gen, -1.0, 1.0)
    assert torch.equal(
        text_branch_loss(g, maps, t, t, labels, mask),
        text_branch_loss(g, maps, t, t, labels, [mask] * 3),
    )
    assert torch.equal(
        visual_branch_loss(norms, norms[::-1], mask),
        visual_branch_loss(norms, norms[::-1], [mask] * 3),
    )
    zero = torch.tensor(0.0)
    assert torch.equal(
        residual_branch_loss(g, g.abs(), maps, norms, labels, mask, regularizer=zero),
        residual_branch_loss(g, g.abs(), maps, norms, labels, [mask] * 3, regularizer=zero),
    )


def test_branch_losses_accept_every_float_dtype(dtype):
    """Half inputs are computed in float32: same value as the float32 upcast, grads flow back."""
    x = _branch_inputs(torch.Generator().manual_seed(9), dtype=dtype)
    for v in (x["global"], *x["local"], x["adapted_text"], *x["adapted_norms"]):
        v.requires_grad_()
    up = {
        k: [t.float() for t in v] if isinstance(v, list) else v.float()
        for k, v in x.items()
        if k not in ("labels", "masks")
    }

    def total(x):
        reg = direction_regularizer(x["adapted_text"], x["raw_text"])
        return (
            text_branch_loss(
                x["global"], x["local"], x["adapted_text"], x["raw_text"], labels, masks
            ),
            visual_branch_loss(x["adapted_norms"], x["local_norms"], masks),
            residual_branch_loss(
                x["global"],
                x["global_norm"],
                x["local"],
                x["local_norms"],
                labels,
                masks,
                regularizer=reg,
            ),
        )

    labels, masks = x["labels"], x["masks"]
    got, want = total(x), total(up)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)
    sum(got).backward()
    assert x["global"].grad.dtype == dtype
    assert torch.isfinite(x["adapted_norms"][1].grad.float()).all()


# --------------------------------------------------------------------------------------------
# Invalid input
# --------------------------------------------------------------------------------------------

_S = torch.tensor([0.1, 0.2])
_Y = torch.tensor([0, 1])
_MAP = torch.zeros(2, 3)
_MASK = torch.tensor([[0, 1, 0], [1, 1, 0]])
_NAN_MAP = torch.tensor([[0.0, float("nan"), 0.0], [0.0, 0.0, 0.0]])
_ZERO = torch.tensor(0.0)
_T = torch.ones(4)


def _text(**kw):
    args = {
        "global_score": _S,
        "local_scores": [_MAP],
        "adapted_text": _T,
        "raw_text": _T,
        "labels": _Y,
        "masks": _MASK,
    }
    args.update(kw)
    return text_branch_loss(**args)


def _visual(**kw):
    args = {"adapted_norms": [_MAP], "raw_norms": [_MAP], "masks": _MASK}
    args.update(kw)
    return visual_branch_loss(**args)


def _residual(**kw):
    args = {
        "global_projection": _S,
        "global_raw_norm": _S,
        "local_projections": [_MAP],
        "local_raw_norms": [_MAP],
        "labels": _Y,
        "masks": _MASK,
        "regularizer": _ZERO,
    }
    args.update(kw)
    return residual_branch_loss(**args)


BAD_VALUES = {
    "wrong reduction text": (lambda: _text(reduction="pixel"), "`reduction`"),
    "wrong reduction visual": (lambda: _visual(reduction="none"), "`reduction`"),
    "wrong reduction residual": (lambda: _residual(reduction=None), "`reduction`"),
    "empty local_scores": (lambda: _text(local_scores=[]), "`local_scores`"),
    "empty adapted_norms": (lambda: _visual(adapted_norms=(), raw_norms=()), "`adapted_norms`"),
    "empty local_projections": (
        lambda: _residual(local_projections=[], local_raw_norms=[]),
        "`local_projections`",
    ),
    "masks length": (lambda: _text(masks=[_MASK, _MASK]), "`masks`"),
    "empty masks": (lambda: _visual(masks=[]), "`masks`"),
    "raw_norms length": (lambda: _visual(raw_norms=[_MAP, _MAP]), "`raw_norms`"),
    "local_raw_norms length": (lambda: _residual(local_raw_norms=[]), "`local_raw_norms`"),
    "text batch size": (
        lambda: _text(global_score=torch.ones(3), labels=torch.ones(3)),
        r"`local_scores\[0\]`",
    ),
    "residual batch size": (
        lambda: _residual(local_projections=[torch.zeros(3, 3)], masks=torch.zeros(3, 3)),
        r"`local_projections\[0\]`",
    ),
    "visual batch size": (
        lambda: _visual(
            adapted_norms=[_MAP, torch.zeros(3, 3)],
            raw_norms=[_MAP, torch.zeros(3, 3)],
            masks=[_MASK, torch.zeros(3, 3)],
        ),
        r"`adapted_norms\[1\]`",
    ),
    "text layer mask": (lambda: _text(masks=[_MASK * 2]), r"`masks\[0\]`"),
    "text NaN map": (lambda: _text(local_scores=[_NAN_MAP]), r"`local_scores\[0\]`"),
    "text D": (lambda: _text(raw_text=torch.ones(3)), "`raw_text`"),
    "visual NaN": (lambda: _visual(raw_norms=[_NAN_MAP]), r"`raw_norms\[0\]`"),
    "residual raw shape": (
        lambda: _residual(local_raw_norms=[torch.ones(2, 2)]),
        r"`local_raw_norms\[0\]`",
    ),
    "residual NaN raw global": (
        lambda: _residual(global_raw_norm=torch.tensor([0.0, float("nan")])),
        "`global_raw_norm`",
    ),
    "regularizer not scalar": (lambda: _residual(regularizer=torch.zeros(2)), "`regularizer`"),
    "regularizer NaN": (lambda: _residual(regularizer=torch.tensor(float("nan"))), "`regularizer`"),
    "margin NaN": (lambda: _residual(margin=float("nan")), "`margin`"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES), ids=list(BAD_VALUES))
def test_invalid_input_raises_value_error(case):
    call, name = BAD_VALUES[case]
    with pytest.raises(ValueError, match=name):
        call()


BAD_TYPES = {
    "local_scores tensor": (lambda: _text(local_scores=_MAP), "`local_scores`"),
    "adapted_norms tensor": (lambda: _visual(adapted_norms=_MAP), "`adapted_norms`"),
    "regularizer float": (lambda: _residual(regularizer=0.0), "`regularizer`"),
}


@pytest.mark.parametrize("case", list(BAD_TYPES), ids=list(BAD_TYPES))
def test_wrong_types_raise_type_error(case):
    call, name = BAD_TYPES[case]
    with pytest.raises(TypeError, match=name):
        call()


def test_checks_off_skips_validation_and_keeps_the_values():
    """With ``resad_kit.checks(False)`` the sums call the cores only: same bits, no errors."""
    x = _branch_inputs(torch.Generator().manual_seed(10))
    reg = magnitude_regularizer(x["adapted_norms"][0], x["local_norms"][0])

    def losses():
        return (
            text_branch_loss(
                x["global"], x["local"], x["adapted_text"], x["raw_text"], x["labels"], x["masks"]
            ),
            visual_branch_loss(x["adapted_norms"], x["local_norms"], x["masks"]),
            residual_branch_loss(
                x["global"],
                x["global_norm"],
                x["local"],
                x["local_norms"],
                x["labels"],
                x["masks"],
                regularizer=reg,
                margin=0.7,
                reduction="per_sample",
            ),
        )

    on = losses()
    with resad_kit.checks(False):
        off = losses()
        _text(masks=[_MASK * 2])  # a non-binary mask is not validated
        _visual(raw_norms=[_NAN_MAP])
        _residual(margin=float("nan"))
    for a, b in zip(on, off, strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="masks"):
        _text(masks=[_MASK * 2])
