"""Segmentation losses on probability maps used by the other CLIP methods (AF-CLIP and kin).

Res²CLIP trains with hinge losses (:mod:`resad_kit.ops.losses`); methods that predict
anomaly *probabilities* (AF-CLIP Eq. 11 and 13, AnomalyCLIP, APRIL-GAN) train with a focal
loss, an L1 loss and/or a soft Dice loss. They are re-exported by
:mod:`resad_kit.ops.losses`.

Every function takes probabilities in ``[0, 1]`` (not logits) and targets in ``[0, 1]``
(binary masks or labels; soft values are allowed), computes in float32 (float64 for float64
inputs) and returns a scalar.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from resad_kit.ops._validation import (
    check_finite,
    check_number,
    check_same_shape,
    check_tensor,
    checks_enabled,
    compute_dtype,
    is_real,
    value_check,
)

__all__ = ["binary_focal_loss", "dice_loss", "l1_loss"]


def _probabilities(
    fn: str, probs: torch.Tensor, targets: torch.Tensor, min_ndim: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``probs``/``targets`` (same shape, finite, in [0, 1]); cast to float32+.

    With checks off only the cast is done."""
    if not checks_enabled():
        dtype = compute_dtype(probs, targets if targets.is_floating_point() else probs)
        return probs.to(dtype), targets.to(dtype)
    check_tensor(fn, "probs", probs, min_ndim=min_ndim)
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"{fn}: `targets` must be a torch.Tensor; got {type(targets).__name__}")
    check_same_shape(fn, ("probs", "targets"), (probs, targets))
    dtype = compute_dtype(probs, targets if targets.is_floating_point() else probs)
    p, t = probs.to(dtype), targets.to(dtype)
    for name, x in (("probs", p), ("targets", t)):
        check_finite(fn, name, x)
        if value_check(fn) and bool(((x < 0) | (x > 1)).any()):
            raise ValueError(f"{fn}: `{name}` must lie in [0, 1]; got values outside")
    return p, t


def binary_focal_loss(
    probs: torch.Tensor,
    targets: torch.Tensor,
    *,
    gamma: float = 4.0,
    alpha: float | None = None,
) -> torch.Tensor:
    """Focal loss on probabilities, mean over all entries (Lin et al. 2017; AF-CLIP Eq. 11, 13).

    ``FL = BCE(p, y)·(1 − p_t)^γ`` with ``p_t = p·y + (1 − p)(1 − y)``; with ``alpha`` each
    term is also weighted by ``α·y + (1 − α)(1 − y)``. AF-CLIP uses γ = 4 and no α (the
    defaults). ``BCE`` clamps ``log`` at −100 like :func:`torch.nn.functional.binary_cross_entropy`,
    so ``p ∈ {0, 1}`` gives a finite loss.

    Args:
        probs: predicted anomaly probabilities ``p``.
        targets: labels or masks ``y`` (0 normal, 1 anomalous), same shape.
        gamma: focusing exponent γ ≥ 0 (γ = 0 is plain binary cross-entropy).
        alpha: class weight α ∈ [0, 1] of the positives, or ``None`` for no weighting.

    Returns:
        Scalar, float32 (float64 for float64 inputs).

    Shape:
        ``probs``, ``targets``: any shape ``(...)`` → ``()``.

    Example:
        >>> import torch
        >>> from resad_kit.ops.losses import binary_focal_loss
        >>> p = torch.tensor([0.9, 0.2, 0.6])
        >>> y = torch.tensor([1.0, 0.0, 0.0])
        >>> binary_focal_loss(p, y)  # the confident mistakes dominate: (1 − p_t)^4
        tensor(0.0397)
        >>> binary_focal_loss(p, y, gamma=0.0)  # plain binary cross-entropy
        tensor(0.4149)
    """
    fn = "binary_focal_loss"
    if checks_enabled():
        check_number(
            fn, "gamma", gamma, minimum=0.0, what="a finite number ≥ 0", non_number=ValueError
        )
        if alpha is not None and not (is_real(alpha) and 0 <= alpha <= 1):  # type: ignore[operator]
            raise ValueError(f"{fn}: `alpha` must be None or in [0, 1]; got {alpha!r}")
    gamma = float(gamma)
    alpha = None if alpha is None else float(alpha)
    p, y = _probabilities(fn, probs, targets)
    bce = F.binary_cross_entropy(p, y, reduction="none")
    p_t = p * y + (1 - p) * (1 - y)
    loss = bce * (1 - p_t) ** gamma
    if alpha is not None:
        loss = loss * (alpha * y + (1 - alpha) * (1 - y))
    return loss.mean()


def l1_loss(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between probability maps and masks (AF-CLIP Eq. 13).

    Args:
        probs: predicted probability maps ``P̃``.
        targets: ground-truth masks ``M̃``, same shape.

    Returns:
        ``mean |P̃ − M̃|`` over all entries, float32 (float64 for float64 inputs).

    Shape:
        any shape ``(...)`` → ``()``.

    Example:
        >>> import torch
        >>> from resad_kit.ops.losses import l1_loss
        >>> l1_loss(torch.tensor([[0.9, 0.1], [0.3, 0.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
        tensor(0.2250)
    """
    p, y = _probabilities("l1_loss", probs, targets)
    return (p - y).abs().mean()


def dice_loss(probs: torch.Tensor, targets: torch.Tensor, *, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss, averaged over the batch (as in AnomalyCLIP / APRIL-GAN).

    Per sample ``b``: ``1 − (2·Σ p·y + s) / (Σ p + Σ y + s)`` over all its pixels; the loss is
    the mean over samples. The smoothing ``s`` keeps samples with an empty mask and an empty
    prediction at 0 loss.

    Args:
        probs: predicted probability maps.
        targets: ground-truth masks, same shape.
        smooth: additive smoothing ``s > 0``.

    Returns:
        Scalar in ``[0, 1)``, float32 (float64 for float64 inputs).

    Shape:
        ``(B, ...)`` → ``()``.

    Example:
        >>> import torch
        >>> from resad_kit.ops.losses import dice_loss
        >>> mask = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
        >>> dice_loss(mask, mask)  # perfect prediction
        tensor(0.)
        >>> dice_loss(1 - mask, mask)  # disjoint: 1 − 1/5
        tensor(0.8000)
    """
    fn = "dice_loss"
    if checks_enabled() and (not is_real(smooth) or not smooth > 0):  # type: ignore[operator]
        raise ValueError(f"{fn}: `smooth` must be a number > 0; got {smooth!r}")
    smooth = float(smooth)
    p, y = _probabilities(fn, probs, targets, min_ndim=2)
    p, y = p.flatten(1), y.flatten(1)
    dice = (2 * (p * y).sum(1) + smooth) / (p.sum(1) + y.sum(1) + smooth)
    return (1 - dice).mean()
