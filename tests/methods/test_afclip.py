"""AF-CLIP / AF-CLIP+ forwards equal a direct composition written here from the primitives.

The reference below re-derives every step with independent code where one exists: the
two-state softmax (the method uses the logistic form), cosine by ``F.normalize`` and a
matrix product, the 1-NN memory by an explicit similarity matrix, the bilinear upsampling
by ``F.interpolate`` and the smoothing by ``scipy.ndimage.gaussian_filter`` (σ = 4, its
defaults). The adapter, prompts and aggregation are the primitives themselves (tested in
their own files), with random, non-identity weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from resad_kit.clip import BackboneConfig, ClipBackbone
from resad_kit.methods import AFCLIP, AFCLIPConfig, MemoryScore
from resad_kit.ops import magnitude_score, retrieve, spatial_aggregate, visual_residual

SIZE = 64
SMALL = {"adapter_inner_dim": 64}  # the tiny backbone's width: the same maths, less time
SMALL_CONFIG = AFCLIPConfig.official_code(**SMALL)


@pytest.fixture(scope="module")
def backbone() -> ClipBackbone:
    return ClipBackbone.tiny(seed=3, vv_blocks=0, tap_output="residual", tap_cls=True)


def _randomised(model: AFCLIP, seed: int = 0) -> AFCLIP:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parts.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, SIZE, SIZE, generator=g), torch.randn(2, 3, SIZE, SIZE, generator=g)


def _scipy_smooth(maps: torch.Tensor) -> torch.Tensor:
    out = np.stack([gaussian_filter(m, sigma=4.0) for m in maps.double().numpy()])
    return torch.from_numpy(out).float()


def _upsample(patch: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    m = patch.reshape(-1, 1, *grid)
    return F.interpolate(m, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[:, 0]


def _direct(model: AFCLIP, backbone: ClipBackbone, queries, references=None):
    """AF-CLIP Eqs. 5–10, 12, 16–18 written out."""
    c = model.config
    with torch.no_grad():
        q = backbone(queries)
        grid = q.grid
        text = F.normalize(model.prompts(), dim=-1)  # (2, D)
        logits = 0
        for t in range(4):
            for r in (1, 3, 5):
                agg = spatial_aggregate(
                    q.patches[t], grid, r, sigma=4.0, border=c.aggregation_border
                )
                tokens = torch.cat([q.tap_cls[t][:, None], agg], dim=1)
                z = backbone.project_tokens(model.adapter(tokens))
                logits = logits + F.normalize(z, dim=-1) @ text.T / 0.07
        prob = logits.softmax(-1)[..., 1]
        p_cls, p_patch = prob[:, 0], prob[:, 1:]
        if references is None:
            return p_cls, _scipy_smooth(_upsample(p_patch, grid)), None
        ref = backbone(references)
        distances, indices = [], []
        for t in range(4):
            for r in (1, 3, 5):

                def agg(x, t=t, r=r):
                    return spatial_aggregate(
                        x.patches[t], grid, r, sigma=4.0, border=c.aggregation_border
                    )

                bank = F.normalize(agg(ref), dim=-1).reshape(-1, backbone.width)
                sim = F.normalize(agg(q), dim=-1) @ bank.T  # (B, N, K·N)
                best = sim.max(-1)
                distances.append((1 - best.values) / 2)
                indices.append(best.indices)
        a = torch.stack(distances).mean(0)
        score = a.max(-1).values + 0.1 * p_cls
        amap = _scipy_smooth(_upsample(a + 0.1 * p_patch, grid))
        return score, amap, (torch.stack(distances), torch.stack(indices))


@pytest.mark.parametrize("preset", ["official_code", "paper"])
def test_zero_shot_equals_the_direct_composition(backbone, images, preset):
    model = _randomised(AFCLIP(backbone, getattr(AFCLIPConfig, preset)()))
    queries, _ = images
    score, amap, _ = _direct(model, backbone, queries)
    with torch.no_grad():
        pred = model(queries)
    assert model.shots == 0
    assert sorted(pred.branches) == ["zero_shot"]
    torch.testing.assert_close(pred.image_score, score, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pred.anomaly_map, amap, atol=1e-5, rtol=1e-4)
    assert float(amap.std()) > 0.01  # non-trivial maps: the comparison can fail


@pytest.mark.parametrize("preset", ["official_code", "paper"])
def test_few_shot_equals_the_direct_composition(backbone, images, preset):
    model = _randomised(AFCLIP(backbone, getattr(AFCLIPConfig, preset)(**SMALL)), seed=1)
    queries, refs = images
    score, amap, (dist, index) = _direct(model, backbone, queries, refs)
    with torch.no_grad():
        pred = model.fit_references(refs)(queries, return_intermediates=True)
    assert model.shots == 2
    assert sorted(pred.branches) == ["memory", "zero_shot"]
    torch.testing.assert_close(pred.image_score, score, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pred.anomaly_map, amap, atol=1e-5, rtol=1e-4)
    extra = pred.intermediates
    torch.testing.assert_close(extra["memory/distance"], dist, atol=1e-6, rtol=1e-5)
    assert torch.equal(extra["memory/index"], index)
    torch.testing.assert_close(extra["memory/mean"], dist.mean(0), atol=1e-6, rtol=1e-5)
    # back to zero-shot: the prediction no longer uses the bank
    zero_score, _, _ = _direct(model, backbone, queries)
    with torch.no_grad():
        again = model.clear_references()(queries)
    torch.testing.assert_close(again.image_score, zero_score, atol=1e-5, rtol=1e-4)


def test_intermediates_are_the_per_view_logits_and_their_sum(backbone, images):
    model = _randomised(AFCLIP(backbone, SMALL_CONFIG), seed=2)
    queries, _ = images
    with torch.no_grad():
        extra = model(queries, return_intermediates=True).intermediates
    assert extra["views"] == tuple((t, r) for t in range(4) for r in (1, 3, 5))
    v = extra["view_logits"]
    assert v.shape == (12, 3, 65, 2)
    assert extra["grid"] == (8, 8)
    torch.testing.assert_close(extra["logits"], v.sum(0))
    torch.testing.assert_close(extra["view_probabilities"], v.softmax(-1)[..., 1])
    torch.testing.assert_close(extra["probabilities"], v.sum(0).softmax(-1)[..., 1])
    assert "memory/distance" not in extra


def test_the_memory_scorer_is_injectable(backbone, images):
    """A scorer returning zeros leaves β·P̃ as the map and α·p_CLS as the score; the
    scorer receives the (V, B, N, C) aggregated queries and the normalised (V, 1, K·N, C)
    banks."""
    seen = {}

    def zeros(query, bank):
        seen["shapes"] = (tuple(query.shape), tuple(bank.shape))
        seen["unit"] = torch.allclose(bank.norm(dim=-1), torch.ones(()))
        return MemoryScore(query.new_zeros(query.shape[:-1]))

    queries, refs = images
    model = _randomised(AFCLIP(backbone, SMALL_CONFIG, memory_score=zeros), seed=3)
    model.fit_references(refs)
    with torch.no_grad():
        pred = model(queries, return_intermediates=True)
        p = pred.intermediates["probabilities"]
    assert seen == {"shapes": ((12, 3, 64, 64), (12, 1, 128, 64)), "unit": True}
    torch.testing.assert_close(pred.image_score, 0.1 * p[:, 0])
    beta_map = _scipy_smooth(_upsample(0.1 * p[:, 1:], (8, 8)))
    torch.testing.assert_close(pred.anomaly_map, beta_map, atol=1e-6, rtol=1e-4)
    assert pred.intermediates["memory/index"] is None
    bad = AFCLIP(backbone, memory_score=lambda q, b: q.new_zeros(3)).fit_references(refs)
    with pytest.raises(ValueError, match=r"must return \(V, B, N\) = \(12, 3, 64\)"):
        bad(queries)


def test_features_and_images_give_the_same_prediction(backbone, images):
    model = _randomised(AFCLIP(backbone, SMALL_CONFIG), seed=4)
    queries, refs = images
    with torch.no_grad():
        a = model.fit_references(refs)(queries)
        b = model.fit_references(backbone(refs))(backbone(queries), output_size=SIZE)
    torch.testing.assert_close(a.anomaly_map, b.anomaly_map)
    torch.testing.assert_close(a.image_score, b.image_score)


def test_a_backbone_without_the_afclip_taps_is_refused_naming_the_preset():
    for overrides in ({}, {"vv_blocks": 0, "tap_output": "residual"}, {"tap_cls": True}):
        with pytest.raises(ValueError, match=r"BackboneConfig\.afclip\(\)"):
            AFCLIP(ClipBackbone.tiny(**overrides))
    assert BackboneConfig.afclip().tap_output == "residual"


def test_invalid_inputs_are_clear_errors(backbone, images):
    queries, refs = images
    model = AFCLIP(backbone).fit_references(refs)
    with pytest.raises(ValueError, match=r"query grid \(4, 4\) differs"):
        model(queries[..., :32, :32])
    plain = ClipBackbone.tiny(seed=3)
    with pytest.raises(ValueError, match="tap CLS tokens"):
        model(plain(queries))
    with pytest.raises(TypeError, match="must be an AFCLIPConfig"):
        AFCLIP(backbone, {"alpha": 0.1})
    with pytest.raises(ValueError, match=r"`config.taps` \(7,\) out of range"):
        AFCLIP(backbone, AFCLIPConfig(taps=(7,)))


def test_config_round_trips_and_validates():
    config = AFCLIPConfig.paper(taps=(0, 3), windows=(1, 5), alpha=0.2)
    assert AFCLIPConfig.from_dict(config.to_dict()) == config
    assert config.replace(alpha=0.1).alpha == 0.1
    for bad in (
        {"windows": (2,)},
        {"aggregation_border": "reflect"},
        {"temperature": 0.0},
        {"alpha": float("nan")},
        {"taps": (1, 1)},
        {"adapter_inner_dim": 30},
        {"suffixes": ("only one",)},
        {"blur_kernel": 4},
    ):
        with pytest.raises(ValueError, match="AFCLIPConfig"):
            AFCLIPConfig(**bad)
    with pytest.raises(ValueError, match="unknown fields"):
        AFCLIPConfig.from_dict({"gamma": 1})


def test_the_docs_sparsemax_memory_gives_its_distances_view_by_view(backbone, images):
    """docs/afclip.md's swap: Res²CLIP's sparsemax retrieval as AF-CLIP+'s memory."""

    def sparsemax_memory(query, bank):  # as in docs/afclip.md
        reference = retrieve(query, bank, normalize="query").reference
        return magnitude_score(visual_residual(query, reference)) / 2

    queries, refs = images
    model = _randomised(AFCLIP(backbone, SMALL_CONFIG, memory_score=sparsemax_memory), seed=5)
    with torch.no_grad():
        extra = model.fit_references(refs)(queries, return_intermediates=True).intermediates
        q, r = backbone(queries), backbone(refs)
        for v, (t, w) in enumerate(extra["views"]):
            qa = spatial_aggregate(q.patches[t], (8, 8), w)
            bank = F.normalize(spatial_aggregate(r.patches[t], (8, 8), w), dim=-1).flatten(0, 1)
            ref = retrieve(qa, bank).reference
            d = (F.normalize(qa, dim=-1) - F.normalize(ref, dim=-1)).norm(dim=-1) / 2
            torch.testing.assert_close(extra["memory/distance"][v], d, atol=1e-5, rtol=1e-4)
    assert float(extra["memory/mean"].std()) > 1e-4  # the distances vary: not all 0


def test_memory_taps_are_separate_from_the_view_taps(backbone, images):
    """config.memory_taps (the code's memory_layers) chooses the banks' layers alone."""
    queries, refs = images
    full = _randomised(AFCLIP(backbone, SMALL_CONFIG), seed=6).fit_references(refs)
    last = AFCLIP(backbone, SMALL_CONFIG.replace(memory_taps=(-1,)), full.parts)
    last.fit_references(refs)
    with torch.no_grad():
        a = full(queries, return_intermediates=True).intermediates
        b = last(queries, return_intermediates=True).intermediates
    assert last.memory_taps == (3,)
    assert b["memory/distance"].shape == (3, 3, 64)
    torch.testing.assert_close(b["memory/distance"], a["memory/distance"][9:])
    torch.testing.assert_close(b["logits"], a["logits"])  # the 12 views are unchanged
