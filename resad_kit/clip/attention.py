"""V-V (value-value) self-attention over a pretrained attention module (Res²CLIP sec. 3, 4.1).

V-V attention (Li et al., CLIP Surgery; AnomalyCLIP's DPAM) reuses the pretrained
projections of a CLIP attention layer but attends values to values:

    v     = LN_1(x) W_v^T + b_v                         (per head, head dim d)
    A_vv  = softmax(v vᵀ / sqrt(d))
    o_vv  = OutProj(A_vv v)

The weights come from an ``nn.MultiheadAttention`` with a packed input projection
(``in_proj_weight`` ``(3C, C)``, rows ``[W_q; W_k; W_v]``), as in every open_clip
and OpenAI ViT block. No dropout is applied (the backbone is frozen).

Shape legend: ``B`` batch, ``L`` tokens (``1 + N``: CLS then the patches), ``C``
width of the transformer, ``H`` heads, ``d = C / H``.
"""

from __future__ import annotations

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from resad_kit.ops._validation import check_tensor

__all__ = ["ATTENTION_KERNELS", "attend", "dual_attention", "self_attention", "vv_attention"]

#: ``"sdpa"``: ``F.scaled_dot_product_attention`` (fused, the fast default); ``"math"``:
#: the explicit ``softmax(q·kᵀ/sqrt(d))·v`` of the official Res²CLIP code.
ATTENTION_KERNELS = ("sdpa", "math")


def _check(fn: str, x: object, attn: object) -> Tensor:
    if not isinstance(attn, nn.MultiheadAttention):
        raise TypeError(
            f"{fn}: `attn` must be a torch.nn.MultiheadAttention; got {type(attn).__name__}"
        )
    if attn.in_proj_weight is None:
        raise ValueError(
            f"{fn}: `attn` must have a packed input projection (`in_proj_weight`); "
            "separate q/k/v projections (kdim/vdim != embed_dim) are not supported"
        )
    x = check_tensor(fn, "x", x, ndim=3, shape_doc="(B, L, C)")
    if x.shape[-1] != attn.embed_dim:
        raise ValueError(
            f"{fn}: `x` must have shape (B, L, C) with C = attn.embed_dim = {attn.embed_dim}; "
            f"got shape {tuple(x.shape)}"
        )
    return x


def _heads(t: Tensor, heads: int) -> Tensor:
    return rearrange(t, "b l (h d) -> b h l d", h=heads)


def _merge(t: Tensor) -> Tensor:
    return rearrange(t, "b h l d -> b l (h d)")


def _in_proj(x: Tensor, attn: nn.MultiheadAttention, rows: slice) -> Tensor:
    bias = attn.in_proj_bias[rows] if attn.in_proj_bias is not None else None
    return F.linear(x, attn.in_proj_weight[rows], bias)


def attend(q: Tensor, k: Tensor, v: Tensor, kernel: str = "sdpa") -> Tensor:
    """Scaled dot-product attention ``softmax(q kᵀ / sqrt(d)) v`` by the chosen kernel.

    ``"sdpa"`` calls :func:`torch.nn.functional.scaled_dot_product_attention`; ``"math"``
    computes the scores, the softmax and the product explicitly, as the official
    Res²CLIP code does. The two agree to float32 rounding (docs/backbone.md gives the
    measured difference); ``"math"`` materialises the ``(L, L)`` score matrix.

    Args:
        q, k, v: per-head queries, keys and values.
        kernel: one of :data:`ATTENTION_KERNELS`.

    Returns:
        The attention output, like ``v``.

    Shape:
        - q, k, v: ``(B, H, L, d)``
        - output: ``(B, H, L, d)``

    Example:
        >>> import torch
        >>> from resad_kit.clip.attention import attend
        >>> q, k, v = torch.randn(3, 1, 2, 5, 8).unbind(0)
        >>> torch.allclose(attend(q, k, v, "math"), attend(q, k, v), atol=1e-6)
        True
    """
    if kernel == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    if kernel == "math":
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        return scores.softmax(dim=-1) @ v
    raise ValueError(f"attend: `kernel` must be one of {ATTENTION_KERNELS}; got {kernel!r}")


