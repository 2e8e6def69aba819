"""DAGM and the medical sets in the trees the AF-CLIP code reads, and their declared levels.

Each fixture writes a miniature of the release tree to ``tmp_path`` (DAGM's Kaggle upload,
BrainMRI/Br35H ``no``/``yes``, CVC-ClinicDB ``images``/``masks``, ISIC 2016's folders).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from resad_kit.data import (
    EXTRA_CATEGORIES,
    METRIC_LEVELS,
    AnomalyDataset,
    detect_layout,
    find_categories,
    metric_levels,
    sample_references,
    scan_samples,
    standard_categories,
)
from resad_kit.metrics import evaluate


@pytest.fixture
def afclip_root(tmp_path: Path, trees) -> Path:
    """AF-CLIP's data tree in miniature: DAGM ``Class1``, ``BrainMRI``, ``CVC-ClinicDB``,
    ``ISIC2016`` side by side under one root."""
    root = tmp_path / "data"
    dagm = root / "Class1"
    for split, normal, defective in (("Train", "0001", "0002"), ("Test", "0003", "0004")):
        trees.write_normal(dagm / split / f"{normal}.PNG")
        trees.write_anomalous(
            dagm / split / f"{defective}.PNG", dagm / split / "Label" / f"{defective}_label.PNG"
        )
        (dagm / split / "Label" / "Labels.txt").write_text("1\n")  # the release's index file
    brain = root / "BrainMRI"
    trees.write_normal(brain / "no" / "N1.jpg")
    trees.write_normal(brain / "no" / "N2.JPG", value=90)
    trees.write_normal(brain / "yes" / "Y1.jpg", value=180)
    clinic = root / "CVC-ClinicDB"
    for i in (2, 1):
        trees.write_anomalous(clinic / "images" / f"{i}.png", clinic / "masks" / f"{i}.png")
    isic = root / "ISIC2016"
    trees.write_anomalous(
        isic / "ISBI2016_ISIC_Part1_Test_Data" / "ISIC_0000003.jpg",
        isic / "ISBI2016_ISIC_Part1_Test_GroundTruth" / "ISIC_0000003_Segmentation.png",
    )
    return root


def test_detection_and_categories(afclip_root: Path):
    layouts = {c: detect_layout(afclip_root, c) for c in find_categories(afclip_root)}
    assert layouts == {
        "BrainMRI": "classification",
        "CVC-ClinicDB": "segmentation",
        "Class1": "dagm",
        "ISIC2016": "segmentation",
    }
    assert {layout: metric_levels(afclip_root, layout) for layout in layouts.values()} == {
        "classification": ("image",),
        "segmentation": ("pixel",),
        "dagm": METRIC_LEVELS,
    }


def test_dagm_labels_come_from_the_label_files(afclip_root: Path, trees):
    train, layout = scan_samples(afclip_root, "Class1", "train")
    assert layout == "dagm"
    assert [(s.relative_path, s.label, s.defect) for s in train] == [
        ("Class1/Train/0001.PNG", 0, "normal"),
        ("Class1/Train/0002.PNG", 1, "anomaly"),
    ]
    assert [s.mask_path.name if s.mask_path else None for s in train] == [None, "0002_label.PNG"]
    test = AnomalyDataset(afclip_root, "Class1", "test", image_size=40, mean=None, std=None)
    assert test.levels == ("image", "pixel")
    assert [s.path.name for s in test.samples] == ["0003.PNG", "0004.PNG"]
    r0, r1, c0, c1 = trees.BOX  # the mask covers the box of its image, after resizing
    mask = test[1]["mask"][0]
    assert bool(mask[round(r0 * 4 / 3) + 1 : round(r1 * 4 / 3) - 1, c0 + 1 : c1 - 1].all())
    assert float(test[0]["mask"].sum()) == 0.0
    # the few-shot references of DAGM come from the normal training images only
    train_ds = AnomalyDataset(afclip_root, "Class1", "train", image_size=8)
    assert sample_references(train_ds, 1, seed=0).paths == ("Class1/Train/0001.PNG",)


def test_dagm_missing_split_folder(afclip_root: Path):
    shutil.rmtree(afclip_root / "Class1" / "Test")
    with pytest.raises(ValueError, match=r"no 'Test' folder in .*Class1.*\(DAGM layout\)"):
        scan_samples(afclip_root, "Class1", "test")


def test_classification_set_has_image_metrics_only(afclip_root: Path):
    ds = AnomalyDataset(afclip_root, "BrainMRI", "test", image_size=8)
    assert ds.layout == "classification"
    assert ds.levels == ("image",)
    assert [(s.relative_path, s.label, s.defect, s.mask_path) for s in ds.samples] == [
        ("BrainMRI/no/N1.jpg", 0, "no", None),
        ("BrainMRI/no/N2.JPG", 0, "no", None),
        ("BrainMRI/yes/Y1.jpg", 1, "yes", None),
    ]
    assert float(ds[2]["mask"].sum()) == 0.0  # no mask: an all-zero one
    ds.check_both_labels("brainmri")
    masks = ds.masks(range(3))
    out = evaluate(
        torch.tensor([0.2, 0.1, 0.7]),
        torch.rand(3, 8, 8),
        torch.tensor(ds.labels),
        masks,
        levels=ds.levels,
    )
    assert out["I-AUROC"] == 1.0
    assert out["I-AP"] == 1.0
    assert [out[k] for k in ("P-AUROC", "P-AP", "P-F1max", "PRO")] == [None] * 4
    with pytest.raises(ValueError, match=r"has a test split only; got split 'train'"):
        AnomalyDataset(afclip_root, "BrainMRI", "train")


def test_classification_set_without_normal_images_is_still_an_error(afclip_root: Path):
    for p in (afclip_root / "BrainMRI" / "no").iterdir():
        p.unlink()
    ds = AnomalyDataset(afclip_root, "BrainMRI", "test", image_size=8)
    with pytest.raises(ValueError, match="0 normal and 1 anomalous images; image-level"):
        ds.check_both_labels("brainmri")


def test_segmentation_set_has_pixel_metrics_only(afclip_root: Path):
    ds = AnomalyDataset(afclip_root, "CVC-ClinicDB", "test", image_size=16)
    assert ds.layout == "segmentation"
    assert ds.levels == ("pixel",)
    assert [(s.path.name, s.mask_path.name, s.label) for s in ds.samples] == [
        ("1.png", "1.png", 1),
        ("2.png", "2.png", 1),
    ]
    ds.check_both_labels("clinicdb")  # every image anomalous: fine for pixel metrics
    masks = ds.masks(range(2))
    out = evaluate(
        torch.rand(2), masks * 0.9 + 0.05, torch.tensor(ds.labels), masks, levels=ds.levels
    )
    assert [out[k] for k in ("I-AUROC", "I-AP", "I-F1max")] == [None] * 3
    assert out["P-AUROC"] == 1.0
    assert out["PRO"] == pytest.approx(1.0)
    isic = AnomalyDataset(afclip_root, "ISIC2016", "test", image_size=16)
    assert [(s.path.name, s.mask_path.name) for s in isic.samples] == [
        ("ISIC_0000003.jpg", "ISIC_0000003_Segmentation.png")
    ]
    with pytest.raises(ValueError, match=r"has a test split only; got split 'train'"):
        scan_samples(afclip_root, "ISIC2016", "train")


def test_segmentation_image_without_mask_is_an_error(afclip_root: Path, trees):
    trees.write_normal(afclip_root / "CVC-ClinicDB" / "images" / "3.png")
    with pytest.raises(ValueError, match=r"no mask for anomalous image .*3\.png"):
        scan_samples(afclip_root, "CVC-ClinicDB", "test")


def test_declared_levels_can_be_overridden(afclip_root: Path):
    insisted = AnomalyDataset(
        afclip_root, "CVC-ClinicDB", "test", image_size=8, levels=["image", "pixel"]
    )
    assert insisted.levels == ("image", "pixel")
    with pytest.raises(ValueError, match="0 normal and 2 anomalous images; image-level"):
        insisted.check_both_labels("clinicdb")
    assert "levels=('pixel',)" in repr(AnomalyDataset(afclip_root, "CVC-ClinicDB", "test", 8))
    for bad in ((), ("voxel",), "image", 3):
        with pytest.raises(ValueError, match=r"`levels` must be 'auto' or a non-empty subset"):
            AnomalyDataset(afclip_root, "Class1", "test", image_size=8, levels=bad)
    with pytest.raises(ValueError, match=r"metric_levels: `layout` must be one of"):
        metric_levels(afclip_root, "auto")


def test_mvtec_category_with_one_class_stays_an_error(mvtec_root: Path):
    for defect in ("crack", "scratch"):
        shutil.rmtree(mvtec_root / "widget" / "test" / defect)
    ds = AnomalyDataset(mvtec_root, "widget", "test", image_size=8)
    assert ds.levels == ("image", "pixel")
    with pytest.raises(ValueError, match="1 normal and 0 anomalous images"):
        ds.check_both_labels("mvtec")


def test_extra_standard_categories():
    assert set(EXTRA_CATEGORIES) == {
        "dagm", "brainmri", "br35h", "isic", "clinicdb", "colondb", "kvasir",
    }  # fmt: skip
    assert standard_categories("dagm") == tuple(sorted(f"Class{i}" for i in range(1, 11)))
    assert standard_categories("CVC-ColonDB") == ("CVC-ColonDB",)
    assert standard_categories("Kvasir-SEG") == ("Kvasir",)
    for names in EXTRA_CATEGORIES.values():
        assert list(names) == sorted(names)
    with pytest.raises(TypeError):
        EXTRA_CATEGORIES["new"] = ("x",)  # read-only
