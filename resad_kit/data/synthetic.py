"""A small synthetic anomaly-detection data set in the MVTec AD layout (offline tests, demos).

Normal images are crops of scikit-image's bundled sample images (no download), with mild
random jitter: textures (``brick``, ``grass``, ``gravel``) get a random crop (position,
scale, 0° or 180° rotation); objects (``coffee``, ``coins``) a small shift and scale around
a fixed view; all get a ±5 % brightness change. Anomalies are drawn on a normal image with
an exact mask (:func:`draw_defect`): every pixel outside the mask equals the defect-free
image.

Everything is drawn from ``numpy.random.default_rng`` seeded with
``(seed, crc32(category), part, index)``, so a category's images do not depend on which
other categories are written, and files are PNGs written by PIL (no timestamps): the same
arguments give byte-identical files (with the same numpy, scikit-image and Pillow).

Source images and their licences (scikit-image's documentation): ``brick`` and ``gravel``
(CC0Textures, CC0), ``grass`` (CC0), ``coffee`` (CC0, Rachel Michetti), ``coins``
(Brooklyn Museum, no known copyright restrictions), and ``immunohistochemistry`` for the
foreign patches (no known copyright restrictions).
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from skimage import data as skdata
from skimage import draw
from skimage.filters import gaussian
from skimage.morphology import dilation, disk

from resad_kit.data._synthetic_files import (
    MANIFEST_NAME,
    is_complete,
    remove_stale_temp,
    write_manifest,
    write_png,
)
from resad_kit.ops._validation import check_positive_int

__all__ = [
    "DEFECT_KINDS",
    "MANIFEST_NAME",
    "SYNTHETIC_CATEGORIES",
    "draw_defect",
    "synthesize_dataset",
]

SYNTHETIC_CATEGORIES: tuple[str, ...] = ("brick", "coffee", "coins", "grass", "gravel")
"""Categories of :func:`synthesize_dataset` (scikit-image sample images)."""
DEFECT_KINDS: tuple[str, ...] = ("scratch", "hole", "stain", "missing", "foreign")
"""Defect types of :func:`draw_defect`, in the order :func:`synthesize_dataset` cycles them."""

_TEXTURES = ("brick", "grass", "gravel")
# objects: a fixed square view (top, left, side) of the source image that the jitter moves
_OBJECT_VIEWS = {"coffee": (20, 140, 340), "coins": (0, 40, 303)}
_MIN_SIZE = 16


@functools.lru_cache(maxsize=8)
def _source(name: str) -> np.ndarray:
    """A bundled scikit-image sample as read-only ``(H, W, 3)`` uint8 (cached)."""
    image = getattr(skdata, name)()
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    image = np.ascontiguousarray(image[:, :, :3])
    image.setflags(write=False)
    return image


def _seeded(seed: int, category: str, part: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed & 0xFFFFFFFF, zlib.crc32(category.encode()), part, index])


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))


def _render_normal(category: str, size: int, rng: np.random.Generator) -> np.ndarray:
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
        and image.shape[0] == image.shape[1] >= _MIN_SIZE
    ):
        got = (
            f"shape {image.shape}, dtype {image.dtype}"
            if isinstance(image, np.ndarray)
            else type(image).__name__
        )
        raise ValueError(
            f"{fn}: `image` must be a uint8 array (S, S, 3) with S ≥ {_MIN_SIZE}; got {got}"
        )
    rng = np.random.default_rng([seed & 0xFFFFFFFF, zlib.crc32(kind.encode())])
    mask = _defect_region(kind, image.shape[0], rng)
    pixels = _defect_pixels(kind, image, mask, rng).astype(np.uint8)
    out = image.copy()
    out[mask] = pixels[mask]
    return out, mask


def _write_category(
    cat_dir: Path,
    category: str,
    settings: dict[str, Any],
    n_train: int,
    n_test: int,
    seed: int,
    image_size: int,
    defects: tuple[str, ...],
) -> None:
    """Every file of one category under ``cat_dir``, the manifest last."""
    for i in range(n_train):
        image = _render_normal(category, image_size, _seeded(seed, category, 0, i))
        write_png(image, cat_dir / "train" / "good" / f"{i:03d}.png")
    n_good = n_test // 2
    for i in range(n_good):
        image = _render_normal(category, image_size, _seeded(seed, category, 1, i))
        write_png(image, cat_dir / "test" / "good" / f"{i:03d}.png")
    counts = dict.fromkeys(defects, 0)
    for j in range(n_test - n_good):
        kind = defects[j % len(defects)]
        rng = _seeded(seed, category, 2, j)
        clean = _render_normal(category, image_size, rng)
        image, mask = draw_defect(clean, kind, int(rng.integers(0, 2**31)))
        name = f"{counts[kind]:03d}"
        counts[kind] += 1
        write_png(image, cat_dir / "test" / kind / f"{name}.png")
        write_png(mask.astype(np.uint8) * 255, cat_dir / "ground_truth" / kind / f"{name}_mask.png")
    write_manifest(cat_dir, settings)


def synthesize_dataset(
    root: str | Path,
    categories: Sequence[str] | None = None,
    n_train: int = 8,
    n_test: int = 8,
    seed: int = 0,
    *,
    image_size: int = 256,
    defects: Sequence[str] = DEFECT_KINDS,
    overwrite: bool = False,
    reuse: bool = False,
) -> Path:
    """Write a small synthetic data set in the MVTec AD layout; deterministic per seed.

    Per category: ``n_train`` normal training images; ``n_test`` test images, of which
    ``n_test // 2`` are normal and the rest anomalous, the defect types taken in turn from
    ``defects``; one 0/255 mask per anomalous image; and ``synthetic.json``
    (:data:`MANIFEST_NAME`), the settings and the SHA-256 of every file::

        <root>/<category>/train/good/000.png ...
        <root>/<category>/test/good/000.png ...
        <root>/<category>/test/<defect>/000.png ...
        <root>/<category>/ground_truth/<defect>/000_mask.png ...
        <root>/<category>/synthetic.json

    Each category is written into a temporary folder ``<root>/.<category>.tmp…`` and
    renamed to ``<root>/<category>`` when complete, so an interrupted call never leaves a
    partial category under its real name (its temporary folder is deleted by the next
    call for that category). Only one call may write into ``root`` at a time.

    Args:
        root: output folder (created if needed).
        categories: a subset of :data:`SYNTHETIC_CATEGORIES`; default all of them.
        n_train: normal training images per category (≥ 1).
        n_test: test images per category (≥ 0).
        seed: the seed; the same arguments give byte-identical files.
        image_size: side of the square images (≥ 16).
        defects: defect types to draw, a subset of :data:`DEFECT_KINDS`.
        overwrite: replace an existing ``<root>/<category>`` folder instead of failing.
        reuse: keep an existing category whose manifest has these settings and whose
            files are all present, unaltered and not more (checked by their SHA-256);
            regenerate any other existing category folder (a partial or altered one, or
            one written with other settings).

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: unknown categories or defects, bad counts or size, or an existing
            category folder without ``overwrite=True`` or ``reuse=True``.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from resad_kit.data import synthesize_dataset
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     root = synthesize_dataset(
        ...         tmp, categories=["coffee"], n_train=2, n_test=2, image_size=32
        ...     )
        ...     sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
        ['coffee/ground_truth/scratch/000_mask.png',
         'coffee/test/good/000.png',
         'coffee/test/scratch/000.png',
         'coffee/train/good/000.png',
         'coffee/train/good/001.png']

        With ``reuse=True`` a complete category is kept and a damaged one regenerated:

        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     kwargs = dict(categories=["coffee"], n_train=2, n_test=2, image_size=32)
        ...     root = synthesize_dataset(tmp, **kwargs)
        ...     (root / "coffee" / "test" / "good" / "000.png").unlink()  # a damaged copy
        ...     root = synthesize_dataset(tmp, reuse=True, **kwargs)
        ...     (root / "coffee" / "test" / "good" / "000.png").is_file()
        True
    """
    fn = "synthesize_dataset"
    categories = SYNTHETIC_CATEGORIES if categories is None else tuple(categories)
    unknown = [c for c in categories if c not in SYNTHETIC_CATEGORIES]
    if unknown or not categories:
        raise ValueError(
            f"{fn}: `categories` must be a non-empty subset of {SYNTHETIC_CATEGORIES}; "
            f"got {list(categories)}"
        )
    defects = tuple(defects)
    if not defects or any(d not in DEFECT_KINDS for d in defects):
        raise ValueError(
            f"{fn}: `defects` must be a non-empty subset of {DEFECT_KINDS}; got {list(defects)}"
        )
    n_train = check_positive_int(fn, "n_train", n_train)
    if isinstance(n_test, bool) or not isinstance(n_test, int) or n_test < 0:
        raise ValueError(f"{fn}: `n_test` must be a non-negative int; got {n_test!r}")
    image_size = check_positive_int(fn, "image_size", image_size)
    if image_size < _MIN_SIZE:
        raise ValueError(f"{fn}: `image_size` must be ≥ {_MIN_SIZE}; got {image_size}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"{fn}: `seed` must be an int; got {seed!r}")
    root = Path(root)
    todo = []
    for category in categories:
        settings = {
            "category": category,
            "n_train": n_train,
            "n_test": n_test,
            "seed": seed,
            "image_size": image_size,
            "defects": list(defects),
        }
        cat_dir = root / category
        if cat_dir.exists() and any(cat_dir.iterdir()):
            if reuse and is_complete(cat_dir, settings):
                continue
            if not (overwrite or reuse):
                raise ValueError(
                    f"{fn}: {str(cat_dir)!r} exists and is not empty; pass overwrite=True "
                    f"to replace it"
                )
        todo.append((category, settings))
    root.mkdir(parents=True, exist_ok=True)
    for category, settings in todo:
        remove_stale_temp(root, category)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{category}.tmp"))
        try:
            _write_category(tmp, category, settings, n_train, n_test, seed, image_size, defects)
            cat_dir = root / category
            if cat_dir.exists():  # the old folder goes aside, then away: never half of each
                old = Path(tempfile.mkdtemp(dir=root, prefix=f".{category}.tmp"))
                os.replace(cat_dir, old / category)
                os.replace(tmp, cat_dir)
                shutil.rmtree(old)
            else:
                os.replace(tmp, cat_dir)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return root
