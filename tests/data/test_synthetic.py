"""Synthetic data set: deterministic bytes, masks exactly for anomalous images, defects inside."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from resad_kit.data import (
    DEFECT_KINDS,
    SYNTHETIC_CATEGORIES,
    AnomalyDataset,
    draw_defect,
    synthesize_dataset,
)
from resad_kit.data.synthetic import MANIFEST_NAME
from resad_kit.data.synthetic_images import render_normal, seeded_rng

SIZE = 48


def _digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """All five categories; 3 train and 10 test images each (5 normal, one per defect type)."""
    root = tmp_path_factory.mktemp("synthetic")
    return synthesize_dataset(root, n_train=3, n_test=10, seed=5, image_size=SIZE)


def test_same_seed_gives_the_same_bytes(synthetic: Path, tmp_path: Path):
    again = synthesize_dataset(tmp_path / "again", n_train=3, n_test=10, seed=5, image_size=SIZE)
    assert _digest(again) == _digest(synthetic)
    assert len(_digest(synthetic)) == 5 * (3 + 10 + 5 + 1)  # images + masks + manifest


def test_other_seed_gives_other_images(synthetic: Path, tmp_path: Path):
    other = synthesize_dataset(
        tmp_path / "o", ["brick"], n_train=3, n_test=10, seed=6, image_size=SIZE
    )
    a, b = _digest(synthetic), _digest(other)
    shared = [k for k in b if k in a]
    assert shared
    assert all(a[k] != b[k] for k in shared)


def test_category_images_do_not_depend_on_the_other_categories(synthetic: Path, tmp_path: Path):
    alone = synthesize_dataset(
        tmp_path / "alone", ["gravel"], n_train=3, n_test=10, seed=5, image_size=SIZE
    )
    expected = {k: v for k, v in _digest(synthetic).items() if k.startswith("gravel/")}
    assert _digest(alone) == expected


def test_layout_counts_and_defect_cycle(synthetic: Path):
    for category in SYNTHETIC_CATEGORIES:
        train = AnomalyDataset(synthetic, category, "train", image_size=16)
        test = AnomalyDataset(synthetic, category, "test", image_size=16)
        assert train.layout == "mvtec"
        assert (len(train), sum(train.labels)) == (3, 0)
        assert (len(test), sum(test.labels)) == (10, 5)
        assert sorted(s.defect for s in test.samples if s.label) == sorted(DEFECT_KINDS)


def test_masks_non_empty_exactly_for_anomalous_images(synthetic: Path):
    for category in SYNTHETIC_CATEGORIES:
        test = AnomalyDataset(synthetic, category, "test", image_size=SIZE)
        for s in test.samples:
            if s.label == 0:
                assert s.mask_path is None
                continue
            mask = np.asarray(Image.open(s.mask_path))
            assert mask.shape == (SIZE, SIZE)
            assert set(np.unique(mask).tolist()) == {0, 255}  # non-empty, binary 0/255
    gt_files = list(synthetic.rglob("ground_truth/*/*.png"))
    assert len(gt_files) == 5 * 5


def test_defects_lie_inside_their_masks(synthetic: Path):
    """Re-render each defect-free image: the written image differs from it only in the mask."""
    for category in SYNTHETIC_CATEGORIES:
        test = AnomalyDataset(synthetic, category, "test", image_size=SIZE)
        anomalous = [s for s in test.samples if s.label]
        # the j-th anomalous image has defect DEFECT_KINDS[j % 5] and stem f"{j // 5:03d}"
        for j in range(5):
            s = next(x for x in anomalous if x.defect == DEFECT_KINDS[j])
            clean = render_normal(category, SIZE, seeded_rng(5, category, 2, j))
            image = np.asarray(Image.open(s.path))
            mask = np.asarray(Image.open(s.mask_path)) > 0
            assert np.array_equal(image[~mask], clean[~mask])
            changed = (image != clean).any(axis=2)
            assert changed[mask].mean() > 0.5, (category, s.defect)


def test_normal_test_images_differ_from_training_images(synthetic: Path):
    train = {hashlib.sha256(p.read_bytes()).digest() for p in synthetic.rglob("train/good/*.png")}
    test = {hashlib.sha256(p.read_bytes()).digest() for p in synthetic.rglob("test/good/*.png")}
    assert len(train) == 5 * 3
    assert not train & test


@settings(max_examples=30)
@given(kind=st.sampled_from(DEFECT_KINDS), seed=st.integers(0, 2**32 - 1), size=st.integers(16, 80))
def test_draw_defect_changes_only_the_mask(kind: str, seed: int, size: int):
    rng = np.random.default_rng(seed)
    image = rng.integers(60, 200, (size, size, 3), dtype=np.uint8)
    out, mask = draw_defect(image, kind, seed)
    assert out.dtype == np.uint8
    assert mask.dtype == np.bool_
    assert mask.shape == (size, size)
    assert mask.any()
    assert np.array_equal(out[~mask], image[~mask])
    assert (out != image).any(axis=2)[mask].mean() > 0.5
    again, mask_again = draw_defect(image, kind, seed)
    assert np.array_equal(again, out)
    assert np.array_equal(mask_again, mask)


def test_draw_defect_errors():
    good = np.zeros((32, 32, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="`kind` must be one of"):
        draw_defect(good, "crack", 0)
    for bad in (np.zeros((32, 30, 3), np.uint8), np.zeros((8, 8, 3), np.uint8), good.astype(float)):
        with pytest.raises(ValueError, match=r"`image` must be a uint8 array \(S, S, 3\)"):
            draw_defect(bad, "hole", 0)


def test_synthesize_errors_and_overwrite(tmp_path: Path):
    kwargs = {"n_train": 1, "n_test": 2, "image_size": 16}
    with pytest.raises(ValueError, match="`categories` must be a non-empty subset"):
        synthesize_dataset(tmp_path, ["carpet"], **kwargs)
    with pytest.raises(ValueError, match="`defects` must be a non-empty subset"):
        synthesize_dataset(tmp_path, ["brick"], defects=["dent"], **kwargs)
    with pytest.raises(ValueError, match="`n_train` must be a positive int"):
        synthesize_dataset(tmp_path, ["brick"], n_train=0)
    with pytest.raises(ValueError, match="`n_test` must be a non-negative int"):
        synthesize_dataset(tmp_path, ["brick"], n_test=-1)
    with pytest.raises(ValueError, match="`image_size` must be ≥ 16"):
        synthesize_dataset(tmp_path, ["brick"], image_size=8)
    first = _digest(synthesize_dataset(tmp_path, ["brick"], **kwargs))
    with pytest.raises(ValueError, match="exists and is not empty; pass overwrite=True"):
        synthesize_dataset(tmp_path, ["brick"], **kwargs)
    (tmp_path / "brick" / "train" / "good" / "stale.png").write_bytes(b"")
    assert _digest(synthesize_dataset(tmp_path, ["brick"], overwrite=True, **kwargs)) == first


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Make the n-th PNG write of synthesize_dataset raise, as a killed job would stop."""
    import resad_kit.data.synthetic as synthetic

    real, calls = synthetic.write_png, []

    def write(array: np.ndarray, path: Path) -> None:
        calls.append(path)
        if len(calls) == n:
            raise KeyboardInterrupt
        real(array, path)

    monkeypatch.setattr(synthetic, "write_png", write)


