"""Paper numbers (transcription checks) and the run's result files.

The transcription tests use the paper's own redundancy: Table 1 repeats three columns of
Tables 6–10, and its Average row is the mean of the five data sets, so a mistyped number
shows up as a mismatch. The result tests compare :func:`aggregate` with a direct NumPy
computation and read the written files back.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from resad_kit.data import standard_categories
from resad_kit.engine.paper_results import (
    MODES,
    PAPER_DATASETS,
    PAPER_DISCREPANCIES,
    PAPER_RESULTS,
    PAPER_SHOTS,
    PAPER_TABLE1,
    TABLE1_METRICS,
)
from resad_kit.engine.results import (
    STD_DDOF,
    UNTRAINED_WARNING,
    CategoryResult,
    aggregate,
    load_results,
    summary_table,
    write_results,
)
from resad_kit.metrics import METRIC_NAMES

DISCREPANCY = ("dtd", 4, "fine_tuned", "P-AP")


# ----------------------------------------------------------------------- paper numbers


def test_paper_tables_cover_every_dataset_shot_mode_and_metric() -> None:
    keys = {(d, k, m) for d in PAPER_DATASETS for k in PAPER_SHOTS for m in MODES}
    assert set(PAPER_RESULTS) == keys
    assert set(PAPER_TABLE1) == keys | {("average", k, m) for k in PAPER_SHOTS for m in MODES}
    for row in PAPER_RESULTS.values():
        assert tuple(row) == METRIC_NAMES
        for value in row.values():
            assert 0.0 < value.mean <= 100.0
            assert 0.0 <= value.std <= 2.1  # the largest printed std (BTAD 1-shot * I-AP)
    for row in PAPER_TABLE1.values():
        assert tuple(row) == TABLE1_METRICS


def test_paper_dataset_keys_are_the_data_package_keys() -> None:
    for dataset in PAPER_DATASETS:
        assert len(standard_categories(dataset)) > 0


def test_table1_rows_repeat_tables_6_to_10() -> None:
    for (dataset, shots, mode), row in PAPER_RESULTS.items():
        for metric in TABLE1_METRICS:
            printed = PAPER_TABLE1[(dataset, shots, mode)][metric]
            if (dataset, shots, mode, metric) == DISCREPANCY:
                assert (printed, row[metric].mean) == (78.9, 79.2)
            else:
                assert printed == row[metric].mean, (dataset, shots, mode, metric)


@pytest.mark.parametrize("shots", PAPER_SHOTS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("metric", TABLE1_METRICS)
def test_table1_average_is_the_mean_of_tables_6_to_10(shots: int, mode: str, metric: str) -> None:
    mean = np.mean([PAPER_RESULTS[(d, shots, mode)][metric].mean for d in PAPER_DATASETS])
    assert abs(mean - PAPER_TABLE1[("average", shots, mode)][metric]) <= 0.05 + 1e-9


def test_discrepancy_is_documented_and_table10_is_the_consistent_value() -> None:
    """Table 1's own DTD number (78.9) does not give its Average (58.5); Table 10's does."""
    assert any("78.9" in d and "79.2" in d for d in PAPER_DISCREPANCIES)
    others = [PAPER_RESULTS[(d, 4, "fine_tuned")]["P-AP"].mean for d in PAPER_DATASETS[:-1]]
    average = PAPER_TABLE1[("average", 4, "fine_tuned")]["P-AP"]
    assert abs(np.mean([*others, 79.2]) - average) <= 0.05
    assert abs(np.mean([*others, 78.9]) - average) > 0.05


def test_paper_pixel_auroc_exceeds_pixel_ap_and_spec_facts() -> None:
    for row in PAPER_RESULTS.values():
        assert row["P-AUROC"].mean > row["P-AP"].mean
    # Table 1 and App. G.2: average PRO at 4 shots, 90.8 (*) vs 92.1 (†)
    assert PAPER_TABLE1[("average", 4, "training_free")]["PRO"] == 90.8
    assert PAPER_TABLE1[("average", 4, "fine_tuned")]["PRO"] == 92.1


# ----------------------------------------------------------------------- records


def _metrics(value: float | np.ndarray) -> dict[str, float]:
    values = np.broadcast_to(np.asarray(value, dtype=float), (len(METRIC_NAMES),))
    return dict(zip(METRIC_NAMES, values.tolist(), strict=True))


def _rec(dataset="toy", category="a", shots=1, seed=0, mode="training_free", value=0.5, n=10):
    refs = tuple(f"{category}/train/good/{i:03d}.png" for i in range(shots))
    return CategoryResult(dataset, category, shots, seed, mode, _metrics(value), refs, n)


def _paper_records(datasets=PAPER_DATASETS, seeds=(0, 1, 2), shots=(1, 4)) -> list:
    """Records whose every category equals the paper's mean (so ours == paper)."""
    out = []
    for d in datasets:
        for k in shots:
            for mode in MODES:
                row = PAPER_RESULTS[(d, k, mode)]
                value = np.array([row[m].mean / 100 for m in METRIC_NAMES])
                for c in standard_categories(d):
                    out += [_rec(d, c, k, s, mode, value) for s in seeds]
    return out


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"mode": "zero_shot"}, "mode"),
        ({"shots": -1}, "shots"),
        ({"shots": 0}, "references"),  # zero-shot has no references
        ({"n_images": 0}, "n_images"),
        ({"seed": 1.5}, "seed"),
        ({"dataset": ""}, "dataset"),
        ({"metrics": {"I-AUROC": 0.5}}, "keys"),
        ({"metrics": _metrics(0.5) | {"PRO": 1.5}}, r"\[0, 1\]"),
        ({"metrics": _metrics(0.5) | {"PRO": math.nan}}, r"\[0, 1\]"),
        ({"references": ("a.png", "b.png")}, "references"),
    ],
)
def test_category_result_rejects_bad_fields(change: dict, match: str) -> None:
    fields = _rec().to_dict() | change
    with pytest.raises(ValueError, match=match):
        CategoryResult(**fields)


