"""One full training-free Res²CLIP* prediction per image, and where its time goes.

ViT-L/14-336 at 518 px through :class:`resad_kit.clip.ClipBackbone` (V-V attention, taps of
layers 6, 12, 18, 24) with **random weights**: no pretrained weights are available offline,
and random weights cost exactly the same compute. The prediction follows the official code's
inference (``test.py``) composed from ``resad_kit.ops``: text map (layer 24), retrieval and visual
residuals on the four layers, visual map, residual map (layer 24, clamped), upsampling to
518², Gaussian smoothing, fusion (0.1 : 1 : 1), top-1 % image scores with the CLS terms.

Timing stand-ins (they do not change the amount of computation):

* the text residual ``R_t`` is a random unit vector (no text encoder call per image: the
  method computes ``R_t`` once per class);
* the ``K = 4`` shot bank of every layer is built from the test image's own patch features,
  each shot shifted by up to one patch and perturbed with noise, so that the sparsemax supports
  look like real ones without four more backbone passes. It is built from the backbone output
  of the timed prediction itself, between the backbone and the retrieval, and that step is left
  out of the stage times (the method builds its banks once per class, not per image).

The benchmark times one whole prediction with the fast retrieval (one round: the ViT-L forward
pass takes about 20 s on 2 cores) and records the time of the backbone, the retrieval and the
scoring in ``extra_info``. The correctness check then runs the retrieval and scoring of the
official re-implementation on the same backbone features and compares the maps and scores.
The report derives the official path's share from the four-layer retrieval benchmark at K = 4.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from baselines import official_retrieval
from harness import DEVICES, GAMMA, bank_radius, record, support_stats, synchronize, timed

from resad_kit.clip import ClipBackbone
from resad_kit.ops import (
    cosine_score,
    fuse,
    gaussian_blur,
    global_residual,
    magnitude_score,
    projection_score,
    retrieve,
    top_fraction_mean,
    upsample_patches,
    visual_residual,
)

IMAGE_SIZE, SHOTS = 518, 4
PIXEL_WEIGHTS, IMAGE_WEIGHTS = (0.1, 1.0, 1.0), (1.0, 1.0, 1.0)  # App. F.2, training-free


class Prediction(NamedTuple):
    image_score: torch.Tensor  # (B,)
    anomaly_map: torch.Tensor  # (B, 518, 518)


class Class(NamedTuple):
    """What the method keeps per class: banks, reference CLS features, text direction."""

    banks: torch.Tensor  # (L, 1, K·N, D) normalised
    reference_cls: torch.Tensor  # (K, D)
    text_direction: torch.Tensor  # (D,)


@functools.lru_cache(maxsize=1)
def _backbone(device: str) -> ClipBackbone:
    return ClipBackbone.from_pretrained("ViT-L-14-336", None, image_size=IMAGE_SIZE).to(device)


def _class_data(features, device: str) -> Class:
    """The stand-in class data: banks of noisy, shifted copies of the image's own patches."""
    generator = torch.Generator().manual_seed(0)
    side = features.grid[0]
    banks = []
    for patches in features.patches:
        grid = patches[0].reshape(side, side, -1)
        scale = grid.std()
        shots = []
        for _ in range(SHOTS):
            dy, dx = torch.randint(-1, 2, (2,), generator=generator).tolist()
            noise = torch.randn(grid.shape, generator=generator).to(device)
            shots.append(grid.roll((dy, dx), dims=(0, 1)) + 0.5 * scale * noise)
        banks.append(F.normalize(torch.cat([s.reshape(side * side, -1) for s in shots]), dim=-1))
    cls_noise = torch.randn(SHOTS, features.cls.shape[-1], generator=generator).to(device)
    direction = F.normalize(torch.randn(features.cls.shape[-1], generator=generator), dim=0)
    return Class(
        torch.stack(banks)[:, None],
        features.cls + 0.5 * features.cls.std() * cls_noise,
        direction.to(device),
    )


