"""Heat-map overlays of anomaly maps on their images, as PNG panels.

:func:`overlay` builds one RGB picture of ``P`` panels side by side, each ``H × W``:

1. the image, with the normalisation undone (``x · std + mean``, clipped to ``[0, 1]``);
2. the image alpha-blended with the anomaly map in a jet colour map (dark blue = ``vmin``,
   green/yellow in between, dark red = ``vmax``), with the ground-truth outline in white
   when a mask is given;
3. (with a mask) the mask itself, white on black.

The colour map is the classic "jet" written in NumPy (no matplotlib):
``r = clip(1.5 − |4t − 3|)``, ``g = clip(1.5 − |4t − 2|)``, ``b = clip(1.5 − |4t − 1|)``
for ``t = (map − vmin) / (vmax − vmin)`` clipped to ``[0, 1]``.

**Colour scale.** Without ``vmin``/``vmax`` each map is stretched to its own min and max,
which makes every image look anomalous somewhere. :func:`save_heatmaps` instead uses one
range for all maps it is given (their global min and max, or the ``vmin``/``vmax``
passed), so call it once per category, ideally with the category's range over all its test
maps: then a colour means the same score on every image of the category.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path, PurePath

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image

from resad_kit._image import check_normalization
from resad_kit.engine.atomic import atomic_write
from resad_kit.ops._validation import check_finite, check_tensor

__all__ = ["jet", "overlay", "save_heatmaps"]


def jet(t: np.ndarray) -> np.ndarray:
    """The jet colour map: values in ``[0, 1]`` (clipped) → ``uint8`` RGB, shape ``(..., 3)``.

    Example:
        >>> import numpy as np
        >>> from resad_kit.engine.heatmaps import jet
        >>> jet(np.array([0.0, 0.5, 1.0])).tolist()  # dark blue, green, dark red
        [[0, 0, 128], [128, 255, 128], [128, 0, 0]]
    """
    t = np.clip(np.asarray(t, dtype=np.float64), 0.0, 1.0)[..., None]
    centres = np.array([3.0, 2.0, 1.0])  # r, g, b
    rgb = np.clip(1.5 - np.abs(4.0 * t - centres), 0.0, 1.0)
    return np.rint(rgb * 255).astype(np.uint8)


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
) -> Image.Image:
    """Image | heat-map overlay | mask, side by side (module docstring).

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

    Returns:
        An RGB :class:`PIL.Image.Image` of size ``(P·W, H)``: ``P = 3`` with a mask, else 2.

    Raises:
        ValueError: wrong shapes, non-finite values, ``vmax < vmin``, bad ``alpha``,
            ``mean``/``std``.

    Example:
        >>> import torch
        >>> from resad_kit.engine.heatmaps import overlay
        >>> image = torch.zeros(3, 16, 24)  # mid grey after undoing mean 0.5, std 0.5
        >>> amap = torch.zeros(16, 24)
        >>> amap[4:8, 4:8] = 1.0
        >>> mask = (amap > 0).float()
        >>> pic = overlay(image, amap, mask, mean=(0.5,) * 3, std=(0.5,) * 3)
        >>> pic.mode, pic.size
        ('RGB', (72, 16))
        >>> pic.getpixel((24 + 5, 5)), pic.getpixel((24 + 20, 12))  # hot: red; cold: blue
        ((128, 64, 64), (64, 64, 128))
    """
    fn = "overlay"
    image = check_tensor(fn, "image", image, ndim=3, shape_doc="(3, H, W)", finite=True)
    if image.shape[0] != 3:
        raise ValueError(f"{fn}: `image` must be (3, H, W); got {tuple(image.shape)}")
    norm = check_normalization(fn, mean, std)
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"{fn}: `alpha` must be in [0, 1]; got {alpha}")
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
    rgb = np.clip(rgb, 0.0, 1.0) * 255.0
    blend = (1.0 - alpha) * rgb + alpha * jet(t).astype(np.float64)
    panels = [rgb, blend]
    if mask is not None:
        m = _to_hw(fn, "mask", mask)
        check_finite(fn, "mask", m)
        m = _resize((m != 0).float(), size, "nearest").numpy() > 0.5
        blend[_outline(m)] = 255.0
        panels.append(np.repeat(m[..., None] * 255.0, 3, axis=-1))
    out = np.concatenate(panels, axis=1)
    return Image.fromarray(np.rint(out).astype(np.uint8), mode="RGB")


def _file_stem(path: str | PurePath) -> str:
    """``hazelnut/test/crack/003.png`` → ``hazelnut_test_crack_003`` (safe characters only)."""
    parts = [p for p in PurePath(path).parts if p not in ("/", "\\") and not p.endswith(":\\")]
    if not parts:
        raise ValueError(f"save_heatmaps: empty path {str(path)!r}")
    parts[-1] = PurePath(parts[-1]).stem
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(parts)).strip("._-")
    return stem or "image"


def save_heatmaps(
    images: torch.Tensor,
    maps: torch.Tensor,
    masks: torch.Tensor | None,
    paths: Sequence[str | PurePath],
    out_dir: str | Path,
    *,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    limit: int | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
) -> list[Path]:
    """Write one :func:`overlay` PNG per image, with one colour scale for all of them.

    Call it once per category. The colour range is ``[vmin, vmax]`` when given (pass the
    category's range over all its test maps), else the min and max over all ``maps``
    given (not only the first ``limit``).

    File names come from ``paths``: every component joined by ``_``, the extension
    replaced by ``.png``, characters other than ``A–Z a–z 0–9 . _ -`` replaced; pass
    paths relative to the data root (``Sample.relative_path``), which include the
    category, for short names that do not collide across categories. Two paths that map
    to the same name get ``-1``, ``-2``, … suffixes. Existing files are overwritten.

    Args:
        images: ``(B, 3, H, W)`` normalised images.
        maps: ``(B, H', W')`` or ``(B, 1, H', W')`` anomaly maps.
        masks: ``(B, H'', W'')`` or ``(B, 1, H'', W'')`` ground truth, or ``None``.
        paths: ``B`` image paths (names only; nothing is read).
        out_dir: folder to write to (created if missing).
        mean, std: the images' normalisation (see :func:`overlay`).
        limit: write only the first ``limit`` images (``None``: all).
        vmin, vmax: colour range (see above).

    Returns:
        The written files, in input order.

    Raises:
        ValueError: batch sizes that differ, wrong shapes, a bad ``limit``, empty paths.

    Example:
        >>> import tempfile, torch
        >>> from resad_kit.engine.heatmaps import save_heatmaps
        >>> images, maps = torch.zeros(3, 3, 8, 8), torch.rand(3, 8, 8)
        >>> paths = ["pill/test/crack/000.png", "pill/test/good/000.png", "pill/test/good/000.png"]
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     files = save_heatmaps(images, maps, None, paths, tmp, mean=None, std=None)
        >>> [f.name for f in files]
        ['pill_test_crack_000.png', 'pill_test_good_000.png', 'pill_test_good_000-1.png']
    """
    fn = "save_heatmaps"
    images = check_tensor(fn, "images", images, ndim=4, shape_doc="(B, 3, H, W)")
    maps = check_tensor(fn, "maps", maps, min_ndim=3, shape_doc="(B, H, W)", floating=False)
    if maps.ndim not in (3, 4):
        raise ValueError(f"{fn}: `maps` must be (B, H, W) or (B, 1, H, W); got {tuple(maps.shape)}")
    n = int(images.shape[0])
    paths = [paths] if isinstance(paths, str | PurePath) else list(paths)
    sizes = {"images": n, "maps": int(maps.shape[0]), "paths": len(paths)}
    if masks is not None:
        masks = check_tensor(fn, "masks", masks, min_ndim=3, floating=False)
        sizes["masks"] = int(masks.shape[0])
    if len(set(sizes.values())) != 1:
        raise ValueError(f"{fn}: batch sizes must match; got {sizes}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"{fn}: `limit` must be a non-negative int or None; got {limit!r}")
    check_finite(fn, "maps", maps)
    lo = float(maps.min()) if vmin is None else float(vmin)
    hi = float(maps.max()) if vmax is None else float(vmax)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    written: list[Path] = []
    for i in range(n if limit is None else min(limit, n)):
        stem = _file_stem(paths[i])
        name, k = stem, 0
        while name in used:
            k += 1
            name = f"{stem}-{k}"
        used.add(name)
        mask = None if masks is None else masks[i]
        pic = overlay(images[i], maps[i], mask, mean=mean, std=std, vmin=lo, vmax=hi)
        target = out / f"{name}.png"
        png = io.BytesIO()
        pic.save(png, format="PNG")
        written.append(atomic_write(target, png.getvalue()))  # never a half-written PNG
    return written
