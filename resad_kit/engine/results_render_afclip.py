"""``table.md``'s AF-CLIP block: the layouts of AF-CLIP's Tables 1 and 2 with its numbers.

Part of :mod:`resad_kit.engine.results` (see :func:`~resad_kit.engine.results.write_results`).

* **Table 1 layout** (zero-shot AF-CLIP, ``shots = 0``): one row per (domain, level, data
  set): image level ``(AUROC, AP)``, pixel level ``(AUROC, PRO)``; ours, the paper's and
  Δ = ours − paper. The paper's order: industrial then medical, image rows then pixel rows.
* **Table 2 layout** (AF-CLIP+): one column group per data set with few-shot results
  (I-AUROC, I-AP, P-AUROC, PRO), one row per setup (0, 1, 2, 4 shots) for ours (mean ± std
  over the seeds), the paper's (mean ± std over its five runs) and Δ.

A number that does not exist — a metric the paper does not report for a set, or one the
set cannot support (no masks: no pixel metric; no normal image: no image metric) — is
"–", never a number.
"""

from __future__ import annotations

from collections.abc import Sequence

from resad_kit.data import standard_categories
from resad_kit.engine.paper_results import AFCLIP_DATASETS, AFCLIP_METRICS
from resad_kit.engine.results_records import (
    OURS_NOTE,
    DatasetAggregate,
    _dataset_order,
)
from resad_kit.engine.results_render import (
    NA,
    _dataset_name,
    _delta,
    _md_row,
    _mean_std,
    _paper_cell,
    _paper_mean,
    _pct,
)

__all__ = ["afclip_notes", "afclip_tables"]

#: Table 1's two levels and their metric pairs.
LEVELS = {"image": ("I-AUROC", "I-AP"), "pixel": ("P-AUROC", "PRO")}


def _domain(dataset: str) -> str:
    for domain, keys in AFCLIP_DATASETS.items():
        if dataset in keys:
            return domain.capitalize()
    return "Other"


def _pair(values: Sequence[str]) -> str:
    return NA if all(v == NA for v in values) else f"({', '.join(values)})"


def _table1(aggs: Sequence[DatasetAggregate]) -> list[str]:
    zero = {a.dataset: a for a in aggs if a.shots == 0}
    header = ["Domain", "Level", "Data set", "AF-CLIP (ours)", "paper", "Δ"]
    lines = [
        "## AF-CLIP Table 1 layout: zero-shot, image (AUROC, AP) / pixel (AUROC, PRO) (percent)",
        "",
        _md_row(header),
        _md_row(["---"] * len(header)),
    ]
    datasets = sorted(zero, key=_dataset_order)
    for domain in dict.fromkeys(_domain(d) for d in datasets):
        for level, metrics in LEVELS.items():
            for dataset in (d for d in datasets if _domain(d) == domain):
                agg = zero[dataset]
                ours = [_pct(agg.mean[m]) for m in metrics]
                paper = [_paper_mean(agg.paper, m) for m in metrics]
                if ours == [NA, NA] and paper == [None, None]:
                    continue  # a level the set has not and the paper does not report
                cells = [NA if p is None else f"{p:.1f}" for p in paper]
                deltas = [_delta(agg.mean[m], p) for m, p in zip(metrics, paper, strict=True)]
                row = [domain, level, _dataset_name(dataset), _pair(ours), _pair(cells)]
                lines.append(_md_row([*row, _pair(deltas)]))
    return lines


def _setup(shots: int) -> str:
    return "0-shot (AF-CLIP)" if shots == 0 else f"{shots}-shot (AF-CLIP+)"


def _table2(aggs: Sequence[DatasetAggregate]) -> list[str]:
    datasets = sorted({a.dataset for a in aggs if a.shots > 0}, key=_dataset_order)
    if not datasets:
        return []
    by_key = {(a.dataset, a.shots): a for a in aggs}
    header = ["Setup", ""]
    for dataset in datasets:
        header += [f"{_dataset_name(dataset)} {m}" for m in AFCLIP_METRICS]
    lines = [
        "## AF-CLIP Table 2 layout: few-shot AF-CLIP+ (percent, mean ± std over seeds)",
        "",
        _md_row(header),
        _md_row(["---"] * len(header)),
    ]
    for shots in sorted({a.shots for a in aggs if a.dataset in datasets}):
        rows: dict[str, list[str]] = {"ours": [], "paper": [], "Δ": []}
        for dataset in datasets:
            agg = by_key.get((dataset, shots))
            paper = agg.paper if agg is not None else None
            for m in AFCLIP_METRICS:
                rows["ours"].append(NA if agg is None else _mean_std(agg, m))
                rows["paper"].append(_paper_cell(paper, m))
                ours = None if agg is None else agg.mean[m]
                rows["Δ"].append(_delta(ours, _paper_mean(paper, m)))
        lines += [_md_row([_setup(shots), label, *cells]) for label, cells in rows.items()]
    return lines


def afclip_tables(aggs: Sequence[DatasetAggregate]) -> list[str]:
    """The Table 1 layout (if any zero-shot group) and the Table 2 layout (if any few-shot
    group) of one method's aggregates, as Markdown lines (``## `` headings)."""
    lines: list[str] = []
    if any(a.shots == 0 for a in aggs):
        lines += [*_table1(aggs), ""]
    table2 = _table2(aggs)
    return lines + ([*table2, ""] if table2 else [])


def _why(dataset: str, group: Sequence[DatasetAggregate]) -> str:
    if not any(dataset in keys for keys in AFCLIP_DATASETS.values()):
        return "not a data set of AF-CLIP's tables"
    cats = set().union(*(a.categories for a in group))
    full = standard_categories(dataset)
    if cats != set(full):
        return (
            f"{len(cats & set(full))} of its {len(full)} standard categories (a category "
            "subset is not comparable to the paper's data-set mean)"
        )
    return "shot counts the paper does not report (Table 2: MVTec AD and VisA, 1/2/4 shots)"


def afclip_notes(aggs: Sequence[DatasetAggregate]) -> list[str]:
    """The notes under the AF-CLIP block: sources of the numbers, and why a "–"."""
    notes = [
        OURS_NOTE,
        "Paper numbers: AF-CLIP (Fang, Lv, Su, ACM MM 2025) Table 1 (zero-shot, one run) and "
        "Table 2 (AF-CLIP+, mean ± std over five runs, MVTec AD and VisA). Δ = ours − paper "
        "in percentage points. The paper reports I-AUROC, I-AP, P-AUROC and PRO only; the "
        'other metrics show "–" in its rows.',
        '"–" in ours: a metric the data set cannot support (classification-only sets such '
        "as BrainMRI and Br35H have no masks: no pixel metrics; segmentation-only sets such "
        "as ISIC, ClinicDB, ColonDB and Kvasir have no normal image: no image metrics).",
    ]
    for dataset in sorted({a.dataset for a in aggs}, key=_dataset_order):
        group = [a for a in aggs if a.dataset == dataset]
        if all(a.paper is not None for a in group):
            continue
        notes.append(f"– for {_dataset_name(dataset)}: {_why(dataset, group)}.")
    return ["## Notes", "", *(f"- {n}" for n in notes)]