def vv_attention(x: Tensor, attn: nn.MultiheadAttention, kernel: str = "sdpa") -> Tensor:
    """V-V self-attention with the pretrained weights of ``attn``.

    ``out_proj(softmax(v vᵀ / sqrt(d)) v)`` per head, with ``v`` the value
    projection of ``x``. ``x`` is the block's *normalised* input (``LN_1`` of the
    ordinary stream); the caller adds the result to the V-V stream.

    Args:
        x: token features, batch first (whatever ``attn.batch_first`` says).
        attn: a pretrained attention layer (packed ``in_proj_weight``, ``num_heads``
            heads, ``out_proj`` with its bias).
        kernel: the attention kernel (see :func:`attend`).

    Returns:
        The V-V attention output, in the dtype autocast or ``x`` gives.

    Shape:
        - x: ``(B, L, C)``
        - output: ``(B, L, C)``

    Paper: sec. 3 and 4.1 (V-V attention [18]).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from resad_kit.clip import vv_attention
        >>> _ = torch.manual_seed(0)
        >>> attn = nn.MultiheadAttention(16, num_heads=4, batch_first=True)
        >>> x = torch.randn(2, 5, 16)
        >>> vv_attention(x, attn).shape
        torch.Size([2, 5, 16])
    """
    x = _check("vv_attention", x, attn)
    c = attn.embed_dim
    v = _heads(_in_proj(x, attn, slice(2 * c, 3 * c)), attn.num_heads)
    out = attend(v, v, v, kernel)
    return attn.out_proj(_merge(out))


def self_attention(x: Tensor, attn: nn.MultiheadAttention, kernel: str = "sdpa") -> Tensor:
    """Ordinary self-attention ``out_proj(softmax(q kᵀ/sqrt(d)) v)`` of a pretrained layer.

    What ``attn(x, x, x, need_weights=False)[0]`` computes, by the chosen kernel.

    Shape:
        - x: ``(B, L, C)``
        - output: ``(B, L, C)``
    """
    c, heads = attn.embed_dim, attn.num_heads
    q, k, v = (_heads(t, heads) for t in _in_proj(x, attn, slice(0, 3 * c)).chunk(3, dim=-1))
    return attn.out_proj(_merge(attend(q, k, v, kernel)))


def dual_attention(
    x: Tensor, attn: nn.MultiheadAttention, kernel: str = "sdpa"
) -> tuple[Tensor, Tensor]:
    """Ordinary and V-V attention of one block from one shared input projection.

    Returns ``(o_o, o_vv)`` with ``o_o = out_proj(softmax(q kᵀ/sqrt(d)) v)`` (what
    ``attn(x, x, x)`` computes) and ``o_vv`` as in :func:`vv_attention`. The input
    projection is computed once, so a dual-path block costs one extra attention
    and one extra output projection, not a second block. ``o_vv`` is computed by
    the same operations as :func:`vv_attention`, so the two agree bit for bit.

    Args:
        x: the block's normalised input ``LN_1(x_o)``.
        attn: a pretrained attention layer (see :func:`vv_attention`).
        kernel: the attention kernel (see :func:`attend`).

    Returns:
        ``(o_o, o_vv)``, the ordinary and the V-V attention outputs.

    Shape:
        - x: ``(B, L, C)``
        - output: two ``(B, L, C)`` tensors

    Source: the official code's dual-path block (``clip_lib/AnomalyCLIP.py``, taken from
    AnomalyCLIP); the paper does not describe it.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from resad_kit.clip import dual_attention, vv_attention
        >>> _ = torch.manual_seed(0)
        >>> attn = nn.MultiheadAttention(16, num_heads=4, batch_first=True).eval()
        >>> x = torch.randn(2, 5, 16)
        >>> o_o, o_vv = dual_attention(x, attn)
        >>> torch.allclose(o_o, attn(x, x, x, need_weights=False)[0], atol=1e-6)
        True
        >>> torch.allclose(o_vv, vv_attention(x, attn), atol=1e-6)
        True
    """
    x = _check("dual_attention", x, attn)
    c, heads = attn.embed_dim, attn.num_heads
    q, k = (_heads(t, heads) for t in _in_proj(x, attn, slice(0, 2 * c)).chunk(2, dim=-1))
    v = _heads(_in_proj(x, attn, slice(2 * c, 3 * c)), heads)  # as in vv_attention
    o_o = attn.out_proj(_merge(attend(q, k, v, kernel)))
    o_vv = attn.out_proj(_merge(attend(v, v, v, kernel)))
    return o_o, o_vv
