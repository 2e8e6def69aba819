"""The Markdown and plain-text tables of a run's results (percent, with the paper's numbers).

Part of :mod:`resad_kit.engine.results` (``table.md`` and :func:`summary_table`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from resad_kit.data import standard_categories
from resad_kit.engine.paper_results import (
    AFCLIP_DATASET_NAMES,
    MODES,
    PAPER_DATASET_NAMES,
    PAPER_DATASETS,
    PAPER_DISCREPANCIES,
    PAPER_TABLES,
    TABLE1_METRICS,
    PaperValue,
    paper_average,
)
from resad_kit.engine.results_records import (
    OURS_NOTE,
    STD_DDOF,
    DatasetAggregate,
    _dataset_order,
)
from resad_kit.metrics import METRIC_NAMES

__all__ = ["NA", "UNTRAINED_WARNING", "render_summary", "render_table_md"]

UNTRAINED_WARNING = "backbone untrained (random weights) — numbers are NOT comparable to the paper"
"""The sentence every output carries when the backbone has random weights."""


_MARK = {"training_free": "Res²CLIP*", "fine_tuned": "Res²CLIP†"}
#: Display names of the methods (others are shown by their ``name``).
METHOD_TITLES = {
    "res2clip": "Res²CLIP",
    "afclip": "AF-CLIP",
    "winclip": "WinCLIP",
    "finegrainedad": "FineGrainedAD",
}
#: Methods whose papers name the few-shot variant with a "+" (AF-CLIP+, WinCLIP+).
_PLUS = ("afclip", "winclip")


NA = "–"
"""What a table shows for a number that does not exist (no paper value, a metric the data
cannot support)."""


def _pct(x: float | None) -> str:
    return NA if x is None else f"{100 * x:.1f}"


def _mean_std(agg: DatasetAggregate, metric: str) -> str:
    mean, std = agg.mean[metric], agg.std[metric]
    if agg.n_seeds == 1 or mean is None or std is None:
        return _pct(mean)
    return f"{_pct(mean)}±{_pct(std)}"


def _delta(ours: float | None, paper: float | None) -> str:
    if paper is None or ours is None:
        return NA
    return f"{round(100 * ours - paper, 1) + 0.0:+.1f}"  # + 0.0 turns -0.0 into 0.0


def _dataset_name(dataset: str) -> str:
    return PAPER_DATASET_NAMES.get(dataset) or AFCLIP_DATASET_NAMES.get(dataset, dataset)


def _paper_cell(paper: Mapping[str, PaperValue] | None, metric: str) -> str:
    """``mean±std`` of a paper value, "–" where the paper reports none."""
    value = None if paper is None else paper.get(metric)
    return NA if value is None else f"{value.mean:.1f}±{value.std:.1f}"


def _paper_mean(paper: Mapping[str, PaperValue] | None, metric: str) -> float | None:
    value = None if paper is None else paper.get(metric)
    return None if value is None else value.mean


def _paper_source(method: str, dataset: str, shots: int | None = None) -> str | None:
    """Where the paper numbers of a data set come from (``None``: no paper has it)."""
    if method == "afclip":
        if dataset not in AFCLIP_DATASET_NAMES:
            return None
        if shots is None:
            return "AF-CLIP Tables 1–2" if dataset in ("mvtec", "visa") else "AF-CLIP Table 1"
        return f"AF-CLIP Table {1 if shots == 0 else 2}"
    if method == "finegrainedad":
        return "FineGrainedAD Table 1" if dataset in ("mvtec", "visa") else None
    table = PAPER_TABLES.get(dataset)
    if table is None:
        return None
    return f"paper Table {table}" + (", WinCLIP+ row" if method == "winclip" else "")


def _md_row(cells: Iterable[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _mark(method: str, mode: str, shots: int | None = None) -> str:
    """The model's name in the tables: Res²CLIP\\*/†, AF-CLIP (0 shots) / AF-CLIP+ (≥ 1),
    WinCLIP / WinCLIP+, else ``method (mode)``."""
    if method == "res2clip":
        return _MARK[mode]
    if method == "finegrainedad":
        return "FineGrainedAD"
    if method in _PLUS:
        title = METHOD_TITLES[method]
        return {None: f"{title}/{title}+", 0: title}.get(shots, f"{title}+")
    return f"{method} ({mode.replace('_', '-')})"


def _md_mark(mode: str, method: str = "res2clip", shots: int | None = None) -> str:
    return _mark(method, mode, shots).replace("*", "\\*")


def _average(
    aggs: Sequence[DatasetAggregate], shots: int, mode: str
) -> tuple[dict[str, float | None] | None, Mapping[str, float] | None]:
    """Ours and the paper's Table 1 Average row for (shots, mode), over the data sets present."""
    group = [a for a in aggs if a.shots == shots and a.mode == mode]
    if not group:
        return None, None
    values = {m: [a.mean[m] for a in group] for m in TABLE1_METRICS}
    ours = {m: None if None in v else float(np.mean(v)) for m, v in values.items()}
    complete = sorted(a.dataset for a in group if a.paper is not None) == sorted(PAPER_DATASETS)
    method = group[0].method
    paper = paper_average(method, shots, mode) if complete and len(group) == 5 else None
    return ours, paper


