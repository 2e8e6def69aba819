"""ClipBackbone: parity with open_clip, V-V dual path, taps, positional embeddings (paper Sec. 4.1,
App. F.2; hito2448/Res2CLIP `clip_lib/AnomalyCLIP.py`)."""

from __future__ import annotations

import copy

import open_clip
import pytest
import torch
from open_clip.transformer import QuickGELU
from torch import nn

from resad_kit.clip import BackboneConfig, ClipBackbone, Features, interpolate_pos_embed


@pytest.fixture(scope="module")
def model64() -> nn.Module:
    """The tiny open_clip model in float64, shared by the wrappers below (it is frozen)."""
    return ClipBackbone.tiny(seed=0).model.double()


def _wrap(model: nn.Module, image_size: int = 32, **fields) -> ClipBackbone:
    """A backbone over ``model`` (float64; the wrapper still returns float32)."""
    fields = {"layers": None, "vv_blocks": None, **fields}
    return ClipBackbone(model, BackboneConfig(image_size=image_size, **fields))


def _images(n: int = 2, size: int = 32, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=dtype)


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """float32 outputs against a float64 reference: equal up to the final float32 rounding."""
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual, expected.float(), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ parity with open_clip


def test_without_vv_the_global_feature_is_open_clips_encode_image(model64):
    backbone = _wrap(model64, 32, vv_blocks=0, global_ln_post=True)
    images = _images()
    _close(backbone(images).cls, backbone.model.encode_image(images))


def test_without_vv_the_taps_are_open_clips_forward_intermediates(model64):
    backbone = _wrap(model64, 32, vv_blocks=0)
    images = _images()
    visual = backbone.model.visual
    out = visual.forward_intermediates(
        images,
        indices=[layer - 1 for layer in backbone.layers],
        normalize_intermediates=True,  # ln_post on every intermediate
        output_fmt="NLC",
    )
    features = backbone(images)
    assert backbone.layers == (1, 2, 3, 4)
    assert len(features.patches) == len(out["image_intermediates"]) == 4
    for patches, tokens in zip(features.patches, out["image_intermediates"], strict=True):
        _close(patches, tokens @ visual.proj)


def test_interpolated_input_matches_open_clip_with_a_resized_table(model64, resize):
    """At 64 px the 4×4 table becomes 8×8 (bilinear, CLS kept), as open_clip sees it."""
    backbone = _wrap(model64, 64, vv_blocks=0, global_ln_post=True)
    reference = copy.deepcopy(backbone.model)
    table = reference.visual.positional_embedding
    reference.visual.positional_embedding = nn.Parameter(resize(table.detach(), 4, (8, 8)))
    images = _images(size=64)
    features = backbone(images)
    assert features.grid == (8, 8)
    _close(features.cls, reference.encode_image(images))


# ------------------------------------------- V-V dual path (AnomalyCLIP's, as in the official code)


@pytest.mark.parametrize("vv_blocks", [0, 1, 3, 4])
@pytest.mark.parametrize("global_ln_post", [False, True])
def test_dual_path_matches_the_spec_reference(model64, reference, vv_blocks, global_ln_post):
    backbone = _wrap(model64, 32, vv_blocks=vv_blocks, global_ln_post=global_ln_post)
    images = _images()
    patches, cls = reference(
        backbone.model,
        images,
        layers=backbone.layers,
        vv_blocks=vv_blocks,
        global_ln_post=global_ln_post,
    )
    features = backbone(images)
    for got, expected in zip(features.patches, patches, strict=True):
        _close(got, expected)
    _close(features.cls, cls)


def test_dual_path_at_an_interpolated_size_matches_the_reference(model64, reference):
    backbone = _wrap(model64, 64)
    images = _images(size=64)
    patches, cls = reference(
        backbone.model, images, layers=backbone.layers, vv_blocks=3, global_ln_post=False
    )
    features = backbone(images)
    for got, expected in zip(features.patches, patches, strict=True):
        _close(got, expected)
    _close(features.cls, cls)


def test_vv_does_not_change_the_ordinary_stream(model64):
    """The global feature comes from the ordinary stream: V-V on or off gives the same."""
    images = _images()
    with_vv = _wrap(model64, 32, vv_blocks=4)(images).cls
    without = _wrap(model64, 32, vv_blocks=0)(images).cls
    torch.testing.assert_close(with_vv, without, rtol=1e-6, atol=1e-6)