def test_zero_shot_records_have_no_references_and_render(tmp_path: Path) -> None:
    """shots=0 (a zero-shot method): no reference paths; aggregated and written like any."""
    zero = CategoryResult("toy", "a", 0, 0, "training_free", _metrics(0.5), (), 4)
    assert zero.references == ()
    assert CategoryResult.from_dict(zero.to_dict()) == zero
    paths = write_results([zero, _rec()], tmp_path, backbone_label="x", trained=True, config={})
    table = paths["table"].read_text()
    assert "| 0 | Res²CLIP\\* | ours (1 seed) | 50.0 |" in table
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [(r["shots"], r["references"]) for r in rows] == [
        ("0", ""),
        ("1", "a/train/good/000.png"),
    ]


def test_category_result_normalises_metric_order_and_types() -> None:
    reversed_metrics = dict(reversed(list(_metrics(0.25).items())))
    r = CategoryResult("toy", "a", np.int64(1), 3, "fine_tuned", reversed_metrics, ["x"], 2)
    assert tuple(r.metrics) == METRIC_NAMES
    assert r.references == ("x",)
    assert type(r.shots) is int


def test_aggregate_matches_numpy_class_mean_then_population_std() -> None:
    rng = np.random.default_rng(0)
    values = rng.uniform(0.2, 1.0, size=(3, 4, len(METRIC_NAMES)))  # seeds × categories
    sizes = [5, 500, 17, 80]  # class means are unweighted: image counts must not matter
    records = [
        _rec(category=f"c{c}", seed=10 + s, value=values[s, c], n=sizes[c])
        for s in range(3)
        for c in range(4)
    ]
    agg = aggregate(records[::-1])[("toy", 1, "training_free")]
    class_means = values.mean(axis=1)
    expected_mean, expected_std = class_means.mean(axis=0), class_means.std(axis=0, ddof=0)
    assert STD_DDOF == 0
    np.testing.assert_allclose([agg.mean[m] for m in METRIC_NAMES], expected_mean, rtol=1e-12)
    np.testing.assert_allclose([agg.std[m] for m in METRIC_NAMES], expected_std, rtol=1e-12)
    # the sample std of three seeds would be √1.5 times larger (module docstring)
    np.testing.assert_allclose(class_means.std(axis=0, ddof=1), np.sqrt(1.5) * expected_std)
    assert agg.seeds == (10, 11, 12)
    assert agg.n_seeds == 3
    assert agg.categories == ("c0", "c1", "c2", "c3")
    np.testing.assert_allclose([agg.per_seed[11][m] for m in METRIC_NAMES], class_means[1])


def test_aggregate_groups_and_orders_by_dataset_shots_mode() -> None:
    records = [
        _rec("synthetic", shots=2),
        _rec("btad", "01", shots=4, mode="fine_tuned"),
        _rec("btad", "01", shots=1, mode="fine_tuned"),
        _rec("btad", "01", shots=1),
        _rec("mvtec", "bottle", shots=4),
    ]
    assert list(aggregate(records)) == [
        ("mvtec", 4, "training_free"),
        ("btad", 1, "training_free"),
        ("btad", 1, "fine_tuned"),
        ("btad", 4, "fine_tuned"),
        ("synthetic", 2, "training_free"),
    ]


