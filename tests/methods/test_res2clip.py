"""Res2CLIP composer on the tiny random CLIP: shapes, equality with a direct composition of
the primitives, identity adapters, per-phase gradient flow, batching, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from resad_kit.clip import ClipBackbone, Features, encode_prompt_ensemble
from resad_kit.methods import BranchOutput, Prediction, Res2CLIP, Res2CLIPConfig, TrainingBatch
from resad_kit.nn import Res2CLIPAdapters
from resad_kit.ops import (
    gaussian_blur,
    radial_distance,
    retrieve,
    top_fraction_mean,
    upsample_patches,
)

SIZE = 64


@pytest.fixture(scope="module")
def backbone() -> ClipBackbone:
    return ClipBackbone.tiny(seed=0, image_size=SIZE)


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, SIZE, SIZE, generator=g), torch.randn(3, 3, SIZE, SIZE, generator=g)


def fine_tuned_like_training_free() -> Res2CLIPConfig:
    tf = Res2CLIPConfig.paper()
    return Res2CLIPConfig.paper(
        "fine_tuned",
        residual_taps=(-1,),
        pixel_weights=tf.pixel_weights,
        image_weights=tf.image_weights,
    )


def direct_training_free(backbone, refs, queries, *, clamp=False):
    """Res²CLIP* written out from Sec. 3.2 (eqs. 5–12) and App. F.2 with the primitives,
    layer by layer."""
    r_feats, q_feats = backbone(refs), backbone(queries)
    h, w = q_feats.grid
    k = refs.shape[0]
    r_t = encode_prompt_ensemble(backbone).residual
    r_hat = r_t / r_t.norm()
    radius = radial_distance(h, w)

    def residual(layer):
        bank = F.normalize(r_feats.patches[layer], dim=-1).reshape(k * h * w, -1)
        q = F.normalize(q_feats.patches[layer], dim=-1)
        ref = retrieve(q, bank, query_radius=radius, bank_radius=radius.repeat(k), gamma=0.01)
        return q - F.normalize(ref.reference, dim=-1)

    def finish(patch_scores):
        return gaussian_blur(upsample_patches(patch_scores, SIZE), 4.0, 5)

    text_map = finish(F.normalize(q_feats.patches[-1], dim=-1) @ r_hat)
    vis_map = finish(torch.stack([residual(layer).norm(dim=-1) for layer in range(4)]).mean(0))
    proj = residual(3) @ r_hat
    res_map = finish(proj.clamp_min(0) if clamp else proj)
    f_q = F.normalize(q_feats.cls, dim=-1)
    f_ref = F.normalize(F.normalize(r_feats.cls, dim=-1).mean(0), dim=-1)
    g = (f_q - f_ref) @ r_hat
    s_text = 0.5 * f_q @ r_hat + 0.5 * top_fraction_mean(text_map)
    s_vis = top_fraction_mean(vis_map)
    s_res = 0.5 * (g.clamp_min(0) if clamp else g) + 0.5 * top_fraction_mean(res_map)
    fused = gaussian_blur(0.1 * text_map + vis_map + res_map, 4.0, 5)
    return s_text + s_vis + s_res, fused, (text_map, vis_map, res_map)


def test_shapes_of_every_branch(backbone, images):
    refs, queries = images
    model = Res2CLIP(backbone).fit_references(refs)
    pred = model(queries)
    assert isinstance(pred, Prediction)
    assert all(isinstance(b, BranchOutput) for b in pred.branches.values())
    assert pred.image_score.shape == (3,)
    assert pred.anomaly_map.shape == (3, SIZE, SIZE)
    assert set(pred.branches) == {"text", "visual", "residual"}
    for branch in pred.branches.values():
        assert branch.map.shape == (3, SIZE, SIZE)
        assert branch.score.shape == (3,)
        assert branch.map.dtype == torch.float32
    assert model(queries, output_size=(32, 48)).anomaly_map.shape == (3, 32, 48)


@pytest.mark.parametrize("clamp", [False, True])
def test_training_free_equals_direct_composition(backbone, images, clamp):
    refs, queries = images
    config = Res2CLIPConfig.paper(clamp_residual_projection=clamp)
    pred = Res2CLIP(backbone, config).fit_references(refs)(queries)
    score, fused, maps = direct_training_free(backbone, refs, queries, clamp=clamp)
    torch.testing.assert_close(pred.image_score, score, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pred.anomaly_map, fused, rtol=1e-5, atol=1e-6)
    for name, expected in zip(("text", "visual", "residual"), maps, strict=True):
        torch.testing.assert_close(pred.branches[name].map, expected, rtol=1e-5, atol=1e-6)
    if clamp:
        assert bool((pred.branches["residual"].map >= 0).all())


def test_features_input_equals_image_input(backbone, images):
    refs, queries = images
    a = Res2CLIP(backbone).fit_references(refs)(queries)
    b = Res2CLIP(backbone).fit_references(backbone(refs))(backbone(queries))
    assert torch.equal(a.image_score, b.image_score)
    assert torch.equal(a.anomaly_map, b.anomaly_map)


def test_adapters_at_initialisation_reproduce_training_free(backbone, images):
    refs, queries = images
    tf = Res2CLIP(backbone).fit_references(refs)(queries)
    model = Res2CLIP(backbone, fine_tuned_like_training_free())
    assert model.adapters is not None
    ft = model.fit_references(refs)(queries)
    torch.testing.assert_close(ft.image_score, tf.image_score, rtol=0, atol=1e-6)
    torch.testing.assert_close(ft.anomaly_map, tf.anomaly_map, rtol=0, atol=1e-6)


def test_trained_adapters_change_the_prediction(backbone, images):
    refs, queries = images
    model = Res2CLIP(backbone, fine_tuned_like_training_free()).fit_references(refs)
    before = model(queries).anomaly_map
    with torch.no_grad():
        model.adapters.visual[0].up.weight.normal_()
    assert not torch.allclose(model(queries).anomaly_map, before)


def test_batching_equals_one_image_at_a_time(backbone, images):
    """A batch of images equals one image at a time up to float32 rounding (the backbone's
    GEMMs and the blur's convolution may round differently for another batch size)."""
    refs, queries = images
    model = Res2CLIP(backbone).fit_references(refs)
    batched = model(queries)
    single = [model(queries[i : i + 1]) for i in range(3)]
    torch.testing.assert_close(
        batched.image_score, torch.cat([p.image_score for p in single]), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(
        batched.anomaly_map, torch.cat([p.anomaly_map for p in single]), rtol=1e-5, atol=1e-6
    )


def test_chunked_retrieval_gives_the_same_prediction(backbone, images):
    refs, queries = images
    plain = Res2CLIP(backbone).fit_references(refs)(queries)
    chunked = Res2CLIP(backbone, Res2CLIPConfig.paper(chunk_size=64)).fit_references(refs)(queries)
    assert torch.equal(plain.anomaly_map, chunked.anomaly_map)


def training_batch(backbone) -> TrainingBatch:
    g = torch.Generator().manual_seed(1)
    query = backbone(torch.randn(4, 3, SIZE, SIZE, generator=g))
    reference = backbone(torch.randn(4, 3, SIZE, SIZE, generator=g))
    masks = torch.zeros(4, SIZE, SIZE)
    masks[2:, 8:24, 16:40] = 1
    return TrainingBatch(query, reference, masks)


def module_of(name: str) -> str:
    parts = name.split(".")
    return parts[0]


@pytest.mark.parametrize("phase", ["visual", "text"])
def test_each_phase_trains_exactly_its_adapters(backbone, phase):
    model = Res2CLIP(backbone, Res2CLIPConfig.paper("fine_tuned"))
    out = model.losses(training_batch(backbone), phase)
    assert set(out) == {"text", "visual", "residual", "total"}
    torch.testing.assert_close(out["total"], out["text"] + out["visual"] + out["residual"])
    out["total"].backward()
    trained = set(model.adapters.phase_modules(phase))
    for name, p in model.adapters.named_parameters():
        if module_of(name) in trained:
            assert p.grad is not None, name
        else:
            assert p.grad is None, name
    for name in trained:  # every trained adapter gets a non-zero gradient somewhere
        module = getattr(model.adapters, name)
        assert any(p.grad.abs().sum() > 0 for p in module.parameters()), name
    assert all(p.grad is None and not p.requires_grad for p in backbone.parameters())


def test_losses_match_between_phases_at_initialisation(backbone):
    # At init the adapters are identities: both phases evaluate the same total loss value.
    model = Res2CLIP(backbone, Res2CLIPConfig.paper("fine_tuned"))
    batch = training_batch(backbone)
    visual, text = model.losses(batch, "visual"), model.losses(batch, "text")
    torch.testing.assert_close(visual["text"], text["text"])
    torch.testing.assert_close(visual["visual"], text["visual"])
    assert torch.isfinite(visual["residual"])
    assert torch.isfinite(text["residual"])


def test_config_presets_and_round_trip():
    paper = Res2CLIPConfig.paper("fine_tuned")
    code = Res2CLIPConfig.official_code("fine_tuned")
    assert paper.lr_global_visual == 1e-4
    assert code.lr_global_visual == 5e-4
    assert not paper.clamp_residual_projection
    assert code.clamp_residual_projection
    assert (code.extra_anomaly_phrase, code.normalize_before_mean, code.unit_text_residual) == (
        True,
        True,
        True,
    )
    for config in (paper, code, Res2CLIPConfig.paper()):
        assert Res2CLIPConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "finetune"},
        {"text_taps": ()},
        {"visual_taps": (0, 0)},
        {"pixel_weights": (1.0, 2.0)},
        {"gamma": -0.1},
        {"top_fraction": 0.0},
        {"top_fraction": 1.5},
        {"blur_kernel": 4},
        {"loss_reduction": "mean"},
        {"margin": float("nan")},
    ],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError, match="Res2CLIPConfig"):
        Res2CLIPConfig(**kwargs)


