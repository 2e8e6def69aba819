"""Shared helpers of the benchmark suite: devices, cached inputs, CUDA-synchronised timing.

Every benchmark case records what it measured in ``benchmark.extra_info`` (``kernel``,
``impl``, ``shots``, ``dim``, ``dtype``, ``device``, ...); :mod:`report` pairs each fast case
with its baseline through those fields.
"""

from __future__ import annotations

import ctypes
import functools
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from synthetic import SUPPORT_CASES, LayerFeatures, clip_like_features

from resad_kit.ops import radial_distance

__all__ = [
    "DEFAULT_STRUCTURE",
    "DEVICES",
    "GAMMA",
    "LAYERS",
    "SIDE",
    "alternating",
    "bank_radius",
    "dtype_name",
    "features",
    "paired",
    "record",
    "similarity",
    "support_stats",
    "synchronize",
    "timed",
    "timed_peak_memory",
]

SIDE = 37  # 518 px / patch 14: N = 1,369 query patches
GAMMA = 0.01  # paper and code
LAYERS = 4  # tapped layers {6, 12, 18, 24}

_NO_CUDA = not torch.cuda.is_available()
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda",
        id="cuda",
        marks=[pytest.mark.gpu, pytest.mark.skipif(_NO_CUDA, reason="needs a CUDA device")],
    ),
]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(benchmark: Any, fn: Callable[[], Any], device: str, rounds: int) -> Any:
    """Time ``fn`` with pytest-benchmark's pedantic mode (1 call per round, CUDA-synchronised).

    One untimed warm-up call runs first on CUDA (kernel selection, allocator); on CPU the
    correctness check that every case runs before timing already warmed the code up.
    """

    def run() -> Any:
        out = fn()
        synchronize(device)
        return out

    warmup = 1 if device.startswith("cuda") else 0
    return benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=warmup)


def record(benchmark: Any, group: str, **info: Any) -> None:
    """Name the benchmark's group and store the case's parameters for the report."""
    benchmark.group = group
    benchmark.extra_info.update({"kernel": group, **info})


DEFAULT_STRUCTURE = "s150"
"""The feature structure of every case but the support sweep: supports in the range measured
through the official pipeline on real images (min 6, median ≈ 150, max 224 per row)."""


@functools.lru_cache(maxsize=16)
def features(
    shots: int,
    dim: int,
    device: str,
    dtype: torch.dtype = torch.float32,
    *,
    side: int = SIDE,
    layers: int = LAYERS,
    images: int = 1,
) -> tuple[LayerFeatures, ...]:
    """CLIP-like features of ``layers`` layers (:func:`synthetic.clip_like_features` with the
    :data:`DEFAULT_STRUCTURE`), cached per case."""
    structure = SUPPORT_CASES[DEFAULT_STRUCTURE]
    return tuple(
        LayerFeatures(
            *(
                t.to(device)
                for t in clip_like_features(
                    side, shots, dim, structure, images=images, seed=layer, dtype=dtype
                )
            )
        )
        for layer in range(layers)
    )


def bank_radius(shots: int, device: str, side: int = SIDE) -> tuple[torch.Tensor, torch.Tensor]:
    """Query radii ``(N,)`` and bank radii ``(K·N,)`` of a ``side×side`` grid."""
    r = radial_distance(side, side, device=device)
    return r, r.repeat(shots)


