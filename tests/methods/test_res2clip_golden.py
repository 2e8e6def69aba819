"""Res2CLIP is bit-identical to the stored outputs of commit b04bfa3 (before the refactor).

``golden/res2clip_golden.py`` computes maps, scores, branch outputs, losses of both phases
and three Adam steps for the paper and official-code presets in both modes, with every
adapter family perturbed. It runs in a child process pinned to portable kernels (one
thread, ATen's default CPU capability, MKL's compatible path, oneDNN capped at SSE4.1), as
when the stored file was made, so the comparison does not depend on the CPU's vector units
or on BLAS blocking; any change of the arithmetic changes bits and fails here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent / "golden"
sys.path.insert(0, str(HERE))
from res2clip_golden import PINNED_ENV  # noqa: E402

sys.path.remove(str(HERE))


def test_outputs_are_bit_identical_to_the_stored_golden(tmp_path):
    out = tmp_path / "now.safetensors"
    done = subprocess.run(
        [sys.executable, str(HERE / "res2clip_golden.py"), str(out)],
        env={**os.environ, **PINNED_ENV},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    golden = load_file(HERE / "res2clip_golden.safetensors")
    now = load_file(out)
    assert sorted(now) == sorted(golden)
    differ = {
        k: float((now[k].double() - golden[k].double()).abs().max())
        for k in golden
        if now[k].dtype != golden[k].dtype or not torch.equal(now[k], golden[k])
    }
    assert not differ, f"{len(differ)} of {len(golden)} outputs changed: {differ}"
