"""The screened sparsemax (``k="auto"`` on long rows) and retrieval's default chunking.

``k="auto"`` screens rows of at least ``SCREEN_MIN_COLUMNS`` entries by block maxima
(``simplex._screened_top``) before sorting the few candidates left. The autouse fixture
shrinks the screen's knobs so that it runs on the small rows hypothesis draws; every
property then checks ``torch.equal`` against the full sort (``k=None``). The tests of the
real threshold and of the default chunk sizes put the real knobs back.
"""

from __future__ import annotations

import math

import entmax
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import resad_kit.ops._retrieval_core as retrieval_module
import resad_kit.ops._sorted_support as simplex
from resad_kit.ops import radial_distance, retrieve, sparsemax, sparsemax_threshold

REAL_KNOBS = {
    "SCREEN_MIN_COLUMNS": simplex.SCREEN_MIN_COLUMNS,
    "_SCREEN_COARSE": simplex._SCREEN_COARSE,
    "_SCREEN_MAX_SHARE": simplex._SCREEN_MAX_SHARE,
}


@pytest.fixture(autouse=True)
def small_screen(monkeypatch):
    """Screen every row (from 1 entry), down to levels of 4 block maxima, never giving up."""
    monkeypatch.setattr(simplex, "SCREEN_MIN_COLUMNS", 1)
    monkeypatch.setattr(simplex, "_SCREEN_COARSE", 4)
    monkeypatch.setattr(simplex, "_SCREEN_MAX_SHARE", 2.0)


def real_screen(monkeypatch):
    """Put the library's own screen knobs back (undoing :func:`small_screen`)."""
    for name, value in REAL_KNOBS.items():
        monkeypatch.setattr(simplex, name, value)


@pytest.fixture
def screen_calls(monkeypatch):
    """Record, for every call of ``_screened_top``, ``(rows, columns, screened)``."""
    calls = []
    original = simplex._screened_top

    def spy(z):
        out = original(z)
        calls.append((*z.shape, out is not None))
        return out

    monkeypatch.setattr(simplex, "_screened_top", spy)
    return calls


def _equal_to_sort(x: torch.Tensor) -> bool:
    return torch.equal(sparsemax(x, k="auto"), sparsemax(x)) and torch.equal(
        sparsemax_threshold(x, k="auto"), sparsemax_threshold(x)
    )


# ----------------------------------------------------------------------------- strategies


@st.composite
def matrices(draw, elements, max_rows=5, max_cols=200, neg_inf=False):
    """(rows, cols) float32 matrices; optionally with -inf entries (never a whole row)."""
    shape = (draw(st.integers(1, max_rows)), draw(st.integers(1, max_cols)))
    x = torch.from_numpy(draw(arrays(np.float32, shape, elements=elements)))
    if neg_inf and shape[1] > 1:
        mask = torch.from_numpy(draw(arrays(np.bool_, shape)))
        mask[:, 0] = False
        x = x.masked_fill(mask, -math.inf)
    return x


@st.composite
def gaussian_rows(draw, min_cols=70, max_cols=300):
    """Gaussian rows with row-wise scales: supports from one entry to the whole row."""
    cols = draw(st.integers(min_cols, max_cols))
    scales = draw(
        st.lists(st.sampled_from([1e-6, 1e-4, 0.01, 0.05, 0.3, 3.0]), min_size=1, max_size=6)
    )
    seed = draw(st.integers(0, 2**16))
    x = torch.randn(len(scales), cols, generator=torch.Generator().manual_seed(seed))
    return x * torch.tensor(scales)[:, None]


@st.composite
def near_constant_rows(draw):
    """An offset plus tiny noise: the support holds most or all of the row."""
    x = draw(gaussian_rows(min_cols=2, max_cols=300))
    offset = draw(st.sampled_from([-1e3, -1.0, 0.0, 0.5, 1e3]))
    noise = draw(st.sampled_from([0.0, 1e-7, 1e-5, 1e-3]))
    return offset + noise * x.sign() * x.abs().clamp_max(1)


# ------------------------------------------------------------ sparsemax: screen == full sort