def _table1_section(aggs: Sequence[DatasetAggregate]) -> list[str]:
    modes = [m for m in MODES if any(a.mode == m for a in aggs)]
    header = ["Shots", "Dataset"]
    for mode in modes:
        for metric in TABLE1_METRICS:
            header += [f"{_md_mark(mode, aggs[0].method)} {metric}", "paper", "Δ"]
    lines = [
        "## Table 1 layout: I-AUROC / P-AP / PRO (percent, mean over seeds)",
        "",
        _md_row(header),
        _md_row(["---"] * len(header)),
    ]
    by_key = {(a.dataset, a.shots, a.mode): a for a in aggs}
    datasets = sorted({a.dataset for a in aggs}, key=_dataset_order)
    for shots in sorted({a.shots for a in aggs}):
        for dataset in datasets:
            if not any((dataset, shots, m) in by_key for m in modes):
                continue
            row: list[object] = [shots, _dataset_name(dataset)]
            for mode in modes:
                agg = by_key.get((dataset, shots, mode))
                paper = agg.paper if agg is not None else None
                for metric in TABLE1_METRICS:
                    if agg is None:
                        row += ["–", "–", "–"]
                        continue
                    p = _paper_mean(paper, metric)
                    row += [_pct(agg.mean[metric]), "–" if p is None else f"{p:.1f}"]
                    row.append(_delta(agg.mean[metric], p))
            lines.append(_md_row(row))
        row = [shots, "Average"]
        for mode in modes:
            ours, paper_avg = _average(aggs, shots, mode)
            for metric in TABLE1_METRICS:
                if ours is None:
                    row += ["–", "–", "–"]
                    continue
                p = None if paper_avg is None else paper_avg[metric]
                row += [_pct(ours[metric]), "–" if p is None else f"{p:.1f}"]
                row.append(_delta(ours[metric], p))
        lines.append(_md_row(row))
    return lines