def test_interrupted_generation_leaves_no_partial_category(tmp_path: Path, monkeypatch):
    """A call stopped in the middle of a category (here after 2 of its 5 files) leaves no
    folder under the category's name and no temporary folder; the old code left a category
    with only some of its images, which a later run read as complete."""
    kwargs = {"n_train": 2, "n_test": 2, "image_size": 16}
    root = tmp_path / "data"
    _interrupt_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        synthesize_dataset(root, ["brick"], **kwargs)
    assert list(root.iterdir()) == []
    monkeypatch.undo()
    complete = _digest(synthesize_dataset(tmp_path / "ref", ["brick"], **kwargs))
    assert _digest(synthesize_dataset(root, ["brick"], **kwargs)) == complete


def test_reuse_keeps_a_complete_category_and_regenerates_a_damaged_one(tmp_path: Path):
    """``reuse=True`` keeps a category that matches its manifest (same files, same bytes,
    same settings) and regenerates one with a missing, altered or extra file, a missing
    manifest (written by a killed job of the old code) or other settings."""
    kwargs = {"n_train": 2, "n_test": 4, "image_size": 16}
    root = synthesize_dataset(tmp_path, ["coins", "grass"], **kwargs)
    complete = _digest(root)
    grass = root / "grass" / "train" / "good" / "000.png"
    before = grass.stat().st_mtime_ns
    damages = [
        lambda d: (d / "test" / "good" / "001.png").unlink(),
        lambda d: (d / "test" / "good" / "001.png").write_bytes(b"not a png"),
        lambda d: (d / "test" / "good" / "009.png").write_bytes(b"extra"),
        lambda d: (d / MANIFEST_NAME).unlink(),
    ]
    for damage in damages:
        damage(root / "coins")
        assert _digest(root) != complete
        assert _digest(synthesize_dataset(tmp_path, ["coins", "grass"], reuse=True, **kwargs)) == (
            complete
        )
        assert grass.stat().st_mtime_ns == before  # the complete category was not rewritten
    other = synthesize_dataset(tmp_path, ["coins"], reuse=True, seed=9, **kwargs)
    assert _digest(other)["coins/train/good/000.png"] != complete["coins/train/good/000.png"]


def test_stale_temporary_folder_is_removed(tmp_path: Path):
    """The temporary folder of a killed call is deleted by the next call for its category."""
    stale = tmp_path / ".brick.tmp_dead"
    (stale / "train" / "good").mkdir(parents=True)
    (stale / "train" / "good" / "000.png").write_bytes(b"partial")
    synthesize_dataset(tmp_path, ["brick"], n_train=1, n_test=2, image_size=16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["brick"]
