"""Readers of the DAGM and medical folder trees, as the AF-CLIP code reads them.

AF-CLIP's Table 1 (paper Sec. 4.1) adds DAGM and six medical sets to the industrial ones;
its official code (GitHub ``Faustinaqq/AF-CLIP``, ``dataset/*.py``) reads them from these
trees, one folder per set under its data directory::

    dagm            <root>/Class1/Train/0576.PNG           train split (normal and defective)
                    <root>/Class1/Train/Label/0576_label.PNG  the mask of a defective image
                    <root>/Class1/Test/...                 test split, same form
    classification  <root>/BrainMRI/no/*.jpg   <root>/BrainMRI/yes/*.jpg   (also Br35H)
    segmentation    <root>/CVC-ClinicDB/images/*.png  <root>/CVC-ClinicDB/masks/*.png
                    (also CVC-ColonDB, Kvasir), and ISIC 2016's release folders
                    <root>/ISIC2016/ISBI2016_ISIC_Part1_Test_Data/ISIC_0000003.jpg
                    <root>/ISIC2016/ISBI2016_ISIC_Part1_Test_GroundTruth/ISIC_0000003_Segmentation.png

Here the category is the set's folder (``Class1`` … ``Class10`` for DAGM, ``BrainMRI``,
``CVC-ClinicDB`` …), so ``root`` is the folder that holds them, as for the other layouts.
DAGM: an image is anomalous when ``Label/<stem>_label.*`` exists (the official code's
rule). Classification: ``no`` holds the normal images, ``yes`` the anomalous ones; there
are no masks. Segmentation: every image is anomalous and its mask is the file of the mask
folder named ``<stem>_mask``, ``<stem>_Segmentation`` or ``<stem>`` (matched by name; the
official code pairs the two sorted file lists instead, which gives the same pairs for these
sets). The classification and segmentation sets have a test split only.
"""

from __future__ import annotations

from pathlib import Path

from resad_kit.data.sample import (
    Sample,
    entries,
    find_mask,
    image_files,
    listdir,
    make_sample,
    mask_index,
)

__all__: list[str] = []

DAGM_SPLITS = {"train": "Train", "test": "Test"}
CLASSIFICATION_FOLDERS = ("no", "yes")
SEGMENTATION_FOLDERS = (
    ("images", "masks"),
    ("ISBI2016_ISIC_Part1_Test_Data", "ISBI2016_ISIC_Part1_Test_GroundTruth"),
)
SEGMENTATION_SUFFIXES = ("_mask", "_Segmentation", "")


def _segmentation_folders(cat_dir: Path) -> tuple[Path, Path] | None:
    for images, masks in SEGMENTATION_FOLDERS:
        if (cat_dir / images).is_dir() and (cat_dir / masks).is_dir():
            return cat_dir / images, cat_dir / masks
    return None


def folder_layout(cat_dir: Path) -> str | None:
    """``"dagm"``, ``"classification"`` or ``"segmentation"`` for a category folder, or ``None``."""
    if any((cat_dir / s / "Label").is_dir() for s in DAGM_SPLITS.values()):
        return "dagm"
    if all((cat_dir / f).is_dir() for f in CLASSIFICATION_FOLDERS):
        return "classification"
    if _segmentation_folders(cat_dir) is not None:
        return "segmentation"
    return None


def _test_only(layout: str, cat_dir: Path, category: str, split: str) -> None:
    if split != "test":
        raise ValueError(
            f"AnomalyDataset: category {category!r} ({layout} layout, {str(cat_dir)!r}) has a "
            f"test split only; got split {split!r} (the few-shot references need normal "
            f"training images, which this data set does not provide)"
        )


def scan_dagm(root: Path, cat_dir: Path, category: str, split: str) -> list[Sample]:
    """DAGM (Kaggle release): ``<Class>/<Train|Test>/*.PNG`` with ``Label/<stem>_label.*``."""
    split_dir = cat_dir / DAGM_SPLITS[split]
    if not split_dir.is_dir():
        raise ValueError(
            f"AnomalyDataset: no {DAGM_SPLITS[split]!r} folder in {str(cat_dir)!r} (DAGM "
            f"layout); found {listdir(cat_dir)}"
        )
    label_dir = split_dir / "Label"
    masks = mask_index(label_dir)
    samples = []
    for image in image_files(split_dir):
        has_mask = f"{image.stem}_label" in masks
        mask = find_mask(masks, label_dir, image, ("_label",)) if has_mask else None
        label = int(mask is not None)
        defect = "anomaly" if label else "normal"
        samples.append(make_sample(root, image, mask, label, defect, category))
    return samples


def scan_classification(root: Path, cat_dir: Path, category: str, split: str) -> list[Sample]:
    """``<category>/no/*`` (normal) and ``<category>/yes/*`` (anomalous); no masks."""
    _test_only("classification", cat_dir, category, split)
    return [
        make_sample(root, image, None, int(folder == "yes"), folder, category)
        for folder in CLASSIFICATION_FOLDERS
        for image in image_files(cat_dir / folder)
    ]


def scan_segmentation(root: Path, cat_dir: Path, category: str, split: str) -> list[Sample]:
    """``<category>/images/*`` (all anomalous) with their masks in ``<category>/masks/``."""
    _test_only("segmentation", cat_dir, category, split)
    folders = _segmentation_folders(cat_dir)
    if folders is None:
        found = [p.name for p in entries(cat_dir)]
        raise ValueError(
            f"AnomalyDataset: segmentation layout needs an image and a mask folder "
            f"({SEGMENTATION_FOLDERS}) in {str(cat_dir)!r}; found {found}"
        )
    image_dir, mask_dir = folders
    masks = mask_index(mask_dir)
    return [
        make_sample(
            root,
            image,
            find_mask(masks, mask_dir, image, SEGMENTATION_SUFFIXES),
            1,
            "anomaly",
            category,
        )
        for image in image_files(image_dir)
    ]


READERS = {
    "dagm": scan_dagm,
    "classification": scan_classification,
    "segmentation": scan_segmentation,
}
