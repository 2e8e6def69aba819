"""WinCLIP (zero-shot) and WinCLIP+ (few-shot) composed from the primitives.

Jeong et al., "WinCLIP: Zero-/Few-Shot Anomaly Classification and Segmentation", CVPR
2023, as anomalib's ``WinClipModel`` computes it (``anomalib.models.image.winclip``):

- **embeddings** (:func:`resad_kit.clip.windows.encode_windows`): the image embedding
  ``f``, the embedding ``f_w`` of every 2×2 and 3×3 window (each window run alone through
  the tower), the patch embeddings (``LN_post`` of the last block's tokens);
- **text anchors** (:func:`~resad_kit.clip.encode_prompt_ensemble` with WinCLIP's
  compositional ensemble): ``g_n``, ``g_a``, the normalised means of the normal and the
  anomalous prompt embeddings, and their residual ``R = ĝ_a − ĝ_n``;
- **zero-shot score** (Eq. 1): ``p(x) = softmax(⟨x̂, [ĝ_n, ĝ_a]⟩ / τ)_a =
  σ(⟨x̂, R⟩ / τ)``, computed as ``σ(cosine_score(x, R) · magnitude_score(R) / τ)``; the
  image score is ``p(f)``;
- **zero-shot map**: per scale, the window scores ``p(f_w)`` harmonically aggregated onto
  the patches (:func:`~resad_kit.ops.harmonic_aggregate`); then the harmonic mean, per
  patch, of those maps and of the image score (the image scale);
- **few-shot (WinCLIP+, Eq. 4)**: memories of the ``K`` references' patch embeddings and
  window embeddings per scale; the visual association score of a query embedding is its
  nearest-neighbour cosine distance ``min_r (1 − ⟨x̂, r̂⟩)/2``
  (:func:`~resad_kit.ops.knn_distance`, ``k = 1``); window scores are harmonically
  aggregated per scale; the few-shot map is the arithmetic mean of the patch-scale map
  and the window-scale maps;
- **fusion**: map ``(M_zero + M_few)/2``, image score ``(p(f) + max M_few)/2``; without
  references the zero-shot map and score alone;
- **pixels**: bilinear upsampling of the patch-grid map (:func:`~resad_kit.ops.upsample_patches`,
  ``align_corners=False`` as anomalib's ``F.interpolate``), no smoothing.

Shape legend: ``B`` images, ``K`` shots, ``h×w`` patch grid (``N = h·w``), ``W_s``
windows of side ``s``, ``H×W`` output pixels.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from einops import rearrange, repeat
from torch import Tensor

from resad_kit.clip import ClipBackbone, Features, TextAnchors, encode_prompt_ensemble
from resad_kit.clip.windows import WindowBackbone, WindowEmbeddings, encode_windows
from resad_kit.methods.base import BranchOutput, Method, Prediction
from resad_kit.methods.winclip_config import WinCLIPConfig
from resad_kit.ops import (
    cosine_score,
    harmonic_aggregate,
    knn_distance,
    magnitude_score,
    upsample_patches,
)

__all__ = ["WinCLIP"]


class _Memory(NamedTuple):
    patches: Tensor  # (K·N, C)
    windows: tuple[Tensor, ...]  # (K·W_s, D) per scale


class WinCLIP(Method):
    """WinCLIP / WinCLIP+ over a frozen CLIP (see the module docstring).

    Zero-shot after :meth:`clear_references` (or before any :meth:`fit_references`),
    WinCLIP+ after :meth:`fit_references`. Inputs are images (embedded here) or the
    :class:`~resad_kit.clip.Features` of a :class:`~resad_kit.clip.windows.WindowBackbone`
    with this config's scales and stride (what the engine's feature cache holds).

    Args:
        backbone: a frozen :class:`~resad_kit.clip.ClipBackbone` (WinCLIP:
            ViT-B-16-plus-240, ``laion400m_e31``, 240 px).
        config: :class:`WinCLIPConfig`; ``None`` is ``WinCLIPConfig.anomalib()``.

    Example:
        >>> import torch
        >>> from resad_kit.clip import ClipBackbone
        >>> from resad_kit.methods import WinCLIP
        >>> model = WinCLIP(ClipBackbone.tiny())
        >>> zero = model(torch.randn(2, 3, 64, 64))
        >>> zero.anomaly_map.shape, sorted(zero.branches)
        (torch.Size([2, 64, 64]), ['zero_shot'])
        >>> few = model.fit_references(torch.randn(1, 3, 64, 64))(torch.randn(2, 3, 64, 64))
        >>> sorted(few.branches), model.name, model.supports_zero_shot
        (['few_shot', 'zero_shot'], 'winclip', True)
    """

    name = "winclip"
    supports_zero_shot = True

    def __init__(self, backbone: ClipBackbone, config: WinCLIPConfig | None = None) -> None:
        super().__init__()
        config = WinCLIPConfig.anomalib() if config is None else config
        if not isinstance(config, WinCLIPConfig):
            raise TypeError(f"WinCLIP: `config` must be a WinCLIPConfig; got {type(config)}")
        if config.patch_layer is not None and config.patch_layer > backbone.depth:
            raise ValueError(
                f"WinCLIP: `config.patch_layer`={config.patch_layer} but the backbone has "
                f"{backbone.depth} blocks"
            )
        self.backbone, self.config = backbone, config
        self._memory: _Memory | None = None

    @property
    def k_shot(self) -> int:
        """Number of fitted references (0: zero-shot)."""
        return 0 if self._memory is None else self._k

    def text_anchors(self) -> TextAnchors:
        """``(ĝ_n, ĝ_a, R)`` of WinCLIP's prompt ensemble for ``config.class_name`` (cached)."""
        c = self.config
        return encode_prompt_ensemble(
            self.backbone,
            c.class_name,
            ensemble=c.prompt_ensemble(),
            normalize_before_mean=c.normalize_before_mean,
        )

    def embed(self, inputs: Tensor | Features) -> WindowEmbeddings:
        """Image, window and patch embeddings of images, or unpacked cached features."""
        c = self.config
        if isinstance(inputs, Features):
            bb = self.backbone
            if not (
                isinstance(bb, WindowBackbone)
                and bb.scales == c.scales
                and bb.stride == c.stride
                and c.patch_layer in (None, bb.depth)
            ):
                raise ValueError(
                    "WinCLIP: Features inputs must come from a WindowBackbone with the "
                    f"config's scales {c.scales} and stride {c.stride} (and the last block "
                    "as patch_layer); pass images otherwise"
                )
            return bb.unpack(inputs)
        return encode_windows(
            self.backbone, inputs, c.scales, stride=c.stride, patch_layer=c.patch_layer
        )

    def fit_references(self, references: Tensor | Features) -> WinCLIP:
        """WinCLIP+'s memories: patch and window embeddings of ``K ≥ 1`` normal images."""
        e = self.embed(references)
        self._k = int(e.image.shape[0])
        self._memory = _Memory(
            e.patches.flatten(0, 1).detach(),
            tuple(w.flatten(0, 1).detach() for w in e.windows),
        )
        return self

    def clear_references(self) -> WinCLIP:
        """Forget the references: zero-shot WinCLIP."""
        self._memory = None
        return self

    def _probability(self, x: Tensor, anchors: TextAnchors) -> Tensor:
        """Eq. 1: ``softmax(⟨x̂, [ĝ_n, ĝ_a]⟩/τ)_a = σ(⟨x̂, ĝ_a − ĝ_n⟩/τ)``, shape ``x[..., 0]``."""
        r = anchors.residual.to(x.device)
        logit = cosine_score(x, r) * magnitude_score(r) / self.config.temperature
        return torch.sigmoid(logit)

    def forward(
        self,
        inputs: Tensor | Features,
        *,
        output_size: int | tuple[int, int] | None = None,
        return_intermediates: bool = False,
    ) -> Prediction:
        """Map and score of ``B`` queries; zero-shot without references, WinCLIP+ with.

        Intermediates (``return_intermediates=True``): ``window_scores`` (zero-shot
        ``(B, W_s)`` per scale), ``zero_shot_grid`` ``(B, h, w)`` and, with references,
        ``few_shot_grid`` ``(B, h, w)``.
        """
        e = self.embed(inputs)
        grid, (h, w) = e.grid, e.grid
        anchors = self.text_anchors()
        image_score = self._probability(e.image, anchors)  # (B,)
        window_scores = [self._probability(win, anchors) for win in e.windows]
        zero = self._zero_shot_map(image_score, window_scores, e.indices, grid)
        size = output_size or (inputs.shape[-2:] if isinstance(inputs, Tensor) else None)
        size = size or (h * self.backbone.patch_size, w * self.backbone.patch_size)
        up = lambda m: upsample_patches(rearrange(m, "b h w -> b (h w)"), size, grid)  # noqa: E731
        branches = {"zero_shot": BranchOutput(up(zero), image_score)}
        extra = {"window_scores": window_scores, "zero_shot_grid": zero}
        fused, score = zero, image_score
        if self._memory is not None:
            few = self._few_shot_map(e, grid)
            few_score = few.flatten(1).amax(1)
            fused, score = (zero + few) / 2, (image_score + few_score) / 2
            branches["few_shot"] = BranchOutput(up(few), few_score)
            extra["few_shot_grid"] = few
        return Prediction(score, up(fused), branches, extra if return_intermediates else None)

    @staticmethod
    def _zero_shot_map(
        image_score: Tensor, window_scores: list[Tensor], indices: tuple[Tensor, ...], grid
    ) -> Tensor:
        """Harmonic mean over the scales (image + each window size) of the per-scale maps."""
        n = grid[0] * grid[1]
        maps = [repeat(image_score, "b -> b n", n=n)]
        maps += [
            rearrange(harmonic_aggregate(s, idx, grid), "b h w -> b (h w)")
            for s, idx in zip(window_scores, indices, strict=True)
        ]
        # each (scale, patch) is a one-patch "window" of patch n: the op's harmonic mean
        per_patch = repeat(torch.arange(n, device=image_score.device), "n -> (s n) 1", s=len(maps))
        return harmonic_aggregate(torch.cat(maps, dim=1), per_patch, grid)

    def _few_shot_map(self, e: WindowEmbeddings, grid: tuple[int, int]) -> Tensor:
        """Mean over the scales of the visual association maps (Eq. 4)."""
        memory = self._memory
        assert memory is not None
        patch = knn_distance(e.patches, memory.patches.to(e.patches.device), k=1)[..., 0]
        maps = [rearrange(patch, "b (h w) -> b h w", h=grid[0])]
        for win, bank, idx in zip(e.windows, memory.windows, e.indices, strict=True):
            distance = knn_distance(win, bank.to(win.device), k=1)[..., 0]  # (B, W_s)
            maps.append(harmonic_aggregate(distance, idx, grid))
        return torch.stack(maps).mean(0)