def test_aggregate_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="empty"):
        aggregate([])
    with pytest.raises(ValueError, match="duplicate"):
        aggregate([_rec(), _rec(value=0.7)])
    with pytest.raises(ValueError, match="different categories"):
        aggregate([_rec(category="a"), _rec(category="b"), _rec(category="a", seed=1)])
    with pytest.raises(ValueError, match="CategoryResult"):
        aggregate([_rec().to_dict()])


def test_paper_comparison_needs_complete_categories_and_paper_shots() -> None:
    full = [_rec("btad", c) for c in standard_categories("btad")]
    assert aggregate(full)[("btad", 1, "training_free")].paper is not None
    assert aggregate(full[:2])[("btad", 1, "training_free")].paper is None
    three = [_rec("btad", c, shots=3) for c in standard_categories("btad")]
    assert aggregate(three)[("btad", 3, "training_free")].paper is None
    assert aggregate([_rec("synthetic")])[("synthetic", 1, "training_free")].paper is None


# ----------------------------------------------------------------------- files


def test_write_results_files_and_round_trip(tmp_path: Path) -> None:
    records = [
        _rec("mvtec", c, shots=2, seed=s, value=0.1 * (i + 1) + 0.01 * s)
        for i, c in enumerate(["hazelnut", "transistor"])
        for s in (0, 1, 2)
    ]
    config = {"backbone": "tiny", "shots": [2], "seeds": [0, 1, 2]}
    paths = write_results(
        records,
        tmp_path / "run",
        backbone_label="tiny (random weights)",
        trained=False,
        config=config,
        extra_metadata={"device": "cpu"},
    )
    assert {p.name for p in paths.values()} == {"metrics.csv", "metrics.json", "table.md"}
    assert load_results(tmp_path / "run") == records
    assert load_results(paths["json"]) == records

    document = json.loads(paths["json"].read_text())
    meta = document["metadata"]
    assert meta["backbone_pretrained"] is False
    assert meta["warning"] == UNTRAINED_WARNING
    assert meta["config"] == config
    assert meta["extra"] == {"device": "cpu"}
    assert meta["backbone"] == "tiny (random weights)"
    assert meta["created"].startswith("20")
    (agg,) = document["aggregates"]
    assert agg["n_seeds"] == 3
    assert agg["std_ddof"] == 0
    assert not agg["comparable_to_paper"]

    with paths["csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(records)
    assert rows[0]["I-AUROC"] == "10.00"
    assert rows[3]["PRO"] == "20.00"
    assert rows[0]["references"] == "hazelnut/train/good/000.png;hazelnut/train/good/001.png"
    assert rows[0]["backbone_pretrained"] == "False"
    assert "trained" not in rows[0]  # ambiguous: backbone weights or adapters?

    table = paths["table"].read_text()
    assert table.splitlines()[0] == f"**WARNING: {UNTRAINED_WARNING}.**"
    # 2 of 15 MVTec categories: paper columns are "–" and a note says why
    assert "| 2 | MVTec AD | 16.0 | – | – |" in table
    assert "2 of its 15 standard categories" in table
    assert "| 2 | Res²CLIP\\* | ours (3 seeds) | 16.0±0.8 |" in table


def test_table_md_compares_with_the_paper(tmp_path: Path) -> None:
    records = _paper_records()
    paths = write_results(records, tmp_path, backbone_label="ViT-L-14-336", trained=True, config={})
    table = paths["table"].read_text()
    assert "WARNING" not in table
    assert "NOT comparable" not in table
    # Table 1 layout: ours equals the paper, Δ zero
    assert (
        "| 1 | MVTec AD | 96.1 | 96.1 | +0.0 | 50.8 | 50.8 | +0.0 | 91.1 | 91.1 | +0.0 |" in table
    )
    # the discrepancy: ours (built from Table 10) against Table 10, and the note
    assert "| 4 | DTD-Synthetic | 96.9 | 96.9 | +0.0 | 73.2 | 73.2 | +0.0 |" in table
    assert "79.2 | 79.2 | +0.0" in table
    assert PAPER_DISCREPANCIES[0] in table
    # Average row: the paper's Table 1 Average, Δ within the rounding of the printed numbers
    line = next(row for row in table.splitlines() if row.startswith("| 4 | Average |"))
    cells = [c.strip() for c in line.strip("|").split("|")][2:]
    paper_avg = [PAPER_TABLE1[("average", 4, m)][x] for m in MODES for x in TABLE1_METRICS]
    assert [float(c) for c in cells[1::3]] == paper_avg
    assert all(abs(float(d)) <= 0.1 for d in cells[2::3])
    # Tables 6–10 layout: ours with std 0 (identical seeds), paper mean±std, Δ
    assert "| 1 | Res²CLIP† | paper | 95.9±0.2 | 96.8±1.3 | 92.3±1.6 |" in table
    assert "| 1 | Res²CLIP† | ours (3 seeds) | 95.9±0.0 | 96.8±0.0 |" in table
    assert "| 1 | Res²CLIP† | Δ | +0.0 | +0.0 |" in table


def test_average_row_has_no_paper_value_when_a_dataset_is_missing(tmp_path: Path) -> None:
    records = _paper_records(datasets=PAPER_DATASETS[:4], seeds=(0,), shots=(1,))
    table = write_results(records, tmp_path, backbone_label="b", trained=True, config={})
    line = next(r for r in table["table"].read_text().splitlines() if r.startswith("| 1 | Av"))
    cells = [c.strip() for c in line.strip("|").split("|")][2:]
    assert set(cells[1::3]) == {"–"}
    assert set(cells[2::3]) == {"–"}
    expected = np.mean(
        [PAPER_RESULTS[(d, 1, "training_free")]["PRO"].mean for d in PAPER_DATASETS[:4]]
    )
    assert cells[6] == f"{expected:.1f}"


def test_write_results_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="JSON"):
        write_results([_rec()], tmp_path, backbone_label="b", trained=True, config={"x": object()})
    with pytest.raises(ValueError, match="config"):
        write_results([_rec()], tmp_path, backbone_label="b", trained=True, config=[1])
    with pytest.raises(ValueError, match="backbone_label"):
        write_results([_rec()], tmp_path, backbone_label="", trained=True, config={})
    with pytest.raises(ValueError, match="empty"):
        write_results([], tmp_path, backbone_label="b", trained=True, config={})


