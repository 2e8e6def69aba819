"""FineGrainedAD through the engine: image-packing backbone, per-shot training, protocol."""

from __future__ import annotations

import math

import pytest
import torch

from resad_kit.clip import ClipBackbone
from resad_kit.clip.image_backbone import ImageBackbone
from resad_kit.clip.mfsc import load_captions, load_vocabularies
from resad_kit.data import AnomalyDataset, synthesize_dataset
from resad_kit.engine import DatasetSpec, FeatureCache
from resad_kit.engine.finegrainedad_protocol import (
    FewShotFineGrainedAD,
    evaluate_finegrainedad,
    train_on_shots,
)
from resad_kit.engine.results import write_results
from resad_kit.engine.training import TrainConfig
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
