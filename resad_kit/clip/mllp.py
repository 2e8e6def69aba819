"""FineGrainedAD's multi-level learnable prompts (MLLP) on :func:`encode_with_context`.

FineGrainedAD (paper §3.3) gives every prompt group (each component, the image, the
background; texts from :func:`~resad_kit.clip.mfsc.mfsc_prompts`) three kinds of prompts:

* normal hand-written prompts (NHP): ``[SOT] [N_1 … N_4] <normal text>. [EOT]``;
* abnormal hand-written prompts (AHP): ``[SOT] [N_1 … N_4] <abnormal text>. [EOT]``;
* abnormal learnable prompts (ALP): ``[SOT] [N_1 … N_4] [A_i] <normal text>. [EOT]``,
  ``i = 1 … N_ab``.

``[N_1 … N_4]`` is one learnable context shared by every prompt of every group
(``normal_ctx``, CoOp-style, right after ``<SOT>``); ``[A_i]`` are ``N_ab = 4`` learnable
abnormal tokens (``abnormal_ctx``) shared by the groups. This is the released code's
``FineGrainedPatchPromptLearner`` (RetoFan233/FineGrainedAD, ``PromptAD/model.py``, commit
aa6b041; PromptAD's "semantic concatenation"), built here on the library's one
prompt-learning mechanism, :func:`~resad_kit.clip.learnable_prompts.encode_with_context`
with ``position="after_sot"``: the code writes placeholder words ``"N N N N A <text>."``
and overwrites their embeddings, which is the same sequence. Initialisation 𝒩(0, 0.02²)
as the code.

**Attr-MoE** (``attributes``; paper §3.3: "learnable parameters between zero and one"
per attribute, for the component-level prompts; its form from the code, which applies it
to the image group): for a gated group with attributes ``a`` (texts
:func:`~resad_kit.clip.mfsc_attributes.attribute_prompts`) and gates ``w ∈ ℝ^{2×A}``
(𝒩(0, 1) as the code's ``torch.randn``; row 0 normal, row 1 abnormal), the **input
embedding sequences** (``[SOT] [N_1 … N_4] …`` after context insertion, before the
positional embedding) become

* NHP: ``E(NHP) + Σ_a σ(w_0a) E(NHP_a)``;
* AHP ``i``: ``E(AHP_i) + Σ_a σ(w_1a) E(AHP_a^{(j_a(i))})``, ``j_a`` the attribute's AHPs
  ranked by the mean of their embedding sequence, descending (the code's ``topk``; the
  shared context shifts every mean equally, so the ranking is fixed at construction);
* ALP ``i``: ``E(ALP_i) + Σ_a σ(w_1a) E(ALP_a^{(i)})``, ``ALP_a^{(i)}`` =
  ``[SOT] [N_1 … N_4] [A_i] <attribute text>.``;

and the text tower reads the feature at the group prompt's own EOT (the code's
``encode_text_embeddings(embedding, tokens)``). The sums run through
:func:`~resad_kit.clip.learnable_prompts.context_sequences` and
:func:`~resad_kit.clip.learnable_prompts.encode_sequences`, the two halves of
:func:`encode_with_context`.

Shape legend: ``G`` groups, ``W`` text width, ``D`` joint dim.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resad_kit.clip.learnable_prompts import (
    _text_tower,
    context_sequences,
    encode_sequences,
    encode_with_context,
)
from resad_kit.clip.mfsc import PromptGroup
from resad_kit.clip.mfsc_attributes import AttributePrompts

_FN = "MultiLevelPrompts"

if TYPE_CHECKING:
    from resad_kit.clip.backbone import ClipBackbone

__all__ = ["GroupPromptFeatures", "MultiLevelPrompts", "group_anchors"]

#: The levels of the Attr-MoE gates (``FineGrainedADConfig.attr_moe``).
ATTR_MOE_LEVELS: tuple[str, ...] = ("none", "image", "components")


class GroupPromptFeatures(NamedTuple):
    """Unnormalised text features of one group's prompts.

    Attributes:
        normal: ``(n_NHP, D)``.
        handcrafted: ``(n_AHP, D)``.
        learned: ``(N_ab, D)``.
    """

    normal: Tensor
    handcrafted: Tensor
    learned: Tensor


class MultiLevelPrompts(nn.Module):
    """Learnable normal context + abnormal tokens for FineGrainedAD's prompt groups.

    Args:
        backbone: the frozen :class:`~resad_kit.clip.ClipBackbone` (referenced, not
            registered: ``state_dict()`` holds the two contexts only).
        groups: the groups' texts (:func:`~resad_kit.clip.mfsc.mfsc_prompts`).
        n_ctx: learnable normal context tokens (code: 4).
        n_abnormal: learnable abnormal prompts per group ``N_ab`` (code and paper: 4).
        n_ctx_abnormal: learnable tokens per abnormal prompt (code: 1).
        init_std: std of the normal initialisation of both contexts (code: 0.02).
        attributes: the Attr-MoE texts of the gated groups (module docstring;
            :func:`~resad_kit.clip.mfsc_attributes.attribute_prompts`); ``()``: no gates.

    Attributes:
        normal_ctx: ``(1, n_ctx, W)``.
        abnormal_ctx: ``(n_abnormal, n_ctx_abnormal, W)``.
        attr_gates: one ``(2, A)`` gate logit tensor per entry of ``attributes``.

    Raises:
        ValueError: no groups, a non-positive count, a backbone without a text tower, a
            text too long for the context, ``attributes`` of an unknown or repeated group,
            or an attribute with fewer abnormal texts than its group's AHPs.

    Example:
        >>> import torch
        >>> from resad_kit.clip import ClipBackbone
        >>> from resad_kit.clip.mfsc import load_captions, load_vocabularies, mfsc_prompts
        >>> from resad_kit.clip.mllp import MultiLevelPrompts, group_anchors
        >>> backbone = ClipBackbone.tiny()
        >>> groups = mfsc_prompts(load_captions("bottle"), load_vocabularies())
        >>> _ = torch.manual_seed(0)
        >>> mllp = MultiLevelPrompts(backbone, groups)
        >>> sorted(mllp.state_dict())
        ['abnormal_ctx', 'normal_ctx']
        >>> feats = mllp()
        >>> len(feats), tuple(feats[-1].handcrafted.shape), tuple(feats[-1].learned.shape)
        (4, (4, 32), (4, 32))
        >>> normal, abnormal = group_anchors(feats)  # (G, D) each, unit rows
        >>> tuple(normal.shape)
        (4, 32)
    """

    def __init__(
        self,
        backbone: ClipBackbone,
        groups: Sequence[PromptGroup],
        *,
        n_ctx: int = 4,
        n_abnormal: int = 4,
        n_ctx_abnormal: int = 1,
        init_std: float = 0.02,
        attributes: Sequence[AttributePrompts] = (),
    ) -> None:
        super().__init__()
        fn = type(self).__name__
        model = _text_tower(fn, backbone)
        groups = tuple(groups)
        if not groups or not all(isinstance(g, PromptGroup) for g in groups):
            raise ValueError(f"{fn}: `groups` must be a non-empty sequence of PromptGroup")
        for name, value in (("n_ctx", n_ctx), ("n_abnormal", n_abnormal)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{fn}: `{name}` must be a positive int; got {value!r}")
        if isinstance(n_ctx_abnormal, bool) or not isinstance(n_ctx_abnormal, int):
            raise ValueError(f"{fn}: `n_ctx_abnormal` must be an int ≥ 1; got {n_ctx_abnormal!r}")
        if n_ctx_abnormal < 1 or not init_std > 0:
            raise ValueError(f"{fn}: `n_ctx_abnormal` must be ≥ 1 and `init_std` > 0")
        width = model.positional_embedding.shape[1]
        device = model.positional_embedding.device
        fixed = [t for g in groups for t in (g.normal, *g.abnormal)]
        learned = [g.learned for g in groups]
        self.groups = groups
        self.n_abnormal = n_abnormal
        fixed_ids = backbone.tokenizer([t + "." for t in fixed]).to(device)
        learned_ids = backbone.tokenizer([t + "." for t in learned]).to(device)
        self.register_buffer("fixed_tokens", fixed_ids, persistent=False)
        self.register_buffer("learned_tokens", learned_ids, persistent=False)
        self.normal_ctx = nn.Parameter(torch.randn(1, n_ctx, width, device=device) * init_std)
        self.abnormal_ctx = nn.Parameter(
            torch.randn(n_abnormal, n_ctx_abnormal, width, device=device) * init_std
        )
        object.__setattr__(self, "backbone", backbone)  # a reference, not a submodule
        self._init_gates(fn, tuple(attributes), backbone, n_ctx)
        with torch.no_grad():  # fail early on a text too long for the context
            self._encode_fixed()
            self._encode_learned()
            if self.attributes:
                self._encode_gated()

    def _init_gates(
        self, fn: str, attributes: tuple[AttributePrompts, ...], backbone, n_ctx: int
    ) -> None:
        g = len(self.groups)
        if not all(isinstance(a, AttributePrompts) for a in attributes) or sorted(
            {a.group for a in attributes}
        ) != sorted(a.group for a in attributes if 0 <= a.group < g):
            raise ValueError(
                f"{fn}: `attributes` must be AttributePrompts of distinct groups in [0, {g})"
            )
        self.attributes = attributes
        device = self.normal_ctx.device
        model = backbone.model
        length = model.positional_embedding.shape[0]
        self.attr_gates = nn.ParameterList(
            [nn.Parameter(torch.randn(2, len(a.names), device=device)) for a in attributes]
        )
        for i, a in enumerate(attributes):
            k = len(self.groups[a.group].abnormal)
            selected = []
            for name, texts in zip(a.names, a.abnormal, strict=True):
                if len(texts) < k:
                    raise ValueError(
                        f"{fn}: attribute {name!r} of group {self.groups[a.group].name!r} has "
                        f"{len(texts)} abnormal texts; its group has {k} AHPs"
                    )
                ids = backbone.tokenizer([t + "." for t in texts]).to(device)
                with torch.no_grad():  # the code's topk of the sequence means (context: 0)
                    emb = model.token_embedding(ids).float()
                    mean = (emb[:, 0].sum(-1) + emb[:, 1 : length - n_ctx].sum((1, 2))) / (
                        length * emb.shape[-1]
                    )
                selected.append(ids[torch.topk(mean, k).indices])
            normal_ids = backbone.tokenizer([t + "." for t in a.normal]).to(device)
            self.register_buffer(f"attr_normal_tokens_{i}", normal_ids, persistent=False)
            self.register_buffer(f"attr_abnormal_tokens_{i}", torch.stack(selected), False)

    def _encode_gated(self) -> tuple[Tensor, Tensor]:
        """``(fixed, learned)`` features with the Attr-MoE sums (module docstring)."""
        model, g, n_ab = self.backbone.model, len(self.groups), self.n_abnormal
        xf, eot_f = context_sequences(_FN, model, self.fixed_tokens, self.normal_ctx, "after_sot")
        ctx_ab = torch.cat([self.normal_ctx.expand(n_ab, -1, -1), self.abnormal_ctx], dim=1)
        tokens = self.learned_tokens.repeat_interleave(n_ab, dim=0)
        xl, eot_l = context_sequences(_FN, model, tokens, ctx_ab.repeat(g, 1, 1), "after_sot")
        starts = [0]
        for group in self.groups:
            starts.append(starts[-1] + 1 + len(group.abnormal))
        for i, a in enumerate(self.attributes):
            normal_ids = getattr(self, f"attr_normal_tokens_{i}")  # (A, L)
            abnormal_ids = getattr(self, f"attr_abnormal_tokens_{i}")  # (A, k, L)
            n_attr, k = abnormal_ids.shape[:2]
            e_n, _ = context_sequences(_FN, model, normal_ids, self.normal_ctx, "after_sot")
            e_h, _ = context_sequences(
                _FN, model, abnormal_ids.flatten(0, 1), self.normal_ctx, "after_sot"
            )
            ids_l = normal_ids.repeat_interleave(n_ab, dim=0)
            e_l, _ = context_sequences(_FN, model, ids_l, ctx_ab.repeat(n_attr, 1, 1), "after_sot")
            gate = torch.sigmoid(self.attr_gates[i]).to(e_n.dtype)
            d_fixed = torch.cat([
                torch.einsum("a,alw->lw", gate[0], e_n)[None],
                torch.einsum("a,aklw->klw", gate[1], e_h.unflatten(0, (n_attr, k))),
            ])  # fmt: skip
            d_learned = torch.einsum("a,aklw->klw", gate[1], e_l.unflatten(0, (n_attr, n_ab)))
            rows = torch.arange(starts[a.group], starts[a.group] + 1 + k, device=xf.device)
            xf = xf.index_add(0, rows, d_fixed)
            rows = torch.arange(a.group * n_ab, (a.group + 1) * n_ab, device=xl.device)
            xl = xl.index_add(0, rows, d_learned)
        return encode_sequences(model, xf, eot_f), encode_sequences(model, xl, eot_l)

    def _encode_fixed(self) -> Tensor:
        return encode_with_context(
            self.backbone, self.fixed_tokens, self.normal_ctx, position="after_sot"
        )

    def _encode_learned(self) -> Tensor:
        g, a = len(self.groups), self.n_abnormal
        tokens = self.learned_tokens.repeat_interleave(a, dim=0)  # group-major, N_ab each
        ctx = torch.cat(
            [self.normal_ctx.expand(a, -1, -1), self.abnormal_ctx], dim=1
        ).repeat(g, 1, 1)  # fmt: skip
        return encode_with_context(self.backbone, tokens, ctx, position="after_sot")

    def forward(self) -> tuple[GroupPromptFeatures, ...]:
        """Unnormalised features of every group's NHPs, AHPs and ALPs, in group order."""
        if self.attributes:
            fixed, learned = self._encode_gated()
        else:
            fixed, learned = self._encode_fixed(), self._encode_learned()
        out, start = [], 0
        for i, g in enumerate(self.groups):
            n_ab = len(g.abnormal)
            normal = fixed[start : start + 1]
            hand = fixed[start + 1 : start + 1 + n_ab]
            start += 1 + n_ab
            ab = learned[i * self.n_abnormal : (i + 1) * self.n_abnormal]
            out.append(GroupPromptFeatures(normal, hand, ab))
        return tuple(out)


def group_anchors(features: Sequence[GroupPromptFeatures]) -> tuple[Tensor, Tensor]:
    """Per group, the unit mean normal feature and the unit mean abnormal feature (AHP ∪ ALP).

    As the released code's ``build_text_feature_patch_gallery``: the mean of the
    unnormalised features, then L2-normalised.

    Returns:
        ``(normal (G, D), abnormal (G, D))``.

    Example:
        >>> import torch
        >>> from resad_kit.clip.mllp import GroupPromptFeatures, group_anchors
        >>> f = GroupPromptFeatures(
        ...     torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 3.0]])
        ... )
        >>> [t.tolist() for t in group_anchors([f])]
        [[[1.0, 0.0]], [[0.0, 1.0]]]
    """
    normal = torch.stack([f.normal.mean(0) for f in features])
    abnormal = torch.stack([torch.cat([f.handcrafted, f.learned]).mean(0) for f in features])
    return F.normalize(normal, dim=-1), F.normalize(abnormal, dim=-1)
