"""AnomalyDataset and the image/mask readers: tensors, alignment, errors, shipped samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from resad_kit.data import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    AnomalyDataset,
    AnomalyItem,
    Sample,
    find_categories,
    load_image,
    load_mask,
)

# --------------------------------------------------------------------------- readers


def test_load_image_matches_manual_bicubic_and_normalisation(tmp_path: Path):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "x.png")
    x = load_image(tmp_path / "x.png", 24)
    # independent reference: PIL bicubic squash resize to 24×24, then (v/255 − mean)/std
    ref = np.asarray(Image.fromarray(array).resize((24, 24), Image.Resampling.BICUBIC)) / 255.0
    ref = (ref - np.array(OPENAI_CLIP_MEAN)) / np.array(OPENAI_CLIP_STD)
    expected = torch.from_numpy(ref.transpose(2, 0, 1)).float()
    assert x.shape == (3, 24, 24)
    assert x.dtype == torch.float32
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)


def test_load_image_grey_and_custom_normalisation(tmp_path: Path):
    Image.new("L", (7, 5), color=51).save(tmp_path / "g.png")  # 51/255 = 0.2
    x = load_image(tmp_path / "g.png", 4, mean=(0.1, 0.2, 0.0), std=(0.5, 1.0, 2.0))
    torch.testing.assert_close(
        x[:, 0, 0], torch.tensor([0.2, 0.0, 0.1]), rtol=0, atol=1e-6
    )  # three equal channels, then per-channel (v − mean)/std


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mean": None}, "pass both `mean` and `std`"),
        ({"mean": (0.5, 0.5)}, r"`mean` must be 3 finite numbers"),
        ({"std": (1.0, 0.0, 1.0)}, "`std` must be positive"),
        ({"std": (1.0, float("nan"), 1.0)}, "`std` must be 3 finite numbers"),
    ],
)
def test_load_image_bad_normalisation(tmp_path: Path, kwargs: dict, match: str):
    Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
    with pytest.raises(ValueError, match=match):
        load_image(tmp_path / "x.png", 4, **kwargs)


def test_load_image_missing_unreadable_and_bad_size(tmp_path: Path):
    with pytest.raises(ValueError, match=r"`path` .*nope\.png' does not exist"):
        load_image(tmp_path / "nope.png", 8)
    (tmp_path / "bad.png").write_text("not a png")
    with pytest.raises(ValueError, match="cannot read `path`"):
        load_image(tmp_path / "bad.png", 8)
    Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
    with pytest.raises(ValueError, match="`size` must be a positive int"):
        load_image(tmp_path / "x.png", 0)


@pytest.mark.parametrize("mode", ["1", "L", "RGB"])
def test_load_mask_binarises_every_encoding(tmp_path: Path, mode: str):
    anomalous = np.zeros((12, 12), dtype=bool)
    anomalous[3:9, 2:5] = True
    anomalous[0, 0] = True
    # "1": 1-bit PNG; "L": value 1 (a VisA region index, or 1/255 grey); "RGB": 0/255 colour
    encoded = {"1": anomalous * 255, "L": anomalous * 1, "RGB": anomalous * 255}[mode]
    Image.fromarray(encoded.astype(np.uint8)).convert(mode).save(tmp_path / "m.png")
    y = load_mask(tmp_path / "m.png", 12)
    assert y.shape == (1, 12, 12)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y[0], torch.from_numpy(anomalous.astype(np.float32)))


def test_load_mask_nearest_and_official_bilinear(tmp_path: Path):
    m = np.zeros((8, 8), dtype=np.uint8)
    m[0:3, 0:3] = 255  # 3 px: half a 2×2 output cell plus one
    Image.fromarray(m).save(tmp_path / "m.png")
    nearest = load_mask(tmp_path / "m.png", 4)
    bilinear = load_mask(tmp_path / "m.png", 4, interpolation="bilinear")
    # independent reference for the official code: PIL bilinear of 0/255, /255, > 0.5
    ref = np.asarray(Image.fromarray(m).resize((4, 4), Image.Resampling.BILINEAR)) / 255 > 0.5
    torch.testing.assert_close(bilinear[0], torch.from_numpy(ref.astype(np.float32)))
    ref_nearest = np.asarray(Image.fromarray(m).resize((4, 4), Image.Resampling.NEAREST)) > 0
    torch.testing.assert_close(nearest[0], torch.from_numpy(ref_nearest.astype(np.float32)))
    with pytest.raises(ValueError, match="`mask_interpolation` must be one of"):
        load_mask(tmp_path / "m.png", 4, interpolation="bicubic")


# --------------------------------------------------------------------------- dataset items


def _assert_aligned(item: dict, threshold: float = 0.5) -> None:
    """The white box of the fixture image covers the mask: IoU > 0.8 after resizing."""
    image01 = item["image"] * torch.tensor(OPENAI_CLIP_STD)[:, None, None]
    image01 = image01 + torch.tensor(OPENAI_CLIP_MEAN)[:, None, None]
    bright = image01.mean(0) > threshold
    mask = item["mask"][0].bool()
    iou = (bright & mask).sum() / (bright | mask).sum()
    assert mask.any()
    assert iou > 0.8, float(iou)


@pytest.mark.parametrize(
    ("fixture", "category"),
    [("mvtec_root", "widget"), ("btad_root", "01"), ("visa_root", "candle")],
)
def test_items_masks_aligned_with_images(request, fixture: str, category: str):
    root = request.getfixturevalue(fixture)
    ds = AnomalyDataset(root, category, "test", image_size=20)
    assert len(ds) == len(ds.samples)
    assert sum(ds.labels) >= 1
    for i, sample in enumerate(ds.samples):
        assert isinstance(sample, Sample)
        item = ds[i]
        assert set(item) == set(AnomalyItem.__annotations__)
        assert item["image"].shape == (3, 20, 20)
        assert item["image"].dtype == torch.float32
        assert item["mask"].shape == (1, 20, 20)
        assert item["mask"].dtype == torch.float32
        assert item["label"] == sample.label
        assert item["defect"] == sample.defect
        assert item["path"] == str(sample.path)
        assert item["category"] == category
        if sample.label:
            _assert_aligned(item)
        else:
            assert not item["mask"].any()


def test_mask_size_and_negative_index(mvtec_root: Path):
    ds = AnomalyDataset(mvtec_root, "widget", "test", image_size=32, mask_size=16)
    assert ds[0]["image"].shape == (3, 32, 32)
    assert ds[0]["mask"].shape == (1, 16, 16)
    assert ds[-1]["path"] == ds[len(ds) - 1]["path"]
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_dataloader_collates_items(mvtec_root: Path):
    ds = AnomalyDataset(mvtec_root, "widget", "test", image_size=16)
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 16, 16)
    assert batch["mask"].shape == (4, 1, 16, 16)
    assert batch["label"].tolist() == [1, 1, 0, 1]
    assert batch["defect"] == ["crack", "crack", "good", "scratch"]


def test_unnormalised_images_stay_in_unit_range(mvtec_root: Path):
    ds = AnomalyDataset(mvtec_root, "widget", "train", image_size=8, mean=None, std=None)
    x = ds.images([0, 1, 2])
    assert x.shape == (3, 3, 8, 8)
    # the fixture's normal images are flat grey 50, 51, 52
    torch.testing.assert_close(x[:, 0, 0, 0], torch.tensor([50.0, 51.0, 52.0]) / 255)
    with pytest.raises(ValueError, match="`indices` must not be empty"):
        ds.images([])


def test_mask_size_mismatch_is_an_error_on_every_path(mvtec_root: Path):
    """Regression (issue 18): only ``__getitem__`` compared a mask's size with its image's;
    ``masks()`` (evaluation and training with cached features) resized a wrong-size mask
    silently. Both paths now raise the same error."""
    gt = mvtec_root / "widget" / "ground_truth" / "crack" / "000_mask.png"
    Image.new("L", (41, 30), color=255).save(gt)
    ds = AnomalyDataset(mvtec_root, "widget", "test", image_size=16)
    match = r"mask .*000_mask\.png' is 41×30 \(w×h\) but its image .*000\.png' is 40×30"
    with pytest.raises(ValueError, match="AnomalyDataset: " + match):
        ds[0]
    with pytest.raises(ValueError, match=r"AnomalyDataset\.masks: " + match):
        ds.masks([0])
    with pytest.raises(ValueError, match=match):
        ds.masks(range(len(ds)))
    assert ds.masks([1]).shape == (1, 16, 16)  # the other masks still read
    ds.samples[1].path.unlink()  # the image's size is needed: a missing image is named
    with pytest.raises(ValueError, match=r"AnomalyDataset\.masks: `image` .*001\.png'"):
        ds.masks([1])


@pytest.mark.parametrize("drop", ["anomalous", "normal"])
def test_single_class_test_split_error_names_the_category(mvtec_root: Path, drop: str):
    """Regression (issue 18): a test split with only ``good`` images failed inside the
    metrics ("labels must contain both classes") without naming the category. The data set
    check names the data set, category, split and root, and what is missing."""
    ds = AnomalyDataset(mvtec_root, "widget", "test", image_size=8)
    ds.check_both_labels("mvtec")  # both classes: no error
    test_dir = mvtec_root / "widget" / "test"
    for folder in ("crack", "scratch") if drop == "anomalous" else ("good",):
        for f in (test_dir / folder).iterdir():
            f.unlink()
        (test_dir / folder).rmdir()
    if drop == "normal":  # detect_layout needs a `good` folder: train/good still has one
        assert (mvtec_root / "widget" / "train" / "good").is_dir()
    ds = AnomalyDataset(mvtec_root, "widget", "test", image_size=8)
    counts = "1 normal and 0 anomalous" if drop == "anomalous" else "0 normal and 3 anomalous"
    missing = "defect images" if drop == "anomalous" else "normal images"
    with pytest.raises(
        ValueError,
        match=rf"data set 'mvtec', category 'widget', split 'test' \(root '.*mvtec'\) has "
        rf"{counts} images; .*add the {missing}",
    ):
        ds.check_both_labels("mvtec")
    with pytest.raises(ValueError, match=r"^AnomalyDataset: category 'widget', split 'test'"):
        ds.check_both_labels()


def test_bad_constructor_arguments(mvtec_root: Path):
    with pytest.raises(ValueError, match="`image_size` must be a positive int"):
        AnomalyDataset(mvtec_root, "widget", "test", image_size=0)
    with pytest.raises(ValueError, match="`mask_size` must be None or a positive int"):
        AnomalyDataset(mvtec_root, "widget", "test", mask_size=-1)
    with pytest.raises(ValueError, match="`mask_interpolation` must be one of"):
        AnomalyDataset(mvtec_root, "widget", "test", mask_interpolation="area")


def test_repr(btad_root: Path):
    ds = AnomalyDataset(btad_root, "01", "test", image_size=16)
    assert repr(ds) == (
        "AnomalyDataset(category='01', split='test', layout='btad', n=3, anomalous=2, "
        "image_size=16)"
    )


# --------------------------------------------------------------------------- shipped samples


@pytest.mark.parametrize("category", ["hazelnut", "transistor"])
def test_shipped_mvtec_mini_loads(trees, category: str):
    root = trees.EXAMPLES / "mvtec_mini"
    train = AnomalyDataset(root, category, "train", image_size=32)
    test = AnomalyDataset(root, category, "test", image_size=256)
    assert (len(train), len(test), sum(train.labels), sum(test.labels)) == (50, 10, 0, 8)
    assert train.layout == test.layout == "mvtec"
    assert len({s.defect for s in test.samples}) == 5  # good + 4 defect types
    for i, s in enumerate(test.samples):
        mask = test[i]["mask"][0]
        if s.mask_path is None:
            assert not mask.any()
            continue
        # 1-bit PNG masks at their own size (256): the mask is read exactly
        original = np.asarray(Image.open(s.mask_path)).astype(bool)
        assert original.shape == (256, 256)
        assert original.any()
        assert torch.equal(mask, torch.from_numpy(original.astype(np.float32)))


def test_shipped_hazelnut_toy_loads_with_odd_size_and_plain_mask_names(trees):
    root = trees.EXAMPLES / "hazelnut_toy_otx"
    train = AnomalyDataset(root, "hazelnut", "train", image_size=48)
    odd = [i for i, s in enumerate(train.samples) if s.path.name == "01.jpg"]
    with Image.open(train.samples[odd[0]].path) as original:
        assert original.size == (512, 522)  # the odd one
    assert train[odd[0]]["image"].shape == (3, 48, 48)
    assert len(train) == 28
    assert sum(train.labels) == 0
    test = AnomalyDataset(root, "hazelnut", "test", image_size=64)
    assert (len(test), sum(test.labels)) == (23, 17)
    for i, s in enumerate(test.samples):
        if s.label:
            assert s.mask_path.name == s.path.stem + ".png"  # NN.jpg → NN.png, no _mask
            area = float(test[i]["mask"].mean())
            assert 0.005 < area < 0.1  # 1.3–6.1 % of the image per the data README
    # the JSON annotation folders beside `hazelnut/` are not categories
    assert find_categories(root) == ("hazelnut",)


def test_file_removed_after_listing_is_a_named_error(mvtec_root: Path):
    ds = AnomalyDataset(mvtec_root, "widget", "train", image_size=8)
    ds.samples[1].path.unlink()
    with pytest.raises(ValueError, match=r"`image` .*001\.png' does not exist"):
        ds[1]


def test_dataset_reports_its_normalisation(tmp_path: Path):
    from resad_kit.data import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, AnomalyDataset, synthesize_dataset

    root = synthesize_dataset(tmp_path, categories=["grass"], n_train=1, n_test=1, image_size=16)
    clip = AnomalyDataset(root, "grass", "test", image_size=8)
    raw = AnomalyDataset(root, "grass", "test", image_size=8, mean=None, std=None)
    assert clip.mean == tuple(OPENAI_CLIP_MEAN)
    assert clip.std == tuple(OPENAI_CLIP_STD)
    assert (raw.mean, raw.std) == (None, None)


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_masks_equal_the_items_masks(tmp_path: Path, interpolation: str):
    from resad_kit.data import AnomalyDataset, synthesize_dataset

    root = synthesize_dataset(tmp_path, categories=["coins"], n_train=1, n_test=6, image_size=40)
    ds = AnomalyDataset(
        root, "coins", "test", image_size=16, mask_size=24, mask_interpolation=interpolation
    )
    expected = torch.stack([ds[i]["mask"][0] for i in range(len(ds))])
    assert torch.equal(ds.masks(range(len(ds))), expected)
    assert torch.equal(ds.masks([5, 0]), expected[[5, 0]])
    with pytest.raises(ValueError, match="empty"):
        ds.masks([])
    with pytest.raises(IndexError, match="out of range"):
        ds.masks([6])
