"""Tests for resad_kit.ops.scores: projection, cosine, magnitude, top-q mean, fusion."""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from resad_kit.ops.scores import (
    cosine_score,
    fuse,
    magnitude_score,
    projection_score,
    top_fraction_mean,
)

TOL = {
    torch.float16: {"rtol": 2e-3, "atol": 2e-3},
    torch.bfloat16: {"rtol": 2e-2, "atol": 2e-2},
    torch.float32: {"rtol": 1e-5, "atol": 1e-5},
}

_ELEMENTS = st.floats(-10.0, 10.0, allow_nan=False, allow_infinity=False)


def vec(d: int) -> st.SearchStrategy[np.ndarray]:
    return arrays(np.float64, (d,), elements=_ELEMENTS)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a)


# --------------------------------------------------------------------------- projection_score


def test_projection_score_by_hand() -> None:
    r = torch.tensor([[3.0, 4.0], [1.0, -2.0]])
    d = torch.tensor([0.0, 10.0])
    torch.testing.assert_close(projection_score(r, d), torch.tensor([4.0, -2.0]))


def test_projection_score_shapes_dtype_device(device: torch.device, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    r = torch.randn(2, 3, 49, 32, device=device).to(dtype)
    d = torch.randn(32, device=device).to(dtype)
    out = projection_score(r, d)
    assert out.shape == (2, 3, 49)
    assert out.dtype == dtype
    assert out.device.type == device.type
    ref = r.double() @ (d.double() / d.double().norm())
    torch.testing.assert_close(out.double(), ref, **TOL[dtype])
    # a per-sample direction (..., 1, D) broadcasts over the patches; the (D,) fast
    # path and the broadcasting path agree
    per_sample = projection_score(r, d.expand(2, 3, 1, 32))
    assert per_sample.shape == (2, 3, 49)
    torch.testing.assert_close(per_sample.double(), ref, **TOL[dtype])


@given(
    r1=vec(7),
    r2=vec(7),
    d=vec(7),
    a=st.floats(-5, 5, allow_nan=False),
    b=st.floats(-5, 5, allow_nan=False),
)
def test_projection_score_is_linear_in_residual(
    r1: np.ndarray, r2: np.ndarray, d: np.ndarray, a: float, b: float
) -> None:
    td = _t(d)
    assume(float(td.norm()) > 1e-3)
    lhs = projection_score(a * _t(r1) + b * _t(r2), td)
    rhs = a * projection_score(_t(r1), td) + b * projection_score(_t(r2), td)
    torch.testing.assert_close(lhs, rhs, rtol=1e-9, atol=1e-9)


@given(r=vec(7), d=vec(7), c=st.floats(1e-3, 1e3))
def test_projection_score_direction_scale_and_sign(r: np.ndarray, d: np.ndarray, c: float) -> None:
    tr, td = _t(r), _t(d)
    assume(float(td.norm()) > 1e-3)
    p = projection_score(tr, td)
    torch.testing.assert_close(projection_score(tr, c * td), p, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(projection_score(tr, -td), -p, rtol=0, atol=0)
    assert abs(float(p)) <= float(tr.norm()) * (1 + 1e-12) + 1e-12  # Cauchy–Schwarz


def test_projection_score_keeps_magnitude_unlike_cosine() -> None:
    d = torch.tensor([1.0, 1.0])
    small = torch.tensor([1e-3, 0.0])
    assert math.isclose(float(projection_score(small, d)), 1e-3 / math.sqrt(2), rel_tol=1e-5)
    assert math.isclose(float(cosine_score(small, d)), 1 / math.sqrt(2), rel_tol=1e-5)


def test_projection_score_errors() -> None:
    with pytest.raises(ValueError, match=r"projection_score.*`direction` must be non-zero"):
        projection_score(torch.ones(3), torch.zeros(3))
    with pytest.raises(ValueError, match="`direction` must be non-zero"):  # one zero row
        projection_score(torch.ones(2, 3), torch.tensor([[1.0, 0, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match=r"`residual` and `direction`.*same channel.*\(4, 3\)"):
        projection_score(torch.ones(4, 3), torch.ones(5))
    with pytest.raises(ValueError, match="must be broadcastable"):
        projection_score(torch.ones(4, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="`residual` must be finite; got 1 NaN"):
        projection_score(torch.tensor([1.0, float("nan")]), torch.ones(2))
    with pytest.raises(ValueError, match="`residual` must not be empty"):
        projection_score(torch.ones(0, 2), torch.ones(2))
    with pytest.raises(
        ValueError, match=r"`residual` must have at least 1 dimensions \(\.\.\., D\)"
    ):
        projection_score(torch.tensor(1.0), torch.ones(2))
    with pytest.raises(TypeError, match=r"`direction` must be a torch\.Tensor"):
        projection_score(torch.ones(2), [1.0, 0.0])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- cosine_score


def test_cosine_score_by_hand_and_zero() -> None:
    f = torch.tensor([[3.0, 4.0], [0.0, 0.0], [-1.0, 0.0]])
    d = torch.tensor([0.0, 10.0])
    torch.testing.assert_close(cosine_score(f, d), torch.tensor([0.8, 0.0, 0.0]))
    torch.testing.assert_close(cosine_score(torch.ones(2), torch.zeros(2)), torch.tensor(0.0))


@given(f=vec(6), d=vec(6), c=st.floats(1e-3, 1e3))
def test_cosine_score_bounded_and_scale_free(f: np.ndarray, d: np.ndarray, c: float) -> None:
    tf, td = _t(f), _t(d)
    s = cosine_score(tf, td)
    assert -1.0 <= float(s) <= 1.0
    torch.testing.assert_close(cosine_score(td, tf), s, rtol=1e-12, atol=1e-12)  # symmetric
    # scale-free, for vectors well above the normalisation floor eps = 1e-12
    assume(float(tf.norm()) > 1e-6 and float(td.norm()) > 1e-6)
    torch.testing.assert_close(cosine_score(c * tf, td), s, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(cosine_score(tf, c * td), s, rtol=1e-9, atol=1e-9)


def test_cosine_score_parallel_is_exactly_bounded() -> None:
    torch.manual_seed(1)
    x = torch.randn(200, 768)
    s = cosine_score(x, x)
    assert float(s.max()) <= 1.0
    torch.testing.assert_close(s, torch.ones(200))
    assert float(cosine_score(x, -x).min()) >= -1.0


def test_cosine_score_shapes_dtype_device(device: torch.device, dtype: torch.dtype) -> None:
    torch.manual_seed(2)
    f = torch.randn(2, 37 * 37, 64, device=device).to(dtype)
    d = torch.randn(64, device=device).to(dtype)
    out = cosine_score(f, d)
    assert out.shape == (2, 37 * 37)
    assert out.dtype == dtype
    assert out.device.type == device.type
    ref = F.cosine_similarity(f.double(), d.double().expand_as(f), dim=-1)
    torch.testing.assert_close(out.double(), ref, **TOL[dtype])


def test_cosine_score_errors() -> None:
    with pytest.raises(ValueError, match=r"cosine_score.*`features` and `direction`.*same channel"):
        cosine_score(torch.ones(4, 3), torch.ones(4))
    with pytest.raises(ValueError, match="cosine_score: `direction` must be finite"):
        cosine_score(torch.ones(3), torch.tensor([0.0, float("inf"), 1.0]))
    with pytest.raises(ValueError, match="cosine_score: `features` must not be empty"):
        cosine_score(torch.ones(0, 3), torch.ones(3))


# --------------------------------------------------------------------------- magnitude_score


def test_magnitude_score_by_hand_not_squared() -> None:
    torch.testing.assert_close(
        magnitude_score(torch.tensor([[3.0, 4.0], [0.0, 0.0], [-1.0, 0.0]])),
        torch.tensor([5.0, 0.0, 1.0]),
    )


@given(r=arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 9)), elements=_ELEMENTS))
def test_magnitude_score_nonnegative_and_matches_numpy(r: np.ndarray) -> None:
    m = magnitude_score(_t(r))
    assert m.shape == r.shape[:-1]
    assert bool((m >= 0).all())
    np.testing.assert_allclose(m.numpy(), np.linalg.norm(r, axis=-1), rtol=1e-12, atol=1e-12)


def test_magnitude_score_dtype_device(device: torch.device, dtype: torch.dtype) -> None:
    torch.manual_seed(3)
    r = torch.randn(2, 5, 768, device=device).to(dtype)
    m = magnitude_score(r)
    assert m.shape == (2, 5)
    assert m.dtype == dtype
    assert m.device.type == device.type
    torch.testing.assert_close(m.double(), r.double().norm(dim=-1), **TOL[dtype])


def test_magnitude_score_half_does_not_overflow() -> None:
    # ‖R‖² of 768 entries of 100 is 7.68e6 > fp16 max (65504); norm in float32 avoids inf
    r = torch.full((768,), 100.0, dtype=torch.float16)
    m = magnitude_score(r)
    assert torch.isfinite(m)
    assert math.isclose(float(m), 100.0 * math.sqrt(768), rel_tol=1e-3)


def test_magnitude_score_errors() -> None:
    with pytest.raises(ValueError, match=r"magnitude_score: `residual` must have at least 1"):
        magnitude_score(torch.tensor(3.0))
    with pytest.raises(ValueError, match="magnitude_score: `residual` must not be empty"):
        magnitude_score(torch.ones(3, 0))
    with pytest.raises(ValueError, match="magnitude_score: `residual` must be finite"):
        magnitude_score(torch.tensor([float("nan")]))


# --------------------------------------------------------------------------- top_fraction_mean


def _np_top_mean(maps: np.ndarray, fraction: float) -> np.ndarray:
    """Sort-based reference: mean of the k = max(1, int(q·H·W)) largest values."""
    h, w = maps.shape[-2:]
    k = max(1, int(fraction * h * w))
    flat = maps.reshape(*maps.shape[:-2], h * w)
    return np.sort(flat, axis=-1)[..., -k:].mean(axis=-1)


@given(
    maps=arrays(
        np.float64,
        st.tuples(st.integers(1, 3), st.integers(1, 12), st.integers(1, 12)),
        elements=_ELEMENTS,
    ),
    fraction=st.floats(1e-3, 1.0),
)
def test_top_fraction_mean_matches_sort_reference_and_bounds(
    maps: np.ndarray, fraction: float
) -> None:
    out = top_fraction_mean(_t(maps), fraction).numpy()
    np.testing.assert_allclose(out, _np_top_mean(maps, fraction), rtol=1e-12, atol=1e-12)
    flat = maps.reshape(maps.shape[0], -1)
    assert np.all(out <= flat.max(-1) + 1e-12)
    assert np.all(out >= flat.mean(-1) - 1e-12)


def test_top_fraction_mean_k1_is_max_and_full_is_mean() -> None:
    torch.manual_seed(4)
    m = torch.randn(3, 4, 10, 10)
    torch.testing.assert_close(top_fraction_mean(m, 0.001), m.amax(dim=(-2, -1)))  # k = 1
    torch.testing.assert_close(top_fraction_mean(m, 1.0), m.mean(dim=(-2, -1)))


def test_top_fraction_mean_code_k_2683() -> None:
    # 518² map with values 0 … 518²−1: the mean of the top k is (2·518² − k − 1)/2.
    n = 518 * 518
    m = torch.randperm(n, generator=torch.Generator().manual_seed(0)).double().reshape(518, 518)
    k = 2683
    assert max(1, int(0.01 * n)) == k
    assert float(top_fraction_mean(m)) == (2 * n - k - 1) / 2


def test_top_fraction_mean_dtype_device(device: torch.device, dtype: torch.dtype) -> None:
    torch.manual_seed(5)
    m = torch.rand(2, 3, 64, 64, device=device).to(dtype)
    out = top_fraction_mean(m, 0.05)
    assert out.shape == (2, 3)
    assert out.dtype == dtype
    assert out.device.type == device.type
    ref = _np_top_mean(m.double().cpu().numpy(), 0.05)
    np.testing.assert_allclose(out.double().cpu().numpy(), ref, **TOL[dtype])


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan"), float("inf")])
def test_top_fraction_mean_bad_fraction(fraction: float) -> None:
    with pytest.raises(ValueError, match=r"top_fraction_mean: `fraction` must be in \(0, 1\]"):
        top_fraction_mean(torch.ones(4, 4), fraction)


def test_top_fraction_mean_errors() -> None:
    with pytest.raises(TypeError, match="`fraction` must be a float"):
        top_fraction_mean(torch.ones(4, 4), True)  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"`maps` must have at least 2 dimensions \(\.\.\., H, W\)"
    ):
        top_fraction_mean(torch.ones(16))
    with pytest.raises(ValueError, match="`maps` must not be empty"):
        top_fraction_mean(torch.ones(2, 0, 4))
    with pytest.raises(ValueError, match="`maps` must be finite; got 1 NaN"):
        top_fraction_mean(torch.tensor([[1.0, float("nan")]]))


# --------------------------------------------------------------------------- fuse


def test_fuse_sequence_and_mapping_equal_manual_sum(
    device: torch.device, dtype: torch.dtype
) -> None:
    torch.manual_seed(6)
    mt, mv, mr = (torch.randn(2, 518, 518, device=device).to(dtype) for _ in range(3))
    expected = 0.1 * mt.double() + 1.0 * mv.double() + 1.0 * mr.double()
    out_seq = fuse([mt, mv, mr], [0.1, 1.0, 1.0])
    out_map = fuse({"text": mt, "vis": mv, "res": mr}, {"res": 1.0, "text": 0.1, "vis": 1.0})
    for out in (out_seq, out_map):
        assert out.shape == (2, 518, 518)
        assert out.dtype == dtype
        assert out.device.type == device.type
        torch.testing.assert_close(out.double(), expected, **TOL[dtype])


@given(
    scores=arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(1, 6)), elements=_ELEMENTS),
    weights=st.lists(st.floats(-3, 3, allow_nan=False), min_size=1, max_size=3),
)
def test_fuse_image_scores_property(scores: np.ndarray, weights: list[float]) -> None:
    # the same maps combined with any weights equal the explicit weighted sum
    maps = [_t(scores) * (i + 1) for i in range(len(weights))]
    expected = sum(w * m for w, m in zip(weights, maps, strict=True))
    torch.testing.assert_close(fuse(maps, weights), expected, rtol=1e-12, atol=1e-12)
    keyed = OrderedDict((f"b{i}", m) for i, m in enumerate(maps))
    kw = {f"b{i}": w for i, w in enumerate(weights)}
    torch.testing.assert_close(fuse(keyed, kw), expected, rtol=1e-12, atol=1e-12)


def test_fuse_promotes_mixed_dtypes_and_accepts_int_weights() -> None:
    out = fuse((torch.ones(3, dtype=torch.float16), torch.ones(3)), (2, 1))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.full((3,), 3.0))


