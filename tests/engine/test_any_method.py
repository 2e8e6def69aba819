"""The engine runs any Method: a second method (NearestNeighbor) trains, checkpoints and
evaluates through the same code as Res2CLIP, with results equal to direct recomputations."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch
from torch import nn

import resad_kit.engine.training as training
from resad_kit.clip import ClipBackbone
from resad_kit.data import AnomalyDataset, sample_references, synthesize_dataset
from resad_kit.engine.checkpoint import load_checkpoint, save_checkpoint
from resad_kit.engine.features import FeatureCache
from resad_kit.engine.optimization import build_optimization
from resad_kit.engine.protocol import DatasetSpec, evaluate_category, run_evaluation
from resad_kit.engine.results import write_results
from resad_kit.engine.training import TrainConfig, train
from resad_kit.methods import (
    NearestNeighbor,
    NearestNeighborConfig,
    OptimizerGroup,
    Res2CLIP,
    Res2CLIPConfig,
    TrainingBatch,
)
from resad_kit.metrics import evaluate

SIZE = 32
TRAINABLE = NearestNeighborConfig.patchcore(trainable=True, lr=0.05)
FAST = TrainConfig.paper(epochs=2, batch_size=4, warmup_epochs=0)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def backbone() -> ClipBackbone:
    return ClipBackbone.tiny(image_size=SIZE)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("any_method")
    return synthesize_dataset(path, ["grass", "brick"], n_train=3, n_test=6, image_size=SIZE)


@pytest.fixture(scope="module")
def datasets(root) -> list[AnomalyDataset]:
    return [AnomalyDataset(root, c, "test", image_size=SIZE) for c in ("grass", "brick")]


@pytest.fixture(scope="module")
def cache(backbone) -> FeatureCache:
    return FeatureCache(backbone, progress=False)


@pytest.fixture(scope="module")
def trained(backbone, datasets, cache, tmp_path_factory):
    model = NearestNeighbor(backbone, TRAINABLE)
    out = tmp_path_factory.mktemp("nn_run")
    result = train(model, datasets, cache, FAST, out_dir=out, progress=False)
    return model, result, out


def test_the_first_step_equals_a_direct_recomputation(backbone, datasets, cache, trained):
    """Step 0's logged losses are model.losses of the engine's first batch and references."""
    _, result, _ = trained
    queries = training._Queries(datasets)
    order = training._epoch_order(len(queries.items), FAST.seed, 0)
    items = [queries.items[k] for k in order[: FAST.batch_size]]
    rng = random.Random(FAST.seed)
    refs = [queries.reference(rng, q) for q in items]
    batch = TrainingBatch(
        queries.features(cache, items), queries.features(cache, refs), queries.masks(items, "cpu")
    )
    with torch.no_grad():
        expected = NearestNeighbor(backbone, TRAINABLE).losses(batch, "train")
    first = result.history[0]
    assert list(first)[:3] == ["epoch", "step", "phase"]
    assert (first["phase"], first["lr"]) == ("train", {"projection": 0.05})
    for key in ("l1", "dice", "total"):  # the loss terms model.losses returns
        assert first[key] == pytest.approx(expected[key].item(), rel=1e-6, abs=1e-7), key


def test_a_second_method_trains_through_the_engine(backbone, trained):
    """Every epoch trains phase 'train', the projection moves, the backbone does not, and
    the checkpoint records the method and its config."""
    model, result, out = trained
    assert [e["phase"] for e in result.epoch_losses] == ["train", "train"]
    assert result.global_step == 2 * 3 == len(result.history)  # 12 queries, batch 4
    assert not torch.equal(model.projection.weight, torch.eye(32))
    assert all(p.grad is None for p in backbone.parameters())
    ckpt = load_checkpoint(out / "checkpoint.safetensors")
    assert ckpt.method == "nearest_neighbor"
    assert NearestNeighborConfig.from_dict(ckpt.model_config) == TRAINABLE
    assert torch.equal(ckpt.state["weight"], model.projection.weight.detach())
    assert list(ckpt.optimizers) == ["projection"]


def test_resume_refuses_a_checkpoint_of_another_method(backbone, datasets, cache, tmp_path):
    """A run directory holding a Res2CLIP checkpoint cannot be resumed by another method."""
    res2clip = Res2CLIP(backbone, Res2CLIPConfig.paper(mode="fine_tuned"))
    save_checkpoint(tmp_path / "checkpoint.safetensors", res2clip)
    model = NearestNeighbor(backbone, TRAINABLE)
    with pytest.raises(
        ValueError, match="checkpoint of method 'res2clip', model is 'nearest_neighbor'"
    ):
        train(model, datasets, cache, FAST, out_dir=tmp_path, resume=True, progress=False)


def test_training_free_and_foreign_models_are_clear_errors(backbone, datasets, cache, tmp_path):
    with pytest.raises(
        ValueError, match=r"'nearest_neighbor', mode 'training_free'.*training-free"
    ):
        train(NearestNeighbor(backbone), datasets, cache, FAST, out_dir=tmp_path)
    with pytest.raises(TypeError, match=r"must be a resad_kit\.methods\.Method; got Linear"):
        train(nn.Linear(2, 2), datasets, cache, FAST, out_dir=tmp_path)


def test_optimisers_follow_the_declared_groups(backbone):
    """One Adam per group, one parameter group per (module, lr) at lr × lr_scale; bad
    declarations are refused."""
    model = NearestNeighbor(backbone, TRAINABLE)
    opt = build_optimization(model, dataclasses.replace(FAST, lr_scale=2.0), steps_per_epoch=3)
    (adam,) = opt.optimizers.values()
    assert adam.defaults["betas"] == (0.5, 0.999)
    assert [g["lr"] for g in adam.param_groups] == [0.1]  # no warm-up: full lr
    assert adam.param_groups[0]["params"] == [model.projection.weight]
    assert opt.active("train") == ["projection"]
    p = model.projection
    for groups, match in (
        ([], "non-empty list"),
        ([OptimizerGroup("a", ((p, 0.1),), ("train",))] * 2, "unique"),
        ([OptimizerGroup("a", ((p, 0.1),), ("visual",))], "subset of the model's phases"),
        ([OptimizerGroup("a", ((p, 0.1), (p, 0.2)), ("train",))], "in two groups"),
        ([OptimizerGroup("a", ((p, -1.0),), ("train",))], "learning rate -1.0"),
    ):
        model.optimizer_groups = lambda groups=groups: groups
        with pytest.raises(ValueError, match=match):
            build_optimization(model, FAST, steps_per_epoch=3)


def test_a_second_method_evaluates_through_the_protocol(backbone, root, cache, trained, tmp_path):
    """run_evaluation with NearestNeighbor models (training-free and trained) gives the
    metrics of a direct fit + forward + evaluate, and writes their heat maps."""
    model, _, _ = trained
    models = {("training_free", "synth"): NearestNeighbor(backbone), ("fine_tuned", "synth"): model}
    results = run_evaluation(
        models,
        [DatasetSpec("synth", root, ("brick",))],
        cache,
        shots=(2,),
        seeds=(3,),
        heatmap_dir=tmp_path,
        heatmaps=2,
        progress=False,
    )
    assert [(r.method, r.mode) for r in results] == [
        ("nearest_neighbor", "fine_tuned"),
        ("nearest_neighbor", "training_free"),
    ]
    test = AnomalyDataset(root, "brick", "test", SIZE)
    train_split = AnomalyDataset(root, "brick", "train", SIZE)
    refs = sample_references(train_split, 2, seed=3)
    masks = torch.stack([test[i]["mask"][0] for i in range(len(test))])
    images = test.images(list(range(len(test))))
    for result in results:
        direct = models[result.mode, "synth"].fit_references(refs.images)
        with torch.no_grad():
            pred = direct(images)
        expected = evaluate(pred.image_score, pred.anomaly_map, torch.tensor(test.labels), masks)
        assert result.references == refs.paths
        assert result.metrics == pytest.approx(expected, abs=1e-6), result.mode
    assert results[0].metrics != results[1].metrics  # training changed the predictions
    pngs = {p.relative_to(tmp_path).parts[:4] for p in tmp_path.rglob("*.png")}
    assert pngs == {
        ("nearest_neighbor", m, "synth", "brick") for m in ("training_free", "fine_tuned")
    }


def test_one_run_compares_two_methods_on_the_same_references(backbone, root, cache, tmp_path):
    """Res2CLIP and NearestNeighbor in one run: each result names its method, both see the
    same references, Res2CLIP's heat maps keep their folders and the bank's get its name,
    and table.md shows the bank in its own block."""
    models = {
        ("training_free", "synth"): Res2CLIP(backbone),
        ("nearest_neighbor", "synth"): NearestNeighbor(backbone),
    }
    results = run_evaluation(
        models,
        [DatasetSpec("synth", root, ("grass",))],
        cache,
        shots=(1,),
        seeds=(0,),
        heatmap_dir=tmp_path,
        heatmaps=1,
        progress=False,
    )
    assert [(r.method, r.mode) for r in results] == [
        ("nearest_neighbor", "training_free"),
        ("res2clip", "training_free"),
    ]
    assert results[0].references == results[1].references
    assert results[0].metrics != results[1].metrics
    folders = {p.parent.relative_to(tmp_path) for p in tmp_path.rglob("*.png")}
    assert {f.parts[:3] for f in folders} == {
        ("training_free", "synth", "grass"),
        ("nearest_neighbor", "training_free", "synth"),
    }
    # table.md: one block per method, the bank's with its own I-AUROC (one seed: the mean).
    out = tmp_path / "out"
    table = write_results(results, out, backbone_label="tiny", trained=False, config={})
    text = table["table"].read_text()
    bank = text[text.index("## nearest_neighbor") :]
    assert "Res²CLIP" in text[: text.index("## nearest_neighbor")]
    assert f"| 1 | synth | {100 * results[0].metrics['I-AUROC']:.1f} |" in bank
    twice = {("a", "synth"): NearestNeighbor(backbone), ("b", "synth"): NearestNeighbor(backbone)}
    with pytest.raises(ValueError, match="both 'nearest_neighbor' in mode 'training_free'"):
        run_evaluation(twice, [DatasetSpec("synth", root, ("grass",))], cache)


def test_a_model_keyed_by_another_mode_is_refused(backbone, root, cache):
    """Keys are the models' modes: a trainable model keyed 'training_free' would mislabel."""
    test = AnomalyDataset(root, "brick", "test", SIZE)
    train_split = AnomalyDataset(root, "brick", "train", SIZE)
    tuned = NearestNeighbor(backbone, TRAINABLE)
    with pytest.raises(ValueError, match="keyed 'training_free' but the 'nearest_neighbor'"):
        evaluate_category({"training_free": tuned}, "synth", test, train_split, cache)
    with pytest.raises(TypeError, match=r"must be a resad_kit\.methods\.Method"):
        run_evaluation({("training_free", "synth"): nn.Linear(2, 2)}, [], cache)


