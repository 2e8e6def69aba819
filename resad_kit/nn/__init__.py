"""Thin ``nn.Module`` wrappers that hold parameters: the adapters of Res²CLIP and AF-CLIP."""

from resad_kit.nn.adapters import GlobalAdapter, LocalConvAdapter, ResidualAdapter
from resad_kit.nn.attention_adapter import AttentionAdapter, self_attention_adapter
from resad_kit.nn.query_former import (
    QueryFormer,
    QueryFormerConfig,
    query_cross_attention,
    query_former_loss,
)
from resad_kit.nn.res2clip_adapters import Res2CLIPAdapters

__all__ = [
    "AttentionAdapter",
    "GlobalAdapter",
    "LocalConvAdapter",
    "QueryFormer",
    "QueryFormerConfig",
    "Res2CLIPAdapters",
    "ResidualAdapter",
    "query_cross_attention",
    "query_former_loss",
    "self_attention_adapter",
]