@given(matrices(st.floats(-50, 50, width=32), neg_inf=True))
def test_screen_equals_sort_with_neg_inf(x):
    assert _equal_to_sort(x)


@given(matrices(st.sampled_from([-1.0, 0.0, 0.25, 0.5, 2.0]), neg_inf=True))
def test_screen_equals_sort_with_heavy_ties(x):
    assert _equal_to_sort(x)


@given(
    matrices(st.floats(-1.0, 1.0, width=32)),
    st.sampled_from([1e-30, 1e-6, 1.0, 1e6, 1e30]),
)
def test_screen_equals_sort_at_huge_and_tiny_scales(x, scale):
    assert _equal_to_sort(x * scale)


@given(st.one_of(gaussian_rows(), near_constant_rows()))
def test_screen_equals_sort_for_small_and_large_supports(x):
    assert _equal_to_sort(x)


@given(st.one_of(gaussian_rows(), near_constant_rows()))
def test_screened_sorted_support_is_a_prefix_of_the_sort(x):
    top = simplex.sorted_support(x, "auto")
    full = simplex.sorted_support(x, None)
    width = int(full.support.max())
    assert torch.equal(top.tau, full.tau)
    assert torch.equal(top.support, full.support)
    assert top.values.shape == top.indices.shape == (x.shape[0], width)
    assert torch.equal(x.gather(-1, top.indices), top.values)
    sorted_x = x.sort(dim=-1, descending=True).values[:, :width]
    within = torch.arange(width) < top.support  # entries past a row's support are unspecified
    assert torch.equal(top.values[within], sorted_x[within])


def test_screen_is_taken_on_small_rows_under_the_fixture(screen_calls):
    x = torch.randn(7, 150, generator=torch.Generator().manual_seed(0))
    assert _equal_to_sort(x)
    assert screen_calls  # one per k="auto" call: sparsemax and sparsemax_threshold
    assert all(screened for *_, screened in screen_calls)


@pytest.mark.parametrize("kept", [1, 2])
def test_widening_rounds_resolve_a_screened_prefix_too_short(monkeypatch, kept):
    """A screened prefix cut to ``kept`` candidates (still a prefix of the sort) is widened."""
    original = simplex._screened_top
    cut = []

    def short(z):
        values, indices, counts = original(z)
        cut.append(bool((counts > kept).any()))
        return values[:, :kept], indices[:, :kept], counts.clamp_max(kept)

    monkeypatch.setattr(simplex, "_screened_top", short)
    x = torch.randn(6, 300, generator=torch.Generator().manual_seed(1))
    x = x * torch.tensor([1e-4, 0.01, 0.05, 0.3, 1.0, 3.0])[:, None]
    full = simplex.sorted_support(x, None)
    assert (full.support > kept).any()  # some rows need the widening rounds
    top = simplex.sorted_support(x, "auto")
    assert cut == [True]
    assert torch.equal(top.tau, full.tau)
    assert torch.equal(top.support, full.support)
    assert _equal_to_sort(x)


def test_default_threshold_screens_rows_of_2048_entries_and_more(monkeypatch, screen_calls):
    """With the real knobs: 2,048 entries and more are screened; shorter rows are not."""
    real_screen(monkeypatch)
    assert simplex.SCREEN_MIN_COLUMNS == 2048
    generator = torch.Generator().manual_seed(2)
    for cols in (2047, 2048, 5000):
        x = torch.randn(4, cols, generator=generator)
        assert torch.equal(sparsemax(x, k="auto"), sparsemax(x))
    assert [(rows, cols) for rows, cols, _ in screen_calls] == [(4, 2048), (4, 5000)]
    assert all(screened for *_, screened in screen_calls)  # and the screen paid off


