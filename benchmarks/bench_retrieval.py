"""Retrieval kernels: sparse versus dense aggregation, and ``retrieve`` end to end.

* ``aggregation``: Eq. 34 ``W·B`` with the sparse weights of one layer. Baseline: the
  official dense ``bmm`` of the ``N×M`` weights; fast: ``F.embedding_bag`` over the support.
* ``retrieve``: the visual-branch retrieval of one 518 px test image on all four tapped layers
  (Eq. 8, 33, 34 and the normalisation of the reference). Baseline:
  :func:`baselines.official_retrieval` (one image and one layer at a time, full sort, dense
  product); fast: one :func:`resad_kit.ops.retrieve` call with one bank per layer.
* ``retrieve_paired``: the key case (K = 4, D = 768) with both paths alternating round by
  round; ``floor``: the four similarity GEMMs alone.
* ``batched``: two test images, four layers: one ``retrieve`` call per image versus one call
  for all (bit-identical results).
* ``compiled`` (only with ``--compile``): ``retrieve(compile=True)`` versus eager.

The support sweep on CLIP-like features (the retrieval's cost against the GEMM floor from
supports of about 10 to about 300 per row) is in :mod:`bench_retrieval_support`.

Every fast case first checks its result against its baseline (whose own timed call produced
it), then is timed.
"""

from __future__ import annotations

import functools
import time

import pytest
import torch
import torch.nn.functional as F
from baselines import dense_aggregate, official_retrieval
from harness import (
    DEVICES,
    GAMMA,
    LAYERS,
    bank_radius,
    dtype_name,
    features,
    paired,
    record,
    support_stats,
    synchronize,
    timed,
)

import resad_kit.ops._retrieval_core as retrieval_module
from resad_kit.ops import SparseWeights, retrieve

SHOTS = (1, 2, 4, 8, 16)
# Rounds of the official path (seconds per call, up to 22 s at K = 16) and of the fast path.
OFFICIAL_ROUNDS = {1: 3, 2: 3, 4: 2, 8: 1, 16: 1}
FAST_ROUNDS = {1: 5, 2: 5, 4: 5, 8: 3, 16: 2}
PAIRED_ROUNDS = 7  # the key case (K = 4, D = 768, float32), paths alternating


def _params(grid):
    """``pytest.param``s of ``grid`` × every device, with ids like ``fast-K4-D768-float32-cpu``."""
    labels = ("", "K", "D", "")
    for device in DEVICES:
        (name,), marks = device.values, device.marks
        for case in grid:
            parts = [
                label + (dtype_name(c) if isinstance(c, torch.dtype) else str(c))
                for label, c in zip(labels, case, strict=False)
            ]
            yield pytest.param(*case, name, marks=marks, id="-".join([*parts, name]))


# ---------------------------------------------------------------- aggregation (Eq. 34)


@functools.lru_cache(maxsize=4)
def _weights(shots: int, dim: int, device: str) -> tuple[SparseWeights, torch.Tensor]:
    layer = features(shots, dim, device)[0]
    r_query, r_bank = bank_radius(shots, device)
    out = retrieve(layer.query[0], layer.bank, query_radius=r_query, bank_radius=r_bank)
    return out.weights, layer.bank


def _aggregate(impl: str, weights: SparseWeights, dense: torch.Tensor, bank: torch.Tensor):
    if impl == "dense":
        return dense_aggregate(dense[None], bank)[0]
    return F.embedding_bag(weights.indices, bank, per_sample_weights=weights.values, mode="sum")


_AGGREGATION = [(impl, k, 768) for k in SHOTS for impl in ("dense", "sparse")]
_AGGREGATION += [(impl, 4, 1024) for impl in ("dense", "sparse")]


@pytest.mark.parametrize(("impl", "shots", "dim", "device"), list(_params(_AGGREGATION)))
def test_aggregation(benchmark, impl, shots, dim, device):
    weights, bank = _weights(shots, dim, device)
    dense = weights.to_dense()
    expected = _aggregate("dense", weights, dense, bank)
    torch.testing.assert_close(_aggregate(impl, weights, dense, bank), expected, atol=1e-6, rtol=0)
    support = weights.support_size().float()
    record(
        benchmark,
        "aggregation",
        impl=impl,
        baseline=impl == "dense",
        shots=shots,
        dim=dim,
        dtype="float32",
        device=device,
        **support_stats(support),
    )
    timed(benchmark, lambda: _aggregate(impl, weights, dense, bank), device, FAST_ROUNDS[shots])


# ---------------------------------------------------------------- retrieve, four layers


