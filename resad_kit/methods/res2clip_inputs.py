"""Res²CLIP's input handling: checked float32 features and the output size (internal).

The method validates its inputs here, once per call, and then runs the ops with their
checks off: shapes always, finiteness (one device sync) while ``resad_kit.checks()`` is on
and ``torch.compile`` is not tracing.
"""

from __future__ import annotations

import torch
from torch import Tensor

from resad_kit.clip import ClipBackbone, Features
from resad_kit.ops._validation import check_finite, check_tensor, checks_enabled

__all__: list[str] = []


def _check_finite(name: str, tensors: list[Tensor]) -> None:
    """``ValueError`` if ``[cls, *patches]`` hold NaN or ±inf: one sum screens all (one sync)."""
    total = torch.stack([t.sum(dtype=torch.float32) for t in tensors]).sum()
    if not bool(torch.isfinite(total)):  # NaN, inf, or an overflow of finite values
        for i, t in enumerate(tensors):
            check_finite("Res2CLIP", f"{name}.cls" if i == 0 else f"{name}.patches[{i - 1}]", t)


def checked_features(inputs: Features, name: str, backbone: ClipBackbone) -> Features:
    """Checked features of every tap of ``backbone``, on its device, in float32.

    Features stored in float16/bfloat16 (e.g. a half-precision cache) or float64 are cast
    to float32 here, so every branch computes in float32 whatever their dtype.

    Raises:
        ValueError: for the wrong number of layers, inconsistent shapes, a non-float dtype
            or (checks on) non-finite values, naming ``name`` and the layer.
    """
    n = len(backbone.layers)
    if len(inputs.patches) != n:
        raise ValueError(
            f"Res2CLIP: `{name}` has {len(inputs.patches)} layers of patches but the "
            f"backbone taps {n} layers {backbone.layers}"
        )
    cls = check_tensor("Res2CLIP", f"{name}.cls", inputs.cls, ndim=2, shape_doc="(B, D)")
    b, d = cls.shape
    h, w = inputs.grid
    for i, p in enumerate(inputs.patches):
        check_tensor("Res2CLIP", f"{name}.patches[{i}]", p, shape_doc="(B, N, D)")
        if tuple(p.shape) != (b, h * w, d):
            raise ValueError(
                f"Res2CLIP: `{name}` patches must be (B, N, D) = {(b, h * w, d)} "
                f"for cls {(b, d)} and grid {inputs.grid}; got {tuple(p.shape)}"
            )
    if checks_enabled() and not torch.compiler.is_compiling():
        _check_finite(name, [cls, *inputs.patches])
    device = backbone.device

    def f32(x: Tensor) -> Tensor:
        return x.to(device, torch.float32)

    tap_cls = None if inputs.tap_cls is None else [f32(t) for t in inputs.tap_cls]
    return inputs._replace(patches=[f32(p) for p in inputs.patches], cls=f32(cls), tap_cls=tap_cls)


def resolve_output_size(
    inputs: Tensor | Features,
    feats: Features,
    output_size: int | tuple[int, int] | None,
    patch_size: int,
) -> tuple[int, int]:
    """``output_size`` as ``(H, W)``; default the images' size, or ``grid · patch_size``."""
    if output_size is None:
        if isinstance(inputs, Tensor):
            return int(inputs.shape[-2]), int(inputs.shape[-1])
        return feats.grid[0] * patch_size, feats.grid[1] * patch_size
    if isinstance(output_size, int):
        return output_size, output_size
    return int(output_size[0]), int(output_size[1])