@pytest.mark.parametrize("scale", [0.3, 0.05, 0.02])
def test_screen_narrows_rows_with_supports_of_tens_to_hundreds(monkeypatch, scale):
    """With the real knobs, rows of 5,476 entries (K = 4 shots of a 37×37 grid) whose supports
    are about 10, 60 and 130 entries are screened down to their support and a few entries past
    it (at least the one at or below the bound), and equal the full sort."""
    real_screen(monkeypatch)
    x = scale * torch.randn(64, 5476, generator=torch.Generator().manual_seed(7))
    full = simplex.sorted_support(x, None)
    screened = simplex._screened_top(x)
    assert screened is not None
    values, indices, counts = screened
    assert (counts > full.support).all()  # the support and at least one entry past it
    assert (counts <= full.support + 4).all()  # ... and only a few more
    filled = torch.arange(values.shape[-1]) < counts
    assert torch.equal(x.gather(-1, indices)[filled], values[filled])
    assert torch.isneginf(values[~filled]).all()
    assert _equal_to_sort(x)


def test_rows_the_screen_cannot_narrow_take_the_top_k_path(monkeypatch, screen_calls):
    """With the real knobs, near-constant rows (supports of most of the row) are not screened."""
    real_screen(monkeypatch)
    x = 1.0 + 1e-6 * torch.randn(3, 4096, generator=torch.Generator().manual_seed(5))
    assert (simplex.sorted_support(x, None).support > 2048).all()
    assert torch.equal(sparsemax(x, k="auto"), sparsemax(x))
    assert screen_calls == [(3, 4096, False)]


# ------------------------------------------------------------ retrieval: screen == full sort


def _assert_same_retrieval(out, expected):
    assert torch.equal(out.reference, expected.reference)
    assert torch.equal(out.weights.indices, expected.weights.indices)
    assert torch.equal(out.weights.values, expected.weights.values)


@given(
    n=st.integers(1, 30),
    m=st.integers(1, 150),
    duplicates=st.integers(1, 4),
    scale=st.sampled_from([0.05, 1.0, 8.0]),
    seed=st.integers(0, 2**16),
)
def test_retrieve_screened_equals_sort_with_duplicated_bank_rows(n, m, duplicates, scale, seed):
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(n, 5, generator=generator)
    bank = (torch.randn(m, 5, generator=generator) * scale).repeat(duplicates, 1)  # exact ties
    expected = retrieve(query, bank, k=None, normalize=False)
    _assert_same_retrieval(retrieve(query, bank, k="auto", normalize=False), expected)


