"""Each adapter family of Res²CLIP† acts on its own branch of ``forward``, and only there.

One family at a time is moved away from the identity; the test checks which outputs of
the :class:`~resad_kit.methods.Prediction` change (exactly those of the family's branch)
and that every branch equals the method written out from the paper (eqs. 5–12, App. E)
with the public primitives and the perturbed adapters.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from resad_kit.clip import ClipBackbone, encode_prompt_ensemble
from resad_kit.methods import Res2CLIP, Res2CLIPConfig
from resad_kit.nn import Res2CLIPAdapters
from resad_kit.ops import (
    gaussian_blur,
    radial_distance,
    retrieve,
    top_fraction_mean,
    upsample_patches,
)

SIZE = 64
TOL = {"rtol": 1e-5, "atol": 1e-6}
CONFIG = Res2CLIPConfig.paper("fine_tuned")  # residual taps: all; weights 0.1:1:0.1, 1:1:0.1

# family → the (branch, output) pairs it may change. A_{v,cls}^res enters only the global
# residual term of the image score (eq. 12), not the residual map.
CHANGES = {
    "text": {("text", "map"), ("text", "score")},
    "visual": {("visual", "map"), ("visual", "score")},
    "residual_text": {("residual", "map"), ("residual", "score")},
    "residual_local": {("residual", "map"), ("residual", "score")},
    "residual_global": {("residual", "score")},
}


@pytest.fixture(scope="module")
def backbone() -> ClipBackbone:
    return ClipBackbone.tiny(seed=0, image_size=SIZE)


@pytest.fixture(scope="module")
def features(backbone):
    g = torch.Generator().manual_seed(5)
    refs = backbone(torch.randn(2, 3, SIZE, SIZE, generator=g))  # K = 2 shots
    queries = backbone(torch.randn(3, 3, SIZE, SIZE, generator=g))
    return refs, queries


def perturbed(backbone: ClipBackbone, family: str | None) -> Res2CLIPAdapters:
    """Identity adapters, except every parameter of ``family`` moved by random noise."""
    adapters = Res2CLIPAdapters(backbone.embed_dim, len(backbone.layers))
    if family is not None:
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for p in getattr(adapters, family).parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return adapters


def direct_prediction(backbone, adapters, refs, queries):
    """Res²CLIP† with the paper's fine-tuned settings, written out branch by branch."""
    grid = queries.grid
    k = refs.cls.shape[0]
    radius = radial_distance(*grid)

    def visual_residual(layer: int) -> torch.Tensor:
        bank = F.normalize(refs.patches[layer], dim=-1).reshape(k * grid[0] * grid[1], -1)
        q = F.normalize(queries.patches[layer], dim=-1)
        ref = retrieve(q, bank, query_radius=radius, bank_radius=radius.repeat(k), gamma=0.01)
        return q - F.normalize(ref.reference, dim=-1)

    def finish(patch_scores: torch.Tensor) -> torch.Tensor:
        return gaussian_blur(upsample_patches(patch_scores, SIZE, grid), 4.0, 5)

    r_v = [visual_residual(layer) for layer in range(4)]
    f_q = F.normalize(queries.cls, dim=-1)
    r_cls = f_q - F.normalize(F.normalize(refs.cls, dim=-1).mean(0), dim=-1)
    r_t = encode_prompt_ensemble(backbone).residual
    t_text = F.normalize(adapters.text(r_t), dim=-1)  # R̃_t, unit (eqs. 6-7)
    t_res = F.normalize(adapters.residual_text(r_t), dim=-1)  # R̃_t^res, unit (eqs. 10-12)

    text_map = finish(F.normalize(queries.patches[3], dim=-1) @ t_text)
    vis_map = finish(
        torch.stack([adapters.visual[i](r_v[i], grid).norm(dim=-1) for i in range(4)]).mean(0)
    )
    res_map = finish(
        torch.stack([adapters.residual_local[i](r_v[i], grid) @ t_res for i in range(4)]).mean(0)
    )
    scores = {
        "text": 0.5 * (f_q @ t_text) + 0.5 * top_fraction_mean(text_map),
        "visual": top_fraction_mean(vis_map),
        "residual": 0.5 * (adapters.residual_global(r_cls) @ t_res)
        + 0.5 * top_fraction_mean(res_map),
    }
    maps = {"text": text_map, "visual": vis_map, "residual": res_map}
    fused = gaussian_blur(0.1 * text_map + vis_map + 0.1 * res_map, 4.0, 5)
    image = scores["text"] + scores["visual"] + 0.1 * scores["residual"]
    return maps, scores, fused, image


def outputs(pred) -> dict[tuple[str, str], torch.Tensor]:
    return {
        (name, part): getattr(branch, part)
        for name, branch in pred.branches.items()
        for part in ("map", "score")
    }


@pytest.mark.parametrize("family", sorted(CHANGES))
def test_each_adapter_family_changes_exactly_its_branch(backbone, features, family):
    """Perturbing one family changes exactly its branch's outputs, by the right amount.

    Fails if forward applies an adapter to another branch or swaps two families (e.g. the
    text adapter's direction where the residual-text adapter's belongs).
    """
    refs, queries = features
    with torch.no_grad():
        base = Res2CLIP(backbone, CONFIG, adapters=perturbed(backbone, None))
        base_out = outputs(base.fit_references(refs)(queries))
        adapters = perturbed(backbone, family)
        pred = Res2CLIP(backbone, CONFIG, adapters=adapters).fit_references(refs)(queries)
        maps, scores, fused, image = direct_prediction(backbone, adapters, refs, queries)

    for key, value in outputs(pred).items():
        if key in CHANGES[family]:
            assert (value - base_out[key]).abs().max() > 1e-4, key
        else:
            assert torch.equal(value, base_out[key]), key
    for name in ("text", "visual", "residual"):
        torch.testing.assert_close(pred.branches[name].map, maps[name], **TOL)
        torch.testing.assert_close(pred.branches[name].score, scores[name], **TOL)
    torch.testing.assert_close(pred.anomaly_map, fused, **TOL)
    torch.testing.assert_close(pred.image_score, image, **TOL)


def test_every_family_perturbed_equals_direct_composition(backbone, features):
    """All five families at once (every adapter non-identity): still the written-out method."""
    refs, queries = features
    adapters = Res2CLIPAdapters(backbone.embed_dim, len(backbone.layers))
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in adapters.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
        pred = Res2CLIP(backbone, CONFIG, adapters=adapters).fit_references(refs)(queries)
        maps, scores, fused, image = direct_prediction(backbone, adapters, refs, queries)
    for name in ("text", "visual", "residual"):
        torch.testing.assert_close(pred.branches[name].map, maps[name], **TOL)
        torch.testing.assert_close(pred.branches[name].score, scores[name], **TOL)
    torch.testing.assert_close(pred.anomaly_map, fused, **TOL)
    torch.testing.assert_close(pred.image_score, image, **TOL)
