"""Shared fixtures: devices, dtypes, and the hypothesis profile used in CI."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
settings.register_profile("dev", max_examples=300, deadline=None)
# the metric tests rerun under other OpenBLAS kernels (tests/metrics/test_cpu_independence.py)
settings.register_profile(
    "quick",
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
HALF_DTYPES = [torch.float16, torch.bfloat16]
ALL_DTYPES = [torch.float16, torch.bfloat16, torch.float32]


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    """Every available device: CPU always, CUDA when present."""
    return torch.device(request.param)


@pytest.fixture(params=ALL_DTYPES, ids=str)
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    """The floating dtypes every primitive must accept."""
    return request.param


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` when no CUDA device is present (with the reason shown)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none is available")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
