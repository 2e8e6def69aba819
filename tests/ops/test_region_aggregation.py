"""dpc_knn, progressive_region_aggregation, match_regions, region_weights (FineGrainedAD Sec. 3.4).

References are plain Python loops over tokens in float64 (O(N²) distances, densities,
indicators, centre scores and assignments written from the equations), independent of the
vectorised code.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from resad_kit.ops import (
    DensityPeaks,
    RegionAggregation,
    dpc_knn,
    match_regions,
    progressive_region_aggregation,
    region_weights,
)


def naive_dpc(x, num_clusters, k, mask, noise, seed):
    """DPC-KNN for one batch, token by token (lists of floats)."""
    b, n, c = x.shape
    u = torch.rand((b, n), generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
    out = []
    for bi in range(b):
        pts = x[bi].tolist()
        keep = [True] * n if mask is None else mask[bi].tolist()
        dist = [
            [
                math.sqrt(sum((p - q) ** 2 for p, q in zip(pts[i], pts[j], strict=True)))
                / math.sqrt(c)
                for j in range(n)
            ]
            for i in range(n)
        ]
        far = max(max(row) for row in dist) + 1.0
        dist = [[dist[i][j] if keep[j] else far for j in range(n)] for i in range(n)]
        dmax = max(max(row) for row in dist)
        rho = []
        for i in range(n):
            near = sorted(dist[i])[:k]
            r = math.exp(-sum(d * d for d in near) / k) + (
                float(u[bi, i]) * noise if noise else 0.0
            )
            rho.append(r if keep[i] else 0.0)
        sigma = []
        for i in range(n):
            higher = [dist[i][j] for j in range(n) if rho[j] > rho[i]]
            sigma.append(min(higher) if higher else dmax)
        score = [sigma[i] * rho[i] for i in range(n)]
        order = sorted((i for i in range(n) if keep[i]), key=lambda i: -score[i])
        centers = order[:num_clusters]
        labels = []
        for i in range(n):
            if not keep[i]:
                labels.append(-1)
            elif i in centers:
                labels.append(centers.index(i))
            else:
                labels.append(min(range(num_clusters), key=lambda c_: (dist[centers[c_]][i], c_)))
        out.append((labels, centers, rho, sigma, score))
    return out


@st.composite
def problems(draw):
    b = draw(st.integers(1, 2))
    n = draw(st.integers(3, 12))
    c = draw(st.integers(1, 4))
    kc = draw(st.integers(1, min(n, 4)))
    k = draw(st.integers(1, n))
    seed = draw(st.integers(0, 2**16))
    x = torch.randn(b, n, c, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    mask = None
    if draw(st.booleans()):
        mask = torch.rand(b, n, generator=torch.Generator().manual_seed(seed + 1)) < 0.7
        mask[:, :kc] = True  # at least K tokens left
    return x, kc, k, mask, seed


@settings(max_examples=60, deadline=None)
@given(problems(), st.sampled_from([1e-6, 0.5]))  # noise breaks exact density ties
def test_dpc_knn_equals_naive_loop(problem, noise):
    x, kc, k, mask, seed = problem
    out = dpc_knn(x, kc, k=k, mask=mask, noise=noise, generator=torch.Generator().manual_seed(seed))
    for bi, (labels, centers, rho, sigma, score) in enumerate(
        naive_dpc(x, kc, k, mask, noise, seed)
    ):
        assert out.centers[bi].tolist() == centers
        assert out.labels[bi].tolist() == labels
        torch.testing.assert_close(out.density[bi], torch.tensor(rho, dtype=x.dtype))
        torch.testing.assert_close(out.indicator[bi], torch.tensor(sigma, dtype=x.dtype))
        torch.testing.assert_close(out.score[bi], torch.tensor(score, dtype=x.dtype))


@settings(max_examples=40, deadline=None)
@given(problems())
def test_k_clusters_masked_never_centres(problem):
    x, kc, k, mask, seed = problem
    out = dpc_knn(x, kc, k=k, mask=mask, generator=torch.Generator().manual_seed(seed))
    keep = torch.ones_like(out.labels, dtype=torch.bool) if mask is None else mask
    for bi in range(x.shape[0]):
        centers = out.centers[bi]
        assert centers.unique().numel() == kc
        assert bool(keep[bi, centers].all())  # masked tokens never become centres
        assert out.labels[bi, centers].tolist() == list(range(kc))  # centres join themselves
        assert sorted(out.labels[bi][keep[bi]].unique().tolist()) == list(range(kc))  # K clusters
        assert bool((out.labels[bi][~keep[bi]] == -1).all())
        assert bool((out.density[bi][~keep[bi]] == 0).all())


@settings(max_examples=40, deadline=None)
@given(problems(), st.randoms(use_true_random=False))
def test_permutation_equivariance(problem, rnd):
    x, kc, k, mask, _ = problem
    n = x.shape[1]
    # without noise, mutual nearest neighbours tie in density for k <= 2: use k >= 3
    k = max(k, min(3, n))
    perm = list(range(n))
    rnd.shuffle(perm)
    perm = torch.tensor(perm)
    out = dpc_knn(x, kc, k=k, mask=mask, noise=0.0)
    pm = None if mask is None else mask[:, perm]
    out_p = dpc_knn(x[:, perm], kc, k=k, mask=pm, noise=0.0)
    assert torch.equal(out_p.labels, out.labels[:, perm])
    assert torch.equal(perm[out_p.centers], out.centers)
    torch.testing.assert_close(out_p.score, out.score[:, perm])


def test_deterministic_given_the_seed():
    x = torch.randn(2, 30, 3, generator=torch.Generator().manual_seed(0))
    runs = [dpc_knn(x, 4, k=1, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert isinstance(runs[0], DensityPeaks)
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))
    # with k = 1 the density is the noise alone: another seed picks other centres
    other = dpc_knn(x, 4, k=1, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(other.centers, runs[0].centers)


def test_given_centers_are_used():
    x = torch.tensor([[[0.0], [1.0], [2.0], [3.0], [10.0]]])
    out = dpc_knn(x, 2, centers=torch.tensor([[0, 4]]), noise=0.0)
    assert out.centers.tolist() == [[0, 4]]
    assert out.labels.tolist() == [[0, 0, 0, 0, 1]]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_clusters": 0}, "num_clusters"),
        ({"num_clusters": 7}, "num_clusters"),
        ({"k": 0}, "`k`"),
        ({"mask": torch.ones(1, 6)}, "mask"),
        ({"mask": torch.tensor([[True, False, False, False, False, False]])}, "fewer than"),
        ({"noise": -1.0}, "noise"),
        ({"centers": torch.tensor([[0, 0]])}, "distinct"),
        ({"centers": torch.tensor([[0, 9]])}, "indices"),
        ({"centers": torch.tensor([[0]])}, "shape"),
    ],
)
def test_dpc_knn_errors(kwargs, match):
    args = {"num_clusters": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        dpc_knn(torch.randn(1, 6, 2), **args)
    with pytest.raises(ValueError, match="3 dimensions"):
        dpc_knn(torch.randn(6, 2), 2)


def test_masked_center_rejected():
    mask = torch.tensor([[True, True, True, False]])
    with pytest.raises(ValueError, match="unmasked"):
        dpc_knn(torch.randn(1, 4, 2), 2, k=2, mask=mask, centers=torch.tensor([[0, 3]]))


def _scene(b=2, seed=0):
    """Background tokens near the last anchor, two components near the first two."""
    g = torch.Generator().manual_seed(seed)
    parts = [
        torch.tensor([0.0, 0.0, 1.0]) + 0.05 * torch.rand(b, 20, 3, generator=g),
        torch.tensor([1.0, 0.3, 0.0]) + 0.05 * torch.rand(b, 8, 3, generator=g),
        torch.tensor([0.3, 1.0, 0.0]) + 0.05 * torch.rand(b, 8, 3, generator=g),
    ]
    return torch.cat(parts, dim=1), torch.eye(3)


def _two_stages(feats, anchors, gen, centres=None):
    """Cosine reference dims, stage 1 (k=8 -> 1 neighbour), the background test, stage 2
    (k=5, K=3 -> 1 neighbour) on the foreground, one generator in that order; ``centres``
    ``(x, foreground or None) -> (B, K)`` gives each stage's centres (else top-K scores)."""
    x = (
        torch.nn.functional.normalize(feats, dim=-1)
        @ torch.nn.functional.normalize(anchors, dim=-1).T
    )
    c1 = None if centres is None else centres(x, None)
    s1 = dpc_knn(x, 2, k=1, generator=gen, centers=c1)
    fg = []
    for bi in range(feats.shape[0]):
        means = [feats[bi][s1.labels[bi] == c].mean(0) for c in range(2)]
        bg = max(range(2), key=lambda c: float(means[c] @ anchors[-1]))
        fg.append(s1.labels[bi] != bg)
    fg = torch.stack(fg)
    c2 = None if centres is None else centres(x, fg)
    return s1, fg, dpc_knn(x, 3, k=1, mask=fg, generator=gen, centers=c2)


