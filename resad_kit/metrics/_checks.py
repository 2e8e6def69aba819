"""Input checks and tensor-to-NumPy conversion shared by the metrics (private).

The messages look like those of :mod:`resad_kit.ops`: they name the function, the
argument, what was expected and what was received.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from resad_kit.ops._validation import check_binary, check_finite, check_same_shape, check_tensor

__all__: list[str] = []

#: Storage dtypes the metrics accept, with their NumPy counterparts.
STORAGE_DTYPES = {
    torch.float16: np.float16,
    torch.float32: np.float32,
    torch.float64: np.float64,
}


def check_targets(
    fn: str, name: str, y: object, like: torch.Tensor, like_name: str
) -> torch.Tensor:
    """A bool/integer/floating tensor shaped like ``like`` (values: ``check_binary``)."""
    t = check_tensor(fn, name, y, floating=False, nonempty=False)
    if t.is_complex():
        raise ValueError(f"{fn}: `{name}` must be bool, integer or floating; got {t.dtype}")
    check_same_shape(fn, (like_name, name), (like, t))
    return t


def check_both_classes(fn: str, what: str, n_pos: int, n_neg: int) -> None:
    """Ranking metrics need at least one positive and one negative."""
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"{fn}: {what} must contain both classes; got {n_pos} positive and "
            f"{n_neg} negative {'entries' if what.startswith('labels') else 'pixels'}"
        )


def check_fpr_limit(fn: str, fpr_limit: object) -> float:
    """The AUPRO integration limit: a number in (0, 1]."""
    if (
        isinstance(fpr_limit, bool)
        or not isinstance(fpr_limit, (int, float))
        or not math.isfinite(fpr_limit)
        or not 0.0 < fpr_limit <= 1.0
    ):
        raise ValueError(f"{fn}: `fpr_limit` must be a number in (0, 1]; got {fpr_limit!r}")
    return float(fpr_limit)


def check_storage_dtype(fn: str, dtype: object) -> type[np.floating]:
    """The NumPy dtype for a torch storage dtype (float16, float32 or float64)."""
    if dtype not in STORAGE_DTYPES:
        raise ValueError(
            f"{fn}: `dtype` must be torch.float16, torch.float32 or torch.float64; got {dtype!r}"
        )
    return STORAGE_DTYPES[dtype]  # type: ignore[index]


def to_storage(fn: str, name: str, x: torch.Tensor, np_dtype: type[np.floating]) -> np.ndarray:
    """``x`` on the CPU as a NumPy array of ``np_dtype``, checked finite (also after narrowing).

    The check runs in NumPy on the converted copy (several times faster than
    ``torch.isfinite`` on the CPU); on failure the message counts the bad input entries,
    or reports an overflow of the narrower storage dtype.
    """
    t = x.detach()
    if t.dtype == torch.bfloat16:  # NumPy has no bfloat16; float32 holds it exactly
        t = t.float()
    a = t.to(device="cpu", dtype=_TORCH_OF[np_dtype]).numpy()
    if not np.isfinite(a).all():
        check_finite(fn, name, x)
        check_finite(fn, f"{name} (as {_TORCH_OF[np_dtype]})", torch.from_numpy(a))
    return a


def to_bool(fn: str, name: str, y: torch.Tensor) -> np.ndarray:
    """A 0/1 tensor as a NumPy bool array on the CPU; other values raise ``ValueError``."""
    t = y.detach()
    if t.dtype == torch.bool:
        return t.cpu().numpy()
    if t.dtype == torch.bfloat16:
        t = t.float()
    a = t.cpu().numpy()
    if not ((a == 0) | (a == 1)).all():
        check_binary(fn, name, y)
    return a != 0


_TORCH_OF = {v: k for k, v in STORAGE_DTYPES.items()}
