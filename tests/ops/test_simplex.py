"""Sparsemax: properties (Res²CLIP App. C, Eq. 33), the entmax reference, gradients, bad input."""

from __future__ import annotations

import math

import entmax
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from resad_kit.ops import sparsemax, sparsemax_threshold
from resad_kit.ops._sorted_support import AUTO_K, sorted_support

finite = st.floats(-50, 50, allow_nan=False, width=32)


@st.composite
def matrices(draw, elements=finite, max_rows=5, max_cols=40, neg_inf=False):
    """(rows, cols) float32 matrices; optionally with -inf entries (never a whole row)."""
    shape = (draw(st.integers(1, max_rows)), draw(st.integers(1, max_cols)))
    x = torch.from_numpy(draw(arrays(np.float32, shape, elements=elements)))
    if neg_inf and shape[1] > 1:
        mask = torch.from_numpy(draw(arrays(np.bool_, shape)))
        mask[:, 0] = False
        x = x.masked_fill(mask, -math.inf)
    return x


@given(matrices(neg_inf=True))
def test_simplex_point_nonnegative_and_sums_to_one(x):
    p = sparsemax(x)
    assert (p >= 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(x.shape[0]), atol=1e-5, rtol=0)
    assert (p[torch.isneginf(x)] == 0).all()


@given(matrices(), st.floats(-100, 100))
def test_translation_invariance(x, c):
    torch.testing.assert_close(sparsemax(x + c), sparsemax(x), atol=2e-5, rtol=0)


@given(matrices(neg_inf=True))
def test_preserves_order(x):
    p = sparsemax(x)
    greater = x[:, :, None] > x[:, None, :]
    assert (p[:, :, None] >= p[:, None, :])[greater].all()


@given(matrices(neg_inf=True))
def test_equals_clamp_of_x_minus_threshold(x):
    tau = sparsemax_threshold(x)
    assert tau.shape == (x.shape[0], 1)
    torch.testing.assert_close((x - tau).clamp(min=0), sparsemax(x), atol=1e-5, rtol=0)


@given(matrices())
def test_idempotent_on_simplex_points(x):
    p = sparsemax(x)
    torch.testing.assert_close(sparsemax(p), p, atol=1e-6, rtol=0)


@given(matrices(neg_inf=True), st.one_of(st.integers(1, 45), st.just("auto")))
def test_top_k_equals_sort_for_every_k(x, k):
    assert torch.equal(sparsemax(x, k=k), sparsemax(x))
    assert torch.equal(sparsemax_threshold(x, k=k), sparsemax_threshold(x))


@st.composite
def mixed_support_rows(draw):
    """Rows of 70–300 entries whose supports range from 1 to all entries (row-wise scales)."""
    cols = draw(st.integers(70, 300))
    scales = draw(st.lists(st.sampled_from([1e-4, 0.01, 0.05, 0.3, 3.0]), min_size=1, max_size=6))
    seed = draw(st.integers(0, 2**16))
    x = torch.randn(len(scales), cols, generator=torch.Generator().manual_seed(seed))
    return x * torch.tensor(scales)[:, None]


@given(mixed_support_rows(), st.sampled_from([1, 3, 16, "auto"]))
def test_adaptive_rounds_equal_sort(x, k):
    """Rows resolved in the first, a later, or the full-sort round: all bit-identical."""
    assert torch.equal(sparsemax(x, k=k), sparsemax(x))
    assert torch.equal(sparsemax_threshold(x, k=k), sparsemax_threshold(x))


@given(mixed_support_rows(), st.sampled_from([None, 1, 5, "auto"]))
def test_sorted_support_is_a_prefix_of_the_sort(x, k):
    top = sorted_support(x, k)
    full = sorted_support(x, None)
    width = int(full.support.max())
    assert torch.equal(top.tau, full.tau)
    assert torch.equal(top.support, full.support)
    assert top.values.shape == top.indices.shape == (x.shape[0], width)
    assert torch.equal(x.gather(-1, top.indices), top.values)
    sorted_x = x.sort(dim=-1, descending=True).values[:, :width]
    within = torch.arange(width) < top.support  # entries past a row's support are unspecified
    assert torch.equal(top.values[within], sorted_x[within])


