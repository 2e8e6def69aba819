"""The README's main-job command: the primitives demo runs end to end and prints results."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "primitives_demo.py"
SAMPLE = ROOT / "examples" / "data" / "mvtec_mini"


def _run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(DEMO), *args], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _rows(out: str) -> list[list[str]]:
    return [line.split() for line in out.splitlines() if re.match(r"^\d+\s", line)]


def test_demo_on_synthetic_texture():
    out = _run("--synthetic", "--size", "64", "--shots", "2")
    assert "not Res²CLIP, not a benchmark" in out
    rows = _rows(out)
    assert [r[1] for r in rows] == ["good"] * 3 + ["blot0", "blot1", "blot2"]
    assert all(float(r[2]) > 0 for r in rows)  # computed scores, residual magnitudes > 0
    assert re.search(r"image-level AUROC over these 6 images: [01]\.\d{3}", out)


def test_demo_on_real_mvtec_sample():
    out = _run("--root", str(SAMPLE), "--category", "transistor", "--size", "112", "--shots", "2")
    assert "real MVTec AD sample" in out
    rows = _rows(out)
    assert len(rows) == 10  # 2 good + 4 defect types × 2 in the shipped sample
    assert {r[1] for r in rows} == {"good", "bent_lead", "cut_lead", "damaged_case", "misplaced"}
    assert all(r[4].endswith("%") for r in rows if r[1] != "good")


def test_readme_snippet_runs():
    """The README's code example runs as written and gives one score per patch (Eq. 9)."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", readme, re.S)
    assert block is not None
    namespace: dict[str, object] = {}
    exec(block.group(1), namespace)
    anomaly = namespace["anomaly"]
    assert tuple(anomaly.shape) == (1369,)
    assert bool((anomaly >= 0).all())  # magnitudes of visual residuals
