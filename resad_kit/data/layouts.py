"""Folder layouts of the anomaly-detection data sets: listing samples without loading images.

Three layouts cover the five data sets of the paper and the shipped samples:

``mvtec`` (MVTec AD, MPDD, DTD-Synthetic, ``synthesize_dataset`` output, shipped samples)::

    <root>/<category>/train/good/<name>.<ext>
    <root>/<category>/test/good/<name>.<ext>
    <root>/<category>/test/<defect>/<name>.<ext>
    <root>/<category>/ground_truth/<defect>/<name>_mask.<ext>   (or <name>.<ext>)

``btad`` (BTAD): the same tree with ``ok`` for the normal folder (``train/ok``,
``test/ok``, ``test/ko``, ``ground_truth/ko``); images and masks mix ``.bmp`` and ``.png``.

``visa`` (VisA): ``<root>/split_csv/1cls.csv`` with the columns ``object, split, label,
image, mask``; ``label`` is ``normal`` or ``anomaly``; paths are relative to ``<root>``.

Mask lookup (folder layouts): for the image ``test/<defect>/<stem>.<ext>`` the mask is the
file in ``ground_truth/<defect>/`` whose name is ``<stem>_mask`` or ``<stem>`` with any
image extension (case-insensitive); ``_mask`` wins when both exist. An anomalous image
without a mask is an error.

Hidden entries are skipped everywhere folders or files are listed: names that start with
``.`` (``.ipynb_checkpoints``, ``.DS_Store``, macOS's ``._*`` resource forks) and
``__MACOSX`` (the folder macOS's zip tool adds), so that they never become categories,
defect types or images. The VisA CSV may start with a UTF-8 byte-order mark (as Excel and
Windows editors save it).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LAYOUTS", "Sample", "detect_layout", "find_categories", "scan_samples"]

LAYOUTS = ("mvtec", "btad", "visa")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SPLITS = ("train", "test")
_NORMAL_FOLDER = {"mvtec": "good", "btad": "ok"}
_VISA_CSV = Path("split_csv") / "1cls.csv"
_VISA_COLUMNS = ("object", "split", "label", "image", "mask")


@dataclass(frozen=True)
class Sample:
    """One image of a data set, listed without reading it.

    Attributes:
        path: absolute path of the image file.
        mask_path: absolute path of the ground-truth mask; ``None`` for normal images.
        label: ``0`` normal, ``1`` anomalous.
        defect: defect type — the image's folder name (``good``/``ok`` for normal images of
            the folder layouts) or, for VisA, the CSV label (``normal``/``anomaly``).
        category: the category (class) name.
        relative_path: the image path relative to the data root, POSIX style (stable across
            machines; used to order samples and to match published reference lists).

    Example:
        >>> import tempfile
        >>> from resad_kit.data import scan_samples, synthesize_dataset
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = synthesize_dataset(tmp, categories=["grass"], n_train=1, n_test=2)
        ...     samples, layout = scan_samples(tmp, "grass", "test")
        >>> sample = samples[-1]
        >>> sample.relative_path, sample.label, sample.mask_path.name
        ('grass/test/scratch/000.png', 1, '000_mask.png')
    """

    path: Path
    mask_path: Path | None
    label: int
    defect: str
    category: str
    relative_path: str


def _hidden(name: str) -> bool:
    """A name to skip: dot files/folders and macOS zip metadata (``__MACOSX``)."""
    return name.startswith(".") or name == "__MACOSX"


def _entries(path: Path) -> list[Path]:
    """The visible entries of a folder, sorted by name (none if it is not a folder)."""
    return sorted(p for p in path.iterdir() if not _hidden(p.name)) if path.is_dir() else []


def _listdir(path: Path) -> list[str]:
    return [p.name for p in _entries(path)]


def _image_files(folder: Path) -> list[Path]:
    return [p for p in _entries(folder) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]


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
            f"(entries: {_listdir(root)[:20]}){hint}"
        )
    return cat_dir


def detect_layout(root: str | Path, category: str) -> str:
    """The layout (``"mvtec"``, ``"btad"`` or ``"visa"``) of a data root, read from disk.

    ``visa`` if ``<root>/split_csv/1cls.csv`` exists; otherwise ``mvtec`` if
    ``<root>/<category>/train/good`` or ``test/good`` exists, ``btad`` if ``train/ok`` or
    ``test/ok`` does.

    Args:
        root: the data root (the folder that holds the category folders).
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
        ...     detect_layout(tmp, "01")
        'btad'
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"detect_layout: `root` {str(root)!r} is not a directory")
    if (root / _VISA_CSV).is_file():
        return "visa"
    cat_dir = _category_dir(root, category)
    for layout, normal in _NORMAL_FOLDER.items():
        if any((cat_dir / split / normal).is_dir() for split in SPLITS):
            return layout
    found = {s: _listdir(cat_dir / s) for s in (*SPLITS, "ground_truth")}
    raise ValueError(
        f"detect_layout: no known layout in {str(cat_dir)!r}: expected train/good or "
        f"test/good (MVTec AD, MPDD, DTD-Synthetic), train/ok or test/ok (BTAD), or "
        f"{str(root / _VISA_CSV)!r} (VisA); found {_listdir(cat_dir)} at the category "
        f"level and {found} below it"
    )


