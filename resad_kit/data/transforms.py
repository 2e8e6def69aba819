"""Reading images and masks into tensors (spec §1.1: squash resize, CLIP normalisation).

* Images are converted to RGB, **squash-resized** to ``size×size`` (aspect ratio not kept,
  no centre crop) with PIL's **bicubic** filter, scaled to ``[0, 1]`` and normalised with a
  per-channel mean and std. This is the official code's preprocessing: torchvision's
  ``Resize((S, S), BICUBIC)`` on a PIL image calls the same PIL resize. The defaults are
  the OpenAI CLIP constants; a backbone that uses other values passes its own.
* Masks are converted to 8-bit grey, **binarised** (``> 0`` → 255; 1-bit and 0/255 PNGs
  and VisA's region-index masks all work), resized with **nearest** neighbour by default,
  and returned as ``{0, 1}`` float32. ``interpolation="bilinear"`` reproduces the official
  code instead: bilinear resize of the 0/255 mask, then ``value/255 > 0.5``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from resad_kit._image import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    check_normalization,
    image_to_tensor,
)
from resad_kit.ops._validation import check_positive_int

__all__ = ["OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "load_image", "load_mask"]

MASK_INTERPOLATIONS = ("nearest", "bilinear")


def open_image(fn: str, name: str, path: str | Path) -> Image.Image:
    """Open an image file, turning a missing or unreadable file into a named ``ValueError``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{fn}: `{name}` {str(path)!r} does not exist or is not a file")
    try:
        with Image.open(path) as image:  # closes the file; the decoded pixels stay
            image.load()
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{fn}: cannot read `{name}` {str(path)!r} as an image: {err}") from err
    return image


def mask_to_tensor(mask: Image.Image, size: int, interpolation: str) -> torch.Tensor:
    """Grey, binarise ``> 0``, resize (nearest, or bilinear + ``> 0.5``) → ``(1, S, S)``."""
    binary = Image.fromarray((np.asarray(mask.convert("L")) > 0).astype(np.uint8) * 255)
    if interpolation == "nearest":
        resized = np.asarray(binary.resize((size, size), Image.Resampling.NEAREST)) > 0
    else:  # the official code: bilinear on 0/255, ToTensor (÷255), then > 0.5
        resized = np.asarray(binary.resize((size, size), Image.Resampling.BILINEAR)) >= 128
    return torch.from_numpy(resized.astype(np.float32))[None]


def check_interpolation(fn: str, interpolation: str) -> str:
    """Validate the mask interpolation name."""
    if interpolation not in MASK_INTERPOLATIONS:
        raise ValueError(
            f"{fn}: `mask_interpolation` must be one of {MASK_INTERPOLATIONS}; "
            f"got {interpolation!r}"
        )
    return interpolation


def load_image(
    path: str | Path,
    size: int,
    mean: Sequence[float] | None = OPENAI_CLIP_MEAN,
    std: Sequence[float] | None = OPENAI_CLIP_STD,
) -> torch.Tensor:
    """Read an image file as a normalised ``(3, S, S)`` float32 tensor (spec §1.1).

    The image is converted to RGB (grey images get three equal channels), squash-resized
    to ``size×size`` with bicubic interpolation (no crop; any input size and aspect ratio),
    scaled to ``[0, 1]`` and normalised as ``(x − mean) / std`` per channel.

    Args:
        path: image file (any format PIL reads: PNG, JPEG, BMP, TIFF, ...).
        size: output side ``S`` in pixels.
        mean: per-channel mean (R, G, B); default OpenAI CLIP's. ``None`` together with
            ``std=None`` skips normalisation (values stay in ``[0, 1]``).
        std: per-channel standard deviation; default OpenAI CLIP's.

    Returns:
        The image tensor.

    Raises:
        ValueError: missing or unreadable file, non-positive ``size``, bad ``mean``/``std``.

    Shape:
        - output: ``(3, S, S)``

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> from resad_kit.data import load_image
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = Path(tmp) / "grey.png"
        ...     Image.new("L", (40, 30), color=255).save(path)  # white, 40 wide, 30 high
        ...     x = load_image(path, 16, mean=None, std=None)
        ...     y = load_image(path, 16)
        >>> x.shape, x.dtype, float(x.min()), float(x.max())
        (torch.Size([3, 16, 16]), torch.float32, 1.0, 1.0)
        >>> [round(float(v), 4) for v in y[:, 0, 0]]  # (1 - mean) / std
        [1.9303, 2.0749, 2.1459]
    """
    fn = "load_image"
    size = check_positive_int(fn, "size", size)
    norm = check_normalization(fn, mean, std)
    return image_to_tensor(open_image(fn, "path", path), size, norm)


def load_mask(
    path: str | Path | None,
    size: int,
    interpolation: str = "nearest",
) -> torch.Tensor:
    """Read a ground-truth mask as a binary ``(1, S, S)`` float32 tensor.

    Every non-zero pixel counts as anomalous (``> 0``), so 1-bit PNGs, 0/255 masks and
    VisA's masks (region indices) are all read correctly. ``path=None`` gives the all-zero
    mask of a normal image.

    Args:
        path: mask file, or ``None`` for a normal image.
        size: output side ``S``.
        interpolation: ``"nearest"`` (default) or ``"bilinear"`` — the official code's
            bilinear resize of the 0/255 mask followed by ``value/255 > 0.5`` (spec §1.1).

    Returns:
        The mask, values in ``{0, 1}``.

    Raises:
        ValueError: missing or unreadable file, non-positive ``size``, unknown
            ``interpolation``.

    Shape:
        - output: ``(1, S, S)``

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> import numpy as np
        >>> from PIL import Image
        >>> from resad_kit.data import load_mask
        >>> m = np.zeros((8, 8), dtype=np.uint8)
        >>> m[2:6, 2:6] = 7  # any non-zero value is anomalous
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     Image.fromarray(m).save(Path(tmp) / "m.png")
        ...     y = load_mask(Path(tmp) / "m.png", 4)
        >>> y
        tensor([[[0., 0., 0., 0.],
                 [0., 1., 1., 0.],
                 [0., 1., 1., 0.],
                 [0., 0., 0., 0.]]])
        >>> load_mask(None, 2)
        tensor([[[0., 0.],
                 [0., 0.]]])
    """
    fn = "load_mask"
    size = check_positive_int(fn, "size", size)
    interpolation = check_interpolation(fn, interpolation)
    if path is None:
        return torch.zeros(1, size, size)
    return mask_to_tensor(open_image(fn, "path", path), size, interpolation)
