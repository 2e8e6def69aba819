"""The AnomalyCLIP/AdaCLIP ``meta.json`` layout: reading, detection, declared levels, errors.

Every tree is written to ``tmp_path`` by the test, in the forms the generator scripts of
those repositories write (relative paths; ``Train``/``Test`` sections; absolute paths
inside the root; ``mask_path: ""`` for sets without masks).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from resad_kit.data import (
    AnomalyDataset,
    detect_layout,
    find_categories,
    metric_levels,
    scan_samples,
)
from resad_kit.metrics import evaluate


def entry(img: str, anomaly: int, mask: str = "", cls: str = "widget", specie: str = "") -> dict:
    return {
        "img_path": img,
        "mask_path": mask,
        "cls_name": cls,
        "specie_name": specie,
        "anomaly": anomaly,
    }


def write_meta(root: Path, data: object) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "meta.json").write_text(json.dumps(data, indent=4) + "\n")
    return root


@pytest.fixture
def meta_root(tmp_path: Path, trees) -> Path:
    """``widget`` (2 train normal; test: anomalous, normal, anomalous, in that file order)
    and ``gadget`` (train only), under a tree that no folder layout matches."""
    root = tmp_path / "meta"
    for i in range(2):
        trees.write_normal(root / "imgs" / "widget" / f"train_{i}.png", value=40 + i)
    trees.write_normal(root / "imgs" / "widget" / "ok.png")
    for name in ("b", "a"):
        trees.write_anomalous(
            root / "imgs" / "widget" / f"{name}.png", root / "gt" / "widget" / f"{name}.png"
        )
    trees.write_normal(root / "imgs" / "gadget" / "0.png")
    train = [entry(f"imgs/widget/train_{i}.png", 0, specie="good") for i in range(2)]
    test = [
        entry("imgs/widget/b.png", 1, "gt/widget/b.png", specie="crack"),
        entry("imgs/widget/ok.png", 0, specie="good"),
        entry("imgs/widget/a.png", 1, "gt/widget/a.png"),  # no specie_name
    ]
    gadget = [entry("imgs/gadget/0.png", 0, cls="gadget", specie="good")]
    return write_meta(
        root, {"train": {"widget": train, "gadget": gadget}, "test": {"widget": test}}
    )


def test_meta_json_is_detected_and_read_in_file_order(meta_root: Path):
    assert detect_layout(meta_root, "widget") == "meta_json"
    assert find_categories(meta_root) == ("gadget", "widget")
    test, layout = scan_samples(meta_root, "widget", "test")
    assert layout == "meta_json"
    assert [(s.relative_path, s.label, s.defect) for s in test] == [
        ("imgs/widget/b.png", 1, "crack"),
        ("imgs/widget/ok.png", 0, "good"),
        ("imgs/widget/a.png", 1, "anomaly"),  # empty specie_name: from the label
    ]
    assert [s.mask_path.name if s.mask_path else None for s in test] == ["b.png", None, "a.png"]
    assert all(s.path.is_absolute() and s.path.is_file() for s in test)
    train, _ = scan_samples(meta_root, "widget", "train")
    assert [s.label for s in train] == [0, 0]
    assert metric_levels(meta_root, "meta_json") == ("image", "pixel")


def test_meta_json_items_align_masks_with_images(meta_root: Path, trees):
    ds = AnomalyDataset(meta_root, "widget", "test", image_size=40, mean=None, std=None)
    assert ds.layout == "meta_json"
    assert ds.levels == ("image", "pixel")
    r0, r1, c0, c1 = trees.BOX  # 40×30 images squashed to 40×40: rows scale by 4/3
    item = ds[0]
    inside = item["mask"][0, round(r0 * 4 / 3) + 1 : round(r1 * 4 / 3) - 1, c0 + 1 : c1 - 1]
    assert bool(inside.all())
    assert float(item["mask"].sum()) < 40 * 40 / 2
    assert float(ds[1]["mask"].sum()) == 0.0
    assert ds[1]["label"] == 0
    assert torch.equal(ds.masks([0, 2]), torch.stack([ds[0]["mask"][0], ds[2]["mask"][0]]))


def test_a_folder_layout_wins_over_meta_json(mvtec_root: Path):
    test, _ = scan_samples(mvtec_root, "widget", "test")
    listed = [entry(s.relative_path, s.label, s.mask_path.relative_to(mvtec_root).as_posix()
                    if s.mask_path else "") for s in reversed(test)]  # fmt: skip
    write_meta(mvtec_root, {"train": {}, "test": {"widget": listed}})
    assert detect_layout(mvtec_root, "widget") == "mvtec"
    forced, layout = scan_samples(mvtec_root, "widget", "test", layout="meta_json")
    assert layout == "meta_json"
    assert [s.path for s in forced] == [s.path for s in reversed(test)]
    assert [s.mask_path for s in forced] == [s.mask_path for s in reversed(test)]


def test_capitalised_sections_and_absolute_paths_inside_root(tmp_path: Path, trees):
    """AnomalyCLIP's DAGM script writes ``Train``/``Test``; its medical ones ``f"{root}/..."``."""
    root = tmp_path / "br"
    trees.write_normal(root / "no" / "1.jpg")
    trees.write_normal(root / "yes" / "2.jpg", value=200)
    test = [
        entry(str(root / "no" / "1.jpg"), 0, cls="brain", specie="no"),
        entry(str(root / "yes" / "2.jpg"), 1, cls="brain", specie="yes"),
    ]
    write_meta(root, {"Train": {}, "Test": {"brain": test}})
    samples, layout = scan_samples(root, "brain", "test")
    assert layout == "meta_json"  # `no`/`yes` sit at the root, not in a category folder
    assert [(s.relative_path, s.label, s.mask_path) for s in samples] == [
        ("no/1.jpg", 0, None),
        ("yes/2.jpg", 1, None),
    ]


