"""What :mod:`resad_kit.engine.checkpoint` checks before it loads anything (private).

A checkpoint belongs to one method (``Method.name``), one configuration
(``Method.config_dict()``) and one backbone (name, ``D``, taps, patch size); loading it into
another model is refused with a message naming every difference. Training data records
(:func:`~resad_kit.engine.fingerprint.data_fingerprint`) are compared likewise.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from resad_kit.engine._checkpoint_codec import differences, json_normal
from resad_kit.engine.fingerprint import data_differences
from resad_kit.methods import Method

__all__: list[str] = []

logger = logging.getLogger("resad_kit.engine.checkpoint")

_BACKBONE_KEYS = ("model_name", "embed_dim", "layers", "patch_size")


def backbone_info(model: Method) -> dict[str, Any]:
    """Name, weights label, ``D``, taps, image and patch size of the model's backbone."""
    b = model.backbone
    return {
        "model_name": str(b.model_name),
        "weights": str(b.weights),
        "embed_dim": int(b.embed_dim),
        "layers": [int(x) for x in b.layers],
        "image_size": int(b.image_size),
        "patch_size": int(b.patch_size),
    }


def trainable_module(fn: str, model: object) -> nn.Module:
    """``model.trainable_module()``, or a clear error for a non-method or a training-free one."""
    if not isinstance(model, Method):
        raise TypeError(
            f"{fn}: `model` must be a resad_kit.methods.Method; got {type(model).__name__}"
        )
    module = model.trainable_module()
    if module is None:
        raise ValueError(
            f"{fn}: the {type(model).__name__} model ({model.name!r}, mode {model.mode!r}) "
            "has nothing to store: trainable_module() is None (training-free; e.g. "
            "Res2CLIP without adapters). Checkpoints hold the trained part of a trainable "
            "method, e.g. Res2CLIPConfig.paper(mode='fine_tuned')"
        )
    return module


def check_model(
    path: Path,
    method: str,
    model_config: Mapping[str, Any],
    backbone: Mapping[str, Any],
    model: Method,
) -> None:
    """Refuse a checkpoint of another method, configuration or backbone than ``model``'s."""
    fn = "load_checkpoint"
    if method != model.name:
        raise ValueError(
            f"{fn}: checkpoint of method {method!r}, model is {model.name!r} "
            f"({type(model).__name__}); {str(path)!r} cannot be loaded into it"
        )
    diffs = differences(model_config, model.config_dict())
    if diffs:
        raise ValueError(
            f"{fn}: the model's {type(model.config).__name__} differs from the checkpoint's "
            f"({str(path)!r}): " + "; ".join(diffs)
        )
    now = backbone_info(model)
    diffs = differences(
        {k: backbone.get(k) for k in _BACKBONE_KEYS}, {k: now[k] for k in _BACKBONE_KEYS}
    )
    if diffs:
        raise ValueError(
            f"{fn}: the model's backbone differs from the one the checkpoint was trained on "
            f"({str(path)!r}): " + "; ".join(diffs)
        )
    if backbone.get("weights") != now["weights"]:
        logger.warning(
            "load_checkpoint: the checkpoint %s was trained on backbone weights %r; "
            "the model's backbone has %r",
            path,
            backbone.get("weights"),
            now["weights"],
        )


def check_data(path: Path, saved: Mapping[str, Any] | None, data: Mapping[str, Any]) -> None:
    """Refuse a checkpoint trained on other data; warn if it holds no record of its data."""
    if saved is None:
        logger.warning(
            "load_checkpoint: %s holds no record of its training data (written by an older "
            "resad_kit), so the data cannot be compared",
            path,
        )
        return
    diffs = data_differences(saved, json_normal(dict(data)))
    if diffs:
        raise ValueError(
            f"load_checkpoint: the training data differs from the checkpoint's "
            f"({str(path)!r}): " + "; ".join(diffs)
        )
