"""FineGrainedAD through the engine: image-packing backbone, per-shot training, protocol."""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch
from sklearn.metrics import roc_auc_score

from resad_kit.clip import ClipBackbone
from resad_kit.clip.image_backbone import ImageBackbone
from resad_kit.clip.mfsc import load_captions, load_vocabularies
from resad_kit.data import AnomalyDataset, synthesize_dataset
from resad_kit.engine import DatasetSpec, FeatureCache
from resad_kit.engine.finegrainedad_protocol import (
    TEST_SELECTED_METHOD,
    FewShotFineGrainedAD,
    evaluate_finegrainedad,
    train_on_shots,
)
from resad_kit.engine.results import write_results
from resad_kit.engine.training import TrainConfig
from resad_kit.methods import TrainingBatch
from resad_kit.methods.finegrainedad import FineGrainedAD, FineGrainedADConfig

CONFIG = FineGrainedADConfig(memory_layers=(1, 3))
SIZE = 32


@pytest.fixture(scope="module")
def backbone() -> ClipBackbone:
    return ClipBackbone.tiny(seed=1, image_size=SIZE)


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def test_image_backbone_packs_pixels_through_the_cache(tmp_path, backbone):
    root = synthesize_dataset(tmp_path, ["coins"], n_train=2, n_test=2, image_size=SIZE)
    train = AnomalyDataset(root, "coins", "train", SIZE)
    packed = ImageBackbone.wrap(backbone)
    features = FeatureCache(packed, progress=False).features(train, [1, 0])
    assert torch.equal(packed.unpack(features), train.images([1, 0]))
    p = backbone.patch_size  # patch (i, j) of the grid holds the pixels of that p×p block
    assert torch.equal(
        features.patches[0][0, 5].reshape(3, p, p), train.images([1])[0, :, p : 2 * p, p : 2 * p]
    )
    assert packed.model_name == backbone.model_name + "+images"
    with pytest.raises(ValueError, match="packed tensor"):
        packed.unpack(backbone(train.images([0])))


def test_train_on_shots_touches_only_prompts_and_follows_the_cosine(backbone):
    torch.manual_seed(0)
    model = FineGrainedAD(backbone, load_captions("coins"), load_vocabularies(), CONFIG)
    frozen = {k: v.clone() for k, v in backbone.state_dict().items()}
    before = {k: v.clone() for k, v in model.trainable_module().state_dict().items()}
    epochs = 4
    history = train_on_shots(model, _images(2, 1), TrainConfig.finegrainedad(epochs=epochs))
    lrs = [h["lr"]["finegrainedad"] for h in history]
    expected = [1e-5 + (2e-3 - 1e-5) * (1 + math.cos(math.pi * t / epochs)) / 2 for t in range(4)]
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert all(torch.equal(v, frozen[k]) for k, v in backbone.state_dict().items())
    after = model.trainable_module().state_dict()
    assert any(not torch.equal(after[k], before[k]) for k in before)  # the prompts learnt
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]
    assert all(math.isfinite(h["total"]) for h in history)


def test_few_shot_adaptor_equals_a_direct_run(backbone):
    packed = ImageBackbone.wrap(backbone)
    train_config = TrainConfig.finegrainedad(epochs=2, seed=5)
    refs, queries = _images(1, 2), _images(2, 3)
    method = FewShotFineGrainedAD(packed, load_captions("grass"), CONFIG, train_config)
    got = method.fit_references(packed(refs))(packed(queries), output_size=SIZE)
    torch.manual_seed(5)
    direct = FineGrainedAD(backbone, load_captions("grass"), load_vocabularies(), CONFIG)
    train_on_shots(direct, refs, train_config)
    with torch.no_grad():
        want = direct(queries, output_size=SIZE)
    torch.testing.assert_close(got.anomaly_map, want.anomaly_map)
    torch.testing.assert_close(got.image_score, want.image_score)
    assert len(method.history) == 2
    assert (method.name, method.mode) == ("finegrainedad", "fine_tuned")


def test_adaptor_errors(backbone):
    with pytest.raises(ValueError, match="ImageBackbone"):
        FewShotFineGrainedAD(backbone, load_captions("grass"))
    method = FewShotFineGrainedAD(ImageBackbone.wrap(backbone), load_captions("grass"))
    with pytest.raises(ValueError, match="fit_references"):
        method(_images(1, 0))
    with pytest.raises(ValueError, match="ImageBackbone"):
        evaluate_finegrainedad([], FeatureCache(backbone, progress=False))


def test_protocol_run_writes_table_rows(tmp_path, backbone):
    cats = ("coins", "grass")
    root = synthesize_dataset(tmp_path / "data", cats, n_train=2, n_test=4, image_size=SIZE)
    cache = FeatureCache(ImageBackbone.wrap(backbone), progress=False)
    results = evaluate_finegrainedad(
        [DatasetSpec("synthetic", root, cats)],
        cache,
        config=CONFIG,
        train_config=TrainConfig.finegrainedad(epochs=2),
        shots=(1,),
        seeds=(0,),
        progress=False,
    )
    assert [(r.category, r.shots, r.method, r.mode) for r in results] == [
        (c, 1, "finegrainedad", "fine_tuned") for c in cats
    ]
    assert all(0 <= r.metrics["I-AUROC"] <= 1 and 0 <= r.metrics["P-AUROC"] <= 1 for r in results)
    paths = write_results(
        results, tmp_path / "run", backbone_label="tiny", trained=False, config={}
    )
    table = paths["table"].read_text()
    assert table.startswith("**WARNING")
    assert "# FineGrainedAD results" in table
    assert "| FineGrainedAD | synthetic 1-shot |" in table  # the layout of its Table 1
    rows = [line for line in table.splitlines() if line.startswith("| 1 | FineGrainedAD | ")]
    assert len(rows) == 3  # ours, paper, Δ rows of the data set
    assert "Tables 6–10" not in table  # Res²CLIP's sources are not named for it
    assert "Categories (2): coins, grass." in table


