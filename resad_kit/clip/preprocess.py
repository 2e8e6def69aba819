"""Image preprocessing that matches the CLIP weights.

The official Res²CLIP code converts to RGB, resizes to ``S × S`` with bicubic
interpolation (a *squash*: the aspect ratio is not kept and nothing is cropped),
converts to a ``[0, 1]`` tensor and normalises with the weights' mean and std
(OpenAI's for the OpenAI weights). :class:`ImagePreprocess` does exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from resad_kit._image import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, check_normalization, image_to_tensor
from resad_kit.ops._validation import check_positive_int

__all__ = ["OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "ImagePreprocess"]


@dataclass(frozen=True)
class ImagePreprocess:
    """PIL image → normalised ``(3, S, S)`` float32 tensor, as the weights expect.

    RGB conversion, bicubic resize to ``image_size × image_size`` (squash, no
    centre crop), scaling to ``[0, 1]``, then ``(x − mean) / std`` per channel.
    The resize is PIL's own bicubic filter, the same as torchvision's
    ``Resize((S, S), BICUBIC)`` on a PIL image (which the official code uses).

    Args:
        image_size: side ``S`` of the square output.
        mean: RGB mean of the weights' training data.
        std: RGB standard deviation (positive).

    Shape:
        - input: a ``PIL.Image.Image`` of any size and mode
        - output: ``(3, S, S)``, float32

    Example:
        >>> from PIL import Image
        >>> from resad_kit.clip import ImagePreprocess
        >>> preprocess = ImagePreprocess(518)
        >>> x = preprocess(Image.new("RGB", (640, 480), (255, 255, 255)))
        >>> x.shape, x.dtype
        (torch.Size([3, 518, 518]), torch.float32)
        >>> [round(v, 4) for v in x[:, 0, 0].tolist()]  # (1 − mean) / std
        [1.9303, 2.0749, 2.1459]
    """

    image_size: int = 518
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD

    def __post_init__(self) -> None:
        check_positive_int("ImagePreprocess", "image_size", self.image_size)
        norm = check_normalization("ImagePreprocess", self.mean, self.std)
        if norm is None:
            raise ValueError("ImagePreprocess: `mean` and `std` are required; got None")
        object.__setattr__(self, "mean", norm[0])
        object.__setattr__(self, "std", norm[1])

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """Preprocess one image; see the class docstring."""
        if not isinstance(image, Image.Image):
            raise TypeError(
                f"ImagePreprocess: `image` must be a PIL.Image.Image; got {type(image).__name__} "
                "(open files with PIL.Image.open)"
            )
        if image.width < 1 or image.height < 1:
            raise ValueError(f"ImagePreprocess: `image` is empty; got size {image.size}")
        return image_to_tensor(image, self.image_size, (self.mean, self.std))
