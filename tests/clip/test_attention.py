"""V-V attention and the dual-path attention (resad_kit.clip.attention; AnomalyCLIP's,
as in hito2448/Res2CLIP `clip_lib/AnomalyCLIP.py`)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from resad_kit.clip import dual_attention, vv_attention


def _attn(width: int, heads: int, seed: int = 0, dtype: torch.dtype = torch.float64):
    torch.manual_seed(seed)
    attn = nn.MultiheadAttention(width, heads, batch_first=True).eval().to(dtype)
    with torch.no_grad():  # non-zero biases, so that the test sees them
        attn.in_proj_bias.normal_()
        attn.out_proj.bias.normal_()
    return attn


@settings(max_examples=20)
@given(
    batch=st.integers(1, 3),
    tokens=st.integers(1, 9),
    heads=st.sampled_from([1, 2, 4]),
    head_dim=st.sampled_from([2, 8]),
    seed=st.integers(0, 2**16),
)
def test_vv_attention_matches_a_per_head_loop(naive_vv, batch, tokens, heads, head_dim, seed):
    attn = _attn(heads * head_dim, heads, seed)
    x = torch.randn(batch, tokens, heads * head_dim, dtype=torch.float64)
    torch.testing.assert_close(vv_attention(x, attn), naive_vv(x, attn))


def test_dual_attention_ordinary_path_is_the_module_and_vv_path_is_vv_attention():
    attn = _attn(16, 4)
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    o_o, o_vv = dual_attention(x, attn)
    torch.testing.assert_close(o_o, attn(x, x, x, need_weights=False)[0])
    assert torch.equal(o_vv, vv_attention(x, attn))  # same operations, bit for bit


def test_vv_attention_uses_the_values_not_the_queries_or_keys():
    attn = _attn(8, 2)
    x = torch.randn(1, 5, 8, dtype=torch.float64)
    vv_before, (ordinary_before, _) = vv_attention(x, attn), dual_attention(x, attn)
    with torch.no_grad():
        attn.in_proj_weight[:16].normal_()  # W_q and W_k
        attn.in_proj_bias[:16].normal_()
    assert torch.equal(vv_attention(x, attn), vv_before)
    assert not torch.allclose(dual_attention(x, attn)[0], ordinary_before)  # q, k matter there


def test_vv_attention_is_token_permutation_equivariant():
    attn = _attn(8, 2)
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    perm = torch.randperm(6)
    torch.testing.assert_close(vv_attention(x[:, perm], attn), vv_attention(x, attn)[:, perm])


def test_vv_attention_follows_autocast():
    attn = _attn(16, 2, dtype=torch.float32)
    x = torch.randn(2, 5, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vv_attention(x, attn)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), vv_attention(x, attn), rtol=0.05, atol=0.05)


def test_errors_name_the_argument():
    attn = _attn(8, 2, dtype=torch.float32)
    with pytest.raises(TypeError, match=r"`attn` must be a torch\.nn\.MultiheadAttention"):
        vv_attention(torch.randn(1, 2, 8), nn.Linear(8, 8))
    with pytest.raises(ValueError, match=r"`x` must have 3 dimensions \(B, L, C\)"):
        vv_attention(torch.randn(2, 8), attn)
    with pytest.raises(ValueError, match=r"C = attn.embed_dim = 8; got shape \(1, 2, 6\)"):
        dual_attention(torch.randn(1, 2, 6), attn)
    separate = nn.MultiheadAttention(8, 2, kdim=4, vdim=4, batch_first=True)
    with pytest.raises(ValueError, match="packed input projection"):
        vv_attention(torch.randn(1, 2, 8), separate)
