"""FineGrainedAD's training losses (paper Eqs. 2-3; code ``train_seg_finegrained_patch.py``).

For one prompt group with normal features ``P_n`` and abnormal features ``P_a`` (AHPs and
ALPs) and the normal training tokens ``z`` (unit rows) weighted per token by ``w`` (1 for
the image group, the region weights ``1 + γ·[matched region]`` for a component or the
background):

* ℓ_clip (Eq. 2a): cross-entropy with target "normal" of the logits
  ``τ·[⟨w z, p̄_n⟩, ⟨w z, p̂_a^{(1)}⟩, …]`` (``p̄_n`` the unit mean normal feature,
  ``p̂_a^{(i)}`` each unit abnormal feature);
* ℓ_trip (Eq. 2b): triplet margin loss, anchor ``w z``, positive ``p̄_n``, negative ``p̄_a``
  (unit mean abnormal feature), Euclidean distance, margin ε;
* ℓ_mean (Eq. 2c): ``‖mean(unit AHPs) − mean(unit ALPs)‖²`` (image and components);
* ℓ_reg (Eq. 3): ``‖mean(unit image ALPs) − mean_i unit(Σ_e component ALP_e^{(i)})
  − mean(unit normal background)‖₂`` (the code uses the *normal* background feature).

Shape legend: ``K`` images, ``N`` tokens, ``D`` channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from resad_kit.clip.mllp import GroupPromptFeatures
from resad_kit.ops import projection_score

__all__ = ["group_losses", "mean_alignment_loss", "regularizer_loss"]


def _unit_mean(x: Tensor) -> Tensor:
    return F.normalize(x.mean(0), dim=-1)


def group_losses(
    tokens: Tensor, weights: Tensor, group: GroupPromptFeatures, *, scale: float, margin: float
) -> tuple[Tensor, Tensor]:
    """``(ℓ_clip, ℓ_trip)`` of one group for unit tokens ``(K, N, D)`` and weights ``(K, N)``.

    Example:
        >>> import torch
        >>> from resad_kit.clip.mllp import GroupPromptFeatures
        >>> from resad_kit.methods.finegrainedad_losses import group_losses
        >>> g = GroupPromptFeatures(torch.eye(3)[:1], torch.eye(3)[1:2], torch.eye(3)[2:])
        >>> z = torch.eye(3)[None, :1]  # one token equal to the normal prompt
        >>> clip, trip = group_losses(z, torch.ones(1, 1), g, scale=100.0, margin=1.0)
        >>> round(clip.item(), 6), trip.item()
        (0.0, 0.0)
    """
    weighted = tokens * weights[..., None]
    normal = _unit_mean(group.normal)
    abnormal_all = torch.cat([group.handcrafted, group.learned])
    directions = torch.cat([normal[None], abnormal_all])  # (1 + A, D)
    logits = scale * projection_score(weighted[..., None, :], directions)  # (K, N, 1 + A)
    target = torch.zeros(logits.shape[:-1], dtype=torch.long, device=logits.device)
    clip = F.cross_entropy(logits.flatten(0, 1), target.flatten())
    anchor = weighted.flatten(0, 1)
    positive = normal.expand_as(anchor)
    negative = _unit_mean(abnormal_all).expand_as(anchor)
    trip = F.triplet_margin_loss(anchor, positive, negative, margin=margin)
    return clip, trip


def mean_alignment_loss(group: GroupPromptFeatures) -> Tensor:
    """ℓ_mean: squared distance of the means of the unit AHP and unit ALP features.

    Example:
        >>> import torch
        >>> from resad_kit.clip.mllp import GroupPromptFeatures
        >>> from resad_kit.methods.finegrainedad_losses import mean_alignment_loss
        >>> g = GroupPromptFeatures(
        ...     torch.ones(1, 2), torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 5.0]])
        ... )
        >>> mean_alignment_loss(g).item()
        2.0
    """
    hand = F.normalize(group.handcrafted, dim=-1).mean(0)
    learned = F.normalize(group.learned, dim=-1).mean(0)
    return F.mse_loss(hand, learned, reduction="sum")


def regularizer_loss(
    image: GroupPromptFeatures,
    components: list[GroupPromptFeatures],
    background: GroupPromptFeatures,
) -> Tensor:
    """ℓ_reg (Eq. 3) with the code's choices (sum of component ALPs, normal background).

    Example:
        >>> import torch
        >>> from resad_kit.clip.mllp import GroupPromptFeatures
        >>> from resad_kit.methods.finegrainedad_losses import regularizer_loss
        >>> e = torch.eye(3)
        >>> image = GroupPromptFeatures(e[:1], e[:1], e[:1] + e[1:2])
        >>> comp = GroupPromptFeatures(e[:1], e[:1], e[:1])
        >>> background = GroupPromptFeatures(e[1:2], e[1:2], e[1:2])
        >>> round(regularizer_loss(image, [comp], background).item(), 4)  # a = (1,1,0)/√2
        0.4142
    """
    a = F.normalize(image.learned, dim=-1).mean(0)
    summed = torch.stack([c.learned for c in components]).sum(0)  # (N_ab, D)
    b = F.normalize(summed, dim=-1).mean(0)
    c = F.normalize(background.normal, dim=-1).mean(0)
    return torch.dist(a, b + c)
