"""Tap modes of ClipBackbone: raw residual-stream taps (AF-CLIP) and ``project_tokens``."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resad_kit.clip import BackboneConfig, ClipBackbone


def _images(n: int = 2, size: int = 32, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(3), dtype=dtype)


@pytest.fixture(scope="module")
def model64() -> nn.Module:
    return ClipBackbone.tiny(seed=0).model.double()


def _wrap(model: nn.Module, size: int = 32, **fields) -> ClipBackbone:
    fields = {"layers": None, "vv_blocks": 0, **fields}
    return ClipBackbone(model, BackboneConfig(image_size=size, **fields))


def _hooked_blocks(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """The output of every residual block of open_clip's own ``visual`` forward (hooks)."""
    outputs: list[torch.Tensor] = []
    blocks = model.visual.transformer.resblocks
    handles = [b.register_forward_hook(lambda m, i, o: outputs.append(o)) for b in blocks]
    try:
        with torch.no_grad():
            model.visual(images)
    finally:
        for handle in handles:
            handle.remove()
    return outputs  # batch-first (B, 1 + N, C), in block order


@pytest.mark.parametrize("layers", [None, (2, 4), (3,)])
def test_residual_taps_equal_open_clips_block_outputs(model64, layers):
    """At the native grid the raw taps are open_clip's block outputs (CLS row split off)."""
    backbone = _wrap(model64, layers=layers, tap_output="residual", tap_cls=True)
    images = _images()
    blocks = _hooked_blocks(model64, images)
    features = backbone(images)
    assert backbone.tap_dim == backbone.width == 64
    taps = zip(backbone.layers, features.patches, features.tap_cls, strict=True)
    for layer, patches, cls in taps:
        expected = blocks[layer - 1]
        assert patches.shape == (2, 16, 64)
        assert cls.shape == (2, 64)
        torch.testing.assert_close(patches, expected[:, 1:].float(), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(cls, expected[:, 0].float(), rtol=1e-6, atol=1e-6)
    # the global feature stays open_clip's projected image embedding
    with torch.no_grad():
        pooled = model64.visual.ln_post(blocks[-1][:, 0]) @ model64.visual.proj
    torch.testing.assert_close(
        _wrap(model64, tap_output="residual", global_ln_post=True)(images).cls, pooled.float()
    )


def test_residual_taps_at_an_interpolated_grid(model64, resize):
    """At 64 px (8×8 grid from the 4×4 table) the taps equal the blocks run by hand."""
    backbone = _wrap(model64, size=64, tap_output="residual", tap_cls=True)
    images = _images(size=64)
    vis = model64.visual
    with torch.no_grad():
        x = vis.conv1(images).flatten(2).transpose(1, 2)  # (B, 64, C)
        table = resize(vis.positional_embedding, 4, (8, 8))
        x = torch.cat([vis.class_embedding.expand(2, 1, 64), x], dim=1) + table
        x = vis.ln_pre(x)
        expected = []
        for block in vis.transformer.resblocks:
            x = block(x)
            expected.append(x)
    features = backbone(images)
    for got, cls, want in zip(features.patches, features.tap_cls, expected, strict=True):
        torch.testing.assert_close(got, want[:, 1:].float(), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(cls, want[:, 0].float(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("vv_blocks", [0, 3])
def test_projecting_residual_taps_gives_the_projected_taps(vv_blocks):
    """``project_tokens`` of the raw taps (patches and CLS) = the default mode's taps."""
    images = _images(dtype=torch.float32, size=64)
    projected = ClipBackbone.tiny(seed=2, vv_blocks=vv_blocks, tap_cls=True)
    residual = ClipBackbone.tiny(seed=2, vv_blocks=vv_blocks, tap_cls=True, tap_output="residual")
    want, got = projected(images), residual(images)
    for raw, expected in zip(got.patches + got.tap_cls, want.patches + want.tap_cls, strict=True):
        torch.testing.assert_close(residual.project_tokens(raw), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.cls, want.cls, rtol=0, atol=0)  # global feature unchanged


def test_project_tokens_is_differentiable_and_leaves_clip_frozen():
    """Gradients reach the tokens (= those of LN + matmul written out); CLIP weights get none."""
    backbone = ClipBackbone.tiny(seed=1, vv_blocks=0, tap_output="residual")
    vis = backbone.model.visual
    tokens = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    weights = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(1))
    out = backbone.project_tokens(tokens)
    assert out.dtype == torch.float32
    assert out.shape == (2, 5, 32)
    assert out.requires_grad
    (out * weights).sum().backward()

    ref_tokens = tokens.detach().clone().requires_grad_(True)
    mean = ref_tokens.mean(-1, keepdim=True)
    var = ref_tokens.var(-1, unbiased=False, keepdim=True)
    normed = (ref_tokens - mean) / torch.sqrt(var + vis.ln_post.eps)
    ref = (normed * vis.ln_post.weight + vis.ln_post.bias) @ vis.proj
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    (ref * weights).sum().backward()
    torch.testing.assert_close(tokens.grad, ref_tokens.grad, rtol=1e-4, atol=1e-5)
    assert tokens.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in backbone.model.parameters())


def test_project_tokens_works_on_a_float64_model_with_gradcheck(model64):
    """The maths is differentiable: gradcheck of the float64 LN + proj before the float32 cast."""
    backbone = _wrap(model64, tap_output="residual")
    tokens = torch.randn(2, 64, dtype=torch.float64, requires_grad=True)
    vis = model64.visual
    assert torch.autograd.gradcheck(lambda t: vis.ln_post(t) @ vis.proj, (tokens,))
    expected = F.layer_norm(tokens, (64,), vis.ln_post.weight, vis.ln_post.bias) @ vis.proj
    torch.testing.assert_close(backbone.project_tokens(tokens), expected.float())


def test_project_tokens_checks_its_input():
    backbone = ClipBackbone.tiny()
    with pytest.raises(ValueError, match=r"`tokens` must have shape \(\.\.\., 64\)"):
        backbone.project_tokens(torch.zeros(2, 32))
    with pytest.raises(ValueError, match="tokens"):
        backbone.project_tokens(torch.zeros(()))
    with pytest.raises(TypeError, match="tokens"):
        backbone.project_tokens([0.0] * 64)


def test_default_mode_is_projected_and_unchanged():
    config = BackboneConfig()
    assert config.tap_output == "projected"
    assert BackboneConfig.paper() == config
    backbone = ClipBackbone.tiny(seed=0)
    assert backbone.tap_dim == backbone.embed_dim == 32
    assert "tap_output" not in repr(backbone)
    assert "tap_output='residual'" in repr(ClipBackbone.tiny(tap_output="residual"))
    features = backbone(torch.zeros(1, 3, 64, 64))
    assert features.patches[0].shape == (1, 64, 32)
    assert features.tap_cls is None


@pytest.mark.parametrize("bad", ["raw", "RESIDUAL", None, 1])
def test_tap_output_is_validated(bad):
    with pytest.raises(ValueError, match="tap_output"):
        BackboneConfig(tap_output=bad)


def test_afclip_preset_reads_vit_l_like_the_paper():
    """AF-CLIP's ViT-L-14-336 setting on the meta device: raw 1024-d taps, 37×37 grid."""
    config = BackboneConfig.afclip()
    assert (config.image_size, config.layers, config.vv_blocks) == (518, (6, 12, 18, 24), 0)
    assert (config.tap_output, config.tap_cls, config.pos_interpolation) == (
        "residual",
        True,
        "bilinear",
    )
    with torch.device("meta"):
        vit_l = open_clip.CLIP(**open_clip.get_model_config("ViT-L-14-336"))
    backbone = ClipBackbone(vit_l, config)
    assert backbone.vv_block_indices == ()
    assert backbone.grid == (37, 37)
    out = backbone(torch.empty(1, 3, 518, 518, device="meta"))
    assert [tuple(p.shape) for p in out.patches] == [(1, 1369, 1024)] * 4
    assert [tuple(c.shape) for c in out.tap_cls] == [(1, 1024)] * 4
    assert tuple(out.cls.shape) == (1, 768)
    assert tuple(backbone.project_tokens(out.patches[0]).shape) == (1, 1369, 768)
