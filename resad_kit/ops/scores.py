"""Anomaly scores built from residuals: projection, cosine, magnitude, top-q mean, fusion.

* :func:`projection_score` — ``R · R̂_t``, the residual-branch score (eqs. 10–12).
* :func:`cosine_score` — ``⟨F, R⟩``, the text-branch score (eq. 6) and the
  cosine alternative of Table 3.
* :func:`magnitude_score` — ``‖R‖₂``, the visual-branch score (eq. 9).
* :func:`top_fraction_mean` — ``Mean(Top_q%(M))``, the image score of a map
  (eqs. 7, 9, 12).
* :func:`fuse` — the weighted branch sum of eq. 5.

Norms, dot products and reductions run in float32 (float64 for float64 inputs);
results come back in the dtype of the inputs (``torch.result_type``).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange

from resad_kit.ops._validation import (
    check_broadcast_channels,
    check_number,
    check_same_shape,
    check_tensor,
    checks_enabled,
    compute_dtype,
    value_check,
)
from resad_kit.ops.residuals import _EPS, _check_eps

__all__ = [
    "cosine_score",
    "fuse",
    "magnitude_score",
    "projection_score",
    "top_fraction_mean",
]


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Dot product over the last dim with broadcasting (matmul fast path for a 1-D ``b``)."""
    if b.ndim == 1:
        return a @ b
    return torch.linalg.vecdot(a, b, dim=-1)


def projection_score(
    residual: torch.Tensor, direction: torch.Tensor, *, eps: float = _EPS
) -> torch.Tensor:
    """Projection of a residual onto a unit direction, ``R · R̂_t`` (eqs. 10–12, 27).

    This is the residual-branch score: a plain dot product with the *unit*
    direction, so it keeps the magnitude of ``R`` as a severity signal and goes to
    0 as ``‖R‖ → 0`` (eq. 29). It is linear in ``residual`` and invariant to
    positive rescaling of ``direction``. No clamp is applied (the official code's
    ``max(0, ·)`` is the composer's ``clamp_residual_projection`` flag).

    Args:
        residual: residual vectors ``R`` (e.g. ``R_v`` per patch or ``R_{v,cls}``).
        direction: direction ``R_t`` (normalised inside); ``(D,)`` or broadcastable.
        eps: a direction with ``‖R_t‖₂ ≤ eps`` is refused.

    Returns:
        ``R · R_t / ‖R_t‖₂`` in the promoted dtype of the inputs.

    Raises:
        ValueError: on bad shapes, empty or non-finite inputs, or a zero direction.

    Shape:
        - residual: ``(..., D)``
        - direction: ``(D,)`` or ``(..., D)`` broadcastable with ``residual``
        - output: ``(...)``

    Paper: eqs. (10)–(12), (27); App. A.3–A.4.

    Example:
        >>> import torch
        >>> from resad_kit.ops.scores import projection_score
        >>> projection_score(torch.tensor([3.0, 4.0]), torch.tensor([0.0, 10.0]))
        tensor(4.)
        >>> _ = torch.manual_seed(0)
        >>> projection_score(torch.randn(2, 1369, 768), torch.randn(768)).shape
        torch.Size([2, 1369])
    """
    fn = "projection_score"
    if checks_enabled():
        _check_eps(fn, eps)
        _check_pair(fn, ("residual", "direction"), residual, direction)
    return _projection_score_core(residual, direction, float(eps))


def _check_pair(fn: str, names: tuple[str, str], x: object, direction: object) -> None:
    """``x`` ``(..., D)`` and ``direction`` ``(D,)``/``(..., D)``: finite, same ``D``, broadcast."""
    check_tensor(fn, names[0], x, min_ndim=1, shape_doc="(..., D)", finite=True)
    check_tensor(fn, names[1], direction, min_ndim=1, shape_doc="(D,) or (..., D)", finite=True)
    check_broadcast_channels(fn, names, x, direction)  # type: ignore[arg-type]