def test_classification_only_meta_json_declares_image_metrics(tmp_path: Path, trees):
    """BrainMRI/Br35H in this convention: ``mask_path`` is empty for every image."""
    root = tmp_path / "brainmri"
    rows = []
    for i, label in enumerate([0, 1, 1, 0]):
        trees.write_normal(root / "brain" / f"{i}.png", value=60 + 40 * label)
        rows.append(entry(f"brain/{i}.png", label, cls="brain", specie=["no", "yes"][label]))
    write_meta(root, {"train": {}, "test": {"brain": rows}})
    ds = AnomalyDataset(root, "brain", "test", image_size=8)
    assert ds.levels == metric_levels(root, "meta_json") == ("image",)
    assert ds[1]["label"] == 1
    assert float(ds[1]["mask"].sum()) == 0.0
    ds.check_both_labels("brainmri")  # both labels present: passes
    out = evaluate(
        torch.tensor([0.1, 0.9, 0.8, 0.2]),
        torch.rand(4, 8, 8),
        torch.tensor(ds.labels),
        ds.masks(range(4)),
        levels=ds.levels,
    )
    assert out["I-AUROC"] == 1.0
    assert [out[k] for k in ("P-AUROC", "P-AP", "P-F1max", "PRO")] == [None] * 4
    with pytest.raises(ValueError, match=r"not in the 'train' section"):
        AnomalyDataset(root, "brain", "train")


def test_segmentation_only_meta_json_declares_pixel_metrics(tmp_path: Path, trees):
    """ClinicDB/ColonDB/Kvasir/ISIC in this convention: every entry anomalous, with a mask."""
    root = tmp_path / "colon"
    rows = []
    for i in range(3):
        trees.write_anomalous(root / "images" / f"{i}.png", root / "masks" / f"{i}.png")
        rows.append(entry(f"images/{i}.png", 1, f"masks/{i}.png", cls="colon"))
    write_meta(root, {"train": {}, "test": {"colon": rows}})
    ds = AnomalyDataset(root, "colon", "test", image_size=16, layout="meta_json")
    assert ds.levels == ("pixel",)
    ds.check_both_labels("clinicdb")  # no normal image, but none is needed
    masks = ds.masks(range(3))
    maps = masks + 0.1 * torch.rand(3, 16, 16)
    out = evaluate(torch.rand(3), maps, torch.tensor(ds.labels), masks, levels=ds.levels)
    assert [out[k] for k in ("I-AUROC", "I-AP", "I-F1max")] == [None] * 3
    assert out["P-AUROC"] == 1.0
    assert out["PRO"] == pytest.approx(1.0)
    insisted = AnomalyDataset(root, "colon", "test", image_size=16, levels=("image", "pixel"))
    with pytest.raises(ValueError, match="image-level metrics need both"):
        insisted.check_both_labels("clinicdb")


# --------------------------------------------------------------------------- errors


def test_missing_and_invalid_files(tmp_path: Path):
    (tmp_path / "c").mkdir()
    with pytest.raises(ValueError, match=r"layout 'meta_json' needs .*meta\.json'; it is missing"):
        scan_samples(tmp_path, "c", "test", layout="meta_json")
    (tmp_path / "meta.json").write_text('{"test": {"c": [}')
    with pytest.raises(ValueError, match=r"not valid JSON: .* at line 1, column 17"):
        scan_samples(tmp_path, "c", "test", layout="meta_json")
    (tmp_path / "meta.json").write_bytes(b'{"test": "\xff"}')
    with pytest.raises(ValueError, match="not UTF-8 text"):
        scan_samples(tmp_path, "c", "test", layout="meta_json")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], "must hold a JSON object with 'train'/'test'; got list"),
        ({"val": {}}, r"no 'train' or 'test' section; top-level keys: \['val'\]"),
        ({"test": []}, r"section 'test' must map class names to lists of entries"),
        ({"test": {"c": {}}}, r"test\['c'\] must be a list of entries"),
        ({"test": {"c": ["x.png"]}}, r"test\['c'\]\[0\] must be an object; got str"),
        ({"test": {"c": [{"img_path": "x.png"}]}}, r"lacks the keys \['anomaly'\]"),
        ({"test": {"c": [{"img_path": "x.png", "anomaly": 2}]}}, "'anomaly' must be 0 or 1"),
        ({"test": {"c": [{"img_path": "x.png", "anomaly": "1"}]}}, "'anomaly' must be 0 or 1"),
        ({"test": {"c": [{"img_path": 3, "anomaly": 0}]}}, "'img_path' must be a string"),
        ({"test": {"c": [{"img_path": "", "anomaly": 0}]}}, "'img_path' is empty"),
        ({"test": {}, "Test": {}}, "two 'test' sections"),
    ],
)
def test_malformed_meta_json(tmp_path: Path, data: object, message: str):
    write_meta(tmp_path, data)
    with pytest.raises(ValueError, match=message):
        scan_samples(tmp_path, "c", "test", layout="meta_json")


