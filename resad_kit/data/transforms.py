"""Reading images and masks into tensors (the official code's preprocessing).

* Images are converted to RGB, **squash-resized** to ``size×size`` (aspect ratio not kept,
  no centre crop) with PIL's **bicubic** filter, scaled to ``[0, 1]`` and normalised with a
  per-channel mean and std. This is the official code's preprocessing: torchvision's
  ``Resize((S, S), BICUBIC)`` on a PIL image calls the same PIL resize. The defaults are
  the OpenAI CLIP constants; a backbone that uses other values passes its own. 16-bit grey
  images are scaled to 8 bits by their full range (``round(v · 255 / 65535)``), not clipped;
  float (mode ``F``) images are refused.
* Masks are read only when their meaning is unambiguous (:func:`mask_to_binary`): 1-bit,
  8-bit or 16-bit grey, or palette/RGB(A) images whose pixels are all grey (R = G = B) and
  opaque. A pixel is anomalous when its grey value is ``> 0`` (the official code's rule; 1-bit
  and 0/255 PNGs, VisA's region-index masks and anti-aliased edges all count). The binary
  mask is resized with **nearest** neighbour by default and returned as ``{0, 1}`` float32;
  ``interpolation="bilinear"`` reproduces the official code instead: bilinear resize of the
  0/255 mask, then ``value/255 > 0.5``.
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
    describe,
    image_to_tensor,
    integer_grey_values,
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


def image_size_of(fn: str, name: str, path: str | Path) -> tuple[int, int]:
    """The ``(width, height)`` of an image file, read from its header (no pixel is decoded)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{fn}: `{name}` {str(path)!r} does not exist or is not a file")
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{fn}: cannot read `{name}` {str(path)!r} as an image: {err}") from err


