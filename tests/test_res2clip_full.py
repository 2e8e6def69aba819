"""examples/res2clip_full.py end to end in --backbone tiny mode on the shipped sample and the
synthetic data (the README's main-job command), with the outputs the issue asks for."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from resad_kit.engine.results import load_results
from resad_kit.metrics import METRIC_NAMES

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "res2clip_full.py"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("run") / "smoke"
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--backbone", "tiny", "--out", str(out), "--no-progress"],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return out, done.stdout


@pytest.mark.slow
def test_example_writes_every_output(run):
    out, stdout = run
    for name in ("metrics.csv", "metrics.json", "table.md", "config.json", "log.txt"):
        assert (out / name).is_file(), name
    results = load_results(out)
    # 2 data sets × 2 categories × 3 shots × 3 seeds × 2 modes
    assert len(results) == 72
    assert {r.dataset for r in results} == {"sample", "synthetic"}
    assert {r.mode for r in results} == {"training_free", "fine_tuned"}
    assert {(r.shots, r.seed) for r in results} == {
        (k, s) for k in (1, 2, 4) for s in (111, 222, 333)
    }
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 72
    assert set(METRIC_NAMES) <= set(rows[0])
    pngs = list((out / "heatmaps").rglob("*.png"))
    assert len(pngs) == 2 * 4 * 4  # modes × categories × 4 overlays
    assert (out / "checkpoints" / "synthetic" / "checkpoint.safetensors").is_file()
    assert (out / "checkpoints" / "sample" / "checkpoint.safetensors").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["method"]["fine_tuned"]["mode"] == "fine_tuned"
    assert "dataset" in stdout
    assert "I-AUROC" in stdout


@pytest.mark.slow
def test_untrained_backbone_is_announced_everywhere(run):
    out, stdout = run
    assert "NOT comparable" in (out / "table.md").read_text().splitlines()[0]
    assert "NOT comparable" in (out / "log.txt").read_text()
    assert "NOT comparable" in stdout
    meta = json.loads((out / "metrics.json").read_text())
    assert "NOT comparable" in json.dumps(meta)


@pytest.mark.slow
def test_resume_reuses_the_trained_checkpoints(run, tmp_path):
    out, _ = run
    first = (out / "checkpoints" / "sample" / "checkpoint.safetensors").read_bytes()
    done = subprocess.run(
        [
            sys.executable, str(EXAMPLE), "--backbone", "tiny", "--out", str(out),
            "--no-progress", "--resume", "--shots", "1", "--seeds", "111", "--heatmaps", "0",
        ],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert (out / "checkpoints" / "sample" / "checkpoint.safetensors").read_bytes() == first
    before = {
        (r.dataset, r.category, r.mode): r.metrics
        for r in load_results(out)
        if (r.shots, r.seed) == (1, 111)
    }
    assert len(before) == 8


def test_missing_data_root_is_a_clear_error(tmp_path):
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--backbone", "tiny", "--data-root", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert "is not a folder" in done.stderr


def test_readme_main_job_is_this_example():
    readme = (ROOT / "README.md").read_text()
    assert "python examples/res2clip_full.py --backbone tiny --out results/smoke" in readme


def test_missing_clip_weights_are_a_clear_error(tmp_path):
    done = subprocess.run(
        [
            sys.executable, str(EXAMPLE), "--checkpoint", str(tmp_path / "ViT-L-14-336px.pt"),
            "--out", str(tmp_path / "out"), "--device", "cpu",
        ],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "ViT-L-14-336px.pt" in done.stderr
    assert "--backbone tiny" in done.stderr
    assert "Traceback" not in done.stderr
