"""Patch alignment loss (resad_kit.ops.alignment_loss; AF-CLIP Eq. 14).

The reference is a naive loop over every ordered pair of patches of each image, written here
from the definition (the official code's B×N×N similarity with pooled masked means), in
float64 with cosines computed by ``math``.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck

import resad_kit
from resad_kit.ops._validation import VALUE_CHECKS_RUN
from resad_kit.ops.losses import patch_alignment_loss


def _cos(u: list[float], v: list[float]) -> float:
    dot = sum(a * b for a, b in zip(u, v, strict=True))
    return dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))


def _naive(tokens: torch.Tensor, labels: torch.Tensor) -> float:
    """max(0, mean N-A cos − mean same-class cos), pairs within each image, pooled means."""
    cross, same = [], []
    for z, y in zip(tokens.tolist(), labels.tolist(), strict=True):
        for i in range(len(z)):
            for j in range(len(z)):
                (same if y[i] == y[j] else cross).append(_cos(z[i], z[j]))
    if not cross:
        return 0.0
    return max(0.0, sum(cross) / len(cross) - sum(same) / len(same))


def _case(seed: int, b: int, n: int, d: int, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(b, n, d, generator=g, dtype=torch.float64)
    labels = (torch.rand(b, n, generator=g) < p).long()
    return tokens, labels


cases = st.tuples(
    st.integers(0, 10_000),
    st.integers(1, 4),
    st.integers(1, 7),
    st.integers(1, 5),
    st.sampled_from([0.0, 0.2, 0.5, 0.9, 1.0]),
)


@settings(max_examples=40, deadline=None)
@given(case=cases)
def test_equals_naive_pair_loop(case):
    """The sums-of-unit-vectors form equals the explicit loop over all pairs."""
    tokens, labels = _case(*case)
    got = patch_alignment_loss(tokens, labels)
    assert got.dtype == torch.float64
    assert got.shape == ()
    torch.testing.assert_close(got, torch.tensor(_naive(tokens, labels), dtype=torch.float64))


def test_positive_loss_equals_naive_and_pools_over_the_batch():
    """A batch with a positive gap: the value equals the loop, and pooling differs from the
    mean of per-image losses (image 1, all normal, only adds same-class pairs)."""
    mixed = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8]], dtype=torch.float64)
    normal = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    tokens = torch.stack([mixed, normal])
    labels = torch.tensor([[0, 1, 1], [0, 0, 0]])
    # N-A: 2·(0.6 + 0.6) / 4 = 0.6; same: (‖n₀‖² + ‖a₀‖² + ‖n₁‖²) / (1 + 4 + 9)
    # = (1 + 1.2² + 1) / 14, where n₁ = (0, 1) sums image 1's tokens.
    want = 0.6 - 3.44 / 14
    torch.testing.assert_close(patch_alignment_loss(tokens, labels), torch.tensor(want).double())
    assert _naive(tokens, labels) == pytest.approx(want)
    alone = patch_alignment_loss(tokens[:1], labels[:1])
    torch.testing.assert_close(alone, torch.tensor(0.6 - 2.44 / 5).double())
    assert abs(float(alone) / 2 - want) > 0.05  # not a per-image mean


@settings(max_examples=25, deadline=None)
@given(case=cases)
def test_non_negative_bounded_and_label_swap_symmetric(case):
    """0 ≤ L ≤ 1 (N-A cosines ≤ 1, same-class mean ≥ 0); swapping the labels changes nothing."""
    tokens, labels = _case(*case)
    loss = patch_alignment_loss(tokens, labels)
    assert 0.0 <= float(loss) <= 1.0
    torch.testing.assert_close(patch_alignment_loss(tokens, 1 - labels), loss)
    assert torch.equal(patch_alignment_loss(tokens, labels.bool()), loss)


@settings(max_examples=25, deadline=None)
@given(case=cases, scale=st.floats(0.1, 10.0))
def test_invariant_to_token_scale_and_to_patch_and_image_order(case, scale):
    """Only directions matter; permuting patches (with their labels) or images changes nothing."""
    tokens, labels = _case(*case)
    loss = patch_alignment_loss(tokens, labels)
    g = torch.Generator().manual_seed(case[0])
    perm = torch.randperm(tokens.shape[1], generator=g)
    images = torch.randperm(tokens.shape[0], generator=g)
    torch.testing.assert_close(patch_alignment_loss(scale * tokens, labels), loss)
    torch.testing.assert_close(patch_alignment_loss(tokens[:, perm], labels[:, perm]), loss)
    torch.testing.assert_close(patch_alignment_loss(tokens[images], labels[images]), loss)


@pytest.mark.parametrize("fill", [0, 1])
def test_exactly_zero_without_normal_anomalous_pair_and_backward_works(fill):
    """All-normal or all-anomalous images (no N-A pair): exactly 0, attached to the graph."""
    tokens = torch.randn(3, 5, 4, requires_grad=True)
    labels = torch.full((3, 5), fill)
    labels[1] = 1 - fill  # another image of the other class: still no pair within an image
    loss = patch_alignment_loss(tokens, labels)
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert torch.equal(tokens.grad, torch.zeros_like(tokens))


def test_gradcheck_float64():
    """Gradients match finite differences where the hinge is active (float64)."""
    tokens = torch.tensor(
        [[[1.0, 0.1], [0.6, 0.8], [0.6, -0.8]], [[0.3, 1.0], [-1.0, 0.2], [0.5, -1.0]]],
        dtype=torch.float64,
        requires_grad=True,
    )
    labels = torch.tensor([[0, 1, 1], [0, 0, 0]])
    assert patch_alignment_loss(tokens, labels).item() > 0.01  # away from the kink
    assert gradcheck(lambda z: patch_alignment_loss(z, labels), (tokens,))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_tokens_are_computed_in_float32(dtype):
    tokens, labels = _case(5, 2, 6, 4, 0.5)
    half = tokens.to(dtype)
    loss = patch_alignment_loss(half, labels)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, patch_alignment_loss(half.float(), labels))


@pytest.mark.parametrize(
    ("tokens", "labels", "error", "match"),
    [
        (torch.zeros(2, 3), torch.zeros(2, 3), ValueError, "`tokens` must have 3 dimensions"),
        (torch.zeros(2, 3, 4).long(), torch.zeros(2, 3), ValueError, "float16"),
        (torch.full((1, 2, 2), float("inf")), torch.zeros(1, 2), ValueError, "must be finite"),
        (torch.zeros(2, 3, 4), torch.zeros(2, 4), ValueError, r"`labels` must have shape"),
        (torch.zeros(2, 3, 4), torch.full((2, 3), 0.5), ValueError, "must be binary"),
        (torch.zeros(2, 3, 4), [[0, 1, 0]], TypeError, "`labels` must be a torch.Tensor"),
        (None, torch.zeros(2, 3), TypeError, "`tokens` must be a torch.Tensor"),
    ],
)
def test_invalid_inputs_raise_named_errors(tokens, labels, error, match):
    with pytest.raises(error, match=match):
        patch_alignment_loss(tokens, labels)


def test_checks_off_runs_the_core_without_value_checks():
    tokens, labels = _case(7, 2, 9, 3, 0.4)
    checked = patch_alignment_loss(tokens, labels)
    before = VALUE_CHECKS_RUN["patch_alignment_loss"]
    assert before > 0
    with resad_kit.checks(False):
        unchecked = patch_alignment_loss(tokens, labels)
    assert VALUE_CHECKS_RUN["patch_alignment_loss"] == before
    assert torch.equal(unchecked, checked)
