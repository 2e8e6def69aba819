"""FineGrainedAD's Query Former: learnable queries, two cross-attentions, a linear fusion.

The Query Former (paper §3.4) turns the ``G`` prompt groups of a category (components,
image, background), each with a normal feature ``p_n^g`` and an abnormal feature ``p_a^g``,
into one "intrinsic" feature ``q_g`` per group, used at inference to route every patch
token to its group (``g* = argmax_g ⟨z, q_g⟩``, Eqs. 4-5):

``h_n = CrossAttn_n(Q, P_n)``, ``h_a = CrossAttn_a(Q, P_a)``, ``q = W_f [h_n ; h_a] + b_f``

with learnable queries ``Q ∈ ℝ^{G×D}`` (𝒩(0, 0.02²)) and multi-head cross-attention
``CrossAttn(Q, P) = W_o · MHA(W_q Q + b_q, W_k P + b_k, W_v P + b_v) + b_o`` (no layer norm,
no residual, as ``QCrossAttention`` of the released code, RetoFan233/FineGrainedAD,
``PromptAD/CLIPAD/transformer.py``, commit aa6b041).

Two behaviours, :class:`QueryFormerConfig` presets:

* ``official_code()`` — the released code feeds query ``g`` and group ``g`` as a batch of
  one-token sequences, so every query attends to its own group only; the softmax over a
  single key is 1 and ``q_g = W_f[W_o(W_v p_n^g + b_v) + b_o ; …] + b_f`` does not depend on
  the queries at all. The released segmentation loss has no Query Former term, so the
  module stays at its random initialisation (``loss=False``).
* ``paper()`` — every query attends to all ``G`` groups (``scope="all"``) and training
  adds :func:`query_former_loss` (the paper: maximise the cosine of ``q_g`` to both prompt
  features of its group).

Shape legend: ``G`` groups, ``D`` channels, ``H`` heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from resad_kit.ops._validation import check_tensor, checks_enabled

__all__ = ["QueryFormer", "QueryFormerConfig", "query_cross_attention", "query_former_loss"]

Scope = Literal["own", "all"]


@dataclass(frozen=True)
class QueryFormerConfig:
    """Settings of :class:`QueryFormer`.

    Attributes:
        num_heads: attention heads ``H`` (code: 8); must divide ``D``.
        scope: ``"own"``: query ``g`` attends to group ``g`` only (released code, where the
            queries then have no effect); ``"all"``: every query attends to all groups
            (paper §3.4).
        loss: whether the method trains the module with :func:`query_former_loss` (paper)
            or leaves it at its random initialisation (released code).
        query_std: standard deviation of the query initialisation (code: 0.02).

    Example:
        >>> from resad_kit.nn import QueryFormerConfig
        >>> QueryFormerConfig.official_code().scope, QueryFormerConfig.paper().loss
        ('own', True)
    """

    num_heads: int = 8
    scope: Scope = "own"
    loss: bool = False
    query_std: float = 0.02

    def __post_init__(self) -> None:
        if isinstance(self.num_heads, bool) or not isinstance(self.num_heads, int):
            raise ValueError(
                f"QueryFormerConfig: `num_heads` must be an int; got {self.num_heads!r}"
            )
        if self.num_heads < 1:
            raise ValueError(f"QueryFormerConfig: `num_heads` must be ≥ 1; got {self.num_heads}")
        if self.scope not in ("own", "all"):
            raise ValueError(
                f"QueryFormerConfig: `scope` must be 'own' or 'all'; got {self.scope!r}"
            )
        if not isinstance(self.loss, bool):
            raise ValueError(f"QueryFormerConfig: `loss` must be True or False; got {self.loss!r}")
        if not self.query_std > 0:
            raise ValueError(f"QueryFormerConfig: `query_std` must be > 0; got {self.query_std!r}")

    @classmethod
    def official_code(cls) -> QueryFormerConfig:
        """The released code: own-group attention, no Query Former loss."""
        return cls(num_heads=8, scope="own", loss=False)

    @classmethod
    def paper(cls) -> QueryFormerConfig:
        """The paper (§3.4): queries attend to all groups, trained by :func:`query_former_loss`."""
        return cls(num_heads=8, scope="all", loss=True)


def query_cross_attention(
    query: torch.Tensor,
    context: torch.Tensor,
    q_proj: nn.Linear,
    kv_proj: nn.Linear,
    out_proj: nn.Linear,
    *,
    num_heads: int,
    scope: Scope,
) -> torch.Tensor:
    """Multi-head cross-attention of ``G`` queries over ``G`` group features (no norm/residual).

    ``out_g = W_o · concat_h Σ_j a^h_gj v^h_j + b_o`` with
    ``a^h_g = softmax_j(⟨q^h_g, k^h_j⟩/√d_h)`` over ``j ∈ {g}`` (``scope="own"``) or all
    groups (``scope="all"``); ``q = W_q Q + b_q``,
    ``[k; v] = W_kv P + b_kv``, ``d_h = D / H``.

    Args:
        query: ``(G, D)`` queries.
        context: ``(G, D)`` group features (keys and values).
        q_proj: ``Linear(D, D)``.
        kv_proj: ``Linear(D, 2D)``: keys are the first ``D`` outputs, values the last ``D``.
        out_proj: ``Linear(D, D)``.
        num_heads: ``H``, dividing ``D``.
        scope: ``"own"`` or ``"all"``.

    Returns:
        ``(G, D)``.

    Raises:
        TypeError: ``query`` or ``context`` not a tensor.
        ValueError: shapes that differ or are not ``(G, D)``, ``H`` not dividing ``D``, an
            unknown ``scope``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from resad_kit.nn import query_cross_attention
        >>> g = torch.manual_seed(0)
        >>> q, kv, o = nn.Linear(4, 4), nn.Linear(4, 8), nn.Linear(4, 4)
        >>> p = torch.randn(3, 4)
        >>> own = query_cross_attention(torch.randn(3, 4), p, q, kv, o, num_heads=2, scope="own")
        >>> value = o(kv(p)[:, 4:])  # one key per query: the attention weight is 1
        >>> torch.allclose(own, value)
        True
    """
    if checks_enabled():
        fn = "query_cross_attention"
        check_tensor(fn, "query", query, ndim=2, shape_doc="(G, D)")
        check_tensor(fn, "context", context, ndim=2, shape_doc="(G, D)")
        if context.shape != query.shape:
            raise ValueError(
                f"{fn}: `context` must have the shape of `query` {tuple(query.shape)}; "
                f"got {tuple(context.shape)}"
            )
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
            raise ValueError(f"{fn}: `num_heads` must be a positive int; got {num_heads!r}")
        if query.shape[-1] % num_heads:
            raise ValueError(f"{fn}: `num_heads`={num_heads} must divide D={query.shape[-1]}")
        if scope not in ("own", "all"):
            raise ValueError(f"{fn}: `scope` must be 'own' or 'all'; got {scope!r}")
    q = rearrange(q_proj(query), "g (h d) -> h g d", h=num_heads)
    k, v = rearrange(kv_proj(context), "g (two h d) -> two h g d", two=2, h=num_heads)
    logits = torch.einsum("hgd,hjd->hgj", q, k) * q.shape[-1] ** -0.5
    if scope == "own":
        eye = torch.eye(logits.shape[-1], dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(~eye, float("-inf"))
    weights = logits.softmax(dim=-1)
    out = rearrange(torch.einsum("hgj,hjd->hgd", weights, v), "h g d -> g (h d)")
    return out_proj(out)


class QueryFormer(nn.Module):
    """Learnable queries, two parallel cross-attentions (normal / abnormal), linear fusion.

    Args:
        num_groups: ``G`` (FineGrainedAD: ``E + 2``, components then image then background).
        dim: ``D`` (640 for ViT-B-16-plus-240).
        config: :class:`QueryFormerConfig` (default: ``official_code()``).

    Shape:
        ``normal (G, D)``, ``abnormal (G, D)`` → ``(G, D)`` intrinsic group features.

    Example:
        >>> import torch
        >>> from resad_kit.nn import QueryFormer, QueryFormerConfig
        >>> _ = torch.manual_seed(0)
        >>> qf = QueryFormer(4, 16, QueryFormerConfig.paper())
        >>> qf(torch.randn(4, 16), torch.randn(4, 16)).shape
        torch.Size([4, 16])
    """

    def __init__(self, num_groups: int, dim: int, config: QueryFormerConfig | None = None) -> None:
        super().__init__()
        self.config = config or QueryFormerConfig.official_code()
        for name, value in (("num_groups", num_groups), ("dim", dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"QueryFormer: `{name}` must be a positive int; got {value!r}")
        if dim % self.config.num_heads:
            raise ValueError(
                f"QueryFormer: `num_heads`={self.config.num_heads} must divide `dim`={dim}"
            )
        self.queries = nn.Parameter(torch.randn(num_groups, dim) * self.config.query_std)
        self.q_normal, self.kv_normal = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim)
        self.out_normal = nn.Linear(dim, dim)
        self.q_abnormal, self.kv_abnormal = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim)
        self.out_abnormal = nn.Linear(dim, dim)
        self.fuse = nn.Linear(2 * dim, dim)

    def forward(self, normal: torch.Tensor, abnormal: torch.Tensor) -> torch.Tensor:
        """Intrinsic features ``(G, D)`` of the groups from their prompt features ``(G, D)``."""
        if checks_enabled() and normal.shape != self.queries.shape:
            raise ValueError(
                f"QueryFormer: `normal` must have shape {tuple(self.queries.shape)}; "
                f"got {tuple(normal.shape)}"
            )
        heads, scope = self.config.num_heads, self.config.scope
        h_n = query_cross_attention(
            self.queries, normal, self.q_normal, self.kv_normal, self.out_normal,
            num_heads=heads, scope=scope,
        )  # fmt: skip
        h_a = query_cross_attention(
            self.queries, abnormal, self.q_abnormal, self.kv_abnormal, self.out_abnormal,
            num_heads=heads, scope=scope,
        )  # fmt: skip
        return self.fuse(torch.cat([h_n, h_a], dim=-1))


def query_former_loss(
    intrinsic: torch.Tensor, normal: torch.Tensor, abnormal: torch.Tensor
) -> torch.Tensor:
    """The paper's Query Former objective: ``Σ_g (1 − cos(q_g, p_n^g)) + (1 − cos(q_g, p_a^g))``.

    The prompt features are detached, so the loss trains the Query Former only (paper §3.4:
    the intrinsic feature should stay close to both prompt features of its group). Absent
    from the released code's training loss.

    Args:
        intrinsic: ``(G, D)`` Query Former output.
        normal: ``(G, D)`` normal prompt features.
        abnormal: ``(G, D)`` abnormal prompt features.

    Returns:
        scalar in ``[0, 4G]``.

    Example:
        >>> import torch
        >>> from resad_kit.nn import query_former_loss
        >>> p = torch.tensor([[1.0, 0.0]])
        >>> query_former_loss(p, p, -p).item()  # 0 to the normal, 2 to the opposite abnormal
        2.0
    """
    if checks_enabled():
        fn = "query_former_loss"
        for name, x in (("intrinsic", intrinsic), ("normal", normal), ("abnormal", abnormal)):
            check_tensor(fn, name, x, ndim=2, shape_doc="(G, D)")
            if x.shape != intrinsic.shape:
                raise ValueError(
                    f"{fn}: `{name}` must have shape {tuple(intrinsic.shape)}; got {tuple(x.shape)}"
                )
    cos_n = F.cosine_similarity(intrinsic, normal.detach(), dim=-1)
    cos_a = F.cosine_similarity(intrinsic, abnormal.detach(), dim=-1)
    return ((1.0 - cos_n) + (1.0 - cos_a)).sum()
