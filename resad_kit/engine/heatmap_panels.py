"""The panels of a heat map (input, overlay, mask) as arrays, and :func:`overlay`.

Part of :mod:`resad_kit.engine.heatmaps` (which re-exports :func:`overlay`); see its
docstring for the layout and the colour scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image

from resad_kit._image import check_normalization
from resad_kit.ops._validation import check_finite, check_tensor

__all__ = ["DEFAULT_CMAP", "overlay"]

DEFAULT_CMAP = "turbo"
"""The default matplotlib colour map (a perceptually smoother "jet": blue → red)."""


def _to_hw(fn: str, name: str, x: object) -> torch.Tensor:
    """``(H, W)`` or ``(1, H, W)`` → float32 ``(H, W)`` on CPU."""
    x = check_tensor(fn, name, x, floating=False, shape_doc="(H, W) or (1, H, W)")
    if x.ndim == 3 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 2:
        raise ValueError(f"{fn}: `{name}` must be (H, W) or (1, H, W); got {tuple(x.shape)}")
    return x.detach().to("cpu", torch.float32)


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if tuple(x.shape) == size:
        return x
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(x[None, None], size=size, mode=mode, **kwargs)[0, 0]


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (or on the image border)."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:] & mask
    return mask & ~inner


def _colormap(fn: str, cmap: str) -> Any:
    import matplotlib

    try:
        return matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(f"{fn}: `cmap` {cmap!r} is not a matplotlib colour map") from None


def _panels(
    fn: str,
    image: torch.Tensor,
    anomaly_map: torch.Tensor,
    mask: torch.Tensor | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    vmin: float | None,
    vmax: float | None,
    alpha: float,
    cmap: str,
) -> tuple[list[np.ndarray], float, float, tuple[int, int]]:
    """Input, overlay (and mask) as float RGB arrays in ``[0, 1]``; the colour range."""
    image = check_tensor(fn, "image", image, ndim=3, shape_doc="(3, H, W)", finite=True)
    if image.shape[0] != 3:
        raise ValueError(f"{fn}: `image` must be (3, H, W); got {tuple(image.shape)}")
    norm = check_normalization(fn, mean, std)
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"{fn}: `alpha` must be in [0, 1]; got {alpha}")
    colours = _colormap(fn, cmap)
    size = (int(image.shape[1]), int(image.shape[2]))
    amap = _to_hw(fn, "anomaly_map", anomaly_map)
    check_finite(fn, "anomaly_map", amap)
    amap = _resize(amap, size, "bilinear")
    lo = float(amap.min()) if vmin is None else float(vmin)
    hi = float(amap.max()) if vmax is None else float(vmax)
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi < lo:
        raise ValueError(f"{fn}: need finite vmin ≤ vmax; got vmin={vmin}, vmax={vmax}")
    t = (amap.numpy() - lo) / (hi - lo) if hi > lo else np.zeros(size)
    rgb = rearrange(image.detach().to("cpu", torch.float32).numpy(), "c h w -> h w c")
    if norm is not None:
        rgb = rgb * np.asarray(norm[1]) + np.asarray(norm[0])
    rgb = np.clip(rgb.astype(np.float64), 0.0, 1.0)
    heat = np.asarray(colours(np.clip(t, 0.0, 1.0)))[..., :3]
    blend = (1.0 - alpha) * rgb + alpha * heat
    panels = [rgb, blend]
    if mask is not None:
        m = _to_hw(fn, "mask", mask)
        check_finite(fn, "mask", m)
        m = _resize((m != 0).float(), size, "nearest").numpy() > 0.5
        blend[_outline(m)] = 1.0
        panels.append(np.repeat(m[..., None].astype(np.float64), 3, axis=-1))
    return panels, lo, hi, size


def overlay(
    image: torch.Tensor,
    anomaly_map: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    vmin: float | None = None,
    vmax: float | None = None,
    alpha: float = 0.5,
    cmap: str = DEFAULT_CMAP,
) -> Image.Image:
    """Image | heat-map overlay | mask side by side, as one plain picture (module docstring).

    Args:
        image: one normalised image ``(3, H, W)``, as the data set returns it.
        anomaly_map: its anomaly map ``(H', W')`` or ``(1, H', W')``; resized bilinearly
            to ``H × W`` when the size differs.
        mask: optional ground truth ``(H'', W'')`` or ``(1, H'', W'')``, non-zero =
            anomalous; resized (nearest) to ``H × W`` when the size differs.
        mean, std: the per-channel normalisation of ``image`` (``None`` for both: the
            image is already in ``[0, 1]``).
        vmin, vmax: the scores drawn as the cold and hot ends of the colour map; default
            this map's min and max. A constant map with no range given is all cold.
        alpha: weight of the colours in the blend, in ``[0, 1]``.
        cmap: a matplotlib colour map name.

    Returns:
        An RGB :class:`PIL.Image.Image` of size ``(P·W, H)``: ``P = 3`` with a mask, else 2.

    Raises:
        ValueError: wrong shapes, non-finite values, ``vmax < vmin``, bad ``alpha``,
            ``mean``/``std`` or ``cmap``.

    Example:
        >>> import torch
        >>> from resad_kit.engine.heatmaps import overlay
        >>> image = torch.zeros(3, 16, 24)  # mid grey after undoing mean 0.5, std 0.5
        >>> amap = torch.zeros(16, 24)
        >>> amap[4:8, 4:8] = 1.0
        >>> pic = overlay(image, amap, (amap > 0).float(), mean=(0.5,) * 3, std=(0.5,) * 3)
        >>> pic.mode, pic.size
        ('RGB', (72, 16))
        >>> hot, cold = pic.getpixel((24 + 5, 5)), pic.getpixel((24 + 20, 12))
        >>> hot[0] > hot[2], cold[2] > cold[0]  # turbo: hot is red, cold is blue
        (True, True)
    """
    panels, *_ = _panels("overlay", image, anomaly_map, mask, mean, std, vmin, vmax, alpha, cmap)
    out = np.concatenate(panels, axis=1) * 255.0
    return Image.fromarray(np.rint(out).astype(np.uint8), mode="RGB")
