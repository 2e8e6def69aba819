"""ClipBackbone options: the attention kernel (``"sdpa"`` / ``"math"``) and tapped CLS tokens."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resad_kit.clip import BackboneConfig, ClipBackbone
from resad_kit.clip.attention import attend, dual_attention, self_attention


def _images(n: int = 2, size: int = 32, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=dtype)


@pytest.fixture(scope="module")
def model64() -> nn.Module:
    return ClipBackbone.tiny(seed=0).model.double()


def _wrap(model: nn.Module, **fields) -> ClipBackbone:
    fields = {"layers": None, "vv_blocks": None, **fields}
    return ClipBackbone(model, BackboneConfig(image_size=32, **fields))


def test_math_kernel_is_the_explicit_softmax_product():
    """``"math"`` = softmax(q kᵀ/sqrt(d)) v written with a loop over heads in float64."""
    q, k, v = torch.randn(3, 2, 3, 7, 8, dtype=torch.float64).unbind(0)
    expected = torch.stack(
        [
            torch.stack(
                [torch.softmax(q[b, h] @ k[b, h].T / math.sqrt(8), -1) @ v[b, h] for h in range(3)]
            )
            for b in range(2)
        ]
    )
    torch.testing.assert_close(attend(q, k, v, "math"), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(attend(q, k, v, "sdpa"), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="kernel"):
        attend(q, k, v, "flash")


@pytest.mark.parametrize("kernel", ["sdpa", "math"])
def test_self_and_dual_attention_equal_multihead_attention(kernel):
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(16, num_heads=4, batch_first=True).double().eval()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    expected = attn(x, x, x, need_weights=False)[0]
    torch.testing.assert_close(self_attention(x, attn, kernel), expected)
    torch.testing.assert_close(dual_attention(x, attn, kernel)[0], expected)


@pytest.mark.parametrize("vv_blocks", [0, 2, 4])
def test_math_backbone_matches_the_reference(model64, reference, vv_blocks):
    """Every block (standard and dual-path) with the explicit kernel equals the reference."""
    backbone = _wrap(model64, vv_blocks=vv_blocks, attention="math")
    images = _images()
    patches, cls = reference(
        backbone.model, images, layers=backbone.layers, vv_blocks=vv_blocks, global_ln_post=False
    )
    features = backbone(images)
    for got, expected in zip(features.patches, patches, strict=True):
        torch.testing.assert_close(got, expected.float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(features.cls, cls.float(), rtol=1e-6, atol=1e-6)


def test_math_kernel_never_calls_sdpa(monkeypatch):
    """The option is really used: with ``"math"`` no fused attention runs anywhere."""
    backbone = ClipBackbone.tiny(seed=0, attention="math", vv_blocks=2)
    images = _images(dtype=torch.float32, size=64)
    expected = ClipBackbone.tiny(seed=0, vv_blocks=2)(images)

    def refuse(*args, **kwargs):
        raise AssertionError("scaled_dot_product_attention called with attention='math'")

    monkeypatch.setattr(F, "scaled_dot_product_attention", refuse)
    monkeypatch.setattr(torch._C._nn, "scaled_dot_product_attention", refuse, raising=False)
    features = backbone(images)
    for got, ref in zip(features.patches, expected.patches, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(AssertionError, match="math"):
        ClipBackbone.tiny(seed=0, vv_blocks=2)(images)


@pytest.mark.parametrize("vv_blocks", [0, 3])
def test_tapped_cls_tokens_match_the_reference(model64, reference, vv_blocks):
    backbone = _wrap(model64, vv_blocks=vv_blocks, tap_cls=True)
    images = _images()
    _, _, tap_cls = reference(
        backbone.model,
        images,
        layers=backbone.layers,
        vv_blocks=vv_blocks,
        global_ln_post=False,
        return_tap_cls=True,
    )
    features = backbone(images)
    assert len(features.tap_cls) == len(backbone.layers)
    for got, expected in zip(features.tap_cls, tap_cls, strict=True):
        assert got.shape == (2, backbone.embed_dim)
        torch.testing.assert_close(got, expected.float(), rtol=1e-6, atol=1e-6)


def test_last_tap_cls_without_vv_is_the_ln_post_global_feature(model64):
    backbone = _wrap(model64, vv_blocks=0, tap_cls=True, global_ln_post=True)
    features = backbone(_images())
    assert torch.equal(features.tap_cls[-1], features.cls)


def test_tap_cls_off_by_default_and_options_validated():
    assert ClipBackbone.tiny()(torch.zeros(1, 3, 64, 64)).tap_cls is None
    with pytest.raises(ValueError, match="attention"):
        BackboneConfig(attention="flash")
    with pytest.raises(ValueError, match="tap_cls"):
        BackboneConfig(tap_cls=1)
