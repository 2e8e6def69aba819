"""evaluate and MetricAccumulator: the same numbers as the single metrics, bounded memory."""

from __future__ import annotations

import tracemalloc

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from resad_kit.metrics import (
    METRIC_NAMES,
    MetricAccumulator,
    MetricConfig,
    aupro,
    binned_aupro,
    binned_pixel_ap,
    binned_pixel_auroc,
    evaluate,
    image_ap,
    image_auroc,
    image_f1max,
    pixel_ap,
    pixel_auroc,
    pixel_f1max,
)

TOL = 1e-12


def synthetic_set(n: int = 12, h: int = 20, w: int = 24, seed: int = 0):
    """Half the images anomalous with 1–2 rectangles; maps = noise + a weak signal."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    for i in range(n // 2, n):
        for _ in range(1 + i % 2):
            y, x = (
                torch.randint(0, h - 5, (1,), generator=g),
                torch.randint(0, w - 6, (1,), generator=g),
            )
            masks[i, y : y + 5, x : x + 6] = True
    maps = torch.rand(n, h, w, generator=g) + 0.6 * masks
    labels = masks.flatten(1).any(1)
    scores = maps.flatten(1).amax(1) + 0.3 * torch.rand(n, generator=g)
    return scores, maps, labels, masks


def test_evaluate_equals_the_single_metrics():
    scores, maps, labels, masks = synthetic_set()
    out = evaluate(scores, maps, labels, masks)
    assert tuple(out) == METRIC_NAMES
    expected = {
        "I-AUROC": image_auroc(scores, labels),
        "I-AP": image_ap(scores, labels),
        "I-F1max": image_f1max(scores, labels),
        "P-AUROC": pixel_auroc(maps, masks),
        "P-AP": pixel_ap(maps, masks),
        "P-F1max": pixel_f1max(maps, masks),
        "PRO": aupro(maps, masks),
    }
    assert out == pytest.approx(expected, abs=TOL)
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in out.values())


def test_official_config_uses_binned_pixel_metrics_and_f1_epsilon():
    scores, maps, labels, masks = synthetic_set(seed=1)
    out = evaluate(scores, maps, labels, masks, config=MetricConfig.official_code())
    expected = {
        "I-AUROC": image_auroc(scores, labels),
        "I-AP": image_ap(scores, labels),
        "I-F1max": image_f1max(scores, labels, eps=1e-7),
        "P-AUROC": binned_pixel_auroc(maps, masks, num_bins=200),
        "P-AP": binned_pixel_ap(maps, masks, num_bins=200),
        "P-F1max": pixel_f1max(maps, masks, eps=1e-7),
        "PRO": binned_aupro(maps, masks, num_bins=200),
    }
    assert out == pytest.approx(expected, abs=TOL)
    assert out != pytest.approx(evaluate(scores, maps, labels, masks), abs=1e-6)


@given(st.integers(0, 10_000), st.sampled_from([(4.0, -1.0), (0.5, 3.0), (1.0, 1e3)]))
@settings(max_examples=15)
def test_exact_metrics_depend_on_the_ranking_only(seed, affine):
    """Strictly increasing transforms (exact in float64 here) leave every metric unchanged.

    The paper relies on this (App. F.2: the fusion weights need not sum to one).
    """
    scores, maps, labels, masks = synthetic_set(n=6, seed=seed)
    a, b = affine
    maps, scores = maps.double(), scores.double()
    assert evaluate(a * scores + b, a * maps + b, labels, masks) == evaluate(
        scores, maps, labels, masks
    )


def test_fpr_limit_of_the_config_reaches_aupro():
    scores, maps, labels, masks = synthetic_set(seed=2)
    out = evaluate(scores, maps, labels, masks, config=MetricConfig(fpr_limit=0.05))
    assert out["PRO"] == pytest.approx(aupro(maps, masks, fpr_limit=0.05), abs=TOL)


def test_accumulating_in_batches_equals_one_call():
    """Any batching and order of updates; compute twice; update after compute."""
    scores, maps, labels, masks = synthetic_set(n=14, seed=3)
    once = evaluate(scores, maps, labels, masks)
    acc = MetricAccumulator(14, 20, 24)
    order = torch.randperm(14, generator=torch.Generator().manual_seed(0))
    for idx in (order[:5], order[5:6], order[6:11]):
        acc.update(scores[idx], maps[idx], labels[idx], masks[idx])
    assert len(acc) == 11
    partial = acc.compute()
    sub = order[:11]
    assert partial == pytest.approx(
        evaluate(scores[sub], maps[sub], labels[sub], masks[sub]), abs=TOL
    )
    assert acc.compute() == pytest.approx(partial, abs=TOL)  # the buffer is already sorted
    rest = order[11:]
    acc.update(scores[rest], maps[rest], labels[rest], masks[rest])
    assert acc.compute() == pytest.approx(once, abs=TOL)


def test_float16_storage_is_exact_for_the_rounded_maps():
    scores, maps, labels, masks = synthetic_set(seed=4)
    half = evaluate(scores, maps, labels, masks, dtype=torch.float16)
    rounded = evaluate(scores, maps.half().float(), labels, masks)
    assert half == pytest.approx(rounded, abs=TOL)


def test_float64_maps_keep_float64_precision():
    masks = torch.zeros(2, 2, 2, dtype=torch.bool)
    masks[1, 0, 0] = True
    maps = torch.ones(2, 2, 2, dtype=torch.float64)
    maps[1, 0, 0] += 1e-12  # indistinguishable in float32
    scores, labels = torch.tensor([0.0, 1.0]), torch.tensor([0, 1])
    assert evaluate(scores, maps, labels, masks)["P-AUROC"] == 1.0
    assert evaluate(scores, maps, labels, masks, dtype=torch.float32)["P-AUROC"] == 0.5


def test_inputs_on_any_device(device):
    scores, maps, labels, masks = synthetic_set(seed=5)
    cpu = evaluate(scores, maps, labels, masks)
    moved = [t.to(device) for t in (scores, maps, labels, masks)]
    assert evaluate(*moved) == pytest.approx(cpu, abs=TOL)


def test_compute_does_not_copy_the_normal_pixels():
    """Extra memory of compute() grows with the anomalous pixels, not with the normal ones.

    Two accumulators with the same anomalous images, one with 40 extra normal images
    (4 MB more of normal scores): the peak memory that compute() allocates beyond the
    buffer differs by less than a tenth of those 4 MB (NumPy reports to tracemalloc).
    """
    scores, maps, labels, masks = synthetic_set(n=8, h=160, w=160, seed=6)
    normal = torch.rand(40, 160, 160)

    def peak_of_compute(with_normal: bool) -> int:
        n = 8 + 40 * with_normal
        acc = MetricAccumulator(n, 160, 160)
        acc.update(scores, maps, labels, masks)
        if with_normal:
            acc.update(torch.rand(40), normal, torch.zeros(40), torch.zeros(40, 160, 160))
        tracemalloc.start()
        acc.compute()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    small, large = peak_of_compute(False), peak_of_compute(True)
    assert small > 0  # the tracing sees NumPy's allocations
    assert large - small < 0.1 * 40 * 160 * 160 * 4


# --------------------------------------------------------------------------- bad input


def test_accumulator_rejects_bad_updates_and_keeps_its_state():
    scores, maps, labels, masks = synthetic_set(n=6, seed=7)
    acc = MetricAccumulator(6, 20, 24)
    acc.update(scores[:4], maps[:4], labels[:4], masks[:4])
    before = acc.compute()
    bad_maps = maps[4:].clone()
    bad_maps[1, 3, 3] = float("nan")
    with pytest.raises(
        ValueError, match=r"MetricAccumulator.update: `anomaly_maps` must be finite"
    ):
        acc.update(scores[4:], bad_maps, labels[4:], masks[4:])
    with pytest.raises(ValueError, match="`masks` must be binary"):
        acc.update(scores[4:], maps[4:], labels[4:], masks[4:] * 2)
    with pytest.raises(ValueError, match=r"holds num_images=6; it has 4 and got 3 more"):
        acc.update(scores[:3], maps[:3], labels[:3], masks[:3])
    with pytest.raises(ValueError, match=r"shape \(b, H, W\) = \(2, 20, 24\)"):
        acc.update(scores[4:], maps[4:, :10], labels[4:], masks[4:, :10])
    with pytest.raises(ValueError, match="shapes must match"):
        acc.update(scores[4:], maps[4:], labels[4:5], masks[4:])
    with pytest.raises(ValueError, match="`labels` must be binary"):
        acc.update(scores[4:], maps[4:], labels[4:] * 3, masks[4:])
    assert len(acc) == 4
    assert acc.compute() == pytest.approx(before, abs=TOL)


def test_float16_overflow_is_refused():
    scores, maps, labels, masks = synthetic_set(n=4, seed=8)
    acc = MetricAccumulator(4, 20, 24, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"`anomaly_maps \(as torch.float16\)` must be finite"):
        acc.update(scores, maps * 1e5, labels, masks)
    assert len(acc) == 0


def test_one_class_or_nothing_is_refused():
    scores, maps, labels, masks = synthetic_set(n=4, seed=9)
    acc = MetricAccumulator(4, 20, 24)
    with pytest.raises(ValueError, match="no image was added"):
        acc.compute()
    acc.update(scores[:2], maps[:2], labels[:2], masks[:2])  # two normal images
    with pytest.raises(ValueError, match="labels must contain both classes"):
        acc.compute()
    with pytest.raises(ValueError, match=r"evaluate: masks must contain both classes"):
        evaluate(scores, maps, torch.tensor([0, 1, 0, 1]), torch.zeros_like(masks))
    with pytest.raises(ValueError, match=r"evaluate: `anomaly_maps` must be finite"):
        evaluate(scores, maps * float("nan"), labels, masks)


def test_constructor_and_config_checks():
    with pytest.raises(ValueError, match="`num_images` must be a positive int"):
        MetricAccumulator(0, 4, 4)
    with pytest.raises(ValueError, match="`width` must be a positive int"):
        MetricAccumulator(2, 4, 4.0)
    with pytest.raises(ValueError, match=r"`dtype` must be torch\.float16"):
        MetricAccumulator(2, 4, 4, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="`config` must be a MetricConfig"):
        MetricAccumulator(2, 4, 4, config="official")
    with pytest.raises(ValueError, match="`pixel_bins` must be None or a positive int"):
        MetricConfig(pixel_bins=0)
    with pytest.raises(ValueError, match="`f1_eps` must be a number"):
        MetricConfig(f1_eps=-1e-7)
    with pytest.raises(ValueError, match="`fpr_limit` must be a number in"):
        MetricConfig(fpr_limit=0.0)
    assert MetricConfig.official_code() == MetricConfig(pixel_bins=200, f1_eps=1e-7, fpr_limit=0.3)


# --------------------------------------------------------------------------- levels


@pytest.mark.parametrize("config", [MetricConfig.exact(), MetricConfig.official_code()])
def test_one_level_equals_that_level_of_both_and_the_other_is_none(config):
    scores, maps, labels, masks = synthetic_set(seed=10)
    both = evaluate(scores, maps, labels, masks, config=config)
    image = evaluate(scores, maps, labels, masks, config=config, levels=("image",))
    pixel = evaluate(scores, maps, labels, masks, config=config, levels=["pixel"])
    assert tuple(image) == tuple(pixel) == METRIC_NAMES
    for name in METRIC_NAMES:
        on_image = name.startswith("I-")
        assert image[name] == (both[name] if on_image else None)
        assert pixel[name] == (None if on_image else both[name])
    # reference: the single metrics (independent code paths)
    assert image["I-AUROC"] == pytest.approx(image_auroc(scores, labels), abs=TOL)
    if config.pixel_bins is None:
        assert pixel["PRO"] == pytest.approx(aupro(maps, masks), abs=TOL)


def test_segmentation_only_set_every_image_anomalous():
    """ClinicDB-like: all labels 1; pixel metrics computed, image metrics None."""
    scores, maps, _, masks = synthetic_set(seed=11)
    masks[: masks.shape[0] // 2, 2:4, 2:4] = True  # every image has a lesion
    labels = torch.ones(masks.shape[0], dtype=torch.long)
    out = evaluate(scores, maps, labels, masks, levels=("pixel",))
    assert [k for k, v in out.items() if v is None] == ["I-AUROC", "I-AP", "I-F1max"]
    assert out["P-AUROC"] == pytest.approx(pixel_auroc(maps, masks), abs=TOL)
    assert out["P-AP"] == pytest.approx(pixel_ap(maps, masks), abs=TOL)
    assert out["PRO"] == pytest.approx(aupro(maps, masks), abs=TOL)
    with pytest.raises(ValueError, match="evaluate: labels must contain both classes"):
        evaluate(scores, maps, labels, masks)  # not declared: still an error


def test_classification_only_set_without_masks():
    """BrainMRI-like: masks all zero; image metrics computed, pixel metrics None."""
    scores, maps, labels, _ = synthetic_set(seed=12)
    masks = torch.zeros_like(maps)
    out = evaluate(scores, maps, labels, masks, levels=("image",))
    assert [k for k, v in out.items() if v is None] == ["P-AUROC", "P-AP", "P-F1max", "PRO"]
    assert out["I-AP"] == pytest.approx(image_ap(scores, labels), abs=TOL)
    assert out["I-F1max"] == pytest.approx(image_f1max(scores, labels), abs=TOL)
    with pytest.raises(ValueError, match="evaluate: masks must contain both classes"):
        evaluate(scores, maps, labels, masks)


def test_accumulator_without_pixel_level_stores_no_pixel():
    scores, maps, labels, _ = synthetic_set(n=6, h=64, w=64, seed=13)
    acc = MetricAccumulator(6, 64, 64, levels=("image",))
    assert acc.levels == ("image",)
    assert acc._pixels.buffer.size == 0
    acc.update(scores[:3], maps[:3], labels[:3], torch.zeros(3, 64, 64))
    acc.update(scores[3:], maps[3:], labels[3:], torch.zeros(3, 64, 64))
    out = acc.compute()
    assert out["I-AUROC"] == pytest.approx(image_auroc(scores, labels), abs=TOL)
    assert out["PRO"] is None
    # shapes are still checked without the pixel level
    with pytest.raises(ValueError, match="shapes must match"):
        MetricAccumulator(2, 4, 4, levels=("image",)).update(
            torch.rand(2), torch.rand(2, 4, 4), torch.tensor([0, 1]), torch.zeros(2, 4, 5)
        )


@pytest.mark.parametrize("levels", [(), "image", ("image", "voxel"), None, ["Pixel"]])
def test_bad_levels_are_refused(levels):
    scores, maps, labels, masks = synthetic_set(n=4, seed=14)
    with pytest.raises(ValueError, match=r"evaluate: `levels` must be a non-empty subset"):
        evaluate(scores, maps, labels, masks, levels=levels)
    with pytest.raises(ValueError, match=r"MetricAccumulator: `levels` must be"):
        MetricAccumulator(4, 20, 24, levels=levels)
