"""Attention adapter of AF-CLIP (paper sec. 4.1, Eqs. 3–4): pre-LayerNorm multi-head self-attention.

    x = LN(a);  Q = x·W_Q,  K = x·W_K,  V = x·W_V                       (3)
    ã = [softmax(Q_h·K_hᵀ / √e)·V_h]_{h=1..H} · W_O + b_O                 (4)

Unlike a transformer block there is **no residual connection and no MLP**: the adapted
tokens replace the input tokens (Eq. 4, ``ã = Attention(Q, K, V)·W_O``). The LayerNorm in
front, the bias-free ``W_Q, W_K, W_V`` and the biased ``W_O`` follow the official code
(``Faustinaqq/AF-CLIP`` at ``bb7edec``, ``clip/adaptor.py``: ``Adaptor`` →
``BasicTransformerBlock`` → ``CrossAttention`` used as self-attention, 8 heads × 64
channels); the paper writes only Eqs. 3–4. Every token, the CLS token included, attends
to every token of the same view.

Shape legend: ``T`` tokens (``1 + N`` with the CLS token first, though the adapter treats
them alike), ``D`` width of the tokens (the ViT residual stream: 1024 for ViT-L/14),
``I`` inner attention width (512), ``H`` heads, ``e = I / H`` channels per head.

The function :func:`self_attention_adapter` does the maths on explicit weights; the module
:class:`AttentionAdapter` holds them (PyTorch default initialisation, as in the official
code) and loads the released checkpoints after
:meth:`AttentionAdapter.convert_official_state_dict`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from resad_kit.ops._validation import (
    check_number,
    check_positive_int,
    check_tensor,
    checks_enabled,
)

__all__ = ["AttentionAdapter", "self_attention_adapter"]

#: Official ``Adaptor`` key → key of :class:`AttentionAdapter` (``to_out`` is a
#: ``Sequential(Linear, Dropout)`` in the official code, a plain ``Linear`` here).
OFFICIAL_KEYS: dict[str, str] = {
    "attention.norm.weight": "norm.weight",
    "attention.norm.bias": "norm.bias",
    "attention.attn.to_q.weight": "to_q.weight",
    "attention.attn.to_k.weight": "to_k.weight",
    "attention.attn.to_v.weight": "to_v.weight",
    "attention.attn.to_out.0.weight": "to_out.weight",
    "attention.attn.to_out.0.bias": "to_out.bias",
}


def _attention_adapter_core(
    tokens: Tensor,
    norm_weight: Tensor | None,
    norm_bias: Tensor | None,
    q_weight: Tensor,
    k_weight: Tensor,
    v_weight: Tensor,
    out_weight: Tensor,
    out_bias: Tensor | None,
    heads: int,
    eps: float,
) -> Tensor:
    """:func:`self_attention_adapter` without input checks."""
    x = F.layer_norm(tokens, tokens.shape[-1:], norm_weight, norm_bias, eps)
    q, k, v = (
        rearrange(F.linear(x, w), "... t (h e) -> ... h t e", h=heads)
        for w in (q_weight, k_weight, v_weight)
    )
    # softmax(q·kᵀ / sqrt(e))·v per head: the scale is SDPA's default 1/sqrt(e).
    out = F.scaled_dot_product_attention(q, k, v)
    return F.linear(rearrange(out, "... h t e -> ... t (h e)"), out_weight, out_bias)


def _check_weight(fn: str, name: str, w: object, shape: tuple[int, ...], doc: str) -> None:
    w = check_tensor(fn, name, w, ndim=len(shape), shape_doc=doc)
    if tuple(w.shape) != shape:
        raise ValueError(f"{fn}: `{name}` must have shape {doc} = {shape}; got {tuple(w.shape)}")


def self_attention_adapter(
    tokens: Tensor,
    norm_weight: Tensor | None,
    norm_bias: Tensor | None,
    q_weight: Tensor,
    k_weight: Tensor,
    v_weight: Tensor,
    out_weight: Tensor,
    out_bias: Tensor | None = None,
    *,
    heads: int = 8,
    eps: float = 1e-5,
) -> Tensor:
    r"""AF-CLIP's attention adapter on explicit weights (Eqs. 3–4; no residual, no MLP).

    .. math::

        x = \mathrm{LN}(a),\quad
        \tilde a = \big[\mathrm{softmax}(x W_{Q,h} (x W_{K,h})^\top/\sqrt{e})\, x W_{V,h}
        \big]_{h=1..H} W_O^\top + b_O

    Weights are in ``nn.Linear`` layout (``out_features × in_features``): ``x @ W.T``.

    Args:
        tokens: the tokens ``a`` of one view (CLS and patches alike).
        norm_weight, norm_bias: affine LayerNorm parameters (``None``: no affine part).
        q_weight, k_weight, v_weight: ``W_Q, W_K, W_V`` (no bias, official code).
        out_weight, out_bias: ``W_O`` and its bias (``None``: no bias).
        heads: number of heads ``H``; must divide ``I``.
        eps: LayerNorm epsilon (PyTorch's default ``1e-5``, as in the official code).

    Returns:
        The adapted tokens ``ã`` (replace the input; nothing is added back).

    Shape:
        - tokens: ``(..., T, D)``
        - norm_weight, norm_bias: ``(D,)``; q/k/v_weight: ``(I, D)``; out_weight: ``(D, I)``;
          out_bias: ``(D,)``
        - output: ``(..., T, D)``

    Raises:
        TypeError: a tensor argument is not a tensor.
        ValueError: wrong shapes, ``heads`` not a positive divisor of ``I``, a
            non-positive ``eps``, or ``tokens`` holding NaN/inf.

    Example:
        >>> import torch
        >>> from resad_kit.nn import self_attention_adapter
        >>> g = torch.Generator().manual_seed(0)
        >>> d, i = 8, 4
        >>> wq, wk, wv = (torch.randn(i, d, generator=g) for _ in range(3))
        >>> wo = torch.randn(d, i, generator=g)
        >>> a = torch.randn(2, 5, d, generator=g)  # (B, T, D)
        >>> out = self_attention_adapter(a, None, None, wq, wk, wv, wo, heads=2)
        >>> out.shape
        torch.Size([2, 5, 8])
        >>> zero = self_attention_adapter(a, None, None, wq, wk, wv, torch.zeros(d, i), heads=2)
        >>> bool((zero == 0).all())  # no residual: W_O = 0 gives 0, not `a`
        True
    """
    fn = "self_attention_adapter"
    check_positive_int(fn, "heads", heads)
    check_number(fn, "eps", eps, minimum=0.0, strict=True)
    if checks_enabled():
        x = check_tensor(fn, "tokens", tokens, min_ndim=2, shape_doc="(..., T, D)", finite=True)
        d = x.shape[-1]
        q = check_tensor(fn, "q_weight", q_weight, ndim=2, shape_doc="(I, D)")
        inner = q.shape[0]
        if q.shape[1] != d:
            raise ValueError(
                f"{fn}: `q_weight` must have shape (I, D) with D = {d} (last dim of `tokens`); "
                f"got {tuple(q.shape)}"
            )
        for name, w in (("k_weight", k_weight), ("v_weight", v_weight)):
            _check_weight(fn, name, w, (inner, d), "(I, D)")
        _check_weight(fn, "out_weight", out_weight, (d, inner), "(D, I)")
        for name, w in (("norm_weight", norm_weight), ("norm_bias", norm_bias)):
            if w is not None:
                _check_weight(fn, name, w, (d,), "(D,)")
        if out_bias is not None:
            _check_weight(fn, "out_bias", out_bias, (d,), "(D,)")
        if inner % heads:
            raise ValueError(f"{fn}: `heads`={heads} must divide the inner width I={inner}")
    return _attention_adapter_core(
        tokens, norm_weight, norm_bias, q_weight, k_weight, v_weight, out_weight, out_bias,
        heads, eps,
    )  # fmt: skip


class AttentionAdapter(nn.Module):
    r"""AF-CLIP's adapter ``H_a`` (Eqs. 3–4): LayerNorm → H-head self-attention → ``W_O``.

    .. math::

        \tilde a = \mathrm{Attention}(\mathrm{LN}(a) W_Q,\ \mathrm{LN}(a) W_K,\
        \mathrm{LN}(a) W_V)\cdot W_O + b_O

    **No residual and no MLP**: the output replaces the tokens. Submodules: ``norm``
    (``LayerNorm(D)``, eps ``1e-5``), ``to_q``, ``to_k``, ``to_v`` (``Linear(D → I)``, no
    bias), ``to_out`` (``Linear(I → D)`` with bias), all with PyTorch's default init as in
    the official code. AF-CLIP shares one adapter over its 12 views (4 layers × 3
    windows). ``D = 1024, I = 512`` (ViT-L/14) gives 2,100,224 parameters; the paper's
    Table 5 count 2,109,440 adds the 12 × 768 prompt context of
    :class:`~resad_kit.clip.LearnablePrompts`.

    Args:
        dim: token width ``D``.
        inner_dim: attention width ``I`` (official: 8 heads × 64 = 512, whatever ``D``).
        heads: number of heads ``H``; must divide ``inner_dim``.

    Shape:
        - tokens: ``(..., T, D)``
        - output: ``(..., T, D)``

    Raises:
        ValueError: for a non-positive ``dim``/``inner_dim``/``heads`` or ``heads`` not
            dividing ``inner_dim``; in ``forward``, when the last dimension of ``tokens``
            is not ``D`` or it holds NaN/inf.

    Example:
        >>> import torch
        >>> from resad_kit.nn import AttentionAdapter
        >>> adapter = AttentionAdapter()  # ViT-L/14: D = 1024, 8 heads × 64
        >>> sum(p.numel() for p in adapter.parameters())
        2100224
        >>> small = AttentionAdapter(dim=16, inner_dim=8, heads=2)
        >>> small(torch.randn(2, 1 + 9, 16)).shape  # CLS + a 3×3 grid, per view
        torch.Size([2, 10, 16])
    """

    def __init__(self, dim: int = 1024, inner_dim: int = 512, heads: int = 8) -> None:
        super().__init__()
        fn = type(self).__name__
        check_positive_int(fn, "dim", dim)
        check_positive_int(fn, "inner_dim", inner_dim)
        check_positive_int(fn, "heads", heads)
        if inner_dim % heads:
            raise ValueError(f"{fn}: `heads`={heads} must divide `inner_dim`={inner_dim}")
        self.dim = dim
        self.inner_dim = inner_dim
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_k = nn.Linear(dim, inner_dim, bias=False)
        self.to_v = nn.Linear(dim, inner_dim, bias=False)
        self.to_out = nn.Linear(inner_dim, dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, inner_dim={self.inner_dim}, heads={self.heads}, residual=False"

    def forward(self, tokens: Tensor) -> Tensor:
        """Return the adapted tokens ``H_a(tokens)``; see the class docstring."""
        if checks_enabled():
            fn = type(self).__name__
            x = check_tensor(fn, "tokens", tokens, min_ndim=2, shape_doc="(..., T, D)", finite=True)
            if x.shape[-1] != self.dim:
                raise ValueError(
                    f"{fn}: `tokens` must have shape (..., T, {self.dim}); "
                    f"got shape {tuple(x.shape)}"
                )
        return _attention_adapter_core(
            tokens,
            self.norm.weight,
            self.norm.bias,
            self.to_q.weight,
            self.to_k.weight,
            self.to_v.weight,
            self.to_out.weight,
            self.to_out.bias,
            self.heads,
            self.norm.eps,
        )

    @staticmethod
    def convert_official_state_dict(
        state_dict: Mapping[str, Tensor] | nn.Module,
        *,
        dim: int | None = None,
        inner_dim: int | None = None,
    ) -> dict[str, Tensor]:
        """Convert the official AF-CLIP adapter (``weight/{mvtec,visa}_adaptor.pt``) to our keys.

        The official ``Adaptor`` (``Faustinaqq/AF-CLIP``, ``clip/adaptor.py``) nests the
        layers as ``attention.norm``, ``attention.attn.to_q/to_k/to_v`` and
        ``attention.attn.to_out.0`` (a ``Linear`` inside ``Sequential(Linear, Dropout)``);
        this module has them at the top as ``norm``, ``to_q``, ``to_k``, ``to_v``,
        ``to_out``. The released files hold the whole pickled ``Adaptor`` module (the
        official code assigns ``torch.load(...)`` to ``model.adaptor``), which
        ``weights_only=True`` refuses; ``resad_kit.engine.checkpoint_afclip.read_official_adaptor``
        reads its state dict without running the pickle. The unpickled module itself is
        accepted too (its ``state_dict()`` is used). Reading files is left to the caller.

        Args:
            state_dict: the official adapter's state dict (exactly its 7 keys), or the
                official module itself.
            dim: expected width ``D`` (``None``: taken from ``attention.norm.weight``).
            inner_dim: expected width ``I`` (``None``: taken from ``to_q``).

        Returns:
            ``{key: tensor}`` for ``AttentionAdapter(D, I, heads)``; load it with
            ``load_state_dict`` (strict). The tensors are the input's, not copies.

        Raises:
            TypeError: ``state_dict`` is neither a mapping nor a module, or a value is
                not a tensor.
            ValueError: missing or unexpected keys, or shapes that do not fit one
                ``(D, I)`` adapter (or the given ``dim``/``inner_dim``).

        Example:
            >>> import torch
            >>> from resad_kit.nn import AttentionAdapter
            >>> d, i = 16, 8
            >>> official = {
            ...     "attention.norm.weight": torch.ones(d),
            ...     "attention.norm.bias": torch.zeros(d),
            ...     "attention.attn.to_q.weight": torch.randn(i, d),
            ...     "attention.attn.to_k.weight": torch.randn(i, d),
            ...     "attention.attn.to_v.weight": torch.randn(i, d),
            ...     "attention.attn.to_out.0.weight": torch.randn(d, i),
            ...     "attention.attn.to_out.0.bias": torch.zeros(d),
            ... }
            >>> converted = AttentionAdapter.convert_official_state_dict(official)
            >>> sorted(converted)
            ['norm.bias', 'norm.weight', 'to_k.weight', 'to_out.bias', 'to_out.weight',
             'to_q.weight', 'to_v.weight']
            >>> AttentionAdapter(d, i, heads=2).load_state_dict(converted)
            <All keys matched successfully>
        """
        fn = "AttentionAdapter.convert_official_state_dict"
        if isinstance(state_dict, nn.Module):
            state_dict = state_dict.state_dict()
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                f"{fn}: `state_dict` must be a mapping of str to tensors or the official "
                f"Adaptor module; got {type(state_dict).__name__}"
            )
        missing = sorted(set(OFFICIAL_KEYS) - set(state_dict))
        unexpected = sorted(str(k) for k in set(state_dict) - set(OFFICIAL_KEYS))
        if missing or unexpected:
            raise ValueError(
                f"{fn}: `state_dict` must hold exactly the official Adaptor keys "
                f"{sorted(OFFICIAL_KEYS)}; missing {missing}, unexpected {unexpected}"
            )
        for key in OFFICIAL_KEYS:
            if not isinstance(state_dict[key], Tensor):
                raise TypeError(
                    f"{fn}: `state_dict[{key!r}]` must be a tensor; "
                    f"got {type(state_dict[key]).__name__}"
                )
        check_positive_int(fn, "dim", dim, optional=True)
        check_positive_int(fn, "inner_dim", inner_dim, optional=True)
        d = dim if dim is not None else _first_dim(state_dict["attention.norm.weight"])
        i = inner_dim if inner_dim is not None else _first_dim(
            state_dict["attention.attn.to_q.weight"]
        )  # fmt: skip
        expected = {
            "attention.norm.weight": (d,),
            "attention.norm.bias": (d,),
            "attention.attn.to_q.weight": (i, d),
            "attention.attn.to_k.weight": (i, d),
            "attention.attn.to_v.weight": (i, d),
            "attention.attn.to_out.0.weight": (d, i),
            "attention.attn.to_out.0.bias": (d,),
        }
        for key, shape in expected.items():
            got = tuple(state_dict[key].shape)
            if got != shape:
                raise ValueError(
                    f"{fn}: `state_dict[{key!r}]` must have shape {shape} (D={d}, I={i}); got {got}"
                )
        return {OFFICIAL_KEYS[key]: state_dict[key] for key in OFFICIAL_KEYS}


def _first_dim(t: Tensor) -> int:
    return int(t.shape[0]) if t.ndim else 0
