"""Tests for resad_kit.ops.residuals: text, visual and global residuals (eqs. 3, 17, 32)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from resad_kit.ops.residuals import (
    global_residual,
    prompt_ensemble_mean,
    text_residual,
    visual_residual,
)

TOL = {
    torch.float16: {"rtol": 2e-3, "atol": 2e-3},
    torch.bfloat16: {"rtol": 2e-2, "atol": 2e-2},
    torch.float32: {"rtol": 1e-5, "atol": 1e-6},
    torch.float64: {"rtol": 1e-12, "atol": 1e-12},
}


def vectors(dim: st.SearchStrategy[int] | None = None, lead: int = 0) -> st.SearchStrategy:
    """Float64 arrays of shape (lead..., D) with moderate entries."""
    elements = st.floats(-10.0, 10.0, allow_nan=False, allow_infinity=False)
    d = dim if dim is not None else st.integers(1, 12)
    return d.flatmap(lambda n: arrays(np.float64, (lead, n) if lead else (n,), elements=elements))


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a)


def _ref_unit(x: torch.Tensor) -> torch.Tensor:
    """Independent normalisation in float64 (zero vectors stay zero)."""
    x = x.double()
    n = torch.sqrt((x * x).sum(-1, keepdim=True))
    return torch.where(n > 0, x / torch.where(n > 0, n, torch.ones_like(n)), torch.zeros_like(x))


# --------------------------------------------------------------------------- prompt_ensemble_mean


def test_prompt_ensemble_mean_raw_and_normalized_by_hand() -> None:
    e = torch.tensor([[3.0, 4.0], [0.0, 2.0], [6.0, 8.0]])
    torch.testing.assert_close(prompt_ensemble_mean(e), torch.tensor([3.0, 14.0 / 3.0]))
    torch.testing.assert_close(
        prompt_ensemble_mean(e, normalize_each=True),
        torch.tensor([(0.6 + 0.0 + 0.6) / 3, (0.8 + 1.0 + 0.8) / 3]),
    )


def test_prompt_ensemble_mean_is_not_renormalized() -> None:
    torch.manual_seed(0)
    e = torch.randn(75, 768)
    out = prompt_ensemble_mean(e, normalize_each=True)
    assert float(out.norm()) < 0.99  # a mean of unit vectors in different directions


def test_prompt_ensemble_mean_shapes_dtype_device(device: torch.device, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    e = torch.randn(2, 3, 15, 16, device=device).to(dtype)
    for flag in (False, True):
        out = prompt_ensemble_mean(e, normalize_each=flag)
        assert out.shape == (2, 3, 16)
        assert out.dtype == dtype
        assert out.device.type == device.type
        x = _ref_unit(e) if flag else e.double()
        torch.testing.assert_close(out.double(), x.mean(-2), **TOL[dtype])


def test_prompt_ensemble_mean_errors() -> None:
    with pytest.raises(ValueError, match=r"prompt_ensemble_mean.*`embeddings`.*\(\.\.\., P, D\)"):
        prompt_ensemble_mean(torch.ones(4))
    with pytest.raises(ValueError, match="`embeddings` must not be empty"):
        prompt_ensemble_mean(torch.ones(0, 4))
    with pytest.raises(ValueError, match="`embeddings` must be finite"):
        prompt_ensemble_mean(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(TypeError, match=r"`embeddings` must be a torch\.Tensor"):
        prompt_ensemble_mean([[1.0, 2.0]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`eps` must be positive"):
        prompt_ensemble_mean(torch.ones(2, 2), eps=0.0)


# --------------------------------------------------------------------------- text_residual


def test_text_residual_by_hand_unit_vs_not() -> None:
    fa = torch.tensor([0.0, 2.0, 0.0])
    fn = torch.tensor([3.0, 0.0, 0.0])
    r = text_residual(fa, fn)
    torch.testing.assert_close(r, torch.tensor([-1.0, 1.0, 0.0]))
    assert math.isclose(float(r.norm()), math.sqrt(2.0), rel_tol=1e-6)  # not unit norm
    ru = text_residual(fa, fn, unit=True)
    torch.testing.assert_close(ru, r / math.sqrt(2.0))
    assert math.isclose(float(ru.norm()), 1.0, rel_tol=1e-6)


@given(a=vectors(st.just(6)), n=vectors(st.just(6)))
def test_text_residual_norm_and_unit_direction(a: np.ndarray, n: np.ndarray) -> None:
    ta, tn = _t(a), _t(n)
    assume(float(ta.norm()) > 1e-3 and float(tn.norm()) > 1e-3)
    cos = float(_ref_unit(ta) @ _ref_unit(tn))
    assume(cos < 1 - 1e-6)
    r = text_residual(ta, tn)
    # ‖F̂^a − F̂^n‖ = sqrt(2 − 2 cos), independent of anchor scale
    assert math.isclose(float(r.norm()), math.sqrt(2 - 2 * cos), rel_tol=1e-9, abs_tol=1e-9)
    torch.testing.assert_close(text_residual(3.0 * ta, 0.5 * tn), r)
    ru = text_residual(ta, tn, unit=True)
    torch.testing.assert_close(ru, r / r.norm())


def test_text_residual_identical_anchors() -> None:
    torch.manual_seed(0)
    a = torch.randn(768)
    assert torch.equal(text_residual(a, a.clone()), torch.zeros(768))
    with pytest.raises(ValueError, match=r"text_residual.*same direction.*unit=True"):
        text_residual(a, a.clone(), unit=True)
    with pytest.raises(ValueError, match="same direction"):
        text_residual(a, 3.0 * a, unit=True)  # same direction, different scale
    with pytest.raises(ValueError, match="same direction"):  # one degenerate row in a batch
        text_residual(torch.stack([a, a]), torch.stack([a, torch.randn(768)]), unit=True)


def test_text_residual_broadcast_dtype_device(device: torch.device, dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    fa = torch.randn(4, 32, device=device).to(dtype)
    fn = torch.randn(32, device=device).to(dtype)
    r = text_residual(fa, fn)
    assert r.shape == (4, 32)
    assert r.dtype == dtype
    assert r.device.type == device.type
    torch.testing.assert_close(r.double(), _ref_unit(fa) - _ref_unit(fn), **TOL[dtype])
    ru = text_residual(fa, fn, unit=True)
    assert ru.dtype == dtype
    torch.testing.assert_close(
        ru.double().norm(dim=-1), torch.ones(4, dtype=torch.float64), **TOL[dtype]
    )


def test_text_residual_mixed_dtypes_promote() -> None:
    r = text_residual(torch.ones(3, dtype=torch.float16), torch.eye(3)[0])
    assert r.dtype == torch.float32
    r64 = text_residual(torch.ones(3, dtype=torch.float64), torch.eye(3)[0])
    assert r64.dtype == torch.float64


def test_text_residual_errors() -> None:
    with pytest.raises(ValueError, match=r"text_residual.*same channel size.*\(3,\).*\(4,\)"):
        text_residual(torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError, match=r"`anomalous` and `normal` must be broadcastable"):
        text_residual(torch.ones(2, 3), torch.ones(5, 3))
    with pytest.raises(ValueError, match="`normal` must not be empty"):
        text_residual(torch.ones(3), torch.ones(0))
    with pytest.raises(ValueError, match="`anomalous` must have at least 1 dimensions"):
        text_residual(torch.tensor(1.0), torch.ones(3))
    with pytest.raises(ValueError, match="`anomalous` must be finite; got 1 NaN"):
        text_residual(torch.tensor([1.0, float("nan")]), torch.ones(2))
    with pytest.raises(ValueError, match="`normal` must be finite; got 0 NaN and 1 infinite"):
        text_residual(torch.ones(2), torch.tensor([1.0, float("inf")]))
    with pytest.raises(ValueError, match="`anomalous` must be float"):
        text_residual(torch.ones(2, dtype=torch.int64), torch.ones(2))


# --------------------------------------------------------------------------- visual_residual


def test_visual_residual_by_hand_and_zero_vectors() -> None:
    q = torch.tensor([[0.0, 5.0], [0.0, 0.0]])
    ref = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    torch.testing.assert_close(visual_residual(q, ref), torch.tensor([[-1.0, 1.0], [-1.0, 0.0]]))


def test_visual_residual_shapes_dtype_device(device: torch.device, dtype: torch.dtype) -> None:
    torch.manual_seed(2)
    q = torch.randn(2, 37 * 37, 64, device=device).to(dtype)
    ref = torch.randn(2, 37 * 37, 64, device=device).to(dtype)
    r = visual_residual(q, ref)
    assert r.shape == q.shape
    assert r.dtype == dtype
    assert r.device.type == device.type
    torch.testing.assert_close(r.double(), _ref_unit(q) - _ref_unit(ref), **TOL[dtype])
    # a reference shared by the whole batch broadcasts
    r_shared = visual_residual(q, ref[0])
    torch.testing.assert_close(
        r_shared[1].double(), _ref_unit(q[1]) - _ref_unit(ref[0]), **TOL[dtype]
    )


@given(q=vectors(st.just(5)), ref=vectors(st.just(5)))
def test_visual_residual_antisymmetric_and_bounded(q: np.ndarray, ref: np.ndarray) -> None:
    tq, tr = _t(q), _t(ref)
    r = visual_residual(tq, tr)
    torch.testing.assert_close(visual_residual(tr, tq), -r)
    assert float(r.norm()) <= 2.0 + 1e-12
    # scale-free, for vectors well above the normalisation floor eps = 1e-12
    assume(float(tq.norm()) > 1e-6 and float(tr.norm()) > 1e-6)
    torch.testing.assert_close(visual_residual(2.5 * tq, 0.1 * tr), r)


def test_visual_residual_errors() -> None:
    with pytest.raises(ValueError, match=r"visual_residual.*`query` and `reference`.*same channel"):
        visual_residual(torch.ones(2, 5, 8), torch.ones(2, 5, 7))
    with pytest.raises(ValueError, match=r"must be broadcastable.*\(2, 5, 8\).*\(3, 8\)"):
        visual_residual(torch.ones(2, 5, 8), torch.ones(3, 8))
    with pytest.raises(ValueError, match="`query` must not be empty"):
        visual_residual(torch.ones(0, 8), torch.ones(8))
    with pytest.raises(ValueError, match="`reference` must be finite"):
        visual_residual(torch.ones(8), torch.full((8,), float("nan")))
    with pytest.raises(TypeError, match=r"`reference` must be a torch\.Tensor"):
        visual_residual(torch.ones(8), np.ones(8))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- global_residual


def test_global_residual_normalized_by_hand() -> None:
    torch.manual_seed(3)
    q = torch.randn(768, dtype=torch.float64)
    refs = torch.randn(4, 768, dtype=torch.float64)
    # f̂_q − normalize(mean_k f̂^(k)), written out with explicit norms
    unit_refs = refs / refs.norm(dim=-1, keepdim=True)
    mean = unit_refs.sum(0) / 4
    expected = q / q.norm() - mean / mean.norm()
    torch.testing.assert_close(global_residual(q, refs), expected)


def test_global_residual_raw_by_hand() -> None:
    q = torch.tensor([1.0, 2.0, 3.0])
    refs = torch.tensor([[1.0, 0.0, 1.0], [3.0, 2.0, 1.0]])
    # f_q − (1/K) Σ f^(k) = [1,2,3] − [2,1,1]
    torch.testing.assert_close(
        global_residual(q, refs, normalized=False), torch.tensor([-1.0, 1.0, 2.0])
    )
    # the normalised form differs (it is scale-free)
    assert not torch.allclose(global_residual(q, refs), torch.tensor([-1.0, 1.0, 2.0]))
    torch.testing.assert_close(global_residual(10 * q, 0.1 * refs), global_residual(q, refs))


def test_global_residual_k1_equals_visual_residual() -> None:
    torch.manual_seed(4)
    q, ref = torch.randn(3, 32), torch.randn(3, 1, 32)
    torch.testing.assert_close(global_residual(q, ref), visual_residual(q, ref[:, 0]))


def test_global_residual_shared_and_batched_refs(device: torch.device, dtype: torch.dtype) -> None:
    torch.manual_seed(5)
    q = torch.randn(3, 16, device=device).to(dtype)
    refs = torch.randn(2, 16, device=device).to(dtype)
    for normalized in (True, False):
        shared = global_residual(q, refs, normalized=normalized)
        batched = global_residual(q, refs.expand(3, 2, 16), normalized=normalized)
        assert shared.shape == (3, 16)
        assert shared.dtype == dtype
        assert shared.device.type == device.type
        torch.testing.assert_close(shared, batched)
    ref = _ref_unit(q) - _ref_unit(_ref_unit(refs).mean(0))
    torch.testing.assert_close(global_residual(q, refs).double(), ref, **TOL[dtype])


def test_global_residual_errors() -> None:
    with pytest.raises(ValueError, match=r"global_residual.*`references`.*\(\.\.\., K, D\)"):
        global_residual(torch.ones(8), torch.ones(8))
    with pytest.raises(ValueError, match=r"same channel size D.*\(8,\).*\(2, 7\)"):
        global_residual(torch.ones(8), torch.ones(2, 7))
    with pytest.raises(ValueError, match=r"batch dims.*broadcastable.*\(3, 8\).*\(4, 2, 8\)"):
        global_residual(torch.ones(3, 8), torch.ones(4, 2, 8))
    with pytest.raises(ValueError, match="`references` must not be empty"):
        global_residual(torch.ones(8), torch.ones(0, 8))
    with pytest.raises(ValueError, match="`query` must be finite"):
        global_residual(torch.full((8,), float("inf")), torch.ones(2, 8))


def test_zero_vectors_map_to_zero() -> None:
    z = torch.zeros(4)
    e = torch.tensor([1.0, 0.0, 0.0, 0.0])
    assert torch.equal(visual_residual(z, z), z)
    torch.testing.assert_close(text_residual(e, z), e)
    assert torch.equal(global_residual(z, torch.zeros(2, 4)), z)
    assert F.normalize(z, dim=-1).abs().sum() == 0  # same convention as torch


def test_residuals_gradcheck_float64() -> None:
    g = torch.Generator().manual_seed(9)
    q = torch.randn(3, 6, dtype=torch.float64, generator=g, requires_grad=True)
    ref = torch.randn(3, 6, dtype=torch.float64, generator=g, requires_grad=True)
    refs = torch.randn(2, 6, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(visual_residual, (q, ref))
    assert torch.autograd.gradcheck(lambda a, n: text_residual(a, n, unit=True), (q, ref))
    for normalized in (True, False):
        assert torch.autograd.gradcheck(
            lambda a, r, nz=normalized: global_residual(a, r, normalized=nz), (q, refs)
        )
    assert torch.autograd.gradcheck(lambda e: prompt_ensemble_mean(e, normalize_each=True), (q,))
