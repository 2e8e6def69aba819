"""Thin ``nn.Module`` wrappers that hold parameters: the residual adapters of Res²CLIP."""

from resad_kit.nn.adapters import (
    GlobalAdapter,
    LocalConvAdapter,
    Res2CLIPAdapters,
    ResidualAdapter,
)

__all__ = ["GlobalAdapter", "LocalConvAdapter", "Res2CLIPAdapters", "ResidualAdapter"]
