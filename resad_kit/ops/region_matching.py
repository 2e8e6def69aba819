"""Region matching and region weights of FineGrainedAD's region aggregation (paper §3.4).

After :func:`~resad_kit.ops.progressive_region_aggregation` has split the foreground of
the few normal images into regions, :func:`match_regions` pairs every prompt group (a
component, the background) with the region whose mean token is most similar to its normal
prompt feature, and :func:`region_weights` turns the matched region into the per-token
weights ``1 + γ`` of that group's losses (γ = 1.5, paper §4.4), average-pooled from the
60×60 clustering grid to the 15×15 patch grid as in the released training code
(RetoFan233/FineGrainedAD, ``train_seg_finegrained_patch.py``).

Shape legend: ``B`` images, ``N`` tokens, ``D`` channels, ``K`` regions, ``G`` groups.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange

from resad_kit.ops._validation import check_tensor, checks_enabled, compute_dtype

__all__ = ["match_regions", "region_weights"]

_NORM_EPS = 1e-12


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _cluster_means(features: torch.Tensor, labels: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """``(B, K, D)`` mean feature of every cluster (labels ``−1`` ignored; 0 for an empty one)."""
    onehot = F.one_hot(labels.clamp_min(0), num_clusters).to(features.dtype)
    onehot = onehot * (labels >= 0)[..., None]
    sums = torch.einsum("bnk,bnd->bkd", onehot, features)
    counts = onehot.sum(1)[..., None]
    return sums / counts.clamp_min(1.0)


def match_regions(
    features: torch.Tensor, labels: torch.Tensor, prompts: torch.Tensor, num_clusters: int
) -> torch.Tensor:
    """For every prompt group, the region whose mean token is most similar to it (cosine).

    ``c*(g) = argmax_c cos(p_g, mean_{i: labels_i = c} features_i)``, per image (the
    released code matches the clusters of the first image and applies them to all images;
    cluster indices of different images are unrelated, so this function matches each image
    separately). Tokens with label ``−1`` are ignored; an empty cluster is never chosen.

    Args:
        features: ``(B, N, D)`` tokens.
        labels: ``(B, N)`` int64 regions ``0 … K−1`` or ``−1``.
        prompts: ``(G, D)`` normal feature of each group.
        num_clusters: ``K``.

    Returns:
        ``(B, G)`` int64 matched region of every group.

    Raises:
        TypeError: a non-tensor input.
        ValueError: shapes or dtypes that do not fit, labels outside ``−1 … K−1``.

    Example:
        >>> import torch
        >>> from resad_kit.ops import match_regions
        >>> feats = torch.tensor([[[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]])
        >>> labels = torch.tensor([[1, 1, 0]])
        >>> match_regions(feats, labels, torch.tensor([[0.0, 1.0], [1.0, 0.0]]), 2).tolist()
        [[0, 1]]
    """
    if checks_enabled():
        fn = "match_regions"
        check_tensor(fn, "features", features, ndim=3, shape_doc="(B, N, D)", finite=True)
        check_tensor(fn, "prompts", prompts, ndim=2, shape_doc="(G, D)", finite=True)
        _check_labels(fn, labels, features.shape[:2], num_clusters)
        if prompts.shape[-1] != features.shape[-1]:
            raise ValueError(
                f"{fn}: `prompts` must have D={features.shape[-1]} channels; "
                f"got {tuple(prompts.shape)}"
            )
    dtype = compute_dtype(features, prompts)
    means = F.normalize(
        _cluster_means(features.to(dtype), labels, num_clusters), dim=-1, eps=_NORM_EPS
    )
    sims = torch.einsum("bkd,gd->bgk", means, F.normalize(prompts.to(dtype), dim=-1))
    present = F.one_hot(labels.clamp_min(0), num_clusters).mul((labels >= 0)[..., None]).sum(1)
    sims = sims.masked_fill((present == 0)[:, None, :], -math.inf)
    return sims.argmax(-1)


def _check_labels(fn: str, labels: object, shape: torch.Size, num_clusters: object) -> None:
    if not _is_int(num_clusters) or num_clusters < 1:
        raise ValueError(f"{fn}: `num_clusters` must be a positive int; got {num_clusters!r}")
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64:
        raise ValueError(f"{fn}: `labels` must be an int64 tensor {tuple(shape)}; got {labels!r}")
    if labels.shape != shape:
        raise ValueError(
            f"{fn}: `labels` must have shape {tuple(shape)}; got {tuple(labels.shape)}"
        )
    if labels.numel() and bool(((labels < -1) | (labels >= num_clusters)).any()):
        raise ValueError(f"{fn}: `labels` must lie in -1..{num_clusters - 1}")


def region_weights(
    labels: torch.Tensor,
    regions: torch.Tensor,
    *,
    grid: tuple[int, int] = (60, 60),
    pool: int = 4,
    gamma: float = 1.5,
) -> torch.Tensor:
    """Per-token loss weights ``1 + γ·[token in the matched region]``, average-pooled.

    The weights are built on the clustering grid (60×60 in the paper) and reduced by
    ``pool × pool`` average pooling to the patch grid of the 240 px image (15×15), as the
    released training code does before multiplying the patch tokens of a group's losses.

    Args:
        labels: ``(B, N)`` int64 region of every token (``−1``: none), ``N = h·w``.
        regions: ``(B, G)`` int64 matched region of every group (:func:`match_regions`).
        grid: ``(h, w)`` of the clustering grid.
        pool: pooling window and stride; must divide ``h`` and ``w``.
        gamma: extra weight of the matched region (paper §4.4: 1.5).

    Returns:
        ``(B, G, (h/pool)·(w/pool))`` float32 weights in ``[1, 1 + γ]``.

    Raises:
        TypeError: a non-tensor input.
        ValueError: shapes that do not fit, a ``pool`` that does not divide the grid, a
            negative ``gamma``.

    Example:
        >>> import torch
        >>> from resad_kit.ops import region_weights
        >>> labels = torch.tensor([[0, 0, 1, 1]])  # a 2×2 grid
        >>> region_weights(labels, torch.tensor([[0, 1]]), grid=(2, 2), pool=1).tolist()
        [[[2.5, 2.5, 1.0, 1.0], [1.0, 1.0, 2.5, 2.5]]]
        >>> region_weights(labels, torch.tensor([[0]]), grid=(2, 2), pool=2).tolist()
        [[[1.75]]]
    """
    fn = "region_weights"
    h, w = grid
    if checks_enabled():
        if not isinstance(regions, torch.Tensor) or regions.dtype != torch.int64:
            raise ValueError(f"{fn}: `regions` must be an int64 tensor (B, G); got {regions!r}")
        if not isinstance(labels, torch.Tensor) or labels.ndim != 2:
            raise ValueError(f"{fn}: `labels` must be an int64 tensor (B, N); got {labels!r}")
        if labels.dtype != torch.int64 or labels.shape[1] != h * w:
            raise ValueError(
                f"{fn}: `labels` must be int64 (B, h·w={h * w}); got {labels.dtype} "
                f"{tuple(labels.shape)}"
            )
        if regions.ndim != 2 or regions.shape[0] != labels.shape[0]:
            raise ValueError(
                f"{fn}: `regions` must be (B={labels.shape[0]}, G); got {tuple(regions.shape)}"
            )
        if not _is_int(pool) or pool < 1 or h % pool or w % pool:
            raise ValueError(f"{fn}: `pool` must be a positive int dividing {grid}; got {pool!r}")
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma >= 0:
            raise ValueError(f"{fn}: `gamma` must be a number ≥ 0; got {gamma!r}")
    inside = labels[:, None, :] == regions[:, :, None]  # (B, G, N)
    weights = 1.0 + gamma * inside.float()
    maps = rearrange(weights, "b g (h w) -> b g h w", h=h, w=w)
    pooled = F.avg_pool2d(maps.flatten(0, 1)[:, None], pool)[:, 0]
    return rearrange(pooled, "(b g) h w -> b g (h w)", b=labels.shape[0])
