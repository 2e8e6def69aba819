"""FineGrainedAD composed from the primitives (few-shot, per category).

* **VAD** (Eq. 1): ``M_v = ½ Σ_{l ∈ 2 layers} min_r (1 − cos)/2`` of the query's
  ordinary-stream tokens of two blocks against the banks of the ``K`` normal references
  (:func:`~resad_kit.ops.knn_distance`, ``k = 1``).
* **PAD** (Eqs. 4-5): the prompt groups (components, image, background; texts
  :func:`~resad_kit.clip.mfsc.mfsc_prompts`, prompts
  :class:`~resad_kit.clip.mllp.MultiLevelPrompts`) give each group a unit normal and a
  unit abnormal feature; the :class:`~resad_kit.nn.QueryFormer` turns them into one
  intrinsic feature ``q_g`` per group; each token ``z`` (V-V stream, projected) takes the
  group ``g* = argmax_g cos(z, q_g)`` and scores ``softmax(τ·[cos(z, p_n^{g*}),
  cos(z, p_a^{g*})])₁``. With ``config.image_reweight`` (paper preset; absent from the
  released code), Eq. 6 re-weights it: ``M_p = a / Σ_k a_k ⊙ M̂_p``, ``a`` each token's
  Eq. 4 anomaly probability against the image group (see :meth:`FineGrainedAD.forward`).
* **Fusion** (Eq. 7): ``M = 1 / (1/(M_v + ε) + 1/(M_p + ε))``, upsampled bilinearly and
  smoothed (σ = 4); image score (Eq. 8): the same harmonic mean of ``max M_v`` and the
  PAD score of the global feature.
* **Regions** (§3.4): at :meth:`FineGrainedAD.fit_references` the references are
  upsampled ×4, cut into 4×4 tiles, encoded and stitched, clustered by
  :func:`~resad_kit.ops.progressive_region_aggregation` against the normal prompt features
  of the components and the background, and turned into per-token loss weights
  (:func:`~resad_kit.ops.match_regions`, :func:`~resad_kit.ops.region_weights`).
* **Training**: :meth:`FineGrainedAD.losses` (Eqs. 2-3, :mod:`.finegrainedad_losses`)
  on the ``K`` references themselves; only the prompt contexts, the Attr-MoE gates
  (``config.attr_moe``) and the Query Former learn.

The backbone is read through two views of the same frozen model (the released
``V2VTransformer``: V-V attention in every block for the patch tokens, LN_post on the
global feature, ordinary stream of blocks 3 and 8 for the banks), whatever the given
backbone's own :class:`~resad_kit.clip.BackboneConfig`; inputs are images, not cached
:class:`~resad_kit.clip.Features`.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from resad_kit.clip import ClipBackbone, Features
from resad_kit.clip.mfsc import CategoryCaptions, Vocabularies, mfsc_prompts
from resad_kit.clip.mfsc_attributes import attribute_prompts
from resad_kit.clip.mllp import MultiLevelPrompts, group_anchors
from resad_kit.methods.afclip_views import anomaly_probability
from resad_kit.methods.base import (
    BranchOutput,
    Method,
    OptimizerGroup,
    Prediction,
    TrainingBatch,
)
from resad_kit.methods.finegrainedad_config import FineGrainedADConfig
from resad_kit.methods.finegrainedad_losses import (
    group_losses,
    mean_alignment_loss,
    regularizer_loss,
)
from resad_kit.nn import QueryFormer, query_former_loss
from resad_kit.ops import (
    cosine_score,
    gaussian_blur,
    knn_distance,
    match_regions,
    progressive_region_aggregation,
    region_weights,
    upsample_patches,
)

__all__ = ["FineGrainedAD", "FineGrainedADConfig"]

_TILES = 4  # the code clusters a 4× image (960 px) cut into 4×4 tiles of 240 px


class FineGrainedAD(Method):
    """FineGrainedAD for one category (see the module docstring).

    Args:
        backbone: the frozen :class:`~resad_kit.clip.ClipBackbone` (ViT-B-16-plus-240 in the
            paper); its model is read through the views described above.
        captions: the category's MFSC (:func:`~resad_kit.clip.mfsc.load_captions`).
        vocabularies: the attribute vocabularies (:func:`~resad_kit.clip.mfsc.load_vocabularies`).
        config: :class:`FineGrainedADConfig` (default: ``official_code()``).

    Example:
        >>> import torch
        >>> from resad_kit.clip import ClipBackbone
        >>> from resad_kit.clip.mfsc import load_captions, load_vocabularies
        >>> from resad_kit.methods.finegrainedad import FineGrainedAD, FineGrainedADConfig
        >>> _ = torch.manual_seed(0)
        >>> model = FineGrainedAD(
        ...     ClipBackbone.tiny(),
        ...     load_captions("coins"),
        ...     load_vocabularies(),
        ...     FineGrainedADConfig(memory_layers=(1, 3)),
        ... )
        >>> model = model.fit_references(torch.randn(2, 3, 64, 64))
        >>> out = model(torch.randn(3, 3, 64, 64))
        >>> out.anomaly_map.shape, out.image_score.shape, sorted(out.branches)
        (torch.Size([3, 64, 64]), torch.Size([3]), ['pad', 'vad'])
    """

    name = "finegrainedad"
    uses_training_references = False

    def __init__(
        self,
        backbone: ClipBackbone,
        captions: CategoryCaptions,
        vocabularies: Vocabularies,
        config: FineGrainedADConfig | None = None,
    ) -> None:
        super().__init__()
        config = config or FineGrainedADConfig.official_code()
        if not isinstance(backbone, ClipBackbone):
            raise ValueError(f"FineGrainedAD: `backbone` must be a ClipBackbone; got {backbone!r}")
        if not isinstance(captions, CategoryCaptions):
            raise ValueError("FineGrainedAD: `captions` must be a CategoryCaptions (load_captions)")
        depth = len(backbone.model.visual.transformer.resblocks)
        if max(config.memory_layers) > depth:
            raise ValueError(
                f"FineGrainedAD: `memory_layers` {config.memory_layers} exceed the backbone's "
                f"{depth} blocks"
            )
        self.backbone, self.config, self.captions = backbone, config, captions
        base = backbone.config
        vv = depth if config.vv_all_blocks else base.vv_blocks
        tokens_cfg = dataclasses.replace(
            base, vv_blocks=vv, layers=(depth,), tap_output="projected", global_ln_post=True,
            tap_cls=False,
        )  # fmt: skip
        memory_cfg = dataclasses.replace(
            base, vv_blocks=0, layers=config.memory_layers, tap_output="residual", tap_cls=False
        )
        for name, cfg in (("_tokens_view", tokens_cfg), ("_memory_view", memory_cfg)):
            view = ClipBackbone(backbone.model, cfg, tokenizer=backbone.tokenizer)
            object.__setattr__(self, name, view)  # views of the same model, not submodules
        self.groups = mfsc_prompts(captions, vocabularies, seed=config.caption_seed)
        self.prompts = MultiLevelPrompts(
            backbone, self.groups, n_ctx=config.n_ctx, n_abnormal=config.n_abnormal,
            n_ctx_abnormal=config.n_ctx_abnormal, init_std=config.prompt_init_std,
            attributes=attribute_prompts(captions, vocabularies, config.attr_moe),
        )  # fmt: skip
        dim = backbone.model.visual.output_dim
        self.query_former = QueryFormer(len(self.groups), dim, config.query_former)
        self.parts = nn.ModuleDict({"prompts": self.prompts, "query_former": self.query_former})
        self.register_buffer("bank1", torch.empty(0), persistent=False)
        self.register_buffer("bank2", torch.empty(0), persistent=False)
        self.register_buffer("loss_weights", torch.empty(0), persistent=False)

    def _apply(self, fn, recurse: bool = True):
        # the views share the moved model; their resized positional tables must be rebuilt
        for view in (self._tokens_view, self._memory_view):
            view._apply(lambda t: t, recurse=False)
        return super()._apply(fn, recurse)

    # ------------------------------------------------------------------ interface

    @property
    def phases(self) -> tuple[str, ...]:
        """One phase, ``("train",)``."""
        return ("train",)

    def optimizer_groups(self) -> list[OptimizerGroup]:
        """One optimiser over the prompts (contexts, Attr-MoE gates) and the Query Former at
        ``config.lr``."""
        return [OptimizerGroup("finegrainedad", ((self.parts, self.config.lr),), ("train",))]

    def trainable_module(self) -> nn.Module:
        """The prompts (contexts, Attr-MoE gates) and the Query Former: what a checkpoint
        stores."""
        return self.parts

    @property
    def num_components(self) -> int:
        """``E``, the components of the category's captions."""
        return len(self.captions.entities)

    def encode(self, images: Tensor) -> Features:
        """The V-V patch tokens (one tap) and the global feature of ``images``."""
        return self._tokens_view(self._check_images(images))

    def _check_images(self, images: object) -> Tensor:
        if not isinstance(images, Tensor) or images.ndim != 4:
            raise ValueError(
                "FineGrainedAD: inputs must be preprocessed images (B, 3, H, W); cached "
                f"Features are not enough (two backbone views); got {type(images).__name__}"
            )
        return images

    def _scale(self) -> float:
        raw = float(self.backbone.model.logit_scale)
        return raw if self.config.temperature == "raw" else float(torch.tensor(raw).exp())

    def fit_references(self, references: Tensor | Features) -> FineGrainedAD:
        """Memory banks (Eq. 1) and region loss weights (§3.4) of ``K`` normal images."""
        images = self._check_images(references)
        with torch.no_grad():
            mem = self._memory_view(images).patches
            self.bank1 = F.normalize(mem[0].flatten(0, 1), dim=-1)
            self.bank2 = F.normalize(mem[1].flatten(0, 1), dim=-1)
            self.loss_weights = self._region_weights(images)
        return self

    def _region_weights(self, images: Tensor) -> Tensor:
        """``(K, E + 1, N)`` weights of the components and the background (regions §3.4)."""
        big = F.interpolate(images, scale_factor=_TILES, mode="bicubic", align_corners=False)
        tiles = rearrange(big, "k c (ty h) (tx w) -> (k ty tx) c h w", ty=_TILES, tx=_TILES)
        feats = self._tokens_view(tiles)
        gh, gw = feats.grid
        stitched = rearrange(  # the stitched 4h×4w grid, row-major
            feats.patches[0], "(k ty tx) (h w) d -> k (ty h tx w) d",
            ty=_TILES, tx=_TILES, h=gh, w=gw,
        )  # fmt: skip
        normal, _ = group_anchors(self.prompts())
        e = self.num_components
        anchors = torch.cat([normal[:e], normal[e + 1 :]])  # components, background
        generator = torch.Generator(device=stitched.device).manual_seed(self.config.caption_seed)
        out = progressive_region_aggregation(
            stitched, anchors, k=self.config.cluster_k, generator=generator,
            semantic_centers=self.config.semantic_centers,
        )  # fmt: skip
        matched = match_regions(stitched, out.regions, anchors, e + 1)
        grid = (gh * _TILES, gw * _TILES)
        return region_weights(out.regions, matched, grid=grid, pool=_TILES, gamma=self.config.gamma)

    # ------------------------------------------------------------------ inference

    def _pad(self, tokens: Tensor, normal: Tensor, abnormal: Tensor, intrinsic: Tensor) -> Tensor:
        """Token-wise PAD score (Eqs. 4-5) of ``(..., D)`` features → ``(...)``."""
        route = cosine_score(tokens[..., None, :], intrinsic).argmax(-1, keepdim=True)
        cos_n = cosine_score(tokens[..., None, :], normal).gather(-1, route)[..., 0]
        cos_a = cosine_score(tokens[..., None, :], abnormal).gather(-1, route)[..., 0]
        return anomaly_probability(self._scale() * torch.stack([cos_n, cos_a], dim=-1))

    def _harmonic(self, a: Tensor, b: Tensor) -> Tensor:
        eps = self.config.eps
        return 1.0 / (1.0 / (a + eps) + 1.0 / (b + eps))

    def forward(
        self,
        inputs: Tensor | Features,
        *,
        output_size: int | tuple[int, int] | None = None,
        return_intermediates: bool = False,
    ) -> Prediction:
        """Fused map and score (Eqs. 1, 4-8); branches ``"vad"`` and ``"pad"``.

        Eq. 6 (``config.image_reweight``), as read here: the paper's
        ``softmax(s(z_ij, p_img))`` is the two-way softmax of Eq. 4 itself (a softmax over
        the tokens would make its denominator ``Σ_k`` equal to 1), i.e. the anomaly
        probability ``a_ij = softmax(τ·[cos(z_ij, p_n^img), cos(z_ij, p̄_a^img)])₁`` of the
        token against the image group's unit mean normal and abnormal features, and
        ``M_p,ij = a_ij / Σ_k a_k · M̂_p,ij`` over the ``N`` tokens of the image. The
        weights sum to 1, so ``M_p`` is about ``M̂_p / N`` and dominates the harmonic mean
        of Eq. 7; the image score (Eq. 8, here from ``max M_v``) does not use ``M_p``.

        Intermediates: ``"vad"``, ``"pad"`` (``(B, N)`` patch scores; ``M_p``, after Eq. 6
        when on), ``"groups"`` (``(B, N)`` routed group of every token), ``"intrinsic"``
        (``(G, D)``); with Eq. 6 also ``"pad_token"`` (``M̂_p``) and ``"image_weights"``
        (``a / Σ_k a_k``, ``(B, N)``).
        """
        images = self._check_images(inputs)
        if self.bank1.numel() == 0:
            raise ValueError("FineGrainedAD: call fit_references(images) before predicting")
        feats = self._tokens_view(images)
        mem = self._memory_view(images).patches
        vad = 0.5 * (knn_distance(mem[0], self.bank1) + knn_distance(mem[1], self.bank2))[..., 0]
        normal, abnormal = group_anchors(self.prompts())
        intrinsic = self.query_former(normal, abnormal)
        tokens = F.normalize(feats.patches[0], dim=-1)
        pad = pad_token = self._pad(tokens, normal, abnormal, intrinsic)
        if self.config.image_reweight:  # Eq. 6
            e = self.num_components
            image = torch.stack(
                [cosine_score(tokens, normal[e]), cosine_score(tokens, abnormal[e])], dim=-1
            )
            probability = anomaly_probability(self._scale() * image)  # (B, N)
            weights = probability / probability.sum(-1, keepdim=True)
            pad = weights * pad_token
        global_pad = self._pad(F.normalize(feats.cls, dim=-1), normal, abnormal, intrinsic)
        size = output_size or tuple(images.shape[-2:])
        sigma = self.config.blur_sigma
        kernel = 2 * round(4 * sigma) + 1

        def to_map(scores: Tensor) -> Tensor:
            up = upsample_patches(scores, size, feats.grid)
            return gaussian_blur(up, sigma, kernel, "symmetric") if sigma > 0 else up

        fused = to_map(self._harmonic(vad, pad))
        score = self._harmonic(vad.amax(-1), global_pad)
        branches = {
            "vad": (to_map(vad), vad.amax(-1)),
            "pad": (to_map(pad), global_pad),
        }
        inter = None
        if return_intermediates:
            route = cosine_score(tokens[..., None, :], intrinsic).argmax(-1)
            inter = {"vad": vad, "pad": pad, "groups": route, "intrinsic": intrinsic}
            if self.config.image_reweight:
                inter |= {"pad_token": pad_token, "image_weights": weights}
        return Prediction(
            score.float(),
            fused.float(),
            {k: BranchOutput(m.float(), s.float()) for k, (m, s) in branches.items()},
            inter,
        )

    # ------------------------------------------------------------------ training

    def losses(self, batch: TrainingBatch, phase: str) -> dict[str, Tensor]:
        """Eqs. 2-3 (+ the Query Former loss with ``query_former.loss``) on the references.

        ``batch.query`` must hold :meth:`encode` of the ``K`` fitted references, in the
        order given to :meth:`fit_references` (the region weights belong to them).
        """
        if phase != "train":
            raise ValueError(f"FineGrainedAD: unknown phase {phase!r}; the only phase is 'train'")
        if self.loss_weights.numel() == 0:
            raise ValueError("FineGrainedAD: call fit_references(images) before training")
        tokens = F.normalize(batch.query.patches[0], dim=-1)
        if tokens.shape[0] != self.loss_weights.shape[0]:
            raise ValueError(
                f"FineGrainedAD: the batch must be the {self.loss_weights.shape[0]} fitted "
                f"references; got {tokens.shape[0]} images"
            )
        c, e, scale = self.config, self.num_components, self._scale()
        groups = self.prompts()
        components, image, background = list(groups[:e]), groups[e], groups[e + 1]
        ones = torch.ones(tokens.shape[:2], device=tokens.device)
        clip, trip = group_losses(tokens, ones, image, scale=scale, margin=c.triplet_margin)
        mean = mean_alignment_loss(image)
        for i, g in enumerate([*components, background]):
            gc, gt = group_losses(
                tokens, self.loss_weights[:, i], g, scale=scale, margin=c.triplet_margin
            )
            clip, trip = clip + gc, trip + gt
        for g in components:
            mean = mean + mean_alignment_loss(g)
        reg = regularizer_loss(image, components, background)
        out = {"clip": clip, "trip": trip, "mean": mean, "reg": reg}
        total = clip + trip + c.lambda_mean * mean + c.lambda_reg * reg
        if c.query_former.loss:
            normal, abnormal = group_anchors(groups)
            intrinsic = self.query_former(normal, abnormal)
            out["query_former"] = query_former_loss(intrinsic, normal, abnormal)
            total = total + out["query_former"]
        out["total"] = total
        return out