def test_load_results_rejects_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no results file"):
        load_results(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({"records": []}))
    with pytest.raises(ValueError, match="not a"):
        load_results(tmp_path)
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read"):
        load_results(tmp_path)


def test_summary_table_warns_when_untrained_and_shows_paper_rows() -> None:
    records = _paper_records(datasets=("btad",), seeds=(0, 1), shots=(1,))
    untrained = summary_table(records, trained=False).splitlines()
    trained = summary_table(records, trained=True).splitlines()
    assert untrained[0] == f"WARNING: {UNTRAINED_WARNING}"
    assert untrained[1:] == trained
    assert not any("WARNING" in line for line in trained)
    header = ["method", "dataset", "shots", "mode", "seeds", "cats", *METRIC_NAMES]
    assert trained[0].split() == header
    row = ["res2clip", "btad", "1", "training_free", "2", "3", "95.5±0.0"]
    assert trained[1].split()[:7] == row
    assert trained[2].split()[:3] == ["paper", "(T8)", "95.5"]
    assert trained[-1] == "paper rows: the paper's mean over its three runs (T8 = paper Table 8)"
    # no comparable group: the footer says there are no paper numbers instead of naming tables
    toy = summary_table([_rec()], trained=True).splitlines()
    assert toy[-1].startswith("no paper numbers")
    assert not any("Table" in line for line in toy)


def _without(record: CategoryResult, names: tuple[str, ...]) -> CategoryResult:
    metrics = {m: None if m in names else v for m, v in record.metrics.items()}
    return CategoryResult(
        record.dataset, record.category, record.shots, record.seed, record.mode, metrics,
        record.references, record.n_images,
    )  # fmt: skip


