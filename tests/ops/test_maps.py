"""Tests for resad_kit.ops.maps: Gaussian smoothing and bilinear patch upsampling (Res²CLIP
eqs. 6, 9, 11; App. F.2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from resad_kit.ops.maps import gaussian_blur, upsample_patches

TOL = {
    torch.float16: {"rtol": 2e-3, "atol": 2e-3},
    torch.bfloat16: {"rtol": 2e-2, "atol": 2e-2},
    torch.float32: {"rtol": 1e-5, "atol": 1e-5},
}

_ELEMENTS = st.floats(-10.0, 10.0, allow_nan=False, allow_infinity=False)


def _code_kernel_2d(sigma: float, size: int) -> torch.Tensor:
    """The official code's kernel: a normalised size×size 2-D Gaussian centred on the middle."""
    c = (size - 1) / 2
    k = torch.tensor(
        [
            [math.exp(-((x - c) ** 2 + (y - c) ** 2) / (2 * sigma**2)) for x in range(size)]
            for y in range(size)
        ],
        dtype=torch.float64,
    )
    return k / k.sum()


def _reference_blur(maps: torch.Tensor, sigma: float, size: int, padding: str) -> torch.Tensor:
    """Direct 2-D convolution with the outer-product kernel, in float64."""
    x = rearrange(maps.double(), "b h w -> b 1 h w")
    r = size // 2
    mode = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate"}[padding]
    x = F.pad(x, (r, r, r, r), mode=mode)
    weight = rearrange(_code_kernel_2d(sigma, size), "kh kw -> 1 1 kh kw")
    return rearrange(F.conv2d(x, weight), "b 1 h w -> b h w")


# --------------------------------------------------------------------------- gaussian_blur


def test_gaussian_blur_equals_code_conv2d_zero_padding() -> None:
    torch.manual_seed(0)
    m = torch.randn(3, 37, 37, dtype=torch.float64)
    # the official code: Conv2d(1, 1, 5, padding=2) with the normalised 5×5 kernel
    weight = rearrange(_code_kernel_2d(4.0, 5), "kh kw -> 1 1 kh kw")
    ref = F.conv2d(rearrange(m, "b h w -> b 1 h w"), weight, padding=2)[:, 0]
    torch.testing.assert_close(gaussian_blur(m), ref, rtol=1e-12, atol=1e-12)


@given(
    maps=arrays(
        np.float64,
        st.tuples(st.integers(1, 2), st.integers(4, 12), st.integers(4, 12)),
        elements=_ELEMENTS,
    ),
    sigma=st.floats(0.3, 8.0),
    size=st.sampled_from([1, 3, 5, 7]),
    padding=st.sampled_from(["zeros", "reflect", "replicate"]),
)
def test_gaussian_blur_matches_direct_2d_conv(
    maps: np.ndarray, sigma: float, size: int, padding: str
) -> None:
    t = torch.from_numpy(maps)
    out = gaussian_blur(t, sigma=sigma, kernel_size=size, padding=padding)
    ref = _reference_blur(t, sigma, size, padding)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    if padding != "zeros":  # a convex combination of map values
        assert float(out.max()) <= float(t.max()) + 1e-10
        assert float(out.min()) >= float(t.min()) - 1e-10


def test_gaussian_blur_constant_map_interior_and_borders() -> None:
    m = torch.full((1, 20, 24), 3.0)
    zero = gaussian_blur(m)[0]
    torch.testing.assert_close(zero[2:-2, 2:-2], torch.full((16, 20), 3.0))  # away from borders
    assert bool((zero[0] < 3.0 - 1e-3).all())  # zero padding darkens the borders
    assert bool((zero[:, -1] < 3.0 - 1e-3).all())
    assert float(zero[0, 0]) < float(zero[0, 10])  # corners darkest
    for padding in ("reflect", "replicate"):
        torch.testing.assert_close(gaussian_blur(m, padding=padding), m)


