"""How ``retrieve`` scales with the number of shots K and the image size (N), in time and memory.

One layer, one test image, D = 768, the fast path only (the official path's dense ``N×M``
tensors stop fitting a laptop long before K = 64), with a bank normalised once per class
(``normalize="query"``). Each case runs under :func:`harness.timed_peak_memory`: a warm-up
call, then one call that is both timed and measured, and whose result is then checked:

* ``shots``: K = 1 → 64 at 518 px (N = 1,369, M = K·N), default chunking;
* ``size``: 336, 518, 700 and 1,036 px (N = 24² → 74², K = 4) with two memory policies:
  ``all`` (``chunk_size=N``, all rows at once: the similarity block is N×M, quadratic in N)
  and ``budget`` (``chunk_size`` chosen so that a block holds at most 2²⁴ similarities,
  64 MiB: flat in N).

Correctness: the chunked results must equal the one-block ones bit for bit, every row's
weights sum to one, and at 518 px for K ≤ 4 the reference matches the official path (K = 8
and 16 are checked on four layers in ``bench_retrieval.py``).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from baselines import official_retrieval
from harness import (
    DEVICES,
    GAMMA,
    SIDE,
    bank_radius,
    features,
    record,
    support_stats,
    timed_peak_memory,
)

from resad_kit.ops import retrieve

SIZES = {336: 24, 518: 37, 700: 50, 1036: 74}  # image side (px) → patch-grid side


def _device_params(grid, ident):
    for device in DEVICES:
        (name,), marks = device.values, device.marks
        for case in grid:
            yield pytest.param(*case, name, marks=marks, id=f"{ident(*case)}-{name}")


BLOCK_BUDGET = 2**24  # similarities per block under the "budget" policy (64 MiB in float32)


def _chunk(policy: str, n: int, m: int) -> int:
    return {"all": n, "budget": max(64, BLOCK_BUDGET // m)}[policy]


def _layer(shots: int, side: int, device: str):
    """The first layer's features (shared with the four-layer cases of the other files)."""
    layers = 4 if side == SIDE and shots <= 16 else 1
    return features(shots, 768, device, side=side, layers=layers)[0]


def _retrieve(shots: int, side: int, device: str, chunk_size: int | None):
    layer = _layer(shots, side, device)
    r_query, r_bank = bank_radius(shots, device, side)
    return retrieve(
        layer.query,
        layer.bank,
        query_radius=r_query,
        bank_radius=r_bank,
        gamma=GAMMA,
        chunk_size=chunk_size,
        normalize="query",  # the bank is normalised once per class, as the method does
    )


_UNCHUNKED: dict[tuple[int, str], Any] = {}


def _unchunked(shots: int, side: int, device: str):
    """The one-block result (kept from the ``all`` case, which runs first for every size)."""
    if (side, device) not in _UNCHUNKED:
        _UNCHUNKED.clear()
        _UNCHUNKED[(side, device)] = _retrieve(shots, side, device, side * side)
    return _UNCHUNKED[(side, device)]


def _check(out, shots: int, side: int, device: str) -> None:
    sums = out.weights.values.sum(dim=-1)
    torch.testing.assert_close(sums, torch.ones_like(sums), atol=1e-5, rtol=0)
    if shots <= 4 and side == SIDE:
        layer = _layer(shots, side, device)
        (expected,) = official_retrieval([layer.query], [layer.bank], GAMMA, shots)
        got = F.normalize(out.reference, dim=-1)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("shots", "device"),
    list(_device_params([(k,) for k in (1, 2, 4, 8, 16, 32, 64)], lambda k: f"K{k}")),
)
def test_shots(benchmark, shots, device):
    side = SIZES[518]
    _layer(shots, side, device)  # inputs exist before the measurement
    out, peak = timed_peak_memory(benchmark, lambda: _retrieve(shots, side, device, None), device)
    _check(out, shots, side, device)
    support = out.weights.support_size().float()
    record(
        benchmark,
        "scaling_shots",
        impl="fast",
        shots=shots,
        rows=side * side,
        columns=shots * side * side,
        dim=768,
        dtype="float32",
        device=device,
        chunk_size=None,
        peak_mib=peak,
        **support_stats(support),
    )


_SIZE_CASES = [(px, policy) for px in SIZES for policy in ("all", "budget")]


@pytest.mark.parametrize(
    ("pixels", "policy", "device"),
    list(_device_params(_SIZE_CASES, lambda px, policy: f"{px}px-{policy}")),
)
def test_size(benchmark, pixels, policy, device):
    shots, side = 4, SIZES[pixels]
    m = shots * side * side
    chunk = _chunk(policy, side * side, m)
    _layer(shots, side, device)  # inputs exist before the measurement
    out, peak = timed_peak_memory(benchmark, lambda: _retrieve(shots, side, device, chunk), device)
    _check(out, shots, side, device)
    if policy == "all":
        _UNCHUNKED.clear()
        _UNCHUNKED[(side, device)] = out
    else:
        expected = _unchunked(shots, side, device)
        assert torch.equal(out.reference, expected.reference)
        assert torch.equal(out.weights.indices, expected.weights.indices)
    record(
        benchmark,
        "scaling_size",
        impl=policy,
        shots=shots,
        pixels=pixels,
        rows=side * side,
        columns=m,
        dim=768,
        dtype="float32",
        device=device,
        chunk_size=chunk,
        peak_mib=peak,
    )
