"""Unchecked cores of the losses (private): the maths alone, inputs already validated.

The public losses of :mod:`resad_kit.ops.losses` validate their arguments and call these;
methods that have validated their inputs once (or run with ``resad_kit.checks(False)``)
compose them directly, e.g. :mod:`resad_kit.methods.res2clip_losses`. Conventions
(detached targets, float32 compute dtype, the two reductions) are those of
:mod:`resad_kit.ops.losses`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from resad_kit.ops._phases import Phase
from resad_kit.ops._validation import compute_dtype

__all__: list[str] = []

COUNT_EPS = 1e-6
"""Lower clamp of the normal/anomalous counts (official code): an empty class contributes 0."""

NORM_EPS = 1e-8
"""Lower clamp of vector norms before normalising (cosine and projection direction)."""


# --------------------------------------------------------------------------------------------
# Reductions (the only place where counts and averages are formed)
# --------------------------------------------------------------------------------------------


def _balanced_pixel_mean(
    normal_term: torch.Tensor,
    anomalous_term: torch.Tensor,
    mask: torch.Tensor,
    reduction: str,
) -> torch.Tensor:
    """Class-balanced mean of per-pixel terms; all inputs ``(B, *S)`` in the compute dtype.

    ``normal_term`` counts where ``mask == 0`` and ``anomalous_term`` where ``mask == 1``.
    Counts are pooled over the batch (``"batch"``) or taken per sample and the per-sample
    results averaged (``"per_sample"``); see the module docstring.
    """
    anomalous = mask.flatten(1)
    normal = 1.0 - anomalous
    normal_part = normal_term.flatten(1) * normal
    anomalous_part = anomalous_term.flatten(1) * anomalous
    if reduction == "batch":  # one count per class for the whole batch
        normal_part, anomalous_part = normal_part.sum(), anomalous_part.sum()
        normal, anomalous = normal.sum(), anomalous.sum()
    else:  # one count per class and sample
        normal_part, anomalous_part = normal_part.sum(1), anomalous_part.sum(1)
        normal, anomalous = normal.sum(1), anomalous.sum(1)
    normal_mean = normal_part / normal.clamp_min(COUNT_EPS)
    anomalous_mean = anomalous_part / anomalous.clamp_min(COUNT_EPS)
    return (normal_mean + anomalous_mean).mean()  # mean over samples; no-op for "batch"


def _balanced_image_mean(
    normal_term: torch.Tensor,
    anomalous_term: torch.Tensor,
    labels: torch.Tensor,
    reduction: str,
) -> torch.Tensor:
    """Image-level reduction of ``(B,)`` terms: the pixel reduction with one pixel per sample.

    With one pixel, ``N0_b = 1 − y_b`` and ``N1_b = y_b``, so ``"per_sample"`` is the paper's
    ``mean_b [(1−y_b)·n_b + y_b·a_b]`` and ``"batch"`` the code's class-balanced means.
    """
    return _balanced_pixel_mean(
        normal_term.unsqueeze(1), anomalous_term.unsqueeze(1), labels.unsqueeze(1), reduction
    )


# --------------------------------------------------------------------------------------------
# Unchecked cores (inputs already validated)
# --------------------------------------------------------------------------------------------


def _hinge_terms(
    scores: torch.Tensor, target: torch.Tensor | float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normal term ``max(0, s)`` and anomalous term ``max(0, t − s)`` (``t`` detached)."""
    s = scores.to(dtype)
    t = target.detach().to(dtype) if isinstance(target, torch.Tensor) else float(target)
    return torch.relu(s), torch.relu(t - s)


def global_hinge_core(
    scores: torch.Tensor, labels: torch.Tensor, target: torch.Tensor | float, reduction: str
) -> torch.Tensor:
    dtype = _dtype_of(scores, target)
    normal, anomalous = _hinge_terms(scores, target, dtype)
    return _balanced_image_mean(normal, anomalous, labels.to(dtype), reduction)


def local_hinge_core(
    score_map: torch.Tensor, mask: torch.Tensor, target: torch.Tensor | float, reduction: str
) -> torch.Tensor:
    dtype = _dtype_of(score_map, target)
    normal, anomalous = _hinge_terms(score_map, target, dtype)
    return _balanced_pixel_mean(normal, anomalous, mask.to(dtype), reduction)


def magnitude_core(
    adapted_norm: torch.Tensor, raw_norm: torch.Tensor, mask: torch.Tensor, reduction: str
) -> torch.Tensor:
    dtype = compute_dtype(adapted_norm, raw_norm)
    adapted = adapted_norm.to(dtype)
    raw = raw_norm.detach().to(dtype)
    return _balanced_pixel_mean(adapted, (adapted - raw).abs(), mask.to(dtype), reduction)


def direction_core(adapted: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
    dtype = compute_dtype(adapted, raw)
    a = F.normalize(adapted.to(dtype), dim=-1, eps=NORM_EPS)
    r = F.normalize(raw.detach().to(dtype), dim=-1, eps=NORM_EPS)
    return (1.0 - (a * r).sum(-1)).mean()


def scaled_target(target: torch.Tensor | float, margin: float) -> torch.Tensor | float:
    """``margin · target`` formed in the compute dtype (not in half precision), detached."""
    if isinstance(target, torch.Tensor):
        return target.detach().to(compute_dtype(target)) * margin
    return target * margin


def _dtype_of(x: torch.Tensor, target: torch.Tensor | float) -> torch.dtype:
    return compute_dtype(x, target) if isinstance(target, torch.Tensor) else compute_dtype(x)


def magnitude_regularizer_core(adapted_norm: torch.Tensor, raw_norm: torch.Tensor) -> torch.Tensor:
    """``mean |adapted_norm − sg(raw_norm)|`` in the compute dtype (eq. 41, one term)."""
    dtype = compute_dtype(adapted_norm, raw_norm)
    return (adapted_norm.to(dtype) - raw_norm.detach().to(dtype)).abs().mean()


def projection_core(residual: torch.Tensor, direction: torch.Tensor, update: Phase) -> torch.Tensor:
    """``residual · d̂`` with stop-gradient on the side that ``update`` does not train."""
    dtype = compute_dtype(residual, direction)
    r = residual.to(dtype)
    d = F.normalize(direction.to(dtype), dim=-1, eps=NORM_EPS)
    if update == "text":
        r = r.detach()
    else:
        d = d.detach()
    return (r * d).sum(-1)