def _reference_epochs(backbone, shots, queries, size, lr, epochs):
    """The test's own loop: SGD (momentum 0.9, wd 5e-4), closed-form cosine lr, one full
    batch step per epoch; the maps of the test images after every epoch."""
    torch.manual_seed(0)
    config = dataclasses.replace(CONFIG, lr=lr)
    model = FineGrainedAD(backbone, load_captions("coins"), load_vocabularies(), config)
    model.fit_references(shots)
    params = list(model.trainable_module().parameters())
    sgd = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    with torch.no_grad():
        query = model.encode(shots)
    batch = TrainingBatch(query, None, torch.zeros(shots.shape[0], SIZE, SIZE))
    maps, states = [], []
    for t in range(epochs):
        for group in sgd.param_groups:
            group["lr"] = 1e-5 + (lr - 1e-5) * (1 + math.cos(math.pi * t / epochs)) / 2
        sgd.zero_grad()
        model.losses(batch, "train")["total"].backward()
        sgd.step()
        with torch.no_grad():
            maps.append(model(queries, output_size=size).anomaly_map)
        states.append({k: v.clone() for k, v in model.trainable_module().state_dict().items()})
    return maps, states


def test_best_on_test_epoch_is_opt_in_warned_and_keeps_the_best_pixel_auroc(tmp_path, backbone):
    root = synthesize_dataset(tmp_path, ["coins"], n_train=2, n_test=6, image_size=SIZE)
    test = AnomalyDataset(root, "coins", "test", SIZE, mask_size=16)
    queries, masks = test.images(range(len(test))), test.masks(range(len(test)))
    shots = AnomalyDataset(root, "coins", "train", SIZE).images([0, 1])
    lr, epochs = 0.5, 3  # a large step: the epochs' maps differ
    maps, states = _reference_epochs(backbone, shots, queries, 16, lr, epochs)
    aurocs = [roc_auc_score(masks.flatten().numpy() > 0.5, m.flatten().numpy()) for m in maps]
    assert len(set(aurocs)) > 1  # the selection has something to choose
    config = dataclasses.replace(CONFIG, lr=lr)
    train_config = TrainConfig.finegrainedad(epochs=epochs)

    def fresh():
        torch.manual_seed(0)
        return FineGrainedAD(backbone, load_captions("coins"), load_vocabularies(), config)

    model = fresh()
    with pytest.warns(UserWarning, match="TEST set.*optimistic"):
        history = train_on_shots(model, shots, train_config, select_epoch_on_test=(queries, masks))
    recorded = [h["test_P-AUROC"] for h in history]
    assert recorded == pytest.approx(aurocs, abs=1e-6)
    # the first best of the recorded AUROCs (epochs can tie to within rounding, which differs
    # between CPUs: the choice is checked on the recorded values, the values against ours)
    best = max(range(epochs), key=lambda t: (recorded[t], -t))
    assert recorded[best] == pytest.approx(max(aurocs), abs=1e-6)
    assert [h["selected"] for h in history] == [t == best for t in range(epochs)]
    kept = model.trainable_module().state_dict()
    for k, v in states[best].items():
        torch.testing.assert_close(kept[k], v, rtol=1e-5, atol=1e-6)
    # without the option: no warning, the last epoch is kept
    plain = fresh()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        history = train_on_shots(plain, shots, train_config)
    assert all("selected" not in h for h in history)
    kept = plain.trainable_module().state_dict()
    for k, v in states[-1].items():
        torch.testing.assert_close(kept[k], v, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="select_epoch_on_test"):
        train_on_shots(fresh(), shots, train_config, select_epoch_on_test=(queries,))


def test_test_selected_results_are_labelled_apart(tmp_path, backbone):
    root = synthesize_dataset(tmp_path / "data", ["coins"], n_train=2, n_test=4, image_size=SIZE)
    cache = FeatureCache(ImageBackbone.wrap(backbone), progress=False)
    run = dict(config=CONFIG, train_config=TrainConfig.finegrainedad(epochs=2))
    specs = [DatasetSpec("synthetic", root, ("coins",))]
    opts = dict(shots=(1,), seeds=(0,), progress=False)
    with pytest.warns(UserWarning, match="optimistic"):
        results = evaluate_finegrainedad(specs, cache, **run, select_epoch_on_test=True, **opts)
    assert [r.method for r in results] == [TEST_SELECTED_METHOD]
    paths = write_results(
        results, tmp_path / "run", backbone_label="tiny", trained=False, config={}
    )
    table = paths["table"].read_text()
    assert f"# {TEST_SELECTED_METHOD} results" in table
    assert "| FineGrainedAD |" not in table  # not FineGrainedAD's rows, no paper Δ
    assert "FineGrainedAD results" not in table
    assert "Tables 6–10" not in table  # no other paper's numbers are named as its source
    assert "TEST set" in table
    assert "optimistic" in table
    assert TEST_SELECTED_METHOD in paths["csv"].read_text()
    with warnings.catch_warnings():  # the default: no warning, the plain method name
        warnings.simplefilter("error")
        clean = evaluate_finegrainedad(specs, cache, **run, **opts)
    assert [r.method for r in clean] == ["finegrainedad"]
