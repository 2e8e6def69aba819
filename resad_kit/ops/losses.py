"""Training losses of Res²CLIP† (paper Sec. 3.3, eqs. 13–16; Appendix D, eqs. 35–41).

Every loss is a pure function of tensors that returns a scalar tensor. The method composes
them: the text-branch loss (eq. 13), the visual-branch loss (eq. 14) and the residual-branch
loss of one alternating phase (eq. 15); their sum is ``L_total`` (eq. 16, all weights 1).
The probability losses of the other methods (focal, L1, Dice) are defined in
:mod:`resad_kit.ops.segmentation_losses` and re-exported here.

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
* **Reduction** (spec §10.1 #11), ``reduction="batch"`` (default, official code) or
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

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from resad_kit.ops._validation import (
    check_binary,
    check_broadcast_channels,
    check_same_shape,
    check_tensor,
    compute_dtype,
    is_real,
)
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
    "residual_branch_loss",
    "stop_gradient_projection",
    "text_branch_loss",
    "visual_branch_loss",
]

Reduction = Literal["batch", "per_sample"]
"""How pixel and image terms are averaged; see the module docstring."""

_REDUCTIONS: tuple[str, ...] = ("batch", "per_sample")
_UPDATES: tuple[str, ...] = ("text", "visual")

_COUNT_EPS = 1e-6
"""Lower clamp of the normal/anomalous counts (official code): an empty class contributes 0."""

_NORM_EPS = 1e-8
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
    normal_mean = normal_part / normal.clamp_min(_COUNT_EPS)
    anomalous_mean = anomalous_part / anomalous.clamp_min(_COUNT_EPS)
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
# Validation (private; errors name the caller's function and argument)
# --------------------------------------------------------------------------------------------


def _check_reduction(fn: str, reduction: object) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{fn}: `reduction` must be one of {_REDUCTIONS}; got {reduction!r}")
    return str(reduction)


def _check_finite_float(fn: str, name: str, value: object) -> float:
    if not is_real(value):
        raise TypeError(f"{fn}: `{name}` must be a float; got {type(value).__name__}")
    if not math.isfinite(value):  # type: ignore[arg-type]
        raise ValueError(f"{fn}: `{name}` must be finite; got {value}")
    return float(value)


def _check_nonnegative(fn: str, name: str, x: torch.Tensor) -> None:
    if bool((x < 0).any()):
        raise ValueError(
            f"{fn}: `{name}` holds vector norms and must be ≥ 0; got minimum {float(x.min())}"
        )


def _check_binary_like(
    fn: str, name: str, x: object, like: torch.Tensor, like_name: str
) -> torch.Tensor:
    """A binary tensor (labels or mask) with exactly the shape of ``like``."""
    x = check_tensor(fn, name, x, floating=False)
    check_same_shape(fn, (like_name, name), (like, x))
    check_binary(fn, name, x)
    return x


def _check_target(
    fn: str, name: str, target: object, like: torch.Tensor, like_name: str
) -> torch.Tensor | float:
    """A finite float, or a finite floating tensor with the shape of ``like``."""
    if isinstance(target, torch.Tensor):
        check_tensor(fn, name, target, finite=True)
        check_same_shape(fn, (like_name, name), (like, target))
        return target
    return _check_finite_float(fn, name, target)


def _check_sequence(fn: str, name: str, seq: object) -> list[torch.Tensor]:
    """A non-empty list or tuple (one entry per layer); entries are checked by the caller."""
    if isinstance(seq, torch.Tensor) or not isinstance(seq, Sequence):
        raise TypeError(
            f"{fn}: `{name}` must be a list or tuple of tensors (one per layer); "
            f"got {type(seq).__name__}"
        )
    if len(seq) == 0:
        raise ValueError(f"{fn}: `{name}` must not be empty; got an empty sequence")
    return list(seq)


def _check_same_length(
    fn: str, name: str, seq: Sequence[object], ref_name: str, ref_len: int
) -> None:
    if len(seq) != ref_len:
        raise ValueError(
            f"{fn}: `{name}` must have one entry per layer, as `{ref_name}` ({ref_len}); "
            f"got {len(seq)}"
        )


def _layer_masks(
    fn: str, masks: object, n_layers: int, ref_name: str
) -> list[tuple[str, torch.Tensor]]:
    """One (name, mask) pair per layer: a single tensor is shared by all layers."""
    if isinstance(masks, torch.Tensor):
        return [("masks", masks)] * n_layers
    seq = _check_sequence(fn, "masks", masks)
    _check_same_length(fn, "masks", seq, ref_name, n_layers)
    return [(f"masks[{i}]", m) for i, m in enumerate(seq)]


def _check_batch_size(fn: str, name: str, x: torch.Tensor, batch: int, ref_name: str) -> None:
    if x.shape[0] != batch:
        raise ValueError(
            f"{fn}: `{name}` must have batch size {batch} (as `{ref_name}`); "
            f"got shape {tuple(x.shape)}"
        )


def _check_vector_pair(
    fn: str, names: tuple[str, str], a: object, b: object, docs: tuple[str, str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two finite ``(..., D)`` tensors with the same ``D`` whose leading dims broadcast."""
    a = check_tensor(fn, names[0], a, min_ndim=1, shape_doc=docs[0], finite=True)
    b = check_tensor(fn, names[1], b, min_ndim=1, shape_doc=docs[1], finite=True)
    check_broadcast_channels(fn, names, a, b)
    return a, b