@given(
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    shots=st.integers(1, 4),
    same_shots=st.booleans(),
    periodic=st.booleans(),
    gamma=st.sampled_from([0.0, 0.01, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_retrieve_screened_equals_sort_with_radial_penalty(
    h, w, shots, same_shots, periodic, gamma, seed
):
    """K-shot banks of the query's grid (radii repeating every N entries) or arbitrary radii;
    identical shots make every bank entry K-fold tied."""
    generator = torch.Generator().manual_seed(seed)
    n = h * w
    refs = torch.randn(1 if same_shots else shots, n, 6, generator=generator)
    bank = refs.expand(shots, n, 6).reshape(-1, 6)
    query = torch.randn(2, n, 6, generator=generator) + 0.5 * refs[0]
    r = radial_distance(h, w)
    bank_radius = r.repeat(shots) if periodic else 3 * torch.rand(shots * n, generator=generator)
    kwargs = {"query_radius": r, "bank_radius": bank_radius, "gamma": gamma}
    expected = retrieve(query, bank, k=None, **kwargs)
    _assert_same_retrieval(retrieve(query, bank, k="auto", **kwargs), expected)


@pytest.mark.parametrize("periodic", [True, False])
def test_radial_table_is_n_wide_for_a_k_shot_bank(monkeypatch, periodic):
    """Radii repeating every N entries: an N-wide penalty table; other radii: M wide. Both
    match a dense float64 reference of Eq. 8 and 33 (entmax)."""
    widths = []
    original = retrieval_module._radial_table

    def spy(row_radius, bank_radius):
        table = original(row_radius, bank_radius)
        widths.append(table.shape[-1])
        return table

    monkeypatch.setattr(retrieval_module, "_radial_table", spy)
    generator = torch.Generator().manual_seed(6)
    h, w, shots, gamma = 5, 6, 3, 0.2
    n = h * w
    query = torch.randn(n, 8, generator=generator)
    bank = torch.randn(shots * n, 8, generator=generator)
    r = radial_distance(h, w)
    bank_radius = r.repeat(shots)
    if not periodic:
        bank_radius[-1] += 0.5
    out = retrieve(query, bank, query_radius=r, bank_radius=bank_radius, gamma=gamma)
    assert set(widths) == {n if periodic else shots * n}
    q = F.normalize(query.double(), dim=-1)
    b = F.normalize(bank.double(), dim=-1)
    penalty = gamma * (r.double()[:, None] - bank_radius.double()[None, :]).abs()
    weights = entmax.sparsemax(q @ b.T - penalty, dim=-1)
    torch.testing.assert_close(out.weights.to_dense().double(), weights, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.reference.double(), weights @ b, atol=1e-6, rtol=0)


# --------------------------------------------------------------------- retrieval: chunking


def test_default_chunking_equals_explicit_chunks_for_layers_and_images(screen_calls):
    """query (L, B, N, D) against a bank per layer (L, 1, M, D): every chunking is identical."""
    generator = torch.Generator().manual_seed(3)
    h = w = 7
    n, shots = h * w, 2
    bank = torch.randn(3, 1, shots * n, 8, generator=generator)
    query = torch.randn(3, 4, n, 8, generator=generator) + 0.3 * bank[:, :, :n]
    r = radial_distance(h, w)
    kwargs = {"query_radius": r, "bank_radius": r.repeat(shots)}
    expected = retrieve(query, bank, k=None, **kwargs)
    default = retrieve(query, bank, **kwargs)
    _assert_same_retrieval(default, expected)
    assert any(screened for *_, screened in screen_calls)
    for chunk in (1, 50, n, 4 * n, 5 * n, 10_000):
        _assert_same_retrieval(retrieve(query, bank, chunk_size=chunk, **kwargs), default)


@pytest.fixture
def blocks(monkeypatch):
    """Record the shape of every similarity block that retrieval's sparsemax sees."""
    seen = []
    original = retrieval_module._sparse_sparsemax

    def spy(sim, *args):
        seen.append(tuple(sim.shape))
        return original(sim, *args)

    monkeypatch.setattr(retrieval_module, "_sparse_sparsemax", spy)
    return seen


@pytest.mark.parametrize(
    ("query_shape", "bank_shape", "expected"),
    [
        # 2²³ / 4,096 = 2,048 rows; a layer of 2,100 rows fits in twice that: whole layers
        ((2, 3, 700, 4), (2, 1, 4096, 4), [(2100, 4096)] * 2),
        # small layers are joined, whole, up to the budget: 2 layers of 900 rows in one block
        ((2, 3, 300, 4), (2, 1, 4096, 4), [(1800, 4096)]),
        # one group of 5,000 rows > 2 × 2,048: blocks of 2,048 rows (2²³ similarities)
        ((5000, 4), (4096, 4), [(2048, 4096), (2048, 4096), (904, 4096)]),
        # a bank of 9,000 > 8,192 entries: at least 1,024 rows per block
        ((2500, 4), (9000, 4), [(1024, 9000), (1024, 9000), (452, 9000)]),
    ],
)
def test_default_chunks_hold_about_2_23_similarities(
    monkeypatch, blocks, query_shape, bank_shape, expected
):
    """``chunk_size=None``: blocks of 2²³ similarities (32 MiB float32) or 1,024 rows, made of
    whole layers/images where one fits in twice that; the result equals explicit chunks."""
    real_screen(monkeypatch)
    generator = torch.Generator().manual_seed(4)
    query = torch.randn(*query_shape, generator=generator)
    bank = torch.randn(*bank_shape, generator=generator)
    out = retrieve(query, bank)
    assert blocks == expected
    assert all(rows * cols <= 2 * 2**23 for rows, cols in blocks)
    blocks.clear()
    _assert_same_retrieval(retrieve(query, bank, chunk_size=1000), out)
    assert max(rows for rows, _ in blocks) == 1024  # 1,000 rounded up to a multiple of 64