def test_progressive_equals_composition_of_two_dpc_stages():
    feats, anchors = _scene()
    out = progressive_region_aggregation(feats, anchors, generator=torch.Generator().manual_seed(3))
    assert isinstance(out, RegionAggregation)
    assert isinstance(out.stage1, DensityPeaks)
    # direct composition: cosine reference dims, stage 1 (k=8 -> 1 neighbour), background test,
    # stage 2 (k=5, K=3 -> 1 neighbour) on the foreground, one generator in that order
    s1, fg, s2 = _two_stages(feats, anchors, torch.Generator().manual_seed(3))
    assert torch.equal(out.foreground, fg)
    assert torch.equal(out.regions, s2.labels)
    assert torch.equal(out.stage1.centers, s1.centers)


def _naive_semantic_centres(scores, allowed):
    """Per image, anchor by anchor: the allowed token of highest score not yet taken."""
    out = []
    for bi in range(scores.shape[0]):
        taken, row = set(), []
        for s in range(scores.shape[-1]):
            best, arg = -math.inf, None
            for i in range(scores.shape[1]):
                if i in taken or (allowed is not None and not bool(allowed[bi, i])):
                    continue
                if float(scores[bi, i, s]) > best:
                    best, arg = float(scores[bi, i, s]), i
            taken.add(arg)
            row.append(arg)
        out.append(row)
    return torch.tensor(out)