def _dataset_section(dataset: str, aggs: Sequence[DatasetAggregate]) -> list[str]:
    source = _paper_source(aggs[0].method, dataset)
    title = _dataset_name(dataset) + (f" ({source})" if source else " (not in the paper)")
    cats = sorted({c for a in aggs for c in a.categories})
    lines = [
        f"## {title}",
        "",
        f"Categories ({len(cats)}): {', '.join(cats)}.",
        "",
        _md_row(["Shots", "Model", "", *METRIC_NAMES]),
        _md_row(["---"] * (3 + len(METRIC_NAMES))),
    ]
    for agg in aggs:
        paper = agg.paper
        seeds = f"ours ({agg.n_seeds} seed{'s' if agg.n_seeds > 1 else ''})"
        lines.append(
            _md_row(
                [
                    agg.shots,
                    _md_mark(agg.mode, agg.method, agg.shots),
                    seeds,
                    *(_mean_std(agg, m) for m in METRIC_NAMES),
                ]
            )
        )
        mark = _md_mark(agg.mode, agg.method, agg.shots)
        cells = [_paper_cell(paper, m) for m in METRIC_NAMES]
        lines.append(_md_row([agg.shots, mark, "paper", *cells]))
        deltas = [_delta(agg.mean[m], _paper_mean(paper, m)) for m in METRIC_NAMES]
        lines.append(_md_row([agg.shots, mark, "Δ", *deltas]))
    return lines


def _notes(aggs: Sequence[DatasetAggregate]) -> list[str]:
    winclip = aggs[0].method == "winclip"
    notes = [
        "Percent. Ours: for each seed the unweighted mean over the categories, then mean ± "
        f"standard deviation over the seeds (population std, numpy ddof={STD_DDOF}; the paper "
        "does not say which std it reports). One seed: mean only.",
        "Δ = ours − paper in percentage points. Paper numbers: data-set rows from Tables 6–10 "
        "(mean ± std over the paper's three runs), Table 1's Average row as printed"
        + (
            " (Res²CLIP's paper, its WinCLIP+ baseline: 1, 2, 4 shots; zero-shot WinCLIP is "
            "not in it)"
            if winclip
            else ""
        )
        + ". The "
        "Average row of ours is the unweighted mean over the data sets listed; the paper's "
        "Average is shown only when all five data sets are present with all their categories.",
    ]
    if any((a.dataset, a.shots, a.mode) == ("dtd", 4, "fine_tuned") for a in aggs):
        notes += list(PAPER_DISCREPANCIES)
    for dataset in sorted({a.dataset for a in aggs}, key=_dataset_order):
        group = [a for a in aggs if a.dataset == dataset]
        if all(a.paper is not None for a in group):
            continue
        if dataset not in PAPER_DATASETS:
            why = "not a data set of the paper"
        else:
            cats = set().union(*(a.categories for a in group))
            full = standard_categories(dataset)
            why = (
                f"{len(cats & set(full))} of its {len(full)} standard categories (a category "
                "subset is not comparable to the paper's data-set mean)"
                if cats != set(full)
                else "shot counts the paper does not report"
            )
        notes.append(f"– for {_dataset_name(dataset)}: {why}.")
    return ["## Notes", "", *(f"- {n}" for n in notes)]


def _finegrainedad_notes() -> list[str]:
    notes = [
        OURS_NOTE,
        "Δ = ours − paper in percentage points. Paper numbers: FineGrainedAD's Table 1 "
        "(image / pixel AUROC on MVTec AD and VisA at 1, 2 and 4 shots; the paper reports "
        "no standard deviation); – where the paper has no number.",
    ]
    return ["## Notes", "", *(f"- {n}" for n in notes)]


def _plain_notes(method: str) -> list[str]:
    """Notes of a method without paper numbers (e.g. a test-selected FineGrainedAD run)."""
    notes = [
        OURS_NOTE,
        f"No paper numbers are shown for {method}.",
    ]
    from resad_kit.engine.finegrainedad_protocol import TEST_SELECTED_METHOD

    if method == TEST_SELECTED_METHOD:
        notes.append(
            "The model of every draw of shots was the epoch with the best pixel AUROC on the "
            "TEST set (the released FineGrainedAD code's selection): optimistic, not a clean "
            "result and not comparable with the paper's numbers."
        )
    return ["## Notes", "", *(f"- {n}" for n in notes)]