def _layer_inputs(shots: int, dim: int, device: str, dtype: torch.dtype, images: int = 1):
    layers = features(shots, dim, device, dtype, images=images)
    return [f.query for f in layers], [f.bank for f in layers]


def _official(queries, banks, shots):
    # The official code runs in float32 whatever the storage dtype.
    return official_retrieval(
        [q.float() for q in queries], [b.float() for b in banks], GAMMA, shots
    )


def _stacked(banks) -> torch.Tensor:
    """``(L, 1, M, D)``: one normalised bank per layer, built once per class as the method
    does (outside the timed call, like the baseline's banks)."""
    key = tuple(b.data_ptr() for b in banks)
    if key not in _BANKS:
        _BANKS.clear()
        _BANKS[key] = torch.stack(banks)[:, None]
    return _BANKS[key]


_BANKS: dict[tuple[int, ...], torch.Tensor] = {}


def _fast(queries, banks, shots, device, chunk_size=None, compile=False):
    r_query, r_bank = bank_radius(shots, device)
    kwargs = {"chunk_size": chunk_size}
    if compile:
        kwargs["compile"] = True
    out = retrieve(
        torch.stack(queries),  # (L, B, N, D): the backbone's per-layer outputs
        _stacked(banks),
        query_radius=r_query,
        bank_radius=r_bank,
        gamma=GAMMA,
        normalize="query",  # the banks are normalised once per class
        **kwargs,
    )
    return list(F.normalize(out.reference.float(), dim=-1))  # the official code normalises


def _run(impl, queries, banks, shots, device):
    if impl == "official":
        return _official(queries, banks, shots)
    return _fast(queries, banks, shots, device, chunk_size=256 if impl == "chunked" else None)


_REFERENCE: dict[tuple, list[torch.Tensor]] = {}  # (L, N, D) outputs: 16 MiB each


def _official_reference(shots: int, dim: int, device: str, dtype: torch.dtype):
    """The official output for this input (kept from the official case's timed call)."""
    key = (shots, dim, device, dtype)
    if key not in _REFERENCE:
        _REFERENCE[key] = _official(*_layer_inputs(shots, dim, device, dtype), shots)
    return _REFERENCE[key]


_RETRIEVE = [(impl, k, 768, torch.float32) for k in SHOTS for impl in ("official", "fast")]
_RETRIEVE.insert(
    _RETRIEVE.index(("fast", 4, 768, torch.float32)) + 1, ("chunked", 4, 768, torch.float32)
)
_RETRIEVE += [(impl, 4, 1024, torch.float32) for impl in ("official", "fast")]
_RETRIEVE += [(impl, 4, 768, torch.bfloat16) for impl in ("official", "fast")]


@functools.lru_cache(maxsize=1)
def _supports(shots: int, dim: int, device: str, dtype: torch.dtype) -> dict[str, float]:
    """Sparsemax supports of the four layers (min, median, max over all rows)."""
    queries, banks = _layer_inputs(shots, dim, device, dtype)
    r_query, r_bank = bank_radius(shots, device)
    weights = retrieve(
        torch.stack(queries),
        _stacked(banks),
        query_radius=r_query,
        bank_radius=r_bank,
        normalize="query",
    ).weights
    return support_stats(weights.support_size())


@pytest.mark.parametrize(("impl", "shots", "dim", "dtype", "device"), list(_params(_RETRIEVE)))
def test_retrieve(benchmark, impl, shots, dim, dtype, device):
    queries, banks = _layer_inputs(shots, dim, device, dtype)
    official = impl == "official"
    if not official:  # the official output is the reference: nothing to check it against
        out = _run(impl, queries, banks, shots, device)
        atol = 1e-6 if dtype == torch.float32 else 2e-3  # bfloat16 output: 8 bits of mantissa
        for got, want in zip(out, _official_reference(shots, dim, device, dtype), strict=True):
            torch.testing.assert_close(got, want, atol=atol, rtol=0)
    record(
        benchmark,
        "retrieve",
        **_supports(shots, dim, device, dtype),
        impl=impl,
        baseline=official,
        shots=shots,
        dim=dim,
        dtype=dtype_name(dtype),
        device=device,
        layers=LAYERS,
        images=1,
    )
    rounds = OFFICIAL_ROUNDS[shots] if official else FAST_ROUNDS[shots]
    if (dim, dtype) != (768, torch.float32) or impl == "chunked":  # side cases: fewer rounds
        rounds = 1 if official else 3
    result = timed(benchmark, lambda: _run(impl, queries, banks, shots, device), device, rounds)
    if official:
        _REFERENCE[(shots, dim, device, dtype)] = result


