"""Tiny data trees in the MVTec AD, BTAD and VisA layouts, built in ``tmp_path``.

Every anomalous image is black with a white rectangle, and its mask covers exactly that
rectangle, so that tests can check that masks stay aligned with images after resizing.
Images are 40 wide and 30 high (not square) on purpose.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"
W, H = 40, 30
BOX = (8, 20, 10, 30)  # rows 8:20, columns 10:30


def box_arrays(mask_value: int = 255, w: int = W, h: int = H) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image (black, white box) and its mask (``mask_value`` inside the box)."""
    image = np.zeros((h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), dtype=np.uint8)
    r0, r1, c0, c1 = BOX
    image[r0:r1, c0:c1] = 255
    mask[r0:r1, c0:c1] = mask_value
    return image, mask


def write_normal(path: Path, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((H, W, 3), value, dtype=np.uint8)).save(path)


def write_anomalous(image_path: Path, mask_path: Path, mask_mode: str = "L") -> None:
    image, mask = box_arrays()
    image_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(image_path)
    Image.fromarray(mask).convert(mask_mode).save(mask_path)


@pytest.fixture
def mvtec_root(tmp_path: Path) -> Path:
    """``widget``: 3 train/good; test: 1 good, 2 crack (``_mask.png``, 1-bit), 1 scratch
    (JPEG image, mask named like the image, no ``_mask``); plus files that are not images."""
    cat = tmp_path / "mvtec" / "widget"
    for i in range(3):
        write_normal(cat / "train" / "good" / f"{i:03d}.png", value=50 + i)
    write_normal(cat / "test" / "good" / "000.png")
    for i in range(2):
        write_anomalous(
            cat / "test" / "crack" / f"{i:03d}.png",
            cat / "ground_truth" / "crack" / f"{i:03d}_mask.png",
            mask_mode="1",
        )
    write_anomalous(
        cat / "test" / "scratch" / "000.jpg", cat / "ground_truth" / "scratch" / "000.png"
    )
    (cat / "readme.txt").write_text("not an image")
    (cat / "test" / "good" / ".DS_Store").write_bytes(b"\0")
    (cat / "test" / "good" / "notes.txt").write_text("not an image")
    return tmp_path / "mvtec"


@pytest.fixture
def btad_root(tmp_path: Path) -> Path:
    """``01``: 2 train/ok (.bmp); test: 1 ok (.bmp), 2 ko (.bmp and .PNG) with masks named
    like the image (.png and .bmp)."""
    cat = tmp_path / "btad" / "01"
    write_normal(cat / "train" / "ok" / "0000.bmp")
    write_normal(cat / "train" / "ok" / "0001.bmp")
    write_normal(cat / "test" / "ok" / "0002.bmp")
    write_anomalous(cat / "test" / "ko" / "0003.bmp", cat / "ground_truth" / "ko" / "0003.png")
    write_anomalous(cat / "test" / "ko" / "0004.PNG", cat / "ground_truth" / "ko" / "0004.bmp")
    return tmp_path / "btad"


VISA_ROWS = [
    # object, split, label, image, mask — deliberately not sorted by file name
    ("candle", "train", "normal", "candle/Data/Images/Normal/0002.JPG", ""),
    ("candle", "train", "normal", "candle/Data/Images/Normal/0000.JPG", ""),
    ("candle", "train", "normal", "candle/Data/Images/Normal/0001.JPG", ""),
    (
        "candle",
        "test",
        "anomaly",
        "candle/Data/Images/Anomaly/000.JPG",
        "candle/Data/Masks/Anomaly/000.png",
    ),
    ("candle", "test", "normal", "candle/Data/Images/Normal/0003.JPG", ""),
    ("pcb1", "train", "normal", "pcb1/Data/Images/Normal/0000.JPG", ""),
]


@pytest.fixture
def visa_root(tmp_path: Path) -> Path:
    """VisA: ``split_csv/1cls.csv`` and the files it lists; masks hold a region index (3)."""
    root = tmp_path / "visa"
    for _obj, _split, label, image, mask in VISA_ROWS:
        if label == "normal":
            write_normal(root / image)
        else:
            img, m = box_arrays(mask_value=3)
            (root / image).parent.mkdir(parents=True, exist_ok=True)
            (root / mask).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / image, format="PNG")  # lossless, whatever the suffix
            Image.fromarray(m).save(root / mask)
    write_visa_csv(root, VISA_ROWS)
    return root


def write_visa_csv(root: Path, rows: list[tuple[str, ...]], header: str | None = None) -> None:
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    lines = [header or "object,split,label,image,mask"] + [",".join(r) for r in rows]
    (root / "split_csv" / "1cls.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture
def trees() -> SimpleNamespace:
    """The helpers above, for tests (test modules cannot import this conftest)."""
    return SimpleNamespace(
        EXAMPLES=EXAMPLES,
        W=W,
        H=H,
        BOX=BOX,
        VISA_ROWS=VISA_ROWS,
        box_arrays=box_arrays,
        write_normal=write_normal,
        write_anomalous=write_anomalous,
        write_visa_csv=write_visa_csv,
    )
