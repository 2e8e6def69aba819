"""The pictures of the synthetic data set: jittered normal views and drawn defects.

Normal images are crops of scikit-image's bundled sample images (no download), with mild
random jitter: textures (``brick``, ``grass``, ``gravel``) get a random crop (position,
scale, 0° or 180° rotation); objects (``coffee``, ``coins``) a small shift and scale around
a fixed view; all get a ±5 % brightness change (:func:`render_normal`). Anomalies are drawn
on a normal image with an exact mask (:func:`draw_defect`): every pixel outside the mask
equals the defect-free image. :func:`~resad_kit.data.synthesize_dataset` writes them as
files.

Source images and their licences (scikit-image's documentation): ``brick`` and ``gravel``
(CC0Textures, CC0), ``grass`` (CC0), ``coffee`` (CC0, Rachel Michetti), ``coins``
(Brooklyn Museum, no known copyright restrictions), and ``immunohistochemistry`` for the
foreign patches (no known copyright restrictions).
"""

from __future__ import annotations

import functools
import zlib

import numpy as np
from PIL import Image
from skimage import data as skdata
from skimage import draw
from skimage.filters import gaussian
from skimage.morphology import dilation, disk

# render_normal, seeded_rng and MIN_SIZE are helpers of resad_kit.data.synthetic
__all__ = ["DEFECT_KINDS", "SYNTHETIC_CATEGORIES", "draw_defect"]

SYNTHETIC_CATEGORIES: tuple[str, ...] = ("brick", "coffee", "coins", "grass", "gravel")
"""Categories of :func:`~resad_kit.data.synthesize_dataset` (scikit-image sample images)."""
DEFECT_KINDS: tuple[str, ...] = ("scratch", "hole", "stain", "missing", "foreign")
"""Defect types of :func:`draw_defect`, in the order `synthesize_dataset` cycles them."""

_TEXTURES = ("brick", "grass", "gravel")
# objects: a fixed square view (top, left, side) of the source image that the jitter moves
_OBJECT_VIEWS = {"coffee": (20, 140, 340), "coins": (0, 40, 303)}
MIN_SIZE = 16  # smallest image side


@functools.lru_cache(maxsize=8)
def _source(name: str) -> np.ndarray:
    """A bundled scikit-image sample as read-only ``(H, W, 3)`` uint8 (cached)."""
    image = getattr(skdata, name)()
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    image = np.ascontiguousarray(image[:, :, :3])
    image.setflags(write=False)
    return image


