"""The HTML report of a run: built from the run's files, every linked image exists, the
tables hold the run's numbers (ours, the paper's, Δ), the banner for random weights, the
config and provenance; one static page with no remote resource and no script."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from resad_kit.data import standard_categories
from resad_kit.engine.heatmaps import save_heatmaps
from resad_kit.engine.paper_results import PAPER_RESULTS
from resad_kit.engine.report import WarningCollector, run_provenance, write_report
from resad_kit.engine.results import CategoryResult, write_results
from resad_kit.metrics import METRIC_NAMES


def _records() -> list[CategoryResult]:
    """BTAD (all three categories: comparable to the paper) with two seeds."""
    out = []
    for seed, value in ((0, 0.9), (1, 0.95)):
        for i, category in enumerate(standard_categories("btad")):
            metrics = dict.fromkeys(METRIC_NAMES, value - 0.05 * i)
            metrics["PRO"] = None if category == "03" else metrics["PRO"]  # not supported
            refs = (f"{category}/train/ok/000.bmp",)
            out.append(CategoryResult("btad", category, 1, seed, "training_free", metrics, refs, 9))
    return out


def _links(page: str) -> set[str]:
    return set(re.findall(r'(?:src|href)="([^"]+)"', page))


def test_report_of_a_tiny_run(tmp_path: Path) -> None:
    records = _records()
    write_results(records, tmp_path, backbone_label="tiny", trained=False, config={"k": 1})
    (tmp_path / "config.json").write_text(json.dumps({"args": {"shots": [1]}}))
    folder = tmp_path / "heatmaps" / "training_free" / "btad" / "01"
    paths = ["01/test/ko/000.bmp", "01/test/ok/001.bmp", "01/test/ko/002.bmp"]
    save_heatmaps(
        torch.zeros(3, 3, 16, 16), torch.rand(3, 16, 16), None, paths, folder,
        mean=None, std=None, scores=[0.5, 0.25, 0.75], labels=[1, 0, 1], trained=False,
    )  # fmt: skip
    provenance = run_provenance(warnings=["something odd"], world_size=1)
    page = write_report(tmp_path, provenance=provenance).read_text()

    links = _links(page)
    assert len(links) == 3
    assert all((tmp_path / link).is_file() for link in links)
    assert "http" not in page
    assert "<script" not in page
    assert "NOT comparable" in page  # the banner
    # ours: per seed the class mean, then mean ± population std over the two seeds
    per_seed = [np.mean([v - 0.05 * i for i in range(3)]) for v in (0.9, 0.95)]
    ours = f"{100 * np.mean(per_seed):.1f}±{100 * np.std(per_seed):.1f}"
    assert f"<td>{ours}</td>" in page
    paper = PAPER_RESULTS[("btad", 1, "training_free")]["I-AUROC"]
    assert f"<td>{paper.mean:.1f}±{paper.std:.1f}</td>" in page
    delta = round(100 * np.mean(per_seed) - paper.mean, 1)
    assert f"<td>{delta:+.1f}</td>" in page
    # per category: category 02 is 0.05 below 01 in both seeds: (85 + 90) / 2
    assert "<td>02</td><td>1</td><td>Res²CLIP*</td><td>2</td><td>9</td><td>87.5</td>" in page
    assert "<td>–</td>" in page  # PRO of category 03 is not supported
    # gallery grouped by defect type, with score and label
    assert page.index("defect: ko") < page.index("defect: ok")
    assert "score 0.75 · anomalous" in page
    assert "something odd" in page
    assert "&quot;shots&quot;" in page  # the config, escaped
    assert json.loads((tmp_path / "provenance.json").read_text())["warnings"] == ["something odd"]


def test_report_without_results_and_warning_collector(tmp_path: Path) -> None:
    import logging

    collector = WarningCollector()
    log = logging.getLogger("test_report")
    log.addHandler(collector)
    try:
        log.warning("first\nline")
        log.info("not a warning")
        log.warning("first\nline")  # once
    finally:
        log.removeHandler(collector)
    assert collector.messages == ["first line"]
    page = write_report(tmp_path, title="<empty>").read_text()
    assert "<title>&lt;empty&gt;</title>" in page
    assert "No heat maps in this run." in page
    assert "banner" not in page.split("</style>")[1]
