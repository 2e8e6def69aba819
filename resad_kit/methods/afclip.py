"""AF-CLIP (zero-shot) and AF-CLIP+ (few-shot): the thin composer (AF-CLIP paper, Sec. 3).

Fang, Lv, Su, "AF-CLIP: Zero-Shot Anomaly Detection via Anomaly-Focused CLIP Adaptation"
(ACM MM 2025); official code GitHub Faustinaqq/AF-CLIP. Built from the public primitives:

- **views** (Eqs. 5–6): the raw residual-stream tokens of the backbone's taps
  (``BackboneConfig.afclip()``: blocks 6, 12, 18, 24, CLS included, no V-V attention),
  their patches aggregated over Gaussian windows r ∈ {1, 3, 5}
  (:func:`~resad_kit.ops.spatial_aggregate`), CLS untouched: 12 views;
- **adapter** (Eq. 4): one :class:`~resad_kit.nn.AttentionAdapter` shared by the views
  (no residual), then ``LN_post`` and ``proj`` (Eq. 7,
  :meth:`~resad_kit.clip.ClipBackbone.project_tokens`);
- **prompts** (Eq. 8): :class:`~resad_kit.clip.LearnablePrompts`, M = 12 learnable
  context vectors with "without defect." / "with defect.";
- **head** (Eqs. 9–10, 12): ``cos(z, t_s) / τ`` summed over the views, softmax over the
  two states: ``p_CLS`` is the image score, the patch probabilities ``P̃`` the map,
  upsampled bilinearly and smoothed (σ = 4, scipy-like, 33 taps);
- **AF-CLIP+** (Eqs. 16–18, after :meth:`AFCLIP.fit_references` with K ≥ 1 shots): one
  bank per view of the normalised aggregated, un-adapted reference patches, the memory
  distance ``A`` (default 1-NN ``(1 − cos)/2``, :func:`~resad_kit.ops.knn_distance`;
  injectable), averaged over the views; ``S_img = max A + α·p_CLS``, ``S_map = A + β·P̃``.

Training (:meth:`AFCLIP.losses`, one phase ``"train"``; Eqs. 11, 13–15): focal loss
(γ = 4, no α) on ``p_CLS``, focal + L1 on ``P̃`` against the mask resized to the grid,
and the patch alignment loss averaged over the views; only the adapter and the prompt
context learn (:meth:`AFCLIP.trainable_module`). docs/afclip.md has the equations and
every paper-vs-code choice.

Shape legend: ``B`` query images, ``K`` shots, ``N = h·w`` patches, ``C`` residual width,
``D`` joint width, ``V`` views, ``H×W`` output pixels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resad_kit.clip import ClipBackbone, Features, LearnablePrompts
from resad_kit.methods.afclip_config import AFCLIPConfig
from resad_kit.methods.afclip_modules import AFCLIPModules, check_backbone
from resad_kit.methods.afclip_training import afclip_losses
from resad_kit.methods.afclip_views import (
    MemoryScore,
    MemoryScorer,
    adapted_tokens,
    aggregated_patches,
    anomaly_probability,
    as_memory_score,
    default_scorer,
    resolve_output_size,
    state_logits,
    with_cls,
)
from resad_kit.methods.base import (
    BranchOutput,
    Method,
    OptimizerGroup,
    Prediction,
    TrainingBatch,
)
from resad_kit.nn import AttentionAdapter
from resad_kit.ops import gaussian_blur, upsample_patches
from resad_kit.ops._validation import checks

__all__ = ["AFCLIP", "AFCLIPModules", "MemoryScore"]


class AFCLIP(Method):
    """AF-CLIP / AF-CLIP+ composed from its parts (see the module docs).

    Args:
        backbone: a frozen :class:`~resad_kit.clip.ClipBackbone` built with
            ``BackboneConfig.afclip()`` (raw residual taps with CLS, no V-V attention).
        config: :class:`~resad_kit.methods.AFCLIPConfig`; ``None`` is
            ``AFCLIPConfig.official_code()``.
        parts: the trainable :class:`AFCLIPModules` (e.g. loaded); ``None`` builds an
            adapter (PyTorch default init) and prompts (context ~ N(0, 0.01²)).
        memory_score: the AF-CLIP+ memory scorer ``(query (V, B, N, C), bank (V, 1, M, C))
            → (V, B, N)`` distances (or a :class:`MemoryScore` / ``Neighbors``); ``None`` is
            :func:`~resad_kit.methods.afclip_views.nearest_neighbor_memory` (Eq. 17).

    Attributes:
        taps, memory_taps: resolved tap positions of the views and of the banks.
        views: ``(tap position, window)`` of every view, in order.
        shots: ``K`` of the fitted bank, ``0`` zero-shot.

    Example:
        >>> import torch
        >>> from resad_kit.clip import ClipBackbone
        >>> from resad_kit.methods import AFCLIP
        >>> backbone = ClipBackbone.tiny(vv_blocks=0, tap_output="residual", tap_cls=True)
        >>> model = AFCLIP(backbone)  # zero-shot (AF-CLIP)
        >>> pred = model(torch.randn(2, 3, 64, 64))
        >>> pred.image_score.shape, pred.anomaly_map.shape, len(model.views)
        (torch.Size([2]), torch.Size([2, 64, 64]), 12)
        >>> model.fit_references(torch.randn(1, 3, 64, 64)).shots  # AF-CLIP+, 1 shot
        1
        >>> sorted(model(torch.randn(2, 3, 64, 64)).branches)
        ['memory', 'zero_shot']
    """

    name = "afclip"
    supports_zero_shot = True
    uses_training_references = False

    def __init__(
        self,
        backbone: ClipBackbone,
        config: AFCLIPConfig | None = None,
        parts: AFCLIPModules | None = None,
        *,
        memory_score: MemoryScorer | None = None,
    ) -> None:
        super().__init__()
        fn = type(self).__name__
        config = AFCLIPConfig.official_code() if config is None else config
        if not isinstance(config, AFCLIPConfig):
            raise TypeError(f"{fn}: `config` must be an AFCLIPConfig; got {type(config).__name__}")
        self.backbone, self.config = check_backbone(backbone), config
        self.taps = self._resolve("taps", config.taps)
        self.memory_taps = self._resolve("memory_taps", config.memory_taps)
        self.views = tuple((t, r) for t in self.taps for r in config.windows)
        if parts is None:
            c = config
            adapter = AttentionAdapter(backbone.width, c.adapter_inner_dim, c.adapter_heads)
            prompts = LearnablePrompts(
                backbone,
                suffixes=c.suffixes,
                n_ctx=c.n_ctx,
                position=c.prompt_position,
                init_std=c.prompt_init_std,
            )
            parts = AFCLIPModules(adapter, prompts)
        if not isinstance(parts, AFCLIPModules):
            raise TypeError(f"{fn}: `parts` must be AFCLIPModules; got {type(parts).__name__}")
        if parts.adapter.dim != backbone.width:
            raise ValueError(
                f"{fn}: the adapter is for width {parts.adapter.dim}; the backbone's "
                f"residual width is {backbone.width}"
            )
        self.parts = parts.to(backbone.device)
        if memory_score is not None and not callable(memory_score):
            raise TypeError(f"{fn}: `memory_score` must be callable; got {memory_score!r}")
        self.memory_score = memory_score
        self._bank: Tensor | None = None  # (V_m, 1, K·N, C), ℓ2-normalised
        self._bank_grid: tuple[int, int] | None = None

    def _resolve(self, name: str, taps: tuple[int, ...] | str) -> tuple[int, ...]:
        n = len(self.backbone.layers)
        if taps == "all":
            return tuple(range(n))
        if not all(-n <= t < n for t in taps):
            raise ValueError(f"AFCLIP: `config.{name}` {taps} out of range for {n} taps")
        return tuple(t % n for t in taps)

    # ------------------------------------------------------------------ Method interface

    @property
    def adapter(self) -> AttentionAdapter:
        """The shared attention adapter ``H_a``."""
        return self.parts.adapter

    @property
    def prompts(self) -> LearnablePrompts:
        """The learnable state prompts."""
        return self.parts.prompts

    @property
    def phases(self) -> tuple[str, ...]:
        """One phase, ``("train",)``."""
        return ("train",)

    @property
    def shots(self) -> int:
        """``K`` of the fitted memory bank; ``0`` (zero-shot AF-CLIP) without one."""
        if self._bank is None:
            return 0
        return self._bank.shape[2] // (self._bank_grid[0] * self._bank_grid[1])

    def optimizer_groups(self) -> list[OptimizerGroup]:
        """One Adam over the adapter and the prompt context at ``config.lr`` (code: 1e-4)."""
        return [OptimizerGroup("afclip", ((self.parts, self.config.lr),), ("train",))]

    def trainable_module(self) -> nn.Module:
        """:class:`AFCLIPModules`: what a checkpoint stores."""
        return self.parts

    def __repr__(self) -> str:
        return f"AFCLIP(shots={self.shots}, views={len(self.views)}, taps={self.taps})"

    # ------------------------------------------------------------------ features

    def _features(self, inputs: Tensor | Features, name: str) -> Features:
        if not isinstance(inputs, Features):
            with torch.no_grad():
                inputs = self.backbone(inputs)
        n, width = len(self.backbone.layers), self.backbone.width
        if len(inputs.patches) != n or inputs.tap_cls is None or len(inputs.tap_cls) != n:
            raise ValueError(
                f"AFCLIP: `{name}` must hold the patches and tap CLS tokens of the backbone's "
                f"{n} taps (BackboneConfig.afclip())"
            )
        b, (h, w) = inputs.patches[0].shape[0], inputs.grid
        for i, (p, c) in enumerate(zip(inputs.patches, inputs.tap_cls, strict=True)):
            if tuple(p.shape) != (b, h * w, width) or tuple(c.shape) != (b, width):
                raise ValueError(
                    f"AFCLIP: `{name}` tap {i} must be patches (B, N, C) = {(b, h * w, width)} "
                    f"and CLS (B, C) = {(b, width)}; got {tuple(p.shape)}, {tuple(c.shape)}"
                )
        device = self.backbone.device

        def f32(x: Tensor) -> Tensor:
            return x.to(device, torch.float32)

        return Features(
            [f32(p) for p in inputs.patches],
            f32(inputs.cls),
            inputs.grid,
            [f32(c) for c in inputs.tap_cls],
        )

    def _aggregate(self, feats: Features, taps: tuple[int, ...]) -> Tensor:
        c = self.config
        return aggregated_patches(
            feats, taps, c.windows, sigma=c.aggregation_sigma, border=c.aggregation_border
        )

    def encode_views(self, feats: Features) -> Tensor:
        """``(V, B, 1 + N, D)`` adapted, projected tokens z^{ℓr} of the views (Eqs. 4–7)."""
        views = with_cls(
            self._aggregate(feats, self.taps), feats, self.taps, len(self.config.windows)
        )
        return adapted_tokens(views, self.adapter, self.backbone)

    # ------------------------------------------------------------------ references

    def fit_references(self, references: Tensor | Features) -> AFCLIP:
        """Build the AF-CLIP+ banks (Eq. 16) from ``K ≥ 1`` normal references.

        Per memory view: the aggregated, un-adapted reference patches, ℓ2-normalised,
        stacked shot-major into ``(K·N, C)`` (no coreset).

        Args:
            references: ``(K, 3, S, S)`` images or their :class:`~resad_kit.clip.Features`.

        Returns:
            ``self``.
        """
        feats = self._features(references, "references")
        if feats.patches[0].shape[0] < 1:
            raise ValueError("AFCLIP.fit_references: need at least one reference image")
        with checks(False), torch.no_grad():
            patches = self._aggregate(feats, self.memory_taps)  # (V_m, K, N, C)
            self._bank = F.normalize(patches, dim=-1).flatten(1, 2)[:, None]
        self._bank_grid = feats.grid
        return self

    def clear_references(self) -> AFCLIP:
        """Drop the memory banks: zero-shot AF-CLIP again."""
        self._bank, self._bank_grid = None, None
        return self

    # ------------------------------------------------------------------ inference

    def _finish(self, patch_map: Tensor, size: tuple[int, int], grid: tuple[int, int]) -> Tensor:
        c = self.config
        return gaussian_blur(
            upsample_patches(patch_map, size, grid), c.blur_sigma, c.blur_kernel, c.blur_padding
        )

    def forward(
        self,
        inputs: Tensor | Features,
        *,
        output_size: int | tuple[int, int] | None = None,
        return_intermediates: bool = False,
    ) -> Prediction:
        """Scores and maps of ``B`` images: AF-CLIP (no bank) or AF-CLIP+ (after fitting).

        Args:
            inputs: ``(B, 3, S, S)`` images or their :class:`~resad_kit.clip.Features`.
            output_size: map size ``(H, W)``; default the input size, or ``grid·patch``.
            return_intermediates: also return the inner tensors (below).

        Returns:
            :class:`~resad_kit.methods.Prediction` (float32). Zero-shot: score ``p_CLS``,
            map ``blur(upsample(P̃))``, branch ``"zero_shot"``. AF-CLIP+: score
            ``max_i A_i + α·p_CLS`` and map ``blur(upsample(A + β·P̃))`` (Eq. 18),
            branches ``"zero_shot"`` and ``"memory"`` (``blur(upsample(A))``,
            ``max_i A_i``). Intermediates: ``"grid"``; ``"views"``: the ``(tap, window)``
            of each view; ``"view_logits"`` ``(V, B, 1 + N, 2)`` ``cos/τ`` per view and
            state (normal, anomalous; CLS first); ``"view_probabilities"``
            ``(V, B, 1 + N)`` each view's own softmax; ``"logits"`` ``(B, 1 + N, 2)`` the
            sum over views; ``"probabilities"`` ``(B, 1 + N)`` (Eq. 10); AF-CLIP+ also
            ``"memory/distance"`` ``(V_m, B, N)`` per memory view, ``"memory/index"``
            ``(V_m, B, N)`` the matched bank rows (``k·N + n``; ``None`` for a scorer
            without), ``"memory/mean"`` ``(B, N)`` = ``A``.

        Raises:
            ValueError: features without tap CLS tokens or of the wrong width, or a grid
                other than the references'.
        """
        c = self.config
        feats = self._features(inputs, "inputs")
        grid = feats.grid
        if self._bank is not None and grid != self._bank_grid:
            raise ValueError(
                f"AFCLIP.forward: query grid {grid} differs from the references' "
                f"{self._bank_grid}; use one image size for both"
            )
        size = resolve_output_size(inputs, output_size, grid, self.backbone.patch_size)
        b = feats.patches[0].shape[0]
        with checks(False):
            view_logits = state_logits(self.encode_views(feats), self.prompts(), c.temperature)
            logits = view_logits.sum(0)
            prob = anomaly_probability(logits)  # (B, 1 + N)
            p_cls, p_patch = prob[:, 0], prob[:, 1:]
            zero_map = self._finish(p_patch, size, grid)
            branches = {"zero_shot": BranchOutput(zero_map, p_cls)}
            extra: dict[str, Any] = {}
            if self._bank is None:
                image, amap = p_cls, zero_map
            else:
                query = self._aggregate(feats, self.memory_taps)
                scorer = self.memory_score or default_scorer(c.chunk_size)
                mem = as_memory_score(scorer(query, self._bank), (len(query), b, grid[0] * grid[1]))
                a = mem.distance.mean(0)  # (B, N)
                a_max = a.amax(-1)
                branches["memory"] = BranchOutput(self._finish(a, size, grid), a_max)
                image = a_max + c.alpha * p_cls
                amap = self._finish(a + c.beta * p_patch, size, grid)
                extra = {
                    "memory/distance": mem.distance,
                    "memory/index": mem.index,
                    "memory/mean": a,
                }
        if not return_intermediates:
            return Prediction(image.float(), amap.float(), branches, None)
        extra |= {
            "grid": grid,
            "views": self.views,
            "view_logits": view_logits,
            "view_probabilities": anomaly_probability(view_logits),
            "logits": logits,
            "probabilities": prob,
        }
        return Prediction(image.float(), amap.float(), branches, extra)

    # ------------------------------------------------------------------ training

    def losses(self, batch: TrainingBatch, phase: str) -> dict[str, Tensor]:
        """AF-CLIP's loss of one batch (Eqs. 11, 13–15); ``phase`` must be ``"train"``.

        Returns:
            ``{"cls": L_cls, "seg": L_seg, "pal": L_pal, "total": L_cls + λ₁L_seg +
            λ₂L_pal}``; only the adapter and the prompt context get gradients.
        """
        if phase != "train":
            raise ValueError(f"AFCLIP.losses: `phase` must be 'train'; got {phase!r}")
        if not isinstance(batch, TrainingBatch):
            raise TypeError(f"AFCLIP.losses: `batch` must be a TrainingBatch; got {type(batch)}")
        feats = self._features(batch.query, "batch.query")
        masks = batch.masks.to(self.backbone.device)
        if masks.ndim != 3 or masks.shape[0] != feats.patches[0].shape[0]:
            raise ValueError(
                f"AFCLIP.losses: `batch.masks` must be (B, H, W) for B = "
                f"{feats.patches[0].shape[0]} queries; got {tuple(masks.shape)}"
            )
        with checks(False):
            return afclip_losses(self, feats, masks)

    # ------------------------------------------------------------------ released weights

    def load_official(
        self,
        adaptor: Mapping[str, Tensor] | nn.Module,
        prompt: Tensor | Mapping[str, Tensor],
    ) -> AFCLIP:
        """Load the released weights into :attr:`parts` (:meth:`AFCLIPModules.load_official`).

        Returns:
            ``self``.
        """
        self.parts.load_official(adaptor, prompt)
        return self