def test_res2clip_groups_build_the_official_four_optimisers(backbone):
    """The optimisers built from Res2CLIP's declared groups are the official code's four:
    the adapter families' parameters in the same order, their lrs × lr_scale, their phases."""
    model = Res2CLIP(backbone, Res2CLIPConfig.official_code(mode="fine_tuned"))
    config = TrainConfig.paper(epochs=3, lr_scale=2.0)
    opt = build_optimization(model, config, steps_per_epoch=2)
    c = model.config
    families = {
        g["name"]: g
        for g in model.adapters.parameter_groups(
            lr_local=2 * c.lr_local, lr_text=2 * c.lr_text, lr_global_visual=2 * c.lr_global_visual
        )
    }
    official = {
        "visual": (("visual",), ("visual", "text")),
        "residual_visual": (("residual_local", "residual_global"), ("visual",)),
        "residual_text": (("residual_text",), ("text",)),
        "text": (("text",), ("visual", "text")),
    }
    assert list(opt.optimizers) == list(official)
    for name, (members, phases) in official.items():
        groups = opt.optimizers[name].param_groups
        assert [g["params"] for g in groups] == [families[f]["params"] for f in members]
        assert [g["initial_lr"] for g in groups] == [families[f]["lr"] for f in members]
        assert opt.phases[name] == phases
    # Each counts its own active steps: 3 epochs → visual/text 6 steps, residual 4 / 2.
    totals = {n: s.lr_lambdas[0].total_steps for n, s in opt.schedulers.items()}
    assert totals == {"visual": 6, "residual_visual": 4, "residual_text": 2, "text": 6}
