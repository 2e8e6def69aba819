"""Helpers of :mod:`resad_kit.engine.protocol`: model and shot checks, heat-map picks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from resad_kit.clip import Features
from resad_kit.engine.paper_results import MODES
from resad_kit.methods import Method

__all__: list[str] = []


def _slice(features: Features, start: int, stop: int) -> Features:
    tap_cls = None if features.tap_cls is None else [t[start:stop] for t in features.tap_cls]
    return Features(
        [p[start:stop] for p in features.patches],
        features.cls[start:stop],
        features.grid,
        tap_cls,
    )


def _heatmap_indices(labels: Sequence[int], count: int) -> list[int]:
    """Up to ``count`` test images, anomalous and normal alternating (anomalous first)."""
    anomalous = [i for i, y in enumerate(labels) if y]
    normal = [i for i, y in enumerate(labels) if not y]
    picked = [i for pair in zip(anomalous, normal, strict=False) for i in pair]
    longer = anomalous if len(anomalous) > len(normal) else normal
    picked += longer[min(len(anomalous), len(normal)) :]
    return sorted(picked[:count])


def _check_models(fn: str, models: Mapping[Any, Any]) -> None:
    if not isinstance(models, Mapping) or not models:
        raise ValueError(f"{fn}: `models` must be a non-empty mapping of label → Method")
    seen: dict[tuple[Any, ...], Any] = {}
    for key, model in models.items():
        if not isinstance(model, Method):
            raise TypeError(
                f"{fn}: `models[{key!r}]` must be a resad_kit.methods.Method; "
                f"got {type(model).__name__}"
            )
        label = key[0] if isinstance(key, tuple) else key
        if label in MODES and label != model.mode:
            raise ValueError(
                f"{fn}: `models[{key!r}]` is keyed {label!r} but the {model.name!r} model's "
                f"mode is {model.mode!r}; key every model by its own mode"
            )
        which = (model.name, model.mode, *(key[1:] if isinstance(key, tuple) else ()))
        if which in seen:
            raise ValueError(
                f"{fn}: `models[{seen[which]!r}]` and `models[{key!r}]` are both "
                f"{model.name!r} in mode {model.mode!r}; their results would be confused"
            )
        seen[which] = key


def _heatmap_folder(root: str | Path, model: Method, dataset: str, category: str) -> Path:
    """``root/<mode>/…`` for Res²CLIP (the paper's method), ``root/<method>/<mode>/…`` else."""
    base = Path(root) if model.name == "res2clip" else Path(root) / model.name
    return base / model.mode / dataset / category


def _check_shots(fn: str, models: Mapping[Any, Method], shots: Sequence[int]) -> None:
    """Shot counts are ints ≥ 0; 0 shots (zero-shot) only for methods that support it."""
    for k in shots:
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"{fn}: `shots` must be ints >= 0; got {list(shots)!r}")
    if 0 in shots:
        unable = [key for key, m in models.items() if not m.supports_zero_shot]
        if unable:
            raise ValueError(
                f"{fn}: shots=0 (zero-shot) needs methods that predict without references; "
                f"`models[{unable[0]!r}]` ({models[unable[0]].name!r}) needs K >= 1 shots"
            )
