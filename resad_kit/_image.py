"""Image → tensor preprocessing shared by :mod:`resad_kit.clip` and :mod:`resad_kit.data`.

One copy of the CLIP preprocessing of spec §1.1: RGB, PIL bicubic squash resize (no crop),
``[0, 1]`` scaling and per-channel normalisation with the OpenAI CLIP constants by default.
Private: the public entry points are ``resad_kit.clip.ImagePreprocess`` and
``resad_kit.data.load_image``.
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


def image_to_tensor(
    image: Image.Image,
    size: int,
    norm: tuple[tuple[float, ...], tuple[float, ...]] | None,
) -> torch.Tensor:
    """RGB, bicubic squash resize, ``[0, 1]``, optional normalisation → ``(3, S, S)`` float32."""
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    # numpy, single-threaded: cheap per image and immune to thread over-subscription
    x = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    if norm is not None:
        x -= np.asarray(norm[0], dtype=np.float32)
        x /= np.asarray(norm[1], dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(rearrange(x, "h w c -> c h w")))
