"""Input checks shared by the losses (private; errors name the caller's function and argument).

Used by :mod:`resad_kit.ops.losses` and by the loss sums that methods compose from it
(e.g. :mod:`resad_kit.methods.res2clip_losses`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from resad_kit.ops._validation import (
    check_binary,
    check_broadcast_channels,
    check_number,
    check_same_shape,
    check_tensor,
    value_check,
)

__all__: list[str] = []

REDUCTIONS: tuple[str, ...] = ("batch", "per_sample")


def check_reduction(fn: str, reduction: object) -> str:
    """``reduction`` if it is ``"batch"`` or ``"per_sample"``; else ``ValueError``."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"{fn}: `reduction` must be one of {REDUCTIONS}; got {reduction!r}")
    return str(reduction)


def check_finite_float(fn: str, name: str, value: object) -> float:
    """A finite real number (``TypeError`` for a non-number, ``ValueError`` if not finite)."""
    return check_number(fn, name, value, what="a float")


def check_nonnegative(fn: str, name: str, x: torch.Tensor) -> None:
    """Vector norms are ≥ 0 (a device sync: skipped with checks off or under compile)."""
    if value_check(fn) and bool((x < 0).any()):
        raise ValueError(
            f"{fn}: `{name}` holds vector norms and must be ≥ 0; got minimum {float(x.min())}"
        )


def check_binary_like(
    fn: str, name: str, x: object, like: torch.Tensor, like_name: str
) -> torch.Tensor:
    """A binary tensor (labels or mask) with exactly the shape of ``like``."""
    x = check_tensor(fn, name, x, floating=False)
    check_same_shape(fn, (like_name, name), (like, x))
    check_binary(fn, name, x)
    return x


def check_target(
    fn: str, name: str, target: object, like: torch.Tensor, like_name: str
) -> torch.Tensor | float:
    """A finite float, or a finite floating tensor with the shape of ``like``."""
    if isinstance(target, torch.Tensor):
        check_tensor(fn, name, target, finite=True)
        check_same_shape(fn, (like_name, name), (like, target))
        return target
    return check_finite_float(fn, name, target)


def check_sequence(fn: str, name: str, seq: object) -> list[torch.Tensor]:
    """A non-empty list or tuple (one entry per layer); entries are checked by the caller."""
    if isinstance(seq, torch.Tensor) or not isinstance(seq, Sequence):
        raise TypeError(
            f"{fn}: `{name}` must be a list or tuple of tensors (one per layer); "
            f"got {type(seq).__name__}"
        )
    if len(seq) == 0:
        raise ValueError(f"{fn}: `{name}` must not be empty; got an empty sequence")
    return list(seq)


def check_same_length(
    fn: str, name: str, seq: Sequence[object], ref_name: str, ref_len: int
) -> None:
    """``seq`` has one entry per layer, as ``ref_name``."""
    if len(seq) != ref_len:
        raise ValueError(
            f"{fn}: `{name}` must have one entry per layer, as `{ref_name}` ({ref_len}); "
            f"got {len(seq)}"
        )


def check_layer_masks(
    fn: str, masks: object, n_layers: int, ref_name: str
) -> list[tuple[str, torch.Tensor]]:
    """One (name, mask) pair per layer: a single tensor is shared by all layers."""
    if isinstance(masks, torch.Tensor):
        return [("masks", masks)] * n_layers
    seq = check_sequence(fn, "masks", masks)
    check_same_length(fn, "masks", seq, ref_name, n_layers)
    return [(f"masks[{i}]", m) for i, m in enumerate(seq)]


def check_batch_size(fn: str, name: str, x: torch.Tensor, batch: int, ref_name: str) -> None:
    """``x`` has ``batch`` rows, as ``ref_name``."""
    if x.shape[0] != batch:
        raise ValueError(
            f"{fn}: `{name}` must have batch size {batch} (as `{ref_name}`); "
            f"got shape {tuple(x.shape)}"
        )


def check_vector_pair(
    fn: str, names: tuple[str, str], a: object, b: object, docs: tuple[str, str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two finite ``(..., D)`` tensors with the same ``D`` whose leading dims broadcast."""
    a = check_tensor(fn, names[0], a, min_ndim=1, shape_doc=docs[0], finite=True)
    b = check_tensor(fn, names[1], b, min_ndim=1, shape_doc=docs[1], finite=True)
    check_broadcast_channels(fn, names, a, b)
    return a, b


def check_scalar(fn: str, name: str, x: object) -> torch.Tensor:
    """A finite 0-d tensor."""
    return check_tensor(fn, name, x, ndim=0, shape_doc="(a scalar tensor)", finite=True)
