"""``table.md``'s FineGrainedAD block in the layout of FineGrainedAD's Table 1.

Part of :mod:`resad_kit.engine.results` (see :func:`~resad_kit.engine.results.write_results`).
The paper's Table 1 has one row per method and one column per ``(data set, shots)``, each
cell ``image AUROC / pixel AUROC`` in percent. :func:`finegrainedad_table1` gives that
layout for a run: rows ours (mean over the seeds), the paper's
(:data:`~resad_kit.engine.paper_results.FINEGRAINEDAD_RESULTS`, two decimals as printed)
and Δ = ours − paper, one column per ``(data set, shots)`` of the run (MVTec AD, VisA, then
the others). The paper cell is "–" unless the group is comparable (the paper reports the
data set at these shots and the group has the complete standard category list).
"""

from __future__ import annotations

from collections.abc import Sequence

from resad_kit.engine.paper_results_finegrainedad import FINEGRAINEDAD_METRICS
from resad_kit.engine.results_records import DatasetAggregate, _dataset_order
from resad_kit.engine.results_render import NA, _dataset_name, _delta, _md_row, _pct

__all__ = ["finegrainedad_table1"]


def _cell(values: Sequence[str]) -> str:
    return NA if all(v == NA for v in values) else "/".join(values)


def finegrainedad_table1(aggs: Sequence[DatasetAggregate]) -> list[str]:
    """The Table 1 block (markdown lines) of a run's FineGrainedAD aggregates.

    Args:
        aggs: the run's :class:`~resad_kit.engine.results_records.DatasetAggregate` of
            method ``"finegrainedad"``.

    Returns:
        The heading, a blank line, the header, the separator and the rows ours / paper / Δ.

    Example:
        >>> from resad_kit.data import standard_categories
        >>> from resad_kit.engine.results import CategoryResult, aggregate
        >>> from resad_kit.engine.results_render_finegrainedad import finegrainedad_table1
        >>> from resad_kit.metrics import METRIC_NAMES
        >>> metrics = {**dict.fromkeys(METRIC_NAMES, 0.5), "I-AUROC": 0.9, "P-AUROC": 0.95}
        >>> recs = [
        ...     CategoryResult(
        ...         "visa", c, 1, 0, "fine_tuned", metrics, ("r.png",), 4, method="finegrainedad"
        ...     )
        ...     for c in standard_categories("visa")
        ... ]
        >>> for line in finegrainedad_table1(list(aggregate(recs).values()))[2:]:
        ...     print(line)
        | FineGrainedAD | VisA 1-shot |
        | --- | --- |
        | ours | 90.0/95.0 |
        | paper | 84.16/96.42 |
        | Δ | +5.8/-1.4 |
    """
    groups = sorted(aggs, key=lambda a: (_dataset_order(a.dataset), a.shots))
    header = ["FineGrainedAD", *(f"{_dataset_name(a.dataset)} {a.shots}-shot" for a in groups)]
    ours, paper, delta = ["ours"], ["paper"], ["Δ"]
    for agg in groups:
        row = agg.paper
        means = [agg.mean[m] for m in FINEGRAINEDAD_METRICS]
        printed = [None if row is None else row[m].mean for m in FINEGRAINEDAD_METRICS]
        ours.append(_cell([_pct(v) for v in means]))
        paper.append(_cell([NA if p is None else f"{p:.2f}" for p in printed]))
        delta.append(_cell([_delta(v, p) for v, p in zip(means, printed, strict=True)]))
    return [
        "## FineGrainedAD Table 1 layout: image / pixel AUROC (percent, mean over seeds)",
        "",
        _md_row(header),
        _md_row(["---"] * len(header)),
        _md_row(ours),
        _md_row(paper),
        _md_row(delta),
    ]
