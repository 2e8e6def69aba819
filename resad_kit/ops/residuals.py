"""Residual features: text residual, visual residual, global residual (Res²CLIP sec. 3).

A *residual* is the difference of two ℓ2-normalised features. Res²CLIP builds
every anomaly score from three of them:

* the **text residual** ``R_t = F̂^a − F̂^n`` between the anomalous and the normal
  text anchors (eq. 3, eq. 17);
* the **visual residual** ``R_v = F̂^q − F̂_ref`` between a query patch and its
  retrieved normal reference (sec. 3.2.3, eq. 17);
* the **global residual** ``R_{v,cls}`` between the query CLS feature and the
  mean of the K reference CLS features (sec. 3.2.4).

Normalisation follows :func:`torch.nn.functional.normalize`: ``x / max(‖x‖₂, eps)``
with ``eps = 1e-12`` by default, so a zero vector maps to the zero vector.
All norms and means are computed in float32 (float64 for float64 inputs); the
result has the dtype of the inputs (``torch.result_type``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from resad_kit.ops._validation import (
    check_broadcast_channels,
    check_number,
    check_tensor,
    checks_enabled,
    compute_dtype,
    value_check,
)

__all__ = [
    "global_residual",
    "prompt_ensemble_mean",
    "text_residual",
    "visual_residual",
]

_EPS = 1e-12
# A unit text residual is refused when ‖R_t‖ is at rounding level: the anchors
# are unit vectors, so their difference is O(1) unless they point the same way.
_DEGENERATE_ULPS = 64


def _check_eps(fn: str, eps: object) -> float:
    """``eps`` as a float (numpy scalars accepted); ``ValueError`` unless positive and finite."""
    return check_number(fn, "eps", eps, minimum=0.0, strict=True, what="a float")


def _unit(x: torch.Tensor, cdtype: torch.dtype, eps: float) -> torch.Tensor:
    """ℓ2-normalise the last dimension in ``cdtype`` (zero vectors stay zero)."""
    return F.normalize(x.to(cdtype), p=2.0, dim=-1, eps=eps)


def prompt_ensemble_mean(
    embeddings: torch.Tensor, *, normalize_each: bool = False, eps: float = _EPS
) -> torch.Tensor:
    """Average the text embeddings of a prompt ensemble into one anchor (eq. 32).

    The paper (eq. 32) averages the **raw** encodings ``E_t(T)``; the official
    code ℓ2-normalises each prompt embedding first (``normalize_each=True``,
    ``Res2CLIPConfig.normalize_before_mean``). The mean is *not* re-normalised:
    :func:`text_residual` normalises the anchors when it forms ``R_t``.

    Args:
        embeddings: text embeddings of the P prompts of one state set.
        normalize_each: ℓ2-normalise each embedding before averaging (code).
        eps: lower bound on the norm when normalising (only with ``normalize_each``).

    Returns:
        The anchor ``F_t = (1/P) Σ_T E_t(T)``, in the dtype of ``embeddings``.

    Shape:
        - embeddings: ``(..., P, D)``
        - output: ``(..., D)``

    Paper: eq. (32), App. B.5.

    Example:
        >>> import torch
        >>> from resad_kit.ops.residuals import prompt_ensemble_mean
        >>> e = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
        >>> prompt_ensemble_mean(e)
        tensor([1.5000, 3.0000])
        >>> prompt_ensemble_mean(e, normalize_each=True)
        tensor([0.3000, 0.9000])
    """
    if checks_enabled():
        fn = "prompt_ensemble_mean"
        eps = _check_eps(fn, eps)
        check_tensor(fn, "embeddings", embeddings, min_ndim=2, shape_doc="(..., P, D)", finite=True)
    return _prompt_ensemble_mean_core(embeddings, normalize_each, float(eps))


def _prompt_ensemble_mean_core(x: torch.Tensor, normalize_each: bool, eps: float) -> torch.Tensor:
    cdtype = compute_dtype(x)
    x32 = _unit(x, cdtype, eps) if normalize_each else x.to(cdtype)
    return x32.mean(dim=-2).to(x.dtype)


def text_residual(
    anomalous: torch.Tensor,
    normal: torch.Tensor,
    *,
    unit: bool = False,
    eps: float = _EPS,
) -> torch.Tensor:
    """Text residual ``R_t = F̂^a − F̂^n`` between the anomalous and normal anchors (eq. 3, 17).

    Each anchor is ℓ2-normalised first. ``R_t`` is not unit-norm in the paper:
    ``‖R_t‖₂ = sqrt(2 − 2⟨F^a, F^n⟩)``. With ``unit=True`` the result is the unit
    direction ``R̂_t = R_t / ‖R_t‖₂`` (official code; ``Res2CLIPConfig.unit_text_residual``).

    Args:
        anomalous: anomalous anchor ``F_t^a``.
        normal: normal anchor ``F_t^n``; broadcastable with ``anomalous``.
        unit: return ``R̂_t`` instead of ``R_t``.
        eps: lower bound on the anchor norms (a zero anchor normalises to zero).

    Returns:
        ``R_t`` (or ``R̂_t``) in the promoted dtype of the inputs.

    Raises:
        ValueError: on mismatched or empty shapes, non-finite values, or, with
            ``unit=True``, anchors pointing the same way (``‖R_t‖`` within 64 ulps of
            zero in the compute dtype), because a zero residual has no direction.

    Shape:
        - anomalous, normal: ``(..., D)``, broadcastable
        - output: ``(..., D)`` (broadcast shape)

    Paper: eq. (3), eq. (17).

    Example:
        >>> import torch
        >>> from resad_kit.ops.residuals import text_residual
        >>> fa, fn = torch.tensor([0.0, 2.0]), torch.tensor([3.0, 0.0])
        >>> text_residual(fa, fn)
        tensor([-1.,  1.])
        >>> text_residual(fa, fn, unit=True)
        tensor([-0.7071,  0.7071])
    """
    fn = "text_residual"
    if checks_enabled():
        eps = _check_eps(fn, eps)
        check_tensor(fn, "anomalous", anomalous, min_ndim=1, shape_doc="(..., D)", finite=True)
        check_tensor(fn, "normal", normal, min_ndim=1, shape_doc="(..., D)", finite=True)
        check_broadcast_channels(fn, ("anomalous", "normal"), anomalous, normal)
    return _text_residual_core(anomalous, normal, unit, float(eps))


def _text_residual_core(
    a: torch.Tensor, n: torch.Tensor, unit: bool, eps: float, fn: str = "text_residual"
) -> torch.Tensor:
    """:func:`text_residual` without checks, except the degenerate-direction one of ``unit``
    (a value check: skipped with checks off and under ``torch.compile``)."""
    cdtype = compute_dtype(a, n)
    r = _unit(a, cdtype, eps) - _unit(n, cdtype, eps)
    if unit:
        norm = torch.linalg.vector_norm(r, dim=-1, keepdim=True)
        tol = _DEGENERATE_ULPS * torch.finfo(cdtype).eps
        if value_check(fn) and bool((norm <= tol).any()):
            raise ValueError(
                f"{fn}: `anomalous` and `normal` point in the same direction "
                f"(‖R_t‖ ≤ {tol:.1e}), so the text residual has no direction; "
                "unit=True needs distinct anchors"
            )
        r = r / norm
    return r.to(torch.result_type(a, n))


def visual_residual(
    query: torch.Tensor, reference: torch.Tensor, *, eps: float = _EPS
) -> torch.Tensor:
    """Visual residual ``R_v = F̂^q − F̂_ref`` between query features and their references.

    Both sides are ℓ2-normalised inside, so ``‖R_v‖₂ = sqrt(2 − 2⟨F^q, F_ref⟩) ∈ [0, 2]``
    (eq. 23). Works per patch (``(B, N, D)`` against the retrieved ``(B, N, D)``) or
    for any broadcastable pair of ``(..., D)`` tensors.

    Args:
        query: query features ``F^q`` (patches or CLS).
        reference: reference features ``F_ref``; broadcastable with ``query``.
        eps: lower bound on the norms (a zero vector normalises to zero).

    Returns:
        ``R_v`` in the promoted dtype of the inputs.

    Shape:
        - query: ``(..., N, D)`` or any ``(..., D)``
        - reference: broadcastable with ``query``
        - output: ``(..., D)`` (broadcast shape)

    Paper: sec. 3.2.3, eq. (4), eq. (17).

    Example:
        >>> import torch
        >>> from resad_kit.ops.residuals import visual_residual
        >>> _ = torch.manual_seed(0)
        >>> q, ref = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
        >>> visual_residual(q, ref).shape
        torch.Size([2, 5, 8])
        >>> visual_residual(torch.tensor([0.0, 5.0]), torch.tensor([1.0, 0.0]))
        tensor([-1.,  1.])
    """
    if checks_enabled():
        fn = "visual_residual"
        eps = _check_eps(fn, eps)
        check_tensor(fn, "query", query, min_ndim=1, shape_doc="(..., D)", finite=True)
        check_tensor(fn, "reference", reference, min_ndim=1, shape_doc="(..., D)", finite=True)
        check_broadcast_channels(fn, ("query", "reference"), query, reference)
    return _visual_residual_core(query, reference, float(eps))


def _visual_residual_core(q: torch.Tensor, r: torch.Tensor, eps: float) -> torch.Tensor:
    """:func:`visual_residual` without checks (eq. 32)."""
    cdtype = compute_dtype(q, r)
    return (_unit(q, cdtype, eps) - _unit(r, cdtype, eps)).to(torch.result_type(q, r))


def global_residual(
    query: torch.Tensor,
    references: torch.Tensor,
    *,
    normalized: bool = True,
    eps: float = _EPS,
) -> torch.Tensor:
    """Global (CLS) visual residual ``R_{v,cls}`` against the mean of K references (sec. 3.2.4).

    ``normalized=True`` (default; official code and App. A eq. 17):
    ``R_{v,cls} = f̂_q − normalize((1/K) Σ_k f̂^(k))``.

    ``normalized=False`` (``Res2CLIPConfig.raw_global_residual``; literal main text):
    ``R_{v,cls} = f_q − (1/K) Σ_k f^(k)`` with no normalisation at all.

    Args:
        query: query CLS features ``f_v^q``.
        references: CLS features of the K normal references ``f_v^(k)``, either per
            query ``(..., K, D)`` or shared by all queries ``(K, D)``.
        normalized: use the normalised (code / App. A) form.
        eps: lower bound on the norms (a zero vector normalises to zero).

    Returns:
        ``R_{v,cls}`` in the promoted dtype of the inputs.

    Shape:
        - query: ``(..., D)``
        - references: ``(..., K, D)`` (batch dims broadcastable with the query's)
        - output: ``(..., D)``

    Paper: sec. 3.2.4, eq. (17).

    Example:
        >>> import torch
        >>> from resad_kit.ops.residuals import global_residual
        >>> q = torch.tensor([0.0, 2.0])
        >>> refs = torch.tensor([[3.0, 0.0], [1.0, 0.0]])
        >>> global_residual(q, refs)
        tensor([-1.,  1.])
        >>> global_residual(q, refs, normalized=False)
        tensor([-2.,  2.])
        >>> _ = torch.manual_seed(0)
        >>> global_residual(torch.randn(4, 768), torch.randn(2, 768)).shape
        torch.Size([4, 768])
    """
    if checks_enabled():
        eps = _check_global_residual(query, references, eps)
    return _global_residual_core(query, references, normalized, float(eps))


def _check_global_residual(query: object, references: object, eps: object) -> float:
    fn = "global_residual"
    eps = _check_eps(fn, eps)
    q = check_tensor(fn, "query", query, min_ndim=1, shape_doc="(..., D)", finite=True)
    refs = check_tensor(
        fn, "references", references, min_ndim=2, shape_doc="(..., K, D)", finite=True
    )
    if q.shape[-1] != refs.shape[-1]:
        raise ValueError(
            f"{fn}: `query` (..., D) and `references` (..., K, D) must have the same channel "
            f"size D; got shapes {tuple(q.shape)} and {tuple(refs.shape)}"
        )
    try:
        torch.broadcast_shapes(q.shape[:-1], refs.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"{fn}: batch dims of `query` (..., D) and `references` (..., K, D) must be "
            f"broadcastable; got shapes {tuple(q.shape)} and {tuple(refs.shape)}"
        ) from None
    return eps


def _global_residual_core(
    q: torch.Tensor, refs: torch.Tensor, normalized: bool, eps: float
) -> torch.Tensor:
    """:func:`global_residual` without checks."""
    cdtype = compute_dtype(q, refs)
    out_dtype = torch.result_type(q, refs)
    if normalized:
        ref_mean = _unit(_unit(refs, cdtype, eps).mean(dim=-2), cdtype, eps)
        return (_unit(q, cdtype, eps) - ref_mean).to(out_dtype)
    return (q.to(cdtype) - refs.to(cdtype).mean(dim=-2)).to(out_dtype)
