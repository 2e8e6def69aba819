"""table.md for AF-CLIP and WinCLIP: the layouts of AF-CLIP's Tables 1 and 2 and the
WinCLIP+ rows of Res²CLIP's tables, with the paper's numbers, Δ, and "–" where a number
does not exist (a metric the paper omits or the data cannot support), from synthetic
records whose metric values are exact (multiples of 1/8), so Δ is known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from resad_kit.data import standard_categories
from resad_kit.engine.paper_results import (
    PAPER_DATASETS,
    TABLE1_METRICS,
    WINCLIP_RESULTS,
    WINCLIP_TABLE1,
    paper_values,
)
from resad_kit.engine.report_tables import summary_table_html
from resad_kit.engine.results import CategoryResult, aggregate, summary_table, write_results
from resad_kit.metrics import METRIC_NAMES

IMAGE = ("I-AUROC", "I-AP", "I-F1max")
PIXEL = ("P-AUROC", "P-AP", "P-F1max", "PRO")


def _records(method, dataset, shots, seeds, mode, value=0.875, *, missing=(), cats=None):
    cats = standard_categories(dataset) if cats is None else cats
    metrics = {m: None if m in missing else value for m in METRIC_NAMES}
    return [
        CategoryResult(
            dataset,
            c,
            shots,
            s,
            mode,
            metrics,
            tuple(f"r{i}.png" for i in range(shots)),
            4,
            method,
        )
        for c in cats
        for s in seeds
    ]


def _table(tmp_path, records) -> str:
    write_results(records, tmp_path, backbone_label="t", trained=True, config={})
    return (tmp_path / "table.md").read_text()


def test_winclip_table1_average_is_the_mean_of_its_tables_6_to_10_rows() -> None:
    """Transcription check of the WinCLIP+ numbers (Res²CLIP Tables 1, 6–10)."""
    for shots in (1, 2, 4):
        for metric in TABLE1_METRICS:
            rows = [WINCLIP_RESULTS[(d, shots)][metric].mean for d in PAPER_DATASETS]
            assert abs(np.mean(rows) - WINCLIP_TABLE1[("average", shots)][metric]) <= 0.05
            for d in PAPER_DATASETS:
                assert (
                    WINCLIP_TABLE1[(d, shots)][metric] == WINCLIP_RESULTS[(d, shots)][metric].mean
                )
    assert set(WINCLIP_RESULTS) == {(d, k) for d in PAPER_DATASETS for k in (1, 2, 4)}
    assert WINCLIP_RESULTS[("btad", 1)]["I-AP"].std == 4.4  # Table 8's largest std


def test_afclip_table1_layout_holds_the_paper_value_and_delta(tmp_path) -> None:
    records = [
        *_records("afclip", "mvtec", 0, (0,), "fine_tuned"),
        *_records("afclip", "isic", 0, (0,), "fine_tuned", missing=IMAGE),
        *_records("afclip", "brainmri", 0, (0,), "fine_tuned", missing=PIXEL),
    ]
    table = _table(tmp_path, records)
    assert "# AF-CLIP results" in table
    assert "| Industrial | image | MVTec AD | (87.5, 87.5) | (92.9, 96.8) | (-5.4, -9.3) |" in table
    assert "| Industrial | pixel | MVTec AD | (87.5, 87.5) | (92.3, 85.7) | (-4.8, +1.8) |" in table
    assert "| Medical | pixel | ISIC | (87.5, 87.5) | (94.8, 89.6) | (-7.3, -2.1) |" in table
    assert "| Medical | image | BrainMRI | (87.5, 87.5) | (95.2, 96.3) | (-7.7, -8.8) |" in table
    # no row for a level the set cannot support and the paper does not report
    assert "| image | ISIC |" not in table
    assert "| pixel | BrainMRI |" not in table
    # the data-set section: "–" for the metrics the paper omits (ISIC: image; all: P-AP…)
    assert "| 0 | AF-CLIP | paper | – | – | – | 94.8±0.0 | – | – | 89.6±0.0 |" in table
    assert "| 0 | AF-CLIP | ours (1 seed) | – | – | – | 87.5 | 87.5 | 87.5 | 87.5 |" in table
    assert "| 0 | AF-CLIP | Δ | – | – | – | -7.3 | – | – | -2.1 |" in table
    assert "Table 2 layout" not in table  # no few-shot group


def test_afclip_table2_layout_has_mean_std_paper_and_delta(tmp_path) -> None:
    records = [
        *_records("afclip", "visa", 0, (0,), "fine_tuned", 0.875),
        *_records("afclip", "visa", 1, (0,), "fine_tuned", 0.875),
        *_records("afclip", "visa", 1, (1,), "fine_tuned", 0.625),
    ]
    table = _table(tmp_path, records)
    header = "| Setup |  | VisA I-AUROC | VisA I-AP | VisA P-AUROC | VisA PRO |"
    assert header in table
    assert "| 0-shot (AF-CLIP) | paper | 88.5±0.0 | 90.0±0.0 | 96.2±0.0 | 88.7±0.0 |" in table
    assert "| 1-shot (AF-CLIP+) | ours | 75.0±12.5 | 75.0±12.5 | 75.0±12.5 | 75.0±12.5 |" in table
    assert "| 1-shot (AF-CLIP+) | paper | 90.5±2.1 | 91.2±1.8 | 98.2±0.1 | 92.5±0.7 |" in table
    assert "| 1-shot (AF-CLIP+) | Δ | -15.5 | -16.2 | -23.2 | -17.5 |" in table
    assert "| 1 | AF-CLIP+ | ours (2 seeds) |" in table


def test_afclip_without_paper_numbers_shows_dashes_and_says_why(tmp_path) -> None:
    cats = standard_categories("mvtec")[:3]
    records = [
        *_records("afclip", "mvtec", 1, (0,), "fine_tuned", cats=cats),  # a subset
        *_records("afclip", "btad", 2, (0,), "fine_tuned"),  # Table 2 has no BTAD
        *_records("afclip", "synthetic", 0, (0,), "fine_tuned", cats=("a",)),
    ]
    aggs = aggregate(records)
    assert all(a.paper is None for a in aggs.values())
    table = _table(tmp_path, records)
    assert "| 1-shot (AF-CLIP+) | paper | – | – | – | – | – | – | – | – |" in table
    assert "3 of its 15 standard categories" in table
    assert "shot counts the paper does not report" in table
    assert "– for synthetic: not a data set of AF-CLIP's tables." in table
    assert "| Other | image | synthetic | (87.5, 87.5) | – | – |" in table


def test_winclip_rows_sit_beside_res2clip_with_the_published_winclip_plus_numbers(
    tmp_path,
) -> None:
    winclip = [
        r
        for d in PAPER_DATASETS
        for k in (0, 1)
        for r in _records("winclip", d, k, (0,), "training_free", 0.875)
    ]
    res2clip = _records("res2clip", "btad", 1, (0,), "training_free", 0.875)
    table = _table(tmp_path, res2clip + winclip)
    assert "# Res²CLIP, WinCLIP results" in table
    assert "## WinCLIP" in table
    assert "## Res²CLIP" in table
    assert "### BTAD (paper Table 8, WinCLIP+ row)" in table
    assert "| 1 | WinCLIP+ | paper | 85.0±3.7 | 80.6±4.4 | 78.2±3.9 | 95.6±0.4 |" in table
    assert "| 1 | WinCLIP+ | Δ | +2.5 | +6.9 | +9.3 | -8.1 | +45.5 | +40.1 | +20.8 |" in table
    assert "| 0 | WinCLIP | paper | – | – | – | – | – | – | – |" in table  # not in the paper
    # Table 1 layout: the WinCLIP+ Average of Res²CLIP's Table 1 (all five data sets)
    avg = "| 1 | Average | 87.5 | 85.6 | +1.9 | 87.5 | 35.1 | +52.4 | 87.5 | 81.9 | +5.6 |"
    assert avg in table
    assert paper_values("winclip", "btad", 1, "fine_tuned") is None


@pytest.mark.parametrize("method", ["afclip", "winclip"])
def test_summary_and_html_show_dashes_for_metrics_the_paper_omits(method) -> None:
    mode = "fine_tuned" if method == "afclip" else "training_free"
    records = _records(method, "mvtec", 1, (0,), mode, 0.875)
    summary = summary_table(records, trained=True)
    html = summary_table_html(list(aggregate(records).values()))
    paper = paper_values(method, "mvtec", 1, mode)
    first = f"{paper['I-AUROC'].mean:.1f}"
    assert f"paper ({'AF-T2' if method == 'afclip' else 'T6'})" in summary
    assert first in summary
    assert first in html
    if method == "afclip":  # AF-CLIP reports no I-F1max: "–" in the paper row
        row = next(line for line in summary.splitlines() if line.strip().startswith("paper"))
        assert row.split()[2:5] == ["95.5", "98.0", "–"]
        assert "<td>–</td>" in html
        assert "AF-CLIP+" in html
    else:
        assert "WinCLIP+" in html


def test_finegrainedad_rows_cite_its_own_table(tmp_path):
    """FineGrainedAD's table.md uses the layout of its Table 1 with the paper's VisA 1-shot
    numbers and Δ, and names its own table as the source, never Res²CLIP's tables."""
    metrics = {**dict.fromkeys(METRIC_NAMES, 0.5), "I-AUROC": 0.9, "P-AUROC": 0.95}
    records = [
        CategoryResult(
            "visa", c, 1, 0, "fine_tuned", metrics, ("r.png",), 4, method="finegrainedad"
        )
        for c in standard_categories("visa")
    ]
    files = write_results(records, tmp_path, backbone_label="tiny", trained=True, config={})
    table = files["table"].read_text()
    assert "# FineGrainedAD results" in table
    assert "| ours | 90.0/95.0 |" in table
    assert "| paper | 84.16/96.42 |" in table
    assert "| Δ | +5.8/-1.4 |" in table
    assert "FineGrainedAD Table 1" in table
    assert "Tables 6–10" not in table
    assert "paper Table" not in table
