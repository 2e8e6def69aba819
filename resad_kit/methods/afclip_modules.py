"""AF-CLIP's trainable part and its backbone check (parts of :mod:`resad_kit.methods.afclip`)."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from resad_kit.clip import ClipBackbone, LearnablePrompts
from resad_kit.nn import AttentionAdapter

__all__ = ["AFCLIPModules", "check_backbone"]


class AFCLIPModules(nn.Module):
    """AF-CLIP's trainable part: the shared adapter and the learnable prompts.

    Its ``state_dict`` (``adapter.*`` and ``prompts.ctx``; CLIP is not in it) is what a
    checkpoint stores.

    Example:
        >>> from resad_kit.clip import ClipBackbone
        >>> from resad_kit.methods import AFCLIP
        >>> backbone = ClipBackbone.tiny(vv_blocks=0, tap_output="residual", tap_cls=True)
        >>> parts = AFCLIP(backbone).parts
        >>> sorted(parts.state_dict())[-3:]
        ['adapter.to_q.weight', 'adapter.to_v.weight', 'prompts.ctx']
    """

    def __init__(self, adapter: AttentionAdapter, prompts: LearnablePrompts) -> None:
        super().__init__()
        self.adapter, self.prompts = adapter, prompts

    def load_official(
        self,
        adaptor: Mapping[str, Tensor] | nn.Module,
        prompt: Tensor | Mapping[str, Tensor],
    ) -> AFCLIPModules:
        """Load the released weights (``weight/{mvtec,visa}_{adaptor,prompt}.pt``).

        Reads no file: :func:`resad_kit.engine.checkpoint_afclip.load_afclip_weights`
        reads the two files and calls this (through :meth:`AFCLIP.load_official`).

        Args:
            adaptor: the official adapter: a state dict in its key layout
                (``attention.norm.*``, ``attention.attn.to_{q,k,v}.weight``,
                ``attention.attn.to_out.0.*``) or the loaded official module.
            prompt: the official context ``(1, M, W)`` (a tensor or parameter), or a mapping
                holding it.

        Returns:
            ``self``, with :meth:`AttentionAdapter.convert_official_state_dict` and
            :meth:`LearnablePrompts.convert_official_state_dict` applied (strict loads).

        Example:
            >>> import torch
            >>> from resad_kit.clip import ClipBackbone
            >>> from resad_kit.methods import AFCLIP
            >>> backbone = ClipBackbone.tiny(vv_blocks=0, tap_output="residual", tap_cls=True)
            >>> source = AFCLIP(backbone)
            >>> official = {  # the official key layout of the same adapter
            ...     {
            ...         "to_out.weight": "attention.attn.to_out.0.weight",
            ...         "to_out.bias": "attention.attn.to_out.0.bias",
            ...     }.get(k, "attention." + ("attn." + k if k.startswith("to_") else k)): v
            ...     for k, v in source.adapter.state_dict().items()
            ... }
            >>> model = AFCLIP(backbone).load_official(official, source.prompts.ctx.detach())
            >>> torch.equal(model.prompts.ctx, source.prompts.ctx)
            True
            >>> torch.equal(model.adapter.to_q.weight, source.adapter.to_q.weight)
            True
        """
        self.adapter.load_state_dict(AttentionAdapter.convert_official_state_dict(adaptor))
        self.prompts.load_state_dict(LearnablePrompts.convert_official_state_dict(prompt))
        return self


def check_backbone(backbone: object) -> ClipBackbone:
    fn = "AFCLIP"
    if not isinstance(backbone, ClipBackbone):
        raise TypeError(f"{fn}: `backbone` must be a ClipBackbone; got {type(backbone).__name__}")
    c = backbone.config
    wrong = [
        f"{name}={value!r} (need {want!r})"
        for name, value, want in (
            ("tap_output", c.tap_output, "residual"),
            ("tap_cls", c.tap_cls, True),
            ("vv_blocks", backbone.vv_blocks, 0),
        )
        if value != want
    ]
    if wrong:
        raise ValueError(
            f"{fn}: the backbone must tap the raw residual stream with the CLS token and no "
            f"V-V attention; it has {', '.join(wrong)}. Build it with BackboneConfig.afclip() "
            "(or ClipBackbone.tiny(vv_blocks=0, tap_output='residual', tap_cls=True))"
        )
    return backbone
