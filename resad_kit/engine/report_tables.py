"""The HTML tables of a run's report: the summary with the paper's numbers, per category.

Part of :mod:`resad_kit.engine.report`; numbers are formatted as in ``table.md``
(percent, one decimal, ``mean±std`` over seeds, "–" where there is no number).
"""

from __future__ import annotations

import html
from collections import defaultdict
from collections.abc import Iterable, Sequence

from resad_kit.engine.results_records import CategoryResult, DatasetAggregate
from resad_kit.engine.results_render import (
    NA,
    _dataset_name,
    _delta,
    _mark,
    _mean_std,
    _paper_cell,
    _paper_mean,
    _pct,
)
from resad_kit.metrics import METRIC_NAMES

__all__ = ["category_table", "html_table", "summary_table_html"]


def html_table(header: Sequence[object], rows: Iterable[Sequence[object]], cls: str = "") -> str:
    """A plain ``<table>``; every cell escaped."""

    def cells(tag: str, row: Sequence[object]) -> str:
        return "".join(f"<{tag}>{html.escape(str(c))}</{tag}>" for c in row)

    body = "\n".join(f"<tr>{cells('td', r)}</tr>" for r in rows)
    attr = f' class="{cls}"' if cls else ""
    head = f"<thead><tr>{cells('th', header)}</tr></thead>"
    return f"<table{attr}>\n{head}\n<tbody>\n{body}\n</tbody>\n</table>"


def summary_table_html(aggs: Sequence[DatasetAggregate]) -> str:
    """One block of rows per ``(method, dataset, shots, mode)``: ours, and, when the paper
    has a comparable number, the paper's and Δ."""
    header = ["Data set", "Shots", "Model", "", "seeds", "categories", *METRIC_NAMES]
    rows = []
    for agg in aggs:
        model = _mark(agg.method, agg.mode, agg.shots)
        head = [_dataset_name(agg.dataset), agg.shots, model]
        rows.append(
            [*head, "ours", agg.n_seeds, len(agg.categories)]
            + [_mean_std(agg, m) for m in METRIC_NAMES]
        )
        paper = agg.paper
        if paper is None:  # no comparable paper number: no rows of dashes
            continue
        rows.append(
            [
                *head,
                "paper",
                "",
                "",
                *(_paper_cell(paper, m) for m in METRIC_NAMES),
            ]
        )
        deltas = [_delta(agg.mean[m], _paper_mean(paper, m)) for m in METRIC_NAMES]
        rows.append([*head, "Δ", "", "", *deltas])
    return html_table(header, rows, "summary")


def category_table(records: Sequence[CategoryResult]) -> str:
    """Per-category metrics: the mean over seeds of each ``(method, dataset, category,
    shots, mode)`` (percent; "–" for a metric the data cannot support)."""
    groups: dict[tuple, list[CategoryResult]] = defaultdict(list)
    for r in records:
        groups[(r.method, r.dataset, r.category, r.shots, r.mode)].append(r)
    header = ["Data set", "Category", "Shots", "Model", "seeds", "images", *METRIC_NAMES]
    rows = []
    for (method, dataset, category, shots, mode), group in groups.items():
        values = []
        for m in METRIC_NAMES:
            got = [r.metrics[m] for r in group]
            values.append(NA if None in got else _pct(sum(got) / len(got)))
        name, model, n = _dataset_name(dataset), _mark(method, mode, shots), group[0].n_images
        rows.append([name, category, shots, model, len(group), n, *values])
    return html_table(header, rows, "categories")
