"""Configuration of :class:`~resad_kit.clip.ClipBackbone` (Res²CLIP sec. 4.1, App. F.2)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from resad_kit.clip.attention import ATTENTION_KERNELS
from resad_kit.ops._validation import check_positive_int

__all__ = ["BackboneConfig"]

POS_MODES = ("bilinear", "bicubic")
TAP_OUTPUTS = ("projected", "residual")


@dataclass(frozen=True)
class BackboneConfig:
    """How :class:`ClipBackbone` reads the image tower (Res²CLIP sec. 4.1, App. F.2).

    Attributes:
        image_size: side ``S`` of the square input the preprocessing produces
            (paper: 518); ``None`` keeps the model's native size.
        layers: tapped blocks, 1-based, in output order (paper + code: 6, 12, 18, 24);
            ``None`` taps the quarters of the depth, ``round(L·q/4)`` for q = 1…4.
        vv_blocks: number of last blocks with V-V attention (paper sec. 4.1: 20,
            official code: 19); ``None`` scales the paper's 20 of 24 to the depth,
            ``round(20·L/24)``; 0 disables V-V.
        global_ln_post: apply ``LN_post`` to the CLS token before ``proj`` (open_clip's
            ``encode_image``). Default False: the official code projects the raw
            ordinary-stream CLS token (the paper is silent).
        pos_interpolation: resize mode of the positional embedding (code: bilinear,
            ``align_corners=False``); ``"bicubic"`` is open_clip's choice.
        attention: the attention kernel of every block: ``"sdpa"`` (fused
            ``scaled_dot_product_attention``, the fast default) or ``"math"`` (the explicit
            ``softmax(q·kᵀ/sqrt(d))·v`` of the official code; the two differ by float32
            rounding, measured in docs/backbone.md).
        tap_cls: also return the CLS token of every tapped layer (in the form of the
            patches, see ``tap_output``) in :attr:`Features.tap_cls`.
        tap_output: what a tap returns. ``"projected"`` (default, Res²CLIP):
            ``LN_post(tap) @ proj``, ``(B, N, D)``. ``"residual"`` (AF-CLIP, Sec. 3.2):
            the raw residual stream of the tapped block, before ``LN_post``, ``(B, N, C)``;
            :meth:`ClipBackbone.project_tokens` projects such tokens later (AF-CLIP
            Eq. 7, after its adapter). The global feature is projected either way.

    Example:
        >>> from resad_kit.clip import BackboneConfig
        >>> BackboneConfig.paper().vv_blocks, BackboneConfig.official_code().vv_blocks
        (20, 19)
        >>> BackboneConfig.paper().layers
        (6, 12, 18, 24)
    """

    image_size: int | None = 518
    layers: tuple[int, ...] | None = (6, 12, 18, 24)
    vv_blocks: int | None = 20
    global_ln_post: bool = False
    pos_interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    attention: Literal["sdpa", "math"] = "sdpa"
    tap_cls: bool = False
    tap_output: Literal["projected", "residual"] = "projected"

    def __post_init__(self) -> None:
        fn = "BackboneConfig"
        check_positive_int(fn, "image_size", self.image_size, optional=True)
        if self.layers is not None:
            layers = tuple(self.layers) if isinstance(self.layers, Sequence) else None
            if not layers:
                raise ValueError(
                    f"{fn}: `layers` must be a non-empty sequence of 1-based block indices "
                    f"or None; got {self.layers!r}"
                )
            for layer in layers:
                check_positive_int(fn, "layers", layer)
            if len(set(layers)) != len(layers):
                raise ValueError(f"{fn}: `layers` must not repeat a block; got {layers}")
            object.__setattr__(self, "layers", layers)
        if self.vv_blocks is not None and (
            isinstance(self.vv_blocks, bool)
            or not isinstance(self.vv_blocks, int)
            or self.vv_blocks < 0
        ):
            raise ValueError(
                f"{fn}: `vv_blocks` must be None or an int ≥ 0; got {self.vv_blocks!r}"
            )
        if self.pos_interpolation not in POS_MODES:
            raise ValueError(
                f"{fn}: `pos_interpolation` must be one of {POS_MODES}; "
                f"got {self.pos_interpolation!r}"
            )

        if self.attention not in ATTENTION_KERNELS:
            raise ValueError(
                f"{fn}: `attention` must be one of {ATTENTION_KERNELS}; got {self.attention!r}"
            )
        if not isinstance(self.tap_cls, bool):
            raise ValueError(f"{fn}: `tap_cls` must be a bool; got {self.tap_cls!r}")
        if self.tap_output not in TAP_OUTPUTS:
            raise ValueError(
                f"{fn}: `tap_output` must be one of {TAP_OUTPUTS}; got {self.tap_output!r}"
            )

    @classmethod
    def paper(cls) -> BackboneConfig:
        """The paper's setting: 518 px, taps {6, 12, 18, 24}, V-V on the last 20 blocks."""
        return cls()

    @classmethod
    def official_code(cls) -> BackboneConfig:
        """The official code's setting: as :meth:`paper` but V-V on the last 19 blocks."""
        return cls(vv_blocks=19)

    @classmethod
    def afclip(cls) -> BackboneConfig:
        """AF-CLIP's setting (AF-CLIP Sec. 3.2, 4.1; official code Faustinaqq/AF-CLIP).

        For OpenAI's ViT-L/14-336 weights
        (``ClipBackbone.from_pretrained("ViT-L-14-336", "openai", BackboneConfig.afclip())``):
        518 px input with the positional table resized bilinearly, taps of the raw
        residual stream (before ``LN_post``, width ``C``) after blocks 6, 12, 18, 24, the
        CLS token of every tap, and no V-V attention (the original attention is kept).

        Example:
            >>> from resad_kit.clip import BackboneConfig
            >>> c = BackboneConfig.afclip()
            >>> c.image_size, c.layers, c.vv_blocks, c.tap_output, c.tap_cls
            (518, (6, 12, 18, 24), 0, 'residual', True)
        """
        return cls(
            image_size=518,
            layers=(6, 12, 18, 24),
            vv_blocks=0,
            pos_interpolation="bilinear",
            tap_cls=True,
            tap_output="residual",
        )
