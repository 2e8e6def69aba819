"""Frozen CLIP ViT backbone with V-V attention, layer taps and any input size (Res²CLIP sec. 4.1).

``ClipBackbone`` wraps an ``open_clip.CLIP`` whose image tower is an OpenAI-style
``VisionTransformer`` and reads it block by block (explicit taps, no hooks):

1. patch embedding, CLS token, positional embedding interpolated to the input's
   patch grid (bilinear, CLS entry kept, as the official code does), ``ln_pre``;
2. blocks ``1 … L − n`` are standard; the last ``n = vv_blocks`` blocks are
   *dual-path* (official code, from AnomalyCLIP): the ordinary stream ``x_o`` runs
   the standard block, and the V-V stream ``x_v`` (seeded with ``x_o`` at the first
   dual-path block) adds the block's V-V attention of ``LN_1(x_o)`` with no MLP;
3. each tapped block ``l`` gives ``LN_post(x_v^(l)) @ proj`` (the ordinary
   stream if block ``l`` is standard) without the CLS row: the patch features
   ``(B, N, D)`` (official code);
4. the global feature is ``x_o^(L)[CLS] @ proj`` (official code; ``LN_post``
   first with ``global_ln_post=True``, which is open_clip's ``encode_image``).

Shape legend: ``B`` images, ``S`` input side, ``h×w`` patch grid (``N = h·w``
patches, row-major), ``C`` transformer width, ``D`` joint embedding dim.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import open_clip
import torch
from einops import rearrange
from torch import Tensor, nn

from resad_kit.clip.config import BackboneConfig
from resad_kit.clip.construction import BackboneConstructors
from resad_kit.clip.features import Features
from resad_kit.clip.loading import resolve_image_size, resolve_layers, resolve_vv_blocks
from resad_kit.clip.positional import cached_pos_embed
from resad_kit.clip.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImagePreprocess
from resad_kit.clip.tower import check_vit_tower, project_taps, run_blocks
from resad_kit.ops._validation import check_finite, check_positive_int, check_tensor

__all__ = ["ClipBackbone", "Features"]

logger = logging.getLogger(__name__)


class ClipBackbone(BackboneConstructors, nn.Module):
    """Frozen open_clip CLIP ViT read block by block: V-V attention, taps, any input size.

    See the module docstring for the computation. The wrapped model is frozen
    (``requires_grad=False``) and always in eval mode; ``forward`` and
    :meth:`encode_text` run under ``torch.inference_mode`` (set
    ``inference_mode=False`` to let gradients reach the input images) and return
    float32 tensors that are ordinary tensors (usable in autograd). Batches, CUDA
    and autocast (``torch.autocast`` with float16/bfloat16 around the call) work;
    the model's own parameters stay float32 (as in the official code).

    Build it with :meth:`from_pretrained` (an open_clip tag or a local checkpoint
    file) or :meth:`tiny` (random weights, for tests and offline demos; its
    ``weights`` label says ``untrained``); both live in :mod:`resad_kit.clip.construction`.

    Args:
        model: an ``open_clip.CLIP`` with an OpenAI-style ViT image tower.
        config: :class:`BackboneConfig`; ``None`` is :meth:`BackboneConfig.paper`.
        model_name: the architecture's name (shown in the repr).
        weights: where the weights came from (shown in the repr).
        trained: whether the weights are pretrained (False for random weights).
        mean, std: RGB normalisation of the weights (for :attr:`preprocess`).
        tokenizer: callable ``list[str] -> (P, context_length)`` token ids;
            ``None`` uses CLIP's BPE tokenizer.
        inference_mode: run under ``torch.inference_mode``.

    Attributes:
        layers: the tapped blocks (1-based). vv_blocks: number of dual-path blocks.
        image_size, patch_size, grid: input side, patch side and the grid at ``image_size``.
        embed_dim: ``D``; width: ``C``; depth: number of blocks ``L``.
        preprocess: the :class:`ImagePreprocess` matching the weights;
        mean, std: its normalisation.

    Example:
        >>> import torch
        >>> from resad_kit.clip import ClipBackbone
        >>> backbone = ClipBackbone.tiny(seed=0)
        >>> backbone
        ClipBackbone(model='resad-tiny', weights='untrained: random init (seed 0)',
                     image_size=64, grid=(8, 8), layers=(1, 2, 3, 4),
                     vv_blocks=3 (blocks 2-4), global_ln_post=False)
        >>> features = backbone(torch.randn(1, 3, 64, 64))
        >>> features.cls.dtype, features.cls.requires_grad
        (torch.float32, False)
        >>> backbone.encode_text(["a photo of a damaged object."]).shape
        torch.Size([1, 32])
    """

    def __init__(
        self,
        model: open_clip.CLIP,
        config: BackboneConfig | None = None,
        *,
        model_name: str = "custom",
        weights: str = "unknown",
        trained: bool = True,
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
        tokenizer: Any = None,
        inference_mode: bool = True,
    ) -> None:
        super().__init__()
        fn = "ClipBackbone"
        config = BackboneConfig.paper() if config is None else config
        if not isinstance(config, BackboneConfig):
            raise TypeError(f"{fn}: `config` must be a BackboneConfig; got {type(config).__name__}")
        visual = check_vit_tower(fn, model)
        blocks = visual.transformer.resblocks

        self.model = model.eval().requires_grad_(False)
        self.config = config
        self.model_name = model_name
        self.weights = weights
        self.trained = trained
        self.inference_mode = inference_mode
        self.depth = len(blocks)
        self.width = visual.transformer.width
        self.embed_dim = visual.output_dim
        self.patch_size = visual.patch_size[0]
        self.native_grid: tuple[int, int] = tuple(visual.grid_size)  # type: ignore[assignment]
        self.layers = resolve_layers(config.layers, self.depth)
        self.vv_blocks = resolve_vv_blocks(config.vv_blocks, self.depth)
        self.image_size = resolve_image_size(config.image_size, visual, self.patch_size)
        self.grid = (self.image_size // self.patch_size,) * 2
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.preprocess = ImagePreprocess(self.image_size, self.mean, self.std)  # type: ignore[arg-type]
        self.tokenizer = tokenizer or open_clip.SimpleTokenizer(context_length=model.context_length)
        self._pos_cache: dict[tuple[Any, ...], Tensor] = {}

    # ------------------------------------------------------------------ state

    def _construction_kwargs(self) -> dict[str, Any]:
        """The arguments that rebuild this backbone over the same frozen model (used by the
        wrappers' ``wrap``: :class:`~resad_kit.clip.windows.WindowBackbone`,
        :class:`~resad_kit.clip.image_backbone.ImageBackbone`)."""
        return {
            "model": self.model,
            "config": self.config,
            "model_name": self.model_name,
            "weights": self.weights,
            "trained": self.trained,
            "mean": self.mean,
            "std": self.std,
            "tokenizer": self.tokenizer,
            "inference_mode": self.inference_mode,
        }

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return self.model.visual.conv1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the model's parameters (float32 unless converted on purpose)."""
        return self.model.visual.conv1.weight.dtype

    @property
    def tap_dim(self) -> int:
        """Channels of the tapped patches: ``D`` (``tap_output="projected"``) or ``C``."""
        return self.width if self.config.tap_output == "residual" else self.embed_dim

    @property
    def vv_block_indices(self) -> tuple[int, ...]:
        """The 1-based blocks with V-V attention: ``L − vv_blocks + 1 … L``."""
        return tuple(range(self.depth - self.vv_blocks + 1, self.depth + 1))

    def train(self, mode: bool = True) -> ClipBackbone:
        """Set the wrapper's flag; the frozen model itself always stays in eval mode."""
        super().train(mode)
        self.model.eval()
        return self

    def _apply(self, fn: Any, recurse: bool = True) -> ClipBackbone:
        self._pos_cache.clear()  # device or dtype changes invalidate the resized tables
        return super()._apply(fn, recurse)

    def __repr__(self) -> str:
        first = self.depth - self.vv_blocks + 1
        vv = f"{self.vv_blocks} (blocks {first}-{self.depth})" if self.vv_blocks else "0"
        return (
            f"ClipBackbone(model={self.model_name!r}, weights={self.weights!r}, "
            f"image_size={self.image_size}, grid={self.grid}, layers={self.layers}, "
            f"vv_blocks={vv}, global_ln_post={self.config.global_ln_post}"
            + (", tap_output='residual')" if self.config.tap_output == "residual" else ")")
        )

    # ------------------------------------------------------------------ image tower

    def pos_embed(self, grid: tuple[int, int]) -> Tensor:
        """The positional table for a patch grid, interpolated once per grid and cached.

        Shape: ``(1 + h·w, C)``.
        """
        return cached_pos_embed(
            self._pos_cache,
            self.model.visual.positional_embedding,
            grid,
            self.native_grid,
            self.config.pos_interpolation,
        )

    def _check_images(self, images: object) -> Tensor:
        fn = "ClipBackbone.forward"
        x = check_tensor(fn, "images", images, ndim=4, shape_doc="(B, 3, H, W)")
        p = self.patch_size
        if x.shape[1] != 3 or x.shape[2] % p or x.shape[3] % p:
            raise ValueError(
                f"{fn}: `images` must have shape (B, 3, H, W) with H and W multiples of the "
                f"patch size {p} (e.g. {self.image_size}); got shape {tuple(x.shape)}"
            )
        if x.device != self.device:
            raise ValueError(
                f"{fn}: `images` are on {x.device} but the backbone is on {self.device}; "
                "move one of them"
            )
        if x.device.type != "meta":  # the meta device (shapes only) has no values to check
            check_finite(fn, "images", x)
        return x.to(self.dtype)

    def _run(self) -> contextlib.AbstractContextManager[Any]:
        return torch.inference_mode() if self.inference_mode else contextlib.nullcontext()

    def _finish(self, tensors: list[Tensor]) -> list[Tensor]:
        # Tensors made under inference mode cannot enter autograd; clones can.
        return [t.clone() for t in tensors] if self.inference_mode else tensors

    def _tower(
        self, images: Tensor
    ) -> tuple[list[Tensor], Tensor, tuple[int, int], list[Tensor] | None]:
        visual = self.model.visual
        x = visual.conv1(images)  # (B, C, h, w)
        h, w = x.shape[-2:]
        x = rearrange(x, "b c h w -> b (h w) c")
        cls_token = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls_token, x], dim=1) + self.pos_embed((h, w)).to(x.dtype)
        x = visual.ln_pre(visual.patch_dropout(x))
        c = self.config
        taps, x_o = run_blocks(
            x, visual.transformer.resblocks, self.layers, self.vv_blocks, c.attention
        )
        taps = [taps[layer] for layer in self.layers]
        patches, tap_cls = project_taps(visual, taps, c.tap_cls, c.tap_output)
        cls = x_o[:, 0]
        if c.global_ln_post:
            cls = visual.ln_post(cls)
        return patches, (cls @ visual.proj).float(), (int(h), int(w)), tap_cls

    def forward(self, images: Tensor) -> Features:
        """Patch features of the tapped layers and the global feature of ``images``.

        Args:
            images: preprocessed images (see :attr:`preprocess`), on the backbone's
                device; any float dtype (cast to the model's). Any ``H, W`` that are
                multiples of the patch size (the positional table follows the grid).

        Returns:
            :class:`Features` ``(patches, cls, grid, tap_cls)``, float32.

        Shape:
            - images: ``(B, 3, H, W)``
            - patches: ``len(layers)`` × ``(B, N, D)`` with ``N = (H/p)·(W/p)``; ``(B, N, C)``
              with ``tap_output="residual"``
            - cls: ``(B, D)``
            - tap_cls: ``len(layers)`` × ``(B, D)`` (``(B, C)`` with ``"residual"``) or ``None``

        Paper: sec. 3.1 (``F_v``, ``f_v``), sec. 4.1, App. F.2; the steps the paper leaves
        open follow the official code (see the module docstring).
        """
        x = self._check_images(images)
        with self._run():
            patches, cls, grid, tap_cls = self._tower(x)
        *patches, cls = self._finish([*patches, cls])
        if tap_cls is not None:
            tap_cls = self._finish(tap_cls)
        return Features(patches, cls, grid, tap_cls)

    def project_tokens(self, tokens: Tensor) -> Tensor:
        """``LN_post(tokens) @ proj``: residual-stream tokens into the joint embedding space.

        For taps of ``tap_output="residual"`` and anything computed from them (AF-CLIP
        Eq. 7 projects its adapter's output so). Never runs under ``inference_mode``:
        gradients reach ``tokens`` while the frozen CLIP weights get none. Projecting the
        residual taps gives the ``"projected"`` taps.

        Args:
            tokens: residual-stream tokens, any leading dims; cast to the model's dtype.

        Returns:
            The projected tokens, float32.

        Shape:
            - tokens: ``(..., C)``
            - output: ``(..., D)``

        Raises:
            ValueError: ``tokens`` is not a tensor with last dimension ``C``.

        Example:
            >>> import torch
            >>> from resad_kit.clip import ClipBackbone
            >>> backbone = ClipBackbone.tiny(vv_blocks=0, tap_output="residual")
            >>> raw = backbone(torch.randn(1, 3, 64, 64)).patches[0]
            >>> raw.shape, backbone.project_tokens(raw).shape
            (torch.Size([1, 64, 64]), torch.Size([1, 64, 32]))
        """
        fn = "ClipBackbone.project_tokens"
        x = check_tensor(fn, "tokens", tokens, min_ndim=1, shape_doc="(..., C)")
        if x.shape[-1] != self.width:
            raise ValueError(
                f"{fn}: `tokens` must have shape (..., {self.width}) (the residual width C); "
                f"got shape {tuple(x.shape)}"
            )
        visual = self.model.visual
        return (visual.ln_post(x.to(self.dtype)) @ visual.proj).float()

    def encode_windows(
        self,
        images: Tensor,
        scales: Sequence[int] = (2, 3),
        *,
        stride: int = 1,
        patch_layer: int | None = None,
    ) -> Any:
        """WinCLIP's window embeddings: :func:`resad_kit.clip.windows.encode_windows`.

        Each ``s×s`` window's CLS + patch tokens run alone through the tower (attention
        within the window), all windows of a size in one forward; also the image and the
        patch embeddings. Returns a :class:`~resad_kit.clip.windows.WindowEmbeddings`.

        Example:
            >>> import torch
            >>> from resad_kit.clip import ClipBackbone
            >>> out = ClipBackbone.tiny().encode_windows(torch.randn(1, 3, 64, 64), (3,))
            >>> out.windows[0].shape, out.image.shape
            (torch.Size([1, 36, 32]), torch.Size([1, 32]))
        """
        from resad_kit.clip.windows import encode_windows  # windows.py imports this module

        return encode_windows(self, images, scales, stride=stride, patch_layer=patch_layer)

    # ------------------------------------------------------------------ text tower

    def encode_text(self, prompts: str | Sequence[str], *, batch_size: int | None = None) -> Tensor:
        """CLIP text embeddings of ``prompts`` (EOT token, ``ln_final``, ``text_projection``).

        Args:
            prompts: one prompt or a sequence of prompts.
            batch_size: encode at most this many prompts at a time (``None``: all).

        Returns:
            Unnormalised embeddings, float32, on the backbone's device.

        Shape:
            - output: ``(P, D)``

        Paper: eq. (32) ``E_t``, App. B.
        """
        fn = "ClipBackbone.encode_text"
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(
                f"{fn}: `prompts` must be a non-empty sequence of str; got {prompts!r}"
            )
        check_positive_int(fn, "batch_size", batch_size, optional=True)
        tokens = self.tokenizer(prompts).to(self.device)
        with self._run():
            out = torch.cat(
                [
                    self.model.encode_text(chunk).float()
                    for chunk in tokens.split(batch_size or len(prompts))
                ]
            )
        return self._finish([out])[0]
