"""The nearest-neighbour memory-bank method (resad_kit.methods.nearest_neighbor).

It is a composition of the public ops: the tests rebuild its maps from the ops directly
and check the Method interface it declares (phases, optimiser groups, losses).
"""

from __future__ import annotations

import pytest
import torch

from resad_kit.clip import ClipBackbone
from resad_kit.methods import (
    Method,
    NearestNeighbor,
    NearestNeighborConfig,
    Res2CLIP,
    TrainingBatch,
)
from resad_kit.ops import gaussian_blur, knn_distance, top_fraction_mean, upsample_patches


@pytest.fixture(scope="module")
def backbone() -> ClipBackbone:
    return ClipBackbone.tiny(image_size=32)


def _images(seed: int, n: int) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("score", ["max", "top_fraction_mean"])
def test_forward_equals_direct_composition_of_the_ops(backbone, score):
    """forward = kNN distance to the bank per tap, mean over taps, upsample, blur, max/top-q."""
    config = NearestNeighborConfig.patchcore(taps=(1, 3), k=2, score=score, top_fraction=0.1)
    refs, queries = _images(0, 2), _images(1, 3)
    pred = NearestNeighbor(backbone, config).fit_references(refs)(
        queries, return_intermediates=True
    )

    r, q = backbone(refs), backbone(queries)
    per_tap = []
    for t in (1, 3):
        bank = r.patches[t].reshape(-1, r.patches[t].shape[-1])  # (K·N, D)
        per_tap.append(knn_distance(q.patches[t], bank, k=2).mean(-1))  # (B, N)
    patch = torch.stack(per_tap).mean(0)
    expected = gaussian_blur(upsample_patches(patch, (32, 32), q.grid), 4.0, 5)
    torch.testing.assert_close(pred.anomaly_map, expected, rtol=0, atol=1e-6)
    want = expected.flatten(1).amax(1) if score == "max" else top_fraction_mean(expected, 0.1)
    torch.testing.assert_close(pred.image_score, want, rtol=0, atol=1e-6)
    assert pred.branches == {}
    assert pred.intermediates["patch_distance"].shape == (2, 3, q.grid[0] * q.grid[1], 2)


def test_a_reference_as_query_scores_zero_and_features_equal_images(backbone):
    """A query that is one of the references has distance 0 everywhere; features ≡ images."""
    refs = _images(2, 2)
    model = NearestNeighbor(backbone).fit_references(backbone(refs))
    pred = model(refs[:1])
    torch.testing.assert_close(pred.anomaly_map, torch.zeros(1, 32, 32), rtol=0, atol=1e-6)
    other = _images(3, 2)
    by_features = model(backbone(other), output_size=32)
    torch.testing.assert_close(by_features.anomaly_map, model(other).anomaly_map)


def test_interface_training_free_and_trainable(backbone):
    """Training-free: no phases/groups and losses refuse; trainable: one 'train' phase."""
    free = NearestNeighbor(backbone)
    assert isinstance(free, Method)
    assert (free.name, free.phases, free.trainable, free.mode) == (
        "nearest_neighbor",
        (),
        False,
        "training_free",
    )
    assert free.optimizer_groups() == []
    assert free.trainable_module() is None
    assert free.config_dict() == NearestNeighborConfig().to_dict()
    tuned = NearestNeighbor(backbone, NearestNeighborConfig.patchcore(trainable=True, lr=0.01))
    assert (tuned.phases, tuned.mode) == (("train",), "fine_tuned")
    (group,) = tuned.optimizer_groups()
    assert (group.name, group.params, group.phases) == (
        "projection",
        ((tuned.projection, 0.01),),
        ("train",),
    )
    assert tuned.trainable_module() is tuned.projection
    refs = _images(4, 2)  # the identity projection: same maps as training-free
    torch.testing.assert_close(
        tuned.fit_references(refs)(refs).anomaly_map, free.fit_references(refs)(refs).anomaly_map
    )


def test_losses_reach_only_the_projection(backbone):
    """Losses are finite, 'total' = l1 + dice, gradients reach the projection only."""
    model = NearestNeighbor(backbone, NearestNeighborConfig.patchcore(trainable=True))
    masks = torch.zeros(2, 32, 32)
    masks[0, 8:20, 8:20] = 1
    batch = TrainingBatch(backbone(_images(5, 2)), backbone(_images(6, 2)), masks)
    losses = model.losses(batch, "train")
    assert set(losses) == {"l1", "dice", "total"}
    torch.testing.assert_close(losses["total"], losses["l1"] + losses["dice"])
    losses["total"].backward()
    assert model.projection.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.parameters())
    with pytest.raises(ValueError, match="nothing to train in phase 'visual'"):
        model.losses(batch, "visual")
    with pytest.raises(ValueError, match="nothing to train"):
        NearestNeighbor(backbone).losses(batch, "train")


def test_config_round_trip_and_invalid_values(backbone):
    """to_dict/from_dict round-trip; invalid fields and unknown keys raise named errors."""
    config = NearestNeighborConfig.patchcore(taps=(0, -1), k=3, trainable=True)
    assert NearestNeighborConfig.from_dict(config.to_dict()) == config
    assert NearestNeighbor(backbone, config).taps == (0, 3)
    with pytest.raises(ValueError, match="unknown fields"):
        NearestNeighborConfig.from_dict({"mode": "x"})
    for bad in ({"k": 0}, {"score": "mean"}, {"blur_kernel": 4}, {"taps": ()}):
        with pytest.raises(ValueError, match="NearestNeighborConfig"):
            NearestNeighborConfig(**bad)
    with pytest.raises(ValueError, match="out of range"):
        NearestNeighbor(backbone, NearestNeighborConfig(taps=(7,)))
    with pytest.raises(ValueError, match="fit_references"):
        NearestNeighbor(backbone)(_images(0, 1))
    assert not isinstance(NearestNeighbor(backbone), Res2CLIP)