def _projection_score_core(
    residual: torch.Tensor, direction: torch.Tensor, eps: float, fn: str = "projection_score"
) -> torch.Tensor:
    """:func:`projection_score` without checks, except the zero-direction one (a value check:
    skipped with checks off and under ``torch.compile``)."""
    r, d = residual, direction
    cdtype = compute_dtype(r, d)
    d = d.to(cdtype)
    norm = torch.linalg.vector_norm(d, dim=-1, keepdim=True)
    if value_check(fn) and bool((norm <= eps).any()):
        raise ValueError(
            f"{fn}: `direction` must be non-zero (‖direction‖₂ > eps={eps:g}); "
            f"got a zero vector in shape {tuple(d.shape)}"
        )
    return _dot(r.to(cdtype), d / norm).to(torch.result_type(residual, direction))


def cosine_score(
    features: torch.Tensor, direction: torch.Tensor, *, eps: float = _EPS
) -> torch.Tensor:
    """Cosine similarity ``⟨F, R⟩ = F̂ · R̂`` over the channel dim (eq. 6, Table 3).

    The text-branch score of eq. 6 (``⟨F_{v,l}^q, R̃_t⟩`` per patch, ``⟨f_v^q, R̃_t⟩``
    for the CLS term of eq. 7) and the ``cos(R_v, R_t)`` alternative of Table 3.
    Both inputs are ℓ2-normalised; a zero vector on either side gives 0. The result
    is clamped to ``[−1, 1]`` against rounding.

    Args:
        features: features (or residuals) ``F``.
        direction: direction ``R``; ``(D,)`` or broadcastable with ``features``.
        eps: lower bound on the norms (a zero vector normalises to zero).

    Returns:
        The cosine in ``[−1, 1]``, in the promoted dtype of the inputs.

    Shape:
        - features: ``(..., D)``
        - direction: ``(D,)`` or ``(..., D)`` broadcastable with ``features``
        - output: ``(...)``

    Paper: eq. (6), eq. (7), eq. (28); Table 3.

    Example:
        >>> import torch
        >>> from resad_kit.ops.scores import cosine_score
        >>> cosine_score(torch.tensor([3.0, 4.0]), torch.tensor([0.0, 10.0]))
        tensor(0.8000)
        >>> cosine_score(torch.zeros(2), torch.tensor([1.0, 0.0]))
        tensor(0.)
    """
    if checks_enabled():
        fn = "cosine_score"
        _check_eps(fn, eps)
        _check_pair(fn, ("features", "direction"), features, direction)
    return _cosine_score_core(features, direction, float(eps))


def _unit_cosine_core(f_hat: torch.Tensor, d_hat: torch.Tensor) -> torch.Tensor:
    """The cosine of already ℓ2-normalised vectors: their dot product (no clamp).

    For a caller that normalises a direction once and scores several feature sets with it
    (Res²CLIP's text losses), so that autograd sums the cosines' gradients before the one
    normalisation, as the official code does. Shape: ``(..., D)`` × ``(D,)`` → ``(...)``.
    """
    return _dot(f_hat, d_hat)


def _cosine_score_core(features: torch.Tensor, direction: torch.Tensor, eps: float) -> torch.Tensor:
    """:func:`cosine_score` without checks."""
    f, d = features, direction
    cdtype = compute_dtype(f, d)
    f_hat = F.normalize(f.to(cdtype), dim=-1, eps=eps)
    d_hat = F.normalize(d.to(cdtype), dim=-1, eps=eps)
    return _dot(f_hat, d_hat).clamp(-1.0, 1.0).to(torch.result_type(features, direction))


