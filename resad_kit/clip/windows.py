"""Window embeddings: each window of patches run through the image tower on its own (WinCLIP).

WinCLIP (Jeong et al., CVPR 2023, Sec. 3.3) embeds every ``s×s`` window of the patch grid
by running *only that window's tokens* through the visual transformer: the window's patch
tokens (patch embedding plus their own positional embeddings) behind the CLS token
(``class_embedding`` plus its positional embedding), then ``ln_pre``, every block,
``LN_post`` of the CLS output and ``proj``. This is anomalib's
``WinClipModel._get_window_embeddings`` (``anomalib.models.image.winclip.torch_model``):
it takes the tokens where open_clip's ``VisionTransformer`` hands them to ``patch_dropout``
(CLS + patches, positional embeddings added), selects CLS + the window's patches, runs
``ln_pre``, the transformer, ``ln_post``, the CLS-token pool and ``proj``.

:func:`encode_windows` does this for all windows of one size in one batched forward
(``B·W`` sequences of ``1 + s²`` tokens), beside the full image, and returns what
anomalib's ``encode_image`` returns: the image embedding (``LN_post(CLS) @ proj``), the
window embeddings per size, and the patch embeddings (``LN_post`` of the last block's
patch tokens, *not* projected: open_clip's ``output_tokens``).

**Attention within each window (anomalib issue #2571).** anomalib 2.x permutes the window
batch to sequence-first (``NLD → LND``) before ``transformer``; with open_clip ≥ 2.26.1
the transformer is batch-first, so the permuted tensor makes every token attend across the
*windows* instead of within one window, and every CLS output, hence every window
embedding, comes out identical (the zero-shot map is flat). Here the blocks always get
``(B·W, 1 + s², C)`` batch-first tensors (:func:`~resad_kit.clip.tower.check_vit_tower`
refuses a sequence-first tower): attention stays inside each window, as with open_clip
< 2.26.1, whatever open_clip version is installed.

The blocks run with their ordinary attention (never V-V) and the backbone's attention
kernel; the backbone's taps and V-V settings are not used. Runs under the backbone's
inference mode; float32 outputs.

:class:`WindowBackbone` is a :class:`ClipBackbone` whose ``forward`` returns these
encodings packed into :class:`Features` (for the engine's feature cache).

Shape legend: ``B`` images, ``W_s`` windows of side ``s``, ``h×w`` patch grid
(``N = h·w``), ``C`` transformer width, ``D`` joint embedding dim.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from einops import rearrange, repeat
from torch import Tensor

from resad_kit.clip.backbone import ClipBackbone
from resad_kit.clip.features import Features
from resad_kit.clip.tower import run_blocks
from resad_kit.ops import window_indices
from resad_kit.ops._validation import check_positive_int

__all__ = ["WindowBackbone", "WindowEmbeddings", "encode_windows"]


class WindowEmbeddings(NamedTuple):
    """What :func:`encode_windows` returns (float32).

    Attributes:
        image: ``(B, D)`` image embedding ``LN_post(CLS) @ proj`` (open_clip's
            ``encode_image``).
        windows: one ``(B, W_s, D)`` tensor per window size: ``LN_post(CLS) @ proj`` of
            each window's own forward.
        patches: ``(B, N, C)`` ``LN_post`` of the patch tokens after block
            ``patch_layer`` (default: the last), not projected (anomalib's patch embeddings).
        grid: the patch grid ``(h, w)``.
        indices: one ``(W_s, s²)`` index tensor per size (:func:`~resad_kit.ops.window_indices`).

    Example:
        >>> import torch
        >>> from resad_kit.clip import ClipBackbone
        >>> from resad_kit.clip.windows import encode_windows
        >>> out = encode_windows(ClipBackbone.tiny(), torch.randn(1, 3, 64, 64), (2, 3))
        >>> [tuple(w.shape) for w in out.windows], tuple(out.patches.shape), out.grid
        ([(1, 49, 32), (1, 36, 32)], (1, 64, 64), (8, 8))
    """

    image: Tensor
    windows: tuple[Tensor, ...]
    patches: Tensor
    grid: tuple[int, int]
    indices: tuple[Tensor, ...]


def _check_scales(fn: str, scales: object) -> tuple[int, ...]:
    ok = isinstance(scales, Sequence) and len(scales) > 0
    if ok:
        for s in scales:
            check_positive_int(fn, "scales", s)
    if not ok or len(set(scales)) != len(scales):  # type: ignore[arg-type]
        raise ValueError(f"{fn}: `scales` must be distinct positive ints; got {scales!r}")
    return tuple(scales)  # type: ignore[arg-type]


def _window_cls(backbone: ClipBackbone, cls: Tensor, tokens: Tensor, index: Tensor) -> Tensor:
    """``LN_post`` of the CLS output of every window's own forward: ``(B, W, C)``."""
    visual = backbone.model.visual
    b, w = tokens.shape[0], index.shape[0]
    windows = tokens[:, index]  # (B, W, s², C): each window's tokens, positions included
    seq = torch.cat([repeat(cls, "c -> b w 1 c", b=b, w=w), windows], dim=2)
    seq = visual.ln_pre(rearrange(seq, "b w t c -> (b w) t c"))  # batch-first: per window
    _, out = run_blocks(seq, visual.transformer.resblocks, (), 0, backbone.config.attention)
    return rearrange(visual.ln_post(out[:, 0]), "(b w) c -> b w c", b=b)


def _encode(
    backbone: ClipBackbone,
    images: Tensor,
    scales: tuple[int, ...],
    stride: int,
    patch_layer: int,
    project: bool,
) -> tuple[Tensor, list[Tensor], Tensor, tuple[int, int], list[Tensor]]:
    visual = backbone.model.visual
    x = visual.conv1(images)
    h, w = int(x.shape[-2]), int(x.shape[-1])
    pos = backbone.pos_embed((h, w)).to(x.dtype)
    tokens = rearrange(x, "b c h w -> b (h w) c") + pos[1:]  # the window forward's input
    cls = visual.class_embedding.to(x.dtype) + pos[0]
    full = torch.cat([repeat(cls, "c -> b 1 c", b=x.shape[0]), tokens], dim=1)
    kernel = backbone.config.attention
    taps, x_o = run_blocks(
        visual.ln_pre(full), visual.transformer.resblocks, (patch_layer,), 0, kernel
    )
    image = visual.ln_post(x_o[:, 0]) @ visual.proj
    patches = visual.ln_post(taps[patch_layer][:, 1:])
    indices = [window_indices((h, w), s, stride, device=x.device) for s in scales]
    windows = [_window_cls(backbone, cls, tokens, index) for index in indices]
    if project:
        windows = [win @ visual.proj for win in windows]
    return image.float(), [win.float() for win in windows], patches.float(), (h, w), indices


def encode_windows(
    backbone: ClipBackbone,
    images: Tensor,
    scales: Sequence[int] = (2, 3),
    *,
    stride: int = 1,
    patch_layer: int | None = None,
) -> WindowEmbeddings:
    """Image, window and patch embeddings of ``images``, all windows of a size batched.

    See the module docstring: each ``s×s`` window (stride ``stride``) is its CLS token
    plus its patch tokens with their positional embeddings, run alone through ``ln_pre``,
    the blocks (attention within the window), ``LN_post`` and ``proj``. One transformer
    forward per window size for the whole batch, plus one for the full images.

    Args:
        backbone: the :class:`ClipBackbone` (WinCLIP: ViT-B-16-plus-240, LAION-400M
            ``laion400m_e31``, 240 px: a 15×15 grid).
        images: preprocessed images on the backbone's device (as for ``backbone(images)``).
        scales: window sides in patches (WinCLIP: 2 and 3).
        stride: window step in patches (WinCLIP: 1).
        patch_layer: the block (1-based) whose patch tokens give ``patches``;
            ``None``: the last (anomalib's ``output_tokens``).

    Returns:
        :class:`WindowEmbeddings`.

    Raises:
        ValueError: bad images (see ``ClipBackbone.forward``), ``scales`` not distinct
            positive ints, a window larger than the grid, ``stride`` or ``patch_layer``
            out of range.

    Shape:
        - images: ``(B, 3, H, W)``
        - image ``(B, D)``; windows ``(B, W_s, D)`` per size; patches ``(B, N, C)``

    Example:
        >>> import torch
        >>> from resad_kit.clip import ClipBackbone
        >>> from resad_kit.clip.windows import encode_windows
        >>> backbone = ClipBackbone.tiny()
        >>> out = encode_windows(backbone, torch.randn(2, 3, 64, 64), (2,))
        >>> out.windows[0].shape  # 7×7 windows of 2×2 patches on the 8×8 grid
        torch.Size([2, 49, 32])
        >>> bool((out.windows[0][:, 0] - out.windows[0][:, 1]).abs().max() > 0)  # not flat
        True
    """
    fn = "encode_windows"
    sizes = _check_scales(fn, scales)
    check_positive_int(fn, "stride", stride)
    layer = backbone.depth if patch_layer is None else patch_layer
    if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= backbone.depth:
        raise ValueError(
            f"{fn}: `patch_layer` must be None or a block in 1..{backbone.depth}; "
            f"got {patch_layer!r}"
        )
    x = backbone._check_images(images)
    p = backbone.patch_size
    if max(sizes) > min(x.shape[-2] // p, x.shape[-1] // p):
        raise ValueError(
            f"{fn}: window size {max(sizes)} does not fit the {x.shape[-2] // p}×"
            f"{x.shape[-1] // p} patch grid of `images` {tuple(x.shape)}"
        )
    with backbone._run():
        image, windows, patches, grid, indices = _encode(backbone, x, sizes, stride, layer, True)
    image, patches, *windows = backbone._finish([image, patches, *windows])
    return WindowEmbeddings(image, tuple(windows), patches, grid, tuple(indices))


class WindowBackbone(ClipBackbone):
    """A :class:`ClipBackbone` whose ``forward`` returns :func:`encode_windows`'s output
    packed into :class:`Features`, so the engine's feature cache stores and reuses it.

    ``Features.cls`` is the image embedding ``(B, D)``; ``Features.patches`` is one tensor
    ``(B, N + Σ W_s, C)``: the patch embeddings, then the windows of each size in
    ``scales`` order as ``LN_post`` of their CLS output *before* ``proj`` (one width for
    all rows; :meth:`unpack` applies ``proj``). ``model_name`` gets the suffix
    ``+windows<scales>/<stride>`` (the cache key and the result tables tell it from a
    plain backbone). Build it with :meth:`wrap` (shares the frozen model) or like a
    :class:`ClipBackbone` (``WindowBackbone.tiny()``, ``.from_pretrained(...)``: the
    default scales (2, 3) and stride 1).

    Example:
        >>> import torch
        >>> from resad_kit.clip import ClipBackbone
        >>> from resad_kit.clip.windows import WindowBackbone, encode_windows
        >>> plain = ClipBackbone.tiny()
        >>> packed = WindowBackbone.wrap(plain, scales=(2, 3))
        >>> images = torch.randn(1, 3, 64, 64)
        >>> features = packed(images)
        >>> features.patches[0].shape  # 64 patches + 49 + 36 windows, width 64
        torch.Size([1, 149, 64])
        >>> out = packed.unpack(features)
        >>> torch.allclose(
        ...     out.windows[1], encode_windows(plain, images, (2, 3)).windows[1], atol=1e-5
        ... )
        True
    """

    def __init__(
        self,
        *args: Any,
        scales: Sequence[int] = (2, 3),
        stride: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        fn = "WindowBackbone"
        self.scales = _check_scales(fn, scales)
        self.stride = check_positive_int(fn, "stride", stride)
        sizes = ",".join(str(s) for s in self.scales)
        self.model_name = f"{self.model_name}+windows{sizes}/{self.stride}"

    @classmethod
    def wrap(
        cls, backbone: ClipBackbone, *, scales: Sequence[int] = (2, 3), stride: int = 1
    ) -> WindowBackbone:
        """A :class:`WindowBackbone` over ``backbone``'s frozen model, config and labels."""
        return cls(**backbone._construction_kwargs(), scales=scales, stride=stride)

    def forward(self, images: Tensor) -> Features:  # type: ignore[override]
        """The packed :class:`Features` of ``images`` (see the class docstring)."""
        x = self._check_images(images)
        with self._run():
            image, windows, patches, grid, _ = _encode(
                self, x, self.scales, self.stride, self.depth, False
            )
        image, packed = self._finish([image, torch.cat([patches, *windows], dim=1)])
        return Features([packed], image, grid)

    def unpack(self, features: Features) -> WindowEmbeddings:
        """:class:`WindowEmbeddings` from packed :class:`Features` (``proj`` applied here).

        Raises:
            ValueError: ``features`` are not this backbone's packed layout.
        """
        grid = tuple(features.grid)
        indices = [window_indices(grid, s, self.stride, device=self.device) for s in self.scales]  # type: ignore[arg-type]
        n = grid[0] * grid[1]
        counts = [n] + [len(i) for i in indices]
        if len(features.patches) != 1 or features.patches[0].shape[1] != sum(counts):
            raise ValueError(
                "WindowBackbone.unpack: `features` must hold one packed tensor of "
                f"{sum(counts)} rows (grid {grid}, scales {self.scales}); got "
                f"{[tuple(p.shape) for p in features.patches]}"
            )
        patches, *windows = features.patches[0].split(counts, dim=1)
        proj = self.model.visual.proj.float()
        windows = [w.to(proj.device, torch.float32) @ proj for w in windows]
        return WindowEmbeddings(features.cls, tuple(windows), patches, grid, tuple(indices))  # type: ignore[arg-type]
