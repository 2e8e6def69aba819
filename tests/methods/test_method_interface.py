"""Res2CLIP implements the Method interface the engine relies on."""

from __future__ import annotations

import pytest

from resad_kit.clip import ClipBackbone
from resad_kit.methods import Method, OptimizerGroup, Res2CLIP, Res2CLIPConfig


@pytest.fixture(scope="module")
def backbone():
    return ClipBackbone.tiny(seed=0)


def test_training_free_declares_nothing_to_train(backbone):
    model = Res2CLIP(backbone)
    assert isinstance(model, Method)
    assert model.name == "res2clip"
    assert model.phases == ()
    assert not model.trainable
    assert model.optimizer_groups() == []
    assert model.trainable_module() is None
    assert model.mode == "training_free"
    assert Res2CLIPConfig.from_dict(model.config_dict()) == model.config


@pytest.mark.parametrize("preset", ["paper", "official_code"])
def test_fine_tuned_optimisers_cover_every_adapter_once_with_the_config_rates(backbone, preset):
    config = getattr(Res2CLIPConfig, preset)("fine_tuned")
    model = Res2CLIP(backbone, config)
    groups = model.optimizer_groups()
    assert all(isinstance(g, OptimizerGroup) for g in groups)
    assert [g.name for g in groups] == ["visual", "residual_visual", "residual_text", "text"]
    seen = [id(p) for g in groups for m, _ in g.params for p in m.parameters()]
    assert len(seen) == len(set(seen)) == len(list(model.adapters.parameters()))
    rates = {id(m): lr for g in groups for m, lr in g.params}
    a = model.adapters
    assert rates[id(a.visual)] == rates[id(a.residual_local)] == config.lr_local
    assert rates[id(a.residual_global)] == config.lr_global_visual
    assert rates[id(a.text)] == rates[id(a.residual_text)] == config.lr_text
    # each optimiser steps exactly in the phases whose modules it holds
    for g in groups:
        for phase in model.phases:
            trained = set(a.phase_modules(phase).values())
            holds = {m for m, _ in g.params}
            assert (phase in g.phases) == (holds <= trained), (g.name, phase)
    assert model.trainable_module() is a