def test_progressive_semantic_centres_equal_composition():
    """The paper's initial centres: stage 1 the tokens most like any component and most like
    the background, stage 2 the foreground tokens most like each anchor, all distinct."""
    feats, anchors = _scene(seed=4)
    kwargs = dict(generator=torch.Generator().manual_seed(5), semantic_centers=True)
    out = progressive_region_aggregation(feats, anchors, **kwargs)

    given = []  # the naive centres of stage 1 and stage 2

    def centres(x, foreground):  # stage 1: most like any component, most like the background
        scores = torch.stack([x[..., :2].amax(-1), x[..., 2]], -1) if foreground is None else x
        given.append(_naive_semantic_centres(scores, foreground))
        return given[-1]

    _, fg, s2 = _two_stages(feats, anchors, torch.Generator().manual_seed(5), centres)
    c1, c2 = given
    assert torch.equal(out.stage1.centers, c1)
    assert torch.equal(out.stage2.centers, c2)
    assert torch.equal(out.foreground, fg)
    assert torch.equal(out.regions, s2.labels)
    assert all(len(set(row.tolist())) == 3 for row in out.stage2.centers)
    plain = progressive_region_aggregation(
        feats, anchors, generator=torch.Generator().manual_seed(5)
    )
    assert not torch.equal(plain.stage2.centers, out.stage2.centers)  # the flag changes them
    with pytest.raises(TypeError, match="semantic_centers"):
        progressive_region_aggregation(feats, anchors, semantic_centers=1)


def test_progressive_separates_background_and_components():
    feats, anchors = _scene(b=1, seed=1)
    hits = 0
    for seed in range(10):
        out = progressive_region_aggregation(
            feats, anchors, generator=torch.Generator().manual_seed(seed)
        )
        hits += bool(out.foreground[0, 20:].all() and not out.foreground[0, :20].any())
        assert bool((out.regions[~out.foreground] == -1).all())
        assert sorted(out.regions[out.foreground].unique().tolist()) == [0, 1, 2]
    assert hits >= 7  # stage 1 densities are noise (code's k rule) but the split is clear