def seeded_rng(seed: int, category: str, part: int, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``part`` (0 train, 1 normal test, 2 defective)."""
    return np.random.default_rng([seed & 0xFFFFFFFF, zlib.crc32(category.encode()), part, index])


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))


def render_normal(category: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A jittered defect-free view of ``category``: ``(size, size, 3)`` uint8."""
    src = _source(category)
    h, w = src.shape[:2]
    if category in _TEXTURES:
        side = int(rng.uniform(0.55, 0.75) * min(h, w))
        top = int(rng.integers(0, h - side + 1))
        left = int(rng.integers(0, w - side + 1))
        crop = src[top : top + side, left : left + side]
        crop = np.rot90(crop, k=2 * int(rng.integers(0, 2)))  # 0° or 180°: same orientation
    else:
        top0, left0, side0 = _OBJECT_VIEWS[category]
        side = int(side0 * rng.uniform(0.94, 1.0))
        max_shift = max(1, int(0.03 * side0))
        top = int(np.clip(top0 + rng.integers(-max_shift, max_shift + 1), 0, h - side))
        left = int(np.clip(left0 + rng.integers(-max_shift, max_shift + 1), 0, w - side))
        crop = src[top : top + side, left : left + side]
    out = _resize(np.ascontiguousarray(crop), size).astype(np.float32)
    out *= rng.uniform(0.95, 1.05)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _random_polygon(
    rng: np.random.Generator, centre: tuple[float, float], radius: float, shape: tuple[int, int]
) -> np.ndarray:
    n = int(rng.integers(5, 9))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = radius * rng.uniform(0.5, 1.0, n)
    rr, cc = draw.polygon(centre[0] + radii * np.sin(angles), centre[1] + radii * np.cos(angles))
    mask = np.zeros(shape, dtype=bool)
    keep = (rr >= 0) & (rr < shape[0]) & (cc >= 0) & (cc < shape[1])
    mask[rr[keep], cc[keep]] = True
    return mask


def _defect_region(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """The boolean ``(size, size)`` region a defect of ``kind`` occupies."""
    shape = (size, size)
    cy, cx = (float(v) for v in rng.uniform(0.25 * size, 0.75 * size, 2))
    mask = np.zeros(shape, dtype=bool)
    if kind == "scratch":
        ends = rng.uniform(0.1 * size, 0.9 * size, (3, 2)).round().astype(int)
        rr, cc = draw.bezier_curve(*ends[0], *ends[1], *ends[2], weight=1.0, shape=shape)
        mask[rr, cc] = True
        width = max(0, round(size / 128))
        if width:
            mask = dilation(mask, disk(width))
    elif kind == "hole":
        r = max(1.5, float(rng.uniform(0.04, 0.09)) * size)
        rr, cc = draw.ellipse(cy, cx, r, r * rng.uniform(0.7, 1.3), shape=shape)
        mask[rr, cc] = True
    elif kind == "stain":
        r = max(2.0, float(rng.uniform(0.08, 0.16)) * size)
        rr, cc = draw.ellipse(cy, cx, r, r * rng.uniform(0.6, 1.4), shape=shape)
        ellipse = np.zeros(shape, dtype=bool)
        ellipse[rr, cc] = True
        noise = gaussian(rng.normal(size=shape), sigma=max(1.0, size / 48))
        mask = ellipse & (noise >= np.quantile(noise[ellipse], 0.3))
    elif kind in ("missing", "foreign"):
        mask = _random_polygon(
            rng, (cy, cx), max(2.0, float(rng.uniform(0.08, 0.16)) * size), shape
        )
    if kind != "scratch":  # a curve always has pixels; the others keep their centre pixel
        mask[round(cy), round(cx)] = True
    return mask


def _defect_pixels(
    kind: str, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """The defect's colours for every pixel of ``image`` (used only inside ``mask``)."""
    img = image.astype(np.float32)
    size = image.shape[0]
    if kind == "scratch":
        level = 235.0 if rng.random() < 0.5 else 25.0
        out = np.full_like(img, level) + rng.normal(0, 6, img.shape)
    elif kind == "hole":
        ys, xs = np.nonzero(mask)
        cy, cx = ys.mean(), xs.mean()
        radius = max(1.0, float(np.sqrt(mask.sum() / np.pi)))
        yy, xx = np.mgrid[:size, :size]
        dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / radius
        out = np.repeat((15.0 + 45.0 * np.clip(dist, 0, 1))[:, :, None], 3, axis=2)
    elif kind == "stain":
        colour = np.array([rng.uniform(90, 160), rng.uniform(40, 90), rng.uniform(10, 50)])
        alpha = float(rng.uniform(0.55, 0.75))
        out = (1 - alpha) * img + alpha * colour
    elif kind == "missing":
        out = np.full_like(img, float(rng.uniform(0, 30)))
    else:  # foreign
        patch = _resize(_source("immunohistochemistry"), 2 * size).astype(np.float32)
        top, left = (int(v) for v in rng.integers(0, size + 1, 2))
        out = patch[top : top + size, left : left + size]
    return np.clip(np.rint(out), 0, 255)


def draw_defect(image: np.ndarray, kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic defect on an image, with its exact mask.

    Kinds: ``scratch`` (a thin dark or bright Bézier curve), ``hole`` (a dark shaded
    ellipse), ``stain`` (an irregular brownish blot blended over the image), ``missing``
    (a polygon filled with a flat dark colour, as if a piece were cut out) and ``foreign``
    (a polygon of foreign texture: scikit-image's immunohistochemistry image).

    Only pixels inside the mask change: ``out[~mask] == image[~mask]``. The mask is never
    empty.

    Args:
        image: ``(S, S, 3)`` uint8 RGB image, ``S ≥ 16``.
        kind: one of :data:`DEFECT_KINDS`.
        seed: seed of the random shape, position and colour.

    Returns:
        ``(defective image, mask)``: ``(S, S, 3)`` uint8 and ``(S, S)`` bool.

    Raises:
        ValueError: on a non-square, non-RGB, non-uint8 or too small image, or an unknown
            ``kind``.

    Example:
        >>> import numpy as np
        >>> from resad_kit.data import draw_defect
        >>> clean = np.full((64, 64, 3), 128, dtype=np.uint8)
        >>> out, mask = draw_defect(clean, "hole", seed=0)
        >>> out.shape, mask.dtype, bool(mask.any())
        ((64, 64, 3), dtype('bool'), True)
        >>> bool((out[~mask] == clean[~mask]).all()), bool((out[mask] != clean[mask]).any())
        (True, True)
    """
    fn = "draw_defect"
    if kind not in DEFECT_KINDS:
        raise ValueError(f"{fn}: `kind` must be one of {DEFECT_KINDS}; got {kind!r}")
    if not (
        isinstance(image, np.ndarray)
        and image.dtype == np.uint8
        and image.ndim == 3
        and image.shape[2] == 3
        and image.shape[0] == image.shape[1] >= MIN_SIZE
    ):
        got = (
            f"shape {image.shape}, dtype {image.dtype}"
            if isinstance(image, np.ndarray)
            else type(image).__name__
        )
        raise ValueError(
            f"{fn}: `image` must be a uint8 array (S, S, 3) with S ≥ {MIN_SIZE}; got {got}"
        )
    rng = np.random.default_rng([seed & 0xFFFFFFFF, zlib.crc32(kind.encode())])
    mask = _defect_region(kind, image.shape[0], rng)
    pixels = _defect_pixels(kind, image, mask, rng).astype(np.uint8)
    out = image.copy()
    out[mask] = pixels[mask]
    return out, mask
