"""What ``ClipBackbone.from_pretrained`` builds before wrapping: model, weights, labels.

Kept apart from :mod:`resad_kit.clip.backbone` so that the wrapper holds the forward pass
only. Tags and files are resolved by :mod:`resad_kit.clip.checkpoints`; architectures that
open_clip has not registered by :mod:`resad_kit.clip.architecture`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import open_clip

from resad_kit.clip import checkpoints
from resad_kit.clip.architecture import build_custom_model, resolve_architecture
from resad_kit.clip.config import BackboneConfig
from resad_kit.clip.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

__all__: list[str] = []

logger = logging.getLogger("resad_kit.clip.backbone")
_FN = "ClipBackbone.from_pretrained"


class LoadedClip(NamedTuple):
    """An open_clip model with its weights and the labels the wrapper shows."""

    model: open_clip.CLIP
    weights: str
    trained: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    tokenizer: Any


def merged_config(config: BackboneConfig | None, overrides: Mapping[str, Any]) -> BackboneConfig:
    """``config`` (default: the paper's) with the fields in ``overrides`` replaced."""
    base = BackboneConfig.paper() if config is None else config
    try:
        return dataclasses.replace(base, **overrides)
    except TypeError:
        names = [f.name for f in dataclasses.fields(BackboneConfig)]
        raise TypeError(
            f"{_FN}: unknown option(s) {sorted(overrides)}; BackboneConfig fields are {names}"
        ) from None


def load_clip(
    model_name: str,
    pretrained: str | os.PathLike[str] | None,
    *,
    architecture: Mapping[str, Any] | str | os.PathLike[str] | None,
    quick_gelu: bool | None,
    trust_checkpoint: bool,
    cache_dir: str | None,
) -> LoadedClip:
    """The model and labels of ``ClipBackbone.from_pretrained`` (see its arguments)."""
    if architecture is not None:
        return _load_custom(model_name, pretrained, architecture, quick_gelu, trust_checkpoint)
    gelu = checkpoints.resolve_quick_gelu(model_name, pretrained, quick_gelu)
    mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    if pretrained is None:
        path, weights = None, "untrained: random init"
        logger.warning("ClipBackbone %s: random weights (pretrained=None)", model_name)
    else:
        path, tag_cfg = checkpoints.resolve_weights(model_name, pretrained, cache_dir)
        mean, std = tag_cfg.get("mean", mean), tag_cfg.get("std", std)
        weights = f"{pretrained}" if tag_cfg else f"file {path}"
    model = checkpoints.build_model(model_name, gelu)
    if path is not None:
        checkpoints.load_weights(model, path, model_name, trust_code=trust_checkpoint)
    tiny = model_name == checkpoints.TINY_MODEL_NAME
    tokenizer = None if tiny else open_clip.get_tokenizer(model_name)
    return LoadedClip(model, weights, path is not None, tuple(mean), tuple(std), tokenizer)


def _load_custom(
    model_name: str,
    pretrained: str | os.PathLike[str] | None,
    architecture: Mapping[str, Any] | str | os.PathLike[str],
    quick_gelu: bool | None,
    trust_checkpoint: bool,
) -> LoadedClip:
    path = state = None
    if pretrained is not None:
        path = checkpoints.check_local_file(pretrained, model_name)
        state = checkpoints.read_state_dict(path, trust_code=trust_checkpoint)
    cfg = resolve_architecture(architecture, state)
    if quick_gelu is None:
        if "quick_gelu" in cfg:
            quick_gelu = bool(cfg["quick_gelu"])
        elif path is not None and checkpoints.is_torchscript_archive(path):
            quick_gelu = True  # every OpenAI CLIP archive was trained with QuickGELU
        else:
            raise ValueError(
                f"{_FN}: with `architecture`, say whether the MLPs use QuickGELU: pass "
                "quick_gelu=True (OpenAI-trained weights) or False (most LAION weights)"
            )
    model = build_custom_model(cfg, bool(quick_gelu))
    if path is not None:
        checkpoints.load_weights(model, path, model_name, trust_code=trust_checkpoint)
    else:
        logger.warning("ClipBackbone %s: random weights (pretrained=None)", model_name)
    weights = f"file {path}" if path is not None else "untrained: random init"
    return LoadedClip(model, weights, path is not None, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, None)


_PAPER_DEPTH = 24  # ViT-L/14: layers {6, 12, 18, 24} and 20 V-V blocks are fractions of 24


def quarters(depth: int) -> tuple[int, ...]:
    """The blocks at the quarters of the depth, ``round(L·q/4)`` for q = 1…4 (1-based)."""
    return tuple(sorted({max(1, (depth * q + 2) // 4) for q in range(1, 5)}))


def resolve_layers(layers: tuple[int, ...] | None, depth: int) -> tuple[int, ...]:
    """The tapped blocks: ``layers``, or the quarters of the depth for ``None``."""
    if layers is None:
        return quarters(depth)
    if any(layer > depth for layer in layers):
        raise ValueError(
            f"ClipBackbone: `layers` {layers} exceed the depth {depth} of this model "
            f"(blocks are 1-based); pass layers=None for the quarters {quarters(depth)}"
        )
    return layers


def resolve_vv_blocks(vv_blocks: int | None, depth: int) -> int:
    """The number of dual-path blocks: ``vv_blocks``, or the paper's 20 of 24 scaled."""
    if vv_blocks is None:
        return (20 * depth + _PAPER_DEPTH // 2) // _PAPER_DEPTH
    if vv_blocks > depth:
        raise ValueError(
            f"ClipBackbone: `vv_blocks`={vv_blocks} exceeds the depth {depth} of this "
            "model; pass vv_blocks=None to scale the paper's 20 of 24 blocks"
        )
    return vv_blocks


def resolve_image_size(image_size: int | None, visual: Any, patch_size: int) -> int:
    """The input side: ``image_size`` (a multiple of the patch), or the native square size."""
    if image_size is None:
        h, w = visual.image_size
        if h != w:
            raise ValueError(f"ClipBackbone: native input {visual.image_size} is not square")
        return int(h)
    if image_size % patch_size:
        raise ValueError(
            f"ClipBackbone: `image_size`={image_size} must be a multiple of the patch size "
            f"{patch_size}"
        )
    return image_size
