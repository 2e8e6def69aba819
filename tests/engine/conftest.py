"""Starting CPU worker processes the way ``torchrun`` does, for the multi-process tests.

The tests of ``distributed``, ``training`` (DDP) and ``protocol`` (sharded evaluation) start
2 gloo workers with the ``torchrun`` environment variables set by hand (or the real launcher)
and compare with the same computation in the test process. The fixture :func:`processes`
gives them one copy of the launching and waiting code.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 180  # a hang guard only; a launch takes a few seconds
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(**extra: str) -> dict[str, str]:
    """This environment without torchrun's variables, the repository importable, 1 thread."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", **extra)
    return env


def start(argv: Sequence[str], **env: str) -> subprocess.Popen:
    """Start one process in the repository root with :func:`worker_env`, output captured."""
    return subprocess.Popen(
        list(argv),
        cwd=ROOT,
        env=worker_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def start_ranks(argv: Sequence[str], world: int = 2) -> list[subprocess.Popen]:
    """Start ``world`` copies of ``argv`` with the variables torchrun sets for each rank."""
    port = str(free_port())
    return [
        start(
            argv,
            RANK=str(r),
            LOCAL_RANK=str(r),
            WORLD_SIZE=str(world),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
        )
        for r in range(world)
    ]


def wait(procs: Sequence[subprocess.Popen], what: str, timeout: float = TIMEOUT_S) -> list[str]:
    """Wait for every process; fail the test on a timeout or a non-zero exit (with output)."""
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"{what} did not finish within {timeout} s")
    failed = [
        f"{what} (process {i}) exited with {p.returncode}:\n{out[-4000:]}"
        for i, (p, out) in enumerate(zip(procs, outputs, strict=True))
        if p.returncode
    ]
    if failed:
        pytest.fail("\n".join(failed))
    return outputs


@pytest.fixture(scope="session")
def processes() -> SimpleNamespace:
    """``start``, ``start_ranks``, ``wait`` and ``ROOT`` for tests that launch workers."""
    return SimpleNamespace(
        ROOT=ROOT, python=sys.executable, start=start, start_ranks=start_ranks, wait=wait
    )
