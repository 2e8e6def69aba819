"""Tests of the training loop (resad_kit.engine.training; paper App. F.2,
hito2448/Res2CLIP `train.py`)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import resad_kit.engine.training as training
from resad_kit.clip import ClipBackbone
from resad_kit.data import AnomalyDataset, synthesize_dataset
from resad_kit.engine.checkpoint import load_checkpoint
from resad_kit.engine.distributed import DistContext
from resad_kit.engine.features import FeatureCache
from resad_kit.engine.fingerprint import data_fingerprint
from resad_kit.engine.schedule import warmup_cosine
from resad_kit.engine.training import AUXILIARY_DATASET, TrainConfig, TrainResult, train
from resad_kit.methods import Res2CLIP, Res2CLIPConfig, TrainingBatch

SIZE = 32
CATEGORIES = ("grass", "brick")
FINE_TUNED = Res2CLIPConfig.paper(mode="fine_tuned")
# 12 queries (2 categories × 3 normal + 3 anomalous), 3 steps per epoch at batch 4.
FAST = TrainConfig.paper(batch_size=4, warmup_epochs=0, lr_scale=50.0)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def backbone() -> ClipBackbone:
    return ClipBackbone.tiny(image_size=SIZE)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("train_data")
    synthesize_dataset(path, CATEGORIES, n_train=1, n_test=6, image_size=SIZE)
    return path


@pytest.fixture(scope="module")
def datasets(root: Path) -> list[AnomalyDataset]:
    return [AnomalyDataset(root, c, "test", image_size=SIZE) for c in CATEGORIES]


def _model(backbone: ClipBackbone, **overrides) -> Res2CLIP:
    return Res2CLIP(backbone, FINE_TUNED.replace(**overrides) if overrides else FINE_TUNED)


def _run(backbone, datasets, out_dir, config, **kwargs) -> tuple[Res2CLIP, TrainResult]:
    model = _model(backbone)
    cache = FeatureCache(backbone, progress=False)
    return model, train(model, datasets, cache, config, out_dir=out_dir, progress=False, **kwargs)


def _fixed_batch(datasets, backbone) -> TrainingBatch:
    queries = training._Queries(datasets)
    rng = random.Random(0)
    items = queries.items
    refs = [queries.reference(rng, q) for q in items]
    cache = FeatureCache(backbone, progress=False)
    return TrainingBatch(
        queries.features(cache, items), queries.features(cache, refs), queries.masks(items, "cpu")
    )


def _file_contents(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["resad_kit"])  # noqa: SIM118


def _adapter_state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).adapters


# ---------------------------------------------------------------------------- learning


def test_a_few_epochs_lower_the_loss(backbone, datasets, tmp_path):
    batch = _fixed_batch(datasets, backbone)
    model = _model(backbone)
    with torch.no_grad():
        before = {p: model.losses(batch, p)["total"].item() for p in ("visual", "text")}
    cache = FeatureCache(backbone, progress=False)
    config = dataclasses.replace(FAST, epochs=4)
    result = train(model, datasets, cache, config, out_dir=tmp_path, progress=False)
    with torch.no_grad():
        after = {p: model.losses(batch, p)["total"].item() for p in ("visual", "text")}
    # The same batch and references: lower in both phases after training.
    assert after["visual"] < 0.97 * before["visual"]
    assert after["text"] < 0.97 * before["text"]
    # Epoch means of the same phase also go down (even epochs: visual, odd: text).
    means = [e["total"] for e in result.epoch_losses]
    assert [e["phase"] for e in result.epoch_losses] == ["visual", "text"] * 2
    assert means[2] < means[0]
    assert means[3] < means[1]
    assert all(math.isfinite(h["total"]) for h in result.history)
    assert result.epochs == 4
    assert result.global_step == 12 == len(result.history)


def test_each_phase_updates_its_adapters_and_never_the_backbone(backbone, datasets, tmp_path):
    model = _model(backbone)
    init = {k: v.clone() for k, v in model.adapters.state_dict().items()}
    frozen = {k: v.clone() for k, v in backbone.state_dict().items()}
    cache = FeatureCache(backbone, progress=False)
    config = dataclasses.replace(FAST, epochs=2, keep_epoch_checkpoints=True)
    train(model, datasets, cache, config, out_dir=tmp_path, progress=False)

    assert all(not p.requires_grad and p.grad is None for p in backbone.parameters())
    assert all(torch.equal(v, frozen[k]) for k, v in backbone.state_dict().items())
    first = _adapter_state(tmp_path / "checkpoint_epoch001.safetensors")
    second = _adapter_state(tmp_path / "checkpoint_epoch002.safetensors")
    final = model.adapters.state_dict()
    assert all(torch.equal(final[k], v) for k, v in second.items())

    def changed(a, b, family):
        keys = [k for k in a if k.startswith(f"{family}.")]
        return any(not torch.equal(a[k], b[k]) for k in keys)

    # Epoch 0 (visual phase): everything but A_t^res moves.
    assert not changed(init, first, "residual_text")
    for family in ("text", "visual", "residual_local", "residual_global"):
        assert changed(init, first, family), family
    # Epoch 1 (text phase): the residual visual adapters are frozen, A_t^res moves.
    assert not changed(first, second, "residual_local")
    assert not changed(first, second, "residual_global")
    for family in ("text", "visual", "residual_text"):
        assert changed(first, second, family), family


# ---------------------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def uninterrupted(backbone, datasets, tmp_path_factory) -> tuple[TrainResult, Path]:
    out = tmp_path_factory.mktemp("uninterrupted")
    config = TrainConfig.paper(epochs=3, batch_size=4)  # paper warm-up: 1 epoch
    _, result = _run(backbone, datasets, out, config)
    return result, out


def test_resume_reaches_the_same_state_as_an_uninterrupted_run(
    backbone, datasets, tmp_path, monkeypatch, uninterrupted
):
    full, full_dir = uninterrupted
    config = TrainConfig.paper(epochs=3, batch_size=4)
    real_save = training.save_checkpoint

    class Crash(Exception):
        pass

    def save_then_crash(*args, **kwargs):
        real_save(*args, **kwargs)
        raise Crash  # the job dies right after the first epoch's checkpoint

    monkeypatch.setattr(training, "save_checkpoint", save_then_crash)
    with pytest.raises(Crash):
        _run(backbone, datasets, tmp_path, config)
    monkeypatch.setattr(training, "save_checkpoint", real_save)
    assert load_checkpoint(tmp_path / "checkpoint.safetensors").epoch == 1

    random.random(), torch.rand(3)  # disturb the global generators: resume restores them
    _, resumed = _run(backbone, datasets, tmp_path, config, resume=True)

    assert resumed.history == full.history
    assert resumed.epoch_losses == full.epoch_losses
    assert resumed.global_step == full.global_step == 9
    tensors_a, meta_a = _file_contents(full_dir / "checkpoint.safetensors")
    tensors_b, meta_b = _file_contents(tmp_path / "checkpoint.safetensors")
    assert tensors_a.keys() == tensors_b.keys()
    for key, value in tensors_a.items():  # adapters, Adam moments and steps, RNG states
        assert torch.equal(value, tensors_b[key]), key
    assert meta_a == meta_b  # scheduler states, param groups, history, epoch, step
    assert any(k.startswith("optimizers.residual_text.state") for k in tensors_a)


def test_learning_rates_follow_each_optimizers_own_schedule(uninterrupted):
    """Warm-up over one epoch of each optimiser's own steps, then cosine to 0 (App. F.2;
    hito2448/Res2CLIP `utils/utils.py`, ``get_cosine_schedule_with_warmup``)."""
    result, _ = uninterrupted
    base = {"visual": 5e-4, "residual_visual": 5e-4, "text": 1e-4, "residual_text": 1e-4}
    total = {"visual": 9, "text": 9, "residual_visual": 6, "residual_text": 3}
    own = Counter()
    for h in result.history:
        expected_active = {"visual", "text", f"residual_{h['phase']}"}
        assert set(h["lr"]) == expected_active
        for name, lr in h["lr"].items():
            expected = base[name] * warmup_cosine(own[name], 3, total[name])
            assert lr == pytest.approx(expected, rel=1e-9, abs=1e-15), (h["step"], name)
            own[name] += 1
    # The first step of every optimiser runs at lr 0, A_t^res's in epoch 1.
    assert result.history[0]["lr"] == dict.fromkeys(["visual", "residual_visual", "text"], 0.0)
    assert result.history[3]["lr"]["residual_text"] == 0.0
    assert result.history[3]["lr"]["visual"] > 0


def test_resume_checks_the_settings(backbone, datasets, tmp_path):
    config = dataclasses.replace(FAST, epochs=1)
    with pytest.raises(ValueError, match="no checkpoint"):
        _run(backbone, datasets, tmp_path, config, resume=True)
    _run(backbone, datasets, tmp_path, config)
    with pytest.raises(ValueError, match=r"training configuration differs.*epochs"):
        _run(backbone, datasets, tmp_path, FAST, resume=True)
    # Resuming a finished run trains nothing and returns its record.
    _, again = _run(backbone, datasets, tmp_path, config, resume=True)
    assert again.epochs == 1
    assert again.global_step == 3
    assert len(again.history) == 3


def test_resume_refuses_other_training_data(backbone, tmp_path):
    """The checkpoint records the training data; resuming on other image bytes or other
    mask preprocessing raises a ValueError that names the difference and loads nothing."""
    root = synthesize_dataset(tmp_path / "data", ["grass"], n_train=1, n_test=6, image_size=SIZE)
    data = [AnomalyDataset(root, "grass", "test", image_size=SIZE)]
    config = dataclasses.replace(FAST, epochs=1)
    _run(backbone, data, tmp_path / "run", config)
    record = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors").data
    assert record == data_fingerprint(data)

    bilinear = [
        AnomalyDataset(root, "grass", "test", image_size=SIZE, mask_interpolation="bilinear")
    ]
    with pytest.raises(ValueError, match=r"training data differs.*mask_interpolation"):
        _run(backbone, bilinear, tmp_path / "run", config, resume=True)

    first, second = data[0].samples[0], data[0].samples[1]
    first.path.write_bytes(second.path.read_bytes())  # another picture under the same name
    model = _model(backbone)
    before = {k: v.clone() for k, v in model.adapters.state_dict().items()}
    cache = FeatureCache(backbone, progress=False)
    with pytest.raises(ValueError, match=rf"other image bytes: '{first.relative_path}'"):
        train(model, data, cache, config, out_dir=tmp_path / "run", resume=True, progress=False)
    assert all(torch.equal(v, before[k]) for k, v in model.adapters.state_dict().items())


def test_resume_auto_starts_or_continues(backbone, datasets, tmp_path):
    """``resume="auto"``: a fresh run without a checkpoint, a resumed one with it."""
    config = dataclasses.replace(FAST, epochs=1)
    torch.manual_seed(0)  # the adapters' random initialisation
    _, fresh = _run(backbone, datasets, tmp_path / "plain", config)
    torch.manual_seed(0)
    _, auto = _run(backbone, datasets, tmp_path / "auto", config, resume="auto")
    assert auto.history == fresh.history  # no checkpoint: the same as resume=False
    _, again = _run(backbone, datasets, tmp_path / "auto", config, resume="auto")
    assert again.history == fresh.history  # finished: loaded, nothing trained
    with pytest.raises(ValueError, match=r"training configuration differs.*epochs"):
        _run(backbone, datasets, tmp_path / "auto", FAST, resume="auto")
    with pytest.raises(ValueError, match=r"`resume` must be True, False or 'auto'; got 'yes'"):
        _run(backbone, datasets, tmp_path / "auto", config, resume="yes")


# ---------------------------------------------------------------------------- data


def test_reference_draws_are_other_normals_of_the_same_category(datasets):
    queries = training._Queries(datasets)
    rng = random.Random(1)
    counts: Counter = Counter()
    for _ in range(300):
        for q in queries.items:
            ref = queries.reference(rng, q)
            d, i = ref
            assert d == q[0]
            assert ref != q
            assert datasets[d].labels[i] == 0
            counts[q, ref] += 1
    # Uniform over the other normals: 3 normals per category, so a normal query has 2
    # candidates (150 draws each expected) and an anomalous one 3 (100 each).
    for (q, _), c in counts.items():
        expected = 150 if datasets[q[0]].labels[q[1]] == 0 else 100
        assert abs(c - expected) < 45, (q, c)
    assert len(counts) == 2 * (3 * 2 + 3 * 3)


def test_features_and_masks_of_a_mixed_batch(backbone, datasets):
    queries = training._Queries(datasets)
    cache = FeatureCache(backbone, progress=False)
    items = [(1, 4), (0, 0), (1, 0), (0, 5), (0, 0)]
    got = queries.features(cache, items)
    for b, (d, i) in enumerate(items):
        one = cache.features(datasets[d], [i])
        assert torch.equal(got.cls[b], one.cls[0])
        assert all(torch.equal(p[b], q[0]) for p, q in zip(got.patches, one.patches, strict=True))
    masks = queries.masks(items, torch.device("cpu"))
    assert masks.shape == (5, SIZE, SIZE)
    assert masks.dtype == torch.float32
    for b, (d, i) in enumerate(items):
        assert torch.equal(masks[b], datasets[d][i]["mask"][0])
    assert masks[0].any()
    assert not masks[1].any()
    assert torch.equal(queries.masks(items, torch.device("cpu")), masks)  # from the packed copy


def test_epoch_order_is_a_seeded_permutation():
    a, b = training._epoch_order(12, 111, 0), training._epoch_order(12, 111, 1)
    assert sorted(a) == list(range(12))
    assert a != b
    assert a == training._epoch_order(12, 111, 0) != training._epoch_order(12, 112, 0)


def test_auxiliary_dataset_protocol():
    # Paper Sec. 4.1: VisA trains the model tested on MVTec AD, MVTec AD all the others.
    assert dict(AUXILIARY_DATASET) == {
        "mvtec": "visa", "visa": "mvtec", "btad": "mvtec", "mpdd": "mvtec", "dtd": "mvtec",
    }  # fmt: skip


# ---------------------------------------------------------------------------- errors


def test_clear_errors(backbone, datasets, tmp_path):
    cache = FeatureCache(backbone, progress=False)
    with pytest.raises(ValueError, match="training-free"):
        train(Res2CLIP(backbone), datasets, cache, FAST, out_dir=tmp_path, progress=False)
    model = _model(backbone)
    with pytest.raises(ValueError, match="must not be empty"):
        train(model, [], cache, FAST, out_dir=tmp_path)
    with pytest.raises(TypeError, match="sequence of AnomalyDataset"):
        train(model, datasets[0], cache, FAST, out_dir=tmp_path)
    other = FeatureCache(ClipBackbone.tiny(seed=4, image_size=SIZE), progress=False)
    with pytest.raises(ValueError, match="another backbone"):
        train(model, datasets, other, FAST, out_dir=tmp_path)
    mixed = [*datasets, AnomalyDataset(datasets[0].root, "grass", "test", image_size=16)]
    with pytest.raises(ValueError, match="same image_size"):
        train(model, mixed, cache, FAST, out_dir=tmp_path)


def test_a_category_needs_two_normal_images(backbone, tmp_path):
    synthesize_dataset(tmp_path, ["coins"], n_train=1, n_test=2, image_size=SIZE)  # 1 normal
    data = [AnomalyDataset(tmp_path, "coins", "test", image_size=SIZE)]
    cache = FeatureCache(backbone, progress=False)
    with pytest.raises(ValueError, match=r"'coins' .* 1 normal image"):
        train(_model(backbone), data, cache, FAST, out_dir=tmp_path / "out")


def test_non_finite_loss_stops_training(backbone, datasets, tmp_path):
    model = _model(backbone)
    nan = torch.tensor(float("nan"), requires_grad=True)
    model.losses = lambda batch, phase: dict.fromkeys(("text", "visual", "residual", "total"), nan)
    cache = FeatureCache(backbone, progress=False)
    with pytest.raises(FloatingPointError, match="non-finite loss at epoch 0 step 0"):
        train(model, datasets, cache, FAST, out_dir=tmp_path, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": 0}, "`epochs`"),
        ({"batch_size": 1.5}, "`batch_size`"),
        ({"warmup_epochs": -1}, "`warmup_epochs`"),
        ({"betas": (0.5,)}, "`betas`"),
        ({"betas": (0.5, 1.0)}, "`betas`"),
        ({"grad_clip": 0.0}, "`grad_clip`"),
        ({"lr_scale": float("nan")}, "`lr_scale`"),
        ({"weight_decay": -1.0}, "`weight_decay`"),
    ],
)
def test_train_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_multi_process_checks(backbone, caplog):
    model = _model(backbone)
    ctx = DistContext(rank=0, world_size=2, backend="gloo")
    with pytest.raises(ValueError, match="at least one query per process"):
        training._check_dist(ctx, model, 13, 4)  # last batch: 1 query for 2 processes
    with caplog.at_level(logging.WARNING, logger="resad_kit.engine.training"):
        training._check_dist(ctx, model, 12, 4)
    assert "loss_reduction='batch'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="resad_kit.engine.training"):
        training._check_dist(ctx, _model(backbone, loss_reduction="per_sample"), 12, 4)
        assert not caplog.text
        training._check_dist(ctx, _model(backbone, loss_reduction="per_sample"), 12, 3)
    assert "does not split evenly" in caplog.text


def test_the_afclip_preset_and_the_constant_schedule():
    """TrainConfig.afclip(): the official AF-CLIP recipe; lr_schedule='constant' keeps every
    group's learning rate at every step, and its scheduler state round-trips."""
    from resad_kit.engine.optimization import build_optimization
    from resad_kit.methods import AFCLIP

    c = TrainConfig.afclip(epochs=3)
    assert (c.epochs, c.batch_size, c.warmup_epochs, c.betas) == (3, 8, 0, (0.5, 0.999))
    assert (c.grad_clip, c.weight_decay, c.seed, c.lr_schedule) == (None, 0.0, 122, "constant")
    assert TrainConfig.paper().lr_schedule == "warmup_cosine"
    with pytest.raises(ValueError, match="`lr_schedule` must be one of"):
        TrainConfig(lr_schedule="step")
    backbone = ClipBackbone.tiny(vv_blocks=0, tap_output="residual", tap_cls=True)
    opt = build_optimization(AFCLIP(backbone), c, steps_per_epoch=2)
    (optimizer,), (scheduler,) = opt.optimizers.values(), opt.schedulers.values()
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == [1e-4] * 6
    again = build_optimization(AFCLIP(backbone), c, steps_per_epoch=2).schedulers["afclip"]
    again.load_state_dict(scheduler.state_dict())
    assert again.last_epoch == 6


def test_a_method_without_training_references_needs_no_normal_image(tmp_path):
    """Queries(references=False) (AF-CLIP) accepts a category with anomalous images only;
    the 1-shot references of Res2CLIP still need a normal image."""
    import shutil

    root = synthesize_dataset(tmp_path, ["grass"], n_train=1, n_test=4, image_size=32)
    shutil.rmtree(root / "grass" / "test" / "good")
    data = [AnomalyDataset(root, "grass", "test", image_size=32)]
    assert set(data[0].labels) == {1}
    queries = training._Queries(data, references=False)
    assert len(queries.items) == 2
    with pytest.raises(ValueError, match="has 0 normal image"):
        training._Queries(data)
