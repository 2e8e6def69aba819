"""AF-CLIP's views, scoring head and memory (internal parts of :mod:`resad_kit.methods.afclip`).

Every function composes the public primitives: :func:`~resad_kit.ops.spatial_aggregate`
(Eqs. 5–6), the shared :class:`~resad_kit.nn.AttentionAdapter` (Eq. 4),
:meth:`~resad_kit.clip.ClipBackbone.project_tokens` (Eq. 7),
:func:`~resad_kit.ops.cosine_score` (Eq. 9) and the memory scorer (Eq. 17, by default
:func:`nearest_neighbor_memory`, i.e. :func:`~resad_kit.ops.knn_distance` with ``k = 1``).

Shape legend: ``V`` views (taps × windows, tap-major), ``B`` images, ``N = h·w`` patches,
``C`` residual width, ``D`` joint embedding width, ``K`` shots, ``M = K·N`` bank rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor

from resad_kit.clip import ClipBackbone, Features
from resad_kit.ops import Neighbors, cosine_score, knn_distance, spatial_aggregate

__all__ = ["MemoryScore", "MemoryScorer", "nearest_neighbor_memory"]


class MemoryScore(NamedTuple):
    """What a memory scorer returns: per-patch distances and, if any, matched bank rows.

    Attributes:
        distance: ``(V, B, N)`` anomaly distance of every query patch in every view.
        index: ``(V, B, N)`` bank row of the nearest neighbour (row ``k·N + n`` is patch
            ``n`` of shot ``k``), or ``None`` for a scorer without one.

    Example:
        >>> import torch
        >>> from resad_kit.methods import MemoryScore
        >>> MemoryScore(torch.zeros(12, 2, 64)).index is None
        True
    """

    distance: Tensor
    index: Tensor | None = None


#: ``(query (V, B, N, C), bank (V, 1, M, C)) -> (V, B, N)`` distances, a
#: :class:`MemoryScore` or a :class:`~resad_kit.ops.Neighbors` (``k`` averaged).
MemoryScorer = Callable[[Tensor, Tensor], "Tensor | MemoryScore | Neighbors"]


def nearest_neighbor_memory(query: Tensor, bank: Tensor, *, chunk_size: int | None = None):
    """AF-CLIP+'s memory score (Eq. 17): ``min_b (1 − cos(q, b)) / 2`` per view, and the argmin.

    Args:
        query: ``(V, B, N, C)`` aggregated, un-adapted query patches.
        bank: ``(V, 1, M, C)`` the views' banks (ℓ2-normalised or not: cosine either way).
        chunk_size: see :func:`~resad_kit.ops.knn_distance`.

    Returns:
        :class:`MemoryScore` with ``(V, B, N)`` distances and bank rows.

    Example:
        >>> import torch
        >>> from resad_kit.methods.afclip_views import nearest_neighbor_memory
        >>> bank = torch.eye(3)[None, None]  # one view, M = 3 rows
        >>> out = nearest_neighbor_memory(bank[:, :, :2], bank)  # queries = rows 0, 1
        >>> out.distance, out.index
        (tensor([[[0., 0.]]]), tensor([[[0, 1]]]))
    """
    found = knn_distance(query, bank, k=1, chunk_size=chunk_size, return_index=True)
    return MemoryScore(found.distance[..., 0], found.index[..., 0])


def as_memory_score(out: object, shape: tuple[int, ...]) -> MemoryScore:
    """Normalise a scorer's output to a :class:`MemoryScore` of ``(V, B, N)`` tensors."""
    if isinstance(out, Neighbors):  # k neighbours: their mean distance, the nearest row
        out = MemoryScore(out.distance.mean(-1), out.index[..., 0])
    elif isinstance(out, Tensor):
        out = MemoryScore(out)
    if not isinstance(out, MemoryScore) or tuple(out.distance.shape) != shape:
        got = tuple(out.distance.shape) if isinstance(out, MemoryScore) else type(out).__name__
        raise ValueError(
            f"AFCLIP: `memory_score` must return (V, B, N) = {shape} distances (a tensor, "
            f"MemoryScore or Neighbors); got {got}"
        )
    return out


