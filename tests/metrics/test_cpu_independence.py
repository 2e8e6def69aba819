"""The metrics do not depend on the CPU's BLAS kernels, and float64 maps bin as float32.

A BLAS dot in the AUPRO pass once made a perfect map score 0.9999999999999998 on CPUs
where OpenBLAS picks its AVX-512 kernels. These tests pin the exact results and rerun the
metric tests with OpenBLAS forced onto two different kernel sets.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from resad_kit.metrics import (
    aupro,
    binned_aupro,
    binned_pixel_ap,
    binned_pixel_auroc,
    pixel_ap,
    pixel_auroc,
)

ROOT = Path(__file__).resolve().parents[2]
# Prescott: generic SSE3 kernels (run on every x86-64 CPU); SkylakeX: AVX-512 kernels. On
# a CPU without AVX-512 any BLAS call under SkylakeX dies with SIGILL, so that run also
# proves that the metrics make no BLAS call at all.
CORE_TYPES = ("Prescott", "SkylakeX")


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("limit", [0.3, 0.05, 1.0])
def test_perfect_predictor_is_exactly_one(seed, limit):
    """Regions of many (equal and distinct) areas: every PRO, AUROC and AP sum is exact."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(6, 40, 40, dtype=torch.bool)
    for i in range(6):
        for _ in range(5):
            y, x, h, w = torch.randint(0, 34, (4,), generator=g).tolist()
            masks[i, y : y + 1 + h % 6, x : x + 1 + w % 6] = True
    maps = torch.rand(6, 40, 40, generator=g, dtype=torch.float64) * 0.5 + masks.double()
    assert aupro(maps, masks, fpr_limit=limit) == 1.0
    assert aupro(maps.float(), masks, fpr_limit=limit) == 1.0
    assert pixel_auroc(maps, masks) == 1.0
    assert pixel_ap(maps, masks) == 1.0


def test_aupro_equals_exact_rational_value():
    """Area-grouped sums give the correctly rounded result of an exact rational computation."""
    from fractions import Fraction

    g = torch.Generator().manual_seed(3)
    masks = torch.zeros(3, 24, 24, dtype=torch.bool)
    masks[0, 2:9, 3:6] = masks[1, 10:13, 10:20] = masks[2, 0:5, 0:5] = True
    masks[2, 20:23, 20:21] = True
    maps = torch.randint(0, 50, (3, 24, 24), generator=g).float() + 5 * masks
    # exact AUPRO at limit 1 (no interpolation): mean over thresholds of PRO, trapezoid,
    # from the definition with Fractions
    m, k = maps.numpy(), masks.numpy()
    from skimage.measure import label

    regions = []
    for b in range(3):
        lab = label(k[b], connectivity=2)
        regions += [m[b][lab == r] for r in range(1, lab.max() + 1)]
    normal = m[~k]
    xs, ys = [Fraction(0)], [Fraction(0)]
    for t in np.unique(m)[::-1]:
        xs.append(Fraction(int((normal >= t).sum()), normal.size))
        ys.append(sum(Fraction(int((r >= t).sum()), r.size) for r in regions) / len(regions))
    area = sum(
        (x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:], strict=False)
    )
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(float(area), abs=1e-15)


def test_float64_maps_bin_as_their_float32_cast():
    """The maximum rounds up in float32: a float64 path would miss adeval's overflow count."""
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(2, 16, 16, generator=g) < 0.3
    maps = torch.rand(2, 16, 16, generator=g, dtype=torch.float64) * 0.9
    maps[0, 0, 0] = 1.0 - 1e-12  # float32(1 − 1e-12) == 1.0 > the float64 value
    masks[0, 0, 0] = True
    for fn in (binned_pixel_auroc, binned_pixel_ap):
        assert fn(maps, masks, num_bins=7) == fn(maps.float(), masks, num_bins=7)
    assert binned_aupro(maps, masks, num_bins=7, fpr_limit=1.0) == binned_aupro(
        maps.float(), masks, num_bins=7, fpr_limit=1.0
    )


_PROBE = """
import torch
from resad_kit.metrics import MetricConfig, evaluate
g = torch.Generator().manual_seed(0)
masks = torch.rand(8, 48, 48, generator=g) < 0.15
masks[:3] = False
maps = torch.rand(8, 48, 48, generator=g) + 0.7 * masks
labels = masks.flatten(1).any(1)
scores = maps.flatten(1).amax(1)
for cfg in (MetricConfig(), MetricConfig.official_code()):
    r = evaluate(scores, maps, labels, masks, config=cfg)
    print(sorted((k, float(v).hex()) for k, v in r.items()))
"""


def _run(args: list[str], core: str) -> subprocess.CompletedProcess[str]:
    # fewer hypothesis examples than the main run: the point is the kernel set, not coverage
    env = {**os.environ, "OPENBLAS_CORETYPE": core, "HYPOTHESIS_PROFILE": "quick"}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


needs_x86 = pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"),
    reason="OPENBLAS_CORETYPE names x86-64 kernels",
)


@needs_x86
def test_metric_values_identical_under_two_openblas_core_types():
    """Every metric of `evaluate` (exact and binned) is bit-identical across kernel sets."""
    outs = []
    for core in CORE_TYPES:
        done = _run(["-c", _PROBE], core)
        assert done.returncode == 0, f"{core}: {done.stderr[-2000:]}"
        outs.append(done.stdout)
    assert outs[0] == outs[1]
    assert "0x" in outs[0]


@needs_x86
@pytest.mark.parametrize("core", CORE_TYPES)
def test_metric_tests_pass_under_openblas_core_type(core):
    """The metric test modules, rerun with OpenBLAS forced onto ``core``'s kernels."""
    here = Path(__file__).name
    done = _run(
        [
            "-m",
            "pytest",
            "tests/metrics",
            "-q",
            "-p",
            "no:cacheprovider",
            "--deselect",
            f"tests/metrics/{here}",
            "--ignore",
            f"tests/metrics/{here}",
        ],
        core,
    )
    assert done.returncode == 0, f"{core}: {done.stdout[-3000:]}{done.stderr[-2000:]}"