@functools.lru_cache(maxsize=8)
def similarity(shots: int, device: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(N, K·N)`` penalised similarities of one layer (Eq. 8), the input of sparsemax."""
    layer = features(shots, 768, device)[0]
    r_query, r_bank = bank_radius(shots, device)
    sim = layer.query[0] @ layer.bank.T - GAMMA * (r_query[:, None] - r_bank[None, :]).abs()
    return sim.to(dtype)


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_mib(field: str) -> float:
    match = re.search(rf"{field}:\s+(\d+) kB", _STATUS.read_text())
    if match is None:
        raise OSError(f"no {field} in {_STATUS}")
    return int(match.group(1)) / 1024


def timed_peak_memory(
    benchmark: Any, fn: Callable[[], Any], device: str
) -> tuple[Any, float | None]:
    """Time one call of ``fn`` and measure the peak memory it adds, in MiB; return both.

    A first, untimed call is a warm-up, so that what the libraries keep between calls (the BLAS
    library's packing buffers, the CUDA caching allocator's blocks) is already there: the
    figure is the working memory of a call in steady state, as in an evaluation loop. The
    timed call is the measured one. CUDA: ``torch.cuda.max_memory_allocated`` above the
    allocation before the call. CPU (Linux): the process's peak resident set size (``VmHWM``)
    above the resident size before the call, after returning freed heap pages to the system
    (``malloc_trim``) and resetting the peak (``/proc/self/clear_refs``), so that memory freed
    by earlier cases can neither hide nor inflate this one. ``None`` where neither is
    available.
    """
    fn()
    start: dict[str, float | None] = {"mib": None}

    def reset() -> None:  # untimed, just before the measured call
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start["mib"] = torch.cuda.memory_allocated() / 2**20
            return
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            _CLEAR_REFS.write_text("5")
            start["mib"] = _status_mib("VmRSS")
        except OSError:
            start["mib"] = None

    def run() -> Any:
        out = fn()
        synchronize(device)
        return out

    out = benchmark.pedantic(run, setup=reset, rounds=1, iterations=1)
    if start["mib"] is None:
        return out, None
    if device.startswith("cuda"):
        return out, torch.cuda.max_memory_allocated() / 2**20 - start["mib"]
    return out, _status_mib("VmHWM") - start["mib"]


def paired(
    benchmark: Any,
    baseline: Callable[[], Any],
    fast: Callable[[], Any],
    device: str,
    rounds: int,
) -> dict[str, float]:
    """Time ``baseline`` and ``fast`` alternately, ``rounds`` times (pytest-benchmark times the
    pair); return the medians of both and of the per-round ratio ``baseline / fast``.

    On a shared machine the load changes over minutes; cases timed one after the other see
    different loads, while the two halves of a pair see nearly the same.
    """
    times: dict[str, list[float]] = {"baseline": [], "fast": []}

    def pair() -> None:
        for name, fn in (("baseline", baseline), ("fast", fast)):
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)

    timed(benchmark, pair, device, rounds)
    ratios = [b / f for b, f in zip(times["baseline"], times["fast"], strict=True)]
    return {
        "baseline_s": statistics.median(times["baseline"]),
        "fast_s": statistics.median(times["fast"]),
        "paired_ratio": statistics.median(ratios),
    }


def alternating(
    benchmark: Any, fns: dict[str, Callable[[], Any]], device: str, rounds: int
) -> dict[str, float]:
    """Time the callables of ``fns`` one after the other, in order, ``rounds`` times.

    Returns the median time of each (``"<name>_s"``) and, for every pair ``a`` before ``b``
    in ``fns``, the median of the per-round ratios ``"<a>/<b>"`` with their spread
    (``"<a>/<b>_min"``, ``"<a>/<b>_max"``). pytest-benchmark times a whole round.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}

    def one_round() -> None:
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)

    timed(benchmark, one_round, device, rounds)
    out = {f"{name}_s": statistics.median(t) for name, t in times.items()}
    names = list(fns)
    for i, first in enumerate(names):
        for name in names[i + 1 :]:
            ratios = [a / b for a, b in zip(times[first], times[name], strict=True)]
            out[f"{first}/{name}"] = statistics.median(ratios)
            out[f"{first}/{name}_min"] = min(ratios)
            out[f"{first}/{name}_max"] = max(ratios)
    return out


def support_stats(sizes: torch.Tensor) -> dict[str, float]:
    """``support_min``, ``support_median`` and ``support_max`` of support sizes (any shape)."""
    flat = sizes.flatten().float()
    return {
        "support_min": float(flat.min()),
        "support_median": float(flat.median()),
        "support_max": float(flat.max()),
    }
