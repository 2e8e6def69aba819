"""Shared fixtures: devices, dtypes, the hypothesis profile used in CI, and the guard that
the test suite leaves the working tree as it found it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

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


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny-model tests (thread start-up costs more than the
    work, and the 2 cores are shared); use with ``pytestmark = pytest.mark.usefixtures``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` when no CUDA device is present (with the reason shown)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none is available")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# ---------------------------------------------------------------- clean working tree

ROOT = Path(__file__).resolve().parents[1]
# Tool caches and environments, not outputs of the code under test.
_NOT_OUTPUTS = {
    ".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".hypothesis", ".ruff_cache",
    ".benchmarks", "build", "dist",
}  # fmt: skip


def working_tree_files(root: Path = ROOT) -> set[str]:
    """Every file under ``root`` except tool caches and environments (ignored files too:
    ``results/`` is git-ignored, and a test that writes there still dirties the clone)."""
    found = set()
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _NOT_OUTPUTS and not d.endswith(".egg-info")]
        if Path(folder) == root / ".ci":
            dirs[:] = [d for d in dirs if d != "venv"]
        found.update(os.path.relpath(os.path.join(folder, f), root) for f in files)
    return found


def pytest_sessionstart(session: pytest.Session) -> None:
    """Remember the working tree's files before the first test."""
    session.config.stash[_TREE] = working_tree_files()


def outputs_among(new: set[str], root: Path = ROOT) -> list[str]:
    """The files of ``new`` that look like outputs of a test, not edits of the sources:
    git-ignored files (``results/``, logs) and files at the top of the tree. New files in
    source folders (someone editing while the tests run) are left alone. Without git,
    every new file counts."""
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "check-ignore", "--stdin"],
            input="\n".join(sorted(new)),
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return sorted(new)
    if done.returncode not in (0, 1):  # 128: not a git checkout
        return sorted(new)
    ignored = set(done.stdout.splitlines())
    return sorted(f for f in new if f in ignored or os.sep not in f)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when a test left an output in the working tree (use ``tmp_path``)."""
    before = session.config.stash.get(_TREE, None)
    if before is None:
        return
    new = outputs_among(working_tree_files() - before)
    if new:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = "the tests wrote into the working tree (write under tmp_path): " + ", ".join(
            new[:20]
        )
        if reporter is not None:
            reporter.write_line(message, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_TREE = pytest.StashKey[set]()