def test_auto_start_width_takes_wide_supports_in_one_more_round(monkeypatch):
    """A support of 141 > AUTO_K: one extra round on that row only, not a doubling chain."""
    calls = []
    original = torch.Tensor.topk

    def spy(self, k, *args, **kwargs):
        calls.append((self.shape[0], k))
        return original(self, k, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "topk", spy)
    x = torch.cat([torch.linspace(0, -0.1, 1000)[None], torch.linspace(0, -5, 1000)[None]])
    expected = sorted_support(x, None).support
    assert expected[0] > AUTO_K > expected[1]
    assert torch.equal(sorted_support(x, "auto").support, expected)
    assert calls[0] == (2, AUTO_K)
    assert len(calls) == 2
    assert calls[1][0] == 1
    assert calls[1][1] > expected[0]


@given(matrices(elements=st.sampled_from([-1.0, 0.0, 0.25, 0.5, 2.0])), st.integers(1, 8))
def test_ties_top_k_and_entmax(x, k):
    """Many exact ties (including at the top-k boundary)."""
    expected = entmax.sparsemax(x.double(), dim=-1).float()
    torch.testing.assert_close(sparsemax(x), expected, atol=1e-6, rtol=0)
    assert torch.equal(sparsemax(x, k=k), sparsemax(x))


@given(matrices(elements=st.floats(-1e6, 1e6, width=32)))
def test_equals_entmax_reference(x):
    expected = entmax.sparsemax(x.double(), dim=-1)
    torch.testing.assert_close(sparsemax(x.double()), expected, atol=1e-9, rtol=0)
    torch.testing.assert_close(sparsemax(x), expected.float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("name", "x"),
    [
        ("huge", torch.randn(6, 300, generator=torch.Generator().manual_seed(0)) * 1e30),
        ("tiny", torch.randn(6, 300, generator=torch.Generator().manual_seed(1)) * 1e-30),
        ("near-equal", 1e4 + torch.randn(6, 300, generator=torch.Generator().manual_seed(2))),
        ("one-column", torch.randn(6, 1)),
        ("constant", torch.full((3, 7), 3.5)),
    ],
)
def test_adversarial_inputs_equal_entmax(name, x):
    expected = entmax.sparsemax(x.double(), dim=-1)
    torch.testing.assert_close(sparsemax(x), expected.float(), atol=1e-5, rtol=0)
    assert torch.equal(sparsemax(x, k=4), sparsemax(x))


def test_closed_forms():
    """App. C closed form: one-hot for a gap ≥ 1, uniform for equal entries, the 2-entry form."""
    assert torch.equal(sparsemax(torch.tensor([3.0, 2.0, 0.5])), torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(sparsemax(torch.zeros(5)), torch.full((5,), 0.2))
    t = torch.linspace(-3, 3, 61, dtype=torch.float64)
    first = ((t + 1) / 2).clamp(0, 1)
    out = sparsemax(torch.stack([t, torch.zeros_like(t)], dim=-1))
    torch.testing.assert_close(out, torch.stack([first, 1 - first], dim=-1))
    assert torch.equal(sparsemax(torch.tensor([[7.0]])), torch.tensor([[1.0]]))


@pytest.mark.parametrize("dim", [0, 1, 2, -1, -2, -3])
@pytest.mark.parametrize("k", [None, 3])
def test_any_dim_equals_last_dim_after_movedim(dim, k):
    x = torch.randn(4, 5, 6, generator=torch.Generator().manual_seed(3))
    expected = sparsemax(x.movedim(dim, -1)).movedim(-1, dim)
    assert torch.equal(sparsemax(x, dim=dim, k=k), expected)
    tau = sparsemax_threshold(x, dim=dim, k=k)
    assert tau.shape[dim] == 1
    torch.testing.assert_close((x - tau).clamp(min=0), expected, atol=1e-6, rtol=0)


def test_half_precision_inputs(dtype, device):
    x = torch.randn(8, 50, generator=torch.Generator().manual_seed(4)).to(device)
    p = sparsemax(x.to(dtype))
    assert p.dtype == dtype
    assert p.device.type == device.type
    reference = sparsemax(x.to(dtype).float())  # same input values, float32 maths
    torch.testing.assert_close(p.float(), reference.to(dtype).float(), atol=0, rtol=0)
    assert sparsemax_threshold(x.to(dtype)).dtype == torch.float32


@pytest.mark.parametrize("dim", [0, -1])
@pytest.mark.parametrize("k", [None, 1, 2])
def test_gradcheck_float64(dim, k):
    x = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: sparsemax(t, dim=dim, k=k), (x,))