def test_the_vv_stream_skips_the_mlp(model64):
    """A dual-path block's MLP feeds the ordinary stream only: changing the last block's MLP
    leaves its V-V tap bit-identical and changes the global feature."""
    backbone = _wrap(copy.deepcopy(model64), 32)
    images = _images()
    before = backbone(images)
    with torch.no_grad():
        backbone.model.visual.transformer.resblocks[-1].mlp.c_fc.weight.mul_(3.0)
    after = backbone(images)
    assert torch.equal(after.patches[-1], before.patches[-1])
    assert torch.equal(after.patches[0], before.patches[0])
    assert not torch.allclose(after.cls, before.cls)


def test_a_tap_before_the_vv_blocks_is_the_ordinary_stream(model64):
    """Tiny defaults: V-V on blocks 2–4, so tap 1 is a standard block and equals the
    tap of the same model without V-V; taps 2–4 differ."""
    images = _images()
    with_vv = _wrap(model64, 32)
    assert with_vv.vv_block_indices == (2, 3, 4)
    a, b = with_vv(images), _wrap(model64, 32, vv_blocks=0)(images)
    torch.testing.assert_close(a.patches[0], b.patches[0], rtol=1e-6, atol=1e-6)
    assert all(not torch.allclose(x, y) for x, y in zip(a.patches[1:], b.patches[1:], strict=True))


def test_layer_order_follows_the_config(model64):
    images = _images()
    ordered = _wrap(model64, 32, layers=(1, 4))(images)
    swapped = _wrap(model64, 32, layers=(4, 1))(images)
    assert torch.equal(ordered.patches[0], swapped.patches[1])
    assert torch.equal(ordered.patches[1], swapped.patches[0])


