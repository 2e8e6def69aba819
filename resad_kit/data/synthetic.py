"""A small synthetic anomaly-detection data set in the MVTec AD layout (offline tests, demos).

The pictures come from :mod:`resad_kit.data.synthetic_images`: crops of scikit-image's
bundled sample images (no download) with mild random jitter, and defects drawn with an
exact mask (:func:`draw_defect`: every pixel outside the mask equals the defect-free
image). This module writes them as files (:func:`synthesize_dataset`).

Everything is drawn from ``numpy.random.default_rng`` seeded with
``(seed, crc32(category), part, index)``, so a category's images do not depend on which
other categories are written, and files are PNGs written by PIL (no timestamps): the same
arguments give byte-identical files (with the same numpy, scikit-image and Pillow).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from resad_kit.data._synthetic_files import (
    MANIFEST_NAME,
    is_complete,
    remove_stale_temp,
    write_manifest,
    write_png,
)
from resad_kit.data.synthetic_images import (
    DEFECT_KINDS,
    MIN_SIZE,
    SYNTHETIC_CATEGORIES,
    draw_defect,
    render_normal,
    seeded_rng,
)
from resad_kit.ops._validation import check_positive_int

__all__ = [
    "DEFECT_KINDS",
    "MANIFEST_NAME",
    "SYNTHETIC_CATEGORIES",
    "draw_defect",
    "synthesize_dataset",
]


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
        image = render_normal(category, image_size, seeded_rng(seed, category, 0, i))
        write_png(image, cat_dir / "train" / "good" / f"{i:03d}.png")
    n_good = n_test // 2
    for i in range(n_good):
        image = render_normal(category, image_size, seeded_rng(seed, category, 1, i))
        write_png(image, cat_dir / "test" / "good" / f"{i:03d}.png")
    counts = dict.fromkeys(defects, 0)
    for j in range(n_test - n_good):
        kind = defects[j % len(defects)]
        rng = seeded_rng(seed, category, 2, j)
        clean = render_normal(category, image_size, rng)
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
    if image_size < MIN_SIZE:
        raise ValueError(f"{fn}: `image_size` must be ≥ {MIN_SIZE}; got {image_size}")
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
