"""SGD + cosine training settings (FineGrainedAD) next to the default Adam ones."""

from __future__ import annotations

import math

import pytest
import torch

from resad_kit.clip import ClipBackbone
from resad_kit.engine.optimization import build_optimization
from resad_kit.engine.training import TrainConfig
from resad_kit.methods import Res2CLIP, Res2CLIPConfig


@pytest.fixture(scope="module")
def model() -> Res2CLIP:
    torch.manual_seed(0)
    return Res2CLIP(ClipBackbone.tiny(), Res2CLIPConfig.paper(mode="fine_tuned"))


def test_finegrainedad_preset_values() -> None:
    c = TrainConfig.finegrainedad()
    assert (c.optimizer, c.lr_schedule, c.epochs, c.warmup_epochs, c.grad_clip) == (
        "sgd",
        "cosine",
        100,
        0,
        None,
    )
    assert (c.momentum, c.weight_decay, c.min_lr, c.seed) == (0.9, 5e-4, 1e-5, 111)
    assert TrainConfig.finegrainedad(epochs=3).epochs == 3


def test_defaults_unchanged() -> None:
    c = TrainConfig.paper()
    assert (c.optimizer, c.lr_schedule, c.min_lr) == ("adam", "warmup_cosine", 0.0)
    assert TrainConfig.afclip().optimizer == "adam"


def test_sgd_optimizer_hyper_parameters(model: Res2CLIP) -> None:
    config = TrainConfig.finegrainedad(epochs=4)
    opt = build_optimization(model, config, steps_per_epoch=1)
    groups = model.optimizer_groups()
    for group in groups:
        optimizer = opt.optimizers[group.name]
        assert type(optimizer) is torch.optim.SGD
        assert type(opt.schedulers[group.name]) is torch.optim.lr_scheduler.CosineAnnealingLR
        for pg, (_, lr) in zip(optimizer.param_groups, group.params, strict=True):
            assert pg["lr"] == pytest.approx(lr)  # no warm-up: the first step at full lr
            assert (pg["momentum"], pg["weight_decay"], pg["nesterov"]) == (0.9, 5e-4, False)


def test_adam_still_default(model: Res2CLIP) -> None:
    opt = build_optimization(model, TrainConfig.paper(epochs=2), steps_per_epoch=1)
    assert all(type(o) is torch.optim.Adam for o in opt.optimizers.values())
    assert opt.optimizers["visual"].param_groups[0]["betas"] == (0.5, 0.999)


def test_cosine_curve_matches_closed_form(model: Res2CLIP) -> None:
    epochs, spe, floor = 6, 3, 1e-5
    config = TrainConfig.finegrainedad(epochs=epochs, min_lr=floor)
    opt = build_optimization(model, config, steps_per_epoch=spe)
    optimizer, scheduler = opt.optimizers["visual"], opt.schedulers["visual"]  # every phase
    base = optimizer.param_groups[0]["lr"]
    total = epochs * spe
    seen = []
    for _ in range(total + 1):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [
        floor + (base - floor) * (1 + math.cos(math.pi * t / total)) / 2 for t in range(total + 1)
    ]
    assert seen == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert seen[-1] == pytest.approx(floor)
    assert seen[0] == pytest.approx(base)


def test_cosine_counts_only_active_steps(model: Res2CLIP) -> None:
    # `residual_text` steps only in the "text" phase: half of the epochs
    opt = build_optimization(model, TrainConfig.finegrainedad(epochs=4), steps_per_epoch=2)
    assert opt.schedulers["residual_text"].T_max == 4
    assert opt.schedulers["visual"].T_max == 8


@pytest.mark.parametrize(
    ("field", "value"),
    [("optimizer", "adamw"), ("momentum", -0.1), ("min_lr", float("nan")), ("lr_schedule", "step")],
)
def test_invalid_settings(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"`{field}`"):
        TrainConfig(**{field: value})