def test_a_batch_equals_its_images_one_by_one():
    backbone = ClipBackbone.tiny()
    images = _images(2, 64, torch.float32)
    batch = backbone(images)
    for i in range(2):
        single = backbone(images[i : i + 1])
        torch.testing.assert_close(single.cls, batch.cls[i : i + 1], rtol=1e-5, atol=1e-5)
        for s, b in zip(single.patches, batch.patches, strict=True):
            torch.testing.assert_close(s, b[i : i + 1], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ configuration


def test_paper_and_official_presets_on_a_24_block_vit():
    """ViT-L/14-336 on the meta device (shapes only): the blocks, taps and grid of paper
    Sec. 4.1 and of the official code."""
    config = open_clip.get_model_config("ViT-L-14-336")
    with torch.device("meta"):
        model = open_clip.CLIP(**config)
    paper = ClipBackbone(model, BackboneConfig.paper())
    official = ClipBackbone(model, BackboneConfig.official_code())
    assert paper.depth == 24
    assert paper.width == 1024
    assert paper.embed_dim == 768
    assert paper.vv_block_indices == tuple(range(5, 25))  # last 20 (paper)
    assert official.vv_block_indices == tuple(range(6, 25))  # last 19 (code)
    assert paper.layers == (6, 12, 18, 24)
    assert paper.grid == (37, 37)
    assert paper.pos_embed((37, 37)).shape == (1 + 37 * 37, 1024)
    features = paper(torch.empty(1, 3, 518, 518, device="meta"))
    assert features.grid == (37, 37)
    assert [tuple(p.shape) for p in features.patches] == [(1, 1369, 768)] * 4
    assert tuple(features.cls.shape) == (1, 768)


@pytest.mark.slow
def test_vit_l_14_336_with_random_weights_at_518():
    """The real ViT-L/14-336 architecture (random weights, ~428 M parameters): config,
    QuickGELU, the 37×37 positional table; one forward on a small 28 px input (the full
    518 px forward takes about a minute on 2 CPU cores; the meta-device test checks it)."""
    backbone = ClipBackbone.from_pretrained("ViT-L-14-336", None, image_size=518)
    assert backbone.trained is False
    assert "untrained" in repr(backbone)
    assert sum(p.numel() for p in backbone.parameters()) == 427_944_193
    assert isinstance(backbone.model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert backbone.grid == (37, 37)
    assert backbone.vv_block_indices == tuple(range(5, 25))
    table = backbone.pos_embed((37, 37))
    assert table.shape == (1370, 1024)
    assert torch.equal(table[0], backbone.model.visual.positional_embedding[0])
    features = backbone(torch.randn(1, 3, 28, 28))
    assert features.grid == (2, 2)
    assert [tuple(p.shape) for p in features.patches] == [(1, 4, 768)] * 4


def test_default_taps_and_vv_blocks_scale_with_depth():
    backbone = ClipBackbone.tiny()
    assert backbone.layers == (1, 2, 3, 4)  # quarters of 4 blocks
    assert backbone.vv_blocks == 3  # round(20 / 24 · 4)


def test_config_errors():
    with pytest.raises(ValueError, match="`layers` must not repeat a block"):
        BackboneConfig(layers=(6, 6))
    with pytest.raises(ValueError, match="`layers` must be a non-empty sequence"):
        BackboneConfig(layers=())
    with pytest.raises(ValueError, match="`vv_blocks` must be None or an int ≥ 0"):
        BackboneConfig(vv_blocks=-1)
    with pytest.raises(ValueError, match="`pos_interpolation` must be one of"):
        BackboneConfig(pos_interpolation="nearest")
    with pytest.raises(ValueError, match=r"`layers` \(6, 12\) exceed the depth 4"):
        ClipBackbone.tiny(layers=(6, 12))
    with pytest.raises(ValueError, match="`vv_blocks`=20 exceeds the depth 4"):
        ClipBackbone.tiny(vv_blocks=20)
    with pytest.raises(ValueError, match="multiple of the patch size 8"):
        ClipBackbone.tiny(image_size=60)


# ------------------------------------------------------------------ positional embeddings


def test_pos_embed_is_the_identity_at_the_native_grid(resize):
    backbone = ClipBackbone.tiny(image_size=32)
    table = backbone.model.visual.positional_embedding
    assert torch.equal(backbone.pos_embed((4, 4)), table)
    assert interpolate_pos_embed(table, (4, 4)) is table
    # bilinear resizing at scale 1 is exact too, so the shortcut changes nothing
    assert torch.equal(resize(table.detach(), 4, (4, 4)), table)


def test_pos_embed_interpolation_matches_a_plain_reshape(resize):
    table = torch.randn(1 + 24 * 24, 16, dtype=torch.float64)
    torch.testing.assert_close(interpolate_pos_embed(table, (37, 37)), resize(table, 24, (37, 37)))


def test_pos_embed_keeps_row_major_orientation():
    """Channel 0 holds the row, channel 1 the column of each patch: after resizing to a
    non-square grid the rows still vary along y only and the columns along x only."""
    ys, xs = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    table = torch.cat([torch.zeros(1, 2), torch.stack([ys, xs], -1).reshape(16, 2)])
    out = interpolate_pos_embed(table, (6, 10))[1:].reshape(6, 10, 2)
    assert torch.allclose(out[..., 0], out[:, :1, 0].expand(6, 10))  # constant along x
    assert torch.allclose(out[..., 1], out[:1, :, 1].expand(6, 10))  # constant along y
    assert bool((out[1:, 0, 0] >= out[:-1, 0, 0]).all())
    assert float(out[-1, 0, 0]) == 3.0


def test_pos_embed_is_cached_per_grid_and_refreshed_on_new_weights_or_dtype():
    backbone = ClipBackbone.tiny()
    table = backbone.pos_embed((8, 8))
    assert backbone.pos_embed((8, 8)) is table
    assert backbone.pos_embed((5, 7)).shape == (36, 64)
    with torch.no_grad():  # new weights (as load_state_dict copies them): a new table
        backbone.model.visual.positional_embedding.mul_(2.0)
    torch.testing.assert_close(backbone.pos_embed((8, 8)), 2.0 * table)
    backbone.double()
    assert backbone.pos_embed((8, 8)).dtype == torch.float64


def test_bicubic_option():
    table = torch.randn(17, 3)
    bicubic = interpolate_pos_embed(table, (8, 8), mode="bicubic")
    assert not torch.allclose(bicubic, interpolate_pos_embed(table, (8, 8)))
    with pytest.raises(ValueError, match="`mode` must be one of"):
        interpolate_pos_embed(table, (8, 8), mode="area")


def test_interpolate_pos_embed_errors():
    with pytest.raises(ValueError, match="not a perfect square"):
        interpolate_pos_embed(torch.randn(1 + 12, 4), (4, 4))
    with pytest.raises(ValueError, match=r"`grid` must be a pair of positive ints"):
        interpolate_pos_embed(torch.randn(1 + 16, 4), (4, 0))
    with pytest.raises(ValueError, match="a CLS row and at least one patch row"):
        interpolate_pos_embed(torch.randn(1, 4), (4, 4))
    out = interpolate_pos_embed(torch.randn(1 + 12, 4), (6, 4), source_grid=(3, 4))
    assert out.shape == (25, 4)


# ------------------------------------------------------------------ frozen, dtypes, autograd


def test_frozen_and_always_in_eval_mode():
    backbone = ClipBackbone.tiny()
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert not backbone.model.training


def test_outputs_are_float32_ordinary_tensors_usable_in_autograd():
    backbone = ClipBackbone.tiny()
    features = backbone(_images(1, 64, torch.float16))
    assert isinstance(features, Features)
    assert all(t.dtype == torch.float32 for t in [*features.patches, features.cls])
    assert not features.cls.is_inference()
    head = nn.Linear(32, 1)  # a trainable module on top of the frozen features
    head(features.patches[-1]).sum().backward()
    assert head.weight.grad is not None


def test_inference_mode_off_lets_gradients_reach_the_images():
    backbone = ClipBackbone.tiny()
    backbone.inference_mode = False
    images = _images(1, 64, torch.float32).requires_grad_(True)
    backbone(images).cls.sum().backward()
    assert images.grad is not None
    assert float(images.grad.abs().sum()) > 0
    assert all(p.grad is None for p in backbone.parameters())


def test_autocast_bfloat16_returns_float32_close_to_float32():
    backbone = ClipBackbone.tiny()
    images = _images(2, 64, torch.float32)
    exact = backbone(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = backbone(images)
    assert half.cls.dtype == torch.float32
    for a, b in zip([*half.patches, half.cls], [*exact.patches, exact.cls], strict=True):
        cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
        assert float(cos.min()) > 0.99


def test_forward_errors():
    backbone = ClipBackbone.tiny()
    with pytest.raises(ValueError, match=r"`images` must have 4 dimensions \(B, 3, H, W\)"):
        backbone(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match="multiples of the patch size 8"):
        backbone(torch.zeros(1, 3, 60, 64))
    with pytest.raises(ValueError, match=r"shape \(1, 1, 64, 64\)"):
        backbone(torch.zeros(1, 1, 64, 64))
    bad = torch.zeros(1, 3, 64, 64)
    bad[0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="`images` must be finite; got 1 NaN"):
        backbone(bad)
    with pytest.raises(ValueError, match="must not be empty"):
        backbone(torch.zeros(0, 3, 64, 64))
    with pytest.raises(ValueError, match="are on meta but the backbone is on cpu"):
        backbone(torch.zeros(1, 3, 64, 64, device="meta"))


def test_rejects_models_it_cannot_read():
    with pytest.raises(ValueError, match="VisionTransformer image tower"):
        ClipBackbone(nn.Module())
    with pytest.raises(TypeError, match="`config` must be a BackboneConfig"):
        ClipBackbone(ClipBackbone.tiny().model, {"vv_blocks": 1})


@pytest.mark.gpu
def test_cuda_parity_and_autocast(model64, reference):
    """On CUDA: the same parity checks as on CPU, and float16/bfloat16 autocast."""
    cuda = torch.device("cuda")
    model64 = copy.deepcopy(model64).to(cuda)
    backbone = _wrap(model64, 32, vv_blocks=0, global_ln_post=True)
    images = _images().to(cuda)
    _close(backbone(images).cls, backbone.model.encode_image(images))
    dual = _wrap(model64, 64)
    images64 = _images(size=64).to(cuda)
    patches, cls = reference(
        dual.model, images64, layers=dual.layers, vv_blocks=3, global_ln_post=False
    )
    features = dual(images64)
    assert features.cls.device.type == "cuda"
    for got, expected in zip([*features.patches, features.cls], [*patches, cls], strict=True):
        _close(got, expected)
    single = ClipBackbone.tiny().to(cuda)
    exact = single(images64.float())
    for dtype in (torch.float16, torch.bfloat16):
        with torch.autocast("cuda", dtype=dtype):
            half = single(images64.float())
        assert half.cls.dtype == torch.float32
        for a, b in zip([*half.patches, half.cls], [*exact.patches, exact.cls], strict=True):
            assert float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min()) > 0.99
