"""Per-category results, their aggregation over seeds, and the run's output files.

One :class:`CategoryResult` holds the seven metrics of one category for one
``(shots, seed, mode)``. :func:`aggregate` turns a run's records into the paper's
numbers (spec §6.3): for each ``(dataset, shots, mode)`` and each seed, the unweighted
mean over the categories; then the mean and the **population** standard deviation
(``numpy.std``, ``ddof=0``; :data:`STD_DDOF`) of those class means over the seeds. The
paper says "mean ± standard deviation over three random runs" and does not say which
standard deviation; with three seeds the sample std (``ddof=1``) is √1.5 ≈ 1.22 times
larger.

:func:`write_results` writes ``metrics.csv`` (one row per record, percent with two
decimals), ``metrics.json`` (full-precision records, aggregates and metadata; read back by
:func:`load_results`) and ``table.md`` (the layout of the paper's Table 1, then one
Tables 6–10 style table per data set, each with the paper's number and the difference
Δ = ours − paper in percentage points). A group gets paper numbers only when its data set
is one of the paper's five with the complete standard category list
(:func:`resad_kit.data.standard_categories`) and 1, 2 or 4 shots; a category subset or
another data set shows "–". With ``trained=False`` the first line of ``table.md``, the
first line of :func:`summary_table` and the ``warning`` field of ``metrics.json`` say that
the backbone is untrained and the numbers are not comparable to the paper.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from resad_kit.data import standard_categories
from resad_kit.engine.atomic import atomic_write
from resad_kit.engine.paper_results import (
    MODES,
    PAPER_DATASET_NAMES,
    PAPER_DATASETS,
    PAPER_DISCREPANCIES,
    PAPER_RESULTS,
    PAPER_TABLE1,
    PAPER_TABLES,
    TABLE1_METRICS,
    PaperValue,
)
from resad_kit.metrics import METRIC_NAMES

__all__ = [
    "STD_DDOF",
    "UNTRAINED_WARNING",
    "CategoryResult",
    "DatasetAggregate",
    "aggregate",
    "load_results",
    "summary_table",
    "write_results",
]

STD_DDOF = 0
"""Delta degrees of freedom of the std over seeds: 0, the population std (``numpy.std``)."""

UNTRAINED_WARNING = "backbone untrained (random weights) — numbers are NOT comparable to the paper"
"""The sentence every output carries when the backbone has random weights."""

SCHEMA = "resad_kit.results/1"
_CSV_FIELDS = ("dataset", "category", "shots", "seed", "mode", "n_images", "backbone", "trained")


@dataclass(frozen=True)
class CategoryResult:
    """The seven metrics of one category for one ``(shots, seed, mode)``.

    Attributes:
        dataset: data set key (``"mvtec"``, ``"visa"``, ``"btad"``, ``"mpdd"``, ``"dtd"``
            for the paper's; any other name, e.g. ``"synthetic"``, is allowed).
        category: category (folder) name.
        shots: number of normal references ``K``.
        seed: the seed that drew the references.
        mode: ``"training_free"`` (Res²CLIP\\*) or ``"fine_tuned"`` (Res²CLIP†).
        metrics: the keys of :data:`resad_kit.metrics.METRIC_NAMES`, fractions in
            ``[0, 1]`` (stored in that key order).
        references: the ``K`` reference image paths (relative to the data root).
        n_images: number of test images evaluated.

    Raises:
        ValueError: an unknown mode, missing/extra metric keys, a metric outside
            ``[0, 1]`` or NaN, ``shots`` or ``n_images`` < 1, or ``len(references) != shots``.

    Example:
        >>> from resad_kit.engine.results import CategoryResult
        >>> r = CategoryResult(
        ...     "mvtec",
        ...     "bottle",
        ...     shots=1,
        ...     seed=0,
        ...     mode="training_free",
        ...     metrics=dict.fromkeys(("I-AUROC", "I-AP", "I-F1max"), 0.9)
        ...     | dict.fromkeys(("P-AUROC", "P-AP", "P-F1max", "PRO"), 0.5),
        ...     references=("bottle/train/good/000.png",),
        ...     n_images=83,
        ... )
        >>> r.metrics["I-AUROC"], CategoryResult.from_dict(r.to_dict()) == r
        (0.9, True)
    """

    dataset: str
    category: str
    shots: int
    seed: int
    mode: str
    metrics: Mapping[str, float]
    references: tuple[str, ...]
    n_images: int

    def __post_init__(self) -> None:
        fn = "CategoryResult"
        for name in ("dataset", "category"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{fn}: `{name}` must be a non-empty str; got {value!r}")
        if self.mode not in MODES:
            raise ValueError(f"{fn}: `mode` must be one of {MODES}; got {self.mode!r}")
        for name in ("shots", "seed", "n_images"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ValueError(f"{fn}: `{name}` must be an int; got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.shots < 1 or self.n_images < 1:
            raise ValueError(
                f"{fn}: `shots` and `n_images` must be ≥ 1; got {self.shots}, {self.n_images}"
            )
        if not isinstance(self.metrics, Mapping) or set(self.metrics) != set(METRIC_NAMES):
            got = sorted(self.metrics) if isinstance(self.metrics, Mapping) else self.metrics
            raise ValueError(f"{fn}: `metrics` must have the keys {METRIC_NAMES}; got {got!r}")
        metrics = {k: float(self.metrics[k]) for k in METRIC_NAMES}
        bad = {k: v for k, v in metrics.items() if not 0.0 <= v <= 1.0}  # NaN fails too
        if bad:
            raise ValueError(f"{fn}: metrics must be fractions in [0, 1]; got {bad}")
        object.__setattr__(self, "metrics", metrics)
        refs = (self.references,) if isinstance(self.references, str) else self.references
        refs = tuple(str(p) for p in refs)
        if len(refs) != self.shots:
            raise ValueError(
                f"{fn}: `references` must hold `shots`={self.shots} paths; got {len(refs)}"
            )
        object.__setattr__(self, "references", refs)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (metrics as fractions, references as a list)."""
        return {
            "dataset": self.dataset,
            "category": self.category,
            "shots": self.shots,
            "seed": self.seed,
            "mode": self.mode,
            "metrics": dict(self.metrics),
            "references": list(self.references),
            "n_images": self.n_images,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CategoryResult:
        """Inverse of :meth:`to_dict`."""
        fields = ("dataset", "category", "shots", "seed", "mode", "metrics", "references")
        missing = [k for k in (*fields, "n_images") if k not in d]
        if missing:
            raise ValueError(f"CategoryResult.from_dict: missing keys {missing}; got {sorted(d)}")
        return cls(**{k: d[k] for k in fields}, n_images=d["n_images"])


@dataclass(frozen=True)
class DatasetAggregate:
    """One ``(dataset, shots, mode)``: class means per seed, their mean and std over seeds.

        Attributes:
            dataset, shots, mode: the group's key.
            mean: metric → mean over seeds of the per-seed unweighted class mean (fractions).
            std: metric → standard deviation of the same over seeds (``ddof`` = :data:`STD_DDOF`).
            seeds: the seeds, sorted; ``n_seeds = len(seeds)``.
            categories: the categories, sorted (every seed has all of them).
            per_seed: seed → metric → unweighted class mean.

        Example:
            >>> from resad_kit.data import standard_categories
    from resad_kit.engine.atomic import atomic_write
            >>> from resad_kit.engine.results import CategoryResult, aggregate
            >>> from resad_kit.metrics import METRIC_NAMES
            >>> recs = [
            ...     CategoryResult(
            ...         "btad",
            ...         c,
            ...         1,
            ...         0,
            ...         "training_free",
            ...         dict.fromkeys(METRIC_NAMES, 0.9),
            ...         ("ref.bmp",),
            ...         10,
            ...     )
            ...     for c in standard_categories("btad")
            ... ]
            >>> g = aggregate(recs)[("btad", 1, "training_free")]
            >>> g.categories, g.n_seeds, g.paper["I-AUROC"]  # all 3 BTAD categories: comparable
            (('01', '02', '03'), 1, PaperValue(mean=95.5, std=0.7))
            >>> aggregate(recs[:2])[("btad", 1, "training_free")].paper is None  # a subset: not
            True
    """

    dataset: str
    shots: int
    mode: str
    mean: Mapping[str, float]
    std: Mapping[str, float]
    seeds: tuple[int, ...]
    categories: tuple[str, ...]
    per_seed: Mapping[int, Mapping[str, float]]

    @property
    def n_seeds(self) -> int:
        """Number of seeds."""
        return len(self.seeds)

    @property
    def paper(self) -> Mapping[str, PaperValue] | None:
        """The paper's Tables 6–10 row for this group, or ``None`` when not comparable.

        Comparable means: one of the paper's five data sets, its complete standard
        category list, and 1, 2 or 4 shots.
        """
        row = PAPER_RESULTS.get((self.dataset, self.shots, self.mode))
        if row is None or set(self.categories) != set(standard_categories(self.dataset)):
            return None
        return row

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {
            "dataset": self.dataset,
            "shots": self.shots,
            "mode": self.mode,
            "mean": dict(self.mean),
            "std": dict(self.std),
            "std_ddof": STD_DDOF,
            "n_seeds": self.n_seeds,
            "seeds": list(self.seeds),
            "categories": list(self.categories),
            "per_seed": {str(s): dict(m) for s, m in self.per_seed.items()},
            "comparable_to_paper": self.paper is not None,
        }


def _dataset_order(dataset: str) -> tuple[int, str]:
    return (PAPER_DATASETS.index(dataset) if dataset in PAPER_DATASETS else 99, dataset)


def _check_results(fn: str, results: object) -> list[CategoryResult]:
    if isinstance(results, CategoryResult) or not isinstance(results, Iterable):
        raise ValueError(f"{fn}: `results` must be a sequence of CategoryResult")
    out = list(results)
    if not out:
        raise ValueError(f"{fn}: `results` must not be empty")
    for i, r in enumerate(out):
        if not isinstance(r, CategoryResult):
            raise ValueError(f"{fn}: `results[{i}]` must be a CategoryResult; got {type(r)}")
    return out


def aggregate(results: Iterable[CategoryResult]) -> dict[tuple[str, int, str], DatasetAggregate]:
    """Aggregate per-category records into per-data-set numbers (spec §6.3).

    For each ``(dataset, shots, mode)`` and seed: the unweighted mean over categories;
    then mean and population std (``ddof=0``) over the seeds.

    Args:
        results: the run's records.

    Returns:
        ``(dataset, shots, mode)`` → :class:`DatasetAggregate`, ordered by data set (the
        paper's order first), shots, mode.

    Raises:
        ValueError: empty input, a duplicate ``(dataset, category, shots, seed, mode)``, or
            seeds of one group that cover different categories.

    Example:
        >>> from resad_kit.engine.results import CategoryResult, aggregate
        >>> from resad_kit.metrics import METRIC_NAMES
        >>> def rec(cat, seed, v):
        ...     m = dict.fromkeys(METRIC_NAMES, v)
        ...     return CategoryResult("toy", cat, 1, seed, "training_free", m, ("r.png",), 10)
        >>> agg = aggregate(
        ...     [rec("a", 0, 0.8), rec("b", 0, 0.6), rec("a", 1, 0.9), rec("b", 1, 0.9)]
        ... )
        >>> g = agg[("toy", 1, "training_free")]
        >>> g.per_seed[0]["PRO"], g.per_seed[1]["PRO"]  # class means per seed
        (0.7, 0.9)
        >>> round(g.mean["PRO"], 6), round(g.std["PRO"], 6), g.n_seeds  # population std
        (0.8, 0.1, 2)
    """
    fn = "aggregate"
    records = _check_results(fn, results)
    groups: dict[tuple[str, int, str], dict[int, dict[str, CategoryResult]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    for r in records:
        by_cat = groups[(r.dataset, r.shots, r.mode)][r.seed]
        if r.category in by_cat:
            raise ValueError(
                f"{fn}: duplicate record for dataset={r.dataset!r}, category={r.category!r}, "
                f"shots={r.shots}, seed={r.seed}, mode={r.mode!r}"
            )
        by_cat[r.category] = r
    out: dict[tuple[str, int, str], DatasetAggregate] = {}
    for key in sorted(groups, key=lambda k: (_dataset_order(k[0]), k[1], MODES.index(k[2]))):
        seeds = sorted(groups[key])
        categories = sorted(groups[key][seeds[0]])
        per_seed: dict[int, dict[str, float]] = {}
        for seed in seeds:
            by_cat = groups[key][seed]
            if sorted(by_cat) != categories:
                raise ValueError(
                    f"{fn}: seeds of {key} cover different categories: seed {seeds[0]} has "
                    f"{categories}, seed {seed} has {sorted(by_cat)}"
                )
            per_seed[seed] = {
                m: float(np.mean([by_cat[c].metrics[m] for c in categories])) for m in METRIC_NAMES
            }
        table = np.array([[per_seed[s][m] for m in METRIC_NAMES] for s in seeds])
        out[key] = DatasetAggregate(
            dataset=key[0],
            shots=key[1],
            mode=key[2],
            mean=dict(zip(METRIC_NAMES, table.mean(axis=0).tolist(), strict=True)),
            std=dict(zip(METRIC_NAMES, table.std(axis=0, ddof=STD_DDOF).tolist(), strict=True)),
            seeds=tuple(seeds),
            categories=tuple(categories),
            per_seed=per_seed,
        )
    return out


# ---------------------------------------------------------------- rendering (percent)

_MARK = {"training_free": "Res²CLIP*", "fine_tuned": "Res²CLIP†"}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _mean_std(agg: DatasetAggregate, metric: str) -> str:
    if agg.n_seeds == 1:
        return _pct(agg.mean[metric])
    return f"{_pct(agg.mean[metric])}±{_pct(agg.std[metric])}"


def _delta(ours: float, paper: float | None) -> str:
    if paper is None:
        return "–"
    return f"{round(100 * ours - paper, 1) + 0.0:+.1f}"  # + 0.0 turns -0.0 into 0.0


def _dataset_name(dataset: str) -> str:
    return PAPER_DATASET_NAMES.get(dataset, dataset)


def _md_row(cells: Iterable[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _md_mark(mode: str) -> str:
    return _MARK[mode].replace("*", "\\*")


def _average(
    aggs: Sequence[DatasetAggregate], shots: int, mode: str
) -> tuple[dict[str, float] | None, Mapping[str, float] | None]:
    """Ours and the paper's Table 1 Average row for (shots, mode), over the data sets present."""
    group = [a for a in aggs if a.shots == shots and a.mode == mode]
    if not group:
        return None, None
    ours = {m: float(np.mean([a.mean[m] for a in group])) for m in TABLE1_METRICS}
    complete = sorted(a.dataset for a in group if a.paper is not None) == sorted(PAPER_DATASETS)
    paper = PAPER_TABLE1.get(("average", shots, mode)) if complete and len(group) == 5 else None
    return ours, paper


def _table1_section(aggs: Sequence[DatasetAggregate]) -> list[str]:
    modes = [m for m in MODES if any(a.mode == m for a in aggs)]
    header = ["Shots", "Dataset"]
    for mode in modes:
        for metric in TABLE1_METRICS:
            header += [f"{_md_mark(mode)} {metric}", "paper", "Δ"]
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
                    p = paper[metric].mean if paper is not None else None
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
    table = PAPER_TABLES.get(dataset)
    title = _dataset_name(dataset) + (f" (paper Table {table})" if table else " (not in the paper)")
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
                [agg.shots, _md_mark(agg.mode), seeds, *(_mean_std(agg, m) for m in METRIC_NAMES)]
            )
        )
        cells = [f"{paper[m].mean:.1f}±{paper[m].std:.1f}" if paper else "–" for m in METRIC_NAMES]
        lines.append(_md_row([agg.shots, _md_mark(agg.mode), "paper", *cells]))
        deltas = [_delta(agg.mean[m], paper[m].mean if paper else None) for m in METRIC_NAMES]
        lines.append(_md_row([agg.shots, _md_mark(agg.mode), "Δ", *deltas]))
    return lines


def _notes(aggs: Sequence[DatasetAggregate]) -> list[str]:
    notes = [
        "Percent. Ours: for each seed the unweighted mean over the categories, then mean ± "
        f"standard deviation over the seeds (population std, numpy ddof={STD_DDOF}; the paper "
        "does not say which std it reports). One seed: mean only.",
        "Δ = ours − paper in percentage points. Paper numbers: data-set rows from Tables 6–10 "
        "(mean ± std over the paper's three runs), Table 1's Average row as printed. The "
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


def _render_table_md(
    aggs: Sequence[DatasetAggregate], *, trained: bool, backbone_label: str, created: str
) -> str:
    lines = [] if trained else [f"**WARNING: {UNTRAINED_WARNING}.**", ""]
    weights = "trained weights" if trained else "random weights"
    lines += [
        "# Res²CLIP results",
        "",
        f"Backbone: {backbone_label} ({weights}). Created {created}.",
        "",
        *_table1_section(aggs),
        "",
    ]
    for dataset in sorted({a.dataset for a in aggs}, key=_dataset_order):
        lines += [*_dataset_section(dataset, [a for a in aggs if a.dataset == dataset]), ""]
    lines += _notes(aggs)
    return "\n".join(lines) + "\n"


def _render_summary(aggs: Sequence[DatasetAggregate], *, trained: bool) -> str:
    rows = [["dataset", "shots", "mode", "seeds", "cats", *METRIC_NAMES]]
    for agg in aggs:
        rows.append(
            [agg.dataset, str(agg.shots), agg.mode, str(agg.n_seeds), str(len(agg.categories))]
            + [_mean_std(agg, m) for m in METRIC_NAMES]
        )
        paper = agg.paper
        if paper is not None:
            label = f"paper (T{PAPER_TABLES[agg.dataset]})"
            rows.append(["", "", label, "", ""] + [f"{paper[m].mean:.1f}" for m in METRIC_NAMES])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [] if trained else [f"WARNING: {UNTRAINED_WARNING}"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append(
        f"percent; mean±std over seeds (population std, ddof={STD_DDOF}); paper = Tables 6–10"
    )
    return "\n".join(lines)


def summary_table(results: Iterable[CategoryResult], *, trained: bool) -> str:
    """A plain-text table of the aggregated numbers (percent), for printing.

    One line per ``(dataset, shots, mode)`` with ``mean±std`` over seeds, and a line with
    the paper's numbers below each comparable group. With ``trained=False`` the first line
    is the :data:`UNTRAINED_WARNING`.

    Example:
        >>> from resad_kit.engine.results import CategoryResult, summary_table
        >>> from resad_kit.metrics import METRIC_NAMES
        >>> m = dict.fromkeys(METRIC_NAMES, 0.5)
        >>> r = CategoryResult("toy", "a", 1, 0, "fine_tuned", m, ("r.png",), 4)
        >>> print(summary_table([r], trained=False))
        WARNING: backbone untrained (random weights) — numbers are NOT comparable to the paper
        dataset  shots  mode         seeds  cats  I-AUROC  I-AP  I-F1max  ...  PRO
        toy      1      fine_tuned   1      1     50.0     50.0  50.0     ...  50.0
        percent; mean±std over seeds (population std, ddof=0); paper = Tables 6–10
    """
    aggs = aggregate(results)
    return _render_summary(list(aggs.values()), trained=bool(trained))


def _json_config(fn: str, config: object) -> dict[str, Any]:
    if not isinstance(config, Mapping):
        raise ValueError(f"{fn}: `config` must be a dict; got {type(config).__name__}")
    try:
        return json.loads(json.dumps(dict(config), allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{fn}: `config` must be JSON-serialisable: {err}") from None


def write_results(
    results: Sequence[CategoryResult],
    out_dir: str | Path,
    *,
    backbone_label: str,
    trained: bool,
    config: Mapping[str, Any],
    extra_metadata: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``metrics.csv``, ``metrics.json`` and ``table.md`` into ``out_dir``.

    Args:
        results: the run's records.
        out_dir: the run's folder (created if missing). Each file is replaced atomically
            (:func:`resad_kit.engine.atomic.atomic_write`): a failed write (a full disk, a
            killed job) leaves the previous version of that file intact.
        backbone_label: e.g. ``"ViT-L-14-336 (openai)"`` or ``"tiny (random weights)"``.
        trained: whether the backbone has trained weights; ``False`` puts the
            :data:`UNTRAINED_WARNING` on the first line of ``table.md`` and in the
            ``warning`` field of ``metrics.json``.
        config: the resolved configuration (JSON-able dict), stored in ``metrics.json``.
        extra_metadata: more JSON-able fields, stored under ``metadata["extra"]``.

    Returns:
        ``{"csv": ..., "json": ..., "table": ...}`` paths.

    Raises:
        ValueError: bad records (see :func:`aggregate`), a config or extra metadata that is
            not JSON-serialisable, an empty ``backbone_label``.
        OSError: a file could not be written (that file keeps its previous content).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from resad_kit.engine.results import CategoryResult, load_results, write_results
        >>> from resad_kit.metrics import METRIC_NAMES
        >>> r = CategoryResult(
        ...     "toy", "a", 1, 0, "training_free", dict.fromkeys(METRIC_NAMES, 0.5), ("r.png",), 4
        ... )
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     paths = write_results([r], tmp, backbone_label="tiny", trained=False, config={})
        ...     first = paths["table"].read_text().splitlines()[0]
        ...     back = load_results(tmp)
        >>> sorted(p.name for p in paths.values()), back == [r]
        (['metrics.csv', 'metrics.json', 'table.md'], True)
        >>> print(first)
        **WARNING: backbone untrained (random weights) — numbers are NOT comparable to ...**
    """
    fn = "write_results"
    records = _check_results(fn, results)
    aggs = aggregate(records)
    if not isinstance(backbone_label, str) or not backbone_label:
        raise ValueError(f"{fn}: `backbone_label` must be a non-empty str; got {backbone_label!r}")
    config_json = _json_config(fn, config)
    extra = _json_config(fn, extra_metadata) if extra_metadata is not None else {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    trained = bool(trained)
    metadata = {
        "backbone": backbone_label,
        "trained": trained,
        "warning": None if trained else UNTRAINED_WARNING,
        "created": created,
        "metric_units": "fractions in [0, 1] (metrics.csv and table.md: percent)",
        "std": f"population standard deviation over seeds (numpy ddof={STD_DDOF})",
        "config": config_json,
        "extra": extra,
    }
    paths = {"csv": out / "metrics.csv", "json": out / "metrics.json", "table": out / "table.md"}
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow([*_CSV_FIELDS, *METRIC_NAMES, "references"])
    for r in records:
        writer.writerow(
            [r.dataset, r.category, r.shots, r.seed, r.mode, r.n_images, backbone_label]
            + [trained]
            + [f"{100 * r.metrics[m]:.2f}" for m in METRIC_NAMES]
            + [";".join(r.references)]
        )
    document = {
        "schema": SCHEMA,
        "metadata": metadata,
        "records": [r.to_dict() for r in records],
        "aggregates": [a.to_dict() for a in aggs.values()],
    }
    table = _render_table_md(
        list(aggs.values()), trained=trained, backbone_label=backbone_label, created=created
    )
    text = json.dumps(document, indent=1, ensure_ascii=False)
    # Every file is rendered before the first is written; each write is atomic.
    atomic_write(paths["csv"], buffer.getvalue())
    atomic_write(paths["json"], text)
    atomic_write(paths["table"], table)
    return paths


def load_results(out_dir: str | Path) -> list[CategoryResult]:
    """Read the records of ``out_dir/metrics.json`` (or of that file) back.

    Raises:
        ValueError: a missing or unreadable file, or one that is not a results file.

    Example:
        >>> import tempfile
        >>> from resad_kit.engine.results import CategoryResult, load_results, write_results
        >>> from resad_kit.metrics import METRIC_NAMES
        >>> m = dict.fromkeys(METRIC_NAMES, 0.25)
        >>> r = CategoryResult("toy", "a", 2, 7, "fine_tuned", m, ("x.png", "y.png"), 5)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = write_results([r], tmp, backbone_label="tiny", trained=False, config={})
        ...     back = load_results(tmp)
        >>> back[0].references, back == [r]
        (('x.png', 'y.png'), True)
    """
    fn = "load_results"
    path = Path(out_dir)
    if path.is_dir():
        path = path / "metrics.json"
    if not path.is_file():
        raise ValueError(f"{fn}: no results file at {str(path)!r}")
    try:
        document = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{fn}: cannot read {str(path)!r}: {err}") from None
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise ValueError(f"{fn}: {str(path)!r} is not a {SCHEMA!r} file")
    return [CategoryResult.from_dict(d) for d in document["records"]]
