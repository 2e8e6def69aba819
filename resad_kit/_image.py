"""Image → tensor preprocessing shared by :mod:`resad_kit.clip` and :mod:`resad_kit.data`.

One copy of the CLIP preprocessing of the official code: RGB, PIL bicubic squash resize (no
crop), ``[0, 1]`` scaling and per-channel normalisation with the OpenAI CLIP constants by
default. 16-bit grey images (Pillow modes ``I;16*`` and ``I``) are first scaled to 8 bits by
their full range (``round(v · 255 / 65535)``): Pillow's own ``convert("RGB")`` clips them at
255, which turns every pixel brighter than 255/65535 white. Float images (mode ``F``) have no
defined range and are refused. Private: the public entry points are
``resad_kit.clip.ImagePreprocess`` and ``resad_kit.data.load_image``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from einops import rearrange
from PIL import Image

OPENAI_CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
"""Per-channel (R, G, B) mean of OpenAI CLIP's preprocessing."""
OPENAI_CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
"""Per-channel (R, G, B) standard deviation of OpenAI CLIP's preprocessing."""


def check_normalization(
    fn: str, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Validate ``mean``/``std`` (three numbers each, std > 0, or both ``None``)."""
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        raise ValueError(f"{fn}: pass both `mean` and `std`, or neither; got {mean=}, {std=}")
    out = []
    for name, v in (("mean", mean), ("std", std)):
        vals = tuple(float(x) for x in v)
        if len(vals) != 3 or not all(np.isfinite(vals)):
            raise ValueError(f"{fn}: `{name}` must be 3 finite numbers (R, G, B); got {v!r}")
        out.append(vals)
    if min(out[1]) <= 0:
        raise ValueError(f"{fn}: `std` must be positive; got {std!r}")
    return out[0], out[1]


def describe(image: Image.Image) -> str:
    """The file an image was read from, for error messages (``'the image'`` if unknown)."""
    name = getattr(image, "filename", "")
    return repr(str(name)) if name else "the image"


def integer_grey_values(image: Image.Image, what: str) -> np.ndarray:
    """The values of an integer grey image (modes ``I;16*``, ``I``), checked to be in
    ``[0, 65535]``: Pillow opens 16-bit PNG and TIFF files in these modes. ``what`` starts
    the error message, e.g. ``"load_mask: mask"``."""
    values = np.asarray(image)
    if values.size and (int(values.min()) < 0 or int(values.max()) > 65535):
        raise ValueError(
            f"{what} {describe(image)} is a {image.mode!r} (integer) image with values in "
            f"[{int(values.min())}, {int(values.max())}], outside the 16-bit range "
            f"[0, 65535]; save it as an 8- or 16-bit image"
        )
    return values


def to_rgb(image: Image.Image, fn: str = "image_to_tensor") -> Image.Image:
    """``image`` as an 8-bit RGB image; 16-bit grey is scaled by its range, not clipped.

    ``fn`` names the caller in error messages.

    Raises:
        ValueError: a float (``F``) image, or an integer image outside ``[0, 65535]``.
    """
    if image.mode == "I" or image.mode.startswith("I;"):
        values = integer_grey_values(image, f"{fn}: image").astype(np.int64)
        eight = ((values * 255 + 32767) // 65535).astype(np.uint8)  # round(v · 255 / 65535)
        image = Image.fromarray(eight)  # 2-D uint8: mode "L"
    elif image.mode == "F":
        raise ValueError(
            f"{fn}: image {describe(image)} is a floating-point (mode 'F') image, whose value "
            f"range is not defined; save it as an 8- or 16-bit image"
        )
    return image.convert("RGB")


def image_to_tensor(
    image: Image.Image,
    size: int,
    norm: tuple[tuple[float, ...], tuple[float, ...]] | None,
    fn: str = "image_to_tensor",
) -> torch.Tensor:
    """RGB, bicubic squash resize, ``[0, 1]``, optional normalisation → ``(3, S, S)`` float32.

    16-bit grey images are scaled to 8 bits by their range first (see :func:`to_rgb`);
    ``fn`` names the caller in error messages.
    """
    image = to_rgb(image, fn)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    # numpy, single-threaded: cheap per image and immune to thread over-subscription
    x = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    if norm is not None:
        x -= np.asarray(norm[0], dtype=np.float32)
        x /= np.asarray(norm[1], dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(rearrange(x, "h w c -> c h w")))
