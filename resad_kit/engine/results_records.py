"""Per-category result records and their aggregation over seeds (paper Sec. 4.1).

Part of :mod:`resad_kit.engine.results`, which re-exports every public name; see its
docstring for the conventions.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from resad_kit.data import standard_categories
from resad_kit.engine.paper_results import (
    AFCLIP_DATASETS,
    MODES,
    PAPER_DATASETS,
    PaperValue,
    paper_values,
)
from resad_kit.metrics import METRIC_NAMES

__all__ = [
    "STD_DDOF", "CategoryResult", "DatasetAggregate", "aggregate", "aggregate_by_method"
]  # fmt: skip

STD_DDOF = 0
"""Delta degrees of freedom of the std over seeds: 0, the population std (``numpy.std``)."""

OURS_NOTE = (
    "Percent. Ours: for each seed the unweighted mean over the categories, then mean ± "
    f"standard deviation over the seeds (population std, numpy ddof={STD_DDOF}). One "
    "seed: mean only."
)
"""The first note under every method's tables in ``table.md``: how "ours" is aggregated."""


@dataclass(frozen=True)
class CategoryResult:
    """The seven metrics of one category for one ``(shots, seed, mode)``.

    Attributes:
        dataset: data set key (``"mvtec"``, ``"visa"``, ``"btad"``, ``"mpdd"``, ``"dtd"``
            for the paper's; any other name, e.g. ``"synthetic"``, is allowed).
        category: category (folder) name.
        shots: number of normal references ``K`` (``0``: zero-shot, no references).
        seed: the seed that drew the references.
        mode: ``"training_free"`` (Res²CLIP\\*) or ``"fine_tuned"`` (Res²CLIP†).
        metrics: the keys of :data:`resad_kit.metrics.METRIC_NAMES`, fractions in
            ``[0, 1]`` (stored in that key order), or ``None`` for a metric the data
            cannot support (e.g. pixel metrics without masks; shown as "–").
        references: the ``K`` reference image paths (relative to the data root).
        n_images: number of test images evaluated.
        method: the :attr:`~resad_kit.methods.Method.name` of the model (default
            ``"res2clip"``; files written before this field existed are Res²CLIP's).

    Raises:
        ValueError: an unknown mode, missing/extra metric keys, a metric outside
            ``[0, 1]`` or NaN (``None`` is allowed: not available), ``shots`` < 0,
            ``n_images`` < 1, or ``len(references) != shots``.

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
    method: str = "res2clip"

    def __post_init__(self) -> None:
        fn = "CategoryResult"
        for name in ("dataset", "category", "method"):
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
        if self.shots < 0 or self.n_images < 1:
            raise ValueError(
                f"{fn}: `shots` must be ≥ 0 (0: zero-shot) and `n_images` ≥ 1; got "
                f"{self.shots}, {self.n_images}"
            )
        if not isinstance(self.metrics, Mapping) or set(self.metrics) != set(METRIC_NAMES):
            got = sorted(self.metrics) if isinstance(self.metrics, Mapping) else self.metrics
            raise ValueError(f"{fn}: `metrics` must have the keys {METRIC_NAMES}; got {got!r}")
        metrics = {
            k: None if self.metrics[k] is None else float(self.metrics[k]) for k in METRIC_NAMES
        }
        bad = {k: v for k, v in metrics.items() if v is not None and not 0.0 <= v <= 1.0}
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
            "method": self.method,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CategoryResult:
        """Inverse of :meth:`to_dict` (a record without ``method`` is Res²CLIP's)."""
        fields = ("dataset", "category", "shots", "seed", "mode", "metrics", "references")
        missing = [k for k in (*fields, "n_images") if k not in d]
        if missing:
            raise ValueError(f"CategoryResult.from_dict: missing keys {missing}; got {sorted(d)}")
        method = d.get("method", "res2clip")
        return cls(**{k: d[k] for k in fields}, n_images=d["n_images"], method=method)


@dataclass(frozen=True)
class DatasetAggregate:
    """One ``(dataset, shots, mode)`` of one method: class means per seed, mean and std.

    Attributes:
        dataset, shots, mode: the group's key.
        method: the method whose records these are (paper numbers exist for
            ``"res2clip"``, ``"afclip"`` and ``"winclip"``:
            :func:`~resad_kit.engine.paper_results.paper_values`).
        mean: metric → mean over seeds of the per-seed unweighted class mean (fractions);
            ``None`` when a record of the group has no value for it.
        std: metric → standard deviation of the same over seeds (``ddof`` = :data:`STD_DDOF`),
            or ``None``.
        seeds: the seeds, sorted; ``n_seeds = len(seeds)``.
        categories: the categories, sorted (every seed has all of them).
        per_seed: seed → metric → unweighted class mean (``None``: not available).

    Example:
        >>> from resad_kit.data import standard_categories
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
    method: str = "res2clip"

    @property
    def n_seeds(self) -> int:
        """Number of seeds."""
        return len(self.seeds)

    @property
    def paper(self) -> Mapping[str, PaperValue] | None:
        """The method's paper numbers for this group, or ``None`` when not comparable.

        :func:`~resad_kit.engine.paper_results.paper_values` of ``(method, dataset,
        shots, mode)``: Res²CLIP's Tables 6–10, AF-CLIP's Tables 1–2 (only the metrics
        it reports), WinCLIP+ in Res²CLIP's Tables 6–10. Comparable means: the paper
        reports the data set at these shots, and the group holds the data set's
        complete standard category list.
        """
        row = paper_values(self.method, self.dataset, self.shots, self.mode)
        if row is None or set(self.categories) != set(standard_categories(self.dataset)):
            return None
        return row

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {
            "method": self.method,
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


def _mean(values: list[float | None]) -> float | None:
    """The mean, or ``None`` when a value is missing."""
    return None if any(v is None for v in values) else float(np.mean(values))


def _std(values: list[float | None]) -> float | None:
    """The std over seeds (``ddof`` = :data:`STD_DDOF`), or ``None`` when a value is missing."""
    return None if any(v is None for v in values) else float(np.std(values, ddof=STD_DDOF))


_ORDER = (*PAPER_DATASETS, *(d for ds in AFCLIP_DATASETS.values() for d in ds))


def _dataset_order(dataset: str) -> tuple[int, str]:
    """The papers' row order (Res²CLIP's five, then AF-CLIP's further sets), then others."""
    return (_ORDER.index(dataset) if dataset in _ORDER else len(_ORDER), dataset)


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
    """Aggregate per-category records into per-data-set numbers (paper Sec. 4.1).

    For each ``(dataset, shots, mode)`` and seed: the unweighted mean over categories;
    then mean and population std (``ddof=0``) over the seeds. A metric that one record
    of the group lacks (``None``) is ``None`` for the whole group.

    Args:
        results: the run's records.

    Returns:
        ``(dataset, shots, mode)`` → :class:`DatasetAggregate`, ordered by data set (the
        paper's order first), shots, mode.

    Raises:
        ValueError: empty input, records of more than one method (use
            :func:`aggregate_by_method`), a duplicate ``(dataset, category, shots, seed,
            mode)``, or seeds of one group that cover different categories.

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
    methods = sorted({r.method for r in records})
    if len(methods) > 1:
        raise ValueError(
            f"{fn}: the records hold several methods {methods}; aggregate each on its own "
            "(aggregate_by_method)"
        )
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
                m: _mean([by_cat[c].metrics[m] for c in categories]) for m in METRIC_NAMES
            }
        columns = {m: [per_seed[s][m] for s in seeds] for m in METRIC_NAMES}
        out[key] = DatasetAggregate(
            dataset=key[0],
            shots=key[1],
            mode=key[2],
            mean={m: _mean(v) for m, v in columns.items()},
            std={m: _std(v) for m, v in columns.items()},
            seeds=tuple(seeds),
            categories=tuple(categories),
            per_seed=per_seed,
            method=methods[0],
        )
    return out


def aggregate_by_method(
    results: Iterable[CategoryResult],
) -> dict[str, dict[tuple[str, int, str], DatasetAggregate]]:
    """:func:`aggregate` for each method of ``results``: method → its aggregates.

    Methods come in order of first appearance.

    Example:
        >>> from resad_kit.engine.results import CategoryResult, aggregate_by_method
        >>> from resad_kit.metrics import METRIC_NAMES
        >>> m = dict.fromkeys(METRIC_NAMES, 0.5)
        >>> a = CategoryResult("toy", "a", 1, 0, "training_free", m, ("r.png",), 4)
        >>> b = CategoryResult("toy", "a", 1, 0, "training_free", m, ("r.png",), 4, "knn")
        >>> {k: list(v) for k, v in aggregate_by_method([a, b]).items()}
        {'res2clip': [('toy', 1, 'training_free')], 'knn': [('toy', 1, 'training_free')]}
    """
    records = _check_results("aggregate_by_method", results)
    methods = list(dict.fromkeys(r.method for r in records))
    return {m: aggregate([r for r in records if r.method == m]) for m in methods}
