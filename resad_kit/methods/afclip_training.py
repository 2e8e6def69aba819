"""The body of :meth:`AFCLIP.losses <resad_kit.methods.AFCLIP.losses>` (AF-CLIP Eqs. 11–15).

- Eq. 11: ``L_cls = Focal(p_CLS, y)``, ``y`` the image label (the mask's maximum);
- Eq. 13: ``L_seg = Focal(P̃, M̃) + L1(P̃, M̃)``, ``M̃`` the mask resized bilinearly to the
  patch grid and binarised at 0.5 (the code; no Dice);
- Eq. 14: ``L_pal``: :func:`~resad_kit.ops.losses.patch_alignment_loss` of the adapted,
  projected patch tokens of each view against ``M̃``, averaged over the views;
- Eq. 15: ``L = L_cls + λ₁·L_seg + λ₂·L_pal``.

Focal losses on probabilities with γ = ``config.focal_gamma`` (4) and no α
(:func:`~resad_kit.ops.losses.binary_focal_loss`), mean reduction, as the code's
``focal_loss``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from resad_kit.clip import Features
from resad_kit.methods.afclip_views import anomaly_probability, patch_labels, state_logits
from resad_kit.ops import losses as L

if TYPE_CHECKING:
    from resad_kit.methods.afclip import AFCLIP

__all__: list[str] = []


def afclip_losses(model: AFCLIP, feats: Features, masks: Tensor) -> dict[str, Tensor]:
    """``{"cls", "seg", "pal", "total"}`` of one batch; ``masks`` ``(B, H, W)`` in [0, 1]."""
    c = model.config
    tokens = model.encode_views(feats)  # (V, B, 1 + N, D), with gradients
    prob = anomaly_probability(state_logits(tokens, model.prompts(), c.temperature).sum(0))
    p_cls, p_patch = prob[:, 0], prob[:, 1:]
    labels = patch_labels(masks, feats.grid)  # (B, N)
    image_labels = (masks.flatten(1).amax(1) > 0.5).float()
    l_cls = L.binary_focal_loss(p_cls, image_labels, gamma=c.focal_gamma)
    l_seg = L.binary_focal_loss(p_patch, labels, gamma=c.focal_gamma) + L.l1_loss(p_patch, labels)
    l_pal = torch.stack([L.patch_alignment_loss(z[:, 1:], labels) for z in tokens.unbind(0)])
    l_pal = l_pal.mean()
    total = l_cls + c.lambda_seg * l_seg + c.lambda_pal * l_pal
    return {"cls": l_cls, "seg": l_seg, "pal": l_pal, "total": total}
