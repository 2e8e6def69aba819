"""Tests for resad_kit.ops.losses (paper eqs. 13–16, 35–41).

What they prove:

* every loss equals a naive reference written here with Python loops over samples and pixels,
  for both reductions, on random shapes and label mixes (all-normal and all-anomalous batches,
  samples without anomalous or without normal pixels);
* the two reductions agree for B = 1 and differ in a constructed case;
* hinges are exactly zero, with zero gradient, in their dead zones;
* gradients are correct (``gradcheck`` in float64) and reach only the intended inputs
  (stop-gradient, detached targets);
* half-precision inputs are accepted (the branch sums of Res²CLIP are tested in
  tests/methods/test_res2clip_losses_sums.py);
* invalid input raises ``ValueError`` (``TypeError`` for wrong types) naming the argument.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from resad_kit.ops.losses import (
    direction_regularizer,
    global_hinge_loss,
    local_hinge_loss,
    magnitude_loss,
    magnitude_regularizer,
    stop_gradient_projection,
)

REDUCTIONS = ("batch", "per_sample")
MASK_DTYPES = (torch.bool, torch.int64, torch.float32, torch.float64)


# --------------------------------------------------------------------------------------------
# Naive references: Python loops, Python floats
# --------------------------------------------------------------------------------------------


def _flat(x: torch.Tensor) -> list[list[float]]:
    """(B, *S) tensor -> per-sample list of Python floats."""
    return [[float(v) for v in row.reshape(-1).tolist()] for row in x]


def naive_pixel_loss(normal_fn, anomalous_fn, columns, mask, reduction):
    """Class-balanced pixel loss by loops.

    ``columns`` is a list of (B, *S) tensors; ``normal_fn``/``anomalous_fn`` take the values
    of one pixel (one per column) and return the pixel's term.
    """
    cols = [_flat(c) for c in columns]
    m = _flat(mask)
    n_samples = len(m)

    def sample_sums(b):
        s0 = s1 = 0.0
        n0 = n1 = 0
        for p in range(len(m[b])):
            values = [c[b][p] for c in cols]
            if m[b][p] == 1.0:
                s1 += anomalous_fn(*values)
                n1 += 1
            else:
                s0 += normal_fn(*values)
                n0 += 1
        return s0, n0, s1, n1

    if reduction == "batch":
        s0 = s1 = 0.0
        n0 = n1 = 0
        for b in range(n_samples):
            a, b0, c, d = sample_sums(b)
            s0, n0, s1, n1 = s0 + a, n0 + b0, s1 + c, n1 + d
        return (s0 / n0 if n0 else 0.0) + (s1 / n1 if n1 else 0.0)
    total = 0.0
    for b in range(n_samples):
        s0, n0, s1, n1 = sample_sums(b)
        total += (s0 / n0 if n0 else 0.0) + (s1 / n1 if n1 else 0.0)
    return total / n_samples


def naive_global_hinge(scores, labels, target, reduction):
    s = [float(v) for v in scores.tolist()]
    y = [float(v) for v in labels.tolist()]
    t = (
        [float(v) for v in target.tolist()]
        if isinstance(target, torch.Tensor)
        else [target] * len(s)
    )
    if reduction == "per_sample":  # the paper's eqs. 35/37, averaged over the batch
        return sum(
            (1 - y[b]) * max(0.0, s[b]) + y[b] * max(0.0, t[b] - s[b]) for b in range(len(s))
        ) / len(s)
    n_normal = sum(1 for v in y if v == 0)
    n_anomalous = len(y) - n_normal
    normal = sum(max(0.0, s[b]) for b in range(len(s)) if y[b] == 0)
    anomalous = sum(max(0.0, t[b] - s[b]) for b in range(len(s)) if y[b] == 1)
    return (normal / n_normal if n_normal else 0.0) + (
        anomalous / n_anomalous if n_anomalous else 0.0
    )


def naive_local_hinge(score_map, mask, target, reduction):
    t = target if isinstance(target, torch.Tensor) else torch.full_like(score_map, target)
    return naive_pixel_loss(
        lambda s, _t: max(0.0, s), lambda s, t_: max(0.0, t_ - s), [score_map, t], mask, reduction
    )


def naive_magnitude(adapted, raw, mask, reduction):
    return naive_pixel_loss(
        lambda a, _r: a, lambda a, r: abs(a - r), [adapted, raw], mask, reduction
    )


def naive_direction(adapted, raw):
    a2, r2 = torch.broadcast_tensors(adapted, raw)
    a_rows = a2.reshape(-1, a2.shape[-1]).tolist()
    r_rows = r2.reshape(-1, r2.shape[-1]).tolist()
    total = 0.0
    for a, r in zip(a_rows, r_rows, strict=True):
        dot = sum(x * y for x, y in zip(a, r, strict=True))
        total += 1.0 - dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in r)))
    return total / len(a_rows)


# --------------------------------------------------------------------------------------------
# Random inputs
# --------------------------------------------------------------------------------------------


@st.composite
def pixel_cases(draw):
    """(B, *S) shape, a binary mask of a drawn mix and dtype, and a seed for the values."""
    batch = draw(st.integers(1, 4))
    spatial = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=2)))
    mix = draw(st.sampled_from(["random", "all_normal", "all_anomalous", "pure_samples"]))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, *spatial)
    if mix == "all_normal":
        mask = torch.zeros(shape)
    elif mix == "all_anomalous":
        mask = torch.ones(shape)
    else:
        mask = (torch.rand(shape, generator=gen) < draw(st.floats(0.1, 0.9))).double()
        if mix == "pure_samples":  # a sample with no anomalous and one with no normal pixels
            mask[0] = 0
            mask[-1] = 1
    mask = mask.to(draw(st.sampled_from(MASK_DTYPES)))
    return shape, mask, gen


@st.composite
def image_cases(draw):
    batch = draw(st.integers(1, 6))
    mix = draw(st.sampled_from(["random", "all_normal", "all_anomalous"]))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    if mix == "all_normal":
        labels = torch.zeros(batch)
    elif mix == "all_anomalous":
        labels = torch.ones(batch)
    else:
        labels = (torch.rand(batch, generator=gen) < 0.5).double()
    return labels.to(draw(st.sampled_from(MASK_DTYPES))), gen


def _uniform(shape, gen, low, high):
    return low + (high - low) * torch.rand(shape, generator=gen, dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# Public surface
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Against the naive references
# --------------------------------------------------------------------------------------------


@given(case=image_cases(), tensor_target=st.booleans(), reduction=st.sampled_from(REDUCTIONS))
def test_global_hinge_matches_naive(case, tensor_target, reduction):
    labels, gen = case
    scores = _uniform(labels.shape, gen, -1.5, 2.5)
    target = _uniform(labels.shape, gen, 0.0, 2.0) if tensor_target else 0.7
    got = global_hinge_loss(scores, labels, target=target, reduction=reduction)
    want = naive_global_hinge(scores, labels, target, reduction)
    assert got.shape == ()
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(want, rel=1e-12, abs=1e-12)


@given(case=pixel_cases(), tensor_target=st.booleans(), reduction=st.sampled_from(REDUCTIONS))
def test_local_hinge_matches_naive(case, tensor_target, reduction):
    shape, mask, gen = case
    score_map = _uniform(shape, gen, -1.5, 2.5)
    target = _uniform(shape, gen, 0.0, 2.0) if tensor_target else 1.0
    got = local_hinge_loss(score_map, mask, target=target, reduction=reduction)
    want = naive_local_hinge(score_map, mask, target, reduction)
    assert float(got) == pytest.approx(want, rel=1e-12, abs=1e-12)


@given(case=pixel_cases(), reduction=st.sampled_from(REDUCTIONS))
def test_magnitude_loss_matches_naive(case, reduction):
    shape, mask, gen = case
    adapted = _uniform(shape, gen, 0.0, 2.0)
    raw = _uniform(shape, gen, 0.0, 2.0)
    got = magnitude_loss(adapted, raw, mask, reduction=reduction)
    want = naive_magnitude(adapted, raw, mask, reduction)
    assert float(got) == pytest.approx(want, rel=1e-12, abs=1e-12)


@given(
    lead=st.lists(st.integers(1, 3), max_size=2),
    dim=st.integers(1, 5),
    raw_is_vector=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_direction_regularizer_matches_naive(lead, dim, raw_is_vector, seed):
    gen = torch.Generator().manual_seed(seed)
    adapted = _uniform((*lead, dim), gen, -1.0, 1.0) + 0.05  # away from the zero vector
    raw = _uniform((dim,) if raw_is_vector else (*lead, dim), gen, 0.1, 1.0)
    got = direction_regularizer(adapted, raw)
    assert float(got) == pytest.approx(naive_direction(adapted, raw), rel=1e-10, abs=1e-12)
    assert 0.0 <= float(got) <= 2.0


@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=2), seed=st.integers(0, 2**31 - 1))
def test_magnitude_regularizer_matches_naive(shape, seed):
    gen = torch.Generator().manual_seed(seed)
    adapted = _uniform(tuple(shape), gen, 0.0, 2.0)
    raw = _uniform(tuple(shape), gen, 0.0, 2.0)
    a, r = adapted.reshape(-1).tolist(), raw.reshape(-1).tolist()
    want = sum(abs(x - y) for x, y in zip(a, r, strict=True)) / len(a)
    assert float(magnitude_regularizer(adapted, raw)) == pytest.approx(want, rel=1e-12)


def test_direction_regularizer_examples():
    """Scale invariance of the cosine and the three landmarks 0 (same), 1 (⊥), 2 (opposite)."""
    raw = torch.tensor([1.0, 0.0, 0.0])
    assert float(direction_regularizer(torch.tensor([5.0, 0.0, 0.0]), raw)) == pytest.approx(0)
    assert float(direction_regularizer(torch.tensor([0.0, 2.0, 0.0]), raw)) == pytest.approx(1)
    assert float(direction_regularizer(torch.tensor([-3.0, 0.0, 0.0]), raw)) == pytest.approx(2)


@given(case=pixel_cases())
def test_mask_dtype_does_not_matter(case):
    shape, mask, gen = case
    score_map = _uniform(shape, gen, -1.0, 2.0)
    ref = local_hinge_loss(score_map, mask.bool())
    for dt in MASK_DTYPES:
        assert torch.equal(local_hinge_loss(score_map, mask.to(dt)), ref)


# --------------------------------------------------------------------------------------------
# Reductions
# --------------------------------------------------------------------------------------------


@given(case=pixel_cases(), seed=st.integers(0, 2**31 - 1))
def test_reductions_agree_for_a_single_sample(case, seed):
    shape, mask, gen = case
    mask = mask[:1]
    shape = (1, *shape[1:])
    score_map = _uniform(shape, gen, -1.5, 2.5)
    norms = _uniform(shape, gen, 0.0, 2.0)

    def both(f, *args):
        return [float(f(*args, reduction=r)) for r in REDUCTIONS]

    a, b = both(local_hinge_loss, score_map, mask)
    assert a == pytest.approx(b, rel=1e-12, abs=1e-12)
    a, b = both(magnitude_loss, norms, score_map.abs(), mask)
    assert a == pytest.approx(b, rel=1e-12, abs=1e-12)
    label = mask.reshape(1, -1).amax(1)
    a, b = both(global_hinge_loss, score_map.reshape(1, -1)[:, 0], label)
    assert a == pytest.approx(b, rel=1e-12, abs=1e-12)


def test_reductions_differ_in_a_constructed_case():
    """Pixel level: all scores 0 and target 1, so each anomalous pixel costs 1 and normal ones 0.

    Sample 0 is all normal, sample 1 has anomalous pixels. "batch" averages the anomalous
    pixels of the whole batch: 1. "per_sample" averages the samples: (0 + 1) / 2 = 0.5.
    """
    score_map = torch.zeros(2, 2, 2)
    mask = torch.zeros(2, 2, 2)
    mask[1, 0] = 1
    assert float(local_hinge_loss(score_map, mask, reduction="batch")) == pytest.approx(1.0)
    assert float(local_hinge_loss(score_map, mask, reduction="per_sample")) == pytest.approx(0.5)


def test_image_reductions_differ_in_a_constructed_case():
    """Image level: one normal image costing 1 and two anomalous images costing 1 each.

    "batch" is class-balanced: 1/1 + 2/2 = 2. "per_sample" is the plain mean: 3/3 = 1.
    """
    scores = torch.tensor([1.0, 0.0, 0.0])
    labels = torch.tensor([0, 1, 1])
    assert float(global_hinge_loss(scores, labels, reduction="batch")) == pytest.approx(2.0)
    assert float(global_hinge_loss(scores, labels, reduction="per_sample")) == pytest.approx(1.0)


def test_pixel_weighting_differs_between_reductions():
    """Per-sample counts weight a small defect like a large one; batch counts do not.

    Sample 0: 1 anomalous pixel costing 1. Sample 1: 3 anomalous pixels costing 0.
    "batch": 1/4. "per_sample": (1/1 + 0/3) / 2 = 1/2.
    """
    score_map = torch.tensor([[0.0, -1.0, -1.0, -1.0], [2.0, 2.0, 2.0, -1.0]])
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0]])
    assert float(local_hinge_loss(score_map, mask)) == pytest.approx(0.25)
    assert float(local_hinge_loss(score_map, mask, reduction="per_sample")) == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------
# Hinge dead zones
# --------------------------------------------------------------------------------------------


@given(case=pixel_cases(), tensor_target=st.booleans(), reduction=st.sampled_from(REDUCTIONS))
def test_local_hinge_zero_in_dead_zone(case, tensor_target, reduction):
    shape, mask, gen = case
    m = mask.double()
    target = _uniform(shape, gen, 0.1, 2.0) if tensor_target else 1.0
    offset = _uniform(shape, gen, 0.0, 1.0)  # normal: s = -offset <= 0; anomalous: s >= t
    score_map = ((1 - m) * -offset + m * (target + offset)).requires_grad_()
    loss = local_hinge_loss(score_map, mask, target=target, reduction=reduction)
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert torch.count_nonzero(score_map.grad) == 0


@given(case=image_cases(), tensor_target=st.booleans(), reduction=st.sampled_from(REDUCTIONS))
def test_global_hinge_zero_in_dead_zone(case, tensor_target, reduction):
    labels, gen = case
    y = labels.double()
    target = _uniform(y.shape, gen, 0.1, 2.0) if tensor_target else 1.0
    offset = _uniform(y.shape, gen, 0.0, 1.0)
    scores = ((1 - y) * -offset + y * (target + offset)).requires_grad_()
    loss = global_hinge_loss(scores, labels, target=target, reduction=reduction)
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert torch.count_nonzero(scores.grad) == 0


def test_hinge_active_outside_dead_zone():
    """The complement: a normal score above 0 and an anomalous one below target both cost."""
    scores = torch.tensor([0.25, 0.5], requires_grad=True)
    loss = global_hinge_loss(scores, torch.tensor([0, 1]), target=2.0)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(0.25 + 1.5)
    assert scores.grad.tolist() == [1.0, -1.0]


# --------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------


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
def test_gradcheck_hinges_and_magnitude(reduction):
    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])
    scores = _away_from_kinks((5,), gen).requires_grad_()
    score_map = _away_from_kinks((3, 4, 3), gen).requires_grad_()
    mask = _mixed_mask((3, 4, 3), gen)
    adapted, raw = _norm_pair((3, 4, 3), gen)
    adapted.requires_grad_()
    target_map = torch.full((3, 4, 3), 1.0, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda s: global_hinge_loss(s, labels, reduction=reduction), (scores,)
    )
    assert torch.autograd.gradcheck(
        lambda s: local_hinge_loss(s, mask, target=target_map, reduction=reduction), (score_map,)
    )
    assert torch.autograd.gradcheck(
        lambda a: magnitude_loss(a, raw, mask, reduction=reduction), (adapted,)
    )


def test_gradcheck_regularizers_and_projection():
    gen = torch.Generator().manual_seed(1)
    adapted = _uniform((4, 6), gen, -1.0, 1.0).requires_grad_()
    raw = _uniform((6,), gen, -1.0, 1.0)
    assert torch.autograd.gradcheck(lambda a: direction_regularizer(a, raw), (adapted,))
    adapted_norm, raw_norm = _norm_pair((3, 5), gen)
    adapted_norm.requires_grad_()
    assert torch.autograd.gradcheck(lambda a: magnitude_regularizer(a, raw_norm), (adapted_norm,))
    residual = _uniform((2, 3, 6), gen, -1.0, 1.0).requires_grad_()
    direction = _uniform((6,), gen, -1.0, 1.0).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda d: stop_gradient_projection(residual, d, update="text"), (direction,)
    )
    assert torch.autograd.gradcheck(
        lambda r: stop_gradient_projection(r, direction, update="visual"), (residual,)
    )


def test_targets_and_raw_inputs_receive_no_gradient():
    """Targets and raw magnitudes are constants (frozen backbone), as in the official code."""
    gen = torch.Generator().manual_seed(3)
    mask = _mixed_mask((2, 5), gen)
    labels = torch.tensor([0.0, 1.0])

    scores = _uniform((2,), gen, -1.0, 1.0).requires_grad_()
    target = _uniform((2,), gen, 1.0, 2.0).requires_grad_()
    global_hinge_loss(scores, labels, target=target).backward()
    assert target.grad is None
    assert scores.grad is not None

    score_map = _uniform((2, 5), gen, -1.0, 1.0).requires_grad_()
    target_map = _uniform((2, 5), gen, 1.0, 2.0).requires_grad_()
    local_hinge_loss(score_map, mask, target=target_map).backward()
    assert target_map.grad is None

    adapted, raw = (_uniform((2, 5), gen, 0.0, 2.0).requires_grad_() for _ in range(2))
    (magnitude_loss(adapted, raw, mask) + magnitude_regularizer(adapted, raw)).backward()
    assert raw.grad is None
    assert adapted.grad is not None

    a, r = (_uniform((2, 4), gen, -1.0, 1.0).requires_grad_() for _ in range(2))
    direction_regularizer(a, r).backward()
    assert r.grad is None
    assert a.grad is not None


# --------------------------------------------------------------------------------------------
# Stop-gradient projection
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("update", ["text", "visual"])
@pytest.mark.parametrize("direction_shape", [(6,), (2, 1, 6), (2, 3, 6)])
def test_stop_gradient_projection(update, direction_shape):
    gen = torch.Generator().manual_seed(4)
    residual = _uniform((2, 3, 6), gen, -1.0, 1.0).requires_grad_()
    direction = _uniform(direction_shape, gen, -1.0, 1.0).requires_grad_()
    weights = _uniform((2, 3), gen, -1.0, 1.0)

    got = stop_gradient_projection(residual, direction, update=update)
    (got * weights).sum().backward()

    r_ref = residual.detach().clone().requires_grad_()
    d_ref = direction.detach().clone().requires_grad_()
    plain = (r_ref * (d_ref / d_ref.norm(dim=-1, keepdim=True))).sum(-1)
    (plain * weights).sum().backward()

    torch.testing.assert_close(got, plain, rtol=1e-12, atol=1e-12)
    if update == "text":  # sg(residual) · d̂: only the text side learns
        assert residual.grad is None
        torch.testing.assert_close(direction.grad, d_ref.grad)
        assert direction.grad.abs().sum() > 0
    else:  # residual · sg(d̂): only the visual side learns
        assert direction.grad is None
        torch.testing.assert_close(residual.grad, r_ref.grad)
        assert residual.grad.abs().sum() > 0


def test_projection_keeps_magnitude():
    """The residual is not normalised: scaling it scales the projection (eq. 39)."""
    residual = torch.tensor([[3.0, 4.0]])
    direction = torch.tensor([3.0, 4.0])
    assert float(stop_gradient_projection(residual, direction, update="visual")) == 5.0
    assert float(stop_gradient_projection(2 * residual, 7 * direction, update="text")) == 10.0


def test_float64_in_float64_out_and_float32_default():
    s = torch.tensor([0.5, -0.5])
    y = torch.tensor([1, 0])
    assert global_hinge_loss(s, y).dtype == torch.float32
    assert global_hinge_loss(s.double(), y).dtype == torch.float64
    assert global_hinge_loss(s, y, target=torch.ones(2, dtype=torch.float64)).dtype == (
        torch.float64
    )
    assert stop_gradient_projection(
        torch.ones(2, 3).half(), torch.ones(3), update="text"
    ).dtype == (torch.float32)


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


BAD_VALUES = {
    "non-binary labels": (lambda: global_hinge_loss(_S, torch.tensor([0, 2])), "`labels`"),
    "soft labels": (lambda: global_hinge_loss(_S, torch.tensor([0.0, 0.5])), "`labels`"),
    "non-binary mask": (lambda: local_hinge_loss(_MAP, _MASK * 0.7), "`mask`"),
    "NaN scores": (lambda: global_hinge_loss(torch.tensor([0.0, float("nan")]), _Y), "`scores`"),
    "NaN map": (lambda: local_hinge_loss(_NAN_MAP, _MASK), "`score_map`"),
    "inf target": (lambda: global_hinge_loss(_S, _Y, target=float("inf")), "`target`"),
    "NaN target map": (lambda: local_hinge_loss(_MAP, _MASK, target=_NAN_MAP), "`target`"),
    "labels shape": (lambda: global_hinge_loss(_S, torch.tensor([0, 1, 1])), "`labels`"),
    "scores 2-d": (lambda: global_hinge_loss(_MAP, _MASK), "`scores`"),
    "target shape": (lambda: global_hinge_loss(_S, _Y, target=torch.ones(3)), "`target`"),
    "mask shape": (lambda: local_hinge_loss(_MAP, _MASK[:, :2]), "`mask`"),
    "map 1-d": (lambda: local_hinge_loss(_S, _Y), "`score_map`"),
    "empty map": (lambda: local_hinge_loss(torch.zeros(0, 3), torch.zeros(0, 3)), "`score_map`"),
    "raw norm shape": (lambda: magnitude_loss(_MAP, _MAP[:, :2], _MASK), "`raw_norm`"),
    "negative norm": (lambda: magnitude_loss(_MAP - 1, _MAP, _MASK), "`adapted_norm`"),
    "NaN raw norm": (lambda: magnitude_regularizer(_MAP, _NAN_MAP), "`raw_norm`"),
    "direction D": (lambda: direction_regularizer(torch.ones(2, 4), torch.ones(3)), "`raw`"),
    "projection D": (
        lambda: stop_gradient_projection(torch.ones(2, 4), torch.ones(3), update="text"),
        "`direction`",
    ),
    "projection broadcast": (
        lambda: stop_gradient_projection(torch.ones(2, 4), torch.ones(3, 4), update="text"),
        "`direction`",
    ),
    "wrong update": (
        lambda: stop_gradient_projection(torch.ones(4), torch.ones(4), update="both"),
        "`update`",
    ),
    "wrong reduction": (lambda: global_hinge_loss(_S, _Y, reduction="mean"), "`reduction`"),
    "wrong reduction map": (lambda: local_hinge_loss(_MAP, _MASK, reduction="sum"), "`reduction`"),
    "integer scores": (lambda: global_hinge_loss(torch.tensor([0, 1]), _Y), "`scores`"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES), ids=list(BAD_VALUES))
def test_invalid_input_raises_value_error(case):
    call, name = BAD_VALUES[case]
    with pytest.raises(ValueError, match=name):
        call()


BAD_TYPES = {
    "scores list": (lambda: global_hinge_loss([0.1, 0.2], _Y), "`scores`"),
    "target string": (lambda: global_hinge_loss(_S, _Y, target="1"), "`target`"),
}


@pytest.mark.parametrize("case", list(BAD_TYPES), ids=list(BAD_TYPES))
def test_wrong_types_raise_type_error(case):
    call, name = BAD_TYPES[case]
    with pytest.raises(TypeError, match=name):
        call()
