"""Res²CLIP's inference pieces, composed from :mod:`resad_kit.ops` (internal to Res2CLIP).

- :func:`build_bank`: the few-shot memory bank of the used taps (paper sec. 3.2.3);
- :func:`compute_residuals`: retrieval (eqs. 8, 33–34) and the raw visual and global
  residuals (sec. 3.2.3–3.2.4, App. A eq. 17);
- :func:`branch_layers`: the per-layer patch scores and global terms of the three branches
  (eqs. 6–12) before averaging and upsampling, with the adapted directions and residuals;
- :func:`intermediates`: the documented ``Prediction.intermediates`` mapping.

Every score is an op of :mod:`resad_kit.ops` (``cosine_score``, ``magnitude_score``,
``projection_score``, ``visual_residual``, ``global_residual``, ``retrieve``): the method adds
no maths of its own but the official code's ``max(0, ·)`` on the residual projections (the
``clamp_residual_projection`` flag). The callers run these under ``resad_kit.checks(False)``:
Res2CLIP validates its inputs once, the ops do not re-check them.

Shape legend: ``B`` query images, ``K`` shots, ``N = h·w`` patches, ``M = K·N`` bank rows,
``D`` channels, ``L`` used taps, ``S`` the widest sparsemax support.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from resad_kit.clip import Features
from resad_kit.methods.config import Res2CLIPConfig
from resad_kit.nn import Res2CLIPAdapters
from resad_kit.ops import (
    SparseWeights,
    cosine_score,
    global_residual,
    magnitude_score,
    projection_score,
    radial_distance,
    retrieve,
    visual_residual,
)

__all__: list[str] = []

INTERMEDIATE_KEYS = (
    "grid",
    "retrieval/reference",
    "retrieval/weights",
    "visual/residuals",
    "residual/cls",
    "text/R_t",
    "text/t_text",
    "residual/t_res",
    "text/layers",
    "text/global",
    "visual/adapted",
    "visual/layers",
    "residual/adapted",
    "residual/adapted_cls",
    "residual/layers",
    "residual/global",
)
"""The keys of ``Prediction.intermediates`` (documented in ``Res2CLIP.forward``)."""


class Bank(NamedTuple):
    """The fitted references: one normalised bank per used tap, radii and global features."""

    patches: Tensor  # (L, 1, K·N, D), ℓ2-normalised, shot-major
    radius: Tensor  # (K·N,)
    cls: Tensor  # (K, D) raw reference globals
    grid: tuple[int, int]
    shots: int


class Residuals(NamedTuple):
    """Raw residuals of ``B`` queries and the retrieval they come from."""

    visual: dict[int, Tensor]  # used tap → (B, N, D) raw visual residual R_{v,l}
    cls: Tensor  # (B, D) raw global residual R_{v,cls}
    reference: dict[int, Tensor]  # used tap → (B, N, D) retrieved W·B̂ (not re-normalised)
    weights: dict[int, SparseWeights]  # used tap → (B, N, S) sparsemax weights W


class BranchLayers(NamedTuple):
    """Per-layer patch scores (before averaging and upsampling) and global terms."""

    text: dict[int, Tensor]  # text tap → (B, N) cosine ⟨F^q_l, R̃_t⟩ (eq. 6)
    text_global: Tensor  # (B,) ⟨f^q, R̃_t⟩ (eq. 7)
    visual: dict[int, Tensor]  # visual tap → (B, N) ‖R̃_{v,l}‖ (eq. 9)
    residual: dict[int, Tensor]  # residual tap → (B, N) R̃_{v,l}·R̂̃_t (eqs. 10–11)
    residual_global: Tensor  # (B,) R̃_{v,cls}·R̂̃_t (eq. 12)
    t_text: Tensor  # (D,) A_t(R_t)
    t_res: Tensor  # (D,) A_t^res(R_t)
    visual_adapted: dict[int, Tensor]  # visual tap → (B, N, D) A_{v,l}(R_{v,l})
    residual_adapted: dict[int, Tensor]  # residual tap → (B, N, D) A^res_{v,l}(R_{v,l})
    residual_adapted_cls: Tensor  # (B, D) A^res_{v,cls}(R_{v,cls})


def unit_patches(feats: Features, taps: tuple[int, ...]) -> Tensor:
    """``(L, B, N, D)`` ℓ2-normalised patches of ``taps`` (a bank, or retrieval queries)."""
    return torch.stack([F.normalize(feats.patches[t], dim=-1) for t in taps])


def build_bank(feats: Features, used_taps: tuple[int, ...]) -> Bank:
    """The memory bank of ``K`` reference features (float32, on their device)."""
    k = feats.cls.shape[0]
    h, w = feats.grid
    patches = unit_patches(feats, used_taps)
    return Bank(
        patches=patches.reshape(len(used_taps), 1, k * h * w, -1),  # (L, K, N, D) → (L, 1, M, D)
        radius=radial_distance(h, w, device=feats.cls.device).repeat(k),
        cls=feats.cls,
        grid=(h, w),
        shots=k,
    )


def compute_residuals(
    query: Features,
    bank: Tensor,
    radius: Tensor,
    ref_cls: Tensor,
    used_taps: tuple[int, ...],
    config: Res2CLIPConfig,
) -> Residuals:
    """Retrieval and raw residuals; ``bank`` is ``(L, 1|B, M, D)`` normalised.

    ``ref_cls`` is ``(K, D)`` (shared references) or ``(B, 1, D)`` (a 1-shot reference per
    query, training).
    """
    stacked = unit_patches(query, used_taps)
    found = retrieve(
        stacked,  # (L, B, N, D)
        bank,
        query_radius=radial_distance(*query.grid, device=stacked.device),
        bank_radius=radius,
        gamma=config.gamma,
        k=config.retrieval_k,
        chunk_size=config.chunk_size,
        normalize="query",
    )
    reference = dict(zip(used_taps, found.reference.unbind(0), strict=True))
    m = found.weights.num_entries
    weights = {
        t: SparseWeights(i, v, m)
        for t, i, v in zip(
            used_taps, found.weights.indices.unbind(0), found.weights.values.unbind(0), strict=True
        )
    }
    # R_v = F̂^q − F̂_ref: visual_residual normalises both sides (eq. 17).
    visual = {t: visual_residual(query.patches[t], reference[t]) for t in used_taps}
    cls = global_residual(query.cls, ref_cls, normalized=not config.raw_global_residual)
    return Residuals(visual, cls, reference, weights)


def branch_layers(
    query: Features,
    res: Residuals,
    r_t: Tensor,
    taps: dict[str, tuple[int, ...]],
    adapters: Res2CLIPAdapters | None,
    config: Res2CLIPConfig,
) -> BranchLayers:
    """Per-layer branch scores of the (adapted) residuals, and the global terms (eqs. 6–12)."""
    grid = query.grid

    def local(family: str, tap: int) -> Tensor:
        x = res.visual[tap]
        return x if adapters is None else getattr(adapters, family)[tap](x, grid)

    def glob(family: str, x: Tensor) -> Tensor:
        return x if adapters is None else getattr(adapters, family)(x)

    def project(x: Tensor, direction: Tensor) -> Tensor:
        score = projection_score(x, direction)
        return score.clamp_min(0) if config.clamp_residual_projection else score

    t_text, t_res = glob("text", r_t), glob("residual_text", r_t)
    visual_adapted = {t: local("visual", t) for t in taps["visual"]}
    residual_adapted = {t: local("residual_local", t) for t in taps["residual"]}
    residual_adapted_cls = glob("residual_global", res.cls)
    return BranchLayers(
        text={t: cosine_score(query.patches[t], t_text) for t in taps["text"]},
        text_global=cosine_score(query.cls, t_text),
        visual={t: magnitude_score(x) for t, x in visual_adapted.items()},
        residual={t: project(x, t_res) for t, x in residual_adapted.items()},
        residual_global=project(residual_adapted_cls, t_res),
        t_text=t_text,
        t_res=t_res,
        visual_adapted=visual_adapted,
        residual_adapted=residual_adapted,
        residual_adapted_cls=residual_adapted_cls,
    )


def intermediates(
    res: Residuals, layers: BranchLayers, r_t: Tensor, grid: tuple[int, int]
) -> dict[str, Any]:
    """``Prediction.intermediates`` of Res2CLIP, keyed as :data:`INTERMEDIATE_KEYS`."""
    out: dict[str, Any] = {
        "grid": grid,
        "retrieval/reference": res.reference,
        "retrieval/weights": res.weights,
        "visual/residuals": res.visual,
        "residual/cls": res.cls,
        "text/R_t": r_t,
        "text/t_text": layers.t_text,
        "residual/t_res": layers.t_res,
        "text/layers": layers.text,
        "text/global": layers.text_global,
        "visual/adapted": layers.visual_adapted,
        "visual/layers": layers.visual,
        "residual/adapted": layers.residual_adapted,
        "residual/adapted_cls": layers.residual_adapted_cls,
        "residual/layers": layers.residual,
        "residual/global": layers.residual_global,
    }
    return out