def _method_sections(aggs: Sequence[DatasetAggregate], level: str) -> list[str]:
    if aggs[0].method == "afclip":  # AF-CLIP's own layouts (its Tables 1 and 2)
        from resad_kit.engine.results_render_afclip import afclip_notes, afclip_tables

        lines = afclip_tables(aggs)
    elif aggs[0].method == "finegrainedad":  # the layout of FineGrainedAD's Table 1
        from resad_kit.engine.results_render_finegrainedad import finegrainedad_table1

        lines = [*finegrainedad_table1(aggs), ""]
    else:
        lines = [*_table1_section(aggs), ""]
    for dataset in sorted({a.dataset for a in aggs}, key=_dataset_order):
        lines += [*_dataset_section(dataset, [a for a in aggs if a.dataset == dataset]), ""]
    if aggs[0].method == "afclip":
        lines += afclip_notes(aggs)
    elif aggs[0].method == "finegrainedad":
        lines += _finegrainedad_notes()
    elif aggs[0].method in ("res2clip", "winclip"):
        lines += _notes(aggs)
    else:
        lines += _plain_notes(aggs[0].method)
    return [line.replace("## ", level, 1) if line.startswith("## ") else line for line in lines]


def render_table_md(
    aggs: Sequence[DatasetAggregate], *, trained: bool, backbone_label: str, created: str
) -> str:
    """``table.md``: one block of tables per method (in order of appearance)."""
    lines = [] if trained else [f"**WARNING: {UNTRAINED_WARNING}.**", ""]
    weights = "trained weights" if trained else "random weights"
    methods = list(dict.fromkeys(a.method for a in aggs))
    titles = [METHOD_TITLES.get(m, m) for m in methods]
    lines += [
        f"# {', '.join(titles)} results",
        "",
        f"Backbone: {backbone_label} ({weights}). Created {created}.",
        "",
    ]
    if len(methods) == 1:
        lines += _method_sections(aggs, "## ")
    else:
        for method, title in zip(methods, titles, strict=True):
            group = [a for a in aggs if a.method == method]
            lines += [f"## {title}", "", *_method_sections(group, "### "), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _short_source(agg: DatasetAggregate) -> str:
    """``T8`` (Res²CLIP's Table 8; WinCLIP+ rows too), ``AF-T1`` / ``AF-T2`` (AF-CLIP's)."""
    if agg.method == "afclip":
        return f"AF-T{1 if agg.shots == 0 else 2}"
    if agg.method == "finegrainedad":
        return "FG-T1"
    return f"T{PAPER_TABLES.get(agg.dataset, '?')}"


def render_summary(aggs: Sequence[DatasetAggregate], *, trained: bool) -> str:
    rows = [["method", "dataset", "shots", "mode", "seeds", "cats", *METRIC_NAMES]]
    for agg in aggs:
        rows.append(
            [agg.method, agg.dataset, str(agg.shots), agg.mode, str(agg.n_seeds)]
            + [str(len(agg.categories))]
            + [_mean_std(agg, m) for m in METRIC_NAMES]
        )
        paper = agg.paper
        if paper is not None:
            label = f"paper ({_short_source(agg)})"
            means = [_paper_mean(paper, m) for m in METRIC_NAMES]
            rows.append(["", "", "", label, "", ""] + [_pct(m and m / 100) for m in means])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [] if trained else [f"WARNING: {UNTRAINED_WARNING}"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append(f"percent; mean±std over seeds (population std, ddof={STD_DDOF})")
    sources = {_short_source(a): _paper_source(a.method, a.dataset, a.shots) for a in aggs}
    sources = {k: v for k, v in sorted(sources.items()) if any(
        a.paper is not None and _short_source(a) == k for a in aggs
    )}  # fmt: skip
    if sources:
        names = ", ".join(f"{k} = {v}" for k, v in sources.items())
        runs = "its three runs" if all(k.startswith("T") for k in sources) else "its runs"
        lines.append(f"paper rows: the paper's mean over {runs} ({names})")
    else:
        lines.append(
            "no paper numbers: these data sets or category subsets are not in the paper "
            "(table.md says why for each)"
        )
    return "\n".join(lines)
