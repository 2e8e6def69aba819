"""Layouts of the anomaly-detection data sets: listing samples without loading images.

Seven layouts cover the five data sets of the Res²CLIP paper, those of AF-CLIP's Table 1
and the shipped samples:

``mvtec`` (MVTec AD, MPDD, DTD-Synthetic, ``synthesize_dataset`` output, shipped samples)::

    <root>/<category>/train/good/<name>.<ext>
    <root>/<category>/test/good/<name>.<ext>
    <root>/<category>/test/<defect>/<name>.<ext>
    <root>/<category>/ground_truth/<defect>/<name>_mask.<ext>   (or <name>.<ext>)

``btad`` (BTAD): the same tree with ``ok`` for the normal folder (``train/ok``,
``test/ok``, ``test/ko``, ``ground_truth/ko``); images and masks mix ``.bmp`` and ``.png``.

``visa`` (VisA): ``<root>/split_csv/1cls.csv`` with the columns ``object, split, label,
image, mask``; ``label`` is ``normal`` or ``anomaly``; paths are relative to ``<root>``.

``dagm`` (DAGM 2007), ``classification`` (BrainMRI, Br35H: ``no``/``yes`` folders, no
masks) and ``segmentation`` (ISIC, CVC-ClinicDB, CVC-ColonDB, Kvasir: image and mask
folders, every image anomalous): the trees the AF-CLIP code reads, see
:mod:`resad_kit.data.dagm_medical`.

``meta_json``: any data set described by ``<root>/meta.json`` in the AnomalyCLIP/AdaCLIP
convention, see :mod:`resad_kit.data.meta_json`.

Mask lookup (folder layouts): for the image ``test/<defect>/<stem>.<ext>`` the mask is the
file in ``ground_truth/<defect>/`` whose name is ``<stem>_mask`` or ``<stem>`` with any
image extension (case-insensitive); ``_mask`` wins when both exist. An anomalous image
without a mask is an error, except in the sets without masks (``classification``, or a
``meta.json`` that lists none).

Hidden entries (names starting with ``.``, and ``__MACOSX``) are skipped wherever folders
or files are listed. The VisA CSV may start with a UTF-8 byte-order mark (as Excel and
Windows editors save it).
"""

from __future__ import annotations

import csv
from pathlib import Path

from resad_kit.data.dagm_medical import READERS, folder_layout
from resad_kit.data.meta_json import (
    META_JSON,
    has_meta_json,
    meta_json_categories,
    meta_json_levels,
    scan_meta_json,
)
from resad_kit.data.sample import (
    IMAGE_EXTENSIONS,
    Sample,
    entries,
    find_mask,
    image_files,
    listdir,
    mask_index,
)

__all__ = [
    "LAYOUTS",
    "METRIC_LEVELS",
    "Sample",
    "detect_layout",
    "find_categories",
    "metric_levels",
    "scan_samples",
]

LAYOUTS = ("mvtec", "btad", "visa", "dagm", "classification", "segmentation", "meta_json")
#: The metric levels: image metrics (I-AUROC, I-AP, I-F1max) and pixel metrics (P-*, PRO).
METRIC_LEVELS = ("image", "pixel")
SPLITS = ("train", "test")
_NORMAL_FOLDER = {"mvtec": "good", "btad": "ok"}
_VISA_CSV = Path("split_csv") / "1cls.csv"
_VISA_COLUMNS = ("object", "split", "label", "image", "mask")
_LEVELS = {"classification": ("image",), "segmentation": ("pixel",)}


def _category_dir(root: Path, category: str) -> Path:
    cat_dir = root / category
    if not cat_dir.is_dir():
        hint = (
            f"; `root` looks like the category folder itself: pass its parent {str(root.parent)!r}"
            if root.name == category
            else ""
        )
        raise ValueError(
            f"AnomalyDataset: category {category!r} not found under `root` {str(root)!r}; "
            f"categories found there: {find_categories(root) or 'none'} "
            f"(entries: {listdir(root)[:20]}){hint}"
        )
    return cat_dir