def test_metric_a_data_set_cannot_support_is_a_dash_everywhere(tmp_path: Path) -> None:
    """A ``None`` metric (e.g. pixel metrics without masks) is ``None`` in the aggregate of
    its group (one missing value is enough) and "–" in table.md, metrics.csv and the
    summary; the other metrics are unaffected."""
    pixel = ("P-AUROC", "P-AP", "P-F1max", "PRO")
    records = [
        _without(_rec(category="a", seed=0, value=0.5), pixel),
        _rec(category="b", seed=0, value=0.75),  # b has masks, a has not: still None
        _without(_rec(category="a", seed=1, value=0.25), pixel),
        _rec(category="b", seed=1, value=0.75),
    ]
    (agg,) = aggregate(records).values()
    assert all(agg.mean[m] is None and agg.std[m] is None for m in pixel)
    assert agg.per_seed[0]["PRO"] is None
    assert agg.mean["I-AUROC"] == pytest.approx(0.5625)  # (0.625 + 0.5) / 2
    assert agg.std["I-AUROC"] == pytest.approx(0.0625)
    paths = write_results(records, tmp_path, backbone_label="x", trained=True, config={})
    assert load_results(tmp_path) == records
    with paths["csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert [r["PRO"] for r in rows] == ["–", "75.00", "–", "75.00"]
    assert rows[0]["I-AUROC"] == "50.00"
    table = paths["table"].read_text()
    assert (
        "| 1 | Res²CLIP\\* | ours (2 seeds) | 56.2±6.2 | 56.2±6.2 | 56.2±6.2 | – | – | – | – |"
        in table
    )
    summary = summary_table(records, trained=True).splitlines()
    assert summary[1].split()[6:] == ["56.2±6.2"] * 3 + ["–"] * 4
    with pytest.raises(ValueError, match="fractions"):
        CategoryResult("t", "a", 1, 0, "training_free", _metrics(1.5), ("r",), 1)


@pytest.mark.parametrize("fail_on", ["write", "fsync", "replace"])
def test_failed_write_keeps_every_previous_result_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_on: str
) -> None:
    """A full disk during a rewrite (the write, the fsync or the rename of a file fails)
    leaves every result file as the previous valid run wrote it, and no temporary file.
    The old code rewrote metrics.json in place and left it truncated and invalid."""
    import errno
    import os

    import resad_kit.engine.atomic as atomic

    out = tmp_path / "run"
    first = [_rec(value=0.25)]
    write_results(first, out, backbone_label="tiny", trained=False, config={})
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    full = OSError(errno.ENOSPC, "No space left on device")

    class FullDisk:
        """A file object that writes half of the data, then fails (a full disk)."""

        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise full

        def __getattr__(self, name):
            return getattr(self.f, name)

    def fail(*args, **kwargs):
        raise full

    if fail_on == "write":
        real_fdopen = os.fdopen
        monkeypatch.setattr(atomic.os, "fdopen", lambda *a, **k: FullDisk(real_fdopen(*a, **k)))
    else:
        monkeypatch.setattr(atomic.os, fail_on, fail)
    with pytest.raises(OSError, match="No space left"):
        write_results([_rec(value=0.75)], out, backbone_label="tiny", trained=False, config={})
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert load_results(out) == first


def _toy(method: str, value: float, category: str = "a") -> CategoryResult:
    m = dict.fromkeys(METRIC_NAMES, value)
    return CategoryResult("btad", category, 1, 0, "training_free", m, ("r.png",), 4, method)


def test_records_of_two_methods_are_kept_apart(tmp_path: Path) -> None:
    """Same (dataset, shots, mode) from two methods: separate aggregates, a method column in
    metrics.csv, one block of tables per method in table.md; paper numbers only for
    Res2CLIP (of which these records are not a full data set, so none here)."""
    from resad_kit.engine.results import aggregate_by_method

    records = [_toy("res2clip", 0.5, c) for c in ("01", "02", "03")]
    records += [_toy("nearest_neighbor", 0.25, c) for c in ("01", "02", "03")]
    with pytest.raises(ValueError, match="several methods"):
        aggregate(records)
    by_method = aggregate_by_method(records)
    assert list(by_method) == ["res2clip", "nearest_neighbor"]
    res2clip = by_method["res2clip"][("btad", 1, "training_free")]
    knn = by_method["nearest_neighbor"][("btad", 1, "training_free")]
    assert res2clip.mean["PRO"] == 0.5
    assert knn.mean["PRO"] == 0.25
    assert res2clip.paper is not None  # all three BTAD categories: comparable
    assert knn.paper is None  # the paper's numbers are Res2CLIP's
    paths = write_results(records, tmp_path, backbone_label="tiny", trained=True, config={})
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [r["method"] for r in rows] == ["res2clip"] * 3 + ["nearest_neighbor"] * 3
    table = paths["table"].read_text()
    assert table.startswith("# Res²CLIP, nearest_neighbor results")
    assert "## Res²CLIP" in table
    assert "## nearest_neighbor" in table
    assert "| 1 | nearest_neighbor (training-free) | ours (1 seed) | 25.0 |" in table
    assert "| 1 | Res²CLIP\\* | paper | 95.5±0.7 |" in table
    assert load_results(tmp_path) == records
    summary = summary_table(records, trained=True).splitlines()
    assert [line.split()[0] for line in summary[1:4]] == ["res2clip", "paper", "nearest_neighbor"]


def test_records_without_a_method_field_are_res2clip() -> None:
    d = _toy("res2clip", 0.5).to_dict()
    del d["method"]
    assert CategoryResult.from_dict(d).method == "res2clip"
    with pytest.raises(ValueError, match="method"):
        _toy("", 0.5)
