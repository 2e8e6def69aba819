"""Image preprocessing matching the CLIP weights (resad_kit.clip.preprocess;
hito2448/Res2CLIP `utils/utils.py`, ``get_transform``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resad_kit.clip import ClipBackbone, ImagePreprocess
from resad_kit.clip.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "data"
HAZELNUT = SAMPLE / "mvtec_mini" / "hazelnut" / "test" / "crack"


def _official(size: int, mean, std):
    """The official code's transform, built with torchvision (independent reference)."""
    transforms = pytest.importorskip("torchvision.transforms")
    return transforms.Compose(
        [
            transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


def _drawn_image(width: int = 90, height: int = 40) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("size", [64, 518])
def test_matches_the_official_torchvision_transform(size):
    image = _drawn_image()
    expected = _official(size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)(image)
    assert torch.equal(ImagePreprocess(size)(image), expected)


@pytest.mark.skipif(
    not HAZELNUT.is_dir(), reason="the mvtec_mini sample images are not beside the repo"
)
def test_matches_on_a_real_mvtec_image():
    path = sorted(HAZELNUT.glob("*.png"))[0]
    with Image.open(path) as image:
        expected = _official(518, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)(image.convert("RGB"))
        got = ImagePreprocess(518)(image)
    assert got.shape == (3, 518, 518)
    assert torch.equal(got, expected)


def test_squash_resize_keeps_the_whole_image():
    """A 2:1 image, left half black and right half white: after the square resize the left
    and right halves are still black and white (no centre crop would keep both)."""
    pixels = np.zeros((50, 100, 3), dtype=np.uint8)
    pixels[:, 50:] = 255
    out = ImagePreprocess(64, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))(Image.fromarray(pixels))
    assert torch.allclose(out[:, :, :28], torch.zeros(3, 64, 28), atol=1e-6)
    assert torch.allclose(out[:, :, 36:], torch.ones(3, 64, 28), atol=1e-6)


def test_normalisation_and_colour_modes():
    grey = Image.new("L", (10, 10), 255)
    out = ImagePreprocess(16)(grey)
    expected = (1.0 - torch.tensor(OPENAI_CLIP_MEAN)) / torch.tensor(OPENAI_CLIP_STD)
    torch.testing.assert_close(out[:, 3, 5], expected)
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 10))
    assert ImagePreprocess(16)(rgba).shape == (3, 16, 16)


def test_backbone_preprocess_matches_its_input():
    backbone = ClipBackbone.tiny(image_size=48)
    assert backbone.preprocess == ImagePreprocess(48, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    assert (backbone.mean, backbone.std) == (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    x = backbone.preprocess(_drawn_image())
    assert backbone(x.unsqueeze(0)).grid == (6, 6)


def test_errors():
    with pytest.raises(TypeError, match=r"`image` must be a PIL\.Image\.Image; got Tensor"):
        ImagePreprocess(16)(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="`image_size` must be a positive int"):
        ImagePreprocess(0)
    with pytest.raises(ValueError, match="`std` must be positive"):
        ImagePreprocess(16, std=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="`mean` and `std` are required"):
        ImagePreprocess(16, mean=None, std=None)
    with pytest.raises(ValueError, match="`mean` must be 3 finite numbers"):
        ImagePreprocess(16, mean=(0.5, 0.5))