def aggregated_patches(
    feats: Features,
    taps: Sequence[int],
    windows: Sequence[int],
    *,
    sigma: float,
    border: str,
) -> Tensor:
    """``(V, B, N, C)`` patches of every (tap, window) view, tap-major (Eqs. 5–6, c^{ℓr})."""
    return torch.stack(
        [
            spatial_aggregate(feats.patches[t], feats.grid, r, sigma=sigma, border=border)
            for t in taps
            for r in windows
        ]
    )


def with_cls(patches: Tensor, feats: Features, taps: Sequence[int], n_windows: int) -> Tensor:
    """``(V, B, 1 + N, C)``: each view's tap CLS token (not aggregated, Eq. 6) then patches."""
    cls = torch.stack([feats.tap_cls[t] for t in taps])  # (T, B, C)
    cls = repeat(cls, "t b c -> (t r) b 1 c", r=n_windows)
    return torch.cat([cls, patches], dim=2)


def adapted_tokens(views: Tensor, adapter: Callable[[Tensor], Tensor], backbone: ClipBackbone):
    """``(V, B, 1 + N, D)`` z^{ℓr} = proj(LN_post(H_a(c^{ℓr}))) (Eqs. 4, 7), one view at a time.

    One shared adapter; each view is a separate attention context (its own ``1 + N``
    tokens), so running the views one by one bounds the attention memory to one view's.
    """
    return torch.stack([backbone.project_tokens(adapter(v)) for v in views.unbind(0)])


def state_logits(tokens: Tensor, text: Tensor, temperature: float) -> Tensor:
    """``(V, B, T, 2)`` per-view logits ``cos(z, t_s) / τ`` for the states (normal, anomalous).

    Eq. 9; :func:`~resad_kit.ops.cosine_score` against each of the two text embeddings.
    """
    return cosine_score(tokens[..., None, :], text) / temperature


def anomaly_probability(logits: Tensor) -> Tensor:
    """``softmax([S_n, S_a])[1]`` over the last dim of ``(..., 2)`` logits (Eq. 10).

    The softmax over two states is the logistic function of the logit difference,
    ``σ(S_a − S_n)`` (exact algebra; equal to the softmax to float rounding).
    """
    return torch.sigmoid(logits[..., 1] - logits[..., 0])


def patch_labels(masks: Tensor, grid: tuple[int, int]) -> Tensor:
    """``(B, h·w)`` patch labels M̃: masks bilinearly resized to the grid, binarised at 0.5.

    The code's ``F.interpolate(mode="bilinear")`` (``align_corners=False``, no
    antialiasing) then ``> 0.5`` (the code keeps values of exactly 0.5 as 0.5; here they
    are 0).
    """
    m = F.interpolate(masks[:, None].float(), size=grid, mode="bilinear", align_corners=False)
    return rearrange((m > 0.5).float(), "b 1 h w -> b (h w)")


def default_scorer(chunk_size: int | None) -> MemoryScorer:
    """:func:`nearest_neighbor_memory` with the config's ``chunk_size``."""

    def score(query: Tensor, bank: Tensor) -> MemoryScore:
        return nearest_neighbor_memory(query, bank, chunk_size=chunk_size)

    return score


def resolve_output_size(
    inputs: Tensor | Features, size: int | tuple[int, int] | None, grid: tuple[int, int], p: int
) -> tuple[int, int]:
    """The map size: ``size``, else the images' size, else ``grid × patch size``."""
    if size is None:
        if isinstance(inputs, Tensor):
            return tuple(inputs.shape[-2:])
        return grid[0] * p, grid[1] * p
    return (size, size) if isinstance(size, int) else tuple(size)
