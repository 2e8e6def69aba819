"""Learnable text prompts: a shared context of ``M`` word embeddings through the frozen text tower.

AF-CLIP (paper sec. 4.2, Eq. 8) learns ``M = 12`` word embeddings ``[W_1] … [W_M]`` shared
by the two state prompts ``"without defect."`` (``P_n``) and ``"with defect."`` (``P_a``),
with no class name (object-agnostic), and encodes each prompt with CLIP's frozen text
encoder: ``t_n = f_T(P_n)``, ``t_a = f_T(P_a)``. Any prompt-learning method (CoOp-style
context, AnomalyCLIP-style object-agnostic prompts, groups of prompts) can reuse
:func:`encode_with_context` and :class:`LearnablePrompts`.

Where the context goes (``position``):

- ``"before_sot"`` (AF-CLIP's official code, ``Faustinaqq/AF-CLIP`` at ``bb7edec``,
  ``clip/model.py``, ``encode_state_prompt``): ``[W_1 … W_M, <SOT>, tokens…, <EOT>, 0…]``,
  cut to the context length; the EOT feature is read at ``M + argmax(ids)``.
- ``"after_sot"`` (CoOp): ``[<SOT>, W_1 … W_M, tokens…, <EOT>, 0…]``, same cut and shift.

The paper writes only ``[W_1]…[W_M] + "without defect."``, which does not say where
``<SOT>`` goes; the default follows the code. The sequence then runs CLIP's text tower
unchanged: ``+ positional_embedding`` → causal transformer → ``ln_final`` → feature at
the (shifted) EOT position → ``@ text_projection``.

Shape legend: ``P`` prompts, ``L`` context length (77), ``M`` learnable tokens, ``W``
text width (768 for ViT-L/14), ``D`` joint embedding dim.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from resad_kit.ops._validation import check_number, check_tensor

if TYPE_CHECKING:
    from resad_kit.clip.backbone import ClipBackbone

__all__ = ["POSITIONS", "LearnablePrompts", "encode_with_context"]

Position = Literal["before_sot", "after_sot"]
#: Where the learnable context goes: before ``<SOT>`` (AF-CLIP code) or after it (CoOp).
POSITIONS: tuple[str, ...] = ("before_sot", "after_sot")


def _text_tower(fn: str, backbone: Any) -> nn.Module:
    model = getattr(backbone, "model", backbone)
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final")
    if (
        not all(hasattr(model, a) for a in needed)
        or getattr(model, "text_projection", None) is None
    ):
        raise ValueError(
            f"{fn}: `backbone` must be a ClipBackbone (or an open_clip CLIP) with a built-in "
            f"text tower ({', '.join(needed)}, text_projection); got {type(model).__name__}"
        )
    if not getattr(model.transformer, "batch_first", False):
        raise ValueError(f"{fn}: the text transformer of `backbone` must be batch_first")
    return model


def _eot_index(fn: str, model: nn.Module, tokens: Tensor) -> Tensor:
    pool = getattr(model, "text_pool_type", "argmax")
    if pool == "argmax":
        return tokens.argmax(dim=-1)
    if pool == "eos" and getattr(model, "text_eos_id", None) is not None:
        return (tokens == model.text_eos_id).int().argmax(dim=-1)
    raise ValueError(
        f"{fn}: the text tower of `backbone` pools with {pool!r}; learnable context needs "
        "the EOT token ('argmax' or 'eos' pooling)"
    )


def encode_with_context(
    backbone: ClipBackbone | nn.Module,
    tokens: Tensor,
    ctx: Tensor,
    *,
    position: Position = "before_sot",
) -> Tensor:
    """Encode token ids with learnable context embeddings inserted (AF-CLIP Eq. 8, CoOp).

    Builds ``[ctx, <SOT>, …]`` (``"before_sot"``) or ``[<SOT>, ctx, …]`` (``"after_sot"``)
    from the token embeddings, cuts it to the context length ``L`` (only padding is cut:
    see Raises), adds the positional embedding, runs the frozen text transformer with
    its causal mask, applies ``ln_final``, reads the feature at the EOT position shifted
    by ``M`` and projects it with ``text_projection``. With ``M = 0`` this is CLIP's
    ``encode_text``. Gradients reach ``ctx`` (and nothing of the frozen backbone); it
    runs outside ``inference_mode``, in the text tower's dtype.

    Args:
        backbone: a :class:`~resad_kit.clip.ClipBackbone` (its ``model`` is used) or an
            open_clip ``CLIP`` with a batch-first text transformer.
        tokens: token ids of the prompts without context (``backbone.tokenizer(texts)``),
            on the backbone's device.
        ctx: the context embeddings: one context shared by all prompts (``(M, W)`` or
            ``(1, M, W)``) or one per prompt (``(P, M, W)``).
        position: ``"before_sot"`` (AF-CLIP code) or ``"after_sot"`` (CoOp).

    Returns:
        Unnormalised text embeddings, float32.

    Shape:
        - tokens: ``(P, L)``
        - ctx: ``(M, W)``, ``(1, M, W)`` or ``(P, M, W)``
        - output: ``(P, D)``

    Raises:
        ValueError: wrong shapes or position, or a prompt so long that its shifted EOT
            falls beyond ``L``.

    Example:
        >>> import torch
        >>> from resad_kit.clip import ClipBackbone
        >>> from resad_kit.clip.learnable_prompts import encode_with_context
        >>> backbone = ClipBackbone.tiny()
        >>> tokens = backbone.tokenizer(["without defect.", "with defect."])
        >>> ctx = torch.zeros(1, 0, 64)  # M = 0: CLIP's own encode_text
        >>> t = encode_with_context(backbone, tokens, ctx)
        >>> torch.allclose(t, backbone.encode_text(["without defect.", "with defect."]))
        True
        >>> encode_with_context(backbone, tokens, torch.randn(12, 64)).shape
        torch.Size([2, 32])
    """
    fn = "encode_with_context"
    model = _text_tower(fn, backbone)
    if position not in POSITIONS:
        raise ValueError(f"{fn}: `position` must be one of {POSITIONS}; got {position!r}")
    length, width = model.positional_embedding.shape
    ids = check_tensor(fn, "tokens", tokens, ndim=2, shape_doc="(P, L)", floating=False)
    if ids.dtype not in (torch.int64, torch.int32) or ids.shape[1] != length:
        raise ValueError(
            f"{fn}: `tokens` must be int64/int32 token ids of shape (P, {length}); "
            f"got {ids.dtype} of shape {tuple(ids.shape)}"
        )
    c = check_tensor(fn, "ctx", ctx, min_ndim=2, shape_doc="(M, W) or (1|P, M, W)", nonempty=False)
    c = c[None] if c.ndim == 2 else c
    p = ids.shape[0]
    if c.ndim != 3 or c.shape[-1] != width or c.shape[0] not in (1, p):
        raise ValueError(
            f"{fn}: `ctx` must have shape (M, {width}), (1, M, {width}) or ({p}, M, {width}); "
            f"got shape {tuple(ctx.shape)}"
        )
    return encode_sequences(model, *context_sequences(fn, model, ids, c, position))


def context_sequences(
    fn: str, model: nn.Module, ids: Tensor, ctx: Tensor, position: Position
) -> tuple[Tensor, Tensor]:
    """The token embeddings of ``ids`` ``(P, L)`` with the context ``ctx`` ``(1|P, M, W)``
    inserted at ``position``, cut to ``L``, and the shifted EOT index: ``((P, L, W), (P,))``
    (unchecked but for the EOT bound; ``fn`` names the caller in the error). The first half
    of :func:`encode_with_context`, for callers that edit the sequences before encoding."""
    length = model.positional_embedding.shape[0]
    m = ctx.shape[1]
    eot = _eot_index(fn, model, ids) + m
    if bool((eot >= length).any()):
        raise ValueError(
            f"{fn}: a prompt of `tokens` is too long for M={m} context tokens: its EOT "
            f"would sit at position {int(eot.max())} ≥ the context length {length}"
        )
    cast = model.transformer.get_cast_dtype()
    emb = model.token_embedding(ids).to(cast)  # (P, L, W)
    c = ctx.to(cast).expand(ids.shape[0], -1, -1)
    if position == "before_sot":
        x = torch.cat([c, emb], dim=1)
    else:
        x = torch.cat([emb[:, :1], c, emb[:, 1:]], dim=1)
    return x[:, :length], eot


def encode_sequences(model: nn.Module, x: Tensor, eot: Tensor) -> Tensor:
    """The frozen text tower on embedding sequences ``(P, L, W)``: positional embedding,
    transformer with its causal mask, ``ln_final`` at ``eot`` ``(P,)``, ``text_projection``
    → ``(P, D)`` float32. The second half of :func:`encode_with_context`."""
    cast = model.transformer.get_cast_dtype()
    x = model.transformer(x + model.positional_embedding.to(cast), attn_mask=model.attn_mask)
    x = model.ln_final(x)[torch.arange(x.shape[0], device=x.device), eot]  # (P, W)
    proj = model.text_projection
    return (proj(x) if isinstance(proj, nn.Module) else x @ proj).float()


class LearnablePrompts(nn.Module):
    """Shared learnable context ``[W_1 … W_M]`` + fixed suffixes, encoded by the frozen text tower.

    AF-CLIP Eq. 8: ``[W_1][W_2]…[W_M] + "without defect." → P_n`` and ``+ "with defect."
    → P_a``, ``M = 12``, one context shared by all suffixes, no class name. ``forward()``
    returns the unnormalised embeddings ``t = f_T(P)`` of every suffix, in order (see
    :func:`encode_with_context`). The only parameter is ``ctx`` ``(1, M, W)``, drawn from
    ``N(0, init_std²)`` with the global RNG (official code: std 0.01); the CLIP weights
    stay frozen and get no gradient.

    The backbone is *referenced, not registered*: ``parameters()`` and ``state_dict()``
    hold ``ctx`` only (a checkpoint of the prompts is 12 × 768 numbers, not CLIP), and
    moving this module does not move the backbone (a method that owns both moves both).
    The token ids of the suffixes are a non-persistent buffer.

    Args:
        backbone: the frozen :class:`~resad_kit.clip.ClipBackbone` whose text tower (and
            tokenizer) encodes the prompts.
        suffixes: the fixed texts after the context, one prompt each (a single ``str`` is
            one prompt). AF-CLIP: ``("without defect.", "with defect.")``.
        n_ctx: number of learnable tokens ``M`` (``0`` gives CLIP's ``encode_text`` of the
            suffixes).
        position: ``"before_sot"`` (AF-CLIP's code: context before ``<SOT>``) or
            ``"after_sot"`` (CoOp).
        init_std: standard deviation of the initial context.

    Attributes:
        ctx: ``nn.Parameter`` of shape ``(1, M, W)`` (``W`` the text width).
        tokens: ``(P, L)`` token ids of the suffixes.

    Shape:
        - output: ``(P, D)``, float32, one row per suffix.

    Raises:
        ValueError: invalid arguments, a backbone without a usable text tower, or a
            suffix too long for ``n_ctx`` extra tokens.

    Example:
        >>> import torch
        >>> from resad_kit.clip import ClipBackbone, LearnablePrompts
        >>> backbone = ClipBackbone.tiny()
        >>> _ = torch.manual_seed(0)
        >>> prompts = LearnablePrompts(backbone)  # AF-CLIP: M = 12 before <SOT>
        >>> list(prompts.state_dict()), tuple(prompts.ctx.shape)
        (['ctx'], (1, 12, 64))
        >>> t_n, t_a = prompts()  # (P, D) = (2, 32)
        >>> t_a.shape
        torch.Size([32])
        >>> prompts().sum().backward()
        >>> prompts.ctx.grad.shape, backbone.model.token_embedding.weight.grad
        (torch.Size([1, 12, 64]), None)
    """

    def __init__(
        self,
        backbone: ClipBackbone,
        suffixes: str | Sequence[str] = ("without defect.", "with defect."),
        n_ctx: int = 12,
        position: Position = "before_sot",
        init_std: float = 0.01,
    ) -> None:
        super().__init__()
        fn = type(self).__name__
        model = _text_tower(fn, backbone)
        texts = [suffixes] if isinstance(suffixes, str) else list(suffixes)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError(
                f"{fn}: `suffixes` must be a non-empty sequence of str; got {suffixes!r}"
            )
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 0:
            raise ValueError(f"{fn}: `n_ctx` must be an int ≥ 0; got {n_ctx!r}")
        if position not in POSITIONS:
            raise ValueError(f"{fn}: `position` must be one of {POSITIONS}; got {position!r}")
        init_std = check_number(fn, "init_std", init_std, minimum=0.0)
        tokenizer = getattr(backbone, "tokenizer", None)
        if tokenizer is None:
            raise ValueError(f"{fn}: `backbone` must have a `tokenizer` (a ClipBackbone has)")
        length, width = model.positional_embedding.shape
        device = model.positional_embedding.device
        tokens = tokenizer(texts).to(device)
        eot = _eot_index(fn, model, tokens)
        if bool((eot + n_ctx >= length).any()):
            i = int((eot + n_ctx).argmax())
            raise ValueError(
                f"{fn}: suffix {texts[i]!r} is too long for n_ctx={n_ctx}: its EOT would sit "
                f"at position {int(eot[i]) + n_ctx} ≥ the context length {length}"
            )
        self.suffixes = tuple(texts)
        self.n_ctx = n_ctx
        self.position = position
        self.init_std = init_std
        self.register_buffer("tokens", tokens, persistent=False)
        self.ctx = nn.Parameter(torch.empty(1, n_ctx, width, device=device))
        nn.init.normal_(self.ctx, std=init_std)
        object.__setattr__(self, "backbone", backbone)  # a reference, not a submodule

    def extra_repr(self) -> str:
        return f"suffixes={self.suffixes}, n_ctx={self.n_ctx}, position={self.position!r}"

    def forward(self) -> Tensor:
        """Text embeddings ``(P, D)`` of the suffixes with the learnable context (Eq. 8)."""
        return encode_with_context(self.backbone, self.tokens, self.ctx, position=self.position)

    @staticmethod
    def convert_official_state_dict(
        prompt: Tensor | Mapping[str, Tensor],
        *,
        n_ctx: int | None = None,
        width: int | None = None,
    ) -> dict[str, Tensor]:
        """Convert the official AF-CLIP prompt (``weight/{mvtec,visa}_prompt.pt``) to a state dict.

        The released file holds one ``nn.Parameter`` of shape ``(1, 12, 768)`` (the
        official model's ``state_prompt_embedding``, saved on ``cuda:0``); it loads with
        ``torch.load(path, map_location="cpu", weights_only=True)``. A mapping
        ``{"state_prompt_embedding": tensor}`` is accepted too. Reading the file is left
        to the caller.

        Args:
            prompt: the loaded tensor or ``{"state_prompt_embedding": tensor}``.
            n_ctx: expected ``M`` (``None``: any).
            width: expected text width ``W`` (``None``: any).

        Returns:
            ``{"ctx": tensor}`` (detached, shape ``(1, M, W)``) for
            ``LearnablePrompts(..., n_ctx=M).load_state_dict`` (strict).

        Raises:
            TypeError: ``prompt`` is neither a tensor nor a mapping holding one.
            ValueError: other keys in the mapping, a shape other than ``(1, M, W)`` (or
                the given ``n_ctx``/``width``), a non-float dtype or non-finite values.

        Example:
            >>> import torch
            >>> from resad_kit.clip import LearnablePrompts
            >>> official = torch.nn.Parameter(torch.randn(1, 12, 768))  # the released file
            >>> state = LearnablePrompts.convert_official_state_dict(official, n_ctx=12)
            >>> list(state), state["ctx"].shape, state["ctx"].requires_grad
            (['ctx'], torch.Size([1, 12, 768]), False)
        """
        fn = "LearnablePrompts.convert_official_state_dict"
        if isinstance(prompt, Mapping):
            if set(prompt) != {"state_prompt_embedding"}:
                raise ValueError(
                    f"{fn}: a mapping `prompt` must hold exactly the key "
                    f"'state_prompt_embedding'; got keys {sorted(map(str, prompt))}"
                )
            prompt = prompt["state_prompt_embedding"]
        if not isinstance(prompt, Tensor):
            raise TypeError(
                f"{fn}: `prompt` must be the official prompt tensor (1, M, W) or a mapping "
                f"holding it; got {type(prompt).__name__}"
            )
        t = check_tensor(fn, "prompt", prompt, ndim=3, shape_doc="(1, M, W)", finite=True)
        expected = (
            1,
            t.shape[1] if n_ctx is None else n_ctx,
            t.shape[2] if width is None else width,
        )
        if tuple(t.shape) != expected:
            raise ValueError(f"{fn}: `prompt` must have shape {expected}; got {tuple(t.shape)}")
        return {"ctx": t.detach()}
