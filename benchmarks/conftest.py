"""pytest configuration of the benchmark suite (pytest-benchmark).

    pytest benchmarks/ --benchmark-only --benchmark-json=results/bench.json
    python benchmarks/report.py results/bench.json   # → docs/benchmarks.md + plots

The ``bench_*.py`` files are collected as test modules (the project's pytest settings only
collect ``test_*.py``), and this folder is put on ``sys.path`` so that they can import
:mod:`baselines`, :mod:`synthetic` and :mod:`harness`.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    # A file named on the command line is collected by pytest itself whatever its name.
    explicit = parent.session.isinitpath(file_path)
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not explicit:
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--compile",
        action="store_true",
        help="also time retrieve(compile=True) (torch.compile takes about a minute on 2 cores)",
    )
    parser.addoption(
        "--vit-l",
        action="store_true",
        help="also run the end-to-end case with ViT-L/14-336 (about a minute per prediction "
        "on 2 cores; or set RESAD_BENCH_VITL=1)",
    )


_LOAD_AT_START = os.getloadavg() if hasattr(os, "getloadavg") else None
_STARTED = time.perf_counter()


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """Add what the timings depend on: torch, threads, cores, GPU, and the machine's load
    (1-minute load average at the start and the end of the run: other jobs on a shared
    machine slow the timings down), and how long the suite took (from collection to the
    writing of the JSON, checks and warm-ups included), and the ``-k`` selection of cases."""
    machine_info["load_average_start"] = _LOAD_AT_START[0] if _LOAD_AT_START else None
    machine_info["load_average_end"] = os.getloadavg()[0] if _LOAD_AT_START else None
    machine_info["suite_seconds"] = time.perf_counter() - _STARTED
    machine_info["selected"] = config.getoption("keyword") or None  # pytest -k, if any
    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["cpu_count"] = os.cpu_count()
    machine_info["cpu_model"] = _cpu_model()
    machine_info["cuda_device"] = (
        torch.cuda.get_device_name() if torch.cuda.is_available() else None
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
