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
            z = F.normalize(z, dim=-1)
            g = (z @ F.normalize(intrinsic, dim=-1).T).argmax(-1)
            logits = scale * torch.stack([(z * normal[g]).sum(-1), (z * abnormal[g]).sum(-1)], -1)
            return torch.softmax(logits, -1)[..., 1]

        pad_map = pad(tokens)
        torch.testing.assert_close(pred.intermediates["pad"], pad_map, rtol=1e-4, atol=1e-5)
        fused = 1 / (1 / (vad + 1e-8) + 1 / (pad_map + 1e-8))
        up = F.interpolate(fused.reshape(2, 1, 4, 4), size=(32, 32), mode="bilinear")[:, 0]
        smooth = np.stack([gaussian_filter(m, sigma=4, mode="reflect") for m in up.numpy()])
        torch.testing.assert_close(pred.anomaly_map, torch.from_numpy(smooth), rtol=1e-4, atol=1e-5)
        score = 1 / (1 / (vad.max(-1).values + 1e-8) + 1 / (pad(cls) + 1e-8))
        torch.testing.assert_close(pred.image_score, score, rtol=1e-4, atol=1e-6)


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
    qf_grads = [p.grad for p in model.query_former.parameters()]
    if preset == "paper":
        assert all(g is not None for g in qf_grads)
    else:  # released code: the Query Former is in no loss
        assert all(g is None for g in qf_grads)
    assert all(p.grad is None for p in model.backbone.parameters())
    assert {id(p) for p in model.trainable_module().parameters()} == {
        id(p) for p in [*model.prompts.parameters(), *model.query_former.parameters()]
    }


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
