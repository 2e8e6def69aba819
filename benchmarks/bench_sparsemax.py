"""Sparsemax of one layer's penalised similarities: top-k paths versus the full sort.

Input: the ``(N, K·N)`` similarities of one 518 px query (N = 1,369) against a ``K``-shot
bank (Eq. 8). Baseline: the official code's sparsemax, which sorts every whole row. Fast:
``resad_kit.ops.sparsemax(x, k="auto")`` (exact adaptive top-k). Also timed at K = 4:
resad_kit's own full sort (``k=None``) and the two sort-free alternatives of
:mod:`alternatives` (Michelot's fixed point, bisection). Every case first checks its output
against the baseline's. ``start_width`` times the kernel inside ``retrieve``
(:func:`resad_kit.ops.simplex.sorted_support`) for start widths 16–128 at K = 4 and 16, the
measurement behind ``AUTO_K``.
"""

from __future__ import annotations

import functools

import pytest
import torch
from alternatives import bisection_threshold, michelot_threshold
from baselines import official_sparsemax
from harness import DEVICES, dtype_name, paired, record, similarity, timed

from resad_kit.ops import sparsemax
from resad_kit.ops.simplex import sorted_support

SHOTS = (1, 2, 4, 8, 16)
ROUNDS = {1: 5, 2: 5, 4: 7, 8: 2, 16: 2}  # K = 4 is the key case: steadier median


def _cases():
    for device in DEVICES:
        (name,), marks = device.values, device.marks
        grid = [(impl, k, torch.float32) for k in SHOTS for impl in ("official", "auto")]
        grid += [(impl, 4, torch.float32) for impl in ("sort", "michelot", "bisection")]
        grid += [(impl, 4, torch.bfloat16) for impl in ("official", "auto")]
        for impl, shots, dtype in grid:
            yield pytest.param(
                impl,
                shots,
                dtype,
                name,
                marks=marks,
                id=f"{impl}-K{shots}-{dtype_name(dtype)}-{name}",
            )


def _run(impl: str, sim: torch.Tensor) -> torch.Tensor:
    if impl == "official":  # the official code runs in float32
        return official_sparsemax(sim.float()[None])[0]
    if impl in ("sort", "auto"):
        return sparsemax(sim, k=None if impl == "sort" else "auto")
    z = sim.float()
    threshold = michelot_threshold if impl == "michelot" else bisection_threshold
    return (z - z.amax(dim=-1, keepdim=True) - threshold(z)).clamp_min(0)


@functools.lru_cache(maxsize=4)
def _reference(shots: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    return _run("official", similarity(shots, device, dtype))


@pytest.mark.parametrize(("impl", "shots", "dtype", "device"), list(_cases()))
def test_sparsemax(benchmark, impl, shots, dtype, device):
    sim = similarity(shots, device, dtype)
    expected = _reference(shots, dtype, device)
    out = _run(impl, sim)
    atol = 1e-6 if dtype == torch.float32 else 4e-3  # bfloat16 output: 8 bits of mantissa
    torch.testing.assert_close(out.float(), expected, atol=atol, rtol=0)
    support = (expected > 0).sum(dim=-1).float()
    record(
        benchmark,
        "sparsemax",
        impl=impl,
        baseline=impl == "official",
        shots=shots,
        rows=sim.shape[0],
        columns=sim.shape[1],
        dtype=dtype_name(dtype),
        device=device,
        support_median=float(support.median()),
        support_max=float(support.max()),
    )
    timed(benchmark, lambda: _run(impl, sim), device, ROUNDS[shots])


@pytest.mark.parametrize("device", DEVICES)
def test_sparsemax_paired(benchmark, device):
    """K = 4: the official sort and ``k="auto"`` alternating round by round."""
    sim = similarity(4, device)
    out = _run("auto", sim)
    torch.testing.assert_close(out, _reference(4, torch.float32, device), atol=1e-6, rtol=0)
    result = paired(
        benchmark, lambda: _run("official", sim), lambda: _run("auto", sim), device, ROUNDS[4]
    )
    record(
        benchmark,
        "sparsemax_paired",
        impl="pair",
        baseline=False,
        shots=4,
        dtype="float32",
        device=device,
        **result,
    )


# ---------------------------------------------------------------- start width of k="auto"

START_WIDTHS = (16, 32, 64, 128)


@functools.lru_cache(maxsize=2)
def _sorted_threshold(shots: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    full = sorted_support(similarity(shots, device), None)
    return full.tau, full.support


def _start_cases():
    for device in DEVICES:
        (name,), marks = device.values, device.marks
        for shots in (4, 16):
            for width in START_WIDTHS:
                ident = f"k{width}-K{shots}-{name}"
                yield pytest.param(width, shots, name, marks=marks, id=ident)


@pytest.mark.parametrize(("width", "shots", "device"), list(_start_cases()))
def test_start_width(benchmark, width, shots, device):
    """The kernel inside ``retrieve``: the sorted support of every row, for start widths."""
    sim = similarity(shots, device)
    tau, support = _sorted_threshold(shots, device)
    top = sorted_support(sim, width)
    assert torch.equal(top.tau, tau)
    assert torch.equal(top.support, support)
    record(
        benchmark,
        "start_width",
        impl=f"k{width}",
        width=width,
        shots=shots,
        columns=sim.shape[1],
        dtype="float32",
        device=device,
        second_pass=float((support >= width).float().mean()),  # rows not resolved at first
    )
    timed(benchmark, lambda: sorted_support(sim, width), device, 5)
