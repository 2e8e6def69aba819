"""Gaussian window aggregation of patch tokens (resad_kit.ops.aggregation; AF-CLIP Eq. 5-6).

References written here, independently of the library: a naive float64 loop over grid
positions and window offsets, and an unfold-and-weight version (the official code's
formulation), both with the Gaussian weights computed by ``math.exp``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck

import resad_kit
from resad_kit.ops import gaussian_window, spatial_aggregate
from resad_kit.ops._validation import VALUE_CHECKS_RUN

BORDERS = ("zero", "renormalize")


def _tokens(seed: int, *shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _eta(di: int, dj: int, sigma: float) -> float:
    return math.exp(-(di * di + dj * dj) / (2 * sigma * sigma))


def _naive(x: torch.Tensor, h: int, w: int, r: int, sigma: float, border: str) -> torch.Tensor:
    """Eq. 5 by loops: (B, N, D) → (B, N, D), one output token at a time, in float64."""
    half = r // 2
    full = sum(_eta(i, j, sigma) for i in range(-half, half + 1) for j in range(-half, half + 1))
    x = x.double()
    out = torch.zeros_like(x)
    for y0 in range(h):
        for x0 in range(w):
            acc, total = torch.zeros_like(x[:, 0]), 0.0
            for di in range(-half, half + 1):
                for dj in range(-half, half + 1):
                    yy, xx = y0 + di, x0 + dj
                    if 0 <= yy < h and 0 <= xx < w:
                        weight = _eta(di, dj, sigma)
                        acc = acc + weight * x[:, yy * w + xx]
                        total += weight
            out[:, y0 * w + x0] = acc / (full if border == "zero" else total)
    return out


def _unfold(x: torch.Tensor, h: int, w: int, r: int, sigma: float, border: str) -> torch.Tensor:
    """The unfold-and-weight formulation: r×r patches of the zero-padded map, weighted."""
    b, n, d = x.shape
    half = r // 2
    eta = torch.tensor(
        [_eta(i, j, sigma) for i in range(-half, half + 1) for j in range(-half, half + 1)],
        dtype=x.dtype,
    )
    grid = x.transpose(1, 2).reshape(b, d, h, w)
    cols = F.unfold(grid, kernel_size=r, padding=half).reshape(b, d, r * r, n)
    weighted = (cols * eta[:, None]).sum(dim=2)  # (B, D, N)
    if border == "zero":
        weighted = weighted / eta.sum()
    else:
        ones = F.unfold(torch.ones(1, 1, h, w, dtype=x.dtype), kernel_size=r, padding=half)
        weighted = weighted / (ones * eta[:, None]).sum(dim=1)
    return weighted.transpose(1, 2)


grids = st.tuples(st.integers(1, 6), st.integers(1, 6))
windows = st.sampled_from([1, 3, 5, 7])
sigmas = st.sampled_from([0.5, 1.0, 4.0])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), grid=grids, r=windows, sigma=sigmas, d=st.integers(1, 4))
def test_equals_naive_loop_and_unfold_reference(seed, grid, r, sigma, d):
    """Both borders equal the naive loop and the unfold-and-weight reference (float64)."""
    h, w = grid
    x = _tokens(seed, 2, h * w, d)
    for border in BORDERS:
        out = spatial_aggregate(x, grid, r, sigma=sigma, border=border)
        torch.testing.assert_close(out, _naive(x, h, w, r, sigma, border))
        torch.testing.assert_close(out, _unfold(x, h, w, r, sigma, border))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), grid=grids, border=st.sampled_from(BORDERS))
def test_window_one_is_the_identity(seed, grid, border):
    """r = 1 returns the input itself, bit for bit (no arithmetic)."""
    x = _tokens(seed, 3, grid[0] * grid[1], 5, dtype=torch.float16)
    assert spatial_aggregate(x, grid, 1, sigma=0.3, border=border) is x


@settings(max_examples=25, deadline=None)
@given(
    value=st.sampled_from([-2.5, 0.75, 3.0]),
    grid=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    r=windows,
    sigma=sigmas,
)
def test_constant_maps_stay_constant(value, grid, r, sigma):
    """A constant map stays constant: everywhere with "renormalize", away from the border
    (where the window fits in the grid) with "zero", where border values shrink towards 0."""
    h, w = grid
    x = torch.full((1, h * w, 3), value, dtype=torch.float64)
    renorm = spatial_aggregate(x, grid, r, sigma=sigma, border="renormalize")
    torch.testing.assert_close(renorm, x)
    zero = spatial_aggregate(x, grid, r, sigma=sigma).reshape(h, w, 3)
    half = r // 2
    inner = zero[half : h - half, half : w - half]
    torch.testing.assert_close(inner, torch.full_like(inner, value))
    if r > 1:  # the corner loses part of its window
        assert abs(float(zero[0, 0, 0])) < abs(value)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    grid=grids,
    r=windows,
    a=st.floats(-3, 3),
    c=st.floats(-3, 3),
    border=st.sampled_from(BORDERS),
)
def test_linearity(seed, grid, r, a, c, border):
    """agg(a·x + c·y) = a·agg(x) + c·agg(y)."""
    n = grid[0] * grid[1]
    x, y = _tokens(seed, 2, n, 3), _tokens(seed + 1, 2, n, 3)
    lhs = spatial_aggregate(a * x + c * y, grid, r, border=border)
    rhs = a * spatial_aggregate(x, grid, r, border=border) + c * spatial_aggregate(
        y, grid, r, border=border
    )
    torch.testing.assert_close(lhs, rhs)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), grid=grids, r=windows, border=st.sampled_from(BORDERS))
def test_channel_permutation_and_grid_transpose_commute(seed, grid, r, border):
    """Permuting channels, or transposing the grid (the kernel is symmetric), commutes."""
    h, w = grid
    d = 6
    x = _tokens(seed, 2, h * w, d)
    perm = torch.randperm(d, generator=torch.Generator().manual_seed(seed))
    out = spatial_aggregate(x, grid, r, border=border)
    torch.testing.assert_close(
        spatial_aggregate(x[..., perm], grid, r, border=border), out[..., perm]
    )
    xt = x.reshape(2, h, w, d).transpose(1, 2).reshape(2, h * w, d)
    out_t = spatial_aggregate(xt, (w, h), r, border=border)
    torch.testing.assert_close(out_t.reshape(2, w, h, d).transpose(1, 2).reshape(2, h * w, d), out)


def test_leading_dims_are_independent_and_square_grid_is_inferred():
    """(L, B, N, D) equals L·B separate calls; grid=None infers the square grid."""
    x = _tokens(0, 3, 2, 16, 4)
    out = spatial_aggregate(x, None, 3)
    assert out.shape == x.shape
    for i in range(3):
        for j in range(2):
            torch.testing.assert_close(out[i, j], spatial_aggregate(x[i, j], (4, 4), 3))
    with resad_kit.checks(False):  # the unchecked path infers the square grid too
        torch.testing.assert_close(spatial_aggregate(x, None, 3), out)


@pytest.mark.parametrize("border", BORDERS)
def test_gradcheck_float64(border):
    """Analytic gradients match finite differences (float64), with border effects."""
    x = _tokens(1, 2, 6, 1).requires_grad_()
    assert gradcheck(lambda t: spatial_aggregate(t, (2, 3), 3, sigma=1.5, border=border), (x,))
    assert gradcheck(lambda t: spatial_aggregate(t, (3, 2), 5, border=border), (x,))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("border", BORDERS)
def test_half_inputs_are_computed_in_float32(dtype, border):
    """Half inputs give the half-rounded float32 result, in the input dtype."""
    x = _tokens(2, 2, 25, 8, dtype=torch.float32).to(dtype)
    out = spatial_aggregate(x, (5, 5), 5, border=border)
    assert out.dtype == dtype
    want = spatial_aggregate(x.float(), (5, 5), 5, border=border).to(dtype)
    torch.testing.assert_close(out, want, rtol=0, atol=0)


@settings(max_examples=20, deadline=None)
@given(r=windows, sigma=st.floats(0.1, 20.0))
def test_gaussian_window_is_the_normalised_gaussian(r, sigma):
    """Sums to 1, symmetric, peaks at the centre, equals the math.exp formula of Eq. 5."""
    k = gaussian_window(r, sigma, dtype=torch.float64)
    half = r // 2
    want = torch.tensor(
        [[_eta(i, j, sigma) for j in range(-half, half + 1)] for i in range(-half, half + 1)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(k, want / want.sum())
    torch.testing.assert_close(k, k.T)
    torch.testing.assert_close(k, k.flip(0))
    assert float(k[half, half]) == float(k.max())
    single = gaussian_window(r, sigma)
    assert single.dtype == torch.get_default_dtype()
    torch.testing.assert_close(single.sum(), torch.tensor(1.0))
    assert gaussian_window(r, sigma, dtype=torch.bfloat16).dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"patches": torch.zeros(4)}, ValueError, "at least 2 dimensions"),
        ({"patches": torch.zeros(2, 6, 3, dtype=torch.int64)}, ValueError, "float16"),
        ({"patches": torch.full((1, 6, 3), float("nan"))}, ValueError, "`patches` must be finite"),
        ({"patches": [[0.0]]}, TypeError, "`patches` must be a torch.Tensor"),
        ({"grid": (2, 2)}, ValueError, r"holds 4 patches but `patches` has N=6"),
        ({"grid": (2, 0)}, ValueError, "`grid` must be a pair of positive ints"),
        ({"grid": None}, ValueError, "N=6 patches, not a perfect square"),
        ({"window": 2}, ValueError, "`window` must be an odd int ≥ 1"),
        ({"window": 0}, ValueError, "`window` must be an odd int ≥ 1"),
        ({"window": 3.0}, TypeError, "`window` must be an int"),
        ({"window": True}, TypeError, "`window` must be an int"),
        ({"sigma": 0.0}, ValueError, "`sigma` must be positive"),
        ({"sigma": "4"}, TypeError, "`sigma` must be a float"),
        ({"border": "reflect"}, ValueError, "`border` must be one of"),
    ],
)
def test_invalid_inputs_raise_named_errors(kwargs, error, match):
    """Each invalid argument raises an error that names it."""
    args = {"patches": torch.ones(1, 6, 3), "grid": (2, 3), "window": 3} | kwargs
    patches, grid, window = args.pop("patches"), args.pop("grid"), args.pop("window")
    with pytest.raises(error, match=match):
        spatial_aggregate(patches, grid, window, **args)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((4,), {}, ValueError, "`window` must be an odd int"),
        ((3, -1.0), {}, ValueError, "`sigma` must be positive"),
        ((3,), {"dtype": torch.int32}, ValueError, "`dtype` must be a floating"),
    ],
)
def test_gaussian_window_invalid_inputs(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        gaussian_window(*args, **kwargs)


def test_checks_off_runs_the_core_without_value_checks():
    """With resad_kit.checks(False) no check runs (no finiteness sync); results are equal."""
    x = _tokens(3, 2, 9, 4)
    checked = spatial_aggregate(x, (3, 3), 3)
    before = VALUE_CHECKS_RUN["spatial_aggregate"]
    assert before > 0
    with resad_kit.checks(False):
        unchecked = spatial_aggregate(x, (3, 3), 3)
    assert VALUE_CHECKS_RUN["spatial_aggregate"] == before
    assert torch.equal(unchecked, checked)
