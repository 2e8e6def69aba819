"""AF-CLIP's reported numbers: transcription cross-checks between the paper and the logs."""

from __future__ import annotations

import pytest

from resad_kit.engine.paper_results import (
    AFCLIP_DATASET_NAMES,
    AFCLIP_DATASETS,
    AFCLIP_METRICS,
    AFCLIP_RELEASED_LOGS,
    AFCLIP_RESULTS,
    AFCLIP_SHOTS,
    PAPER_RESULTS,
    PaperValue,
    paper_values,
)

CLASSIFICATION_ONLY = {"brainmri", "br35h"}
SEGMENTATION_ONLY = {"isic", "clinicdb", "colondb", "kvasir"}


def test_table1_has_every_data_set_with_the_metrics_it_supports():
    datasets = [d for group in AFCLIP_DATASETS.values() for d in group]
    assert len(datasets) == 11 == len(AFCLIP_DATASET_NAMES)
    for d in datasets:
        row = AFCLIP_RESULTS[(d, 0)]
        if d in CLASSIFICATION_ONLY:
            assert list(row) == ["I-AUROC", "I-AP"]
        elif d in SEGMENTATION_ONLY:
            assert list(row) == ["P-AUROC", "PRO"]
        else:
            assert list(row) == list(AFCLIP_METRICS)
        assert all(v.std == 0.0 for v in row.values())  # one run


def test_table1_agrees_with_the_released_logs_to_a_tenth():
    """Every printed Table 1 number is within 0.1 of the code's two-decimal log (the paper
    rounds some and truncates others, e.g. BTAD PRO 78.38 → 78.3; VisA I-AP 89.90 → 90.0)."""
    for (dataset, shots), row in AFCLIP_RESULTS.items():
        if shots:
            continue
        log = AFCLIP_RELEASED_LOGS[dataset]
        assert set(log) == set(row), dataset
        for metric, value in row.items():
            assert abs(value.mean - log[metric]) <= 0.1 + 1e-9, (dataset, metric)


def test_table2_rows_and_lookup():
    assert AFCLIP_SHOTS == (0, 1, 2, 4)
    for d in ("mvtec", "visa"):
        for k in (1, 2, 4):
            row = AFCLIP_RESULTS[(d, k)]
            assert list(row) == list(AFCLIP_METRICS)
            assert all(v.std > 0 for v in row.values())
        # more shots never lower the mean image AUROC in Table 2
        means = [AFCLIP_RESULTS[(d, k)]["I-AUROC"].mean for k in AFCLIP_SHOTS]
        assert means == sorted(means)
    assert AFCLIP_RESULTS[("mvtec", 4)]["PRO"] == PaperValue(93.8, 0.6)
    assert paper_values("afclip", "visa", 2, "fine_tuned")["P-AUROC"] == PaperValue(98.4, 0.1)
    assert paper_values("afclip", "visa", 2, "training_free") is None
    assert paper_values("afclip", "btad", 1, "fine_tuned") is None  # Table 2: MVTec, VisA
    assert (
        paper_values("res2clip", "btad", 1, "fine_tuned")
        is PAPER_RESULTS[("btad", 1, "fine_tuned")]
    )
    assert paper_values("nearest_neighbor", "mvtec", 1, "fine_tuned") is None
    with pytest.raises(TypeError):
        AFCLIP_RESULTS[("mvtec", 0)]["I-AUROC"] = PaperValue(0.0, 0.0)  # read-only