def test_gaussian_blur_preserves_sum_of_interior_support() -> None:
    torch.manual_seed(1)
    m = torch.zeros(2, 30, 30, dtype=torch.float64)
    m[:, 3:-3, 3:-3] = torch.randn(2, 24, 24, dtype=torch.float64)  # 3 ≥ radius 2 from borders
    out = gaussian_blur(m)
    torch.testing.assert_close(out.sum(dim=(-2, -1)), m.sum(dim=(-2, -1)))
    # but mass at the border leaks out with zero padding
    edge = torch.zeros(30, 30)
    edge[0, 0] = 1.0
    assert float(gaussian_blur(edge).sum()) < 0.5


def test_gaussian_blur_kernel_is_centred() -> None:
    m = torch.zeros(9, 9)
    m[4, 4] = 1.0
    out = gaussian_blur(m, sigma=1.0, kernel_size=5)
    torch.testing.assert_close(out, out.flip(0))
    torch.testing.assert_close(out, out.flip(1))
    torch.testing.assert_close(out, out.T)
    assert int(out.argmax()) == 4 * 9 + 4
    torch.testing.assert_close(out[2:7, 2:7], _code_kernel_2d(1.0, 5).float())


def test_gaussian_blur_shapes_dtype_device(device: torch.device, dtype: torch.dtype) -> None:
    torch.manual_seed(2)
    m = torch.rand(2, 3, 37, 37, device=device).to(dtype)
    out = gaussian_blur(m)
    assert out.shape == m.shape
    assert out.dtype == dtype
    assert out.device.type == device.type
    ref = _reference_blur(rearrange(m.cpu(), "a b h w -> (a b) h w"), 4.0, 5, "zeros")
    got = rearrange(out.double().cpu(), "a b h w -> (a b) h w")
    torch.testing.assert_close(got, ref, **TOL[dtype])
    assert gaussian_blur(torch.ones(5, 6, device=device).to(dtype)).shape == (5, 6)  # 2-D map