@pytest.mark.parametrize(("shots", "device"), list(_params([(4,)])))
def test_retrieve_paired(benchmark, shots, device):
    """The key case (K = 4, D = 768) with the two paths alternating round by round."""
    queries, banks = _layer_inputs(shots, 768, device, torch.float32)
    expected = _official_reference(shots, 768, device, torch.float32)
    for got, want in zip(_fast(queries, banks, shots, device), expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    result = paired(
        benchmark,
        lambda: _official(queries, banks, shots),
        lambda: _fast(queries, banks, shots, device),
        device,
        PAIRED_ROUNDS,
    )
    record(
        benchmark,
        "retrieve_paired",
        impl="pair",
        baseline=False,
        shots=shots,
        dim=768,
        dtype="float32",
        device=device,
        layers=LAYERS,
        **result,
    )


@pytest.mark.parametrize(("shots", "device"), list(_params([(4,)])))
def test_similarity_floor(benchmark, shots, device):
    """The four similarity GEMMs alone: what no exact retrieval can skip (a lower bound)."""
    queries, banks = _layer_inputs(shots, 768, device, torch.float32)
    normalised = [F.normalize(q, dim=-1) for q in queries]

    def gemms():
        return [q @ b.T for q, b in zip(normalised, banks, strict=True)]

    for got, q, b in zip(gemms(), normalised, banks, strict=True):
        assert torch.equal(got, (q @ b[None].permute(0, 2, 1)))  # the official product
    record(
        benchmark,
        "floor",
        impl="gemm",
        baseline=False,
        shots=shots,
        dim=768,
        dtype="float32",
        device=device,
        layers=LAYERS,
    )
    timed(benchmark, gemms, device, FAST_ROUNDS[shots])


# ---------------------------------------------------------------- batched test images

IMAGES = 2


def _per_image(queries, banks, shots, device):
    parts = [_fast([q[i : i + 1] for q in queries], banks, shots, device) for i in range(IMAGES)]
    return [torch.cat([p[layer] for p in parts]) for layer in range(LAYERS)]


_PER_IMAGE: dict[str, list[torch.Tensor]] = {}


@pytest.mark.parametrize(("impl", "device"), list(_params([("per_image",), ("batched",)])))
def test_batched(benchmark, impl, device):
    shots = 4
    queries, banks = _layer_inputs(shots, 768, device, torch.float32, images=IMAGES)

    def run():
        if impl == "per_image":
            return _per_image(queries, banks, shots, device)
        return _fast(queries, banks, shots, device)

    if impl == "batched":
        if device not in _PER_IMAGE:
            _PER_IMAGE[device] = _per_image(queries, banks, shots, device)
        for got, want in zip(run(), _PER_IMAGE[device], strict=True):
            assert torch.equal(got, want)
    record(
        benchmark,
        "batched",
        impl=impl,
        baseline=impl == "per_image",
        shots=shots,
        dim=768,
        dtype="float32",
        device=device,
        layers=LAYERS,
        images=IMAGES,
    )
    result = timed(benchmark, run, device, 1)  # seconds per call: one round each
    if impl == "per_image":  # the reference of the batched call
        _PER_IMAGE[device] = result


# ---------------------------------------------------------------- torch.compile (opt-in)


@pytest.mark.parametrize("device", DEVICES)
def test_compiled(benchmark, request, device):
    """``retrieve(compile=True)`` against eager, alternating round by round (K = 4)."""
    if not request.config.getoption("--compile"):
        pytest.skip("torch.compile case: run with --compile")
    shots = 4
    queries, banks = _layer_inputs(shots, 768, device, torch.float32)
    expected = _fast(queries, banks, shots, device)
    start = time.perf_counter()  # the first call compiles
    first = _fast(queries, banks, shots, device, compile=True)
    synchronize(device)
    first_call_s = time.perf_counter() - start
    for got, want in zip(first, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    failure = retrieval_module._COMPILED_SIMILARITY.error
    result = paired(
        benchmark,
        lambda: _fast(queries, banks, shots, device),
        lambda: _fast(queries, banks, shots, device, compile=True),
        device,
        PAIRED_ROUNDS,
    )
    record(
        benchmark,
        "compiled",
        impl="pair",
        baseline=False,
        shots=shots,
        dim=768,
        dtype="float32",
        device=device,
        layers=LAYERS,
        first_call_s=first_call_s,
        compile_error=None if failure is None else repr(failure),
        **result,
    )