def _fast_retrieval(patches: torch.Tensor, data: Class) -> torch.Tensor:
    r_query, r_bank = bank_radius(SHOTS, str(patches.device))
    return retrieve(
        patches,
        data.banks,
        query_radius=r_query,
        bank_radius=r_bank,
        gamma=GAMMA,
        normalize="query",  # the banks are normalised once per class
    ).reference


def _official_retrieval(patches: torch.Tensor, data: Class) -> torch.Tensor:
    return torch.stack(official_retrieval(list(patches), list(data.banks[:, 0]), GAMMA, SHOTS))


def _score(patches: torch.Tensor, cls: torch.Tensor, refs: torch.Tensor, data: Class):
    """Maps and scores of the three branches (official code, training-free)."""
    residuals = visual_residual(patches, refs)  # (L, B, N, D)
    patch_maps = (
        cosine_score(patches[-1], data.text_direction),  # text branch: layer 24
        magnitude_score(residuals).mean(dim=0),  # visual branch: all layers
        projection_score(residuals[-1], data.text_direction).clamp_min(0),  # residual: 24
    )
    maps = [gaussian_blur(upsample_patches(m, IMAGE_SIZE)) for m in patch_maps]
    anomaly_map = gaussian_blur(fuse(maps, PIXEL_WEIGHTS))
    cls_residual = global_residual(cls, data.reference_cls)
    scores = (
        0.5 * top_fraction_mean(maps[0]) + 0.5 * cosine_score(cls, data.text_direction),
        top_fraction_mean(maps[1]),
        0.5 * top_fraction_mean(maps[2])
        + 0.5 * projection_score(cls_residual, data.text_direction).clamp_min(0),
    )
    return Prediction(fuse(scores, IMAGE_WEIGHTS), anomaly_map)


def _predict(image, retrieval: Callable, device: str, segments: dict[str, list]):
    """One prediction, with the time of each stage appended to ``segments``; returns the
    prediction, the backbone features and the class data built from them."""
    start = time.perf_counter()
    features = _backbone(device)(image)
    synchronize(device)
    backbone_done = time.perf_counter()
    data = _class_data(features, device)  # stand-in class data: not part of a prediction
    synchronize(device)
    retrieval_start = time.perf_counter()
    patches = torch.stack(features.patches)  # (L, B, N, D)
    refs = retrieval(patches, data)
    synchronize(device)
    retrieval_done = time.perf_counter()
    prediction = _score(patches, features.cls, refs, data)
    synchronize(device)
    end = time.perf_counter()
    segments["backbone"].append(backbone_done - start)
    segments["retrieval"].append(retrieval_done - retrieval_start)
    segments["scoring"].append(end - retrieval_done)
    return prediction, features, data


@pytest.mark.parametrize("device", DEVICES)
@torch.no_grad()
def test_pipeline(benchmark, device):
    image = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    image = image.to(device)
    _backbone(device)  # built before the timing
    segments: dict[str, list] = {"backbone": [], "retrieval": [], "scoring": []}
    benchmark.group = "pipeline"
    fast, features, data = timed(
        benchmark, lambda: _predict(image, _fast_retrieval, device, segments), device, 1
    )
    patches = torch.stack(features.patches)
    official = _score(patches, features.cls, _official_retrieval(patches, data), data)
    torch.testing.assert_close(fast.anomaly_map, official.anomaly_map, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.image_score, official.image_score, atol=1e-5, rtol=0)

    r_query, r_bank = bank_radius(SHOTS, device)
    weights = retrieve(
        patches, data.banks, query_radius=r_query, bank_radius=r_bank, normalize="query"
    ).weights
    support = weights.support_size().float()
    last = {name: times[-1] for name, times in segments.items()}  # the timed round
    total = sum(last.values())
    record(
        benchmark,
        "pipeline",
        impl="fast",
        baseline=False,
        shots=SHOTS,
        dim=patches.shape[-1],
        dtype="float32",
        device=device,
        image_size=IMAGE_SIZE,
        model="ViT-L-14-336 (random weights)",
        **support_stats(support),
        **{f"{name}_s": value for name, value in last.items()},
        **{f"{name}_share": value / total for name, value in last.items()},
    )
