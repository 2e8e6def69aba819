"""Generic training losses (Res²CLIP† paper Sec. 3.3, Appendix D, eqs. 35–41).

Every loss is a pure function of tensors that returns a scalar tensor: two-sided hinges,
the magnitude loss, the direction and magnitude regularisers and the stop-gradient
projection. Methods compose them; Res²CLIP's branch sums (eqs. 13–15) live next to the
method, in :mod:`resad_kit.methods.res2clip_losses`. Each public loss validates its inputs
and calls an unchecked core (:mod:`resad_kit.ops._loss_core`). The probability losses of
the other methods (focal, L1, Dice) are defined in :mod:`resad_kit.ops.segmentation_losses`
and AF-CLIP's patch alignment loss in :mod:`resad_kit.ops.alignment_loss`; all are
re-exported here.

Shape legend: ``B`` batch, ``S`` the spatial dims of one map (``H×W`` after upsampling to the
mask, or ``N`` patches), ``D`` channels.

Conventions shared by all losses:

* **Labels and masks** are binary (0/1 or bool); 1 marks an anomalous image or pixel.
  Binarise soft masks before calling (the official code thresholds at 0.5).
* **Maps must already have the mask's shape.** Nothing is resized here; the caller upsamples
  score and magnitude maps (bilinear, ``align_corners=False`` in the official code).
* **Targets and raw magnitudes are constants.** ``target``, ``raw_norm`` and ``raw`` are
  detached, as in the official code: they come from the frozen backbone ("unadapted
  residuals and raw CLIP features are kept frozen", Sec. 3.3), so no gradient may reach them.
* **Precision.** Everything is computed in float32 (float64 if any input is float64), also
  for float16/bfloat16 inputs; the returned scalar has that dtype.
* **Reduction**: ``reduction="batch"`` (default, official code) or
  ``"per_sample"`` (the paper's literal per-sample form, averaged over the batch). Write
  ``n_b``/``a_b`` for the normal/anomalous term at pixel ``p`` of sample ``b`` and
  ``M`` for the mask:

  - ``"batch"``: ``Σ_{b,p} (1−M)·n / max(N0, ε) + Σ_{b,p} M·a / max(N1, ε)`` where ``N0``,
    ``N1`` count the normal/anomalous pixels of the whole batch and ``ε = 1e-6``.
  - ``"per_sample"``: ``mean_b [ Σ_p (1−M)·n / max(N0_b, ε) + Σ_p M·a / max(N1_b, ε) ]``.

  In both, a class without pixels contributes 0. Image-level terms use the same formula with
  one "pixel" per sample (the label): ``"batch"`` gives the official class-balanced form
  ``Σ_b (1−y_b)·n_b / #normal + Σ_b y_b·a_b / #anomalous``, and ``"per_sample"`` gives the
  paper's ``mean_b [(1−y_b)·n_b + y_b·a_b]``.
"""

from __future__ import annotations

from typing import Literal

import torch

from resad_kit.ops._loss_checks import (
    check_binary_like,
    check_nonnegative,
    check_reduction,
    check_target,
    check_vector_pair,
)
from resad_kit.ops._loss_core import (
    direction_core,
    global_hinge_core,
    local_hinge_core,
    magnitude_core,
    magnitude_regularizer_core,
    projection_core,
)
from resad_kit.ops._phases import PHASES, Phase
from resad_kit.ops._validation import check_same_shape, check_tensor, checks_enabled
from resad_kit.ops.alignment_loss import patch_alignment_loss
from resad_kit.ops.segmentation_losses import binary_focal_loss, dice_loss, l1_loss

__all__ = [
    "Reduction",
    "binary_focal_loss",
    "dice_loss",
    "direction_regularizer",
    "global_hinge_loss",
    "l1_loss",
    "local_hinge_loss",
    "magnitude_loss",
    "magnitude_regularizer",
    "patch_alignment_loss",
    "stop_gradient_projection",
]

Reduction = Literal["batch", "per_sample"]
"""How pixel and image terms are averaged; see the module docstring."""

# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def global_hinge_loss(
    scores: torch.Tensor,
    labels: torch.Tensor,
    *,
    target: float | torch.Tensor = 1.0,
    reduction: Reduction = "batch",
) -> torch.Tensor:
    r"""Image-level two-sided hinge (eqs. 35 and 37).

    ``(1−y)·max(0, s) + y·max(0, t − s)``: normal scores are pushed below 0, anomalous scores
    above the target ``t``; scores in between are not penalised. Eq. 35 (text branch) uses
    ``t = 1`` with ``s = ⟨f_v^q, R̃_t⟩``; eq. 37 (residual branch) uses
    ``t = τ·‖R_{v,cls}‖`` with the projection ``s = P_cls``.

    Args:
        scores: image scores ``s``.
        labels: image labels ``y`` (0 normal, 1 anomalous; bool or numeric).
        target: anomalous target ``t``: a float, or one value per image. Treated as a
            constant (detached).
        reduction: ``"batch"`` (class-balanced over the batch, official code) or
            ``"per_sample"`` (the paper's per-image form, averaged); see the module docstring.

    Returns:
        Scalar loss in float32 (float64 if an input is float64).

    Shape:
        - scores: ``(B,)``
        - labels: ``(B,)``
        - target: float or ``(B,)``
        - output: ``()``

    Example:
        >>> import torch
        >>> from resad_kit.ops.losses import global_hinge_loss
        >>> scores = torch.tensor([-0.2, 0.3, 0.4, 1.2])
        >>> labels = torch.tensor([0, 0, 1, 1])
        >>> global_hinge_loss(scores, labels)  # 0.3 / 2 normal + 0.6 / 2 anomalous
        tensor(0.4500)
        >>> global_hinge_loss(scores, labels, reduction="per_sample")  # (0.3 + 0.6) / 4
        tensor(0.2250)
    """
    if checks_enabled():
        fn = "global_hinge_loss"
        reduction = check_reduction(fn, reduction)
        scores = check_tensor(fn, "scores", scores, ndim=1, shape_doc="(B,)", finite=True)
        labels = check_binary_like(fn, "labels", labels, scores, "scores")
        target = check_target(fn, "target", target, scores, "scores")
    return global_hinge_core(scores, labels, target, reduction)


def local_hinge_loss(
    score_map: torch.Tensor,
    mask: torch.Tensor,
    *,
    target: float | torch.Tensor = 1.0,
    reduction: Reduction = "batch",
) -> torch.Tensor:
    r"""Pixel-level two-sided hinge of one layer (eq. 36 per layer, eq. 38).

    ``(1/N0) Σ_{M=0} max(0, s) + (1/N1) Σ_{M=1} max(0, t − s)``. Eq. 36 (text branch) uses
    ``t = 1`` with the cosine map ``⟨F_{v,l}^q, R̃_t⟩``; eq. 38 (residual branch) uses the map
    ``t = τ·‖R_{v,l}‖`` with the projection map ``P_l``. The caller brings ``score_map`` (and
    a map ``target``) to the mask's shape; nothing is resized here.

    Args:
        score_map: per-pixel (or per-patch) scores ``s``.
        mask: ground-truth mask ``M`` (0 normal, 1 anomalous; bool or numeric), same shape.
        target: anomalous target ``t``: a float or a map of the same shape. Treated as a
            constant (detached).
        reduction: ``"batch"`` (pixel counts pooled over the batch, official code) or
            ``"per_sample"`` (per-image counts, averaged); see the module docstring.

    Returns:
        Scalar loss in float32 (float64 if an input is float64).

    Shape:
        - score_map: ``(B, *S)``, e.g. ``(B, H, W)`` or ``(B, N)``
        - mask: ``(B, *S)``
        - target: float or ``(B, *S)``
        - output: ``()``

    Example:
        >>> import torch
        >>> from resad_kit.ops.losses import local_hinge_loss
        >>> score_map = torch.tensor([[[0.5, -0.1], [0.2, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
        >>> mask = torch.tensor([[[0, 0], [1, 1]], [[0, 0], [0, 0]]])
        >>> local_hinge_loss(score_map, mask)  # 0.5 / 6 + (0.8 + 1.0) / 2
        tensor(0.9833)
        >>> local_hinge_loss(score_map, mask, reduction="per_sample")  # (0.5/2 + 0.9 + 0) / 2
        tensor(0.5750)
    """
    if checks_enabled():
        fn = "local_hinge_loss"
        reduction = check_reduction(fn, reduction)
        score_map = check_tensor(
            fn, "score_map", score_map, min_ndim=2, shape_doc="(B, *S)", finite=True
        )
        mask = check_binary_like(fn, "mask", mask, score_map, "score_map")
        target = check_target(fn, "target", target, score_map, "score_map")
    return local_hinge_core(score_map, mask, target, reduction)


