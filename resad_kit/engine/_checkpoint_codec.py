"""Encoding of checkpoint contents: JSON metadata + named tensors, and their checksum.

:func:`encode` turns nested Python data (optimiser states, configs, RNG states) into JSON
with every tensor moved into a flat ``{name: tensor}`` dict; :func:`decode` reverses it,
restoring tuples and dicts with non-string keys. :func:`checksum` hashes the JSON and the
tensors' names, dtypes, shapes and bytes. Used by :mod:`resad_kit.engine.checkpoint`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["as_dict", "checksum", "decode", "differences", "encode", "json_normal"]

_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"
_MARKERS = (_TENSOR, _TUPLE, _ITEMS)


def encode(obj: Any, path: str, tensors: dict[str, Tensor]) -> Any:
    """Make ``obj`` JSON-able; tensors move to ``tensors`` under their path."""
    if isinstance(obj, Tensor):
        if path in tensors:
            raise ValueError(f"save_checkpoint: two tensors would be stored under {path!r}")
        tensors[path] = obj.detach().to("cpu", copy=True).contiguous()
        return {_TENSOR: path}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {_TUPLE: [encode(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        plain = all(isinstance(k, str) and k not in _MARKERS for k in obj)
        if plain:
            return {k: encode(v, f"{path}.{k}", tensors) for k, v in obj.items()}
        return {
            _ITEMS: [
                [encode(k, f"{path}.key{i}", tensors), encode(v, f"{path}.{k}", tensors)]
                for i, (k, v) in enumerate(obj.items())
            ]
        }
    raise TypeError(
        f"save_checkpoint: cannot store a {type(obj).__name__} (at {path!r}); only tensors, "
        "str, int, float, bool, None, lists, tuples and dicts of them"
    )


def decode(obj: Any, tensors: Mapping[str, Tensor]) -> Any:
    """Inverse of :func:`encode`: tensors put back, tuples and non-string keys restored."""
    if isinstance(obj, list):
        return [decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if set(obj) == {_TENSOR}:
            return tensors[obj[_TENSOR]]
        if set(obj) == {_TUPLE}:
            return tuple(decode(v, tensors) for v in obj[_TUPLE])
        if set(obj) == {_ITEMS}:
            return {decode(k, tensors): decode(v, tensors) for k, v in obj[_ITEMS]}
        return {k: decode(v, tensors) for k, v in obj.items()}
    return obj


def as_dict(config: Any, name: str) -> dict[str, Any] | None:
    """A dataclass instance or mapping as a plain dict (``None`` stays ``None``)."""
    if config is None:
        return None
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    if isinstance(config, Mapping):
        return dict(config)
    raise TypeError(
        f"save_checkpoint: `{name}` must be a dataclass instance or a mapping; "
        f"got {type(config).__name__}"
    )


def json_normal(obj: Any) -> Any:
    """Tuples → lists etc., so that configs compare equal after a JSON round trip."""
    return json.loads(json.dumps(obj))


def differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``"key: checkpoint <saved>, now <current>"`` for every key whose values differ."""
    saved, current = json_normal(saved), json_normal(current)
    return [
        f"{key}: checkpoint {saved.get(key, '<missing>')!r}, now {current.get(key, '<missing>')!r}"
        for key in sorted(set(saved) | set(current))
        if saved.get(key, "<missing>") != current.get(key, "<missing>")
    ]


def checksum(encoded: str, tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 of the JSON metadata and of every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256(encoded.encode())
    for key in sorted(tensors):
        tensor = tensors[key]
        digest.update(f"\0{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        # the raw bytes, read through a byte view (numpy has no bfloat16)
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