def _native_layout(cat_dir: Path) -> str | None:
    """The folder layout of a category folder (``None`` if it matches none)."""
    for layout, normal in _NORMAL_FOLDER.items():
        if any((cat_dir / split / normal).is_dir() for split in SPLITS):
            return layout
    return folder_layout(cat_dir)


def detect_layout(root: str | Path, category: str) -> str:
    """The layout of a data root (one of :data:`LAYOUTS`), read from disk.

    In this order: ``visa`` if ``<root>/split_csv/1cls.csv`` exists; then the folder
    layouts of ``<root>/<category>``: ``mvtec`` (``train/good`` or ``test/good``), ``btad``
    (``train/ok`` or ``test/ok``), ``dagm`` (``Train/Label`` or ``Test/Label``),
    ``classification`` (``no`` and ``yes``), ``segmentation`` (``images`` and ``masks``, or
    ISIC 2016's folders); then ``meta_json`` if ``<root>/meta.json`` lists the category.
    A folder layout wins over ``meta.json``: the MVTec AD and VisA roots prepared for the
    official codes hold a ``meta.json`` that lists the same files, and they keep being read
    as before.

    Args:
        root: the data root (the folder that holds the category folders or ``meta.json``).
        category: a category name under ``root``.

    Returns:
        The layout name.

    Raises:
        ValueError: when no layout matches; the message lists what was found.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from resad_kit.data import detect_layout
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     (Path(tmp) / "01" / "train" / "ok").mkdir(parents=True)
        ...     (Path(tmp) / "BrainMRI" / "no").mkdir(parents=True)
        ...     (Path(tmp) / "BrainMRI" / "yes").mkdir()
        ...     detect_layout(tmp, "01"), detect_layout(tmp, "BrainMRI")
        ('btad', 'classification')
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"detect_layout: `root` {str(root)!r} is not a directory")
    if (root / _VISA_CSV).is_file():
        return "visa"
    cat_dir = root / category
    native = _native_layout(cat_dir) if cat_dir.is_dir() else None
    if native is not None:
        return native
    if has_meta_json(root) and category in meta_json_categories(root):
        return "meta_json"
    cat_dir = _category_dir(root, category)
    found = {s: listdir(cat_dir / s) for s in (*SPLITS, "ground_truth")}
    raise ValueError(
        f"detect_layout: no known layout in {str(cat_dir)!r}: expected train/good or "
        f"test/good (MVTec AD, MPDD, DTD-Synthetic), train/ok or test/ok (BTAD), "
        f"Train/Label or Test/Label (DAGM), no/ and yes/ (BrainMRI, Br35H), images/ and "
        f"masks/ (ClinicDB, ColonDB, Kvasir, ISIC), {str(root / _VISA_CSV)!r} (VisA) or a "
        f"{str(root / META_JSON)!r} that lists {category!r}; found {listdir(cat_dir)} at "
        f"the category level and {found} below it"
    )


def find_categories(root: str | Path) -> tuple[str, ...]:
    """The categories present under a data root, sorted.

    For VisA (``split_csv/1cls.csv``): the ``object`` values of the CSV. Otherwise: the
    sub-folders in one of the folder layouts (see :func:`detect_layout`) and the classes
    listed by ``<root>/meta.json``, if any.

    Args:
        root: the data root.

    Returns:
        The category names (empty when none is found).

    Raises:
        ValueError: a ``meta.json`` that cannot be read (see :func:`scan_samples`).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from resad_kit.data import find_categories
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     for c in ("wood", "bottle"):
        ...         (Path(tmp) / c / "train" / "good").mkdir(parents=True)
        ...     (Path(tmp) / "Class1" / "Test" / "Label").mkdir(parents=True)
        ...     (Path(tmp) / "docs").mkdir()
        ...     find_categories(tmp)
        ('Class1', 'bottle', 'wood')
    """
    root = Path(root)
    if (root / _VISA_CSV).is_file():
        return tuple(sorted({row["object"] for row in _read_visa_csv(root)}))
    if not root.is_dir():
        return ()
    folders = {p.name for p in entries(root) if p.is_dir() and _native_layout(p) is not None}
    listed = set(meta_json_categories(root)) if has_meta_json(root) else set()
    return tuple(sorted(folders | listed))


def metric_levels(root: str | Path, layout: str) -> tuple[str, ...]:
    """The metric levels a data set supports: both, ``("image",)`` or ``("pixel",)``.

    The data set declares them through its layout: ``classification`` sets have no masks
    (image metrics only), ``segmentation`` sets no normal image (pixel metrics only), a
    ``meta.json`` set by its ``test`` section (normal images → image metrics, masks →
    pixel metrics); every other layout supports both, so that a category of MVTec AD
    without normal images stays an error instead of a silent "–".

    Args:
        root: the data root.
        layout: a layout name (not ``"auto"``; see :func:`detect_layout`).

    Returns:
        The supported levels, in :data:`METRIC_LEVELS` order.

    Raises:
        ValueError: an unknown layout; for ``meta_json``, see :func:`scan_samples`.

    Example:
        >>> from resad_kit.data import metric_levels
        >>> metric_levels("/data", "classification"), metric_levels("/data", "mvtec")
        (('image',), ('image', 'pixel'))
    """
    if layout not in LAYOUTS:
        raise ValueError(f"metric_levels: `layout` must be one of {LAYOUTS}; got {layout!r}")
    if layout == "meta_json":
        return meta_json_levels(Path(root))
    return _LEVELS.get(layout, METRIC_LEVELS)


def _scan_folder(root: Path, category: str, split: str, layout: str) -> list[Sample]:
    cat_dir = _category_dir(root, category)
    split_dir = cat_dir / split
    if not split_dir.is_dir():
        raise ValueError(
            f"AnomalyDataset: no {split!r} folder in {str(cat_dir)!r}; found {listdir(cat_dir)}"
        )
    normal = _NORMAL_FOLDER[layout]
    samples = []
    for defect_dir in (p for p in entries(split_dir) if p.is_dir()):
        defect = defect_dir.name
        label = 0 if defect == normal else 1
        gt_dir = cat_dir / "ground_truth" / defect
        masks = mask_index(gt_dir) if label else {}
        for image in image_files(defect_dir):
            mask = find_mask(masks, gt_dir, image) if label else None
            samples.append(
                Sample(
                    path=image.absolute(),
                    mask_path=None if mask is None else mask.absolute(),
                    label=label,
                    defect=defect,
                    category=category,
                    relative_path=image.relative_to(root).as_posix(),
                )
            )
    return samples


def _read_visa_csv(root: Path) -> list[dict[str, str]]:
    path = root / _VISA_CSV
    with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: skip a byte-order mark
        reader = csv.DictReader(f)
        header = tuple(reader.fieldnames or ())
        missing = [c for c in _VISA_COLUMNS if c not in header]
        if missing:
            raise ValueError(
                f"AnomalyDataset: {str(path)!r} lacks the columns {missing}; "
                f"expected {list(_VISA_COLUMNS)}, got {list(header)}"
            )
        return [{k: (v or "").strip() for k, v in row.items() if k} for row in reader]


def _scan_visa(root: Path, category: str, split: str) -> list[Sample]:
    rows = _read_visa_csv(root)
    objects = sorted({r["object"] for r in rows})
    if category not in objects:
        raise ValueError(
            f"AnomalyDataset: category {category!r} is not in {str(root / _VISA_CSV)!r}; "
            f"objects there: {objects}"
        )
    samples = []
    for row in rows:
        if row["object"] != category or row["split"] != split:
            continue
        if row["label"] not in ("normal", "anomaly"):
            raise ValueError(
                f"AnomalyDataset: VisA label must be 'normal' or 'anomaly'; "
                f"got {row['label']!r} for {row['image']!r}"
            )
        label = int(row["label"] == "anomaly")
        image = root / row["image"]
        if not image.is_file():
            raise ValueError(f"AnomalyDataset: image {str(image)!r} listed in the CSV is missing")
        mask = None
        if label:
            if not row["mask"]:
                raise ValueError(f"AnomalyDataset: anomalous image {row['image']!r} has no mask")
            mask = root / row["mask"]
            if not mask.is_file():
                raise ValueError(f"AnomalyDataset: mask {str(mask)!r} listed in the CSV is missing")
        samples.append(
            Sample(
                path=image.absolute(),
                mask_path=None if mask is None else mask.absolute(),
                label=label,
                defect=row["label"],
                category=category,
                relative_path=Path(row["image"]).as_posix(),
            )
        )
    return samples


def scan_samples(
    root: str | Path, category: str, split: str, layout: str = "auto"
) -> tuple[tuple[Sample, ...], str]:
    """List the samples of one category and split, without reading any image.

    Folder layouts are ordered by (defect folder, file name); VisA keeps the CSV's row order
    (the official code's metadata order) and ``meta_json`` the file's order. Image
    extensions are matched case-insensitively; hidden files and folders (names starting
    with ``.``, and ``__MACOSX``) and non-image files are ignored.

    Args:
        root: the data root.
        category: the category name.
        split: ``"train"`` or ``"test"`` (the ``classification`` and ``segmentation``
            layouts have a test split only).
        layout: ``"auto"`` (see :func:`detect_layout`) or one of :data:`LAYOUTS`.

    Returns:
        ``(samples, layout)`` — the samples and the layout used.

    Raises:
        ValueError: unknown ``split``/``layout``, missing folders or files, an anomalous
            image without its mask (where the layout has masks), a ``meta.json`` that is
            missing, not JSON, lacks keys or points outside ``root``, or no image at all.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> from resad_kit.data import scan_samples
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     cat = Path(tmp) / "01"
        ...     for sub, name in [
        ...         ("test/ok", "0.bmp"),
        ...         ("test/ko", "1.bmp"),
        ...         ("ground_truth/ko", "1.png"),
        ...     ]:
        ...         (cat / sub).mkdir(parents=True)
        ...         Image.new("L", (4, 4)).save(cat / sub / name)
        ...     samples, layout = scan_samples(tmp, "01", "test")
        ...     (
        ...         layout,
        ...         [
        ...             (s.relative_path, s.label, s.mask_path.name if s.mask_path else None)
        ...             for s in samples
        ...         ],
        ...     )
        ('btad', [('01/test/ko/1.bmp', 1, '1.png'), ('01/test/ok/0.bmp', 0, None)])
    """
    fn = "AnomalyDataset"
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{fn}: `root` {str(root)!r} is not a directory")
    if split not in SPLITS:
        raise ValueError(f"{fn}: `split` must be one of {SPLITS}; got {split!r}")
    if layout == "auto":
        layout = detect_layout(root, category)
    if layout not in LAYOUTS:
        raise ValueError(f"{fn}: `layout` must be 'auto' or one of {LAYOUTS}; got {layout!r}")
    if layout == "visa":
        if not (root / _VISA_CSV).is_file():
            raise ValueError(f"{fn}: layout 'visa' needs {str(root / _VISA_CSV)!r}; it is missing")
        samples = _scan_visa(root, category, split)
    elif layout == "meta_json":
        samples = scan_meta_json(root, category, split)
    elif layout in READERS:
        samples = READERS[layout](root, _category_dir(root, category), category, split)
    else:
        samples = _scan_folder(root, category, split, layout)
    if not samples:
        raise ValueError(
            f"{fn}: no images for category {category!r}, split {split!r} in {str(root)!r} "
            f"(layout {layout!r}; extensions {IMAGE_EXTENSIONS})"
        )
    return tuple(samples), layout