@given(matrices(elements=st.floats(-3, 3, width=32)))
def test_backward_is_closed_form_jacobian(x):
    """J = diag(s) − s sᵀ/|S| (Martins & Astudillo), applied to a random cotangent."""
    x = x.double().requires_grad_(True)
    p = sparsemax(x)
    v = torch.linspace(-1, 1, x.numel(), dtype=torch.float64).reshape(x.shape)
    (grad,) = torch.autograd.grad(p, x, v)
    s = (p > 0).double()
    expected = s * (v - (s * v).sum(-1, keepdim=True) / s.sum(-1, keepdim=True))
    torch.testing.assert_close(grad, expected)
    assert (grad.sum(-1).abs() < 1e-9).all()  # J·1 = 0 and J symmetric ⇒ 1ᵀJv = 0


def test_gradient_matches_entmax_autograd():
    x = torch.randn(7, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    v = torch.randn_like(x)
    (sparsemax(a) * v).sum().backward()
    (entmax.sparsemax(b, dim=-1) * v).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_neg_inf_entries_get_zero_weight_and_zero_gradient():
    x = torch.tensor([[0.2, -math.inf, 0.1], [-math.inf, -math.inf, 1.0]], requires_grad=True)
    p = sparsemax(x)
    torch.testing.assert_close(p, torch.tensor([[0.55, 0.0, 0.45], [0.0, 0.0, 1.0]]))
    assert (p[torch.isneginf(x)] == 0).all()
    p[:, 0].sum().backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad[torch.isneginf(x)] == 0).all()


@pytest.mark.parametrize(
    ("x", "kwargs", "match"),
    [
        (torch.tensor([0.0, math.nan]), {}, "NaN"),
        (torch.tensor([0.0, math.inf]), {}, r"\+inf"),
        (torch.tensor([[0.0, 1.0], [-math.inf, -math.inf]]), {}, "finite entry"),
        (torch.zeros(3, 0), {}, "at least one entry"),
        (torch.zeros(3), {"k": 0}, "`k`"),
        (torch.zeros(3), {"k": True}, "`k`"),
        (torch.zeros(3), {"k": "fast"}, "`k`"),
        (torch.zeros(3), {"dim": 1}, "`dim`"),
        (torch.tensor(1.0), {}, "at least 1 dimension"),
        (torch.arange(3), {}, "float"),
    ],
)
@pytest.mark.parametrize("fn", [sparsemax, sparsemax_threshold])
def test_bad_input_raises_value_error(fn, x, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fn(x, **kwargs)


def test_non_tensor_raises_type_error():
    with pytest.raises(TypeError, match=r"`x` must be a torch\.Tensor"):
        sparsemax([1.0, 2.0])


@pytest.mark.gpu
def test_cuda_matches_cpu():
    x = torch.randn(64, 5476, generator=torch.Generator().manual_seed(7))
    for k in (None, 128, "auto"):
        torch.testing.assert_close(sparsemax(x.cuda(), k=k).cpu(), sparsemax(x), atol=1e-6, rtol=0)
