"""Shared helpers of the CLIP-backbone tests: independent reference implementations."""

from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.nn.functional as F
from torch import nn


def naive_vv_attention(x: torch.Tensor, attn: nn.MultiheadAttention) -> torch.Tensor:
    """softmax(v vᵀ · d^-½) v per head, with an explicit loop over heads (no SDPA, no einops)."""
    c, heads = attn.embed_dim, attn.num_heads
    d = c // heads
    v = x @ attn.in_proj_weight[2 * c :].T + attn.in_proj_bias[2 * c :]
    outs = []
    for h in range(heads):
        vh = v[..., h * d : (h + 1) * d]
        weights = torch.softmax(vh @ vh.transpose(-1, -2) / math.sqrt(d), dim=-1)
        outs.append(weights @ vh)
    return torch.cat(outs, dim=-1) @ attn.out_proj.weight.T + attn.out_proj.bias


def resize_table(table: torch.Tensor, source: int, target: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a (1 + s², C) positional table with plain reshape/permute."""
    c = table.shape[1]
    image = table[1:].reshape(source, source, c).permute(2, 0, 1).unsqueeze(0)
    out = F.interpolate(image, size=target, mode="bilinear", align_corners=False)
    return torch.cat([table[:1], out[0].permute(1, 2, 0).reshape(-1, c)])


def reference_features(
    model: nn.Module,
    images: torch.Tensor,
    *,
    layers: tuple[int, ...],
    vv_blocks: int,
    global_ln_post: bool,
    return_tap_cls: bool = False,
) -> tuple[list[torch.Tensor], torch.Tensor] | tuple[list[torch.Tensor], torch.Tensor, list]:
    """AnomalyCLIP's dual path (hito2448/Res2CLIP `clip_lib/AnomalyCLIP.py`) written out
    directly: open_clip blocks for the ordinary stream, the V-V stream added from LN_1 of the
    ordinary stream with no MLP, taps of the V-V stream.
    With ``return_tap_cls`` also the CLS row of every tap (through ``ln_post`` and ``proj``)."""
    vis = model.visual
    with torch.no_grad():
        x = vis.conv1(images)
        b, c, h, w = x.shape
        x = x.reshape(b, c, h * w).permute(0, 2, 1)
        table = vis.positional_embedding
        if table.shape[0] != 1 + h * w:
            table = resize_table(table, math.isqrt(table.shape[0] - 1), (h, w))
        x = torch.cat([vis.class_embedding.expand(b, 1, c), x], dim=1) + table
        x = vis.ln_pre(x)
        blocks = list(vis.transformer.resblocks)
        first_vv = len(blocks) - vv_blocks  # 0-based
        x_o, x_v, taps = x, None, {}
        for i, block in enumerate(blocks):
            if i >= first_vv:
                x_v = x_o if x_v is None else x_v
                x_v = x_v + naive_vv_attention(block.ln_1(x_o), block.attn)
            x_o = block(x_o)
            if i + 1 in layers:
                taps[i + 1] = x_o if x_v is None else x_v
        patches = [vis.ln_post(taps[layer]) @ vis.proj for layer in layers]
        cls = vis.ln_post(x_o[:, 0]) if global_ln_post else x_o[:, 0]
        if return_tap_cls:
            return [p[:, 1:] for p in patches], cls @ vis.proj, [p[:, 0] for p in patches]
        return [p[:, 1:] for p in patches], cls @ vis.proj


@pytest.fixture(scope="session")
def naive_vv():
    """The per-head-loop V-V attention reference."""
    return naive_vv_attention


@pytest.fixture(scope="session")
def reference():
    """The dual-path reference forward: ``reference(model, images, layers=..., ...)``."""
    return reference_features


@pytest.fixture(scope="session")
def resize():
    """The plain reshape/permute bilinear positional-table resize."""
    return resize_table


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to resolve or connect to a host fails at once."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access is disabled in this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
