"""``Res2CLIP.losses`` against the losses of eqs. 13–16 composed directly from the public ops.

Every adapter is set to random, non-identity parameters, so each place where the composer
could confuse an adapted quantity with a raw one (hinge targets, regulariser inputs, the
unit text residual) changes the value of a loss term. The reference below is written from
the paper (sec. 3.3, App. D) with the building blocks of :mod:`resad_kit.ops.losses` and
shares no code with the composer beyond the public primitives and the adapters themselves.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from resad_kit.clip import ClipBackbone, encode_prompt_ensemble
from resad_kit.methods import Res2CLIP, Res2CLIPConfig, TrainingBatch
from resad_kit.nn import Res2CLIPAdapters
from resad_kit.ops import radial_distance, retrieve, upsample_patches
from resad_kit.ops.losses import (
    direction_regularizer,
    global_hinge_loss,
    local_hinge_loss,
    magnitude_loss,
    magnitude_regularizer,
)

SIZE = 64
TOL = {"rtol": 1e-5, "atol": 1e-6}


@pytest.fixture(scope="module")
def backbone() -> ClipBackbone:
    return ClipBackbone.tiny(seed=0, image_size=SIZE)


@pytest.fixture(scope="module")
def batch(backbone) -> TrainingBatch:
    g = torch.Generator().manual_seed(3)
    query = backbone(torch.randn(4, 3, SIZE, SIZE, generator=g))
    reference = backbone(torch.randn(4, 3, SIZE, SIZE, generator=g))
    masks = torch.zeros(4, SIZE, SIZE)
    masks[1, 4:30, 10:50] = 1  # two anomalous queries of different defect sizes
    masks[3, 40:60, 2:20] = 1
    return TrainingBatch(query, reference, masks)


def random_adapters(dim: int, num_layers: int, seed: int = 0) -> Res2CLIPAdapters:
    """Adapters with every parameter moved away from the identity initialisation."""
    adapters = Res2CLIPAdapters(dim, num_layers)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapters.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return adapters


def direct_losses(
    backbone: ClipBackbone,
    adapters: Res2CLIPAdapters,
    batch: TrainingBatch,
    config: Res2CLIPConfig,
    phase: str,
) -> dict[str, torch.Tensor]:
    """Eqs. 13–16 with 1-shot references, written out term by term (taps of the tiny CLIP:
    text = last, visual = residual = all four)."""
    q, r, masks = batch.query, batch.reference, batch.masks
    grid = q.grid
    labels = masks.flatten(1).amax(1)
    tau, red = config.margin, config.loss_reduction
    radius = radial_distance(*grid)

    def up(x: torch.Tensor) -> torch.Tensor:
        return upsample_patches(x, SIZE, grid)

    def visual_residual(layer: int) -> torch.Tensor:  # R_{v,l} against the query's own shot
        q_hat = F.normalize(q.patches[layer], dim=-1)
        bank = F.normalize(r.patches[layer], dim=-1)  # (B, N, D): one bank per query
        ref = retrieve(q_hat, bank, query_radius=radius, bank_radius=radius, gamma=config.gamma)
        return q_hat - F.normalize(ref.reference, dim=-1)

    r_v = [visual_residual(layer) for layer in range(4)]
    r_cls = F.normalize(q.cls, dim=-1) - F.normalize(r.cls, dim=-1)  # App. A eq. 17, K = 1
    r_t = encode_prompt_ensemble(backbone).residual

    # Text branch (eq. 13 = eqs. 35 + 36 + direction term), target 1·τ.
    t_text = adapters.text(r_t)
    t_unit = t_text / t_text.norm()
    loss_text = (
        global_hinge_loss(F.normalize(q.cls, dim=-1) @ t_unit, labels, target=tau, reduction=red)
        + local_hinge_loss(
            up(F.normalize(q.patches[3], dim=-1) @ t_unit), masks, target=tau, reduction=red
        )
        + direction_regularizer(t_text, r_t)
    )
    # Visual branch (eq. 14): adapted magnitudes towards 0 (normal) or the raw ones.
    loss_vis = sum(
        magnitude_loss(
            up(adapters.visual[i](r_v[i], grid).norm(dim=-1)),
            up(r_v[i].norm(dim=-1)),
            masks,
            reduction=red,
        )
        for i in range(4)
    )
    # Residual branch (eq. 15 = eqs. 37 + 38 + the phase's regulariser, eqs. 40-41).
    t_res = adapters.residual_text(r_t)
    d_hat = t_res / t_res.norm()
    adapted_cls = adapters.residual_global(r_cls)
    adapted_loc = [adapters.residual_local[i](r_v[i], grid) for i in range(4)]
    hinge = global_hinge_loss(
        adapted_cls @ d_hat, labels, target=tau * r_cls.norm(dim=-1), reduction=red
    )
    for i in range(4):
        hinge = hinge + local_hinge_loss(
            up(adapted_loc[i] @ d_hat), masks, target=tau * up(r_v[i].norm(dim=-1)), reduction=red
        )
    if phase == "visual":
        reg = magnitude_regularizer(adapted_cls.norm(dim=-1), r_cls.norm(dim=-1)) + sum(
            magnitude_regularizer(adapted_loc[i].norm(dim=-1), r_v[i].norm(dim=-1))
            for i in range(4)
        )
    else:
        reg = direction_regularizer(t_res, r_t)
    loss_res = hinge + reg
    return {
        "text": loss_text,
        "visual": loss_vis,
        "residual": loss_res,
        "total": loss_text + loss_vis + loss_res,
    }


CONFIGS = {
    "paper": Res2CLIPConfig.paper("fine_tuned"),
    "margin-per-sample": Res2CLIPConfig.paper(
        "fine_tuned", margin=0.7, loss_reduction="per_sample"
    ),
}


@pytest.mark.parametrize("phase", ["visual", "text"])
@pytest.mark.parametrize("config_name", sorted(CONFIGS))
def test_losses_equal_direct_composition_with_random_adapters(backbone, batch, phase, config_name):
    """Each of ``text``, ``visual``, ``residual``, ``total`` equals the reference term.

    Fails if the composer uses a wrong hinge target (e.g. the adapted instead of the raw
    magnitude, or forgets τ), an unnormalised text residual in a cosine, the wrong
    adapter for a branch, or the other phase's regulariser.
    """
    config = CONFIGS[config_name]
    adapters = random_adapters(backbone.embed_dim, len(backbone.layers))
    model = Res2CLIP(backbone, config, adapters=adapters)
    got = model.losses(batch, phase)
    with torch.no_grad():
        expected = direct_losses(backbone, adapters, batch, config, phase)
    assert set(got) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(
            got[name].detach(), value, **TOL, msg=lambda m, n=name: f"{n}: {m}"
        )


def test_random_adapters_make_every_term_differ_from_identity(backbone, batch):
    """The premise of the test above: with these adapters no loss term takes its
    identity-adapter value, so a confusion of adapted and raw quantities shows."""
    config = CONFIGS["paper"]
    identity = Res2CLIP(backbone, config).losses(batch, "visual")
    adapters = random_adapters(backbone.embed_dim, len(backbone.layers))
    moved = Res2CLIP(backbone, config, adapters=adapters).losses(batch, "visual")
    for name in ("text", "visual", "residual"):
        assert abs(float(moved[name].detach()) - float(identity[name].detach())) > 1e-3, name