def magnitude_loss(
    adapted_norm: torch.Tensor,
    raw_norm: torch.Tensor,
    mask: torch.Tensor,
    *,
    reduction: Reduction = "batch",
) -> torch.Tensor:
    r"""Visual magnitude constraint of one layer (eq. 14, one summand).

    ``(1/N0) Σ_{M=0} ‖R̃_{v,l}‖ + (1/N1) Σ_{M=1} |‖R̃_{v,l}‖ − ‖R_{v,l}‖|``: normal
    magnitudes are pushed to 0, anomalous ones towards the raw residual magnitude.

    Args:
        adapted_norm: ``‖R̃_{v,l}‖`` map (≥ 0), already at the mask's shape.
        raw_norm: ``‖R_{v,l}‖`` map (≥ 0), same shape. Treated as a constant (detached).
        mask: ground-truth mask (0 normal, 1 anomalous; bool or numeric), same shape.
        reduction: ``"batch"`` or ``"per_sample"``; see the module docstring.

    Returns:
        Scalar loss in float32 (float64 if an input is float64).

    Shape:
        - adapted_norm, raw_norm, mask: ``(B, *S)``
        - output: ``()``

    Example:
        >>> import torch
        >>> from resad_kit.ops.losses import magnitude_loss
        >>> adapted = torch.tensor([[0.2, 0.4, 1.5, 0.5]])
        >>> raw = torch.tensor([[0.3, 0.3, 1.0, 1.0]])
        >>> mask = torch.tensor([[0, 0, 1, 1]])
        >>> magnitude_loss(adapted, raw, mask)  # (0.2 + 0.4) / 2 + (0.5 + 0.5) / 2
        tensor(0.8000)
    """
    if checks_enabled():
        fn = "magnitude_loss"
        reduction = check_reduction(fn, reduction)
        adapted_norm = check_tensor(
            fn, "adapted_norm", adapted_norm, min_ndim=2, shape_doc="(B, *S)", finite=True
        )
        raw_norm = check_tensor(
            fn, "raw_norm", raw_norm, min_ndim=2, shape_doc="(B, *S)", finite=True
        )
        check_same_shape(fn, ("adapted_norm", "raw_norm"), (adapted_norm, raw_norm))
        check_nonnegative(fn, "adapted_norm", adapted_norm)
        check_nonnegative(fn, "raw_norm", raw_norm)
        mask = check_binary_like(fn, "mask", mask, adapted_norm, "adapted_norm")
    return magnitude_core(adapted_norm, raw_norm, mask, reduction)


