"""Sort-free sparsemax thresholds that were measured against the top-k path and not kept.

Both find the same support as the sort, then compute ``τ = (Σ_S z − 1)/|S|`` from it; the sum
runs in a different order than the sorted cumulative sum, so τ agrees with the sort path to
float rounding (not bit for bit). docs/benchmarks.md shows why the library keeps the adaptive
top-k instead: every pass of these touches all ``M`` entries of a row, and they need several.

* :func:`michelot_threshold`: Michelot's (1986) fixed point. Start with every entry in the
  candidate set, set ``τ = (Σ_C z − 1)/|C|``, drop the entries ``≤ τ``, repeat until the set no
  longer changes. τ only grows, so it ends after at most ``M`` steps (in practice a handful).
* :func:`bisection_threshold`: bisection of ``f(τ) = Σ max(0, z − τ) − 1`` on
  ``[max − 1, max]`` (as entmax's ``sparsemax_bisect``), then one exact step on the support.
"""

from __future__ import annotations

import torch

__all__ = ["bisection_threshold", "michelot_threshold"]


def _exact_step(z: torch.Tensor, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Σ_{z>τ} z − 1)/|{z > τ}|`` and the support mask."""
    mask = z > tau
    size = mask.sum(dim=-1, keepdim=True).clamp_min(1)
    return (torch.where(mask, z, 0).sum(dim=-1, keepdim=True) - 1) / size, mask


def michelot_threshold(z: torch.Tensor, max_steps: int = 10_000) -> torch.Tensor:
    """Sparsemax threshold of every row of ``(R, M)`` ``z`` by Michelot's fixed point.

    Returns:
        ``(R, 1)`` τ with ``sparsemax(z) = max(0, z − τ)``.
    """
    z = z - z.amax(dim=-1, keepdim=True)
    tau = (z.sum(dim=-1, keepdim=True) - 1) / z.shape[-1]
    mask = torch.ones_like(z, dtype=torch.bool)
    for _ in range(max_steps):
        new_tau, new_mask = _exact_step(z, tau)
        if torch.equal(new_mask, mask):
            return tau
        tau, mask = new_tau, new_mask
    raise RuntimeError(f"michelot_threshold: no fixed point after {max_steps} steps")


def bisection_threshold(z: torch.Tensor, steps: int = 30) -> torch.Tensor:
    """Sparsemax threshold of every row of ``(R, M)`` ``z`` by bisection plus one exact step.

    ``steps`` halvings of the unit bracket give ``2^-steps`` (30: below float32 resolution
    near 0), enough for the support, which the exact step turns into τ.

    Returns:
        ``(R, 1)`` τ with ``sparsemax(z) = max(0, z − τ)``.
    """
    z = z - z.amax(dim=-1, keepdim=True)
    low = torch.full_like(z[:, :1], -1.0)  # f(max − 1) ≥ 0
    width = 1.0
    for _ in range(steps):
        width /= 2
        mid = low + width
        above = (z - mid).clamp_min_(0).sum(dim=-1, keepdim=True) >= 1
        low = torch.where(above, mid, low)
    tau, _ = _exact_step(z, low)
    return tau