def test_gaussian_blur_errors() -> None:
    m = torch.ones(8, 8)
    with pytest.raises(ValueError, match="gaussian_blur: `kernel_size` must be odd; got 4"):
        gaussian_blur(m, kernel_size=4)
    with pytest.raises(ValueError, match="`kernel_size` must be positive; got -3"):
        gaussian_blur(m, kernel_size=-3)
    with pytest.raises(TypeError, match="`kernel_size` must be an int"):
        gaussian_blur(m, kernel_size=5.0)  # type: ignore[arg-type]
    for sigma in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="`sigma` must be positive and finite"):
            gaussian_blur(m, sigma=sigma)
    with pytest.raises(ValueError, match=r"`padding` must be one of .*got 'circular'"):
        gaussian_blur(m, padding="circular")
    with pytest.raises(
        ValueError, match=r"`maps` must have at least 2 dimensions \(\.\.\., H, W\)"
    ):
        gaussian_blur(torch.ones(8))
    with pytest.raises(ValueError, match="`maps` must not be empty"):
        gaussian_blur(torch.ones(0, 8, 8))
    with pytest.raises(ValueError, match="`maps` must be finite; got 1 NaN"):
        gaussian_blur(torch.tensor([[0.0, float("nan")], [0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"'reflect' needs H and W > kernel_size // 2 = 2"):
        gaussian_blur(torch.ones(2, 8), padding="reflect")
    # zero and replicate padding work on tiny maps
    assert gaussian_blur(torch.ones(1, 1)).shape == (1, 1)
    torch.testing.assert_close(
        gaussian_blur(torch.ones(1, 1), padding="replicate"), torch.ones(1, 1)
    )


# --------------------------------------------------------------------------- upsample_patches


def test_upsample_patches_identity_at_grid_size() -> None:
    torch.manual_seed(3)
    s = torch.randn(2, 37 * 37)
    out = upsample_patches(s, 37)
    assert torch.equal(out, rearrange(s, "b (h w) -> b h w", h=37))


def test_upsample_patches_row_major_order() -> None:
    s = torch.zeros(3 * 5)
    s[1 * 5 + 4] = 1.0  # patch n = y·w + x at (y, x) = (1, 4)
    out = upsample_patches(s, (3, 5), grid=(3, 5))
    assert out.shape == (3, 5)
    assert out[1, 4] == 1.0
    assert float(out.sum()) == 1.0


def test_upsample_patches_equals_interpolate_37_to_518(
    device: torch.device, dtype: torch.dtype
) -> None:
    torch.manual_seed(4)
    s = torch.rand(2, 3, 1369, device=device).to(dtype)
    out = upsample_patches(s, 518)
    assert out.shape == (2, 3, 518, 518)
    assert out.dtype == dtype
    assert out.device.type == device.type
    grid = rearrange(s.double(), "a b (h w) -> a b h w", h=37, w=37)
    ref = F.interpolate(grid, size=(518, 518), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out.double(), ref, **TOL[dtype])


@given(
    gh=st.integers(1, 6),
    gw=st.integers(1, 6),
    oh=st.integers(1, 20),
    ow=st.integers(1, 20),
    seed=st.integers(0, 2**16),
)
def test_upsample_patches_non_square_grid_matches_interpolate(
    gh: int, gw: int, oh: int, ow: int, seed: int
) -> None:
    s = torch.randn(2, gh * gw, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    out = upsample_patches(s, (oh, ow), grid=(gh, gw))
    ref = F.interpolate(
        rearrange(s, "b (h w) -> b 1 h w", h=gh, w=gw),
        size=(oh, ow),
        mode="bilinear",
        align_corners=False,
    )[:, 0]
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    # bilinear interpolation is a convex combination of the patch scores
    assert float(out.max()) <= float(s.max()) + 1e-12
    assert float(out.min()) >= float(s.min()) - 1e-12


def test_upsample_patches_errors() -> None:
    with pytest.raises(
        ValueError,
        match=r"upsample_patches: `scores` has N=10 patches, not a perfect square",
    ):
        upsample_patches(torch.ones(10), 20)
    with pytest.raises(ValueError, match=r"`grid`=\(3, 4\) holds 12 patches but `scores` has N=10"):
        upsample_patches(torch.ones(10), 20, grid=(3, 4))
    with pytest.raises(ValueError, match="`size` must be positive; got 0"):
        upsample_patches(torch.ones(4), 0)
    with pytest.raises(ValueError, match=r"`size\[1\]` must be positive"):
        upsample_patches(torch.ones(4), (4, -1))
    with pytest.raises(ValueError, match=r"`size` must be an int or a pair \(H, W\)"):
        upsample_patches(torch.ones(4), (4, 4, 4))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`grid` must be a pair of positive ints"):
        upsample_patches(torch.ones(4), 4, grid=(2.0, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`scores` must have at least 1 dimensions \(\.\.\., N\)"):
        upsample_patches(torch.tensor(1.0), 4)
    with pytest.raises(ValueError, match="`scores` must not be empty"):
        upsample_patches(torch.ones(2, 0), 4)
    with pytest.raises(ValueError, match="`scores` must be finite; got 0 NaN and 1 infinite"):
        upsample_patches(torch.tensor([0.0, 1.0, 2.0, float("inf")]), 4)


@pytest.mark.parametrize("padding", ["zeros", "reflect", "replicate"])
def test_maps_gradcheck_float64(padding: str) -> None:
    g = torch.Generator().manual_seed(11)
    m = torch.randn(2, 6, 7, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: gaussian_blur(x, sigma=1.5, padding=padding), (m,))
    s = torch.randn(2, 6, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: upsample_patches(x, (5, 7), grid=(2, 3)), (s,))