_COLOUR_MODES = ("P", "PA", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX")


def mask_to_binary(mask: Image.Image, fn: str = "mask_to_binary") -> np.ndarray:
    """The anomalous pixels of a mask image, ``(H, W)`` bool; ambiguous masks are refused.

    Rule: the mask must be grey. Modes ``1`` and ``L`` (1-bit, 8-bit grey) and ``I;16*``/``I``
    (16-bit grey) are read as they are; palette (``P``, ``PA``) and ``LA``/``RGB``/``RGBA``
    images are read through their palette as colours, which must all be grey (R = G = B)
    and opaque. A pixel is anomalous when its grey value is ``> 0``: 0/255 and 1-bit masks,
    VisA's region indices (1, 2, …) and anti-aliased edges (any grey above 0) count, as in
    the official code (``convert("L")`` then ``> 0``).

    Raises:
        ValueError: a colour or partly transparent mask (its meaning is ambiguous: a colour
            class map, an overlay), an integer mask outside ``[0, 65535]``, or any other
            mode (``F``, ``CMYK``, ...). The message names the file.
    """
    mode = mask.mode
    if mode in ("1", "L"):
        values = np.asarray(mask.convert("L"))
    elif mode == "I" or mode.startswith("I;"):
        values = integer_grey_values(mask, f"{fn}: mask")
    elif mode in _COLOUR_MODES:
        rgba = np.asarray(mask.convert("RGBA"))
        transparent = rgba[..., 3] != 255
        if transparent.any():
            raise ValueError(
                f"{fn}: mask {describe(mask)} ({mode!r} image) has {int(transparent.sum())} "
                f"transparent or translucent pixel(s); a mask with transparency is ambiguous: "
                f"save it as a 1-bit or grey image (0 = normal, > 0 = anomalous)"
            )
        rgb = rgba[..., :3]
        colour = (rgb[..., 0] != rgb[..., 1]) | (rgb[..., 1] != rgb[..., 2])
        if colour.any():
            examples = [tuple(int(v) for v in c) for c in np.unique(rgb[colour], axis=0)[:3]]
            raise ValueError(
                f"{fn}: mask {describe(mask)} ({mode!r} image) has {int(colour.sum())} "
                f"pixel(s) that are not grey (R = G = B), e.g. RGB {examples}; a colour mask "
                f"is ambiguous: save it as a 1-bit or grey image (0 = normal, > 0 = anomalous)"
            )
        values = rgb[..., 0]
    else:
        raise ValueError(
            f"{fn}: mask {describe(mask)} has the image mode {mode!r}; a mask must be a 1-bit, "
            f"8-bit or 16-bit grey image, or a palette/RGB image whose colours are all grey"
        )
    return values > 0


def mask_to_tensor(
    mask: Image.Image, size: int, interpolation: str, fn: str = "mask_to_tensor"
) -> torch.Tensor:
    """Binarise (:func:`mask_to_binary`), resize (nearest, or bilinear + ``> 0.5``).

    Returns the ``(1, S, S)`` float32 mask in ``{0, 1}``.
    """
    binary = Image.fromarray(mask_to_binary(mask, fn).astype(np.uint8) * 255)
    if interpolation == "nearest":
        resized = np.asarray(binary.resize((size, size), Image.Resampling.NEAREST)) > 0
    else:  # the official code: bilinear on 0/255, ToTensor (÷255), then > 0.5
        resized = np.asarray(binary.resize((size, size), Image.Resampling.BILINEAR)) >= 128
    return torch.from_numpy(resized.astype(np.float32))[None]


def read_sample_mask(
    fn: str,
    mask_path: str | Path | None,
    image_path: str | Path,
    size: int,
    interpolation: str,
    image_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """The ``(1, S, S)`` mask of one image, checked to have the image's size.

    The one place where a data set's masks are read: every path (items, ``masks()``,
    training) goes through it, so a mask of the wrong size is always an error and never
    resized silently. ``image_size`` is the image's ``(width, height)`` when it is already
    decoded; otherwise it is read from the image file's header.
    """
    if mask_path is None:
        return torch.zeros(1, size, size)
    mask = open_image(fn, "mask", mask_path)
    if image_size is None:
        image_size = image_size_of(fn, "image", image_path)
    if mask.size != tuple(image_size):
        raise ValueError(
            f"{fn}: mask {str(mask_path)!r} is {mask.size[0]}×{mask.size[1]} (w×h) but its "
            f"image {str(image_path)!r} is {image_size[0]}×{image_size[1]}"
        )
    return mask_to_tensor(mask, size, interpolation, fn)


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
    """Read an image file as a normalised ``(3, S, S)`` float32 tensor.

    The image is converted to RGB (grey images get three equal channels; 16-bit grey images
    are scaled by their range, ``round(v · 255 / 65535)``, instead of being clipped at 255),
    squash-resized
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
        ValueError: missing or unreadable file, a float (mode ``F``) image or an integer
            image outside ``[0, 65535]``, non-positive ``size``, bad ``mean``/``std``.

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
    return image_to_tensor(open_image(fn, "path", path), size, norm, fn)


def load_mask(
    path: str | Path | None,
    size: int,
    interpolation: str = "nearest",
) -> torch.Tensor:
    """Read a ground-truth mask as a binary ``(1, S, S)`` float32 tensor.

    The mask must be grey (1-bit, 8- or 16-bit grey, or palette/RGB(A) with only opaque grey
    colours; see :func:`mask_to_binary`); every pixel whose grey value is non-zero counts as
    anomalous (``> 0``), so 1-bit PNGs, 0/255 masks and VisA's masks (region indices) are all
    read correctly. ``path=None`` gives the all-zero mask of a normal image.

    Args:
        path: mask file, or ``None`` for a normal image.
        size: output side ``S``.
        interpolation: ``"nearest"`` (default) or ``"bilinear"`` — the official code's
            bilinear resize of the 0/255 mask followed by ``value/255 > 0.5``.

    Returns:
        The mask, values in ``{0, 1}``.

    Raises:
        ValueError: missing or unreadable file, a colour, transparent or float mask (its
            meaning is ambiguous), non-positive ``size``, unknown ``interpolation``.

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
    return mask_to_tensor(open_image(fn, "path", path), size, interpolation, fn)
