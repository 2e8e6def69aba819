"""`resad-kit reproduce` (and its wrapper examples/res2clip_full.py) end to end in
--backbone tiny mode on the shipped sample and the synthetic data (the README's main-job
command), with the outputs the issue asks for: results, heat maps, the HTML report, a
one-line-per-event log."""

from __future__ import annotations

import csv
import json
import re
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
        [
            sys.executable,
            "-m",
            "resad_kit.cli",
            "reproduce",
            "--backbone",
            "tiny",
            "--out",
            str(out),
            "--no-progress",
        ],
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
    for name in ("index.html", "provenance.json"):
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
    assert "paper = Tables" not in stdout  # no paper numbers here: the summary says so
    assert "no paper numbers" in stdout


@pytest.mark.slow
def test_report_links_every_heat_map_and_shows_the_numbers(run):
    import re

    out, _ = run
    page = (out / "index.html").read_text()
    links = set(re.findall(r'(?:src|href)="([^"]+)"', page))
    assert len(links) == 2 * 4 * 4  # every heat map, linked and shown
    assert all((out / link).is_file() for link in links)
    assert "http" not in page  # offline: no remote resource
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    per_cat = [r for r in rows if (r["dataset"], r["category"]) == ("sample", "hazelnut")]
    first = [r for r in per_cat if (r["shots"], r["mode"]) == ("1", "training_free")]
    mean = sum(float(r["I-AUROC"]) for r in first) / len(first)
    assert f"<td>{mean:.1f}</td>" in page
    assert "NOT comparable" in page
    provenance = json.loads((out / "provenance.json").read_text())
    assert len(provenance["backbone"]["fingerprint_sha256"]) == 64
    assert any("NOT comparable" in w for w in provenance["warnings"])


@pytest.mark.slow
def test_log_has_one_line_per_event(run):
    out, _ = run
    lines = (out / "log.txt").read_text().splitlines()
    assert all(re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ", ln) for ln in lines)
    assert max(len(ln) for ln in lines) < 1500  # no multi-KB TrainResult(...) dump
    assert not any("TrainResult(" in ln for ln in lines)
    assert any("trained on sample: 10 epochs" in ln for ln in lines)


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


def test_readme_main_job_is_this_command():
    readme = (ROOT / "README.md").read_text()
    assert "resad-kit reproduce --backbone tiny --out results/smoke" in readme


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


# ---------------------------------------------------------------- profiles (in-process)


def _example():
    import importlib

    return importlib.import_module("resad_kit.cli.reproduce")


class _Stop(BaseException):
    """Ends the run once the settings under test were seen."""


@pytest.mark.parametrize("profile", ["paper", "official"])
def test_profile_settings_reach_data_method_and_metrics(profile, tmp_path, monkeypatch):
    """Every setting of `--profile` comes from the library's presets and reaches the run:
    the mask resize of the training and the test data sets (official: bilinear +
    threshold 0.5, as the official code; the old example used nearest neighbour), the
    Res2CLIP config of both modes, the single-normal-image fallback of the training and the
    metric config of the evaluation."""
    from resad_kit.clip import BackboneConfig
    from resad_kit.methods import Res2CLIPConfig
    from resad_kit.metrics import MetricConfig

    example = _example()
    preset = {
        "paper": (
            BackboneConfig.paper(), Res2CLIPConfig.paper, MetricConfig.exact(), "nearest", False
        ),
        "official": (
            BackboneConfig.official_code(), Res2CLIPConfig.official_code,
            MetricConfig.official_code(), "bilinear", True,
        ),
    }[profile]  # fmt: skip
    assert example.PROFILES[profile] == example.Profile(*preset)
    seen = {}

    def fake_train(model, datasets, cache, config, **kwargs):
        seen.setdefault("fine_tuned", []).append(model.config)
        seen.setdefault("masks", set()).update(ds.mask_interpolation for ds in datasets)
        seen["self_reference"] = config.self_reference
        return "trained"

    def fake_evaluation(models, specs, cache, **kwargs):
        seen["models"] = {key: m.config for key, m in models.items()}
        seen["metric_config"] = kwargs["metric_config"]
        seen["test_masks"] = kwargs["mask_interpolation"]
        raise _Stop

    monkeypatch.setattr(example, "train", fake_train)
    monkeypatch.setattr(example, "run_evaluation", fake_evaluation)
    argv = ["--backbone", "tiny", "--image-size", "32", "--device", "cpu", "--no-progress"]
    with pytest.raises(_Stop):
        example.main([*argv, "--profile", profile, "--out", str(tmp_path / "run")])
    method, metrics, masks, self_reference = preset[1:]
    assert seen["masks"] == {masks}
    assert seen["test_masks"] == masks
    assert seen["self_reference"] is self_reference
    assert seen["fine_tuned"] == [method("fine_tuned")] * 2
    assert seen["metric_config"] == metrics
    assert seen["models"] == {
        (mode, target): method(mode)
        for mode in ("training_free", "fine_tuned")
        for target in ("sample", "synthetic")
    }
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["mask_interpolation"] == masks
    assert config["train"]["self_reference"] is self_reference
    assert config["metrics"]["pixel_bins"] == metrics.pixel_bins


@pytest.mark.parametrize("profile", ["paper", "official"])
def test_profile_backbone_config_reaches_the_pretrained_backbone(profile, tmp_path, monkeypatch):
    """With the real backbone, `--profile` picks BackboneConfig.paper() or
    .official_code() (19 V-V blocks), at the paper's 518 px."""
    from resad_kit.clip import BackboneConfig, ClipBackbone

    example = _example()
    seen = {}

    def fake_from_pretrained(name, pretrained, config, device=None, trust_checkpoint=False):
        seen.update(name=name, pretrained=pretrained, config=config)
        raise _Stop

    monkeypatch.setattr(ClipBackbone, "from_pretrained", fake_from_pretrained)
    weights = tmp_path / "ViT-L-14-336px.pt"
    weights.write_bytes(b"")
    argv = ["--checkpoint", str(weights), "--device", "cpu", "--profile", profile]
    with pytest.raises(_Stop):
        example.main([*argv, "--out", str(tmp_path / "run")])
    expected = BackboneConfig.official_code() if profile == "official" else BackboneConfig.paper()
    assert seen["config"] == expected
    assert seen["config"].image_size == 518
    assert seen["pretrained"] == str(weights)
