"""What :class:`~resad_kit.clip.ClipBackbone` returns for a batch of images."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

__all__ = ["Features"]


class Features(NamedTuple):
    """What :class:`ClipBackbone` returns for a batch of images (all float32).

    Attributes:
        patches: one ``(B, N, D)`` tensor per tapped layer, in the order of
            ``backbone.layers``: projected patch tokens, CLS row dropped, row-major
            over the ``h×w`` grid. Not normalised. With
            ``BackboneConfig(tap_output="residual")`` the raw residual-stream tokens of
            the tapped blocks instead (no ``LN_post``, no ``proj``): ``(B, N, C)``.
        cls: ``(B, D)`` global image feature (projected in both tap modes). Not normalised.
        grid: the patch grid ``(h, w)`` with ``h·w = N``.
        tap_cls: with ``BackboneConfig(tap_cls=True)``, one tensor per tapped layer: that
            layer's CLS token in the form of the patches (``(B, D)`` through ``LN_post``
            and ``proj``, or the raw ``(B, C)`` with ``tap_output="residual"``);
            otherwise ``None``.

    Example:
        >>> import torch
        >>> from resad_kit.clip import ClipBackbone
        >>> backbone = ClipBackbone.tiny()
        >>> features = backbone(torch.zeros(2, 3, 64, 64))
        >>> [tuple(p.shape) for p in features.patches], tuple(features.cls.shape), features.grid
        ([(2, 64, 32), (2, 64, 32), (2, 64, 32), (2, 64, 32)], (2, 32), (8, 8))
    """

    patches: list[Tensor]
    cls: Tensor
    grid: tuple[int, int]
    tap_cls: list[Tensor] | None = None
