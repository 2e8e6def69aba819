"""Exact threshold metrics: AUROC, AP and F1max of image scores and of pixel maps.

* :func:`image_auroc`, :func:`pixel_auroc` — area under the ROC curve, trapezoid rule with
  tied scores grouped (equals ``sklearn.metrics.roc_auc_score``).
* :func:`image_ap`, :func:`pixel_ap` — average precision ``Σ_n (R_n − R_{n−1}) P_n`` over
  the distinct thresholds (equals ``sklearn.metrics.average_precision_score``).
* :func:`image_f1max`, :func:`pixel_f1max` — ``max_t 2·P(t)·R(t) / (P(t) + R(t))`` over all
  thresholds (``eps`` adds the official code's ``1e-7`` to the denominator).

Every function splits the scores by class and sorts each part once; all three metrics
come from the same sorted arrays (:func:`resad_kit.metrics.evaluate` shares one sort
between all of them and AUPRO). The label 1 (``True``) is the positive, anomalous class.
Scores are compared in float32 (float64 for float64 inputs); half inputs are widened
exactly. Results are Python floats in ``[0, 1]``.
"""

from __future__ import annotations

import numpy as np
import torch

from resad_kit.metrics._checks import (
    check_both_classes,
    check_targets,
    to_bool,
    to_storage,
)
from resad_kit.metrics._core import RankStats, rank_stats, sort_inplace
from resad_kit.metrics._store import PixelStore, fill
from resad_kit.ops._validation import check_tensor

__all__ = [
    "image_ap",
    "image_auroc",
    "image_f1max",
    "pixel_ap",
    "pixel_auroc",
    "pixel_f1max",
]


def _working_dtype(x: torch.Tensor) -> type[np.floating]:
    return np.float64 if x.dtype == torch.float64 else np.float32


def _check_eps(fn: str, eps: object) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 <= eps < 1.0:
        raise ValueError(f"{fn}: `eps` must be a number in [0, 1); got {eps!r}")
    return float(eps)


def _image_stats(fn: str, scores: object, labels: object, *, f1_eps: float = 0.0) -> RankStats:
    s = check_tensor(fn, "scores", scores, ndim=1, shape_doc="(B,)")
    y = check_targets(fn, "labels", labels, s, "scores")
    values = to_storage(fn, "scores", s, _working_dtype(s))
    positive = to_bool(fn, "labels", y)
    neg, pos = values[~positive], values[positive]
    check_both_classes(fn, "labels", pos.size, neg.size)
    sort_inplace(neg)
    sort_inplace(pos)
    return rank_stats(neg, pos, f1_eps=f1_eps)


def pixel_store(
    fn: str,
    maps: object,
    masks: object,
    *,
    regions: bool,
    dtype: type[np.floating] | None = None,
) -> PixelStore:
    """Checked ``(B, H, W)`` maps and masks copied into a store (shared with pro and binned).

    ``dtype`` fixes the storage dtype (default: float64 for float64 maps, else float32).
    """
    m = check_tensor(fn, "maps", maps, ndim=3, shape_doc="(B, H, W)", finite=False)
    g = check_targets(fn, "masks", masks, m, "maps")
    store = PixelStore(m.numel(), dtype or _working_dtype(m), regions=regions)
    fill(fn, store, m, g, names=("maps", "masks"))
    check_both_classes(fn, "masks", store.num_pos, store.num_neg)
    return store


def _pixel_stats(fn: str, maps: object, masks: object, *, f1_eps: float = 0.0) -> RankStats:
    neg, pos, _ = pixel_store(fn, maps, masks, regions=False).sort()
    return rank_stats(neg, pos, f1_eps=f1_eps)


def image_auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Image-level AUROC (I-AUROC): trapezoid ROC area with tied scores grouped.

    Equals ``sklearn.metrics.roc_auc_score(labels, scores)``: the probability that a
    random anomalous image scores above a random normal one, ties counting ½.

    Args:
        scores: one anomaly score per image, higher = more anomalous.
        labels: 1 (or ``True``) for anomalous images, 0 for normal ones.

    Returns:
        The AUROC in ``[0, 1]``.

    Raises:
        ValueError: on shape mismatch, empty or non-finite scores, labels that are not
            0/1, or labels holding one class only.

    Shape:
        - scores: ``(B,)``
        - labels: ``(B,)``, bool, integer or floating

    Example:
        >>> import torch
        >>> from resad_kit.metrics import image_auroc
        >>> image_auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
        0.75
        >>> image_auroc(torch.tensor([0.5, 0.5]), torch.tensor([False, True]))  # a tie
        0.5
    """
    return _image_stats("image_auroc", scores, labels).auroc


def image_ap(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Image-level average precision (I-AP), ``Σ_n (R_n − R_{n−1}) P_n``.

    The step-wise sum over distinct score thresholds, equal to
    ``sklearn.metrics.average_precision_score(labels, scores)`` (no interpolation).

    Args:
        scores: one anomaly score per image.
        labels: 1 for anomalous images, 0 for normal ones.

    Returns:
        The AP in ``(0, 1]``.

    Raises:
        ValueError: as :func:`image_auroc`.

    Shape:
        - scores: ``(B,)``
        - labels: ``(B,)``

    Example:
        >>> import torch
        >>> from resad_kit.metrics import image_ap
        >>> round(image_ap(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])), 4)
        0.8333
    """
    return _image_stats("image_ap", scores, labels).ap


