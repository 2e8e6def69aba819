"""Synthetic patch features with the statistics that matter for retrieval timing.

Sparsemax retrieval costs depend on the support size, i.e. on how the similarities of a query
patch spread out; random Gaussian features (all cosines ≈ 0 ± 0.04) would give supports of
hundreds. No pretrained CLIP weights are available offline here, so real features could not
be used; two generators stand in for them:

* :func:`clip_like_features` (every benchmark case): a few large near-uniform regions around
  distinct parts, as CLIP patch features of object images are. The structure
  (:class:`Structure`) sets the support: :data:`SUPPORT_CASES` spans medians of about 10 to
  about 300 entries per row, and ``s150`` has the supports measured through the official
  pipeline on real MVTec images with random ViT-L weights (min 6, median ≈ 150, max 224).
* :func:`layer_features` (kept for comparison with earlier runs): a spatially smooth random
  field, a common direction, per-image noise and a shift of up to one patch; its supports are
  a few tens of entries (median ≈ 30 at K = 4), smaller than on real images.

Every benchmark records the supports it measured.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "SUPPORT_CASES",
    "LayerFeatures",
    "Structure",
    "clip_like_features",
    "layer_features",
    "smooth_field",
]


class LayerFeatures(NamedTuple):
    """Query images and a ``K``-shot bank of one layer.

    Attributes:
        query: ``(B, N, D)`` ℓ2-normalised query patch features.
        bank: ``(K·N, D)`` ℓ2-normalised bank, shot-major.
    """

    query: torch.Tensor
    bank: torch.Tensor


def smooth_field(side: int, dim: int, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """A ``(side, side, dim)`` Gaussian random field, blurred with σ patches (periodic)."""
    field = torch.randn(1, dim, side, side, generator=generator)
    radius = math.ceil(3 * sigma)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    rows = kernel.view(1, 1, 1, -1).expand(dim, 1, 1, -1)
    cols = kernel.view(1, 1, -1, 1).expand(dim, 1, -1, 1)
    field = F.conv2d(F.pad(field, (radius, radius, 0, 0), mode="circular"), rows, groups=dim)
    field = F.conv2d(F.pad(field, (0, 0, radius, radius), mode="circular"), cols, groups=dim)
    return field[0].permute(1, 2, 0)


def layer_features(
    side: int,
    shots: int,
    dim: int,
    *,
    images: int = 1,
    seed: int = 0,
    noise: float = 0.5,
    sigma: float = 1.5,
    dtype: torch.dtype = torch.float32,
) -> LayerFeatures:
    """Query images and a ``shots``-shot bank on a ``side×side`` patch grid.

    Args:
        side: patch-grid side (37 for a 518 px ViT-L/14 input).
        shots: ``K`` reference images in the bank.
        dim: channels ``D``.
        images: query images ``B``.
        seed: random seed (every layer of a benchmark uses its own).
        noise: per-image noise relative to the field.
        sigma: spatial smoothness of the field, in patches.
        dtype: output dtype.

    Returns:
        :class:`LayerFeatures` with ``query (B, N, D)`` and ``bank (K·N, D)``.
    """
    generator = torch.Generator().manual_seed(seed)
    base = F.normalize(smooth_field(side, dim, sigma, generator), dim=-1)
    common = F.normalize(torch.randn(dim, generator=generator), dim=0)

    def image() -> torch.Tensor:
        dy, dx = torch.randint(-1, 2, (2,), generator=generator).tolist()
        jitter = torch.randn(side, side, dim, generator=generator) * (2 * noise / dim**0.5)
        features = base.roll((dy, dx), dims=(0, 1)) + jitter + common
        return F.normalize(features.reshape(side * side, dim), dim=-1)

    bank = torch.cat([image() for _ in range(shots)])
    query = torch.stack([image() for _ in range(images)])
    return LayerFeatures(query.to(dtype), bank.to(dtype))


class Structure(NamedTuple):
    """The feature structure of :func:`clip_like_features` (what moves the sparsemax support).

    Attributes:
        uniform: share of the patch grid covered by the near-uniform regions (the border
            around a central object disc; 0: only distinct parts).
        regions: number of near-uniform regions (angular sectors around the object).
        noise: per-image noise relative to a unit feature.
        sigma: spatial smoothness of the distinct parts, in patches (smoother parts match
            more neighbouring patches).
    """

    uniform: float
    regions: int = 3
    noise: float = 0.35
    sigma: float = 1.5


SUPPORT_CASES: dict[str, Structure] = {
    "s10": Structure(uniform=0.0, noise=0.3, sigma=0.6),
    "s30": Structure(uniform=0.0, noise=0.5, sigma=1.5),
    "s70": Structure(uniform=0.6, noise=0.9, sigma=1.0),
    "s150": Structure(uniform=0.75, noise=0.35, sigma=0.6),
    "s300": Structure(uniform=0.95, regions=1, noise=0.15, sigma=1.5),
}
"""Structures of the support sweep, named by the median support they aim at (K = 4, 518 px;
the measured supports are recorded with every case). ``s150`` is the default case: the range
measured through the official pipeline on real images (min 6, median ≈ 150, max 224)."""


def clip_like_features(
    side: int,
    shots: int,
    dim: int,
    structure: Structure,
    *,
    images: int = 1,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> LayerFeatures:
    """CLIP-like patch features: a few large near-uniform regions around distinct parts.

    Real CLIP patch features of an object image are nearly constant over large background
    regions (every background patch of the query matches hundreds of bank patches almost
    equally, within the radial penalty's reach) and distinct on the object (a patch matches
    its own spot in every shot). The query and the ``K`` shots share one layout: a central
    disc of distinct parts (a smooth random field of ``structure.sigma`` patches) and, around
    it, ``structure.regions`` angular sectors, each one prototype vector. Every image adds a
    shared direction, its own noise and a random shift of up to one patch. ``structure.uniform``
    (the sectors' share of the grid) moves the median support, ``sigma`` the smallest.

    Args:
        side: patch-grid side (37 for a 518 px ViT-L/14 input).
        shots: ``K`` reference images in the bank.
        dim: channels ``D``.
        structure: the layout (:data:`SUPPORT_CASES` holds the sweep's).
        images: query images ``B``.
        seed: random seed (every layer of a benchmark uses its own).
        dtype: output dtype.

    Returns:
        :class:`LayerFeatures` with ``query (B, N, D)`` and ``bank (K·N, D)``, ℓ2-normalised.
    """
    generator = torch.Generator().manual_seed(seed)
    parts = F.normalize(smooth_field(side, dim, structure.sigma, generator), dim=-1)
    prototypes = F.normalize(torch.randn(structure.regions, dim, generator=generator), dim=-1)
    common = F.normalize(torch.randn(dim, generator=generator), dim=0)
    y, x = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    centre = (side - 1) / 2
    radius = ((y - centre) ** 2 + (x - centre) ** 2).sqrt()
    object_radius = math.sqrt((1 - structure.uniform) * side * side / math.pi)
    angle = torch.atan2(y - centre, x - centre)
    sector = ((angle + math.pi) / (2 * math.pi) * structure.regions).long()
    sector = sector.clamp_max(structure.regions - 1)
    base = torch.where((radius > object_radius)[..., None], prototypes[sector], parts)

    def image() -> torch.Tensor:
        dy, dx = torch.randint(-1, 2, (2,), generator=generator).tolist()
        noise = torch.randn(side, side, dim, generator=generator)
        features = base.roll((dy, dx), dims=(0, 1)) + noise * (2 * structure.noise / dim**0.5)
        return F.normalize((features + common).reshape(side * side, dim), dim=-1)

    bank = torch.cat([image() for _ in range(shots)])
    query = torch.stack([image() for _ in range(images)])
    return LayerFeatures(query.to(dtype), bank.to(dtype))
