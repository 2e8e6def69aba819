"""The training losses of one Res²CLIP step (eqs. 13–16), composed from the ops (internal).

:func:`res2clip_losses` is the body of :meth:`resad_kit.methods.Res2CLIP.losses`: the raw
residuals of the frozen backbone, the adapters of one phase of the alternating schedule,
and the branch sums of :mod:`resad_kit.methods.res2clip_losses`. The caller runs it under
``resad_kit.checks(False)`` after validating the batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from resad_kit.clip import Features
from resad_kit.methods import res2clip_losses as RL
from resad_kit.methods.res2clip_residuals import compute_residuals, unit_patches
from resad_kit.ops import losses as L
from resad_kit.ops import magnitude_score, radial_distance, upsample_patches
from resad_kit.ops.scores import _unit_cosine_core

if TYPE_CHECKING:
    from resad_kit.methods.res2clip import Res2CLIP

__all__: list[str] = []


def _text_cosines(
    query: Features, taps: tuple[int, ...], t_text: Tensor
) -> tuple[Tensor, list[Tensor]]:
    """``⟨f^q, A_t(R_t)⟩`` ``(B,)`` and ``⟨F^q_l, A_t(R_t)⟩`` ``(B, N)`` per text tap (eqs. 6–7).

    The values of :func:`~resad_kit.ops.cosine_score` (without its clamp to ``[−1, 1]``, a
    no-op here), but with ``A_t(R_t)`` normalised once and shared: ``cosine_score``
    normalises its direction in every call, so two calls would run the gradient of ``A_t``
    through two normalisations and add the results, where the official code (and the stored
    golden outputs of tests/methods/test_res2clip_golden.py) adds the gradients of the
    cosines first and normalises once (the two round differently: 1.5e-8 in the text
    adapter after three steps).
    """
    with torch.no_grad():
        q_cls = F.normalize(query.cls, dim=-1)
        q_local = [F.normalize(query.patches[t], dim=-1) for t in taps]
    t_unit = F.normalize(t_text, dim=-1)  # one normalisation, shared by every cosine
    return _unit_cosine_core(q_cls, t_unit), [_unit_cosine_core(q, t_unit) for q in q_local]


def res2clip_losses(
    model: Res2CLIP,
    query: Features,
    reference: Features,
    masks: Tensor,
    r_t: Tensor,
    phase: str,
) -> dict[str, Tensor]:
    """Losses of one batch: ``query``/``reference`` checked float32 features, binary masks.

    ``r_t`` is the text residual ``R_t`` (no gradient). See ``Res2CLIP.losses``.
    """
    c, a, taps = model.config, model.adapters, model.taps
    assert a is not None  # checked by the caller
    labels = masks.flatten(1).amax(1)
    size, grid = tuple(masks.shape[-2:]), query.grid

    with torch.no_grad():
        # One 1-shot bank per query: reference b is the bank of query b.
        bank = unit_patches(reference, model.used_taps)  # (L, B, N, D)
        radius = radial_distance(*grid, device=bank.device)
        res = compute_residuals(query, bank, radius, reference.cls[:, None], model.used_taps, c)

    def up(x: Tensor) -> Tensor:
        return upsample_patches(x, size, grid)

    reduction = {"margin": c.margin, "reduction": c.loss_reduction}
    # Text branch (eq. 13).
    t_text = a.text(r_t)
    cos_global, cos_local = _text_cosines(query, taps["text"], t_text)
    loss_text = RL.text_branch_loss(
        cos_global,
        [up(x) for x in cos_local],
        t_text,
        r_t,
        labels,
        masks,
        **reduction,
    )
    # Visual branch (eq. 14).
    adapted = [magnitude_score(a.visual[t](res.visual[t], grid)) for t in taps["visual"]]
    raw = [magnitude_score(res.visual[t]) for t in taps["visual"]]
    loss_vis = RL.visual_branch_loss(
        [up(x) for x in adapted], [up(x) for x in raw], masks, reduction=c.loss_reduction
    )
    # Residual branch (eq. 15), one phase.
    with torch.set_grad_enabled(phase == "text"):
        t_res = a.residual_text(r_t)
    with torch.set_grad_enabled(phase == "visual"):
        res_local = {t: a.residual_local[t](res.visual[t], grid) for t in taps["residual"]}
        res_cls = a.residual_global(res.cls)
    raw_local = {t: magnitude_score(res.visual[t]) for t in taps["residual"]}
    raw_cls = magnitude_score(res.cls)
    if phase == "visual":
        reg = L.magnitude_regularizer(magnitude_score(res_cls), raw_cls)
        for t in taps["residual"]:
            reg = reg + L.magnitude_regularizer(magnitude_score(res_local[t]), raw_local[t])
    else:
        reg = L.direction_regularizer(t_res, r_t)
    loss_res = RL.residual_branch_loss(
        L.stop_gradient_projection(res_cls, t_res, update=phase),
        raw_cls,
        [
            up(L.stop_gradient_projection(res_local[t], t_res, update=phase))
            for t in taps["residual"]
        ],
        [up(raw_local[t]) for t in taps["residual"]],
        labels,
        masks,
        regularizer=reg,
        **reduction,
    )
    total = loss_text + loss_vis + loss_res
    return {"text": loss_text, "visual": loss_vis, "residual": loss_res, "total": total}
