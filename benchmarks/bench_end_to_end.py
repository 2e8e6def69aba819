"""One Res²CLIP prediction end to end against an official-style pipeline, and GPU throughput.

The model is :class:`resad_kit.methods.Res2CLIP` (training-free and fine-tuned) on a
ViT-L-shaped backbone with **random weights** (no pretrained weights offline; random weights
cost the same compute) at 518 px, K = 4 shots of random reference images:

* ``narrow`` (default, a quick run): 24 blocks of width 256 (4 heads of 64), patch 14,
  ``D = 256``, taps {6, 12, 18, 24}, 20 V-V blocks;
* ``vit-l`` (opt-in: ``--vit-l`` or ``RESAD_BENCH_VITL=1``; about a minute per prediction on
  2 cores): ViT-L/14-336 itself (width 1,024, ``D = 768``).

The baseline is :func:`baselines.official_prediction`: the same frozen weights read with
explicit-softmax attention (``BackboneConfig(attention="math")``), one test image at a time,
dense retrieval with a full sort of every row, the maps and scores in plain torch, the same
adapters (fine-tuned: random weights, so that they are not the identity). Both paths get the
same class data (bank, reference CLS features and ``R_t``, built once per class by each).

Every case first checks the two predictions against each other (maps and scores within
``2e-4``: the two attention kernels round differently), then times them alternating round by
round (:func:`harness.alternating`), and measures, in the same run, the machine's GEMM
throughput (a ``1,370 × C`` by ``C × 4C`` product, the shape of the MLPs) and the floating
point operations of each prediction (``torch.utils.flop_counter``: matrix products,
convolutions and attention), so the report gives the achieved FLOP/s of both paths.

GPU cases (skipped without CUDA; the report says "not measured" until they have run):
``autocast`` parity in bfloat16 and float16 against float32 (tolerances in
:data:`AUTOCAST_TOLERANCE`) and images per second of batched inference at 518 px for 1, 2
and 4 shots with ViT-L/14-336.
"""

from __future__ import annotations

import functools
import os
import statistics
import time
from dataclasses import replace

import pytest
import torch
from baselines import official_prediction, official_references
from harness import DEVICES, alternating, record, support_stats, synchronize, timed
from torch.utils.flop_counter import FlopCounterMode

from resad_kit.clip import ClipBackbone
from resad_kit.methods import Res2CLIP, Res2CLIPConfig

IMAGE_SIZE, SHOTS = 518, 4
ROUNDS = {"narrow": 1, "vit-l": 1}
PARITY = 2e-4  # fast vs official: maps and scores (attention kernels round differently)
AUTOCAST_TOLERANCE = {torch.bfloat16: 5e-2, torch.float16: 1e-2}
"""GPU autocast parity: ``max |Δ| ≤ tol · max |float32 value|`` for maps and image scores
(bfloat16 keeps 8 bits of mantissa, float16 11)."""

NARROW = {
    "embed_dim": 256,
    "quick_gelu": True,
    "vision_cfg": {
        "image_size": 336,
        "patch_size": 14,
        "width": 256,
        "layers": 24,
        "head_width": 64,
    },
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def vit_l_enabled(config: pytest.Config) -> bool:
    return bool(config.getoption("--vit-l")) or os.environ.get("RESAD_BENCH_VITL") == "1"


@functools.lru_cache(maxsize=1)
def backbone(model: str, device: str) -> ClipBackbone:
    """The random-weight backbone (``attention="sdpa"``, the default)."""
    torch.manual_seed(0)
    if model == "vit-l":
        built = ClipBackbone.from_pretrained("ViT-L-14-336", None, image_size=IMAGE_SIZE)
    else:
        built = ClipBackbone.from_pretrained(
            "narrow-ViT-24", None, architecture=NARROW, quick_gelu=True, image_size=IMAGE_SIZE
        )
    return built.to(device)


def math_backbone(fast: ClipBackbone) -> ClipBackbone:
    """The same frozen model read with explicit-softmax attention (the official kernel)."""
    return ClipBackbone(
        fast.model,
        replace(fast.config, attention="math"),
        model_name=fast.model_name,
        weights=fast.weights,
        trained=fast.trained,
        tokenizer=fast.tokenizer,
    )


def build_model(fast: ClipBackbone, mode: str) -> Res2CLIP:
    model = Res2CLIP(fast, Res2CLIPConfig.paper(mode))
    if model.adapters is not None:  # random adapters: the identity at init would hide them
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.adapters.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02 + (p.dim() == 1))
        model.adapters.eval()
    return model


def images(count: int, device: str, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator).to(device)


def gemm_throughput(width: int, device: str, rounds: int = 5) -> float:
    """FLOP/s of a ``1,370 × C`` by ``C × 4C`` float32 product (the MLP's shape)."""
    a, b = torch.randn(1370, width, device=device), torch.randn(width, 4 * width, device=device)
    a @ b
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * 1370 * width * 4 * width / statistics.median(times)


def counted(fn):
    """``(floating point operations, output)`` of one call (``torch.utils.flop_counter``)."""
    counter = FlopCounterMode(display=False)
    with counter:
        out = fn()
    return counter.get_total_flops(), out


