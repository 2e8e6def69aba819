"""FineGrainedAD's reported numbers: cross-checks between the paper's tables and the lookup."""

from __future__ import annotations

import pytest

from resad_kit.engine.paper_results import FINEGRAINEDAD_RESULTS, PaperValue, paper_values
from resad_kit.engine.paper_results_finegrainedad import FINEGRAINEDAD_METRICS

# The same full model appears in other tables of the paper, printed independently:
# Table 2 (VisA, one decimal), Table 3 last row and Table 5 ViT-B/16+ 240 px row (VisA 4-shot),
# Table 4 last row (MVTec AD and VisA 4-shot).
TABLE2 = {1: (84.2, 96.4), 4: (87.0, 97.5)}
TABLE4 = {"mvtec": (94.51, 96.71), "visa": (86.95, 97.54)}
TABLE3_5_VISA_4 = (86.95, 97.54)


def test_rows_keys_and_metrics():
    assert sorted(FINEGRAINEDAD_RESULTS) == [(d, k) for d in ("mvtec", "visa") for k in (1, 2, 4)]
    for row in FINEGRAINEDAD_RESULTS.values():
        assert tuple(row) == FINEGRAINEDAD_METRICS == ("I-AUROC", "P-AUROC")
        assert all(v.std == 0.0 and 80 < v.mean < 100 for v in row.values())


def test_agrees_with_the_papers_other_tables():
    for dataset, values in TABLE4.items():
        row = FINEGRAINEDAD_RESULTS[(dataset, 4)]
        assert (row["I-AUROC"].mean, row["P-AUROC"].mean) == values
    visa4 = FINEGRAINEDAD_RESULTS[("visa", 4)]
    assert (visa4["I-AUROC"].mean, visa4["P-AUROC"].mean) == TABLE3_5_VISA_4
    for shots, (image, pixel) in TABLE2.items():
        row = FINEGRAINEDAD_RESULTS[("visa", shots)]
        assert abs(row["I-AUROC"].mean - image) <= 0.05 + 1e-9
        assert abs(row["P-AUROC"].mean - pixel) <= 0.05 + 1e-9


def test_more_shots_never_lower_the_mean():
    for dataset in ("mvtec", "visa"):
        for metric in FINEGRAINEDAD_METRICS:
            means = [FINEGRAINEDAD_RESULTS[(dataset, k)][metric].mean for k in (1, 2, 4)]
            assert means == sorted(means)


@pytest.mark.parametrize(
    ("dataset", "shots", "mode", "expected"),
    [
        ("mvtec", 1, "fine_tuned", PaperValue(91.04, 0.0)),
        ("visa", 2, "fine_tuned", PaperValue(86.16, 0.0)),
        ("visa", 2, "training_free", None),
        ("btad", 1, "fine_tuned", None),
        ("mvtec", 8, "fine_tuned", None),
    ],
)
def test_paper_values_lookup(dataset, shots, mode, expected):
    row = paper_values("finegrainedad", dataset, shots, mode)
    assert (None if row is None else row["I-AUROC"]) == expected