def magnitude_score(residual: torch.Tensor) -> torch.Tensor:
    """Residual magnitude ``‖R‖₂`` over the channel dim (eq. 9).

    The visual-branch score: the plain ℓ2 norm, **not** squared (eq. 9 and the
    official code). For residuals of unit vectors it lies in ``[0, 2]`` and
    equals ``sqrt(2(1 − cos))`` (eq. 23).

    Args:
        residual: residual vectors ``R̃_{v,l}``.

    Returns:
        The non-negative norm, in the dtype of ``residual``.

    Shape:
        - residual: ``(..., D)``
        - output: ``(...)``

    Paper: eq. (9), eq. (23).

    Example:
        >>> import torch
        >>> from resad_kit.ops.scores import magnitude_score
        >>> magnitude_score(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
        tensor([5., 0.])
    """
    if checks_enabled():
        check_tensor(
            "magnitude_score", "residual", residual, min_ndim=1, shape_doc="(..., D)", finite=True
        )
    return _magnitude_score_core(residual)


def _magnitude_score_core(r: torch.Tensor) -> torch.Tensor:
    """:func:`magnitude_score` without checks."""
    norm = torch.linalg.vector_norm(r.to(compute_dtype(r)), dim=-1)
    return norm.to(r.dtype)


def _check_fraction(fn: str, fraction: object) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real):
        raise TypeError(
            f"{fn}: `fraction` must be a float in (0, 1]; got {type(fraction).__name__}"
        )
    value = float(fraction)
    if not (0.0 < value <= 1.0):
        raise ValueError(f"{fn}: `fraction` must be in (0, 1]; got {fraction}")
    return value


def top_fraction_mean(maps: torch.Tensor, fraction: float = 0.01) -> torch.Tensor:
    """Mean of the highest ``fraction`` of the values of each map, ``Mean(Top_q%(M))``.

    ``k = max(1, int(fraction · H · W))`` values are averaged (official code; for a
    518×518 map and the default 1 %, ``k = 2683``). Computed in float32.

    Args:
        maps: anomaly maps (upsampled and smoothed branch maps in Res²CLIP).
        fraction: share of pixels to average, in ``(0, 1]``; ``1`` gives the plain mean.

    Returns:
        One score per map, in the dtype of ``maps``.

    Raises:
        ValueError: on fewer than 2 dims, empty or non-finite maps, or ``fraction``
            outside ``(0, 1]``.

    Shape:
        - maps: ``(..., H, W)``
        - output: ``(...)``

    Paper: eq. (7), eq. (9), eq. (12).

    Example:
        >>> import torch
        >>> from resad_kit.ops.scores import top_fraction_mean
        >>> m = torch.arange(16.0).reshape(1, 4, 4)
        >>> top_fraction_mean(m, fraction=0.25)  # mean of 15, 14, 13, 12
        tensor([13.5000])
        >>> top_fraction_mean(torch.zeros(2, 3, 518, 518)).shape
        torch.Size([2, 3])
    """
    if checks_enabled():
        fn = "top_fraction_mean"
        fraction = _check_fraction(fn, fraction)
        check_tensor(fn, "maps", maps, min_ndim=2, shape_doc="(..., H, W)", finite=True)
    return _top_fraction_mean_core(maps, float(fraction))


def _top_fraction_mean_core(m: torch.Tensor, q: float) -> torch.Tensor:
    """:func:`top_fraction_mean` without checks."""
    h, w = m.shape[-2:]
    k = max(1, int(q * h * w))
    flat = rearrange(m.to(compute_dtype(m)), "... h w -> ... (h w)")
    return flat.topk(k, dim=-1, sorted=False).values.mean(dim=-1).to(m.dtype)


def _check_weight(fn: str, name: str, w: object) -> float:
    return check_number(fn, name, w)


def _is_sequence(x: object) -> bool:
    return isinstance(x, Sequence) and not isinstance(x, (str, bytes))


