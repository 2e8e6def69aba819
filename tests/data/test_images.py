"""Image and mask encodings: 16-bit grey images, and which mask encodings are unambiguous.

Every expected value is computed independently of the reader (integer arithmetic on the
arrays written to disk), and every file is written in ``tmp_path``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resad_kit.data import AnomalyDataset, load_image, load_mask

# --------------------------------------------------------------------------- 16-bit images


def _gradient16(size: int = 64) -> np.ndarray:
    """A square 16-bit image: a horizontal gradient over the whole range 0 … 65535, and in
    row 1 values that round down, up and to the top."""
    row = np.linspace(0, 65535, size).round().astype(np.uint16)
    g = np.tile(row, (size, 1))
    g[1, :4] = [1, 128, 129, 65534]
    return g


def test_16bit_grey_png_is_scaled_by_its_range(tmp_path: Path):
    """Regression (issue 18): a 16-bit grey PNG (Pillow mode ``I;16``) went through
    ``convert("RGB")``, which clips at 255, so every pixel above 255/65535 read as white.
    Now each value v reads as round(v · 255 / 65535) / 255 on all three channels."""
    g = _gradient16()
    Image.fromarray(g).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode == "I;16"  # the case under test
    x = load_image(tmp_path / "g16.png", 64, mean=None, std=None)  # native size: no resize
    expected8 = (g.astype(np.int64) * 255 + 32767) // 65535  # exact integer rounding
    expected = torch.from_numpy(expected8.astype(np.float32) / np.float32(255.0))
    assert torch.equal(x, expected.expand(3, -1, -1))
    assert float(x[0, 0, 0]) == 0.0
    assert float(x[0, 0, -1]) == 1.0
    assert 0.45 < float(x[0, 0, 32]) < 0.55  # the middle of the gradient is mid-grey
    assert [int(v) for v in expected8[1, :4]] == [0, 0, 1, 255]


def test_16bit_image_equals_its_8bit_original_after_resizing(tmp_path: Path):
    """An 8-bit image stored in 16 bits (v · 257) reads exactly like the 8-bit file, also
    through the bicubic resize and the normalisation, and through AnomalyDataset."""
    rng = np.random.default_rng(0)
    eight = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    Image.fromarray(eight).save(tmp_path / "g8.png")
    Image.fromarray(eight.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    assert torch.equal(load_image(tmp_path / "g16.png", 24), load_image(tmp_path / "g8.png", 24))
    for name, array in (("a", eight), ("b", eight.astype(np.uint16) * 257)):
        folder = tmp_path / "root" / "c" / "train" / "good"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(folder / f"{name}.png")
    ds = AnomalyDataset(tmp_path / "root", "c", "train", image_size=16)
    assert torch.equal(ds[0]["image"], ds[1]["image"])


def test_integer_image_outside_16_bits_and_float_image_are_refused(tmp_path: Path):
    """Images whose value range is not defined are errors that name the file, not clipped."""
    Image.fromarray(np.full((4, 4), 70000, dtype=np.int32)).save(tmp_path / "i32.tif")
    with pytest.raises(ValueError, match=r"load_image: image .*i32\.tif.* outside the 16-bit"):
        load_image(tmp_path / "i32.tif", 4)
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(ValueError, match=r"load_image: image .*f\.tif.* floating-point"):
        load_image(tmp_path / "f.tif", 4)


def test_32bit_integer_image_within_16_bits_reads_as_16_bits(tmp_path: Path):
    """Mode ``I`` (how older Pillow opens 16-bit PNGs) is read on the 16-bit range too."""
    Image.fromarray(np.full((4, 4), 65535 // 5, dtype=np.int32)).save(tmp_path / "i.tif")
    with Image.open(tmp_path / "i.tif") as im:
        assert im.mode == "I"
    x = load_image(tmp_path / "i.tif", 4, mean=None, std=None)
    assert torch.equal(x, torch.full((3, 4, 4), 51 / 255, dtype=torch.float32))


# --------------------------------------------------------------------------- masks

ANOMALOUS = np.zeros((10, 12), dtype=bool)
ANOMALOUS[2:7, 3:9] = True
ANOMALOUS[0, 0] = True


def _palette_image(index: np.ndarray, colours: list[tuple[int, int, int]]) -> Image.Image:
    image = Image.fromarray(index.astype(np.uint8), mode="P")
    image.putpalette([v for c in colours for v in c])
    return image


def _encode(kind: str) -> Image.Image:
    a = ANOMALOUS
    u8 = a.astype(np.uint8)
    if kind == "1":
        return Image.fromarray(u8 * 255).convert("1")
    if kind == "L 0/255":
        return Image.fromarray(u8 * 255)
    if kind == "L region index":  # VisA: 1, 2, ... per defect region
        return Image.fromarray(u8 * np.where(np.arange(12) < 6, 1, 2).astype(np.uint8))
    if kind == "L anti-aliased":  # soft edge values: every grey above 0 is anomalous
        return Image.fromarray(u8 * np.array([1, 64, 127, 128, 200, 255] * 2, dtype=np.uint8))
    if kind == "I;16":
        return Image.fromarray(a.astype(np.uint16) * 65535)
    if kind == "P grey palette":
        return _palette_image(u8, [(0, 0, 0), (255, 255, 255)])
    if kind == "P index 0 white":  # read through the palette: the white pixels are defects
        return _palette_image(1 - u8, [(255, 255, 255), (0, 0, 0)])
    if kind == "RGB grey":
        return Image.fromarray(np.repeat(u8[..., None] * 255, 3, axis=2))
    if kind == "RGBA opaque grey":
        rgb = np.repeat(u8[..., None] * 128, 3, axis=2)
        return Image.fromarray(np.dstack([rgb, np.full(a.shape, 255, np.uint8)]))
    if kind == "LA opaque":
        return Image.fromarray(u8 * 255).convert("LA")
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "1",
        "L 0/255",
        "L region index",
        "L anti-aliased",
        "I;16",
        "P grey palette",
        "P index 0 white",
        "RGB grey",
        "RGBA opaque grey",
        "LA opaque",
    ],
)
def test_unambiguous_mask_encodings_read_the_same(tmp_path: Path, kind: str):
    """Grey masks in every storage mode give the same binary mask (grey value > 0)."""
    _encode(kind).save(tmp_path / "m.png")
    y = load_mask(tmp_path / "m.png", 12)  # width 12: only the rows are resized (10 → 12)
    ref = Image.fromarray(ANOMALOUS.astype(np.uint8) * 255).resize(
        (12, 12), Image.Resampling.NEAREST
    )
    expected = torch.from_numpy((np.asarray(ref) > 0).astype(np.float32))[None]
    assert torch.equal(y, expected)


def _colour_mask() -> Image.Image:
    rgb = np.zeros((*ANOMALOUS.shape, 3), dtype=np.uint8)
    rgb[ANOMALOUS] = (0, 0, 255)  # pure blue has luminance 29: read as anomalous before
    rgb[5, 5] = (255, 0, 0)
    return Image.fromarray(rgb)


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("RGB colour", r"not grey .*e\.g\. RGB \[\(0, 0, 255\), \(255, 0, 0\)\]"),
        ("P colour palette", r"'P' image\) has \d+ pixel\(s\) that are not grey.*\(128, 0, 0\)"),
        ("P transparent index", "transparent"),
        ("RGBA translucent", "transparent or translucent"),
        ("F", "image mode 'F'"),
        ("I negative", r"outside the 16-bit range"),
    ],
)
def test_ambiguous_masks_are_refused_with_the_file_name(tmp_path: Path, kind: str, match: str):
    """Regression (issue 18): colour masks were read through luminance (a blue region
    counted, a palette class map was thresholded blindly). Now a mask whose meaning is
    ambiguous is a ValueError that names the file."""
    u8 = ANOMALOUS.astype(np.uint8)
    name = "m.tif" if kind in ("F", "I negative") else "m.png"
    if kind == "RGB colour":
        image = _colour_mask()
    elif kind == "P colour palette":  # a PASCAL-VOC-like class map
        image = _palette_image(u8, [(0, 0, 0), (128, 0, 0)])
    elif kind == "P transparent index":
        image = _palette_image(u8, [(0, 0, 0), (255, 255, 255)])
        image.info["transparency"] = 0
    elif kind == "RGBA translucent":
        image = Image.fromarray(np.dstack([np.repeat(u8[..., None] * 255, 3, 2), 255 - u8 * 55]))
    elif kind == "F":
        image = Image.fromarray(ANOMALOUS.astype(np.float32))
    else:
        image = Image.fromarray(u8.astype(np.int32) * 2 - 1)
    image.save(tmp_path / name)
    with pytest.raises(ValueError, match=rf"load_mask: mask '.*{name}'.*"):
        load_mask(tmp_path / name, 8)
    with pytest.raises(ValueError, match=match):
        load_mask(tmp_path / name, 8)


def test_colour_mask_in_a_dataset_is_refused_on_every_path(tmp_path: Path):
    """A colour mask in a data set fails both in items and in ``masks()``."""
    cat = tmp_path / "c"
    for folder in ("train/good", "test/cut", "ground_truth/cut"):
        (cat / folder).mkdir(parents=True)
    Image.new("RGB", (12, 10)).save(cat / "train" / "good" / "0.png")
    Image.new("RGB", (12, 10)).save(cat / "test" / "cut" / "0.png")
    _colour_mask().save(cat / "ground_truth" / "cut" / "0_mask.png")
    ds = AnomalyDataset(tmp_path, "c", "test", image_size=8)
    with pytest.raises(ValueError, match=r"AnomalyDataset: mask .*0_mask\.png.*not grey"):
        ds[0]
    with pytest.raises(ValueError, match=r"AnomalyDataset.masks: mask .*0_mask\.png.*not grey"):
        ds.masks([0])