@pytest.mark.parametrize("mode", ["training_free", "fine_tuned"])
@pytest.mark.parametrize("model_name", ["narrow", "vit-l"])
@torch.no_grad()
def test_end_to_end(benchmark, request, model_name, mode):
    """One query image, K = 4: Res2CLIP against the official-style pipeline (CPU)."""
    if model_name == "vit-l" and not vit_l_enabled(request.config):
        pytest.skip("ViT-L end to end: run with --vit-l or RESAD_BENCH_VITL=1")
    device = "cpu"
    fast_backbone = backbone(model_name, device)
    slow_backbone = math_backbone(fast_backbone)
    model = build_model(fast_backbone, mode)
    references, query = images(SHOTS, device, seed=1), images(1, device, seed=2)
    model.fit_references(references)
    official_refs = official_references(slow_backbone, references, model.used_taps)
    r_t = model._text_residual()  # the model's own R_t (cached per backbone)

    def fast():
        return model(query)

    def official():
        return official_prediction(
            slow_backbone, official_refs, query, r_t, model.taps, model.config, model.adapters
        )

    # the checked calls are the counted ones (intermediates: the supports, at no extra cost)
    fast_flop, prediction = counted(lambda: model(query, return_intermediates=True))
    official_flop, (score, anomaly) = counted(official)
    torch.testing.assert_close(prediction.anomaly_map, anomaly, atol=PARITY, rtol=0)
    torch.testing.assert_close(prediction.image_score, score, atol=PARITY, rtol=0)
    weights = prediction_supports(prediction)
    gemm = gemm_throughput(fast_backbone.width, device)
    flops = {"fast": fast_flop, "official": official_flop}
    result = alternating(
        benchmark, {"official": official, "fast": fast}, device, ROUNDS[model_name]
    )
    record(
        benchmark,
        "end_to_end",
        impl="pair",
        baseline=False,
        model=model_name,
        mode=mode,
        shots=SHOTS,
        dim=fast_backbone.embed_dim,
        width=fast_backbone.width,
        depth=fast_backbone.depth,
        image_size=IMAGE_SIZE,
        dtype="float32",
        device=device,
        gemm_flops=gemm,
        fast_flop=flops["fast"],
        official_flop=flops["official"],
        baseline_s=result["official_s"],
        rounds=ROUNDS[model_name],
        **result,
        **weights,
    )


def prediction_supports(prediction) -> dict[str, float]:
    """Sparsemax supports of a prediction made with intermediates (all taps and rows)."""
    weights = prediction.intermediates["retrieval/weights"].values()
    return support_stats(torch.cat([w.support_size().flatten() for w in weights]))


# ---------------------------------------------------------------- GPU cases


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("device", [p for p in DEVICES if p.id == "cuda"])
@torch.no_grad()
def test_autocast_parity(benchmark, device, dtype):
    """ViT-L/14-336 under ``torch.autocast``: the prediction against float32, then timed."""
    fast_backbone = backbone("vit-l", device)
    model = build_model(fast_backbone, "training_free").fit_references(images(SHOTS, device, 1))
    query = images(8, device, seed=2)
    want = model(query)
    with torch.autocast("cuda", dtype=dtype):
        got = model(query)
    tol = AUTOCAST_TOLERANCE[dtype]
    map_err = float((got.anomaly_map - want.anomaly_map).abs().max())
    score_err = float((got.image_score - want.image_score).abs().max())
    assert map_err <= tol * float(want.anomaly_map.abs().max())
    assert score_err <= tol * float(want.image_score.abs().max())

    def run():
        with torch.autocast("cuda", dtype=dtype):
            return model(query)

    result = alternating(benchmark, {"float32": lambda: model(query), "autocast": run}, device, 5)
    record(
        benchmark,
        "gpu_autocast",
        impl=str(dtype).removeprefix("torch."),
        baseline=False,
        shots=SHOTS,
        images=query.shape[0],
        dtype=str(dtype).removeprefix("torch."),
        device=device,
        tolerance=tol,
        map_error=map_err,
        score_error=score_err,
        baseline_s=result["float32_s"],
        fast_s=result["autocast_s"],
        paired_ratio=result["float32/autocast"],
    )


@pytest.mark.parametrize("shots", [1, 2, 4])
@pytest.mark.parametrize("device", [p for p in DEVICES if p.id == "cuda"])
@torch.no_grad()
def test_gpu_throughput(benchmark, device, shots):
    """Images per second of batched inference (ViT-L/14-336, 518 px, batches of 16)."""
    model = build_model(backbone("vit-l", device), "training_free")
    model.fit_references(images(shots, device, 1))
    query = images(16, device, seed=2)
    model(query)  # warm-up (kernel selection, text residual)
    record(
        benchmark,
        "gpu_throughput",
        impl="batched",
        baseline=False,
        shots=shots,
        images=query.shape[0],
        dtype="float32",
        device=device,
    )
    timed(benchmark, lambda: model(query), device, 5)  # images/s = images / median time
