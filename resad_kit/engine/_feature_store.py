"""The on-disk entries of :class:`~resad_kit.engine.features.FeatureCache` (private).

:func:`backbone_fingerprint` hashes everything that decides a backbone's image features;
one safetensors file per image holds its :class:`Entry` (``patches``, ``cls`` and, for a
backbone with ``tap_cls=True``, ``tap_cls``, in the store dtype, with the format and the
cache key in the metadata). :func:`read_entry`
returns ``None`` (and logs why) for a file that is missing, unreadable, of another key,
shape or dtype, or non-finite, so that the cache recomputes it; :func:`write_entry` writes
atomically and only logs a failure.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
import weakref
from pathlib import Path
from typing import Any, NamedTuple

import safetensors
import safetensors.torch
import torch
from torch import Tensor

from resad_kit.clip import ClipBackbone

__all__ = ["STORE_DTYPES", "Entry", "backbone_fingerprint", "read_entry", "write_entry"]

logger = logging.getLogger("resad_kit.engine.features")

# 3: tap_output, tap_cls and the tapped width in the key, tap_cls stored
# (2: entries keyed by file content; 1: path + mtime)
_FORMAT = "resad_kit.FeatureCache/3"
STORE_DTYPES = {torch.float16: "float16", torch.float32: "float32"}
_INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
# backbone -> ((header, storage versions), fingerprint): hashing ViT-L takes ~1.5 s
_FINGERPRINTS: weakref.WeakKeyDictionary[ClipBackbone, tuple[Any, str]] = (
    weakref.WeakKeyDictionary()
)


class Entry(NamedTuple):
    """The cached features of one image, on the CPU in the store dtype."""

    patches: Tensor  # (L, N, C): C = backbone.tap_dim (D projected, the width residual)
    cls: Tensor  # (D,)
    tap_cls: Tensor | None = None  # (L, C) with BackboneConfig(tap_cls=True), else None


def backbone_fingerprint(backbone: ClipBackbone) -> str:
    """A short hash of everything that decides a backbone's image features.

    It covers the architecture name, the ``weights`` label, ``trained``, the resolved
    taps and V-V blocks, ``tap_output``, ``tap_cls``, ``global_ln_post``,
    ``pos_interpolation``, ``image_size``,
    patch size, depth, widths, the parameter dtype, and the exact bytes of every
    parameter and buffer of the image tower (SHA-256), so any changed weight changes it.
    Not hashed: the device (a disk store can be shared by CPU and GPU runs) and the
    text tower (not used for image features). Hashing ViT-L's image tower (304 M values,
    1.2 GB) took 1.5 s on a 2-core CPU; the result is remembered per backbone object
    until one of its tensors is modified or moved.

    Args:
        backbone: the :class:`~resad_kit.clip.ClipBackbone`.

    Returns:
        64 hexadecimal digits (SHA-256).

    Example:
        >>> from resad_kit.clip import ClipBackbone
        >>> from resad_kit.engine.features import backbone_fingerprint
        >>> a = backbone_fingerprint(ClipBackbone.tiny(seed=0))
        >>> a == backbone_fingerprint(ClipBackbone.tiny(seed=0)), len(a)
        (True, 64)
        >>> a == backbone_fingerprint(ClipBackbone.tiny(seed=1))
        False
    """
    if not isinstance(backbone, ClipBackbone):
        raise TypeError(
            f"backbone_fingerprint: `backbone` must be a ClipBackbone; "
            f"got {type(backbone).__name__}"
        )
    cfg = backbone.config
    header = {
        "format": _FORMAT,
        "model_name": backbone.model_name,
        "weights": backbone.weights,
        "trained": backbone.trained,
        "layers": list(backbone.layers),
        "vv_blocks": backbone.vv_blocks,
        "tap_output": cfg.tap_output,
        "tap_cls": cfg.tap_cls,
        "tap_dim": backbone.tap_dim,
        "global_ln_post": cfg.global_ln_post,
        "pos_interpolation": cfg.pos_interpolation,
        "attention": cfg.attention,
        "image_size": backbone.image_size,
        "patch_size": backbone.patch_size,
        "depth": backbone.depth,
        "width": backbone.width,
        "embed_dim": backbone.embed_dim,
        "dtype": str(backbone.dtype),
    }
    state = backbone.model.visual.state_dict()
    version = tuple((t.device, t.data_ptr(), t._version) for t in state.values())
    memo = _FINGERPRINTS.get(backbone)
    if memo is not None and memo[0] == (header, version):
        return memo[1]
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    for name, tensor in state.items():
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        # the raw bytes, read through an integer view (numpy has no bfloat16)
        flat = tensor.detach().contiguous().reshape(-1)
        digest.update(flat.view(_INT_OF_SIZE[flat.element_size()]).cpu().numpy())
    _FINGERPRINTS[backbone] = ((header, version), digest.hexdigest())
    return digest.hexdigest()


def read_entry(
    path: Path,
    key: str,
    shape: tuple[int, int, int, int],
    dtype: torch.dtype,
    tap_cls: bool = False,
) -> Entry | None:
    """The entry stored at ``path`` for ``key``, or ``None`` if it cannot be used.

    ``shape`` is ``(L, N, C, D)``: taps, patches, tapped width, global-feature width;
    ``tap_cls`` whether the entry must hold the taps' CLS tokens ``(L, C)``.
    """
    if not path.is_file():
        return None
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            patches, cls = f.get_tensor("patches"), f.get_tensor("cls")
            taps = f.get_tensor("tap_cls") if tap_cls and "tap_cls" in f.keys() else None  # noqa: SIM118
    except (OSError, ValueError, RuntimeError, safetensors.SafetensorError) as err:
        logger.warning("FeatureCache: cannot read %s (%s); recomputing it", path, err)
        return None
    layers, n, c, d = shape
    tensors = [patches, cls] if taps is None else [patches, cls, taps]
    problem = None
    if meta.get("format") != _FORMAT or meta.get("key") != key:
        problem = "its metadata does not match the requested key"
    elif tap_cls and taps is None:
        problem = "it holds no tap_cls"
    elif (
        patches.shape != (layers, n, c)
        or cls.shape != (d,)
        or (taps is not None and taps.shape != (layers, c))
    ):
        problem = f"shapes {[tuple(t.shape) for t in tensors]} != [({layers}, {n}, {c}), ({d},)" + (
            f", ({layers}, {c})]" if tap_cls else "]"
        )
    elif any(t.dtype != dtype for t in tensors):
        problem = f"dtype {patches.dtype} != {dtype}"
    elif not all(torch.isfinite(t).all() for t in tensors):
        problem = "it holds non-finite values"
    if problem is not None:
        logger.warning("FeatureCache: ignoring %s: %s; recomputing it", path, problem)
        return None
    return Entry(patches, cls, taps)


def write_entry(path: Path, key: str, entry: Entry) -> None:
    """Write ``entry`` atomically (temporary file + ``os.replace``); log a failure."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        tensors = {"patches": entry.patches.contiguous(), "cls": entry.cls.contiguous()}
        if entry.tap_cls is not None:
            tensors["tap_cls"] = entry.tap_cls.contiguous()
        safetensors.torch.save_file(
            tensors,
            str(tmp),
            metadata={"format": _FORMAT, "key": key},
        )
        os.replace(tmp, path)
    except (OSError, RuntimeError, safetensors.SafetensorError) as err:
        logger.warning("FeatureCache: cannot write %s (%s); continuing without it", path, err)
        tmp.unlink(missing_ok=True)
