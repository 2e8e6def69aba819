"""Time and peak memory of resad_kit.metrics on a synthetic MVTec-AD-scale test set.

MVTec AD's test split has 1,725 images (467 normal, 1,258 anomalous). Each case runs in
its own subprocess and reports wall time and the process's peak resident memory
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, which sees torch and NumPy alike), and
the resident memory after the imports (the baseline):

* ``stream-*``: a :class:`MetricAccumulator` filled batch by batch (16 images), as an
  evaluation loop does; the maps are generated per batch and never held in full;
* ``evaluate-*``: :func:`evaluate` on the whole test set held in memory as float32 maps
  and bool masks (the inputs count in the peak).

Before timing, the metrics are checked against scikit-learn on a small sample.

    python benchmarks/measure_metrics.py                 # every case (≈ 5 min, ≤ 5 GB)
    python benchmarks/measure_metrics.py --cases stream-256-f32 --images 200
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from resad_kit.metrics import MetricAccumulator, MetricConfig, evaluate, pixel_ap, pixel_auroc

NUM_IMAGES, NUM_NORMAL, BATCH = 1725, 467, 16
CASES = {  # name: (side, storage dtype, config, streamed)
    "stream-256-f32": (256, torch.float32, "exact", True),
    "stream-518-f32": (518, torch.float32, "exact", True),
    "stream-518-f16": (518, torch.float16, "exact", True),
    "stream-518-f32-official": (518, torch.float32, "official", True),
    "evaluate-256-f32": (256, torch.float32, "exact", False),
    "evaluate-518-f32": (518, torch.float32, "exact", False),
}


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def batch(start: int, stop: int, side: int, num_normal: int = NUM_NORMAL):
    """Images ``start..stop``: normal first, then 1–3 elliptic defects covering 0.5–8 %."""
    g = torch.Generator().manual_seed(start)
    n = stop - start
    masks = torch.zeros(n, side, side, dtype=torch.bool)
    for i in range(n):
        if start + i < num_normal:
            continue
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            cy, cx = (torch.rand(2, generator=g) * side).tolist()
            ry, rx = ((0.03 + 0.12 * torch.rand(2, generator=g)) * side).tolist()
            y0, y1 = max(0, int(cy - ry)), min(side, int(cy + ry) + 1)
            x0, x1 = max(0, int(cx - rx)), min(side, int(cx + rx) + 1)
            yy = (torch.arange(y0, y1)[:, None] - cy) / ry
            xx = (torch.arange(x0, x1)[None, :] - cx) / rx
            masks[i, y0:y1, x0:x1] |= yy**2 + xx**2 <= 1
    maps = torch.rand(n, side, side, generator=g)
    maps += 0.8 * masks * torch.rand(n, 1, 1, generator=g)
    labels = masks.flatten(1).any(1)
    scores = maps.flatten(1).amax(1) + 0.2 * torch.rand(n, generator=g)
    return scores, maps, labels, masks


def check_against_sklearn() -> None:
    from sklearn.metrics import average_precision_score, roc_auc_score

    _, maps, _, masks = batch(NUM_NORMAL - 8, NUM_NORMAL + 24, 64)
    y, s = masks.flatten().numpy(), maps.flatten().numpy()
    assert abs(pixel_auroc(maps, masks) - roc_auc_score(y, s)) < 1e-12
    assert abs(pixel_ap(maps, masks) - average_precision_score(y, s)) < 1e-12


def run_case(name: str, num_images: int) -> dict:
    side, dtype, config_name, streamed = CASES[name]
    config = MetricConfig.official_code() if config_name == "official" else MetricConfig.exact()
    num_normal = round(num_images * NUM_NORMAL / NUM_IMAGES)
    baseline = current_rss_mib()
    t_update = 0.0
    if streamed:
        acc = MetricAccumulator(num_images, side, side, dtype=dtype, config=config)
        for start in range(0, num_images, BATCH):
            data = batch(start, min(start + BATCH, num_images), side, num_normal)
            t0 = time.perf_counter()
            acc.update(*data)
            t_update += time.perf_counter() - t0
        t0 = time.perf_counter()
        result = acc.compute()
        t_compute = time.perf_counter() - t0
        positives = acc._pixels.num_pos
    else:
        scores, labels = torch.empty(num_images), torch.empty(num_images, dtype=torch.bool)
        maps = torch.empty(num_images, side, side)
        masks = torch.empty(num_images, side, side, dtype=torch.bool)
        positives = 0
        for start in range(0, num_images, BATCH):
            stop = min(start + BATCH, num_images)
            data = batch(start, stop, side, num_normal)
            positives += int(data[3].sum())
            for full, part in zip((scores, maps, labels, masks), data, strict=True):
                full[start:stop] = part
        inputs = current_rss_mib() - baseline
        t0 = time.perf_counter()
        result = evaluate(scores, maps, labels, masks, config=config, dtype=dtype)
        t_compute = time.perf_counter() - t0
    out = {
        "case": name,
        "images": num_images,
        "pixels": num_images * side * side,
        "anomalous_pixels": positives,
        "update_s": round(t_update, 2),
        "compute_s": round(t_compute, 2),
        "peak_rss_mib": round(rss_mib()),
        "baseline_rss_mib": round(baseline),
        "metrics": {k: round(v, 5) for k, v in result.items()},
    }
    if not streamed:
        out["inputs_mib"] = round(inputs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--images", type=int, default=NUM_IMAGES)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.child:
        print(json.dumps(run_case(args.cases[0], args.images)))
        return
    check_against_sklearn()
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"numpy {np.__version__}, {torch.get_num_threads()} threads"
    )
    for name in args.cases:
        cmd = [sys.executable, __file__, "--child", "--cases", name, "--images", str(args.images)]
        t0 = time.perf_counter()
        line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        result = json.loads(line)
        result["process_s"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
