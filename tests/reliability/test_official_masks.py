"""`run_evaluation(mask_interpolation=...)` reaches the test masks: the official profile
evaluates against masks resized bilinearly and thresholded at 0.5, as the official code
(before, the protocol always resized test masks with nearest neighbour)."""

from __future__ import annotations

import pytest
import torch

import resad_kit.engine.protocol as protocol
from resad_kit.clip import ClipBackbone
from resad_kit.data import AnomalyDataset, synthesize_dataset
from resad_kit.engine import DatasetSpec, FeatureCache, run_evaluation
from resad_kit.methods import Res2CLIP


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_test_masks_use_the_requested_resize(tmp_path, monkeypatch, mode):
    root = synthesize_dataset(tmp_path, ["grass"], 2, 4, image_size=37)
    backbone = ClipBackbone.tiny(image_size=32)
    seen = []
    real = protocol.evaluate_category

    def spy(models, dataset, test, *args, **kwargs):
        seen.append(test.masks(range(len(test))))
        return real(models, dataset, test, *args, **kwargs)

    monkeypatch.setattr(protocol, "evaluate_category", spy)
    run_evaluation(
        {("training_free", "synthetic"): Res2CLIP(backbone)},
        [DatasetSpec("synthetic", root, ("grass",))],
        FeatureCache(backbone, progress=False),
        shots=(1,),
        seeds=(0,),
        eval_size=16,
        mask_interpolation=mode,
        heatmaps=0,
        progress=False,
    )
    expected = AnomalyDataset(root, "grass", "test", 32, mask_size=16, mask_interpolation=mode)
    assert torch.equal(seen[0], expected.masks(range(len(expected))))
    other = "nearest" if mode == "bilinear" else "bilinear"
    different = AnomalyDataset(root, "grass", "test", 32, mask_size=16, mask_interpolation=other)
    assert not torch.equal(seen[0], different.masks(range(len(different))))
