"""AUPRO: area under the per-region-overlap curve, as in the MVTec AD reference evaluation.

Definition (Bergmann et al., MVTec AD, IJCV 2021; the reference ``pro_curve_util.py``):

* the regions are the connected components of every ground-truth mask, 8-connectivity,
  found per image; ``R`` regions in total, region ``r`` has ``A_r`` pixels;
* at a threshold ``t`` (a pixel is predicted anomalous when its score is ``≥ t``):
  ``PRO(t) = (1/R) Σ_r |{p ∈ r : s_p ≥ t}| / A_r`` and
  ``FPR(t) = |{normal pixels with s ≥ t}| / N``;
* the curve has one point per distinct score, plus ``(0, 0)``; it is integrated with the
  trapezoid rule from FPR 0 up to ``fpr_limit`` (the last segment interpolated linearly at
  the limit) and divided by ``fpr_limit``, so a perfect map scores 1 and a map that is
  independent of the masks scores ``≈ fpr_limit / 2`` (0.15 at the default 0.3).

The computation shares the sorted negatives of the threshold metrics (see
:mod:`resad_kit.metrics.ranking`): the area is a weighted Mann–Whitney sum, each
positive pixel weighing ``1 / (A_r · R)``.
"""

from __future__ import annotations

import torch

from resad_kit.metrics._checks import check_fpr_limit
from resad_kit.metrics._core import rank_stats
from resad_kit.metrics.ranking import pixel_store

__all__ = ["aupro"]


def aupro(maps: torch.Tensor, masks: torch.Tensor, *, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (the MVTec AD "AU-PRO").

    Exact for the given scores (every distinct score is a threshold, ties grouped); the
    official Res²CLIP evaluation uses a 200-bin approximation instead
    (:func:`resad_kit.metrics.binned_aupro`).

    Args:
        maps: anomaly maps, one per image, higher = more anomalous.
        masks: ground-truth masks, 1 = anomalous pixel; regions are their 8-connected
            components per image.
        fpr_limit: upper integration limit on the false-positive rate, in ``(0, 1]``.

    Returns:
        ``∫_0^limit PRO d(FPR) / limit`` in ``[0, 1]``.

    Raises:
        ValueError: on shape mismatch, empty or non-finite maps, masks that are not 0/1,
            masks with no anomalous or no normal pixel, or a bad ``fpr_limit``.

    Shape:
        - maps: ``(B, H, W)``
        - masks: ``(B, H, W)``, bool, integer or floating

    Example:
        >>> import torch
        >>> from resad_kit.metrics import aupro
        >>> masks = torch.zeros(1, 8, 8)
        >>> masks[0, 2:4, 2:4] = 1  # one 4-pixel region
        >>> aupro(masks * 2.0, masks)  # a perfect map
        1.0
        >>> maps = masks.clone()
        >>> maps[0, 0, :] = 2.0  # 8 of 60 normal pixels score above the region
        >>> round(aupro(maps, masks), 4)
        0.5556
    """
    fn = "aupro"
    limit = check_fpr_limit(fn, fpr_limit)
    store = pixel_store(fn, maps, masks, regions=True)
    neg, pos, areas = store.sort()
    stats = rank_stats(neg, pos, areas, store.num_regions, fpr_limit=limit)
    return float(stats.aupro)  # type: ignore[arg-type]