def direction_regularizer(adapted: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
    r"""Cosine-distance regulariser ``1 − ⟨R̃, R⟩`` (eq. 13 third term, eq. 40).

    Keeps an adapted text residual close to the direction of the raw one. Leading dims are
    averaged (the official code takes the batch mean). Vectors are normalised with their norm
    clamped at ``1e-8``.

    Args:
        adapted: adapted residual(s) ``R̃_t`` or ``R̃_t^res``.
        raw: raw residual(s) ``R_t``; broadcastable against ``adapted`` (e.g. ``(D,)``).
            Treated as a constant (detached).

    Returns:
        Scalar in float32 (float64 if an input is float64), in ``[0, 2]``.

    Shape:
        - adapted: ``(..., D)``
        - raw: ``(..., D)`` broadcastable against ``adapted``
        - output: ``()``

    Example:
        >>> import torch
        >>> from resad_kit.ops.losses import direction_regularizer
        >>> raw = torch.tensor([1.0, 0.0])
        >>> adapted = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
        >>> direction_regularizer(adapted, raw)  # mean(1 − 1, 1 − 0)
        tensor(0.5000)
    """
    if checks_enabled():
        fn = "direction_regularizer"
        adapted, raw = check_vector_pair(
            fn, ("adapted", "raw"), adapted, raw, ("(..., D)", "(..., D) broadcastable")
        )
    return direction_core(adapted, raw)


def magnitude_regularizer(adapted_norm: torch.Tensor, raw_norm: torch.Tensor) -> torch.Tensor:
    r"""ℓ1 magnitude regulariser ``mean |‖R̃‖ − ‖R‖|`` (eq. 41, one term).

    The global term of eq. 41 is the mean over ``B`` images; each local term the mean over
    ``B·N`` patches at patch resolution (official code, ``F.l1_loss`` of the norms). The
    visual-phase regulariser of eq. 15 is the global term plus the sum of the local terms.

    Args:
        adapted_norm: ``‖R̃^res_{v,cls}‖`` or ``‖R̃^res_{v,l}‖`` (≥ 0).
        raw_norm: ``‖R_{v,cls}‖`` or ``‖R_{v,l}‖`` (≥ 0), same shape. Treated as a constant
            (detached).

    Returns:
        Scalar in float32 (float64 if an input is float64).

    Shape:
        - adapted_norm, raw_norm: ``(B,)`` (global) or ``(B, N)`` (local); any shape works
        - output: ``()``

    Example:
        >>> import torch
        >>> from resad_kit.ops.losses import magnitude_regularizer
        >>> magnitude_regularizer(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.5, 1.0]]))
        tensor(0.7500)
    """
    if checks_enabled():
        fn = "magnitude_regularizer"
        adapted_norm = check_tensor(
            fn, "adapted_norm", adapted_norm, min_ndim=1, shape_doc="(B, ...)", finite=True
        )
        raw_norm = check_tensor(
            fn, "raw_norm", raw_norm, min_ndim=1, shape_doc="(B, ...)", finite=True
        )
        check_same_shape(fn, ("adapted_norm", "raw_norm"), (adapted_norm, raw_norm))
        check_nonnegative(fn, "adapted_norm", adapted_norm)
        check_nonnegative(fn, "raw_norm", raw_norm)
    return magnitude_regularizer_core(adapted_norm, raw_norm)


def stop_gradient_projection(
    residual: torch.Tensor,
    direction: torch.Tensor,
    *,
    update: Phase,
) -> torch.Tensor:
    r"""Projection ``R̃_v · R̂̃_t`` with stop-gradient on the frozen side (eq. 15 inner terms).

    ``update="text"`` (phase updating ``A_t^res``) returns ``sg(residual) · d̂``;
    ``update="visual"`` (phase updating ``A_v^res``) returns ``residual · sg(d̂)``, with
    ``d̂ = direction / max(‖direction‖, 1e-8)``. The value is the plain projection in both
    cases; only the gradient path differs. The residual is *not* normalised (the projection
    keeps its magnitude, eq. 39).

    Args:
        residual: adapted visual residual(s) ``R̃^res_{v,cls}`` or ``R̃^res_{v,l}``.
        direction: adapted text residual ``R̃^res_t`` (normalised here), ``(D,)`` or
            broadcastable against ``residual``.
        update: which side receives gradients: ``"text"`` or ``"visual"``.

    Returns:
        Projections in float32 (float64 if an input is float64): ``P_cls`` ``(B,)`` or
        ``P_l`` ``(B, N)``, to pass to :func:`global_hinge_loss` / :func:`local_hinge_loss`
        (after upsampling ``P_l`` to the mask).

    Shape:
        - residual: ``(..., D)``, e.g. ``(B, D)`` or ``(B, N, D)``
        - direction: ``(D,)`` or broadcastable ``(..., D)``
        - output: ``(...)``, the broadcast leading shape

    Example:
        >>> import torch
        >>> from resad_kit.ops.losses import stop_gradient_projection
        >>> residual = torch.tensor([[3.0, 4.0]], requires_grad=True)
        >>> direction = torch.tensor([0.0, 2.0], requires_grad=True)
        >>> p = stop_gradient_projection(residual, direction, update="visual")
        >>> p
        tensor([4.], grad_fn=<...>)
        >>> p.sum().backward()
        >>> residual.grad, direction.grad
        (tensor([[0., 1.]]), None)
    """
    if checks_enabled():
        fn = "stop_gradient_projection"
        if update not in PHASES:
            raise ValueError(f"{fn}: `update` must be one of {PHASES}; got {update!r}")
        residual, direction = check_vector_pair(
            fn, ("residual", "direction"), residual, direction, ("(..., D)", "(D,) or (..., D)")
        )
    return projection_core(residual, direction, update)
