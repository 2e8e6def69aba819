"""The sync-free ``k="dense"`` path of retrieve and sparsemax (Eq. 8, 33–34).

What the tests prove:

* ``retrieve(k="dense")`` gives the weights of ``k="auto"`` bit for bit: the same support in
  the same slots (weight descending, ties in bank order), then weight 0 and index 0 up to
  ``S = M``; its reference (a dense GEMM) equals the gather-and-sum to float rounding, and
  both equal a float64 dense reference written with entmax;
* with any chunking (weights equal to ``"auto"``'s at the same chunking), and no similarity
  block is larger than ``chunk × M``;
* its gradients pass ``gradcheck`` in float64 and equal those of ``k="auto"``;
* ``sparsemax`` and ``sparsemax_threshold`` with ``k="dense"`` equal the full sort bit for bit
  (and their gradients), ties included.
(That it reads nothing on the host is tested in tests/test_checks.py.)
"""

from __future__ import annotations

import entmax
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import resad_kit.ops._retrieval_core as retrieval_module
from resad_kit.ops import radial_distance, retrieve, sparsemax, sparsemax_threshold


def _features(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _assert_dense_extends_auto(dense, auto):
    """Dense weights: auto's ``S`` slots bit for bit, then weight 0, index 0 up to ``M``."""
    m = auto.weights.num_entries
    s = auto.weights.values.shape[-1]
    assert dense.weights.num_entries == m
    assert dense.weights.values.shape == (*auto.weights.values.shape[:-1], m)
    assert torch.equal(dense.weights.values[..., :s], auto.weights.values)
    assert torch.equal(dense.weights.indices[..., :s], auto.weights.indices)
    assert not dense.weights.values[..., s:].any()
    assert not dense.weights.indices[..., s:].any()
    assert torch.equal(dense.weights.to_dense(), auto.weights.to_dense())
    assert dense.reference.dtype == auto.reference.dtype


@given(
    lead=st.sampled_from([(), (2,), (2, 3)]),
    n=st.integers(1, 40),
    m=st.integers(1, 60),
    duplicates=st.integers(1, 3),
    radii=st.sampled_from(["none", "periodic", "arbitrary"]),
    per_layer_bank=st.booleans(),
    chunk=st.one_of(st.none(), st.integers(1, 150)),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=30)
def test_dense_weights_equal_auto_bit_for_bit(
    lead, n, m, duplicates, radii, per_layer_bank, chunk, seed
):
    query = _features(seed, *lead, n, 6)
    bank_lead = lead[:1] + (1,) * len(lead[1:]) if per_layer_bank else ()
    rows = n * (1 + m % 3) if radii == "periodic" else m  # periodic: K shots of the N patches
    bank = torch.cat([_features(seed + 1, *bank_lead, rows, 6)] * duplicates, dim=-2)  # ties
    g = torch.Generator().manual_seed(seed + 2)
    kwargs = {"chunk_size": chunk}
    if radii == "periodic":  # the layout whose period k="auto" detects (and "dense" does not)
        r = torch.rand(n, generator=g) * 3
        kwargs |= {"query_radius": r, "bank_radius": r.repeat(bank.shape[-2] // n)}
    elif radii == "arbitrary":
        kwargs |= {
            "query_radius": torch.rand(n, generator=g),
            "bank_radius": torch.rand(bank.shape[-2], generator=g) * 3,
        }
    auto = retrieve(query, bank, **kwargs)
    dense = retrieve(query, bank, k="dense", **kwargs)
    _assert_dense_extends_auto(dense, auto)
    # unit rows, weights summing to one: the two sums differ by a few float32 ulps
    torch.testing.assert_close(dense.reference, auto.reference, atol=1e-6, rtol=0)


def test_ties_are_listed_in_bank_order():
    """Exactly tied similarities (a bank of repeated rows): the full stable sort keeps bank
    order without the tie check of the sparse path."""
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    bank = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    dense = retrieve(query, bank, k="dense", normalize=False)
    third = torch.tensor([1 / 3])
    expected_values = torch.cat([third.expand(2, 3), torch.zeros(2, 2)], dim=-1)
    assert torch.equal(dense.weights.indices, torch.tensor([[1, 2, 4, 0, 0], [0, 3, 0, 0, 0]]))
    torch.testing.assert_close(dense.weights.values[0], expected_values[0], atol=0, rtol=0)
    torch.testing.assert_close(dense.weights.values[1, :2], torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(dense.reference, query)


def test_dense_equals_an_independent_float64_reference():
    """Eq. 8, 33, 34 written out with entmax's sparsemax (float64, tight tolerance)."""
    h = w = 5
    query = _features(30, 3, h * w, 8).double()
    bank = _features(31, 2 * h * w, 8).double()
    r = radial_distance(h, w, dtype=torch.float64)
    out = retrieve(query, bank, query_radius=r, bank_radius=r.repeat(2), gamma=0.2, k="dense")
    q, b = F.normalize(query, dim=-1), F.normalize(bank, dim=-1)
    sim = q @ b.T - 0.2 * (r[:, None] - r.repeat(2)[None, :]).abs()
    weights = entmax.sparsemax(sim, dim=-1)
    torch.testing.assert_close(out.weights.to_dense(), weights, atol=1e-12, rtol=0)
    torch.testing.assert_close(out.reference, weights @ b, atol=1e-12, rtol=0)


@pytest.mark.parametrize("chunk", [1, 64, 100, None])
def test_dense_chunks_agree_with_auto_at_the_same_chunking(chunk):
    """Per-image banks, blocks that split images: weights equal ``"auto"``'s with the same
    chunks bit for bit, and the unchunked ones to float rounding (BLAS may round a row of the
    similarity GEMM differently at another position in the block, for ``"auto"`` too)."""
    query, bank = _features(50, 2, 33, 6), _features(51, 2, 4, 6)
    kwargs = {"query_radius": torch.rand(33), "bank_radius": torch.rand(4) * 3}
    auto = retrieve(query, bank, chunk_size=chunk, **kwargs)
    dense = retrieve(query, bank, chunk_size=chunk, k="dense", **kwargs)
    _assert_dense_extends_auto(dense, auto)
    whole = retrieve(query, bank, k="dense", **kwargs)
    torch.testing.assert_close(dense.reference, whole.reference, atol=1e-6, rtol=0)
    torch.testing.assert_close(dense.weights.values, whole.weights.values, atol=1e-6, rtol=0)


def test_dense_blocks_are_bounded_by_the_chunk(monkeypatch):
    """One ``chunk × M`` similarity block at a time (chunks rounded up to 64 rows)."""
    seen = []
    original = retrieval_module._dense_block

    def spy(sim, *args):
        seen.append(tuple(sim.shape))
        return original(sim, *args)

    monkeypatch.setattr(retrieval_module, "_dense_block", spy)
    retrieve(_features(4, 3, 49, 8), _features(5, 98, 8), chunk_size=10, k="dense")
    assert seen == [(64, 98), (64, 98), (19, 98)]


def test_screened_bank_sizes_are_bit_identical():
    """A bank over ``SCREEN_MIN_COLUMNS`` entries, where ``"auto"`` screens by block maxima."""
    g = torch.Generator().manual_seed(7)
    fields = F.avg_pool2d(torch.randn(1, 32, 16, 16, generator=g), 3, 1, 1)[0]
    base = fields.flatten(1).T  # (256, 32), spatially smooth: supports of a few tens
    shots = base + 0.3 * torch.randn(10, 256, 32, generator=g)
    bank, query = shots[:9].reshape(-1, 32), shots[9:]  # M = 2,304
    r = radial_distance(16, 16)
    kwargs = {"query_radius": r, "bank_radius": r.repeat(9)}
    auto = retrieve(query, bank, **kwargs)
    assert 1 < auto.weights.support_size().float().mean() < 100
    dense = retrieve(query, bank, k="dense", **kwargs)
    _assert_dense_extends_auto(dense, auto)
    torch.testing.assert_close(dense.reference, auto.reference, atol=1e-6, rtol=0)


def test_dense_gradcheck_float64_and_equal_to_auto():
    r = radial_distance(2, 3, dtype=torch.float64)
    query = _features(11, 2, 6, 4).double().requires_grad_(True)
    bank = _features(12, 12, 4).double().requires_grad_(True)

    def reference(q, b, k):
        return retrieve(
            q, b, query_radius=r, bank_radius=r.repeat(2), gamma=0.1, k=k, chunk_size=5
        ).reference

    assert torch.autograd.gradcheck(
        lambda q, b: reference(q, b, "dense"), (query, bank), fast_mode=True
    )
    seed = _features(13, 2, 6, 4).double()
    grads = {
        k: torch.autograd.grad((reference(query, bank, k) * seed).sum(), (query, bank))
        for k in ("auto", "dense")
    }
    for a, d in zip(grads["auto"], grads["dense"], strict=True):
        torch.testing.assert_close(d, a, atol=1e-12, rtol=0)


@given(
    rows=st.integers(1, 6),
    m=st.integers(1, 80),
    duplicates=st.integers(1, 3),
    scale=st.sampled_from([0.05, 1.0, 8.0]),
    seed=st.integers(0, 2**16),
)
def test_sparsemax_dense_equals_the_full_sort(rows, m, duplicates, scale, seed):
    x = (_features(seed, rows, m) * scale).repeat(1, duplicates)  # exact ties
    assert torch.equal(sparsemax(x, k="dense"), sparsemax(x))
    assert torch.equal(sparsemax(x, dim=0, k="dense"), sparsemax(x, dim=0))
    assert torch.equal(sparsemax_threshold(x, k="dense"), sparsemax_threshold(x))


def test_sparsemax_dense_gradient_and_bad_k():
    x = _features(40, 3, 7).double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: sparsemax(t, k="dense"), (x,))
    with pytest.raises(ValueError, match='`k` must be None, "auto", "dense" or a positive int'):
        sparsemax(x, k="sort")


@pytest.mark.gpu
def test_dense_on_cuda_runs_without_sync_and_matches_cpu():
    r = radial_distance(37, 37)
    query, bank = _features(15, 2, 1369, 64), _features(16, 4 * 1369, 64)
    kwargs = {"query_radius": r, "bank_radius": r.repeat(4), "k": "dense", "chunk_size": 512}
    cpu = retrieve(query, bank, **kwargs)
    cuda_kwargs = {key: (v.cuda() if torch.is_tensor(v) else v) for key, v in kwargs.items()}
    torch.cuda.set_sync_debug_mode("error")
    try:
        gpu = retrieve(query.cuda(), bank.cuda(), **cuda_kwargs)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.testing.assert_close(gpu.reference.cpu(), cpu.reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(gpu.weights.to_dense().cpu(), cpu.weights.to_dense(), atol=1e-5)
