"""The evaluation protocol: every (category, shots, seed, mode) once, metrics equal to a
direct recomputation with the composer and the metrics engine, shared references, heat maps."""

from __future__ import annotations

import pytest
import torch

from resad_kit.clip import ClipBackbone
from resad_kit.data import AnomalyDataset, sample_references, synthesize_dataset
from resad_kit.engine.features import FeatureCache
from resad_kit.engine.protocol import DatasetSpec, evaluate_category, run_evaluation
from resad_kit.methods import Method, Prediction, Res2CLIP, Res2CLIPConfig
from resad_kit.metrics import evaluate
from resad_kit.ops import upsample_patches

SIZE = 32


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = synthesize_dataset(
        tmp_path_factory.mktemp("data"),
        categories=["brick", "coins"],
        n_train=4,
        n_test=4,
        image_size=48,
    )
    backbone = ClipBackbone.tiny(seed=0, image_size=SIZE)
    cache = FeatureCache(backbone, progress=False)
    models = {
        ("training_free", "synth"): Res2CLIP(backbone),
        ("fine_tuned", "synth"): Res2CLIP(backbone, Res2CLIPConfig.paper("fine_tuned")),
    }
    with torch.no_grad():  # make the fine-tuned model differ from the training-free one
        models["fine_tuned", "synth"].adapters.visual[0].up.weight.normal_(0, 0.1)
    spec = DatasetSpec("synth", root, ("brick", "coins"))
    return root, backbone, cache, models, spec


def test_every_setting_is_evaluated_once_in_order(setup, tmp_path):
    _root, _backbone, cache, models, spec = setup
    results = run_evaluation(
        models, [spec], cache, shots=(1, 2), seeds=(0, 5), heatmap_dir=tmp_path, progress=False
    )
    keys = [(r.category, r.shots, r.seed, r.mode) for r in results]
    expected = [
        (c, k, s, m)
        for c in ("brick", "coins")
        for k in (1, 2)
        for s in (0, 5)
        for m in ("fine_tuned", "training_free")
    ]
    assert keys == expected
    by_key = {(r.category, r.shots, r.seed, r.mode): r for r in results}
    for c in ("brick", "coins"):  # both modes see the same references
        for k in (1, 2):
            a, b = by_key[c, k, 0, "training_free"], by_key[c, k, 0, "fine_tuned"]
            assert a.references == b.references
            assert len(a.references) == k
            assert a.metrics != b.metrics
    pngs = sorted(p.relative_to(tmp_path).parts[:3] for p in tmp_path.rglob("*.png"))
    assert set(pngs) == {
        (m, "synth", c) for m in ("training_free", "fine_tuned") for c in ("brick", "coins")
    }


def test_metrics_equal_a_direct_recomputation(setup):
    root, backbone, cache, _models, _spec = setup
    [result] = run_evaluation(
        {("training_free", "synth"): Res2CLIP(backbone)},
        [DatasetSpec("synth", root, ("coins",))],
        cache,
        shots=(2,),
        seeds=(3,),
        progress=False,
    )
    test = AnomalyDataset(root, "coins", "test", SIZE)
    train = AnomalyDataset(root, "coins", "train", SIZE)
    refs = sample_references(train, 2, seed=3)
    model = Res2CLIP(backbone).fit_references(refs.images)
    images = test.images(list(range(len(test))))
    pred = model(images)
    masks = torch.stack([test[i]["mask"][0] for i in range(len(test))])
    expected = evaluate(pred.image_score, pred.anomaly_map, torch.tensor(test.labels), masks)
    assert result.references == refs.paths
    assert result.n_images == len(test)
    assert result.metrics == pytest.approx(expected, abs=1e-6)


def test_eval_size_sets_the_metric_resolution(setup):
    root, backbone, cache, _models, _spec = setup
    a = run_evaluation(
        {("training_free", "synth"): Res2CLIP(backbone)},
        [DatasetSpec("synth", root, ("brick",))],
        cache,
        shots=(1,),
        seeds=(0,),
        eval_size=16,
        progress=False,
    )
    assert len(a) == 1
    assert 0.0 <= a[0].metrics["PRO"] <= 1.0


def test_a_data_set_without_a_model_is_an_error(setup):
    _root, backbone, cache, _models, spec = setup
    with pytest.raises(ValueError, match="no model"):
        run_evaluation({("training_free", "other"): Res2CLIP(backbone)}, [spec], cache)


def test_features_are_released_after_each_category_unless_asked(setup):
    _root, backbone, _, models, spec = setup
    tf = {("training_free", "synth"): models["training_free", "synth"]}
    kept = FeatureCache(backbone, progress=False)
    run_evaluation(tf, [spec], kept, shots=(1,), seeds=(0,), progress=False, release_features=False)
    released = FeatureCache(backbone, progress=False)
    run_evaluation(tf, [spec], released, shots=(1,), seeds=(0,), progress=False)
    assert len(released) == 0
    assert len(kept) > 0


def test_evaluate_category_alone_matches_run_evaluation(setup):
    root, backbone, cache, _models, _spec = setup
    tf = Res2CLIP(backbone)
    test = AnomalyDataset(root, "brick", "test", SIZE)
    train = AnomalyDataset(root, "brick", "train", SIZE)
    alone = evaluate_category(
        {"training_free": tf}, "synth", test, train, cache, shots=(1,), seeds=(4,)
    )
    full = run_evaluation(
        {("training_free", "synth"): tf},
        [DatasetSpec("synth", root, ("brick",))],
        cache,
        shots=(1,),
        seeds=(4,),
        progress=False,
    )
    assert alone == full


