"""Architectures that open_clip has not registered: a config given as data, or inferred.

A fine-tuned or distilled CLIP of another width or depth has no open_clip name.
:func:`resolve_architecture` turns what the user passes to
``ClipBackbone.from_pretrained(..., architecture=...)`` into an open_clip model config
(the ``embed_dim`` / ``vision_cfg`` / ``text_cfg`` dictionary that open_clip keeps in its
``model_configs/*.json``):

- a mapping: the config itself (or an open_clip Hugging Face ``open_clip_config.json``
  dictionary, whose ``"model_cfg"`` entry is used);
- a path to such a JSON file;
- ``"infer"``: read from the checkpoint's tensor shapes (:func:`infer_architecture`).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import Tensor

__all__ = ["infer_architecture", "resolve_architecture"]

_FN = "ClipBackbone.from_pretrained"
#: Head width assumed when inferring (OpenAI CLIP and open_clip: ``heads = width // 64``).
HEAD_WIDTH = 64


def _count(state: Mapping[str, Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    if not found or found != set(range(len(found))):
        raise ValueError(f"{_FN}: cannot count the blocks {prefix}N in the checkpoint")
    return len(found)


def infer_architecture(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """The open_clip model config of a ViT CLIP state dict, read from its tensor shapes.

    Widths, depths, patch size, native input size, MLP ratio, embedding dim, vocabulary
    and context length come from the shapes; the number of heads cannot (the attention
    weights look the same for any split), so ``head_width = 64`` is assumed, as in every
    OpenAI and open_clip ViT. Pass the config as a mapping when this does not hold.

    Args:
        state: an open_clip / OpenAI CLIP state dict (``visual.conv1.weight``,
            ``transformer.resblocks.N...``, ``token_embedding.weight``, …).

    Returns:
        A model config for ``open_clip.CLIP(**config)`` (without ``quick_gelu``).

    Raises:
        ValueError: the state dict is not an OpenAI-style ViT CLIP.

    Example:
        >>> import open_clip
        >>> from resad_kit.clip.architecture import infer_architecture
        >>> config = {
        ...     "embed_dim": 48,
        ...     "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 128, "layers": 3},
        ...     "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "layers": 2},
        ... }
        >>> state = open_clip.CLIP(**config).state_dict()
        >>> inferred = infer_architecture(state)
        >>> inferred["vision_cfg"]["layers"], inferred["vision_cfg"]["width"], inferred["embed_dim"]
        (3, 128, 48)
    """
    try:
        conv = state["visual.conv1.weight"]
        pos = state["visual.positional_embedding"]
        width, patch = int(conv.shape[0]), int(conv.shape[-1])
        grid = math.isqrt(int(pos.shape[0]) - 1)
        if grid * grid + 1 != pos.shape[0]:
            raise ValueError("the positional table is not a square grid plus CLS")
        mlp = state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
        text_width = int(state["token_embedding.weight"].shape[1])
        text_mlp = state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
        config = {
            "embed_dim": int(state["visual.proj"].shape[1]),
            "vision_cfg": {
                "image_size": grid * patch,
                "patch_size": patch,
                "width": width,
                "layers": _count(state, "visual.transformer.resblocks."),
                "head_width": HEAD_WIDTH,
                "mlp_ratio": mlp / width,
            },
            "text_cfg": {
                "context_length": int(state["positional_embedding"].shape[0]),
                "vocab_size": int(state["token_embedding.weight"].shape[0]),
                "width": text_width,
                "heads": max(1, text_width // HEAD_WIDTH),
                "layers": _count(state, "transformer.resblocks."),
                "mlp_ratio": text_mlp / text_width,
            },
        }
    except KeyError as err:
        raise ValueError(
            f"{_FN}: cannot infer the architecture: the checkpoint has no {err.args[0]!r} "
            "(an OpenAI-style ViT CLIP state dict is needed); pass `architecture` as an "
            "open_clip model config instead"
        ) from None
    if width % HEAD_WIDTH or text_width % HEAD_WIDTH:
        raise ValueError(
            f"{_FN}: cannot infer the number of heads (widths {width} / {text_width} are not "
            f"multiples of {HEAD_WIDTH}); pass `architecture` as an open_clip model config"
        )
    return config


def _check_config(config: Mapping[str, Any], source: str) -> dict[str, Any]:
    cfg = dict(config)
    if "model_cfg" in cfg and isinstance(cfg["model_cfg"], Mapping):
        cfg = dict(cfg["model_cfg"])  # an open_clip_config.json from the Hugging Face Hub
    vision = cfg.get("vision_cfg")
    if not isinstance(vision, Mapping) or "embed_dim" not in cfg or "text_cfg" not in cfg:
        raise ValueError(
            f"{_FN}: `architecture` ({source}) must be an open_clip model config with "
            "'embed_dim', 'vision_cfg' and 'text_cfg'; got keys "
            f"{sorted(cfg)}"
        )
    if isinstance(vision.get("layers"), (list, tuple)) or vision.get("timm_model_name"):
        raise ValueError(
            f"{_FN}: `architecture` ({source}) has no plain ViT image tower (ResNet or timm); "
            "ClipBackbone needs an OpenAI-style VisionTransformer"
        )
    return cfg


def resolve_architecture(
    architecture: Mapping[str, Any] | str | os.PathLike[str],
    state: Mapping[str, Tensor] | None,
) -> dict[str, Any]:
    """The open_clip model config that ``architecture`` stands for (see the module docs).

    ``state`` is the checkpoint's state dict, needed for ``"infer"``.
    """
    if isinstance(architecture, Mapping):
        return _check_config(architecture, "a mapping")
    if architecture == "infer":
        if state is None:
            raise ValueError(f"{_FN}: architecture='infer' needs a checkpoint file as `pretrained`")
        return infer_architecture(state)
    if isinstance(architecture, (str, os.PathLike)):
        path = Path(architecture)
        if not path.is_file():
            raise ValueError(
                f"{_FN}: `architecture` must be an open_clip model config (a mapping), a "
                f"path to its JSON file, or 'infer'; {os.fspath(path)!r} is not a file"
            )
        try:
            config = json.loads(path.read_text(encoding="utf-8-sig"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{_FN}: cannot read the architecture file {path}: {err}") from None
        if not isinstance(config, Mapping):
            raise ValueError(f"{_FN}: the architecture file {path} holds no JSON object")
        return _check_config(config, os.fspath(path))
    raise ValueError(
        f"{_FN}: `architecture` must be a mapping, a JSON file path or 'infer'; "
        f"got {type(architecture).__name__}"
    )


def build_custom_model(config: Mapping[str, Any], quick_gelu: bool) -> open_clip.CLIP:
    """``open_clip.CLIP`` of ``config`` in float32 on the CPU (random weights)."""
    cfg = {k: v for k, v in config.items() if k != "quick_gelu"}
    try:
        model = open_clip.CLIP(**cfg, quick_gelu=quick_gelu)
    except (TypeError, ValueError, AssertionError) as err:
        raise ValueError(f"{_FN}: open_clip cannot build `architecture`: {err}") from err
    return model.float().to(torch.device("cpu"))
