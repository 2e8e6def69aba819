"""``retrieve`` against its GEMM floor across realistic sparsemax supports (issue 19).

* ``support_sweep``: :func:`resad_kit.ops.retrieve` (four layers in one call, K = 4,
  N = 1,369, D = 1,024, banks normalised once per class) against the four similarity GEMMs
  alone (the floor: what no exact retrieval can skip), alternating round by round, on
  CLIP-like features (:func:`synthetic.clip_like_features`) whose median sparsemax support
  goes from about 10 to about 300 entries per row (:data:`synthetic.SUPPORT_CASES`; the
  measured supports, min/median/max over all rows and layers, are recorded with every case).
  The default case ``s150`` has supports in the range measured through the official pipeline
  on real images (min 6, median ≈ 150, max 224) and alternates the official path too.
* ``stages``: the same inputs, ``retrieve``'s stages timed one by one (:mod:`stages`): where
  the time beyond the floor goes.

Every case first checks ``retrieve`` against the official path (:mod:`baselines`).
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from baselines import official_retrieval
from harness import (
    DEVICES,
    GAMMA,
    LAYERS,
    SIDE,
    alternating,
    bank_radius,
    record,
    support_stats,
    timed,
)
from stages import stage_times
from synthetic import SUPPORT_CASES, clip_like_features

from resad_kit.ops import retrieve

# ---------------------------------------------------------------- support sweep (issue 19)

SWEEP_DIM, SWEEP_ROUNDS, DEFAULT_CASE = 1024, 3, "s150"


@functools.lru_cache(maxsize=1)
def _clip_like(case: str, device: str):
    """``(L, 1, N, D)`` queries and ``(L, 1, M, D)`` normalised banks of one sweep case."""
    layers = [
        clip_like_features(SIDE, 4, SWEEP_DIM, SUPPORT_CASES[case], seed=layer)
        for layer in range(LAYERS)
    ]
    queries = torch.stack([f.query for f in layers]).to(device)
    return queries, torch.stack([f.bank for f in layers])[:, None].to(device)


_CASES = [
    pytest.param(case, *device.values, marks=device.marks, id=f"{case}-{device.values[0]}")
    for device in DEVICES
    for case in SUPPORT_CASES
]


@pytest.mark.parametrize(("case", "device"), _CASES)
def test_support_sweep(benchmark, case, device):
    """``retrieve`` (4 layers, K = 4) against the four GEMMs alone, alternating."""
    queries, banks = _clip_like(case, device)
    r_query, r_bank = bank_radius(4, device)
    unit = F.normalize(queries, dim=-1)

    def fast():
        return retrieve(
            queries,
            banks,
            query_radius=r_query,
            bank_radius=r_bank,
            gamma=GAMMA,
            normalize="query",
        )

    def floor():
        return [unit[layer, 0] @ banks[layer, 0].T for layer in range(LAYERS)]

    def official():
        return official_retrieval(list(queries), list(banks[:, 0]), GAMMA, 4)

    out = fast()
    expected = official()
    for got, want in zip(F.normalize(out.reference.float(), dim=-1), expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    fns = {"fast": fast, "floor": floor}
    if case == DEFAULT_CASE:
        fns = {"official": official, **fns}
    result = alternating(benchmark, fns, device, SWEEP_ROUNDS)
    record(
        benchmark,
        "support_sweep",
        impl="pair",
        baseline=False,
        case=case,
        default=case == DEFAULT_CASE,
        shots=4,
        dim=SWEEP_DIM,
        dtype="float32",
        device=device,
        layers=LAYERS,
        rounds=SWEEP_ROUNDS,
        **support_stats(out.weights.support_size()),
        **result,
    )


@pytest.mark.parametrize("case", list(SUPPORT_CASES))
def test_stages(benchmark, case):
    """The stages of ``retrieve`` on the sweep's inputs, one by one (CPU)."""
    queries, banks = _clip_like(case, "cpu")
    r_query, r_bank = bank_radius(4, "cpu")
    unit = F.normalize(queries, dim=-1)
    stages = timed(
        benchmark, lambda: stage_times(unit, banks, r_query, r_bank, GAMMA, rounds=2), "cpu", 1
    )
    record(
        benchmark,
        "stages",
        impl="stages",
        baseline=False,
        case=case,
        shots=4,
        dim=SWEEP_DIM,
        dtype="float32",
        device="cpu",
        layers=LAYERS,
        **stages,
    )
