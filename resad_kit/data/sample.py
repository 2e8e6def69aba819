"""``Sample`` (one listed image) and the folder-listing helpers shared by every layout reader.

Hidden entries are skipped everywhere folders or files are listed: names that start with
``.`` (``.ipynb_checkpoints``, ``.DS_Store``, macOS's ``._*`` resource forks) and
``__MACOSX`` (the folder macOS's zip tool adds), so that they never become categories,
defect types or images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["IMAGE_EXTENSIONS", "Sample"]

#: Image file extensions the readers list (matched case-insensitively).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Sample:
    """One image of a data set, listed without reading it.

    Attributes:
        path: absolute path of the image file.
        mask_path: absolute path of the ground-truth mask; ``None`` for normal images and
            for every image of a data set without masks (classification-only sets such as
            BrainMRI and Br35H).
        label: ``0`` normal, ``1`` anomalous.
        defect: defect type — the image's folder name (``good``/``ok`` for normal images of
            the folder layouts, ``no``/``yes`` for the classification layout), the VisA CSV
            label (``normal``/``anomaly``), ``meta.json``'s ``specie_name``, or
            ``normal``/``anomaly`` where the data set names no defect type (DAGM,
            segmentation sets).
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


def hidden(name: str) -> bool:
    """A name to skip: dot files/folders and macOS zip metadata (``__MACOSX``)."""
    return name.startswith(".") or name == "__MACOSX"


def entries(path: Path) -> list[Path]:
    """The visible entries of a folder, sorted by name (none if it is not a folder)."""
    return sorted(p for p in path.iterdir() if not hidden(p.name)) if path.is_dir() else []


def listdir(path: Path) -> list[str]:
    """The visible entry names of a folder, sorted."""
    return [p.name for p in entries(path)]


def image_files(folder: Path) -> list[Path]:
    """The image files of a folder (case-insensitive extensions), sorted by name."""
    return [p for p in entries(folder) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]


def mask_index(gt_dir: Path) -> dict[str, list[Path]]:
    """The image files of a ground-truth folder, grouped by file stem."""
    index: dict[str, list[Path]] = {}
    for p in image_files(gt_dir):
        index.setdefault(p.stem, []).append(p)
    return index


def find_mask(
    masks: dict[str, list[Path]],
    gt_dir: Path,
    image: Path,
    suffixes: tuple[str, ...] = ("_mask", ""),
) -> Path:
    """The mask of ``image``: ``<stem><suffix>.*`` in ``gt_dir``, the first suffix that exists.

    Raises:
        ValueError: when no candidate exists, or when one stem has several files.
    """
    for wanted in (f"{image.stem}{s}" for s in suffixes):
        hits = masks.get(wanted, [])
        if len(hits) > 1:
            raise ValueError(
                f"AnomalyDataset: several masks for image {str(image)!r}: "
                f"{[p.name for p in hits]}; keep one"
            )
        if hits:
            return hits[0]
    where = "" if gt_dir.is_dir() else " (the folder does not exist)"
    names = " and ".join(f"{image.stem}{s}.*" for s in suffixes)
    raise ValueError(
        f"AnomalyDataset: no mask for anomalous image {str(image)!r}: looked for "
        f"{names} ({'/'.join(e[1:] for e in IMAGE_EXTENSIONS)}) in {str(gt_dir)!r}{where}"
    )


def make_sample(
    root: Path, image: Path, mask: Path | None, label: int, defect: str, category: str
) -> Sample:
    """A :class:`Sample` of ``image`` (a path under ``root``)."""
    return Sample(
        path=image.absolute(),
        mask_path=None if mask is None else mask.absolute(),
        label=label,
        defect=defect,
        category=category,
        relative_path=image.relative_to(root).as_posix(),
    )
