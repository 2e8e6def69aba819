"""Radial penalty and sparsemax retrieval (Res²CLIP Sec. 3.2.3, Eq. 8; App. C, Eq. 33–34)."""

from __future__ import annotations

import math

import entmax
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import resad_kit.ops._retrieval_core as retrieval_module
from resad_kit.ops import Retrieval, SparseWeights, radial_distance, radial_penalty, retrieve
from resad_kit.ops._compile import Compiled


def _dense_reference(query, bank, r_query=None, r_bank=None, gamma=0.0):
    """Eq. 8, 33, 34 written out densely with entmax's sparsemax (independent of resad_kit)."""
    q = F.normalize(query.double(), dim=-1)
    b = F.normalize(bank.double(), dim=-1)
    sim = q @ b.transpose(-1, -2)
    if r_query is not None:
        sim = sim - gamma * (r_query.double()[:, None] - r_bank.double()[None, :]).abs()
    weights = entmax.sparsemax(sim, dim=-1)
    return weights @ b, weights


def _features(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- radial distance and penalty


def test_radial_distance_paper_grid():
    r = radial_distance(37, 37)
    assert r.shape == (1369,)
    assert r.dtype == torch.float32
    assert r[18 * 37 + 18] == 0  # centre patch (18, 18)
    torch.testing.assert_close(r.max(), torch.tensor(18 * math.sqrt(2)))
    grid = r.reshape(37, 37)
    assert torch.equal(grid, grid.flip(0))
    assert torch.equal(grid, grid.flip(1))
    assert torch.equal(grid, grid.T)


def test_radial_distance_non_square_row_major():
    r = radial_distance(2, 3, dtype=torch.float64)
    expected = [math.hypot(y - 0.5, x - 1.0) for y in range(2) for x in range(3)]
    torch.testing.assert_close(r, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_radial_distance_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match="`h`"):
        radial_distance(bad, 3)


def test_radial_penalty_properties_k1_and_tiling():
    """Eq. 8 penalty in patch-grid units (hito2448/Res2CLIP `models/knn.py`): symmetric for
    K=1, zero diagonal, maximum 18√2·γ; K shots tile columns."""
    r = radial_distance(37, 37)
    p = radial_penalty(r, r, gamma=0.01)
    assert p.shape == (1369, 1369)
    assert torch.equal(p, p.T)
    assert (p.diagonal() == 0).all()
    torch.testing.assert_close(p.max(), torch.tensor(0.01 * 18 * math.sqrt(2)))
    p4 = radial_penalty(r, r.repeat(4), gamma=0.01)
    assert torch.equal(p4, p.repeat(1, 4))


def test_radial_penalty_leading_dims_and_errors():
    rq, rb = torch.rand(2, 5), torch.rand(2, 7)
    assert radial_penalty(rq, rb, 0.5).shape == (2, 5, 7)
    with pytest.raises(ValueError, match="`gamma`"):
        radial_penalty(rq, rb, -0.1)
    with pytest.raises(ValueError, match="`r_bank`"):
        radial_penalty(rq, torch.tensor([math.nan]))


# ---------------------------------------------------------------- retrieve: reference tests


@pytest.mark.parametrize("gamma", [0.0, 0.01, 0.2])
@pytest.mark.parametrize("k", [None, 4])
def test_retrieve_equals_dense_reference(gamma, k):
    h = w = 6
    shots = 3
    query = _features(0, h * w, 16)
    bank = _features(1, shots * h * w, 16)
    r = radial_distance(h, w)
    out = retrieve(query, bank, query_radius=r, bank_radius=r.repeat(shots), gamma=gamma, k=k)
    ref, weights = _dense_reference(query, bank, r, r.repeat(shots), gamma)
    torch.testing.assert_close(out.reference.double(), ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.weights.to_dense().double(), weights, atol=1e-6, rtol=0)


def test_retrieve_float64_matches_reference_tightly():
    query, bank = _features(2, 3, 25, 8).double(), _features(3, 50, 8).double()
    out = retrieve(query, bank)
    for i in range(3):
        ref, _ = _dense_reference(query[i], bank)
        torch.testing.assert_close(out.reference[i], ref, atol=1e-12, rtol=0)


@given(
    n=st.integers(1, 20),
    m=st.integers(1, 30),
    d=st.integers(1, 12),
    gamma=st.sampled_from([0.0, 0.01, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_repeated_bank_feature_is_returned(n, m, d, gamma, seed):
    """A bank made of one repeated feature: every query retrieves exactly that feature."""
    query = _features(seed, n, d)
    feature = _features(seed + 1, d)
    bank = feature.expand(m, d)
    out = retrieve(
        query, bank, query_radius=torch.rand(n), bank_radius=torch.rand(m) * 5, gamma=gamma
    )
    expected = F.normalize(feature, dim=0).expand(n, d)
    # float32 sums of up to 30 weights: a few ulps of 1
    torch.testing.assert_close(out.reference, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.weights.values.sum(-1), torch.ones(n), atol=1e-5, rtol=0)


@given(
    batch=st.integers(1, 3),
    n=st.integers(1, 90),
    m=st.integers(1, 40),
    chunk=st.integers(1, 200),
    k=st.one_of(st.none(), st.integers(1, 8)),
    per_query_bank=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_chunked_equals_unchunked(batch, n, m, chunk, k, per_query_bank, seed):
    query = _features(seed, batch, n, 6)
    bank = _features(seed + 1, *((batch,) if per_query_bank else ()), m, 6)
    rq, rb = torch.rand(n), torch.rand(m) * 3
    full = retrieve(query, bank, query_radius=rq, bank_radius=rb)
    chunked = retrieve(query, bank, query_radius=rq, bank_radius=rb, k=k, chunk_size=chunk)
    assert torch.equal(full.reference, chunked.reference)
    assert torch.equal(full.weights.values, chunked.weights.values)
    assert torch.equal(full.weights.indices, chunked.weights.indices)


@given(
    n=st.integers(1, 30),
    m=st.integers(1, 100),
    duplicates=st.integers(1, 4),
    scale=st.sampled_from([0.05, 1.0, 8.0]),
    seed=st.integers(0, 2**16),
)
def test_every_k_gives_identical_tensors(n, m, duplicates, scale, seed):
    """Sort, top-k and adaptive paths: same reference, same indices (ties in bank order)."""
    query = _features(seed, n, 5)
    bank = (_features(seed + 1, m, 5) * scale).repeat(duplicates, 1)  # exact ties
    expected = retrieve(query, bank, k=None, normalize=False)
    for k in (1, 2, "auto"):
        out = retrieve(query, bank, k=k, normalize=False)
        assert torch.equal(out.reference, expected.reference)
        assert torch.equal(out.weights.indices, expected.weights.indices)
        assert torch.equal(out.weights.values, expected.weights.values)
    w = expected.weights
    tied = w.values[..., :-1] == w.values[..., 1:]
    support = w.values[..., 1:] > 0
    assert (w.indices[..., :-1] < w.indices[..., 1:])[tied & support].all()


@pytest.mark.slow  # a few seconds: full sorts of 2,738 × 2,738 similarities
def test_realistic_sizes_are_bit_identical_for_every_path():
    """N=1369 query patches of 2 images, a 2-shot bank, D=64: chunks, k and batching agree."""
    generator = torch.Generator().manual_seed(17)
    fields = torch.randn(1, 64, 37, 37, generator=generator)
    fields = F.avg_pool2d(fields, 5, stride=1, padding=2, count_include_pad=False)[0]
    base = fields.flatten(1).T  # spatially smooth features: supports of a few tens
    shots = base + 0.3 * torch.randn(4, 1369, 64, generator=generator)
    bank, query = shots[:2].reshape(-1, 64), shots[2:]
    r = radial_distance(37, 37)
    kwargs = {"query_radius": r, "bank_radius": r.repeat(2)}
    expected = retrieve(query, bank, k=None, **kwargs)
    assert 2 < expected.weights.support_size().float().mean() < 64
    for k, chunk in (("auto", None), ("auto", 300), (16, 1369), (None, 64)):
        out = retrieve(query, bank, k=k, chunk_size=chunk, **kwargs)
        assert torch.equal(out.reference, expected.reference)
        assert torch.equal(out.weights.indices, expected.weights.indices)
    single = retrieve(query[1], bank, **kwargs)
    assert torch.equal(single.reference, expected.reference[1])


def test_one_bank_per_layer_broadcasts_over_images():
    """query (L, B, N, D) with bank (L, 1, M, D): each layer's bank for all its images."""
    query, bank = _features(20, 3, 2, 12, 6), _features(21, 3, 1, 20, 6)
    out = retrieve(query, bank, chunk_size=5)
    assert out.reference.shape == (3, 2, 12, 6)
    for layer in range(3):
        single = retrieve(query[layer], bank[layer, 0])
        assert torch.equal(out.reference[layer], single.reference)
        width = single.weights.values.shape[-1]
        assert torch.equal(out.weights.values[layer, ..., :width], single.weights.values)
        assert (out.weights.values[layer, ..., width:] == 0).all()
    per_image = retrieve(query, bank.expand(3, 2, 20, 6))
    assert torch.equal(per_image.reference, out.reference)
    shared = retrieve(query, bank[0, 0])
    assert torch.equal(shared.reference, retrieve(query, bank[:1]).reference)


def test_penalised_layers_equal_separate_calls():
    """The penalty table computed for the first layer's block and reused for the others gives
    what each layer's own call gives (default whole-layer blocks, and 64-row chunks whose
    spans differ from layer to layer)."""
    query, bank = _features(40, 3, 3, 16, 6), _features(41, 3, 1, 48, 6)  # 48-row layers
    r = radial_distance(4, 4)
    radii = {"query_radius": r, "bank_radius": r.repeat(3), "gamma": 0.1}
    for chunk in (None, 8):
        out = retrieve(query, bank, chunk_size=chunk, **radii)
        for layer in range(3):
            single = retrieve(query[layer], bank[layer, 0], **radii)
            assert torch.equal(out.reference[layer], single.reference)
            width = single.weights.values.shape[-1]
            assert torch.equal(out.weights.values[layer, ..., :width], single.weights.values)
            assert torch.equal(out.weights.indices[layer, ..., :width], single.weights.indices)


def test_normalize_query_only_for_a_normalised_bank():
    query, bank = _features(26, 2, 20, 8), F.normalize(_features(27, 60, 8), dim=-1)
    r = torch.rand(20)
    kwargs = {"query_radius": r, "bank_radius": torch.rand(60), "gamma": 0.05}
    out = retrieve(query, bank, normalize="query", **kwargs)
    manual = retrieve(F.normalize(query, dim=-1), bank, normalize=False, **kwargs)
    assert torch.equal(out.reference, manual.reference)
    both = retrieve(query, bank, **kwargs)  # re-normalising a unit bank moves it by ulps only
    torch.testing.assert_close(out.reference, both.reference, atol=1e-6, rtol=0)
    assert torch.equal(out.weights.indices, both.weights.indices)


def test_finite_screen_raises_with_counts_and_passes_overflowing_sums():
    bank = torch.randn(5, 8)
    bank[1, 2], bank[3, 0] = math.nan, -math.inf
    with pytest.raises(ValueError, match=r"`bank` must be finite; got 1 NaN and 1 infinite"):
        retrieve(torch.randn(4, 8), bank)
    huge = torch.full((4, 8), 3e38)  # finite, but its sum overflows float32
    out = retrieve(huge, torch.randn(5, 8))
    assert torch.isfinite(out.reference).all()


@pytest.fixture
def fresh_compiled(monkeypatch):
    """Fresh compile wrappers, so that no state leaks between tests."""
    for name, fn in (
        ("_COMPILED_SIMILARITY", retrieval_module._similarity),
        ("_COMPILED_SUPPORT_WEIGHTS", retrieval_module._support_weights),
    ):
        monkeypatch.setattr(retrieval_module, name, Compiled(fn))
    return retrieval_module  # fmt: skip


def test_compile_falls_back_to_eager_when_unavailable(monkeypatch, fresh_compiled):
    def unavailable(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", unavailable)
    query, bank = _features(22, 2, 30, 8), _features(23, 50, 8)
    r = torch.rand(30)
    kwargs = {"query_radius": r, "bank_radius": torch.rand(50), "chunk_size": 20}
    eager = retrieve(query, bank, **kwargs)
    out = retrieve(query, bank, compile=True, **kwargs)
    assert torch.equal(out.reference, eager.reference)
    assert torch.equal(out.weights.indices, eager.weights.indices)
    for wrapper in (fresh_compiled._COMPILED_SIMILARITY, fresh_compiled._COMPILED_SUPPORT_WEIGHTS):
        assert isinstance(wrapper.error, RuntimeError)


@pytest.mark.slow  # TorchDynamo tracing takes a few seconds on 2 cores
def test_compile_traces_the_kernels(monkeypatch, fresh_compiled):
    """The wrapped kernels go through TorchDynamo (eager backend: no C++ build in the test)."""
    real_compile = torch.compile
    calls = []

    def traced(fn, **kwargs):
        calls.append(fn.__name__)
        return real_compile(fn, backend="eager", **kwargs)

    monkeypatch.setattr(torch, "compile", traced)
    query, bank = _features(24, 40, 8), _features(25, 90, 8)
    r = torch.rand(40)
    kwargs = {"query_radius": r, "bank_radius": torch.rand(90), "gamma": 0.1}
    out = retrieve(query, bank, compile=True, **kwargs)
    eager = retrieve(query, bank, **kwargs)
    torch.testing.assert_close(out.reference, eager.reference, atol=1e-6, rtol=0)
    assert torch.equal(out.weights.indices, eager.weights.indices)
    assert sorted(calls) == ["_similarity", "_support_weights"]
    assert fresh_compiled._COMPILED_SIMILARITY.error is None


def test_chunk_size_bounds_the_similarity_block(monkeypatch):
    """No similarity block larger than chunk_size × M is ever formed."""
    seen = []
    original = retrieval_module._sparse_sparsemax

    def spy(sim, *args):
        seen.append(tuple(sim.shape))
        return original(sim, *args)

    monkeypatch.setattr(retrieval_module, "_sparse_sparsemax", spy)
    retrieve(_features(4, 3, 49, 8), _features(5, 98, 8), chunk_size=10)
    assert seen == [(64, 98), (64, 98), (19, 98)]  # 147 rows, chunks of 10 rounded up to 64
    seen.clear()
    retrieve(_features(4, 300, 8), _features(5, 98, 8), chunk_size=100)
    assert seen == [(128, 98), (128, 98), (44, 98)]


def test_per_query_bank_equals_separate_calls():
    query, bank = _features(6, 2, 3, 10, 5), _features(7, 2, 3, 12, 5)
    out = retrieve(query, bank, k=3)
    for i in range(2):
        for j in range(3):
            single = retrieve(query[i, j], bank[i, j])
            torch.testing.assert_close(out.reference[i, j], single.reference, atol=0, rtol=0)
            torch.testing.assert_close(
                out.weights.to_dense()[i, j], single.weights.to_dense(), atol=0, rtol=0
            )


def test_sparse_weights_form():
    out = retrieve(_features(8, 4, 20, 8), _features(9, 60, 8))
    assert isinstance(out, Retrieval)
    assert isinstance(out.weights, SparseWeights)
    reference, w = out  # a NamedTuple: unpacks as (reference, weights)
    assert reference is out.reference
    assert w.indices.dtype == torch.int64
    assert w.indices.shape == w.values.shape == (4, 20, w.values.shape[-1])
    assert w.num_entries == 60
    assert ((w.indices >= 0) & (w.indices < 60)).all()
    values = w.values
    assert (values[..., :-1] >= values[..., 1:]).all()  # largest first
    assert (w.support_size() >= 1).all()
    assert torch.equal(w.support_size(), (w.to_dense() > 0).sum(-1))
    torch.testing.assert_close(w.to_dense().sum(-1), torch.ones(4, 20), atol=1e-6, rtol=0)


def test_own_patch_retrieved_when_margin_is_at_least_one():
    """γ=0 and the query in the bank with a similarity margin ≥ 1 → exact copy (App. C)."""
    query = torch.eye(6) * 3.0  # self-similarity 9, cross-similarity 0 (dot products)
    bank = torch.cat([torch.eye(6) * 3.0, torch.zeros(2, 6)])
    out = retrieve(query, bank, normalize=False)
    assert torch.equal(out.reference, query)
    assert torch.equal(out.weights.support_size(), torch.ones(6, dtype=torch.int64))


def test_radial_penalty_steers_retrieval():
    """Two identical bank features at different radii: the penalty picks the same-radius one."""
    feature = _features(10, 1, 4)
    bank = feature.repeat(2, 1)
    query_radius, bank_radius = torch.tensor([0.0]), torch.tensor([0.0, 200.0])
    out = retrieve(feature, bank, query_radius=query_radius, bank_radius=bank_radius, gamma=0.01)
    assert out.weights.indices[0, 0] == 0
    assert out.weights.values[0, 0] == 1.0
    flat = retrieve(feature, bank, query_radius=query_radius, bank_radius=bank_radius, gamma=0.0)
    torch.testing.assert_close(flat.weights.to_dense(), torch.tensor([[0.5, 0.5]]))


def test_gradcheck_float64():
    r = radial_distance(3, 3, dtype=torch.float64)
    query = _features(11, 9, 5).double().requires_grad_(True)
    bank = _features(12, 18, 5).double().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda q, b: retrieve(q, b, query_radius=r, bank_radius=r.repeat(2), gamma=0.1).reference,
        (query, bank),
    )


def test_dtypes_and_device(dtype, device):
    query = _features(13, 2, 16, 8).to(device)
    bank = _features(14, 32, 8).to(device)
    out = retrieve(query.to(dtype), bank.to(dtype), chunk_size=7)
    assert out.reference.dtype == dtype
    assert out.reference.device.type == device.type
    assert out.weights.values.dtype == torch.float32
    ref32 = retrieve(query.to(dtype).float(), bank.to(dtype).float()).reference
    torch.testing.assert_close(out.reference.float(), ref32.to(dtype).float(), atol=0, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"query": torch.zeros(4, 8), "bank": torch.zeros(5, 7)}, "D=8"),
        ({"query": torch.zeros(8), "bank": torch.zeros(5, 8)}, "`query`"),
        ({"query": torch.zeros(4, 8), "bank": torch.zeros(0, 8)}, "`bank` must not be empty"),
        ({"query": torch.zeros(2, 4, 8), "bank": torch.zeros(3, 5, 8)}, "leading dims"),
        ({"query": torch.zeros(4, 8), "bank": torch.zeros(1, 5, 8)}, "leading dims"),
        ({"k": "sort"}, "`k`"),
        ({"compile": 1}, "`compile`"),
        ({"normalize": "bank"}, "`normalize`"),
        ({"query": torch.full((4, 8), math.nan), "bank": torch.zeros(5, 8)}, "`query`.*NaN"),
        ({"query": torch.zeros(4, 8), "bank": torch.full((5, 8), math.inf)}, "`bank`.*infinite"),
        ({"query_radius": torch.zeros(4)}, "both"),
        ({"query_radius": torch.zeros(3), "bank_radius": torch.zeros(5)}, "`query_radius`"),
        ({"query_radius": torch.zeros(4), "bank_radius": torch.zeros(4)}, "`bank_radius`"),
        ({"gamma": -1.0}, "`gamma`"),
        ({"chunk_size": 0}, "`chunk_size`"),
        ({"k": 0}, "`k`"),
    ],
)
def test_bad_input_raises(kwargs, match):
    args = {"query": torch.randn(4, 8), "bank": torch.randn(5, 8)} | kwargs
    with pytest.raises(ValueError, match=match):
        retrieve(**args)


def test_sparse_weights_to_dense_handles_padding():
    w = SparseWeights(torch.tensor([[1, 0, 0]]), torch.tensor([[0.6, 0.4, 0.0]]), 4)
    torch.testing.assert_close(w.to_dense(), torch.tensor([[0.4, 0.6, 0.0, 0.0]]))


@pytest.mark.gpu
def test_cuda_matches_cpu():
    r = radial_distance(37, 37)
    query, bank = _features(15, 2, 1369, 64), _features(16, 4 * 1369, 64)
    kwargs = {"query_radius": r, "bank_radius": r.repeat(4), "gamma": 0.01}
    cpu = retrieve(query, bank, **kwargs)
    cuda_kwargs = {key: (v.cuda() if torch.is_tensor(v) else v) for key, v in kwargs.items()}
    for k in (128, "auto", None):
        gpu = retrieve(query.cuda(), bank.cuda(), k=k, chunk_size=512, **cuda_kwargs)
        torch.testing.assert_close(gpu.reference.cpu(), cpu.reference, atol=1e-5, rtol=0)
