"""``eval_size`` sets the resolution of the evaluation: maps and masks at that side.

``run_evaluation(..., eval_size=S)`` must give the metrics of the predictions made at
``output_size=S`` against the masks loaded at ``mask_size=S`` (computed here directly with
the composer and the metrics engine), and those differ from the metrics at the backbone's
input size, so a protocol that ignored ``eval_size`` anywhere (the test split's
``mask_size``, the map size of ``forward``) fails.
"""

from __future__ import annotations

import pytest
import torch

from resad_kit.clip import ClipBackbone
from resad_kit.data import AnomalyDataset, sample_references, synthesize_dataset
from resad_kit.engine.features import FeatureCache
from resad_kit.engine.protocol import DatasetSpec, evaluate_category, run_evaluation
from resad_kit.methods import Res2CLIP
from resad_kit.metrics import evaluate

SIZE = 32  # the backbone's input side
EVAL = 24  # evaluation side: neither the input size nor a multiple of the patch grid
CATEGORY = "brick"
SHOTS, SEED = 2, 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = synthesize_dataset(
        tmp_path_factory.mktemp("data"), categories=[CATEGORY], n_train=4, n_test=6, image_size=48
    )
    backbone = ClipBackbone.tiny(seed=0, image_size=SIZE)
    return root, backbone, FeatureCache(backbone, progress=False)


def direct_metrics(root, backbone, cache, size: int) -> dict[str, float]:
    """Maps predicted at ``size`` against masks read at ``size``, one batch, no protocol."""
    test = AnomalyDataset(root, CATEGORY, "test", SIZE, mask_size=size)
    train = AnomalyDataset(root, CATEGORY, "train", SIZE)
    refs = sample_references(train, SHOTS, seed=SEED)
    model = Res2CLIP(backbone).fit_references(cache.features(train, refs.indices))
    with torch.no_grad():
        pred = model(cache.features(test), output_size=size)
    masks = test.masks(range(len(test)))
    assert pred.anomaly_map.shape[-2:] == masks.shape[-2:] == (size, size)
    return evaluate(pred.image_score, pred.anomaly_map, torch.tensor(test.labels), masks)


def protocol_metrics(root, backbone, cache, eval_size: int | None) -> dict[str, float]:
    [result] = run_evaluation(
        {("training_free", "synth"): Res2CLIP(backbone)},
        [DatasetSpec("synth", root, (CATEGORY,))],
        cache,
        shots=(SHOTS,),
        seeds=(SEED,),
        eval_size=eval_size,
        batch_size=64,  # every test image in one forward pass, as in direct_metrics
        progress=False,
        release_features=False,
    )
    return result.metrics


def test_the_two_resolutions_give_different_pixel_metrics(setup):
    """The premise: on this data the pixel metrics at EVAL and at SIZE differ."""
    at_eval, at_input = direct_metrics(*setup, EVAL), direct_metrics(*setup, SIZE)
    differing = [k for k in ("P-AUROC", "P-AP", "PRO") if abs(at_eval[k] - at_input[k]) > 1e-6]
    assert differing, (at_eval, at_input)


def test_run_evaluation_uses_eval_size_for_maps_and_masks(setup):
    """Metrics with ``eval_size=EVAL`` equal the direct computation at EVAL (not at SIZE)."""
    got = protocol_metrics(*setup, EVAL)
    assert got == pytest.approx(direct_metrics(*setup, EVAL), abs=1e-9)


def test_eval_size_none_is_the_input_size(setup):
    got = protocol_metrics(*setup, None)
    assert got == pytest.approx(direct_metrics(*setup, SIZE), abs=1e-9)


def test_evaluate_category_takes_the_resolution_from_the_test_split(setup):
    """``evaluate_category`` predicts at the test split's ``mask_size``."""
    root, backbone, cache = setup
    test = AnomalyDataset(root, CATEGORY, "test", SIZE, mask_size=EVAL)
    train = AnomalyDataset(root, CATEGORY, "train", SIZE)
    [result] = evaluate_category(
        {"training_free": Res2CLIP(backbone)},
        "synth",
        test,
        train,
        cache,
        shots=(SHOTS,),
        seeds=(SEED,),
        batch_size=64,
    )
    assert result.metrics == pytest.approx(direct_metrics(*setup, EVAL), abs=1e-9)