def _check_scalar(fn: str, name: str, x: object) -> torch.Tensor:
    return check_tensor(fn, name, x, ndim=0, shape_doc="(a scalar tensor)", finite=True)


# --------------------------------------------------------------------------------------------
# Unchecked cores (inputs already validated)
# --------------------------------------------------------------------------------------------


def _hinge_terms(
    scores: torch.Tensor, target: torch.Tensor | float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normal term ``max(0, s)`` and anomalous term ``max(0, t − s)`` (``t`` detached)."""
    s = scores.to(dtype)
    t = target.detach().to(dtype) if isinstance(target, torch.Tensor) else target
    return torch.relu(s), torch.relu(t - s)


def _global_hinge(
    scores: torch.Tensor, labels: torch.Tensor, target: torch.Tensor | float, reduction: str
) -> torch.Tensor:
    dtype = _dtype_of(scores, target)
    normal, anomalous = _hinge_terms(scores, target, dtype)
    return _balanced_image_mean(normal, anomalous, labels.to(dtype), reduction)


def _local_hinge(
    score_map: torch.Tensor, mask: torch.Tensor, target: torch.Tensor | float, reduction: str
) -> torch.Tensor:
    dtype = _dtype_of(score_map, target)
    normal, anomalous = _hinge_terms(score_map, target, dtype)
    return _balanced_pixel_mean(normal, anomalous, mask.to(dtype), reduction)


def _magnitude(
    adapted_norm: torch.Tensor, raw_norm: torch.Tensor, mask: torch.Tensor, reduction: str
) -> torch.Tensor:
    dtype = compute_dtype(adapted_norm, raw_norm)
    adapted = adapted_norm.to(dtype)
    raw = raw_norm.detach().to(dtype)
    return _balanced_pixel_mean(adapted, (adapted - raw).abs(), mask.to(dtype), reduction)


def _direction(adapted: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
    dtype = compute_dtype(adapted, raw)
    a = F.normalize(adapted.to(dtype), dim=-1, eps=_NORM_EPS)
    r = F.normalize(raw.detach().to(dtype), dim=-1, eps=_NORM_EPS)
    return (1.0 - (a * r).sum(-1)).mean()


def _scaled(target: torch.Tensor | float, margin: float) -> torch.Tensor | float:
    """``margin · target`` formed in the compute dtype (not in half precision), detached."""
    if isinstance(target, torch.Tensor):
        return target.detach().to(compute_dtype(target)) * margin
    return target * margin


def _dtype_of(x: torch.Tensor, target: torch.Tensor | float) -> torch.dtype:
    return compute_dtype(x, target) if isinstance(target, torch.Tensor) else compute_dtype(x)


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
    fn = "global_hinge_loss"
    reduction = _check_reduction(fn, reduction)
    scores = check_tensor(fn, "scores", scores, ndim=1, shape_doc="(B,)", finite=True)
    labels = _check_binary_like(fn, "labels", labels, scores, "scores")
    target = _check_target(fn, "target", target, scores, "scores")
    return _global_hinge(scores, labels, target, reduction)


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
    fn = "local_hinge_loss"
    reduction = _check_reduction(fn, reduction)
    score_map = check_tensor(
        fn, "score_map", score_map, min_ndim=2, shape_doc="(B, *S)", finite=True
    )
    mask = _check_binary_like(fn, "mask", mask, score_map, "score_map")
    target = _check_target(fn, "target", target, score_map, "score_map")
    return _local_hinge(score_map, mask, target, reduction)


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
    fn = "magnitude_loss"
    reduction = _check_reduction(fn, reduction)
    adapted_norm = check_tensor(
        fn, "adapted_norm", adapted_norm, min_ndim=2, shape_doc="(B, *S)", finite=True
    )
    raw_norm = check_tensor(fn, "raw_norm", raw_norm, min_ndim=2, shape_doc="(B, *S)", finite=True)
    check_same_shape(fn, ("adapted_norm", "raw_norm"), (adapted_norm, raw_norm))
    _check_nonnegative(fn, "adapted_norm", adapted_norm)
    _check_nonnegative(fn, "raw_norm", raw_norm)
    mask = _check_binary_like(fn, "mask", mask, adapted_norm, "adapted_norm")
    return _magnitude(adapted_norm, raw_norm, mask, reduction)


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
    fn = "direction_regularizer"
    adapted, raw = _check_vector_pair(
        fn, ("adapted", "raw"), adapted, raw, ("(..., D)", "(..., D) broadcastable")
    )
    return _direction(adapted, raw)


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
    fn = "magnitude_regularizer"
    adapted_norm = check_tensor(
        fn, "adapted_norm", adapted_norm, min_ndim=1, shape_doc="(B, ...)", finite=True
    )
    raw_norm = check_tensor(fn, "raw_norm", raw_norm, min_ndim=1, shape_doc="(B, ...)", finite=True)
    check_same_shape(fn, ("adapted_norm", "raw_norm"), (adapted_norm, raw_norm))
    _check_nonnegative(fn, "adapted_norm", adapted_norm)
    _check_nonnegative(fn, "raw_norm", raw_norm)
    dtype = compute_dtype(adapted_norm, raw_norm)
    return (adapted_norm.to(dtype) - raw_norm.detach().to(dtype)).abs().mean()


def stop_gradient_projection(
    residual: torch.Tensor,
    direction: torch.Tensor,
    *,
    update: Literal["text", "visual"],
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
    fn = "stop_gradient_projection"
    if update not in _UPDATES:
        raise ValueError(f"{fn}: `update` must be one of {_UPDATES}; got {update!r}")
    residual, direction = _check_vector_pair(
        fn, ("residual", "direction"), residual, direction, ("(..., D)", "(D,) or (..., D)")
    )
    dtype = compute_dtype(residual, direction)
    r = residual.to(dtype)
    d = F.normalize(direction.to(dtype), dim=-1, eps=_NORM_EPS)
    if update == "text":
        r = r.detach()
    else:
        d = d.detach()
    return (r * d).sum(-1)


# --------------------------------------------------------------------------------------------
# Branch losses (the paper's sums, all weights 1)
# --------------------------------------------------------------------------------------------


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
        >>> from resad_kit.ops.losses import text_branch_loss
        >>> labels = torch.tensor([0, 1])
        >>> mask = torch.tensor([[[0, 0], [0, 0]], [[0, 1], [1, 1]]])
        >>> global_score = torch.tensor([-0.1, 0.7])  # hinge: 0 + 0.3
        >>> local = torch.tensor([[[0.2, 0.0], [0.0, 0.0]], [[0.0, 1.0], [1.0, 1.0]]])
        >>> r_t = torch.tensor([1.0, 0.0])
        >>> text_branch_loss(global_score, [local], r_t, r_t, labels, mask)  # 0.3 + 0.2 / 5
        tensor(0.3400)
    """
    fn = "text_branch_loss"
    reduction = _check_reduction(fn, reduction)
    margin = _check_finite_float(fn, "margin", margin)
    global_score = check_tensor(
        fn, "global_score", global_score, ndim=1, shape_doc="(B,)", finite=True
    )
    labels = _check_binary_like(fn, "labels", labels, global_score, "global_score")
    batch = global_score.shape[0]
    maps = _check_sequence(fn, "local_scores", local_scores)
    layer_masks = _layer_masks(fn, masks, len(maps), "local_scores")
    adapted_text, raw_text = _check_vector_pair(
        fn, ("adapted_text", "raw_text"), adapted_text, raw_text, ("(..., D)", "(..., D)")
    )
    checked = []
    for i, (score_map, (mask_name, mask)) in enumerate(zip(maps, layer_masks, strict=True)):
        name = f"local_scores[{i}]"
        score_map = check_tensor(fn, name, score_map, min_ndim=2, shape_doc="(B, *S)", finite=True)
        _check_batch_size(fn, name, score_map, batch, "global_score")
        checked.append((score_map, _check_binary_like(fn, mask_name, mask, score_map, name)))
    loss = _global_hinge(global_score, labels, margin, reduction)
    for score_map, mask in checked:
        loss = loss + _local_hinge(score_map, mask, margin, reduction)
    return loss + _direction(adapted_text, raw_text)


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
        >>> from resad_kit.ops.losses import visual_branch_loss
        >>> mask = torch.tensor([[0, 1]])
        >>> adapted = [torch.tensor([[0.1, 2.0]]), torch.tensor([[0.0, 1.0]])]
        >>> raw = [torch.tensor([[0.5, 1.5]]), torch.tensor([[0.5, 1.0]])]
        >>> visual_branch_loss(adapted, raw, mask)  # (0.1 + 0.5) + (0 + 0)
        tensor(0.6000)
    """
    fn = "visual_branch_loss"
    reduction = _check_reduction(fn, reduction)
    adapted = _check_sequence(fn, "adapted_norms", adapted_norms)
    raw = _check_sequence(fn, "raw_norms", raw_norms)
    _check_same_length(fn, "raw_norms", raw, "adapted_norms", len(adapted))
    layer_masks = _layer_masks(fn, masks, len(adapted), "adapted_norms")
    batch = None
    checked = []
    for i, (a, r, (mask_name, mask)) in enumerate(zip(adapted, raw, layer_masks, strict=True)):
        a_name, r_name = f"adapted_norms[{i}]", f"raw_norms[{i}]"
        a = check_tensor(fn, a_name, a, min_ndim=2, shape_doc="(B, *S)", finite=True)
        r = check_tensor(fn, r_name, r, min_ndim=2, shape_doc="(B, *S)", finite=True)
        check_same_shape(fn, (a_name, r_name), (a, r))
        _check_nonnegative(fn, a_name, a)
        _check_nonnegative(fn, r_name, r)
        batch = a.shape[0] if batch is None else batch
        _check_batch_size(fn, a_name, a, batch, "adapted_norms[0]")
        checked.append((a, r, _check_binary_like(fn, mask_name, mask, a, a_name)))
    loss = _magnitude(*checked[0], reduction)
    for a, r, mask in checked[1:]:
        loss = loss + _magnitude(a, r, mask, reduction)
    return loss


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
        >>> from resad_kit.ops.losses import residual_branch_loss
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
    fn = "residual_branch_loss"
    reduction = _check_reduction(fn, reduction)
    margin = _check_finite_float(fn, "margin", margin)
    regularizer = _check_scalar(fn, "regularizer", regularizer)
    global_projection = check_tensor(
        fn, "global_projection", global_projection, ndim=1, shape_doc="(B,)", finite=True
    )
    global_raw_norm = _check_target(
        fn, "global_raw_norm", global_raw_norm, global_projection, "global_projection"
    )
    labels = _check_binary_like(fn, "labels", labels, global_projection, "global_projection")
    batch = global_projection.shape[0]
    projections = _check_sequence(fn, "local_projections", local_projections)
    raw_norms = _check_sequence(fn, "local_raw_norms", local_raw_norms)
    _check_same_length(fn, "local_raw_norms", raw_norms, "local_projections", len(projections))
    layer_masks = _layer_masks(fn, masks, len(projections), "local_projections")
    checked = []
    for i, (p, r, (mask_name, mask)) in enumerate(
        zip(projections, raw_norms, layer_masks, strict=True)
    ):
        p_name, r_name = f"local_projections[{i}]", f"local_raw_norms[{i}]"
        p = check_tensor(fn, p_name, p, min_ndim=2, shape_doc="(B, *S)", finite=True)
        _check_batch_size(fn, p_name, p, batch, "global_projection")
        r = _check_target(fn, r_name, r, p, p_name)
        checked.append((p, r, _check_binary_like(fn, mask_name, mask, p, p_name)))
    loss = _global_hinge(global_projection, labels, _scaled(global_raw_norm, margin), reduction)
    for p, r, mask in checked:
        loss = loss + _local_hinge(p, mask, _scaled(r, margin), reduction)
    return loss + regularizer.to(loss.dtype)
