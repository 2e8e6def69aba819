"""How ``retrieve`` scales with the number of shots K and the image size (N), in time and memory.

One layer, one test image, D = 768, the fast path only (the official path's dense ``N×M``
tensors stop fitting a laptop long before K = 64), with a bank normalised once per class
(``normalize="query"``). Each case runs under :func:`harness.peak_memory` (a warm-up call,
then the measured call, whose result is checked), then is timed:

* ``shots``: K = 1 → 64 at 518 px (N = 1,369, M = K·N), unchunked;
* ``size``: 336 → 1,036 px (N = 24² → 74², K = 4) with three memory policies:
  ``none`` (all rows at once: the similarity block is N×M, quadratic in N), ``rows256``
  (``chunk_size=256``: a 256×M block, linear in N through M) and ``budget`` (``chunk_size``
  chosen so that the block holds at most 2²⁴ similarities, 64 MiB: flat in N).

Correctness: the chunked results must equal the unchunked ones bit for bit, every row's
weights sum to one, and for K ≤ 16 the reference matches the official path.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from baselines import official_retrieval
from harness import DEVICES, GAMMA, bank_radius, features, peak_memory, record, timed

from resad_kit.ops import retrieve

BLOCK_BUDGET = 2**24  # similarities per chunk under the "budget" policy (64 MiB in float32)
SIZES = {336: 24, 518: 37, 700: 50, 854: 61, 1036: 74}  # image side (px) → patch-grid side


def _device_params(grid, ident):
    for device in DEVICES:
        (name,), marks = device.values, device.marks
        for case in grid:
            yield pytest.param(*case, name, marks=marks, id=f"{ident(*case)}-{name}")


def _chunk(policy: str, m: int) -> int | None:
    if policy == "none":
        return None
    if policy == "rows256":
        return 256
    return max(64, BLOCK_BUDGET // m)


def _retrieve(shots: int, side: int, device: str, chunk_size: int | None):
    layer = features(shots, 768, device, side=side, layers=1)[0]
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


@functools.lru_cache(maxsize=1)
def _unchunked(shots: int, side: int, device: str):
    return _retrieve(shots, side, device, None)


def _check(out, shots: int, side: int, device: str) -> None:
    sums = out.weights.values.sum(dim=-1)
    torch.testing.assert_close(sums, torch.ones_like(sums), atol=1e-5, rtol=0)
    if shots <= 16 and side == 37:
        layer = features(shots, 768, device, side=side, layers=1)[0]
        (expected,) = official_retrieval([layer.query], [layer.bank], GAMMA, shots)
        got = F.normalize(out.reference, dim=-1)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("shots", "device"),
    list(_device_params([(k,) for k in (1, 2, 4, 8, 16, 32, 64)], lambda k: f"K{k}")),
)
def test_shots(benchmark, shots, device):
    side = SIZES[518]
    features(shots, 768, device, side=side, layers=1)  # inputs exist before the measurement
    out, peak = peak_memory(lambda: _retrieve(shots, side, device, None), device)
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
        support_median=float(support.median()),
        support_max=float(support.max()),
    )
    timed(benchmark, lambda: _retrieve(shots, side, device, None), device, 3 if shots <= 8 else 1)


_SIZE_CASES = [(px, policy) for px in SIZES for policy in ("none", "rows256", "budget")]


@pytest.mark.parametrize(
    ("pixels", "policy", "device"),
    list(_device_params(_SIZE_CASES, lambda px, policy: f"{px}px-{policy}")),
)
def test_size(benchmark, pixels, policy, device):
    shots, side = 4, SIZES[pixels]
    m = shots * side * side
    chunk = _chunk(policy, m)
    features(shots, 768, device, side=side, layers=1)  # inputs exist before the measurement
    out, peak = peak_memory(lambda: _retrieve(shots, side, device, chunk), device)
    _check(out, shots, side, device)
    if policy != "none":
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
    timed(benchmark, lambda: _retrieve(shots, side, device, chunk), device, 1)
