"""Res²CLIP's branch losses: the paper's sums of the generic losses (Sec. 3.3, eqs. 13–15).

``L_total = L_text + L_vis + L_res`` (eq. 16, all weights 1). Each sum validates its inputs
once, with the checks of :mod:`resad_kit.ops.losses`, and then adds the unchecked cores of
those generic losses (:func:`~resad_kit.ops.losses.global_hinge_loss`,
:func:`~resad_kit.ops.losses.local_hinge_loss`, :func:`~resad_kit.ops.losses.magnitude_loss`,
:func:`~resad_kit.ops.losses.direction_regularizer`): no loss maths is re-implemented here.
Conventions (binary labels and masks, maps already at the mask's shape, detached targets,
float32 compute dtype, the ``"batch"``/``"per_sample"`` reductions) are those of
:mod:`resad_kit.ops.losses`. With ``resad_kit.checks(False)`` the validation is skipped.

Shape legend: ``B`` batch, ``S`` the spatial dims of one map, ``D`` channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from resad_kit.ops._loss_checks import (
    check_batch_size,
    check_binary_like,
    check_finite_float,
    check_layer_masks,
    check_nonnegative,
    check_reduction,
    check_same_length,
    check_scalar,
    check_sequence,
    check_target,
    check_vector_pair,
)
from resad_kit.ops._loss_core import (
    direction_core,
    global_hinge_core,
    local_hinge_core,
    magnitude_core,
    scaled_target,
)
from resad_kit.ops._validation import check_same_shape, check_tensor, checks_enabled
from resad_kit.ops.losses import Reduction

__all__ = ["residual_branch_loss", "text_branch_loss", "visual_branch_loss"]


def text_branch_loss(
    global_score: torch.Tensor,
    local_scores: Sequence[torch.Tensor],
    adapted_text: torch.Tensor,
    raw_text: torch.Tensor,
    labels: torch.Tensor,
    masks: torch.Tensor | Sequence[torch.Tensor],
    *,
    margin: float = 1.0,
    reduction: Reduction = "batch",
) -> torch.Tensor:
    r"""Text-branch loss ``L_text`` (eq. 13 with eqs. 35–36).

    ``L_text^glob + Σ_l L_text^loc,l + (1 − ⟨R̃_t, R_t⟩)``: the global hinge of the image
    cosines with target ``margin`` (eq. 35), one local hinge per layer map with target
    ``margin`` (eq. 36), and :func:`direction_regularizer`. The official code uses layer 24
    only (one map); ``margin`` is its ``tau`` (1.0, as in the paper).

    Args:
        global_score: image cosines ``⟨f_v^q, R̃_t⟩``.
        local_scores: one cosine map ``⟨F_{v,l}^q, R̃_t⟩`` per layer, each at its mask's shape.
        adapted_text: ``R̃_t = A_t(R_t)``.
        raw_text: ``R_t`` (detached), broadcastable against ``adapted_text``.
        labels: image labels (0/1 or bool).
        masks: one mask shared by all layers, or one mask per layer.
        margin: anomalous target of both hinges.
        reduction: ``"batch"`` or ``"per_sample"``; see the module docstring.

    Returns:
        Scalar loss in float32 (float64 if an input is float64).

    Shape:
        - global_score, labels: ``(B,)``
        - local_scores[l], masks or masks[l]: ``(B, *S)``
        - adapted_text, raw_text: ``(D,)`` or ``(B, D)``
        - output: ``()``

    Example:
        >>> import torch
        >>> from resad_kit.methods.res2clip_losses import text_branch_loss
        >>> labels = torch.tensor([0, 1])
        >>> mask = torch.tensor([[[0, 0], [0, 0]], [[0, 1], [1, 1]]])
        >>> global_score = torch.tensor([-0.1, 0.7])  # hinge: 0 + 0.3
        >>> local = torch.tensor([[[0.2, 0.0], [0.0, 0.0]], [[0.0, 1.0], [1.0, 1.0]]])
        >>> r_t = torch.tensor([1.0, 0.0])
        >>> text_branch_loss(global_score, [local], r_t, r_t, labels, mask)  # 0.3 + 0.2 / 5
        tensor(0.3400)
    """
    if checks_enabled():
        reduction = check_reduction("text_branch_loss", reduction)
        margin = check_finite_float("text_branch_loss", "margin", margin)
        _check_text(global_score, local_scores, adapted_text, raw_text, labels, masks)
    layer_masks = _per_layer(masks, len(local_scores))
    return _text_branch_core(
        global_score,
        local_scores,
        adapted_text,
        raw_text,
        labels,
        layer_masks,
        float(margin),
        reduction,
    )


def visual_branch_loss(
    adapted_norms: Sequence[torch.Tensor],
    raw_norms: Sequence[torch.Tensor],
    masks: torch.Tensor | Sequence[torch.Tensor],
    *,
    reduction: Reduction = "batch",
) -> torch.Tensor:
    r"""Visual-branch loss ``L_vis`` (eq. 14): :func:`magnitude_loss` summed over layers.

    Args:
        adapted_norms: one ``‖R̃_{v,l}‖`` map per layer (≥ 0), each at its mask's shape.
        raw_norms: one ``‖R_{v,l}‖`` map per layer (≥ 0, detached), same shapes.
        masks: one mask shared by all layers, or one mask per layer.
        reduction: ``"batch"`` or ``"per_sample"``; see the module docstring.

    Returns:
        Scalar loss in float32 (float64 if an input is float64).

    Shape:
        - adapted_norms[l], raw_norms[l], masks or masks[l]: ``(B, *S)``
        - output: ``()``

    Example:
        >>> import torch
        >>> from resad_kit.methods.res2clip_losses import visual_branch_loss
        >>> mask = torch.tensor([[0, 1]])
        >>> adapted = [torch.tensor([[0.1, 2.0]]), torch.tensor([[0.0, 1.0]])]
        >>> raw = [torch.tensor([[0.5, 1.5]]), torch.tensor([[0.5, 1.0]])]
        >>> visual_branch_loss(adapted, raw, mask)  # (0.1 + 0.5) + (0 + 0)
        tensor(0.6000)
    """
    if checks_enabled():
        reduction = check_reduction("visual_branch_loss", reduction)
        _check_visual(adapted_norms, raw_norms, masks)
    layer_masks = _per_layer(masks, len(adapted_norms))
    return _visual_branch_core(adapted_norms, raw_norms, layer_masks, reduction)


def residual_branch_loss(
    global_projection: torch.Tensor,
    global_raw_norm: torch.Tensor,
    local_projections: Sequence[torch.Tensor],
    local_raw_norms: Sequence[torch.Tensor],
    labels: torch.Tensor,
    masks: torch.Tensor | Sequence[torch.Tensor],
    *,
    regularizer: torch.Tensor,
    margin: float = 1.0,
    reduction: Reduction = "batch",
) -> torch.Tensor:
    r"""Residual-branch loss ``L_res`` of one alternating phase (eq. 15 with eqs. 37–38).

    ``ℓ^glob(P_cls) + Σ_l ℓ^loc(P_l) + L_reg``: the global hinge with target
    ``margin·‖R_{v,cls}‖`` (eq. 37), one local hinge per layer with the target map
    ``margin·‖R_{v,l}‖`` (eq. 38), plus the phase's regulariser. Build the projections with
    :func:`stop_gradient_projection` (``update`` picks the phase) and pass as ``regularizer``
    :func:`direction_regularizer` (eq. 40) when updating ``A_t^res``, or the sum of
    :func:`magnitude_regularizer` terms (eq. 41) when updating ``A_v^res``.

    Args:
        global_projection: ``P_cls`` per image.
        global_raw_norm: ``‖R_{v,cls}‖`` per image (detached).
        local_projections: one ``P_l`` map per layer, each at its mask's shape.
        local_raw_norms: one ``‖R_{v,l}‖`` map per layer (detached), same shapes.
        labels: image labels (0/1 or bool).
        masks: one mask shared by all layers, or one mask per layer.
        regularizer: ``L_reg^t`` or ``L_reg^v``, a scalar tensor.
        margin: the code's ``tau``, multiplying both targets (1.0, as in the paper).
        reduction: ``"batch"`` or ``"per_sample"``; see the module docstring.

    Returns:
        Scalar loss in float32 (float64 if an input is float64).

    Shape:
        - global_projection, global_raw_norm, labels: ``(B,)``
        - local_projections[l], local_raw_norms[l], masks or masks[l]: ``(B, *S)``
        - regularizer: ``()``
        - output: ``()``

    Example:
        >>> import torch
        >>> from resad_kit.methods.res2clip_losses import residual_branch_loss
        >>> labels = torch.tensor([0, 1])
        >>> p_cls = torch.tensor([0.2, 0.5])  # hinge: 0.2 + (0.9 - 0.5)
        >>> r_cls = torch.tensor([0.3, 0.9])
        >>> mask = torch.tensor([[0, 0], [0, 1]])
        >>> p_l = torch.tensor([[0.1, -0.2], [0.0, 0.6]])  # hinge: 0.1 / 3 + 0.4 / 1
        >>> r_l = torch.tensor([[0.2, 0.2], [0.1, 1.0]])
        >>> reg = torch.tensor(0.05)  # total: 0.6 + 0.4333 + 0.05
        >>> residual_branch_loss(p_cls, r_cls, [p_l], [r_l], labels, mask, regularizer=reg)
        tensor(1.0833)
    """
    if checks_enabled():
        reduction = check_reduction("residual_branch_loss", reduction)
        margin = check_finite_float("residual_branch_loss", "margin", margin)
        _check_residual(
            global_projection,
            global_raw_norm,
            local_projections,
            local_raw_norms,
            labels,
            masks,
            regularizer,
        )
    layer_masks = _per_layer(masks, len(local_projections))
    return _residual_branch_core(
        global_projection,
        global_raw_norm,
        local_projections,
        local_raw_norms,
        labels,
        layer_masks,
        regularizer,
        float(margin),
        reduction,
    )


# --------------------------------------------------------------------------------------------
# Unchecked cores: sums of the generic losses' cores (inputs already validated)
# --------------------------------------------------------------------------------------------


def _per_layer(masks: torch.Tensor | Sequence[torch.Tensor], n_layers: int) -> list[torch.Tensor]:
    """One mask per layer: a single tensor is shared by all layers."""
    return [masks] * n_layers if isinstance(masks, torch.Tensor) else list(masks)


def _text_branch_core(
    global_score: torch.Tensor,
    local_scores: Sequence[torch.Tensor],
    adapted_text: torch.Tensor,
    raw_text: torch.Tensor,
    labels: torch.Tensor,
    masks: Sequence[torch.Tensor],
    margin: float,
    reduction: str,
) -> torch.Tensor:
    """Eq. 13: global hinge + Σ_l local hinges + direction regulariser."""
    loss = global_hinge_core(global_score, labels, margin, reduction)
    for score_map, mask in zip(local_scores, masks, strict=True):
        loss = loss + local_hinge_core(score_map, mask, margin, reduction)
    return loss + direction_core(adapted_text, raw_text)


def _visual_branch_core(
    adapted_norms: Sequence[torch.Tensor],
    raw_norms: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
    reduction: str,
) -> torch.Tensor:
    """Eq. 14: Σ_l magnitude losses."""
    terms = zip(adapted_norms, raw_norms, masks, strict=True)
    loss = magnitude_core(*next(terms), reduction)
    for adapted, raw, mask in terms:
        loss = loss + magnitude_core(adapted, raw, mask, reduction)
    return loss


def _residual_branch_core(
    global_projection: torch.Tensor,
    global_raw_norm: torch.Tensor | float,
    local_projections: Sequence[torch.Tensor],
    local_raw_norms: Sequence[torch.Tensor | float],
    labels: torch.Tensor,
    masks: Sequence[torch.Tensor],
    regularizer: torch.Tensor,
    margin: float,
    reduction: str,
) -> torch.Tensor:
    """Eq. 15: global hinge + Σ_l local hinges (targets ``margin·‖R‖``) + regulariser."""
    target = scaled_target(global_raw_norm, margin)
    loss = global_hinge_core(global_projection, labels, target, reduction)
    for p, r, mask in zip(local_projections, local_raw_norms, masks, strict=True):
        loss = loss + local_hinge_core(p, mask, scaled_target(r, margin), reduction)
    return loss + regularizer.to(loss.dtype)


# --------------------------------------------------------------------------------------------
# Validation (skipped with ``resad_kit.checks(False)``)
# --------------------------------------------------------------------------------------------


def _check_text(
    global_score: object,
    local_scores: object,
    adapted_text: object,
    raw_text: object,
    labels: object,
    masks: object,
) -> None:
    fn = "text_branch_loss"
    global_score = check_tensor(
        fn, "global_score", global_score, ndim=1, shape_doc="(B,)", finite=True
    )
    check_binary_like(fn, "labels", labels, global_score, "global_score")
    maps = check_sequence(fn, "local_scores", local_scores)
    layer_masks = check_layer_masks(fn, masks, len(maps), "local_scores")
    check_vector_pair(
        fn, ("adapted_text", "raw_text"), adapted_text, raw_text, ("(..., D)", "(..., D)")
    )
    for i, (score_map, (mask_name, mask)) in enumerate(zip(maps, layer_masks, strict=True)):
        name = f"local_scores[{i}]"
        score_map = check_tensor(fn, name, score_map, min_ndim=2, shape_doc="(B, *S)", finite=True)
        check_batch_size(fn, name, score_map, global_score.shape[0], "global_score")
        check_binary_like(fn, mask_name, mask, score_map, name)


def _check_visual(adapted_norms: object, raw_norms: object, masks: object) -> None:
    fn = "visual_branch_loss"
    adapted = check_sequence(fn, "adapted_norms", adapted_norms)
    raw = check_sequence(fn, "raw_norms", raw_norms)
    check_same_length(fn, "raw_norms", raw, "adapted_norms", len(adapted))
    layer_masks = check_layer_masks(fn, masks, len(adapted), "adapted_norms")
    batch = None
    for i, (a, r, (mask_name, mask)) in enumerate(zip(adapted, raw, layer_masks, strict=True)):
        a_name, r_name = f"adapted_norms[{i}]", f"raw_norms[{i}]"
        a = check_tensor(fn, a_name, a, min_ndim=2, shape_doc="(B, *S)", finite=True)
        r = check_tensor(fn, r_name, r, min_ndim=2, shape_doc="(B, *S)", finite=True)
        check_same_shape(fn, (a_name, r_name), (a, r))
        check_nonnegative(fn, a_name, a)
        check_nonnegative(fn, r_name, r)
        batch = a.shape[0] if batch is None else batch
        check_batch_size(fn, a_name, a, batch, "adapted_norms[0]")
        check_binary_like(fn, mask_name, mask, a, a_name)


def _check_residual(
    global_projection: object,
    global_raw_norm: object,
    local_projections: object,
    local_raw_norms: object,
    labels: object,
    masks: object,
    regularizer: object,
) -> None:
    fn = "residual_branch_loss"
    check_scalar(fn, "regularizer", regularizer)
    global_projection = check_tensor(
        fn, "global_projection", global_projection, ndim=1, shape_doc="(B,)", finite=True
    )
    check_target(fn, "global_raw_norm", global_raw_norm, global_projection, "global_projection")
    check_binary_like(fn, "labels", labels, global_projection, "global_projection")
    projections = check_sequence(fn, "local_projections", local_projections)
    raw_norms = check_sequence(fn, "local_raw_norms", local_raw_norms)
    check_same_length(fn, "local_raw_norms", raw_norms, "local_projections", len(projections))
    layer_masks = check_layer_masks(fn, masks, len(projections), "local_projections")
    for i, (p, r, (mask_name, mask)) in enumerate(
        zip(projections, raw_norms, layer_masks, strict=True)
    ):
        p_name, r_name = f"local_projections[{i}]", f"local_raw_norms[{i}]"
        p = check_tensor(fn, p_name, p, min_ndim=2, shape_doc="(B, *S)", finite=True)
        check_batch_size(fn, p_name, p, global_projection.shape[0], "global_projection")
        check_target(fn, r_name, r, p, p_name)
        check_binary_like(fn, mask_name, mask, p, p_name)
