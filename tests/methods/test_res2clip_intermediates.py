"""Res2CLIP's ``Prediction.intermediates``: documented keys, each equal to a direct composition
of the public ops, and enough to rebuild the maps and scores without private methods."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from resad_kit.clip import ClipBackbone, encode_prompt_ensemble
from resad_kit.methods import Res2CLIP, Res2CLIPConfig
from resad_kit.ops import (
    SparseWeights,
    cosine_score,
    fuse,
    gaussian_blur,
    global_residual,
    magnitude_score,
    projection_score,
    radial_distance,
    retrieve,
    top_fraction_mean,
    upsample_patches,
    visual_residual,
)

SIZE = 48
KEYS = {
    "grid", "retrieval/reference", "retrieval/weights", "visual/residuals", "residual/cls",
    "text/R_t", "text/t_text", "residual/t_res", "text/layers", "text/global", "visual/adapted",
    "visual/layers", "residual/adapted", "residual/adapted_cls", "residual/layers",
    "residual/global",
}  # fmt: skip
CONFIGS = {
    "training_free": Res2CLIPConfig.paper(),
    "official_fine_tuned": Res2CLIPConfig.official_code("fine_tuned"),
}


@pytest.fixture(scope="module")
def backbone() -> ClipBackbone:
    return ClipBackbone.tiny(seed=0, image_size=SIZE)


@pytest.fixture(scope="module")
def features(backbone):
    g = torch.Generator().manual_seed(0)
    refs = torch.randn(2, 3, SIZE, SIZE, generator=g)
    queries = torch.randn(3, 3, SIZE, SIZE, generator=g)
    return backbone(refs), backbone(queries)


def _model(backbone, name: str) -> Res2CLIP:
    torch.manual_seed(1)
    model = Res2CLIP(backbone, CONFIGS[name])
    if model.adapters is not None:  # move every adapter away from the identity
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.adapters.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_without_the_flag_nothing_changes_and_intermediates_is_none(backbone, features, name):
    """``return_intermediates=True`` adds the mapping and changes no output bit."""
    refs, queries = features
    model = _model(backbone, name).fit_references(refs)
    plain = model(queries)
    full = model(queries, return_intermediates=True)
    assert plain.intermediates is None
    assert set(full.intermediates) == KEYS
    assert torch.equal(plain.image_score, full.image_score)
    assert torch.equal(plain.anomaly_map, full.anomaly_map)
    for branch, out in plain.branches.items():
        assert torch.equal(out.map, full.branches[branch].map)
        assert torch.equal(out.score, full.branches[branch].score)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_intermediate_equals_a_direct_composition_of_the_ops(backbone, features, name):
    """Retrieval, residuals, directions, per-layer scores and global terms, bit for bit."""
    refs, queries = features
    model = _model(backbone, name).fit_references(refs)
    c, a, taps, used = model.config, model.adapters, model.taps, model.used_taps
    inter = model(queries, return_intermediates=True).intermediates
    h, w = queries.grid
    k, b = refs.cls.shape[0], queries.cls.shape[0]
    assert inter["grid"] == (h, w)

    def unit(feats):
        return torch.stack([F.normalize(feats.patches[t], dim=-1) for t in used])

    bank = unit(refs).reshape(len(used), 1, k * h * w, -1)
    radius = radial_distance(h, w)
    found = retrieve(
        unit(queries), bank, query_radius=radius, bank_radius=radius.repeat(k),
        gamma=c.gamma, normalize="query",
    )  # fmt: skip
    assert list(inter["retrieval/reference"]) == list(used)
    for i, t in enumerate(used):
        weights = inter["retrieval/weights"][t]
        assert isinstance(weights, SparseWeights)
        assert weights.num_entries == k * h * w
        assert torch.equal(weights.indices, found.weights.indices[i])
        assert torch.equal(weights.values, found.weights.values[i])
        assert torch.equal(inter["retrieval/reference"][t], found.reference[i])
        residual = visual_residual(queries.patches[t], found.reference[i])
        assert torch.equal(inter["visual/residuals"][t], residual)
    cls = global_residual(queries.cls, refs.cls, normalized=not c.raw_global_residual)
    assert torch.equal(inter["residual/cls"], cls)

    r_t = encode_prompt_ensemble(
        backbone, extra_anomaly_phrase=c.extra_anomaly_phrase,
        normalize_before_mean=c.normalize_before_mean, unit_residual=c.unit_text_residual,
    ).residual  # fmt: skip
    assert torch.equal(inter["text/R_t"], r_t)
    t_text = r_t if a is None else a.text(r_t)
    t_res = r_t if a is None else a.residual_text(r_t)
    assert torch.equal(inter["text/t_text"], t_text)
    assert torch.equal(inter["residual/t_res"], t_res)

    def clamp(x):
        return x.clamp_min(0) if c.clamp_residual_projection else x

    for t in taps["text"]:
        assert torch.equal(inter["text/layers"][t], cosine_score(queries.patches[t], t_text))
    assert torch.equal(inter["text/global"], cosine_score(queries.cls, t_text))
    raw = inter["visual/residuals"]
    for t in taps["visual"]:
        adapted = raw[t] if a is None else a.visual[t](raw[t], (h, w))
        assert torch.equal(inter["visual/adapted"][t], adapted)
        assert torch.equal(inter["visual/layers"][t], magnitude_score(adapted))
    for t in taps["residual"]:
        adapted = raw[t] if a is None else a.residual_local[t](raw[t], (h, w))
        assert torch.equal(inter["residual/adapted"][t], adapted)
        assert torch.equal(inter["residual/layers"][t], clamp(projection_score(adapted, t_res)))
    adapted_cls = cls if a is None else a.residual_global(cls)
    assert torch.equal(inter["residual/adapted_cls"], adapted_cls)
    assert torch.equal(inter["residual/global"], clamp(projection_score(adapted_cls, t_res)))
    for key in ("text/layers", "visual/layers", "residual/layers"):
        branch = key.split("/")[0]
        assert list(inter[key]) == list(taps[branch])
        assert all(v.shape == (b, h * w) for v in inter[key].values())


def test_retrieval_weights_aggregate_to_the_reference(backbone, features):
    """The weights sum to one per patch and ``W·B̂`` over the matched indices is the reference."""
    refs, queries = features
    model = Res2CLIP(backbone).fit_references(refs)
    inter = model(queries, return_intermediates=True).intermediates
    h, w = queries.grid
    for t in model.used_taps:
        weights = inter["retrieval/weights"][t]
        torch.testing.assert_close(weights.values.sum(-1), torch.ones(3, h * w))
        bank = F.normalize(refs.patches[t], dim=-1).reshape(-1, refs.cls.shape[1])  # (K·N, D)
        aggregated = (weights.values[..., None] * bank[weights.indices]).sum(-2)
        torch.testing.assert_close(aggregated, inter["retrieval/reference"][t])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_maps_and_scores_rebuild_from_the_intermediates(backbone, features, name):
    """The official maps and scores from the intermediates and public ops alone, bit for bit."""
    refs, queries = features
    model = _model(backbone, name).fit_references(refs)
    pred = model(queries, return_intermediates=True)
    inter, c = pred.intermediates, model.config

    def finish(layers):
        m = upsample_patches(torch.stack(list(layers.values())).mean(0), SIZE, inter["grid"])
        return gaussian_blur(m, c.blur_sigma, c.blur_kernel)

    maps = {b: finish(inter[f"{b}/layers"]) for b in ("text", "visual", "residual")}
    top = {b: top_fraction_mean(m, c.top_fraction) for b, m in maps.items()}
    scores = {
        "text": 0.5 * inter["text/global"] + 0.5 * top["text"],
        "visual": top["visual"],
        "residual": 0.5 * inter["residual/global"] + 0.5 * top["residual"],
    }
    for b in maps:
        assert torch.equal(maps[b], pred.branches[b].map)
        assert torch.equal(scores[b], pred.branches[b].score)
    fused = gaussian_blur(fuse(maps, dict(zip(maps, c.pixel_weights, strict=True))), 4.0, 5)
    assert torch.equal(fused, pred.anomaly_map)
    image = fuse(scores, dict(zip(scores, c.image_weights, strict=True)))
    assert torch.equal(image, pred.image_score)