def find_categories(root: str | Path) -> tuple[str, ...]:
    """The categories present under a data root, sorted.

    For VisA (``split_csv/1cls.csv``): the ``object`` values of the CSV. Otherwise: the
    sub-folders that hold ``train/`` or ``test/`` with a ``good`` or ``ok`` folder.

    Args:
        root: the data root.

    Returns:
        The category names (empty when none is found).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from resad_kit.data import find_categories
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     for c in ("wood", "bottle"):
        ...         (Path(tmp) / c / "train" / "good").mkdir(parents=True)
        ...     (Path(tmp) / "docs").mkdir()
        ...     find_categories(tmp)
        ('bottle', 'wood')
    """
    root = Path(root)
    if (root / _VISA_CSV).is_file():
        return tuple(sorted({row["object"] for row in _read_visa_csv(root)}))
    if not root.is_dir():
        return ()
    return tuple(
        p.name
        for p in _entries(root)
        if p.is_dir() and any((p / s / n).is_dir() for s in SPLITS for n in _NORMAL_FOLDER.values())
    )


def _mask_index(gt_dir: Path) -> dict[str, list[Path]]:
    """The image files of a ground-truth folder, grouped by file stem."""
    index: dict[str, list[Path]] = {}
    for p in _image_files(gt_dir):
        index.setdefault(p.stem, []).append(p)
    return index


def _find_mask(masks: dict[str, list[Path]], gt_dir: Path, image: Path) -> Path:
    """The mask of ``image``: ``<stem>_mask.*`` or else ``<stem>.*`` in ``gt_dir``."""
    for wanted in (f"{image.stem}_mask", image.stem):
        hits = masks.get(wanted, [])
        if len(hits) > 1:
            raise ValueError(
                f"AnomalyDataset: several masks for image {str(image)!r}: "
                f"{[p.name for p in hits]}; keep one"
            )
        if hits:
            return hits[0]
    where = "" if gt_dir.is_dir() else " (the folder does not exist)"
    raise ValueError(
        f"AnomalyDataset: no mask for anomalous image {str(image)!r}: looked for "
        f"{image.stem}_mask.* and {image.stem}.* "
        f"({'/'.join(e[1:] for e in IMAGE_EXTENSIONS)}) in {str(gt_dir)!r}{where}"
    )


def _scan_folder(root: Path, category: str, split: str, layout: str) -> list[Sample]:
    cat_dir = _category_dir(root, category)
    split_dir = cat_dir / split
    if not split_dir.is_dir():
        raise ValueError(
            f"AnomalyDataset: no {split!r} folder in {str(cat_dir)!r}; found {_listdir(cat_dir)}"
        )
    normal = _NORMAL_FOLDER[layout]
    samples = []
    for defect_dir in (p for p in _entries(split_dir) if p.is_dir()):
        defect = defect_dir.name
        label = 0 if defect == normal else 1
        gt_dir = cat_dir / "ground_truth" / defect
        masks = _mask_index(gt_dir) if label else {}
        for image in _image_files(defect_dir):
            mask = _find_mask(masks, gt_dir, image) if label else None
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
    (the official code's metadata order). Image extensions are matched case-insensitively;
    hidden files and folders (names starting with ``.``, and ``__MACOSX``) and non-image
    files are ignored.

    Args:
        root: the data root.
        category: the category name.
        split: ``"train"`` or ``"test"``.
        layout: ``"auto"`` (see :func:`detect_layout`), ``"mvtec"``, ``"btad"`` or ``"visa"``.

    Returns:
        ``(samples, layout)`` — the samples and the layout used.

    Raises:
        ValueError: unknown ``split``/``layout``, missing folders or files, an anomalous
            image without its mask, or no image at all.

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
    else:
        samples = _scan_folder(root, category, split, layout)
    if not samples:
        raise ValueError(
            f"{fn}: no images for category {category!r}, split {split!r} in {str(root)!r} "
            f"(layout {layout!r}; extensions {IMAGE_EXTENSIONS})"
        )
    return tuple(samples), layout