def test_fuse_errors() -> None:
    a, b = torch.ones(2, 2), torch.ones(2, 2)
    with pytest.raises(
        ValueError,
        match=r"fuse: `maps` and `weights` must have the same length; "
        r"got 2 maps and 1 weights",
    ):
        fuse([a, b], [1.0])
    with pytest.raises(
        ValueError,
        match=r"same keys.*without a weight: \['res'\].*"
        r"without a map: \['vis'\]",
    ):
        fuse({"text": a, "res": b}, {"text": 1.0, "vis": 1.0})
    with pytest.raises(
        ValueError,
        match=r"shapes must match; got `maps\[0\]` \(2, 2\), "
        r"`maps\[1\]` \(3, 2\)",
    ):
        fuse([a, torch.ones(3, 2)], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"`maps\['vis'\]` \(2, 3\)"):
        fuse({"text": a, "vis": torch.ones(2, 3)}, {"text": 1.0, "vis": 1.0})
    with pytest.raises(TypeError, match="both be sequences or both be mappings; got dict and list"):
        fuse({"text": a}, [1.0])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="both be sequences"):
        fuse(a, [1.0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`maps` must not be empty"):
        fuse([], [])
    with pytest.raises(ValueError, match=r"`weights\[1\]` must be finite"):
        fuse([a, b], [1.0, float("nan")])
    with pytest.raises(TypeError, match=r"`weights\['text'\]` must be a real number"):
        fuse({"text": a}, {"text": "0.1"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"`maps\[1\]` must be finite; got 1 NaN"):
        fuse([a, torch.tensor([[0.0, float("nan")], [0.0, 0.0]])], [1.0, 1.0])
    with pytest.raises(TypeError, match=r"`maps\[0\]` must be a torch.Tensor"):
        fuse([np.ones((2, 2))], [1.0])  # type: ignore[list-item]


def test_scores_gradcheck_float64() -> None:
    g = torch.Generator().manual_seed(10)
    r = torch.randn(4, 6, dtype=torch.float64, generator=g, requires_grad=True)
    d = torch.randn(6, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(projection_score, (r, d))
    assert torch.autograd.gradcheck(cosine_score, (r, d))
    assert torch.autograd.gradcheck(magnitude_score, (r,))
    m = torch.randn(2, 5, 5, dtype=torch.float64, generator=g, requires_grad=True)  # no ties
    assert torch.autograd.gradcheck(lambda x: top_fraction_mean(x, 0.2), (m,))
    b = torch.randn(4, 6, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: fuse([x, y], [0.1, 1.0]), (r, b))