def test_clear_errors(backbone, images):
    refs, queries = images
    model = Res2CLIP(backbone)
    with pytest.raises(RuntimeError, match="fit_references"):
        model(queries)
    with pytest.raises(ValueError, match="taps"):
        Res2CLIP(backbone, Res2CLIPConfig.paper(text_taps=(7,)))
    with pytest.raises(ValueError, match="no adapters"):
        model.losses(training_batch(backbone), "visual")
    with pytest.raises(ValueError, match="training-free"):
        Res2CLIP(backbone, adapters=Res2CLIPAdapters(32, 4))
    ft = Res2CLIP(backbone, Res2CLIPConfig.paper("fine_tuned"))
    with pytest.raises(ValueError, match="phase"):
        ft.losses(training_batch(backbone), "both")
    model.fit_references(refs)
    with pytest.raises(ValueError, match="grid"):
        model(torch.randn(1, 3, 32, 32))
    feats = backbone(queries)
    with pytest.raises(ValueError, match="layers"):
        model(Features(feats.patches[:2], feats.cls, feats.grid))


def test_a_residual_tap_backbone_is_refused():
    """Res²CLIP scores projected tokens: raw residual-stream taps (AF-CLIP's tap mode, of
    another width) would be scored silently wrong, so they are refused by name."""
    residual = ClipBackbone.tiny(tap_output="residual")
    with pytest.raises(ValueError, match="tap_output='projected'"):
        Res2CLIP(residual)
