"""Patch alignment loss of AF-CLIP (Eq. 14): normal–anomalous pairs less similar than same-class.

AF-CLIP (Fang, Lv, Su, ACM MM 2025, Sec. 4.3 "Patch Alignment Loss") pushes the mean cosine
similarity of normal–anomalous (N-A) patch pairs below that of same-class (N-N and A-A)
pairs with a hinge. :func:`patch_alignment_loss` is the loss of one view (one tapped layer
and window size); AF-CLIP averages it over its 12 views (4 layers × 3 windows), which is the
method's job. Re-exported by :mod:`resad_kit.ops.losses`.

The pairs and means follow the official code (Faustinaqq/AF-CLIP, ``patch_alignment_loss``
in ``main.py``): pairs are formed within each image only, both means are pooled over all the
pairs of the batch (a normal image contributes only N-N pairs), the self-pairs ``(i, i)``
(cosine 1) count in the same-class mean, and the loss is 0 when the batch holds no N-A
pair. The paper's normalisers ``1/(N_n·N_a)`` and ``1/(N_n² + N_a²)`` are these means for one
image.

Shape legend: ``B`` images, ``N`` patches per image, ``D`` channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import einsum

from resad_kit.ops._validation import (
    check_binary,
    check_tensor,
    checks_enabled,
    compute_dtype,
)

__all__ = ["patch_alignment_loss"]

_NORM_EPS = 1e-12


def patch_alignment_loss(tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    r"""Hinge on the gap between N-A and same-class patch cosine similarities (AF-CLIP Eq. 14).

    ``L_pal = max(0, mean_{N-A} cos(z_i, z_j) − mean_{N-N ∪ A-A} cos(z_i, z_j))`` over the
    ordered pairs ``(i, j)`` of patches of the same image, each mean pooled over the whole
    batch, self-pairs included in the same-class mean. Computed without the ``B×N×N``
    similarity matrix: with ``n_b = Σ_{normal i} ẑ_i`` and ``a_b = Σ_{anomalous i} ẑ_i``
    (``ẑ = z / max(‖z‖, 1e-12)``) of image ``b``,

    ``mean_{N-A} = Σ_b ⟨n_b, a_b⟩ / Σ_b N_n,b·N_a,b`` and
    ``mean_{same} = Σ_b (‖n_b‖² + ‖a_b‖²) / Σ_b (N_n,b² + N_a,b²)``.

    When the batch has no N-A pair (no image holds both classes) the loss is exactly 0, still
    attached to the graph (its gradient is 0). Computed in float32 (float64 for float64
    tokens); differentiable with respect to ``tokens``. AF-CLIP applies it to the adapted
    and projected patch tokens of each of its 12 views and averages the 12 values.

    Args:
        tokens: patch tokens ``z`` of one view (normalised here); no ``[CLS]`` token.
        labels: patch labels (0 normal, 1 anomalous; bool or numeric): the ground-truth mask
            downsampled to the patch grid and binarised, row-major like ``tokens``.

    Returns:
        Scalar loss in ``[0, 1]`` (the same-class mean is ``≥ 0``), in float32 (float64 for
        float64 tokens).

    Raises:
        TypeError: ``tokens`` or ``labels`` is not a tensor.
        ValueError: ``tokens`` not 3-D, non-float, empty or non-finite; ``labels`` not of
            shape ``(B, N)`` or not binary. Only with checks on (:func:`resad_kit.checks`).

    Shape:
        ``tokens (B, N, D)``, ``labels (B, N)`` → ``()``.

    Example:
        >>> import torch
        >>> from resad_kit.ops.losses import patch_alignment_loss
        >>> tokens = torch.tensor([[[1.0, 0.0], [0.6, 0.8], [0.6, -0.8]]])  # (B=1, N=3, D=2)
        >>> patch_alignment_loss(tokens, torch.tensor([[0, 1, 1]]))  # N-A 0.6, same 2.44 / 5
        tensor(0.1120)
        >>> patch_alignment_loss(tokens, torch.tensor([[0, 0, 1]]))  # N-A 0.16, same 4.2 / 5
        tensor(0.)
        >>> patch_alignment_loss(tokens, torch.zeros(1, 3))  # no N-A pair
        tensor(0.)
    """
    if checks_enabled():
        _check_alignment(tokens, labels)
    return _patch_alignment_core(tokens, labels)


def _check_alignment(tokens: object, labels: object) -> None:
    fn = "patch_alignment_loss"
    z = check_tensor(fn, "tokens", tokens, ndim=3, shape_doc="(B, N, D)", finite=True)
    y = check_tensor(fn, "labels", labels, shape_doc="(B, N)", floating=False, nonempty=False)
    if y.shape != z.shape[:-1]:
        raise ValueError(
            f"{fn}: `labels` must have shape (B, N) = {tuple(z.shape[:-1])} like `tokens` "
            f"{tuple(z.shape)}; got {tuple(y.shape)}"
        )
    check_binary(fn, "labels", y)


def _patch_alignment_core(tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """:func:`patch_alignment_loss` without checks."""
    dtype = compute_dtype(tokens)
    z = F.normalize(tokens.to(dtype), dim=-1, eps=_NORM_EPS)
    a = labels.to(dtype)
    n = 1.0 - a
    sum_n = einsum(n, z, "b i, b i d -> b d")  # Σ of the normal unit tokens, per image
    sum_a = einsum(a, z, "b i, b i d -> b d")
    count_n, count_a = n.sum(dim=-1), a.sum(dim=-1)
    cross_pairs = (count_n * count_a).sum()
    same_pairs = (count_n**2 + count_a**2).sum()
    cross = (sum_n * sum_a).sum() / cross_pairs.clamp_min(1.0)
    same = (sum_n.square().sum() + sum_a.square().sum()) / same_pairs.clamp_min(1.0)
    gap = (cross - same).clamp_min(0.0)
    return torch.where(cross_pairs > 0, gap, torch.zeros_like(gap))
