"""FineGrainedAD: forward equals a direct composition on the tiny backbone; training scope."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from resad_kit.clip import ClipBackbone
from resad_kit.clip.mfsc import load_captions, load_vocabularies
from resad_kit.clip.mllp import group_anchors
from resad_kit.methods import TrainingBatch
from resad_kit.methods.finegrainedad import FineGrainedAD, FineGrainedADConfig
from resad_kit.ops import match_regions, progressive_region_aggregation, region_weights

CONFIG = FineGrainedADConfig(memory_layers=(1, 3))


@pytest.fixture(scope="module")
def fitted():
    torch.manual_seed(0)
    backbone = ClipBackbone.tiny(seed=1, image_size=32)  # the native 4×4 grid
    model = FineGrainedAD(backbone, load_captions("coins"), load_vocabularies(), CONFIG)
    refs = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return model.fit_references(refs), refs


def _blocks(model, images):
    """The ordinary residual stream after every block, run block by block (no resad_kit)."""
    v = model.visual
    x = v.conv1(images).flatten(2).transpose(1, 2)
    cls = v.class_embedding.expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], 1) + v.positional_embedding
    x = v.ln_pre(x)
    outs = []
    for block in v.transformer.resblocks:
        x = block(x)
        outs.append(x)
    return outs


def _vv_tokens(model, images):
    """V-V stream of every block (CLIP Surgery q=k=v attention, no MLP), LN_post and proj."""
    v = model.visual
    x = v.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], 1) + v.positional_embedding
    x_o = v.ln_pre(x)
    x_v = x_o
    for block in v.transformer.resblocks:
        attn = block.attn
        y = block.ln_1(x_o)
        w, b = attn.in_proj_weight, attn.in_proj_bias
        d = y.shape[-1]
        val = F.linear(y, w[2 * d :], b[2 * d :])
        heads = attn.num_heads
        vh = val.unflatten(-1, (heads, d // heads)).transpose(1, 2)  # (B, H, T, dh)
        att = torch.softmax(vh @ vh.transpose(-1, -2) * (d // heads) ** -0.5, -1)
        out = (att @ vh).transpose(1, 2).flatten(2)
        x_v = x_v + attn.out_proj(out)
        x_o = block(x_o)
    return v.ln_post(x_v[:, 1:]) @ v.proj, v.ln_post(x_o[:, 0]) @ v.proj


def _pad_direct(z, normal, abnormal, intrinsic, scale):
    """Eqs. 4-5: route to argmax_g cos(z, q_g), softmax of the scaled two cosines."""
    z = F.normalize(z, dim=-1)
    g = (z @ F.normalize(intrinsic, dim=-1).T).argmax(-1)
    logits = scale * torch.stack([(z * normal[g]).sum(-1), (z * abnormal[g]).sum(-1)], -1)
    return torch.softmax(logits, -1)[..., 1]


def _smooth(fused):
    up = F.interpolate(fused.reshape(-1, 1, 4, 4), size=(32, 32), mode="bilinear")[:, 0]
    return torch.from_numpy(np.stack([gaussian_filter(m, sigma=4, mode="reflect") for m in up]))


def test_forward_equals_direct_composition(fitted):
    model, refs = fitted
    clip = model.backbone.model
    query = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        pred = model(query, return_intermediates=True)
        # memory branch: ordinary stream of blocks 1 and 3, exact 1-NN cosine distance
        q_blocks, r_blocks = _blocks(clip, query), _blocks(clip, refs)
        vad = 0
        for layer in (0, 2):
            q = F.normalize(q_blocks[layer][:, 1:], dim=-1)
            bank = F.normalize(r_blocks[layer][:, 1:].flatten(0, 1), dim=-1)
            vad = vad + 0.5 * ((1 - q @ bank.T) / 2).min(-1).values
        torch.testing.assert_close(pred.intermediates["vad"], vad, rtol=1e-4, atol=1e-5)
        # PAD: route each token to argmax_g cos(z, q_g), softmax of raw-logit-scale cosines
        tokens, cls = _vv_tokens(clip, query)
        normal, abnormal = group_anchors(model.prompts())
        intrinsic = model.query_former(normal, abnormal)
        scale = float(clip.logit_scale)  # official_code: the raw parameter

        def pad(z):
            return _pad_direct(z, normal, abnormal, intrinsic, scale)

        pad_map = pad(tokens)
        torch.testing.assert_close(pred.intermediates["pad"], pad_map, rtol=1e-4, atol=1e-5)
        fused = 1 / (1 / (vad + 1e-8) + 1 / (pad_map + 1e-8))
        torch.testing.assert_close(pred.anomaly_map, _smooth(fused), rtol=1e-4, atol=1e-5)
        assert "image_weights" not in pred.intermediates  # Eq. 6 off (official_code)
        score = 1 / (1 / (vad.max(-1).values + 1e-8) + 1 / (pad(cls) + 1e-8))
        torch.testing.assert_close(pred.image_score, score, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("preset", ["official_code", "paper"])
def test_eq6_image_reweighting_equals_direct_composition(fitted, preset):
    model0, refs = fitted
    base = dataclasses.replace(getattr(FineGrainedADConfig, preset)(), memory_layers=(1, 3))
    clip = model0.backbone.model
    torch.manual_seed(3)
    on = FineGrainedAD(
        model0.backbone, model0.captions, load_vocabularies(),
        dataclasses.replace(base, image_reweight=True),
    )  # fmt: skip
    with torch.no_grad():  # non-identity parameters: prompts, gates and Query Former moved
        for p in on.parts.parameters():
            p.add_(0.5 * torch.randn_like(p))
    off = FineGrainedAD(
        model0.backbone, model0.captions, load_vocabularies(),
        dataclasses.replace(base, image_reweight=False),
    )  # fmt: skip
    off.parts.load_state_dict(on.parts.state_dict())
    on.fit_references(refs)
    off.fit_references(refs)
    query = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got, plain = on(query, return_intermediates=True), off(query, return_intermediates=True)
        tokens, cls = _vv_tokens(clip, query)
        normal, abnormal = group_anchors(on.prompts())
        intrinsic = on.query_former(normal, abnormal)
        scale = float(clip.logit_scale)
        scale = scale if preset == "official_code" else math.exp(scale)
        pad_hat = _pad_direct(tokens, normal, abnormal, intrinsic, scale)
        z, e = F.normalize(tokens, dim=-1), on.num_components  # the image group's index
        prob = torch.softmax(scale * torch.stack([z @ normal[e], z @ abnormal[e]], -1), -1)[..., 1]
        weights = prob / prob.sum(-1, keepdim=True)  # Eq. 6: a / Σ_k a_k over the 16 tokens
        assert float(weights.std()) > 0  # not uniform: the test sees the weights
        torch.testing.assert_close(weights.sum(-1), torch.ones(2))  # M_p ≈ M̂_p / N
        torch.testing.assert_close(
            got.intermediates["image_weights"], weights, rtol=1e-4, atol=1e-6
        )
        torch.testing.assert_close(got.intermediates["pad_token"], pad_hat, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(
            got.intermediates["pad"], weights * pad_hat, rtol=1e-4, atol=1e-6
        )
        vad = got.intermediates["vad"]
        fused = 1 / (1 / (vad + 1e-8) + 1 / (weights * pad_hat + 1e-8))  # Eq. 7 on M_p
        torch.testing.assert_close(got.anomaly_map, _smooth(fused), rtol=1e-4, atol=1e-6)
        assert bool((fused <= weights * pad_hat + 1e-6).all())  # the harmonic mean ≤ M_p
        # off: the current behaviour, M̂_p fused as it is; the image score is unchanged by Eq. 6
        torch.testing.assert_close(plain.intermediates["pad"], pad_hat, rtol=1e-4, atol=1e-5)
        fused_off = 1 / (1 / (vad + 1e-8) + 1 / (pad_hat + 1e-8))
        torch.testing.assert_close(plain.anomaly_map, _smooth(fused_off), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got.image_score, plain.image_score)
        want = 1 / (
            1 / (vad.max(-1).values + 1e-8)
            + 1 / (_pad_direct(cls, normal, abnormal, intrinsic, scale) + 1e-8)
        )
        torch.testing.assert_close(got.image_score, want, rtol=1e-4, atol=1e-6)


def test_global_feature_is_open_clips_encode_image(fitted):
    model, refs = fitted
    with torch.no_grad():
        torch.testing.assert_close(
            model.encode(refs).cls, model.backbone.model.encode_image(refs), rtol=1e-4, atol=1e-5
        )


def test_region_weights_cover_every_group(fitted):
    model, _ = fitted
    w = model.loss_weights
    assert w.shape == (2, model.num_components + 1, 16)
    assert float(w.min()) >= 1.0
    assert float(w.max()) <= 1.0 + CONFIG.gamma + 1e-6
    assert bool((w.amax(-1) > 1.0).all())  # every group's region is somewhere in each image


@pytest.mark.parametrize("preset", ["official_code", "paper"])
def test_region_weights_equal_a_direct_composition(fitted, preset):
    """Region loss weights (Sec. 3.4): ×4 bicubic image cut into 4×4 tiles, V-V tokens stitched,
    two-stage DPC-KNN against the normal component and background anchors (the paper preset
    with its semantic initial centres), regions matched, γ-weighted, pooled 4×4."""
    model0, refs = fitted
    config = dataclasses.replace(getattr(FineGrainedADConfig, preset)(), memory_layers=(1, 3))
    torch.manual_seed(0)
    model = FineGrainedAD(model0.backbone, model0.captions, load_vocabularies(), config)
    model.fit_references(refs)
    with torch.no_grad():
        big = F.interpolate(refs, scale_factor=4, mode="bicubic", align_corners=False)
        k, side = refs.shape[0], refs.shape[-1]
        tiles = big.unflatten(2, (4, side)).unflatten(4, (4, side))  # k c ty h tx w
        tiles = tiles.permute(0, 2, 4, 1, 3, 5).reshape(k * 16, 3, side, side)
        feats = model._tokens_view(tiles)
        gh, gw = feats.grid
        tokens = feats.patches[0].reshape(k, 4, 4, gh, gw, -1)  # k ty tx h w d
        stitched = tokens.permute(0, 1, 3, 2, 4, 5).reshape(k, 16 * gh * gw, -1)
        normal, _ = group_anchors(model.prompts())
        e = model.num_components
        anchors = torch.cat([normal[:e], normal[e + 1 :]])
        out = progressive_region_aggregation(
            stitched, anchors, k=(8, 5), generator=torch.Generator().manual_seed(0),
            semantic_centers=preset == "paper",
        )  # fmt: skip
        matched = match_regions(stitched, out.regions, anchors, e + 1)
        expected = region_weights(out.regions, matched, grid=(4 * gh, 4 * gw), pool=4, gamma=1.5)
    torch.testing.assert_close(model.loss_weights, expected, rtol=0, atol=0)


@pytest.mark.parametrize("preset", ["official_code", "paper"])
def test_training_touches_only_prompts_and_query_former(fitted, preset):
    model0, refs = fitted
    config = dataclasses.replace(getattr(FineGrainedADConfig, preset)(), memory_layers=(1, 3))
    torch.manual_seed(0)
    model = FineGrainedAD(model0.backbone, model0.captions, load_vocabularies(), config)
    model.fit_references(refs)
    batch = TrainingBatch(model.encode(refs), None, torch.zeros(2, 32, 32))
    out = model.losses(batch, "train")
    assert set(out) >= {"clip", "trip", "mean", "reg", "total"}
    assert ("query_former" in out) == (preset == "paper")
    out["total"].backward()
    assert float(model.prompts.normal_ctx.grad.abs().max()) > 0
    assert float(model.prompts.abnormal_ctx.grad.abs().max()) > 0
    # Attr-MoE: the code gates the image group, the paper each component (trainable)
    gated = [a.group for a in model.prompts.attributes]
    e = model.num_components
    assert gated == ([e] if preset == "official_code" else list(range(e)))
    assert all(float(g.grad.abs().min()) > 0 for g in model.prompts.attr_gates)
    qf_grads = [p.grad for p in model.query_former.parameters()]
    if preset == "paper":
        assert all(g is not None for g in qf_grads)
    else:  # released code: the Query Former is in no loss
        assert all(g is None for g in qf_grads)
    assert all(p.grad is None for p in model.backbone.parameters())
    prompt_params = [
        model.prompts.normal_ctx, model.prompts.abnormal_ctx, *model.prompts.attr_gates
    ]  # fmt: skip
    assert {id(p) for p in model.trainable_module().parameters()} == {
        id(p) for p in [*prompt_params, *model.query_former.parameters()]
    }
    assert {id(p) for p in model.parameters() if p.requires_grad} == {
        id(p) for p in model.trainable_module().parameters()
    } | {id(p) for p in model.backbone.parameters() if p.requires_grad}


def test_temperature_presets(fitted):
    model, _ = fitted
    raw = float(model.backbone.model.logit_scale)
    assert model._scale() == pytest.approx(raw)
    config = dataclasses.replace(FineGrainedADConfig.paper(), memory_layers=(1, 3))
    paper = FineGrainedAD(model.backbone, model.captions, load_vocabularies(), config)
    assert paper._scale() == pytest.approx(math.exp(raw))


def test_config_round_trip_and_errors():
    for config in (FineGrainedADConfig.official_code(), FineGrainedADConfig.paper()):
        assert FineGrainedADConfig.from_dict(config.to_dict()) == config
    assert FineGrainedADConfig().memory_layers == (3, 8)
    with pytest.raises(ValueError, match="memory_layers"):
        FineGrainedADConfig(memory_layers=(3,))
    with pytest.raises(ValueError, match="temperature"):
        FineGrainedADConfig(temperature="log")
    with pytest.raises(ValueError, match="image_reweight"):
        FineGrainedADConfig(image_reweight=1)
    with pytest.raises(ValueError, match="attr_moe"):
        FineGrainedADConfig(attr_moe="foreground")
    code, paper = FineGrainedADConfig.official_code(), FineGrainedADConfig.paper()
    assert (code.image_reweight, code.attr_moe) == (False, "image")
    assert (paper.image_reweight, paper.attr_moe) == (True, "components")
    assert (code.semantic_centers, paper.semantic_centers) == (False, True)
    with pytest.raises(ValueError, match="semantic_centers"):
        FineGrainedADConfig(semantic_centers="yes")
    with pytest.raises(ValueError, match="unknown"):
        FineGrainedADConfig.from_dict({"nope": 1})


def test_method_errors(fitted):
    model, refs = fitted
    backbone = model.backbone
    with pytest.raises(ValueError, match="exceed"):
        FineGrainedAD(backbone, model.captions, load_vocabularies(), FineGrainedADConfig())
    fresh = FineGrainedAD(backbone, model.captions, load_vocabularies(), CONFIG)
    with pytest.raises(ValueError, match="fit_references"):
        fresh(refs)
    with pytest.raises(ValueError, match="Features"):
        model(backbone(refs))
    with pytest.raises(ValueError, match="phase"):
        model.losses(TrainingBatch(model.encode(refs), None, torch.zeros(2, 32, 32)), "text")
    with pytest.raises(ValueError, match="fitted"):
        model.losses(TrainingBatch(model.encode(refs[:1]), None, torch.zeros(1, 32, 32)), "train")


def test_moving_the_method_clears_the_views_positional_tables(fitted):
    model, refs = fitted
    model.encode(refs)
    assert model._tokens_view._pos_cache
    model.to(torch.float32)
    assert not model._tokens_view._pos_cache
    assert not model._memory_view._pos_cache