def test_paths_outside_the_root_or_missing_files(tmp_path: Path, trees):
    root = tmp_path / "root"
    trees.write_normal(tmp_path / "outside.png")
    trees.write_normal(root / "x.png")
    (root / "gt").mkdir()
    cases = [
        (entry("../outside.png", 0), r"img_path '\.\./outside\.png' is outside the data root"),
        (entry(str(tmp_path / "outside.png"), 0), "is outside the data root"),
        (entry("missing.png", 0), r"img_path 'missing\.png' does not exist"),
        (entry("x.png", 1, "gt/none.png"), r"mask_path 'gt/none\.png' does not exist"),
        (entry("x.png", 1, "gt"), r"mask_path 'gt' is a folder, not a file"),
    ]
    for item, message in cases:
        write_meta(root, {"test": {"widget": [item]}})
        with pytest.raises(ValueError, match=message):
            scan_samples(root, "widget", "test", layout="meta_json")
    write_meta(root, {"test": {"widget": [entry("x.png", 0)]}})
    with pytest.raises(ValueError, match=r"category 'gadget' is not in the 'test' section; "
                       r"classes there: \['widget'\]"):  # fmt: skip
        scan_samples(root, "gadget", "test", layout="meta_json")
    with pytest.raises(ValueError, match=r"category 'widget' is not in the 'train' section"):
        scan_samples(root, "widget", "train", layout="meta_json")


def test_inconsistent_levels_are_errors(tmp_path: Path, trees):
    trees.write_anomalous(tmp_path / "a.png", tmp_path / "a_mask.png")
    trees.write_normal(tmp_path / "b.png")
    mixed = [entry("a.png", 1, "a_mask.png"), entry("b.png", 1)]
    write_meta(tmp_path, {"test": {"widget": mixed}})
    with pytest.raises(ValueError, match=r"1 anomalous test images have a mask_path and 1 do not"):
        AnomalyDataset(tmp_path, "widget", "test")
    write_meta(tmp_path, {"test": {"widget": [entry("b.png", 1)]}})
    with pytest.raises(ValueError, match="neither a normal image nor a mask"):
        metric_levels(tmp_path, "meta_json")
    write_meta(tmp_path, {"train": {"widget": [entry("b.png", 0)]}})
    assert metric_levels(tmp_path, "meta_json") == ("image", "pixel")  # no test section


def test_unknown_category_of_a_meta_json_root_lists_its_classes(meta_root: Path):
    with pytest.raises(ValueError, match=r"category 'nothing' not found .*\('gadget', 'widget'\)"):
        AnomalyDataset(meta_root, "nothing", "test")


# --------------------------------------------------------------------------- property

_ROW = st.tuples(st.booleans(), st.sampled_from(["", "crack", "hole"]))


@settings(max_examples=25, deadline=None)
@given(rows=st.lists(_ROW, min_size=1, max_size=8), masked=st.booleans())
def test_any_listing_round_trips_in_order(rows, masked):
    """Whatever a generator lists is read back in order, and the levels follow the rules."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        listed = []
        for i, (anomalous, specie) in enumerate(rows):
            (root / f"{i}.png").write_bytes(b"")  # listing never reads the files
            mask = f"m{i}.png" if anomalous and masked else ""
            if mask:
                (root / mask).write_bytes(b"")
            listed.append(entry(f"{i}.png", int(anomalous), mask, specie=specie))
        write_meta(root, {"test": {"widget": listed}})
        n_anomalous = sum(a for a, _ in rows)
        expected = tuple(
            level
            for level, ok in (("image", n_anomalous < len(rows)), ("pixel", masked and n_anomalous))
            if ok
        )
        if not expected:
            with pytest.raises(ValueError, match="neither a normal image nor a mask"):
                metric_levels(root, "meta_json")
            return
        assert metric_levels(root, "meta_json") == expected
        samples, _ = scan_samples(root, "widget", "test")
        assert [s.relative_path for s in samples] == [f"{i}.png" for i in range(len(rows))]
        assert [s.label for s in samples] == [int(a) for a, _ in rows]
        assert [s.defect for s in samples] == [
            sp or ("anomaly" if a else "normal") for a, sp in rows
        ]
        assert [s.mask_path is not None for s in samples] == [a and masked for a, _ in rows]