def fuse(
    maps: Sequence[torch.Tensor] | Mapping[str, torch.Tensor],
    weights: Sequence[float] | Mapping[str, float],
) -> torch.Tensor:
    """Weighted sum of branch maps or scores, ``Σ_i λ_i · M_i`` (eq. 5).

    Raw values are summed; the maps are **not** min-max normalised first (App. F.2 and
    the official code). Works for pixel maps ``(..., H, W)`` and for image scores
    ``(B,)`` alike.
    ``maps`` and ``weights`` are either two sequences of the same length or two
    mappings with the same keys (e.g. ``{"text": …, "vis": …, "res": …}``).

    Args:
        maps: the branch maps or scores, all of the same shape.
        weights: one real weight per map (the λ of eq. 5).

    Returns:
        The fused tensor, in the promoted dtype of the maps (summed in float32).

    Raises:
        TypeError: if ``maps`` and ``weights`` are not both sequences or both
            mappings, or an entry has the wrong type.
        ValueError: on no maps, mismatched lengths or keys, maps of different
            shapes, empty or non-finite maps, or non-finite weights.

    Shape:
        - maps: each ``(...)`` (same shape)
        - output: ``(...)``

    Paper: eq. (5); App. F.2 (training-free λ_loc = 0.1 : 1 : 1, λ_glob = 1 : 1 : 1).

    Example:
        >>> import torch
        >>> from resad_kit.ops.scores import fuse
        >>> maps = {"text": torch.ones(2, 2), "vis": torch.full((2, 2), 2.0)}
        >>> fuse(maps, {"text": 0.1, "vis": 1.0})
        tensor([[2.1000, 2.1000],
                [2.1000, 2.1000]])
        >>> fuse([torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])], [1.0, 0.5])
        tensor([2.5000, 4.0000])
    """
    if not checks_enabled():
        if isinstance(maps, Mapping):
            keys = list(maps)
            return _fuse_core([maps[k] for k in keys], [float(weights[k]) for k in keys])  # type: ignore[index]
        return _fuse_core(list(maps), [float(w) for w in weights])  # type: ignore[union-attr]
    fn = "fuse"
    if isinstance(maps, Mapping) and isinstance(weights, Mapping):
        if set(maps) != set(weights):
            missing = sorted(map(str, set(maps) - set(weights)))
            extra = sorted(map(str, set(weights) - set(maps)))
            raise ValueError(
                f"{fn}: `maps` and `weights` must have the same keys; keys without a weight: "
                f"{missing}, weights without a map: {extra}"
            )
        keys = list(maps)
        names = [f"maps[{k!r}]" for k in keys]
        tensors = [maps[k] for k in keys]
        ws = [_check_weight(fn, f"weights[{k!r}]", weights[k]) for k in keys]
    elif _is_sequence(maps) and _is_sequence(weights):
        if len(maps) != len(weights):
            raise ValueError(
                f"{fn}: `maps` and `weights` must have the same length; "
                f"got {len(maps)} maps and {len(weights)} weights"
            )
        names = [f"maps[{i}]" for i in range(len(maps))]
        tensors = list(maps)
        ws = [_check_weight(fn, f"weights[{i}]", w) for i, w in enumerate(weights)]
    else:
        raise TypeError(
            f"{fn}: `maps` and `weights` must both be sequences or both be mappings; "
            f"got {type(maps).__name__} and {type(weights).__name__}"
        )
    if not tensors:
        raise ValueError(f"{fn}: `maps` must not be empty; got no maps")
    for name, t in zip(names, tensors, strict=True):
        check_tensor(fn, name, t, finite=True)
    check_same_shape(fn, names, tensors)
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError(f"{fn}: all maps must be on one device; got {sorted(map(str, devices))}")
    return _fuse_core(tensors, ws)


def _fuse_core(tensors: list[torch.Tensor], ws: list[float]) -> torch.Tensor:
    """:func:`fuse` without checks: ``Σ_i w_i·M_i`` in float32+."""
    cdtype = compute_dtype(*tensors)
    out_dtype = tensors[0].dtype
    for t in tensors[1:]:
        out_dtype = torch.promote_types(out_dtype, t.dtype)
    total = torch.zeros(tensors[0].shape, dtype=cdtype, device=tensors[0].device)
    for w, t in zip(ws, tensors, strict=True):
        total = total + w * t.to(cdtype)
    return total.to(out_dtype)
