"""Per-category results, their aggregation over seeds, and the run's output files.

One :class:`CategoryResult` holds the seven metrics of one category for one
``(shots, seed, mode)``. :func:`aggregate` turns a run's records into the paper's
numbers (paper Sec. 4.1): for each ``(dataset, shots, mode)`` and each seed, the unweighted
mean over the categories; then the mean and the **population** standard deviation
(``numpy.std``, ``ddof=0``; :data:`STD_DDOF`) of those class means over the seeds. The
paper says "mean ± standard deviation over three random runs" and does not say which
standard deviation; with three seeds the sample std (``ddof=1``) is √1.5 ≈ 1.22 times
larger.

:func:`write_results` writes ``metrics.csv`` (one row per record, percent with two
decimals; the column ``backbone_pretrained`` says whether the backbone had pretrained
weights — ``False`` for random weights, whatever the adapters' training; a metric the data
cannot support is "–"), ``metrics.json`` (full-precision records, aggregates and
metadata; read back by :func:`load_results`) and ``table.md`` (the layout of the paper's
Table 1, then one
Tables 6–10 style table per data set, each with the paper's number and the difference
Δ = ours − paper in percentage points; AF-CLIP's block follows the layouts of its Tables 1
and 2 instead, :mod:`resad_kit.engine.results_render_afclip`). A group gets paper numbers
only when its method's paper (:func:`~resad_kit.engine.paper_results.paper_values`:
Res²CLIP, AF-CLIP, WinCLIP+ in Res²CLIP's tables) reports its data set at its shots and
the group has the complete standard category list
(:func:`resad_kit.data.standard_categories`); a category subset, another data set or a
metric the paper omits shows "–". With ``trained=False`` the first line of ``table.md``, the
first line of :func:`summary_table` and the ``warning`` field of ``metrics.json`` say that
the backbone is untrained and the numbers are not comparable to the paper.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from resad_kit.engine.atomic import atomic_write
from resad_kit.engine.results_records import (
    STD_DDOF,
    CategoryResult,
    DatasetAggregate,
    _check_results,
    aggregate,
    aggregate_by_method,
)
from resad_kit.engine.results_render import (
    NA,
    UNTRAINED_WARNING,
    render_summary,
    render_table_md,
)
from resad_kit.metrics import METRIC_NAMES

__all__ = [
    "STD_DDOF",
    "UNTRAINED_WARNING",
    "CategoryResult",
    "DatasetAggregate",
    "aggregate",
    "aggregate_by_method",
    "load_results",
    "summary_table",
    "write_results",
]

SCHEMA = "resad_kit.results/1"
_CSV_FIELDS = (
    "method", "dataset", "category", "shots", "seed", "mode", "n_images", "backbone",
    "backbone_pretrained",
)  # fmt: skip


def summary_table(results: Iterable[CategoryResult], *, trained: bool) -> str:
    """A plain-text table of the aggregated numbers (percent), for printing.

    One line per ``(method, dataset, shots, mode)`` with ``mean±std`` over seeds, and a line with
    the paper's numbers below each comparable group. With ``trained=False`` the first line
    is the :data:`UNTRAINED_WARNING`.

    Example:
        >>> from resad_kit.engine.results import CategoryResult, summary_table
        >>> from resad_kit.metrics import METRIC_NAMES
        >>> m = dict.fromkeys(METRIC_NAMES, 0.5)
        >>> r = CategoryResult("toy", "a", 1, 0, "fine_tuned", m, ("r.png",), 4)
        >>> print(summary_table([r], trained=False))
        WARNING: backbone untrained (random weights) — numbers are NOT comparable to the paper
        method    dataset  shots  mode        seeds  cats  I-AUROC  I-AP  ...  PRO
        res2clip  toy      1      fine_tuned  1      1     50.0     50.0  ...  50.0
        percent; mean±std over seeds (population std, ddof=0)
        no paper numbers: these data sets or category subsets are not in the paper ...
    """
    by_method = aggregate_by_method(results)
    aggs = [a for group in by_method.values() for a in group.values()]
    return render_summary(aggs, trained=bool(trained))


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
    aggs = [a for group in aggregate_by_method(records).values() for a in group.values()]
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
        "backbone_pretrained": trained,
        "trained": trained,  # the same, under its former name (files before issue 17)
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
            [r.method, r.dataset, r.category, r.shots, r.seed, r.mode, r.n_images]
            + [backbone_label]
            + [trained]
            + [NA if r.metrics[m] is None else f"{100 * r.metrics[m]:.2f}" for m in METRIC_NAMES]
            + [";".join(r.references)]
        )
    document = {
        "schema": SCHEMA,
        "metadata": metadata,
        "records": [r.to_dict() for r in records],
        "aggregates": [a.to_dict() for a in aggs],
    }
    table = render_table_md(aggs, trained=trained, backbone_label=backbone_label, created=created)
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
