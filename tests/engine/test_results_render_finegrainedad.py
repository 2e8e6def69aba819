"""FineGrainedAD's Table 1 layout of table.md: ours, the paper's numbers and Δ."""

from __future__ import annotations

from resad_kit.data import standard_categories
from resad_kit.engine.results import CategoryResult, aggregate
from resad_kit.engine.results_render_finegrainedad import finegrainedad_table1
from resad_kit.metrics import METRIC_NAMES


def _records(dataset, categories, shots, seeds, image, pixel):
    metrics = {**dict.fromkeys(METRIC_NAMES, 0.5), "I-AUROC": image, "P-AUROC": pixel}
    return [
        CategoryResult(
            dataset,
            c,
            shots,
            s,
            "fine_tuned",
            metrics,
            ("r.png",) * shots,
            4,
            method="finegrainedad",
        )
        for s in seeds
        for c in categories
    ]


def test_complete_groups_get_paper_numbers_and_deltas():
    recs = _records("visa", standard_categories("visa"), 4, (0, 1), 0.890625, 0.96875)
    recs += _records("mvtec", standard_categories("mvtec"), 2, (0,), 0.9375, 0.96)
    lines = finegrainedad_table1(list(aggregate(recs).values()))
    assert lines[2] == "| FineGrainedAD | MVTec AD 2-shot | VisA 4-shot |"
    assert lines[4] == "| ours | 93.8/96.0 | 89.1/96.9 |"
    assert lines[5] == "| paper | 93.66/96.08 | 86.95/97.54 |"
    # 93.75 − 93.66 = +0.09 → +0.1; 96.0 − 96.08 → -0.1; 89.0625 − 86.95 → +2.1;
    # 96.875 − 97.54 = −0.665 → -0.7
    assert lines[6] == "| Δ | +0.1/-0.1 | +2.1/-0.7 |"


def test_a_subset_or_another_data_set_has_no_paper_numbers():
    recs = _records("visa", standard_categories("visa")[:3], 1, (0,), 0.5, 0.75)
    recs += _records("synthetic", ["coins"], 1, (0,), 0.25, 1.0)
    lines = finegrainedad_table1(list(aggregate(recs).values()))
    assert lines[2] == "| FineGrainedAD | VisA 1-shot | synthetic 1-shot |"
    assert lines[4:] == [
        "| ours | 50.0/75.0 | 25.0/100.0 |",
        "| paper | – | – |",
        "| Δ | – | – |",
    ]
