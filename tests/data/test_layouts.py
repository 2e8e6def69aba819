"""Layout detection and sample listing (MVTec AD, BTAD, VisA): counts, labels, masks, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resad_kit.data import (
    STANDARD_CATEGORIES,
    detect_layout,
    find_categories,
    scan_samples,
    standard_categories,
)

# --------------------------------------------------------------------------- categories


def test_standard_categories_counts_match_table_5():
    counts = {d: len(standard_categories(d)) for d in STANDARD_CATEGORIES}
    assert counts == {"mvtec": 15, "visa": 12, "btad": 3, "mpdd": 6, "dtd": 12}
    for names in STANDARD_CATEGORIES.values():
        assert len(set(names)) == len(names)
        assert list(names) == sorted(names)


def test_standard_categories_names_and_aliases():
    # the official code's lists (hito2448/Res2CLIP `data/dataset.py`), as sets
    assert set(standard_categories("mvtec")) == {
        "carpet", "bottle", "hazelnut", "leather", "cable", "capsule", "grid", "pill",
        "transistor", "metal_nut", "screw", "toothbrush", "zipper", "tile", "wood",
    }  # fmt: skip
    assert "pipe_fryum" in standard_categories("visa")
    assert standard_categories("MVTec_AD") == standard_categories("mvtec")
    assert standard_categories("DTD-Synthetic") == standard_categories("dtd")
    assert "Woven_001" in standard_categories("dtd")
    assert "bracket_black" in standard_categories("mpdd")
    with pytest.raises(ValueError, match="unknown `dataset` 'kolektor'"):
        standard_categories("kolektor")
    with pytest.raises(TypeError):
        STANDARD_CATEGORIES["new"] = ("x",)  # read-only


# --------------------------------------------------------------------------- detection


def test_detect_layout(mvtec_root: Path, btad_root: Path, visa_root: Path):
    assert detect_layout(mvtec_root, "widget") == "mvtec"
    assert detect_layout(btad_root, "01") == "btad"
    assert detect_layout(visa_root, "candle") == "visa"


def test_detect_layout_error_lists_what_was_found(tmp_path: Path):
    (tmp_path / "thing" / "train" / "normal").mkdir(parents=True)
    (tmp_path / "thing" / "images").mkdir()
    with pytest.raises(ValueError, match="no known layout") as err:
        detect_layout(tmp_path, "thing")
    assert "'images'" in str(err.value)
    assert "'normal'" in str(err.value)


def test_unknown_category_lists_categories(mvtec_root: Path):
    with pytest.raises(ValueError, match=r"category 'gadget' not found.*\('widget',\)"):
        scan_samples(mvtec_root, "gadget", "test")


def test_find_categories(mvtec_root: Path, btad_root: Path, visa_root: Path, tmp_path: Path):
    (mvtec_root / "split_notes").mkdir()  # a folder that is not a category
    assert find_categories(mvtec_root) == ("widget",)
    assert find_categories(btad_root) == ("01",)
    assert find_categories(visa_root) == ("candle", "pcb1")
    assert find_categories(tmp_path / "absent") == ()


# --------------------------------------------------------------------------- MVTec AD


def test_mvtec_counts_labels_masks(mvtec_root: Path):
    train, layout = scan_samples(mvtec_root, "widget", "train")
    assert layout == "mvtec"
    assert [s.relative_path for s in train] == [f"widget/train/good/00{i}.png" for i in range(3)]
    assert all(s.label == 0 and s.mask_path is None and s.defect == "good" for s in train)

    test, _ = scan_samples(mvtec_root, "widget", "test")
    # sorted by (defect folder, name); readme.txt, notes.txt and .DS_Store are ignored
    assert [(s.defect, s.path.name, s.label) for s in test] == [
        ("crack", "000.png", 1),
        ("crack", "001.png", 1),
        ("good", "000.png", 0),
        ("scratch", "000.jpg", 1),
    ]
    masks = [s.mask_path.name if s.mask_path else None for s in test]
    assert masks == ["000_mask.png", "001_mask.png", None, "000.png"]
    assert all(s.path.is_absolute() and s.path.is_file() for s in test)
    assert all(s.category == "widget" for s in test)


def test_mask_with_suffix_wins_over_plain_name(mvtec_root: Path, trees):
    gt = mvtec_root / "widget" / "ground_truth" / "crack"
    trees.write_normal(gt / "000.png")  # a second candidate, without _mask
    test, _ = scan_samples(mvtec_root, "widget", "test")
    assert test[0].mask_path.name == "000_mask.png"


def test_missing_mask_is_an_error(mvtec_root: Path):
    (mvtec_root / "widget" / "ground_truth" / "crack" / "001_mask.png").unlink()
    with pytest.raises(ValueError, match=r"no mask for anomalous image .*001\.png"):
        scan_samples(mvtec_root, "widget", "test")


def test_missing_ground_truth_folder_is_an_error(mvtec_root: Path, trees):
    trees.write_normal(mvtec_root / "widget" / "test" / "dent" / "000.png")
    with pytest.raises(ValueError, match="the folder does not exist"):
        scan_samples(mvtec_root, "widget", "test")


def test_ambiguous_masks_are_an_error(mvtec_root: Path, trees):
    gt = mvtec_root / "widget" / "ground_truth" / "crack"
    trees.write_normal(gt / "000_mask.bmp")
    with pytest.raises(ValueError, match="several masks"):
        scan_samples(mvtec_root, "widget", "test")


def test_bad_split_layout_and_empty_folders(mvtec_root: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="`split` must be one of"):
        scan_samples(mvtec_root, "widget", "val")
    with pytest.raises(ValueError, match="`layout` must be 'auto' or one of"):
        scan_samples(mvtec_root, "widget", "test", layout="mvtec_loco")
    with pytest.raises(ValueError, match="layout 'visa' needs"):
        scan_samples(mvtec_root, "widget", "test", layout="visa")
    with pytest.raises(ValueError, match="is not a directory"):
        scan_samples(tmp_path / "nowhere", "widget", "test")
    (tmp_path / "empty" / "c" / "train" / "good").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images for category 'c'"):
        scan_samples(tmp_path / "empty", "c", "train")
    with pytest.raises(ValueError, match="no 'test' folder"):
        scan_samples(tmp_path / "empty", "c", "test")


def test_explicit_layout_must_match(btad_root: Path):
    # BTAD has no `good` folder: every folder of the split is a defect under layout="mvtec"
    with pytest.raises(ValueError, match="no mask for anomalous image"):
        scan_samples(btad_root, "01", "test", layout="mvtec")


# --------------------------------------------------------------------------- BTAD


def test_btad_counts_labels_masks(btad_root: Path):
    train, layout = scan_samples(btad_root, "01", "train")
    assert layout == "btad"
    assert [s.path.name for s in train] == ["0000.bmp", "0001.bmp"]
    assert {s.label for s in train} == {0}
    test, _ = scan_samples(btad_root, "01", "test")
    assert [(s.defect, s.path.name, s.label) for s in test] == [
        ("ko", "0003.bmp", 1),
        ("ko", "0004.PNG", 1),  # upper-case extension
        ("ok", "0002.bmp", 0),
    ]
    # masks named like the image (no _mask), .png for a .bmp image and the reverse
    assert [s.mask_path.name if s.mask_path else None for s in test] == [
        "0003.png",
        "0004.bmp",
        None,
    ]


# --------------------------------------------------------------------------- VisA


def test_visa_counts_labels_and_csv_order(visa_root: Path):
    train, layout = scan_samples(visa_root, "candle", "train")
    assert layout == "visa"
    # the CSV's row order is kept (the official code's metadata order)
    assert [s.path.name for s in train] == ["0002.JPG", "0000.JPG", "0001.JPG"]
    assert next(s.relative_path for s in train) == "candle/Data/Images/Normal/0002.JPG"
    test, _ = scan_samples(visa_root, "candle", "test")
    assert [(s.defect, s.label) for s in test] == [("anomaly", 1), ("normal", 0)]
    assert test[0].mask_path.name == "000.png"
    assert test[1].mask_path is None
    pcb, _ = scan_samples(visa_root, "pcb1", "train")
    assert len(pcb) == 1


def test_visa_errors(visa_root: Path, trees):
    with pytest.raises(
        ValueError, match=r"'cashew' is not in .*objects there: \['candle', 'pcb1'\]"
    ):
        scan_samples(visa_root, "cashew", "test")
    trees.write_visa_csv(
        visa_root, [r[:4] for r in trees.VISA_ROWS], header="object,split,label,image"
    )
    with pytest.raises(ValueError, match=r"lacks the columns \['mask'\]"):
        scan_samples(visa_root, "candle", "test")
    bad_label = [(*trees.VISA_ROWS[3][:2], "bad", *trees.VISA_ROWS[3][3:])]
    trees.write_visa_csv(visa_root, bad_label)
    with pytest.raises(ValueError, match="label must be 'normal' or 'anomaly'; got 'bad'"):
        scan_samples(visa_root, "candle", "test")
    trees.write_visa_csv(
        visa_root, [(*trees.VISA_ROWS[3][:4], "candle/Data/Masks/Anomaly/999.png")]
    )
    with pytest.raises(ValueError, match=r"mask .*999\.png.* is missing"):
        scan_samples(visa_root, "candle", "test")
    trees.write_visa_csv(visa_root, [(*trees.VISA_ROWS[3][:4], "")])
    with pytest.raises(ValueError, match="has no mask"):
        scan_samples(visa_root, "candle", "test")
    trees.write_visa_csv(visa_root, [("candle", "test", "normal", "candle/none.JPG", "")])
    with pytest.raises(ValueError, match=r"image .*none\.JPG.* is missing"):
        scan_samples(visa_root, "candle", "test")


def test_write_anomalous_helper_makes_aligned_pairs(tmp_path: Path, trees):
    # guards the fixtures the other tests rely on
    trees.write_anomalous(tmp_path / "a.png", tmp_path / "m.png")
    image = np.asarray(Image.open(tmp_path / "a.png"))
    mask = np.asarray(Image.open(tmp_path / "m.png")) > 0
    assert mask.any()
    assert (image[mask] == 255).all()
    assert (image[~mask] == 0).all()


def test_root_that_is_the_category_folder_gets_a_hint(mvtec_root: Path):
    with pytest.raises(ValueError, match="looks like the category folder itself: pass its parent"):
        scan_samples(mvtec_root / "widget", "widget", "test")


# --------------------------------------------------------------------------- hidden entries, BOM


def test_hidden_folders_are_neither_defects_nor_categories(mvtec_root: Path, trees):
    """Regression (issue 18): `.ipynb_checkpoints` and `__MACOSX` inside `test/` (and
    `train/`) were listed as defect classes, with no mask, so the listing failed or grew;
    a dot folder at the root was listed as a category. Now the listing is unchanged."""
    before = {s: scan_samples(mvtec_root, "widget", s)[0] for s in ("train", "test")}
    cat = mvtec_root / "widget"
    for split in ("train", "test"):
        trees.write_normal(cat / split / ".ipynb_checkpoints" / "000-checkpoint.png")
        trees.write_normal(cat / split / "__MACOSX" / "good" / "000.png")
        trees.write_normal(cat / split / "__MACOSX" / "._000.png")  # AppleDouble file
    trees.write_normal(cat / "ground_truth" / "__MACOSX" / "000_mask.png")
    trees.write_normal(mvtec_root / ".widget_backup" / "train" / "good" / "000.png")
    trees.write_normal(mvtec_root / "__MACOSX" / "train" / "good" / "000.png")
    for split in ("train", "test"):
        assert scan_samples(mvtec_root, "widget", split)[0] == before[split]
    assert find_categories(mvtec_root) == ("widget",)


def test_visa_csv_with_utf8_byte_order_mark(visa_root: Path, trees):
    """Regression (issue 18): a `1cls.csv` saved with a UTF-8 BOM (Excel, Windows editors)
    was rejected as lacking the column 'object'. It now reads like the plain file."""
    plain = scan_samples(visa_root, "candle", "test")
    csv_path = visa_root / "split_csv" / "1cls.csv"
    csv_path.write_bytes(b"\xef\xbb\xbf" + csv_path.read_bytes())
    assert csv_path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert scan_samples(visa_root, "candle", "test") == plain
    assert find_categories(visa_root) == ("candle", "pcb1")
