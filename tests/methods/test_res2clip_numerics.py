"""Res2CLIP numerics: half-precision features, batching tolerance, numpy scalars in the config."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from resad_kit.clip import ClipBackbone, Features
from resad_kit.methods import Res2CLIP, Res2CLIPConfig, TrainingBatch
from resad_kit.nn import Res2CLIPAdapters

SIZE = 64
# Batching only changes float32 rounding (backbone GEMMs, the blur's convolution): the
# tolerance docs/methods.md states.
BATCH_TOL = {"rtol": 1e-5, "atol": 1e-6}


@pytest.fixture(scope="module")
def backbone() -> ClipBackbone:
    return ClipBackbone.tiny(seed=0, image_size=SIZE)


@pytest.fixture(scope="module")
def features(backbone) -> tuple[Features, Features]:
    g = torch.Generator().manual_seed(2)
    refs = backbone(torch.randn(2, 3, SIZE, SIZE, generator=g))
    queries = backbone(torch.randn(3, 3, SIZE, SIZE, generator=g))
    return refs, queries


def cast(features: Features, dtype: torch.dtype) -> Features:
    return Features([p.to(dtype) for p in features.patches], features.cls.to(dtype), features.grid)


def model_for(backbone: ClipBackbone, mode: str) -> Res2CLIP:
    if mode == "training_free":
        return Res2CLIP(backbone)
    adapters = Res2CLIPAdapters(backbone.embed_dim, len(backbone.layers))
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in adapters.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return Res2CLIP(backbone, Res2CLIPConfig.paper("fine_tuned"), adapters=adapters)


@pytest.mark.parametrize("mode", ["training_free", "fine_tuned"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_features_of_any_float_dtype_are_computed_in_float32(backbone, features, mode, dtype):
    """float16/bfloat16/float64 features give the float32 result of the same (cast) values.

    Before the fix float16 features raised a raw ``addmv`` dtype error. The expected value
    is the forward pass on the very same values cast to float32 first; the tolerance
    (1e-6) only allows for kernel nondeterminism, the computation is the same.
    """
    refs, queries = features
    model = model_for(backbone, mode)
    with torch.no_grad():
        got = model.fit_references(cast(refs, dtype))(cast(queries, dtype))
        want = model.fit_references(cast(cast(refs, dtype), torch.float32))(
            cast(cast(queries, dtype), torch.float32)
        )
    assert got.anomaly_map.dtype == got.image_score.dtype == torch.float32
    torch.testing.assert_close(got.anomaly_map, want.anomaly_map, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.image_score, want.image_score, rtol=0, atol=1e-6)
    for name, branch in got.branches.items():
        assert branch.map.dtype == torch.float32, name
        torch.testing.assert_close(branch.map, want.branches[name].map, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_losses_accept_half_features(backbone, features, dtype):
    """``losses`` on half features equals ``losses`` on the same values in float32."""
    refs, queries = features
    model = model_for(backbone, "fine_tuned")
    masks = torch.zeros(2, SIZE, SIZE)
    masks[1, 10:30, 20:40] = 1
    query = Features([p[:2] for p in queries.patches], queries.cls[:2], queries.grid)
    half = TrainingBatch(cast(query, dtype), cast(refs, dtype), masks.to(dtype))
    full = TrainingBatch(
        cast(cast(query, dtype), torch.float32), cast(cast(refs, dtype), torch.float32), masks
    )
    got, want = model.losses(half, "visual"), model.losses(full, "visual")
    for name in want:
        assert got[name].dtype == torch.float32, name
        torch.testing.assert_close(got[name].detach(), want[name].detach(), rtol=0, atol=1e-6)


def test_integer_features_are_rejected_with_a_clear_message(backbone, features):
    refs, queries = features
    model = Res2CLIP(backbone).fit_references(refs)
    bad = Features([p.to(torch.int32) for p in queries.patches], queries.cls, queries.grid)
    with pytest.raises(ValueError, match=r"inputs\.patches\[0\].*float16, bfloat16, float32"):
        model(bad)


@pytest.mark.parametrize("mode", ["training_free", "fine_tuned"])
def test_batching_agrees_with_one_image_at_a_time_to_float32_rounding(backbone, features, mode):
    """A batch of features and one feature set at a time agree to float32 rounding.

    Not bit for bit: the blur's convolution (and, for images, the backbone's GEMMs) may
    pick other kernels for another batch size. The docs state this tolerance.
    """
    refs, queries = features
    model = model_for(backbone, mode).fit_references(refs)
    with torch.no_grad():
        batched = model(queries)
        single = [
            model(
                Features(
                    [p[i : i + 1] for p in queries.patches], queries.cls[i : i + 1], queries.grid
                )
            )
            for i in range(3)
        ]
    torch.testing.assert_close(
        batched.anomaly_map, torch.cat([p.anomaly_map for p in single]), **BATCH_TOL
    )
    torch.testing.assert_close(
        batched.image_score, torch.cat([p.image_score for p in single]), **BATCH_TOL
    )
    for name in batched.branches:
        torch.testing.assert_close(
            batched.branches[name].map,
            torch.cat([p.branches[name].map for p in single]),
            **BATCH_TOL,
        )


@pytest.mark.parametrize("scalar", [np.float32, np.float64, np.float16])
def test_config_accepts_numpy_float_scalars(backbone, features, scalar):
    """``gamma`` and every other float field take numpy scalars and store Python floats.

    Before the fix ``Res2CLIPConfig(gamma=np.float32(0.01))`` raised a ValueError.
    """
    refs, queries = features
    config = Res2CLIPConfig.paper(
        gamma=scalar(0.5),
        top_fraction=scalar(0.25),
        blur_sigma=scalar(2.0),
        margin=scalar(0.5),
        lr_local=scalar(0.5),
        pixel_weights=(scalar(0.5), scalar(1.0), scalar(0.25)),
    )
    plain = Res2CLIPConfig.paper(
        gamma=0.5,
        top_fraction=0.25,
        blur_sigma=2.0,
        margin=0.5,
        lr_local=0.5,
        pixel_weights=(0.5, 1.0, 0.25),
    )
    assert config == plain
    assert type(config.gamma) is float
    assert type(config.pixel_weights[0]) is float
    json.dumps(config.to_dict())  # stored with checkpoints: must stay JSON
    with torch.no_grad():
        a = Res2CLIP(backbone, config).fit_references(refs)(queries)
        b = Res2CLIP(backbone, plain).fit_references(refs)(queries)
    assert torch.equal(a.anomaly_map, b.anomaly_map)


def test_config_accepts_numpy_int_gamma_and_rejects_bools():
    assert Res2CLIPConfig.paper(gamma=np.int64(0)).gamma == 0.0
    assert type(Res2CLIPConfig.paper(gamma=np.int64(1)).gamma) is float
    for bad in (True, np.bool_(True), np.float32("nan"), np.float64(-0.5)):
        with pytest.raises(ValueError, match="gamma"):
            Res2CLIPConfig.paper(gamma=bad)
