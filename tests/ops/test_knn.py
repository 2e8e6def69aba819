"""Exact k-nearest-neighbour cosine distances (resad_kit.ops.knn; PatchCore Eq. 6).

Every property is checked against a naive loop written here independently of the library
(one query row and one bank row at a time, in float64).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck

import resad_kit
from resad_kit.ops import Neighbors, knn_distance
from resad_kit.ops._validation import VALUE_CHECKS_RUN


def _features(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _naive(query: torch.Tensor, bank: torch.Tensor, k: int) -> tuple[list, list]:
    """``(1 − cos)/2`` of one (N, D) query against one (M, D) bank, row by row."""
    distances, indices = [], []
    for q in query.tolist():
        row = []
        for j, b in enumerate(bank.tolist()):
            dot = sum(x * y for x, y in zip(q, b, strict=True))
            norm = math.sqrt(sum(x * x for x in q)) * math.sqrt(sum(y * y for y in b))
            row.append(((1 - dot / norm) / 2, j))
        row.sort()
        distances.append([d for d, _ in row[:k]])
        indices.append([j for _, j in row[:k]])
    return distances, indices


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 9),
    m=st.integers(1, 12),
    d=st.integers(1, 6),
    k=st.integers(1, 4),
)
def test_equals_naive_loop(seed, n, m, d, k):
    """Distances and neighbour indices equal the naive float64 loop (exact search)."""
    k = min(k, m)
    query, bank = _features(seed, n, d), _features(seed + 1, m, d)
    out = knn_distance(query, bank, k=k, return_index=True)
    want_d, want_i = _naive(query, bank, k)
    assert isinstance(out, Neighbors)
    torch.testing.assert_close(out.distance, torch.tensor(want_d, dtype=torch.float64))
    assert out.index.tolist() == want_i  # random float64 rows: no ties


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), chunk=st.integers(1, 40), k=st.integers(1, 3))
def test_chunking_invariance(seed, chunk, k):
    """Any chunk_size gives the same neighbours and (up to matmul rounding) distances."""
    query, bank = _features(seed, 2, 3, 17, 5), _features(seed + 1, 2, 1, 11, 5)
    whole = knn_distance(query, bank, k=k, return_index=True)
    chunked = knn_distance(query, bank, k=k, chunk_size=chunk, return_index=True)
    torch.testing.assert_close(chunked.distance, whole.distance, rtol=0, atol=1e-12)
    assert torch.equal(chunked.index, whole.index)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 3))
def test_bank_permutation_invariance(seed, k):
    """Permuting the bank permutes the indices and leaves the distances unchanged."""
    query, bank = _features(seed, 6, 4), _features(seed + 1, 9, 4)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(seed))
    base = knn_distance(query, bank, k=k, return_index=True)
    moved = knn_distance(query, bank[perm], k=k, return_index=True)
    torch.testing.assert_close(moved.distance, base.distance, rtol=0, atol=1e-12)
    assert torch.equal(perm[moved.index], base.index)


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    k=st.integers(1, 3),
    q_scale=st.floats(0.01, 100.0),
    b_scale=st.floats(0.01, 100.0),
)
def test_scale_invariance_and_query_permutation_equivariance(seed, k, q_scale, b_scale):
    """Only directions matter (positive row scales change nothing); permuting the query rows
    permutes the result rows."""
    query, bank = _features(seed, 2, 7, 4), _features(seed + 1, 9, 4)
    base = knn_distance(query, bank, k=k, return_index=True)
    scaled = knn_distance(q_scale * query, b_scale * bank, k=k, return_index=True)
    torch.testing.assert_close(scaled.distance, base.distance, rtol=0, atol=1e-12)
    assert torch.equal(scaled.index, base.index)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(seed))
    moved = knn_distance(query[:, perm], bank, k=k, return_index=True)
    torch.testing.assert_close(moved.distance, base.distance[:, perm], rtol=0, atol=1e-12)
    assert torch.equal(moved.index, base.index[:, perm])


@pytest.mark.parametrize("k", [1, 2])
def test_gradcheck_float64(k):
    """Distances are differentiable in query and bank: gradients match finite differences
    (random float64 rows: no ties between neighbours, distances away from the clamp)."""
    query = _features(6, 2, 2, 3).requires_grad_()
    bank = _features(7, 4, 3).requires_grad_()
    assert gradcheck(lambda q, b: knn_distance(q, b, k=k, chunk_size=2), (query, bank))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_searched_in_float32(dtype):
    """Half rows: the float32 search of the same (rounded) rows, returned in the query dtype."""
    query, bank = _features(8, 3, 6, 8).to(dtype), _features(9, 20, 8).to(dtype)
    out = knn_distance(query, bank, k=2, return_index=True)
    want = knn_distance(query.float(), bank.float(), k=2, return_index=True)
    assert out.distance.dtype == dtype
    assert torch.equal(out.index, want.index)
    torch.testing.assert_close(out.distance, want.distance.to(dtype), rtol=0, atol=0)


def test_query_in_bank_has_distance_zero_and_bounds():
    """A query row that is in the bank (any scale) is at distance 0; all are in [0, 1]."""
    bank = _features(0, 20, 8).float()
    query = torch.cat([3.0 * bank[[4, 11]], -bank[[7]], _features(1, 5, 8).float()])
    out = knn_distance(query, bank, return_index=True)
    torch.testing.assert_close(out.distance[:2, 0], torch.zeros(2), rtol=0, atol=1e-6)
    assert out.index[:2, 0].tolist() == [4, 11]
    far = knn_distance(query, bank, k=20)
    assert far.dtype == torch.float32
    assert bool((far >= 0).all())
    assert bool((far <= 1).all())
    torch.testing.assert_close(far[2, -1], torch.tensor(1.0), rtol=0, atol=1e-6)  # opposite
    assert bool((far.diff(dim=-1) >= 0).all())  # ascending


def test_batched_leading_dims_equal_per_bank_calls():
    """(L, B, N, D) against one bank per layer (L, 1, M, D) equals L·B separate calls."""
    query, bank = _features(2, 3, 2, 7, 4), _features(3, 3, 1, 10, 4)
    out = knn_distance(query, bank, k=2, return_index=True)
    assert out.distance.shape == out.index.shape == (3, 2, 7, 2)
    for layer in range(3):
        for b in range(2):
            one = knn_distance(query[layer, b], bank[layer, 0], k=2, return_index=True)
            torch.testing.assert_close(out.distance[layer, b], one.distance, rtol=0, atol=1e-12)
            assert torch.equal(out.index[layer, b], one.index)
    shared = knn_distance(query[:, :1], bank)  # query (3, 1, …) broadcast against 3 banks
    assert shared.shape == (3, 1, 7, 1)


def test_ties_go_to_the_first_bank_row_and_gradients_flow():
    """k=1 picks the first of equal bank rows; distances are differentiable."""
    bank = torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 0.0]])
    query = torch.tensor([[1.0, 0.0]], requires_grad=True)
    out = knn_distance(query, bank, return_index=True)
    assert out.index.tolist() == [[1]]
    knn_distance(query, bank, k=3).sum().backward()
    assert query.grad is not None
    assert bool(torch.isfinite(query.grad).all())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"query": torch.zeros(4)}, "at least 2 dimensions"),
        ({"bank": torch.zeros(3, 5)}, "D=4 channels"),
        ({"bank": torch.zeros(2, 3, 4), "query": torch.zeros(3, 2, 4)}, "must broadcast"),
        ({"k": 0}, "`k` must be an int in 1..M=3"),
        ({"k": 4}, "`k` must be an int in 1..M=3"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"return_index": 1}, "return_index"),
        ({"query": torch.full((2, 4), float("nan"))}, "`query` must be finite"),
        ({"bank": torch.zeros(3, 4, dtype=torch.int64)}, "float16"),
    ],
)
def test_invalid_inputs_raise_named_errors(kwargs, match):
    """Each invalid argument raises a ValueError that names it."""
    args = {"query": torch.ones(2, 4), "bank": torch.ones(3, 4)} | kwargs
    query, bank = args.pop("query"), args.pop("bank")
    with pytest.raises(ValueError, match=match):
        knn_distance(query, bank, **args)


def test_checks_off_runs_the_core_without_value_checks():
    """With resad_kit.checks(False) no check runs (no finiteness sync); results are equal."""
    query, bank = _features(4, 5, 3), _features(5, 7, 3)
    checked = knn_distance(query, bank, k=2)
    before = VALUE_CHECKS_RUN["knn_distance"]
    assert before > 0
    with resad_kit.checks(False):
        unchecked = knn_distance(query, bank, k=2)
        assert isinstance(knn_distance(query, bank, k=2, return_index=1), Neighbors)  # unchecked
    assert VALUE_CHECKS_RUN["knn_distance"] == before
    assert torch.equal(unchecked, checked)