def test_progressive_errors():
    with pytest.raises(ValueError, match="anchors"):
        progressive_region_aggregation(torch.randn(1, 10, 3), torch.randn(1, 3))
    with pytest.raises(ValueError, match="anchors"):
        progressive_region_aggregation(torch.randn(1, 10, 3), torch.randn(2, 4))
    with pytest.raises(ValueError, match="`k`"):
        progressive_region_aggregation(torch.randn(1, 10, 3), torch.randn(2, 3), k=(0, 5))
    with pytest.raises(ValueError, match="foreground"):
        progressive_region_aggregation(torch.randn(1, 4, 3), torch.randn(4, 3))


def naive_match(features, labels, prompts, kc):
    out = []
    for bi in range(features.shape[0]):
        row = []
        for p in prompts:
            best, arg = -math.inf, None
            for c in range(kc):
                members = [features[bi, i] for i in range(features.shape[1]) if labels[bi, i] == c]
                if not members:
                    continue
                mean = sum(members) / len(members)
                cos = float(mean @ p) / (float(mean.norm()) * float(p.norm()))
                if cos > best:
                    best, arg = cos, c
            row.append(arg)
        out.append(row)
    return out


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 3), st.integers(2, 10), st.integers(1, 4), st.integers(1, 4), st.integers(0, 999)
)
def test_match_regions_equals_naive_loop(b, n, kc, g, seed):
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(b, n, 3, generator=gen, dtype=torch.float64)
    labels = torch.randint(-1, kc, (b, n), generator=gen)
    labels[:, 0] = 0  # at least one region present
    prompts = torch.randn(g, 3, generator=gen, dtype=torch.float64)
    assert match_regions(feats, labels, prompts, kc).tolist() == naive_match(
        feats, labels, prompts, kc
    )


@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 2),
    st.integers(1, 3),
    st.sampled_from([1, 2, 4]),
    st.floats(0, 3),
    st.integers(0, 999),
)
def test_region_weights_equals_naive_loop(b, g, pool, gamma, seed):
    h, w = 8, 4
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(-1, 3, (b, h * w), generator=gen)
    regions = torch.randint(0, 3, (b, g), generator=gen)
    got = region_weights(labels, regions, grid=(h, w), pool=pool, gamma=gamma)
    assert got.shape == (b, g, (h // pool) * (w // pool))
    for bi in range(b):
        for gi in range(g):
            for r in range(h // pool):
                for c in range(w // pool):
                    cells = [
                        1.0
                        + gamma
                        * (
                            int(labels[bi, (r * pool + i) * w + c * pool + j])
                            == int(regions[bi, gi])
                        )
                        for i in range(pool)
                        for j in range(pool)
                    ]
                    want = sum(cells) / len(cells)
                    assert got[bi, gi, r * (w // pool) + c].item() == pytest.approx(want, rel=1e-6)


def test_region_weights_paper_grid_bounds():
    labels = torch.randint(0, 3, (2, 3600), generator=torch.Generator().manual_seed(0))
    out = region_weights(labels, torch.tensor([[0, 1], [2, 0]]))
    assert out.shape == (2, 2, 225)
    assert float(out.min()) >= 1.0
    assert float(out.max()) <= 2.5


def test_region_weights_errors():
    labels = torch.zeros(1, 16, dtype=torch.int64)
    with pytest.raises(ValueError, match="pool"):
        region_weights(labels, torch.zeros(1, 1, dtype=torch.int64), grid=(4, 4), pool=3)
    with pytest.raises(ValueError, match="gamma"):
        region_weights(labels, torch.zeros(1, 1, dtype=torch.int64), grid=(4, 4), gamma=-1.0)
    with pytest.raises(ValueError, match="labels"):
        region_weights(labels, torch.zeros(1, 1, dtype=torch.int64), grid=(5, 5))
    with pytest.raises(ValueError, match="regions"):
        region_weights(labels, torch.zeros(2, 1, dtype=torch.int64), grid=(4, 4))
    with pytest.raises(ValueError, match="labels"):
        match_regions(torch.randn(1, 4, 2), torch.full((1, 4), 5), torch.randn(1, 2), 2)