def test_a_failing_rank_is_reported_on_every_rank(setup, monkeypatch):
    # Rank 0 of 2 (built by hand; `gather` is replaced by what the other rank would send).
    from resad_kit.engine import protocol
    from resad_kit.engine.distributed import DistContext

    root, backbone, cache, _models, spec = setup
    ctx = DistContext(
        rank=0, world_size=2, local_rank=0, device=torch.device("cpu"), backend="gloo"
    )
    sent = []

    def fake_gather(obj, dist):
        sent.append(obj)
        return [obj, ([], "rank 1: ValueError: unreadable image")]

    monkeypatch.setattr(protocol, "gather", fake_gather)
    models = {("training_free", "synth"): Res2CLIP(backbone)}
    with pytest.raises(RuntimeError, match="rank 1: ValueError: unreadable image"):
        run_evaluation(models, [spec], cache, shots=(1,), seeds=(0,), dist=ctx, progress=False)
    assert sent[0][1] is None  # rank 0 itself succeeded, with its shard's results
    assert {r.category for r in sent[0][0]} == {"brick"}

    broken = DatasetSpec("synth", root, ("brick", "missing"))  # rank 1's unit fails here
    ctx1 = DistContext(
        rank=1, world_size=2, local_rank=0, device=torch.device("cpu"), backend="gloo"
    )
    monkeypatch.setattr(protocol, "gather", lambda obj, dist: [([], None), obj])
    with pytest.raises(RuntimeError, match="rank 1: ValueError"):
        run_evaluation(models, [broken], cache, shots=(1,), seeds=(0,), dist=ctx1, progress=False)


def test_good_only_test_split_is_refused_naming_the_category(tmp_path):
    """A test split without anomalous images fails before any feature is computed, and the
    message names the data set and category (it used to come from the metrics, unnamed)."""
    import shutil

    root = synthesize_dataset(tmp_path, categories=["grass"], n_train=2, n_test=4, image_size=32)
    for defect in (root / "grass" / "test").iterdir():
        if defect.name != "good":
            shutil.rmtree(defect)
    backbone = ClipBackbone.tiny(seed=0, image_size=SIZE)
    cache = FeatureCache(backbone, progress=False)
    test, train = (AnomalyDataset(root, "grass", s, SIZE) for s in ("test", "train"))
    with pytest.raises(ValueError, match=r"data set 'synth', category 'grass'"):
        evaluate_category({"training_free": Res2CLIP(backbone)}, "synth", test, train, cache)
    assert cache.stats["misses"] == 0  # nothing was encoded


class _ZeroShotProbe(Method):
    """A method with a zero-shot mode that records how the protocol calls it."""

    name = "zero_shot_probe"
    supports_zero_shot = True

    def __init__(self, backbone: ClipBackbone) -> None:
        super().__init__()
        self.backbone, self.config, self.calls = backbone, None, []

    def fit_references(self, references):
        self.calls.append(("fit", references.cls.shape[0]))
        return self

    def clear_references(self):
        self.calls.append(("clear",))
        return self

    def forward(self, inputs, *, output_size=None, return_intermediates=False):
        patches = torch.stack(inputs.patches).mean(dim=(0, -1))  # (B, N)
        amap = upsample_patches(patches, output_size, inputs.grid)
        return Prediction(amap.flatten(1).amax(1), amap, {})


def test_zero_shot_draws_no_references_and_runs_one_seed(setup):
    """shots=0: clear_references instead of fit_references, the first seed only, no
    reference paths, metrics equal a direct recomputation; K ≥ 1 as before."""
    root, backbone, cache, _, spec = setup
    probe = _ZeroShotProbe(backbone)
    results = run_evaluation(
        {("training_free", "synth"): probe}, [spec], cache, shots=(0, 1), seeds=(3, 4),
        progress=False,
    )  # fmt: skip
    keys = [(r.category, r.shots, r.seed, r.references) for r in results]
    assert [k[:3] for k in keys] == [
        (c, k, s) for c in ("brick", "coins") for k, s in ((0, 3), (1, 3), (1, 4))
    ]
    assert all((k[1] == 0) == (k[3] == ()) for k in keys)
    assert probe.calls == [("clear",), ("fit", 1), ("fit", 1)] * 2
    test = AnomalyDataset(root, "coins", "test", image_size=SIZE)
    direct = probe(cache.features(test), output_size=(SIZE, SIZE))
    expected = evaluate(
        direct.image_score, direct.anomaly_map, torch.tensor(test.labels), test.masks(range(4))
    )
    zero = next(r for r in results if (r.category, r.shots) == ("coins", 0))
    assert zero.metrics == pytest.approx(expected)


def test_zero_shot_needs_a_method_with_a_zero_shot_mode(setup):
    _, _, cache, models, spec = setup
    with pytest.raises(ValueError, match=r"shots=0 \(zero-shot\).*'res2clip'.*K >= 1"):
        run_evaluation(models, [spec], cache, shots=(0, 1), progress=False)
    with pytest.raises(ValueError, match=r"`shots` must be ints >= 0; got \[-1\]"):
        run_evaluation(models, [spec], cache, shots=(-1,), progress=False)
    with pytest.raises(ValueError, match="no zero-shot mode"):
        models["training_free", "synth"].clear_references()
