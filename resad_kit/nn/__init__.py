"""Thin ``nn.Module`` wrappers that hold parameters: the residual adapters of Res²CLIP."""

from resad_kit.nn.adapters import GlobalAdapter, LocalConvAdapter, ResidualAdapter
from resad_kit.nn.res2clip_adapters import Res2CLIPAdapters

__all__ = ["GlobalAdapter", "LocalConvAdapter", "Res2CLIPAdapters", "ResidualAdapter"]
