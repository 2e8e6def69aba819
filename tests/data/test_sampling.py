"""Few-shot references: reproducible, seed-dependent, normal training images only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from resad_kit.data import AnomalyDataset, References, references_from_paths, sample_references


@pytest.fixture
def train_root(tmp_path: Path, trees) -> Path:
    """``widget``: 10 normal training images, each a flat grey level that identifies it."""
    for i in range(10):
        trees.write_normal(tmp_path / "widget" / "train" / "good" / f"{i:03d}.png", value=10 * i)
    trees.write_normal(tmp_path / "widget" / "test" / "good" / "000.png")
    return tmp_path


def _train(root: Path) -> AnomalyDataset:
    return AnomalyDataset(root, "widget", "train", image_size=8, mean=None, std=None)


def test_random_is_reproducible_and_documented(train_root: Path):
    ds = _train(train_root)
    a = sample_references(ds, 3, seed=0)
    b = sample_references(_train(train_root), 3, seed=0)
    assert isinstance(a, References)
    assert a.paths == b.paths
    assert a.indices == b.indices
    torch.testing.assert_close(a.images, b.images)
    # the documented generator, re-derived here: randperm over the sorted relative paths
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))[:3].tolist()
    assert a.paths == tuple(f"widget/train/good/{j:03d}.png" for j in order)
    # pinned: the same on every machine (guards against a change of generator)
    assert a.paths == (
        "widget/train/good/004.png",
        "widget/train/good/001.png",
        "widget/train/good/007.png",
    )


def test_images_are_the_selected_files(train_root: Path):
    refs = sample_references(_train(train_root), 4, seed=3)
    assert refs.images.shape == (4, 3, 8, 8)
    for path, image in zip(refs.paths, refs.images, strict=True):
        value = int(Path(path).stem) * 10  # the grey level written by the fixture
        torch.testing.assert_close(image, torch.full((3, 8, 8), value / 255))


def test_seeds_give_different_sets(train_root: Path):
    ds = _train(train_root)
    sets = {frozenset(sample_references(ds, 2, seed=s).paths) for s in range(8)}
    assert len(sets) >= 4


@pytest.fixture(scope="module")
def ten_normal(tmp_path_factory) -> AnomalyDataset:
    root = tmp_path_factory.mktemp("refs")
    (root / "widget" / "train" / "good").mkdir(parents=True)
    for i in range(10):
        Image.new("RGB", (6, 4), color=(i, i, i)).save(root / "widget/train/good" / f"{i:03d}.png")
    return _train(root)


@settings(max_examples=20)
@given(seed=st.integers(-(2**31), 2**31 - 1), k=st.integers(1, 10))
def test_only_normal_training_images_no_repeats_and_nested(ten_normal, seed, k):
    ds = ten_normal
    refs = sample_references(ds, k, seed=seed)
    assert len(set(refs.indices)) == k
    assert all(ds.samples[i].label == 0 for i in refs.indices)
    assert all(p.startswith("widget/train/good/") for p in refs.paths)
    if k > 1:  # the (k−1)-shot set is a prefix of the k-shot set for the same seed
        assert sample_references(ds, k - 1, seed=seed).paths == refs.paths[:-1]


def test_first_is_the_dataset_order(visa_root: Path):
    ds = AnomalyDataset(visa_root, "candle", "train", image_size=8)
    refs = sample_references(ds, 2, seed=123, method="first")
    # VisA keeps the CSV's row order: 0002 is listed before 0000
    assert refs.paths == (
        "candle/Data/Images/Normal/0002.JPG",
        "candle/Data/Images/Normal/0000.JPG",
    )
    assert refs.indices == (0, 1)
    # "random" sorts by path first, so it does not depend on the CSV order
    assert set(sample_references(ds, 3, seed=0).paths) == {s.relative_path for s in ds.samples}


def test_errors(train_root: Path):
    ds = _train(train_root)
    with pytest.raises(ValueError, match=r"`k`=11 is larger than the 10 normal training images"):
        sample_references(ds, 11, seed=0)
    with pytest.raises(ValueError, match="`k` must be a positive int"):
        sample_references(ds, 0, seed=0)
    with pytest.raises(ValueError, match="`method` must be one of"):
        sample_references(ds, 1, seed=0, method="paper")
    with pytest.raises(ValueError, match="`seed` must be an int"):
        sample_references(ds, 1, seed=1.5)
    test = AnomalyDataset(train_root, "widget", "test", image_size=8)
    with pytest.raises(ValueError, match="references come from the train split"):
        sample_references(test, 1, seed=0)
    with pytest.raises(TypeError, match="must be an AnomalyDataset"):
        sample_references([1, 2], 1, seed=0)


def test_references_from_paths(train_root: Path):
    ds = _train(train_root)
    # a path as written by the official code's JSON records, on another machine
    refs = references_from_paths(
        ds, ["./data/MVTec/widget/train/good/007.png", "widget/train/good/002.png"]
    )
    assert refs.indices == (7, 2)
    assert refs.paths == ("widget/train/good/007.png", "widget/train/good/002.png")
    torch.testing.assert_close(refs.images[0], torch.full((3, 8, 8), 70 / 255))
    with pytest.raises(ValueError, match=r"'widget/train/good/099\.png' matches 0 normal"):
        references_from_paths(ds, ["widget/train/good/099.png"])
    with pytest.raises(ValueError, match="matches 0 normal"):
        references_from_paths(ds, ["xwidget/train/good/001.png"])  # not a path-component match
    with pytest.raises(ValueError, match="`paths` must not be empty"):
        references_from_paths(ds, [])
