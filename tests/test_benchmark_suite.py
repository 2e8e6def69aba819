"""The benchmark suite's own machinery: the official-style pipeline, the CLIP-like features,
the alternating timer and the stage profile (benchmarks/baselines.py, synthetic.py,
harness.py, stages.py, bench_end_to_end.py).

The official-style prediction is checked against ``Res2CLIP`` (an independent composition of
the same method from ``resad_kit.ops``) on the tiny backbone; the sweep's feature structures
against the supports they are named after; the timer against a fake clock.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCH) not in sys.path:  # the suite's modules import each other by plain name
    sys.path.insert(0, str(BENCH))

import harness  # noqa: E402
from baselines import official_prediction, official_references  # noqa: E402
from bench_end_to_end import build_model, math_backbone  # noqa: E402
from stages import SCREEN_PARTS, STAGES, stage_times  # noqa: E402
from synthetic import SUPPORT_CASES, Structure, clip_like_features  # noqa: E402

from resad_kit.clip import ClipBackbone  # noqa: E402
from resad_kit.ops import radial_distance, retrieve  # noqa: E402


@pytest.mark.parametrize("mode", ["training_free", "fine_tuned"])
@torch.no_grad()
def test_official_prediction_equals_res2clip(mode):
    """The baseline re-implements the whole prediction: same maps and scores as Res2CLIP
    (explicit-softmax attention, one image at a time, dense retrieval, plain-torch scoring)."""
    fast = ClipBackbone.tiny(seed=0, image_size=64)
    model = build_model(fast, mode)  # fine-tuned: random adapters (not the identity)
    generator = torch.Generator().manual_seed(0)
    references = torch.randn(2, 3, 64, 64, generator=generator)
    queries = torch.randn(3, 3, 64, 64, generator=generator)
    model.fit_references(references)
    slow = math_backbone(fast)
    assert slow.config.attention == "math"
    assert slow.model is fast.model
    refs = official_references(slow, references, model.used_taps)
    want = model(queries)
    score, anomaly = official_prediction(
        slow, refs, queries, model._text_residual(), model.taps, model.config, model.adapters
    )
    assert anomaly.shape == want.anomaly_map.shape == (3, 64, 64)
    torch.testing.assert_close(anomaly, want.anomaly_map, atol=1e-5, rtol=0)
    torch.testing.assert_close(score, want.image_score, atol=1e-5, rtol=0)
    if mode == "fine_tuned":  # the adapters matter: the training-free maps differ
        plain = build_model(fast, "training_free").fit_references(references)(queries)
        assert (plain.anomaly_map - want.anomaly_map).abs().max() > 1e-3


_BANDS = {"s10": (5, 20), "s30": (20, 45), "s70": (50, 110), "s150": (120, 190)}


@pytest.mark.parametrize("case", sorted(_BANDS))
def test_support_cases_give_the_supports_they_are_named_after(case):
    """Median support over the rows of one layer (518 px, K = 4, D = 1,024) in the case's band;
    ``s150`` also has the small supports of distinct parts (real images: min 6)."""
    layer = clip_like_features(37, 4, 1024, SUPPORT_CASES[case], seed=0)
    r = radial_distance(37, 37)
    sizes = retrieve(
        layer.query[0], layer.bank, query_radius=r, bank_radius=r.repeat(4), normalize="query"
    ).weights.support_size()
    low, high = _BANDS[case]
    assert low <= float(sizes.float().median()) <= high
    if case == "s150":
        assert int(sizes.min()) <= 12
        assert int(sizes.max()) >= 150


def test_more_uniform_area_gives_larger_supports():
    """The structure's knob moves the support: a larger near-uniform share, a larger median."""
    r = radial_distance(24, 24)
    medians = []
    for uniform in (0.0, 0.5, 0.9):
        layer = clip_like_features(24, 2, 256, Structure(uniform=uniform, noise=0.3), seed=1)
        sizes = retrieve(
            layer.query[0], layer.bank, query_radius=r, bank_radius=r.repeat(2), normalize="query"
        ).weights.support_size()
        medians.append(float(sizes.float().median()))
    assert medians[0] < medians[1] < medians[2]


def test_clip_like_features_are_unit_rows_and_reproducible():
    a = clip_like_features(8, 3, 16, SUPPORT_CASES["s150"], images=2, seed=4)
    b = clip_like_features(8, 3, 16, SUPPORT_CASES["s150"], images=2, seed=4)
    assert a.query.shape == (2, 64, 16)
    assert a.bank.shape == (192, 16)
    assert torch.equal(a.query, b.query)
    assert torch.equal(a.bank, b.bank)
    torch.testing.assert_close(a.bank.norm(dim=-1), torch.ones(192))


class _FakeBenchmark:
    def pedantic(self, fn, rounds, iterations, warmup_rounds):
        for _ in range(warmup_rounds + rounds):
            fn()


def test_alternating_reports_medians_and_per_round_ratios(monkeypatch):
    """Ratios are taken round by round, in the order of ``fns``, with their spread."""
    clock = [0.0]
    monkeypatch.setattr(harness.time, "perf_counter", lambda: clock[0])
    durations = {"a": iter([4.0, 6.0, 9.0]), "b": iter([2.0, 2.0, 3.0]), "c": iter([1, 1, 1])}

    def step(name):
        def fn():
            clock[0] += next(durations[name])

        return fn

    out = harness.alternating(_FakeBenchmark(), {k: step(k) for k in "abc"}, "cpu", 3)
    assert out["a_s"] == 6.0
    assert out["b_s"] == 2.0
    assert out["c_s"] == 1.0
    assert (out["a/b"], out["a/b_min"], out["a/b_max"]) == (3.0, 2.0, 3.0)
    assert out["b/c"] == 2.0
    assert out["a/c"] == 6.0
    assert "b/a" not in out


def test_support_stats():
    sizes = torch.tensor([[3, 9], [5, 40]])
    assert harness.support_stats(sizes) == {
        "support_min": 3.0,
        "support_median": 5.0,  # torch's median: the lower of the two middle values
        "support_max": 40.0,
    }


def test_stage_profile_covers_every_stage_and_the_supports():
    """The stage profile runs ``retrieve``'s kernels on the same blocks: its widths are those
    of ``retrieve``'s weights."""
    layer = clip_like_features(16, 8, 32, SUPPORT_CASES["s150"], seed=2)  # M = 2,048: screened
    queries = torch.nn.functional.normalize(layer.query, dim=-1)[None]
    banks = layer.bank[None, None]
    r = radial_distance(16, 16)
    out = stage_times(queries, banks, r, r.repeat(8), 0.01, rounds=1)
    assert {f"stage_{s}_s" for s in STAGES} <= set(out)
    assert all(out[f"stage_{s}_s"] >= 0 for s in ("gemm", "sort", "weights", "gather_sum"))
    weights = retrieve(
        queries[0], banks[0], query_radius=r, bank_radius=r.repeat(8), normalize="query"
    ).weights
    assert out["support_width"] == int(weights.support_size().max())
    assert out["first_width"] >= out["support_width"]
    assert out["screened"] in (0.0, 1.0)
    parts = [out[f"stage_{p}_s"] for p in SCREEN_PARTS]
    assert all(t > 0 for t in parts) if out["screened"] else all(t == 0 for t in parts)
