"""The block loop of :class:`~resad_kit.clip.ClipBackbone`: dual-path V-V blocks and taps.

Functions of tensors and open_clip modules, so that other methods can run the same loop
(e.g. with other taps) without the wrapper. Shape legend: ``B`` images, ``T = 1 + N``
tokens (CLS first), ``C`` width, ``D`` joint embedding dim.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import Tensor, nn

from resad_kit.clip.attention import dual_attention, self_attention

__all__ = ["check_vit_tower", "project_taps", "run_blocks", "standard_block"]


def check_vit_tower(fn: str, model: nn.Module) -> VisionTransformer:
    """The OpenAI-style ViT image tower of an open_clip ``model``; a clear error otherwise."""
    visual = getattr(model, "visual", None)
    if not isinstance(visual, VisionTransformer):
        raise ValueError(
            f"{fn}: `model` must be an open_clip CLIP with a VisionTransformer image tower; "
            f"got {type(visual).__name__}"
        )
    blocks = visual.transformer.resblocks
    if (
        visual.attn_pool is not None
        or visual.pool_type != "tok"
        or visual.proj is None
        or not visual.transformer.batch_first
        or not all(isinstance(b, ResidualAttentionBlock) and b.attn.batch_first for b in blocks)
    ):
        raise ValueError(
            f"{fn}: the image tower must be OpenAI-style (CLS-token pooling, a `proj` matrix, "
            "standard batch-first ResidualAttentionBlocks); this one is not"
        )
    if visual.patch_size[0] != visual.patch_size[1]:
        raise ValueError(f"{fn}: square patches needed; got {visual.patch_size}")
    return visual


def standard_block(block: ResidualAttentionBlock, x: Tensor, kernel: str = "sdpa") -> Tensor:
    """One ordinary pre-LN transformer block; ``"sdpa"`` calls open_clip's own forward.

    Shape: ``x`` and the output ``(B, T, C)``.
    """
    if kernel == "sdpa":
        return block(x)  # open_clip's own forward (nn.MultiheadAttention's fused path)
    x = x + block.ls_1(self_attention(block.ln_1(x), block.attn, kernel))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def run_blocks(
    x: Tensor,
    blocks: Iterable[ResidualAttentionBlock],
    layers: Sequence[int],
    vv_blocks: int,
    kernel: str = "sdpa",
) -> tuple[dict[int, Tensor], Tensor]:
    """Run ``blocks`` on ``x``, the last ``vv_blocks`` dual-path; keep the tapped streams.

    Blocks before the first dual-path block are standard. In a dual-path block the
    ordinary stream ``x_o`` runs the standard block and the V-V stream ``x_v`` (seeded
    with ``x_o``) adds the block's V-V attention of ``LN_1(x_o)``, with no MLP. A tap of
    block ``l`` (1-based) is ``x_v`` once it exists, else ``x_o``.

    Args:
        x: tokens after ``ln_pre``.
        blocks: the transformer's blocks, in order.
        layers: the blocks to tap (1-based).
        vv_blocks: number of last blocks with V-V attention.
        kernel: the attention kernel (:func:`~resad_kit.clip.attention.attend`).

    Returns:
        ``({layer: tapped stream}, x_o after the last block)``.

    Shape:
        - x: ``(B, T, C)``; every tap and ``x_o``: ``(B, T, C)``
    """
    blocks = list(blocks)
    first_vv = len(blocks) - vv_blocks + 1
    wanted = set(layers)
    taps: dict[int, Tensor] = {}
    x_o, x_v = x, None
    for index, block in enumerate(blocks, start=1):
        if index < first_vv:
            x_o = standard_block(block, x_o, kernel)
        else:
            x_v = x_o if x_v is None else x_v
            o_o, o_vv = dual_attention(block.ln_1(x_o), block.attn, kernel)
            x_v = x_v + block.ls_1(o_vv)  # V-V stream: attention residual only, no MLP
            x_o = x_o + block.ls_1(o_o)
            x_o = x_o + block.ls_2(block.mlp(block.ln_2(x_o)))
        if index in wanted:
            taps[index] = x_o if x_v is None else x_v
    return taps, x_o


def project_taps(
    visual: nn.Module, taps: Sequence[Tensor], with_cls: bool, output: str = "projected"
) -> tuple[list[Tensor], list[Tensor] | None]:
    """The tap outputs: the patches (CLS row dropped) and, with ``with_cls``, the CLS rows.

    ``output="projected"``: ``LN_post(tap) @ proj``, ``(B, N, D)`` patches and ``(B, D)``
    CLS tokens per tap. ``output="residual"``: the raw tapped stream, ``(B, N, C)`` and
    ``(B, C)``. Float32; the CLS list is ``None`` without ``with_cls``.
    """
    if output == "residual":
        patches = [t[:, 1:].float() for t in taps]
        return patches, [t[:, 0].float() for t in taps] if with_cls else None
    patches = [(visual.ln_post(t[:, 1:]) @ visual.proj).float() for t in taps]
    if not with_cls:
        return patches, None
    return patches, [(visual.ln_post(t[:, 0]) @ visual.proj).float() for t in taps]
