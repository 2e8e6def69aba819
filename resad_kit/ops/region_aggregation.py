"""Density-peak clustering of patch tokens (DPC-KNN) and FineGrainedAD's region aggregation.

:func:`dpc_knn` clusters the tokens of each image with density peaks (Rodriguez & Laio,
Science 2014) on a k-nearest-neighbour density, as token clustering in TCFormer (Zeng et
al., CVPR 2022) and the released FineGrainedAD code (RetoFan233/FineGrainedAD, file
``PromptAD/clusters.py``, commit aa6b041) do:

* distance ``δ_ij = ‖x_i − x_j‖₂ / √C``; a masked token ``j`` is put at distance
  ``max δ + 1`` from every token so that it does not count as anybody's neighbour;
* local density ``ρ_i = exp(−mean_{j ∈ kNN(i)} δ_ij²) + u_i`` with ``u_i ~ U(0, noise)``
  breaking ties (the token itself is among its ``k`` nearest, at distance 0); ``ρ_i = 0`` for
  masked tokens;
* distance indicator ``σ_i = min_{j: ρ_j > ρ_i} δ_ij``, and ``max δ`` for the density peak;
* centre score ``γ_i = σ_i · ρ_i``; the ``K`` highest-scoring unmasked tokens are the centres;
* every token joins its nearest centre (``argmin_c δ_{c,i}``), a centre joins itself.

:func:`progressive_region_aggregation` is FineGrainedAD's language-guided progressive region
aggregation (paper §3.4, "modified DPC-KNN"): the tokens are first described by their cosine
similarities to the prompt anchors (the "reference dimension"), clustered into foreground
and background (stage 1), and the foreground is clustered again into ``E + 1`` regions with
the background masked out (stage 2). :func:`~resad_kit.ops.match_regions` and
:func:`~resad_kit.ops.region_weights` (module ``region_matching``) turn the regions into
the per-token loss weights of each prompt group.

Shape legend: ``B`` images, ``N`` tokens, ``C`` reference dims, ``D`` feature channels,
``K`` clusters, ``G`` prompt groups, ``E`` components of the category.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from resad_kit.ops._validation import check_tensor, checks_enabled, compute_dtype
from resad_kit.ops.region_matching import _cluster_means

__all__ = ["DensityPeaks", "RegionAggregation", "dpc_knn", "progressive_region_aggregation"]

_NORM_EPS = 1e-12


class DensityPeaks(NamedTuple):
    """What :func:`dpc_knn` returns (all per image).

    Attributes:
        labels: ``(B, N)`` int64 cluster of every token, ``0 … K−1`` (cluster ``c`` is the one
            of ``centers[:, c]``); ``−1`` for masked tokens.
        centers: ``(B, K)`` int64 token indices of the centres, by descending score.
        density: ``(B, N)`` local density ``ρ`` (noise included, 0 for masked tokens).
        indicator: ``(B, N)`` distance indicator ``σ``.
        score: ``(B, N)`` centre score ``γ = σ · ρ``.

    Example:
        >>> import torch
        >>> from resad_kit.ops import DensityPeaks, dpc_knn
        >>> x = torch.tensor([[[0.0], [0.2], [0.5], [4.0], [4.1]]])
        >>> out = dpc_knn(x, 2, k=2, generator=torch.Generator().manual_seed(0))
        >>> isinstance(out, DensityPeaks), out.labels.tolist()
        (True, [[1, 1, 1, 0, 0]])
    """

    labels: torch.Tensor
    centers: torch.Tensor
    density: torch.Tensor
    indicator: torch.Tensor
    score: torch.Tensor


class RegionAggregation(NamedTuple):
    """What :func:`progressive_region_aggregation` returns.

    Attributes:
        foreground: ``(B, N)`` bool, True on the stage-1 foreground cluster.
        regions: ``(B, N)`` int64 stage-2 region ``0 … E`` of every foreground token, ``−1`` on
            the background.
        stage1: the :class:`DensityPeaks` of stage 1 (``K = 2``, all tokens).
        stage2: the :class:`DensityPeaks` of stage 2 (``K = E + 1``, background masked).

    Example:
        >>> import torch
        >>> from resad_kit.ops import RegionAggregation, progressive_region_aggregation
        >>> background = [[0.0, 1.0], [0.1, 1.0], [0.0, 0.9], [0.1, 0.9]]
        >>> tokens = torch.tensor([background + [[1.0, 0.1], [1.0, 0.2], [1.0, 0.3]]])
        >>> seed = torch.Generator().manual_seed(0)
        >>> out = progressive_region_aggregation(tokens, torch.eye(2), generator=seed)
        >>> isinstance(out, RegionAggregation), out.foreground.int().tolist()
        (True, [[0, 0, 0, 0, 1, 1, 1]])
    """

    foreground: torch.Tensor
    regions: torch.Tensor
    stage1: DensityPeaks
    stage2: DensityPeaks


def dpc_knn(
    x: torch.Tensor,
    num_clusters: int,
    *,
    k: int = 5,
    mask: torch.Tensor | None = None,
    noise: float = 1e-6,
    generator: torch.Generator | None = None,
    centers: torch.Tensor | None = None,
) -> DensityPeaks:
    """Cluster the tokens of every image with density peaks on a kNN density (DPC-KNN).

    See the module docstring for the equations. Computed in float32 (float64 for float64
    input) without gradients. Differences from ``PromptAD/clusters.py`` of the released
    FineGrainedAD code, none of which changes a result on unmasked single images: ``max δ``
    is taken per image (the code takes it over the batch); masked tokens are never centres
    and get label ``−1`` (the code may pick one when scores tie at 0, and sends all of them to
    centre 0 because their distances to every centre tie).

    Args:
        x: ``(B, N, C)`` token descriptors.
        num_clusters: ``K``, at least 1 and at most the number of unmasked tokens per image.
        k: neighbours of the density, ``1 ≤ k ≤ N`` (the token itself counts).
        mask: ``(B, N)`` bool, True on the tokens to cluster; ``None``: all of them.
        noise: width of the uniform tie-breaking noise added to the density (code: 1e-6;
            0 for none).
        generator: random generator of that noise (same generator state, same clusters).
        centers: ``(B, K)`` int64 centres to use instead of the top-``K`` scores (the paper's
            language-guided initial centres); must be distinct unmasked tokens.

    Returns:
        :class:`DensityPeaks` ``(labels, centers, density, indicator, score)``.

    Raises:
        TypeError: ``x`` is not a tensor.
        ValueError: ``x`` not ``(B, N, C)`` float, ``num_clusters`` or ``k`` out of range, a
            ``mask`` that is not a bool ``(B, N)`` or leaves fewer than ``K`` tokens, a
            negative ``noise``, ``centers`` of a wrong shape, repeated or masked.

    Shape:
        ``x (B, N, C)`` → labels ``(B, N)``, centers ``(B, K)``.

    Example:
        >>> import torch
        >>> from resad_kit.ops import dpc_knn
        >>> x = torch.tensor([[[0.0], [0.1], [0.2], [5.0], [5.1], [5.2]]])
        >>> out = dpc_knn(x, 2, k=3, noise=0.0)
        >>> out.labels.tolist(), sorted(out.centers[0].tolist())
        ([[0, 0, 0, 1, 1, 1]], [1, 4])
        >>> mask = torch.tensor([[True, True, True, False, True, True]])
        >>> dpc_knn(x, 2, k=2, mask=mask, noise=0.0).labels[0, 3].item()  # masked: no cluster
        -1
    """
    if checks_enabled():
        _check_dpc(x, num_clusters, k, mask, noise, centers)
    return _dpc_knn(x, num_clusters, k, mask, noise, generator, centers)


def _check_dpc(
    x: object, num_clusters: object, k: object, mask: object, noise: object, centers: object
) -> None:
    fn = "dpc_knn"
    x = check_tensor(fn, "x", x, ndim=3, shape_doc="(B, N, C)", finite=True)
    b, n, _ = x.shape
    if not _is_int(num_clusters) or not 1 <= num_clusters <= n:
        raise ValueError(f"{fn}: `num_clusters` must be an int in 1..N={n}; got {num_clusters!r}")
    if not _is_int(k) or not 1 <= k <= n:
        raise ValueError(f"{fn}: `k` must be an int in 1..N={n}; got {k!r}")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise ValueError(f"{fn}: `mask` must be a bool tensor (B, N) or None; got {mask!r}")
        if tuple(mask.shape) != (b, n):
            raise ValueError(f"{fn}: `mask` must have shape {(b, n)}; got {tuple(mask.shape)}")
        fewest = int(mask.sum(-1).min())
        if fewest < num_clusters:
            raise ValueError(
                f"{fn}: `mask` leaves {fewest} token(s) in an image, fewer than "
                f"`num_clusters`={num_clusters}"
            )
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0:
        raise ValueError(f"{fn}: `noise` must be a number ≥ 0; got {noise!r}")
    if centers is not None:
        if not isinstance(centers, torch.Tensor) or centers.dtype != torch.int64:
            raise ValueError(f"{fn}: `centers` must be an int64 tensor (B, K); got {centers!r}")
        if tuple(centers.shape) != (b, num_clusters):
            raise ValueError(
                f"{fn}: `centers` must have shape {(b, num_clusters)}; got {tuple(centers.shape)}"
            )
        if bool(((centers < 0) | (centers >= n)).any()):
            raise ValueError(f"{fn}: `centers` must hold token indices in 0..{n - 1}")
        if any(len(set(row)) != num_clusters for row in centers.tolist()):
            raise ValueError(f"{fn}: `centers` must be distinct tokens in every image")
        if mask is not None and not bool(mask.gather(1, centers).all()):
            raise ValueError(f"{fn}: `centers` must be unmasked tokens")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@torch.no_grad()
def _dpc_knn(
    x: torch.Tensor,
    num_clusters: int,
    k: int,
    mask: torch.Tensor | None,
    noise: float,
    generator: torch.Generator | None,
    centers: torch.Tensor | None,
) -> DensityPeaks:
    """Unchecked core of :func:`dpc_knn`."""
    dtype = compute_dtype(x)
    b, n, c = x.shape
    xf = x.to(dtype)
    dist = torch.cdist(xf, xf) / math.sqrt(c)  # (B, N, N)
    if mask is not None:
        far = dist.flatten(1).amax(-1)[:, None, None] + 1.0
        dist = torch.where(mask[:, None, :], dist, far)
    nearest = dist.topk(k, dim=-1, largest=False).values
    density = torch.exp(-(nearest**2).mean(-1))
    if noise > 0:
        u = torch.rand((b, n), generator=generator, device=x.device, dtype=dtype)
        density = density + u * noise
    if mask is not None:
        density = density * mask
    higher = density[:, None, :] > density[:, :, None]  # [b, i, j]: ρ_j > ρ_i
    dist_max = dist.flatten(1).amax(-1)[:, None, None]
    indicator = torch.where(higher, dist, dist_max).amin(-1)
    score = indicator * density
    if centers is None:
        ranked = score if mask is None else score.masked_fill(~mask, -math.inf)
        centers = ranked.topk(num_clusters, dim=-1).indices
    to_centers = dist.gather(1, centers[:, :, None].expand(b, num_clusters, n))  # (B, K, N)
    labels = to_centers.argmin(dim=1)
    labels.scatter_(1, centers, torch.arange(num_clusters, device=x.device).expand(b, -1))
    if mask is not None:
        labels = labels.masked_fill(~mask, -1)
    return DensityPeaks(labels, centers, density, indicator, score)


def _effective_k(k: int, num_clusters: int) -> int:
    """The density neighbours the released code uses for ``K`` clusters (``CTM`` in clusters.py).

    ``min(3, max(K // 2, 1))`` when ``k > K``, else ``k``: stage 1 (``k = 8``, ``K = 2``) runs
    with 1 neighbour, the token itself, so its density is the tie-breaking noise alone.
    """
    return min(3, max(num_clusters // 2, 1)) if k > num_clusters else k


def progressive_region_aggregation(
    features: torch.Tensor,
    anchors: torch.Tensor,
    *,
    k: tuple[int, int] = (8, 5),
    noise: float = 1e-6,
    generator: torch.Generator | None = None,
    semantic_centers: bool = False,
) -> RegionAggregation:
    """FineGrainedAD's two-stage language-guided region aggregation (paper §3.4).

    1. Reference dimension: ``x_i = cos(features_i, anchors) ∈ ℝ^{E+1}``.
    2. Stage 1: :func:`dpc_knn` with ``K = 2`` on all tokens; the cluster whose mean
       feature has the larger dot product with the background anchor (the last one) is the
       background, the other the foreground.
    3. Stage 2: :func:`dpc_knn` with ``K = E + 1`` on the same ``x``, background masked.

    The density neighbours follow the released code's rule, ``min(3, max(K // 2, 1))`` when
    ``k > K`` else ``k``, for ``k[0]`` (stage 1) and ``k[1]`` (stage 2); the code uses
    ``(8, 5)``, so stage 1 has 1 neighbour (the token itself) and its densities are the
    tie-breaking noise alone. Stage 1 decides the
    background of every image from its own clusters (the code reuses the first image's
    cluster membership for all images of a batch). With ``semantic_centers`` the centres are
    the paper's "initial center selection" (§3.4: the token with the highest cosine to each
    prompt feature; disabled in the released code) instead of the top-``K`` scores: stage 1
    takes the token most similar to any component anchor and the one most similar to the
    background anchor, stage 2 the foreground token most similar to each anchor, in anchor
    order; a token already taken goes to the next anchor's second best (and so on), so the
    centres are distinct.

    Args:
        features: ``(B, N, D)`` patch tokens (the code: projected V-V tokens of the 960 px
            image cut into 4×4 tiles of 240 px, stitched to a 60×60 grid).
        anchors: ``(E + 1, D)`` normal prompt features, components first, background last.
        k: density neighbours ``(stage 1, stage 2)`` before the rule above.
        noise: tie-breaking noise of the densities (see :func:`dpc_knn`).
        generator: random generator of that noise.
        semantic_centers: the paper's centres (above) instead of the code's top-``K`` scores.

    Returns:
        :class:`RegionAggregation` ``(foreground, regions, stage1, stage2)``.

    Raises:
        TypeError: a non-tensor input.
        ValueError: wrong shapes or dtypes, fewer than 2 anchors, a foreground with fewer than
            ``E + 1`` tokens (then stage 2 cannot place its centres).

    Shape:
        ``features (B, N, D)``, ``anchors (E+1, D)`` → foreground, regions ``(B, N)``.

    Example:
        >>> import torch
        >>> from resad_kit.ops import progressive_region_aggregation
        >>> anchors = torch.eye(3)  # component 0, component 1, background
        >>> tokens = torch.tensor(
        ...     [[0.0, 0.0, 1.0], [0.0, 0.1, 1.0], [0.1, 0.0, 1.0], [0.1, 0.1, 1.0]]  # background
        ...     + [[1.0, 0.2, 0.0], [1.0, 0.3, 0.0], [1.0, 0.4, 0.0]]  # component 0
        ...     + [[0.2, 1.0, 0.0], [0.3, 1.0, 0.0], [0.4, 1.0, 0.0]]  # component 1
        ... )[None]
        >>> seed = torch.Generator().manual_seed(0)
        >>> out = progressive_region_aggregation(tokens, anchors, generator=seed)
        >>> out.foreground.int().tolist()
        [[0, 0, 0, 0, 1, 1, 1, 1, 1, 1]]
        >>> out.regions.tolist()  # E + 1 = 3 regions on the foreground, -1 on the background
        [[-1, -1, -1, -1, 1, 1, 1, 0, 2, 2]]
    """
    if checks_enabled():
        _check_aggregation(features, anchors, k)
        if not isinstance(semantic_centers, bool):
            raise TypeError(
                "progressive_region_aggregation: `semantic_centers` must be a bool; "
                f"got {semantic_centers!r}"
            )
    return _progressive(features, anchors, k, noise, generator, semantic_centers)


def _check_aggregation(features: object, anchors: object, k: object) -> None:
    fn = "progressive_region_aggregation"
    features = check_tensor(fn, "features", features, ndim=3, shape_doc="(B, N, D)", finite=True)
    anchors = check_tensor(fn, "anchors", anchors, ndim=2, shape_doc="(E + 1, D)", finite=True)
    if anchors.shape[0] < 2 or anchors.shape[1] != features.shape[-1]:
        raise ValueError(
            f"{fn}: `anchors` must be (E + 1, D) with E ≥ 1 and D={features.shape[-1]}; "
            f"got {tuple(anchors.shape)}"
        )
    if not isinstance(k, tuple) or len(k) != 2 or not all(_is_int(v) and v >= 1 for v in k):
        raise ValueError(f"{fn}: `k` must be a pair of positive ints; got {k!r}")


def _progressive(
    features: torch.Tensor,
    anchors: torch.Tensor,
    k: tuple[int, int],
    noise: float,
    generator: torch.Generator | None,
    semantic_centers: bool = False,
) -> RegionAggregation:
    dtype = compute_dtype(features, anchors)
    f = F.normalize(features.to(dtype), dim=-1, eps=_NORM_EPS)
    a = F.normalize(anchors.to(dtype), dim=-1, eps=_NORM_EPS)
    x = torch.einsum("bnd,gd->bng", f, a)
    n = x.shape[1]
    centers = None
    if semantic_centers:  # most like any component, most like the background
        centers = _distinct_argmax(torch.stack([x[..., :-1].amax(-1), x[..., -1]], -1), None)
    stage1 = _dpc_knn(x, 2, min(_effective_k(k[0], 2), n), None, noise, generator, centers)
    means = _cluster_means(features.to(dtype), stage1.labels, 2)  # (B, 2, D)
    background_cluster = (means @ anchors.to(dtype)[-1]).argmax(-1)  # (B,)
    foreground = stage1.labels != background_cluster[:, None]
    num = anchors.shape[0]
    fewest = int(foreground.sum(-1).min())
    if fewest < num:
        raise ValueError(
            f"progressive_region_aggregation: the foreground of an image has {fewest} token(s), "
            f"fewer than the E + 1 = {num} regions of stage 2"
        )
    k2 = min(_effective_k(k[1], num), n)
    centers = _distinct_argmax(x, foreground) if semantic_centers else None
    stage2 = _dpc_knn(x, num, k2, foreground, noise, generator, centers)
    return RegionAggregation(foreground, stage2.labels, stage1, stage2)


def _distinct_argmax(scores: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    """``(B, S)``: per image, the token of highest ``scores[..., s]`` ``(B, N, S)`` for each
    ``s`` in turn among the ``allowed`` ``(B, N)`` tokens not taken by an earlier ``s``."""
    free = torch.ones_like(scores[..., 0], dtype=torch.bool) if allowed is None else allowed
    free = free.clone()
    picked = []
    for s in range(scores.shape[-1]):
        best = scores[..., s].masked_fill(~free, -torch.inf).argmax(-1)  # (B,)
        free.scatter_(-1, best[:, None], False)
        picked.append(best)
    return torch.stack(picked, -1)
