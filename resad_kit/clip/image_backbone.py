"""A backbone whose "features" are the images themselves, for methods that read images.

FineGrainedAD reads its frozen model through two views of its own (V-V patch tokens and
the ordinary stream of two blocks) and clusters a 4× upsampled copy of its references, so
cached :class:`~resad_kit.clip.Features` of one backbone configuration are not enough.
:class:`ImageBackbone` lets such a method run through the engine's
:class:`~resad_kit.engine.FeatureCache` and evaluation protocol anyway (the analogue of
:class:`~resad_kit.clip.windows.WindowBackbone` for WinCLIP): its ``forward`` packs the
preprocessed pixels into :class:`~resad_kit.clip.Features` and :meth:`ImageBackbone.unpack`
gives them back.

Shape legend: ``B`` images, ``p`` patch side, ``h×w`` patch grid, ``N = h·w``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from einops import rearrange
from torch import Tensor

from resad_kit.clip.backbone import ClipBackbone
from resad_kit.clip.features import Features

__all__ = ["ImageBackbone"]


class ImageBackbone(ClipBackbone):
    """A :class:`ClipBackbone` whose ``forward`` packs the input pixels into :class:`Features`.

    ``Features.patches`` is one tensor ``(B, N, 3·p·p)``: the image cut into ``p×p``
    patches, row-major over the ``h×w`` grid, each flattened channel-first; ``Features.cls``
    is ``(B, D)`` zeros (no global feature). ``model_name`` gets the suffix ``+images`` (the
    cache key and the result tables tell it from a plain backbone). The model is not run:
    the method that reads the images runs it. Build it with :meth:`wrap` (shares the frozen
    model, config and labels of a backbone). A feature cache stores the pixels in its
    ``store_dtype`` (float32 in memory by default; float16 on disk rounds them).

    Example:
        >>> import torch
        >>> from resad_kit.clip import ClipBackbone
        >>> from resad_kit.clip.image_backbone import ImageBackbone
        >>> packed = ImageBackbone.wrap(ClipBackbone.tiny())
        >>> images = torch.randn(2, 3, 64, 64)
        >>> features = packed(images)
        >>> features.patches[0].shape, features.grid, packed.tap_dim
        (torch.Size([2, 64, 192]), (8, 8), 192)
        >>> torch.equal(packed.unpack(features), images)
        True
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config = dataclasses.replace(self.config, tap_cls=False)
        self.layers = (self.depth,)  # one packed tensor
        self.model_name = f"{self.model_name}+images"

    @classmethod
    def wrap(cls, backbone: ClipBackbone) -> ImageBackbone:
        """An :class:`ImageBackbone` over ``backbone``'s frozen model, config and labels."""
        return cls(**backbone._construction_kwargs())

    @property
    def tap_dim(self) -> int:
        """Channels of a packed patch: ``3·p·p``."""
        return 3 * self.patch_size * self.patch_size

    def forward(self, images: Tensor) -> Features:  # type: ignore[override]
        """The packed :class:`Features` of ``images`` ``(B, 3, H, W)`` (see the class docs)."""
        x = self._check_images(images).float()
        p = self.patch_size
        h, w = x.shape[-2] // p, x.shape[-1] // p
        patches = rearrange(x, "b c (h p) (w q) -> b (h w) (c p q)", p=p, q=p)
        return Features([patches], x.new_zeros(x.shape[0], self.embed_dim), (h, w))

    def unpack(self, features: Features) -> Tensor:
        """The ``(B, 3, H, W)`` images packed in ``features``.

        Raises:
            ValueError: ``features`` are not this backbone's packed layout.
        """
        h, w = features.grid
        p = self.patch_size
        if (
            len(features.patches) != 1
            or features.patches[0].ndim != 3
            or tuple(features.patches[0].shape[1:]) != (h * w, self.tap_dim)
        ):
            raise ValueError(
                "ImageBackbone.unpack: `features` must hold one packed tensor (B, "
                f"{h * w}, {self.tap_dim}) (grid {(h, w)}, patch {p}); got "
                f"{[tuple(t.shape) for t in features.patches]}"
            )
        return rearrange(
            features.patches[0], "b (h w) (c p q) -> b c (h p) (w q)", h=h, w=w, p=p, q=p
        )
