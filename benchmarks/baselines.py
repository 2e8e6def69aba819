"""The official Res²CLIP retrieval path, re-implemented as the benchmarks' baseline.

A faithful re-implementation (written for this project, not copied) of what the official code
(hito2448/Res2CLIP, ``models/knn.py`` and the test loop of ``test.py``) does for the visual
branch of the training-free method with ``match_strategy="sparse_radial_knn"``:

* one test image at a time (batch 1), one tapped layer at a time;
* the ``N×N`` radial-distance table is built on every call (``meshgrid``, ``sqrt``) and tiled
  ``K`` times along the columns;
* the full ``N×M`` cosine similarity, minus ``γ·|r_q − r_ref|``;
* sparsemax by sorting every whole row (subtract the row max, sort, cumulative sum, support
  condition, threshold from the masked sum, ``max(0, z − τ)``);
* a dense ``(N×M) @ (M×D)`` product (``bmm``) for the aggregation, then ℓ2-normalisation.

The arithmetic of the official path is reproduced, including the ``N×M`` similarity-weighted
score it computes and then overwrites; its bookkeeping (the strategy-string parsing, the
``1 − cos`` visual map of the matched feature) is left out, so the baseline is, if anything,
slightly faster than the original.

:func:`official_prediction` is the whole official-style prediction the end-to-end benchmark
compares with (:mod:`bench_end_to_end`): the image tower with explicit-softmax attention
(``BackboneConfig(attention="math")``, the official code's ``softmax(q·kᵀ)·v``), one test
image at a time, the dense retrieval above, then the three branch maps and scores written out
in plain torch (cosines, norms, projections, bilinear upsampling, a 5×5 Gaussian ``Conv2d``
with zero padding, top-1 % means), with the method's adapters called as modules.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "OfficialReferences",
    "dense_aggregate",
    "official_layer_match",
    "official_prediction",
    "official_radial_table",
    "official_references",
    "official_retrieval",
    "official_sparsemax",
]


def official_sparsemax(sim: torch.Tensor) -> torch.Tensor:
    """Row-wise sparsemax by sorting every whole row (official ``sparsemax_lookup``).

    Args:
        sim: ``(B, N, M)`` similarities.

    Returns:
        ``(B, N, M)`` dense weights.
    """
    m = sim.shape[-1]
    z = sim - sim.max(dim=-1, keepdim=True).values
    zs = z.sort(dim=-1, descending=True).values
    rho = torch.arange(1, m + 1, device=sim.device, dtype=sim.dtype).view(1, 1, -1)
    is_gt = (1.0 + rho * zs > zs.cumsum(dim=-1)).to(sim.dtype)
    support = (is_gt * rho).max(dim=-1, keepdim=True).values
    tau = ((is_gt * zs).sum(dim=-1, keepdim=True) - 1.0) / support
    return torch.maximum(torch.zeros_like(z), z - tau)


def official_radial_table(side: int, shots: int, gamma: float, device: torch.device | str):
    """The ``(N, K·N)`` penalty ``γ·|r_q − r_ref|``, rebuilt as the official code does per call."""
    grid_y, grid_x = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    centre = (side - 1) / 2.0
    y = grid_y.flatten().float().to(device) - centre
    x = grid_x.flatten().float().to(device) - centre
    r = torch.sqrt(x**2 + y**2)
    return gamma * (r[:, None] - r[None, :]).abs().repeat(1, shots)


def dense_aggregate(weights: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Eq. 34 as the official code computes it: ``bmm(W, B)`` with the bank expanded to ``B``.

    Args:
        weights: ``(B, N, M)`` dense sparsemax weights.
        bank: ``(1, M, D)`` or ``(M, D)`` bank.

    Returns:
        ``(B, N, D)``.
    """
    bank = bank.reshape(1, *bank.shape[-2:])
    return torch.bmm(weights, bank.expand(weights.shape[0], -1, -1))


def official_layer_match(
    feat: torch.Tensor, ref_feat: torch.Tensor, gamma: float, shots: int
) -> torch.Tensor:
    """One layer of ``get_visual_match`` (sparse radial strategy): the normalised reference.

    Args:
        feat: ``(B, N, D)`` ℓ2-normalised query patches (the official loop uses ``B = 1``).
        ref_feat: ``(1, K·N, D)`` ℓ2-normalised bank.
        gamma: the radial penalty γ.
        shots: ``K``.

    Returns:
        ``(B, N, D)`` matched reference ``normalize(W·B)``.
    """
    side = int(feat.shape[1] ** 0.5)
    sim = feat @ ref_feat.permute(0, 2, 1)
    penalised = sim - official_radial_table(side, shots, gamma, feat.device).unsqueeze(0)
    weights = official_sparsemax(penalised)
    matched = dense_aggregate(weights, ref_feat)
    _ = (sim * weights).sum(dim=-1)  # the code's similarity-weighted score (computed, then unused)
    return matched / matched.norm(dim=-1, keepdim=True)


def official_retrieval(
    queries: list[torch.Tensor], banks: list[torch.Tensor], gamma: float, shots: int
) -> list[torch.Tensor]:
    """All layers for a batch of test images, one image at a time as in the official loop.

    Args:
        queries: per layer, ``(B, N, D)`` raw patch features of ``B`` test images.
        banks: per layer, ``(K·N, D)`` ℓ2-normalised bank (built once per class).
        gamma: the radial penalty γ.
        shots: ``K``.

    Returns:
        Per layer, ``(B, N, D)`` normalised matched references.
    """
    out: list[list[torch.Tensor]] = [[] for _ in queries]
    for image in range(queries[0].shape[0]):
        for layer, (query, bank) in enumerate(zip(queries, banks, strict=True)):
            feat = query[image : image + 1]
            feat = feat / feat.norm(dim=-1, keepdim=True)
            out[layer].append(official_layer_match(feat, bank[None], gamma, shots))
    return [torch.cat(matched) for matched in out]