def image_f1max(scores: torch.Tensor, labels: torch.Tensor, *, eps: float = 0.0) -> float:
    """Image-level F1max (I-F1max): the best F1 over all score thresholds.

    ``max_t 2·P(t)·R(t) / (P(t) + R(t) + eps)`` where ``t`` ranges over the distinct scores
    (an image is predicted anomalous when its score is ``≥ t``). ``eps=0`` gives the exact
    value; the official Res²CLIP code uses ``eps=1e-7`` (see :class:`MetricConfig`).

    Args:
        scores: one anomaly score per image.
        labels: 1 for anomalous images, 0 for normal ones.
        eps: added to ``P + R`` in the denominator, in ``[0, 1)``.

    Returns:
        The F1max in ``(0, 1]``.

    Raises:
        ValueError: as :func:`image_auroc`, or for a bad ``eps``.

    Shape:
        - scores: ``(B,)``
        - labels: ``(B,)``

    Example:
        >>> import torch
        >>> from resad_kit.metrics import image_f1max
        >>> round(image_f1max(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])), 4)
        0.8
    """
    eps = _check_eps("image_f1max", eps)
    return _image_stats("image_f1max", scores, labels, f1_eps=eps).f1max


def pixel_auroc(maps: torch.Tensor, masks: torch.Tensor) -> float:
    """Pixel-level AUROC (P-AUROC) over all pixels of all maps, ties grouped.

    All pixels are pooled (one ROC curve for the whole set, as in the MVTec AD protocol).
    Equals ``sklearn.metrics.roc_auc_score(masks.flatten(), maps.flatten())``.

    Args:
        maps: anomaly maps, one per image.
        masks: ground-truth masks, 1 = anomalous pixel.

    Returns:
        The AUROC in ``[0, 1]``.

    Raises:
        ValueError: on shape mismatch, empty or non-finite maps, masks that are not 0/1,
            or masks with one class only.

    Shape:
        - maps: ``(B, H, W)``
        - masks: ``(B, H, W)``, bool, integer or floating

    Example:
        >>> import torch
        >>> from resad_kit.metrics import pixel_auroc
        >>> maps = torch.tensor([[[0.1, 0.9], [0.2, 0.3]]])
        >>> pixel_auroc(maps, torch.tensor([[[0, 1], [0, 0]]]))
        1.0
    """
    return _pixel_stats("pixel_auroc", maps, masks).auroc


def pixel_ap(maps: torch.Tensor, masks: torch.Tensor) -> float:
    """Pixel-level average precision (P-AP) over all pixels, ``Σ_n (R_n − R_{n−1}) P_n``.

    Equals ``sklearn.metrics.average_precision_score(masks.flatten(), maps.flatten())``.

    Args:
        maps: anomaly maps, one per image.
        masks: ground-truth masks, 1 = anomalous pixel.

    Returns:
        The AP in ``(0, 1]``.

    Raises:
        ValueError: as :func:`pixel_auroc`.

    Shape:
        - maps: ``(B, H, W)``
        - masks: ``(B, H, W)``

    Example:
        >>> import torch
        >>> from resad_kit.metrics import pixel_ap
        >>> maps = torch.tensor([[[0.1, 0.9], [0.95, 0.3]]])
        >>> pixel_ap(maps, torch.tensor([[[0, 1], [0, 0]]]))
        0.5
    """
    return _pixel_stats("pixel_ap", maps, masks).ap


def pixel_f1max(maps: torch.Tensor, masks: torch.Tensor, *, eps: float = 0.0) -> float:
    """Pixel-level F1max (P-F1max): the best F1 over all thresholds of the pooled pixels.

    ``max_t 2·P(t)·R(t) / (P(t) + R(t) + eps)``; ``eps=1e-7`` is the official code's form.

    Args:
        maps: anomaly maps, one per image.
        masks: ground-truth masks, 1 = anomalous pixel.
        eps: added to ``P + R`` in the denominator, in ``[0, 1)``.

    Returns:
        The F1max in ``(0, 1]``.

    Raises:
        ValueError: as :func:`pixel_auroc`, or for a bad ``eps``.

    Shape:
        - maps: ``(B, H, W)``
        - masks: ``(B, H, W)``

    Example:
        >>> import torch
        >>> from resad_kit.metrics import pixel_f1max
        >>> maps = torch.tensor([[[0.1, 0.9], [0.95, 0.3]]])
        >>> round(pixel_f1max(maps, torch.tensor([[[0, 1], [0, 0]]])), 4)
        0.6667
    """
    eps = _check_eps("pixel_f1max", eps)
    return _pixel_stats("pixel_f1max", maps, masks, f1_eps=eps).f1max