class OfficialReferences(NamedTuple):
    """What the official code keeps per class: one normalised bank per tap, the CLS features."""

    banks: dict[int, torch.Tensor]  # tap → (K·N, D) ℓ2-normalised, shot-major
    cls: torch.Tensor  # (K, D) raw reference CLS features
    shots: int


def official_references(backbone: Any, references: torch.Tensor, taps: tuple[int, ...]):
    """Bank of ``K`` reference images ``(K, 3, S, S)``, computed one image at a time."""
    feats = [backbone(image[None]) for image in references]
    banks = {t: torch.cat([F.normalize(f.patches[t][0], dim=-1) for f in feats]) for t in taps}
    return OfficialReferences(banks, torch.cat([f.cls for f in feats]), len(feats))


def _gaussian_conv(maps: torch.Tensor, sigma: float, size: int) -> torch.Tensor:
    """The official smoothing: one ``size×size`` Gaussian ``Conv2d`` with zero padding."""
    x = torch.arange(size, dtype=maps.dtype, device=maps.device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = torch.outer(g, g) / g.sum() ** 2
    return F.conv2d(maps[:, None], kernel[None, None], padding=size // 2)[:, 0]


def _top_mean(maps: torch.Tensor, fraction: float) -> torch.Tensor:
    flat = maps.flatten(1)
    return flat.topk(max(1, int(fraction * flat.shape[1])), dim=-1).values.mean(dim=-1)


def official_prediction(
    backbone: Any,
    refs: OfficialReferences,
    images: torch.Tensor,
    text_residual: torch.Tensor,
    taps: dict[str, tuple[int, ...]],
    config: Any,
    adapters: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image scores ``(B,)`` and anomaly maps ``(B, S, S)``, one test image at a time.

    Args:
        backbone: a ``ClipBackbone`` with ``attention="math"`` (the official attention).
        refs: :func:`official_references` of the class.
        images: ``(B, 3, S, S)`` test images.
        text_residual: ``(D,)`` the class's ``R_t`` (computed once per class).
        taps: tap positions per branch (``Res2CLIP.taps``).
        config: the ``Res2CLIPConfig`` (weights, γ, blur, clamping).
        adapters: fine-tuned: the ``Res2CLIPAdapters``; training-free: ``None``.
    """
    scores, maps = [], []
    for image in images:
        score, anomaly = _one_image(
            backbone, refs, image[None], text_residual, taps, config, adapters
        )
        scores.append(score)
        maps.append(anomaly)
    return torch.cat(scores), torch.cat(maps)


def _one_image(backbone, refs, image, r_t, taps, c, adapters):
    feats = backbone(image)
    grid, size = feats.grid, image.shape[-2:]
    used = sorted(set(taps["visual"]) | set(taps["residual"]))
    matched = official_retrieval(
        [feats.patches[t] for t in used], [refs.banks[t] for t in used], c.gamma, refs.shots
    )
    residual = {
        t: F.normalize(feats.patches[t], dim=-1) - m for t, m in zip(used, matched, strict=True)
    }

    def adapt(family: str, x: torch.Tensor, tap: int | None = None) -> torch.Tensor:
        if adapters is None:
            return x
        module = getattr(adapters, family)
        return module(x) if tap is None else module[tap](x, grid)

    def project(x: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
        score = x @ F.normalize(direction, dim=0)
        return score.clamp_min(0) if c.clamp_residual_projection else score

    t_text, t_res = adapt("text", r_t), adapt("residual_text", r_t)
    unit_text = F.normalize(t_text, dim=0)
    cls_res = F.normalize(feats.cls, dim=-1) - F.normalize(
        F.normalize(refs.cls, dim=-1).mean(dim=0), dim=0
    )
    layer_maps = {
        "text": [
            (F.normalize(feats.patches[t], dim=-1) @ unit_text).clamp(-1, 1) for t in taps["text"]
        ],
        "visual": [adapt("visual", residual[t], t).norm(dim=-1) for t in taps["visual"]],
        "residual": [
            project(adapt("residual_local", residual[t], t), t_res) for t in taps["residual"]
        ],
    }
    branch_maps = {}
    for name, layers in layer_maps.items():
        patch_map = torch.stack(layers).mean(dim=0).reshape(1, 1, *grid)
        pixel = F.interpolate(patch_map, size=size, mode="bilinear", align_corners=False)[:, 0]
        smooth = c.smooth_branch_maps
        branch_maps[name] = _gaussian_conv(pixel, c.blur_sigma, c.blur_kernel) if smooth else pixel
    anomaly = sum(w * m for w, m in zip(c.pixel_weights, branch_maps.values(), strict=True))
    if c.smooth_fused_map:
        anomaly = _gaussian_conv(anomaly, c.blur_sigma, c.blur_kernel)
    text_global = (F.normalize(feats.cls, dim=-1) @ unit_text).clamp(-1, 1)
    residual_global = project(adapt("residual_global", cls_res), t_res)
    top = {name: _top_mean(m, c.top_fraction) for name, m in branch_maps.items()}
    branch_scores = (
        0.5 * text_global + 0.5 * top["text"],
        top["visual"],
        0.5 * residual_global + 0.5 * top["residual"],
    )
    score = sum(w * s for w, s in zip(c.image_weights, branch_scores, strict=True))
    return score, anomaly
