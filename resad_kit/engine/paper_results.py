"""The papers' reported numbers: Res²CLIP (Table 1, Tables 6–10, with its WinCLIP+
baseline) and AF-CLIP (Tables 1–2).

Two read-only tables, in percent, exactly as printed (one decimal):

* :data:`PAPER_RESULTS` — Tables 6–10 (one per data set): all seven metrics, mean and
  standard deviation over the paper's three runs, keyed ``(dataset, shots, mode)``;
* :data:`PAPER_TABLE1` — Table 1: I-AUROC / P-AP / PRO means only, the same keys plus the
  ``"average"`` pseudo data set (the unweighted mean over the five data sets).

Keys: ``dataset`` ∈ :data:`PAPER_DATASETS` (the keys of
:func:`resad_kit.data.standard_categories`), ``shots`` ∈ ``(1, 2, 4)``, ``mode`` ∈
``("training_free", "fine_tuned")`` (Res²CLIP\\* and Res²CLIP†). Metric names are those of
:data:`resad_kit.metrics.METRIC_NAMES`; the paper's column I-AUC is ``I-AUROC``, I-F1 is
``I-F1max``, P-AUC is ``P-AUROC`` and P-F1 is ``P-F1max``.

The paper's one inconsistency is kept as printed and listed in
:data:`PAPER_DISCREPANCIES`: DTD-Synthetic, 4-shot, Res²CLIP† P-AP is 78.9 in Table 1 and
79.2 in Table 10; Table 1's Average (58.5) fits 79.2, which is taken as right. The
tests recompute every Table 1 Average from Tables 6–10 to catch transcription errors.

AF-CLIP (Fang, Lv, Su, ACM MM 2025): :data:`AFCLIP_RESULTS` holds its Table 1 (zero-shot,
``shots = 0``, eleven data sets: image AUROC/AP, pixel AUROC/PRO, one run, std 0) and its
Table 2 (AF-CLIP+, 1/2/4 shots on MVTec AD and VisA, mean ± std over five runs), keyed
``(dataset, shots)``; :data:`AFCLIP_RELEASED_LOGS` the two-decimal numbers of the result
logs shipped with the official code (Faustinaqq/AF-CLIP, ``weight/*_res.txt``).
:data:`WINCLIP_RESULTS` holds the WinCLIP+ rows of Res²CLIP's Tables 6–10 (the baseline,
training-free, all seven metrics) and :data:`WINCLIP_TABLE1` its Table 1 column with the
Average row. :data:`FINEGRAINEDAD_RESULTS` holds FineGrainedAD's Table 1 (image / pixel
AUROC, MVTec AD and VisA, 1/2/4 shots, :mod:`.paper_results_finegrainedad`).
:func:`paper_values` looks up any of them by method name.

Example:
    >>> from resad_kit.engine.paper_results import PAPER_RESULTS, PAPER_TABLE1
    >>> PAPER_RESULTS[("mvtec", 1, "training_free")]["I-AUROC"]
    PaperValue(mean=96.1, std=0.3)
    >>> len(PAPER_RESULTS), list(PAPER_RESULTS[("btad", 2, "fine_tuned")])
    (30, ['I-AUROC', 'I-AP', 'I-F1max', 'P-AUROC', 'P-AP', 'P-F1max', 'PRO'])
    >>> dict(PAPER_TABLE1[("average", 4, "fine_tuned")])
    {'I-AUROC': 94.2, 'P-AP': 58.5, 'PRO': 92.1}
    >>> (
    ...     PAPER_RESULTS[("dtd", 4, "fine_tuned")]["P-AP"].mean,
    ...     PAPER_TABLE1[("dtd", 4, "fine_tuned")]["P-AP"],
    ... )
    (79.2, 78.9)
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from resad_kit.metrics import METRIC_NAMES

__all__ = [
    "AFCLIP_DATASETS",
    "AFCLIP_DATASET_NAMES",
    "AFCLIP_METRICS",
    "AFCLIP_RELEASED_LOGS",
    "AFCLIP_RESULTS",
    "AFCLIP_SHOTS",
    "FINEGRAINEDAD_RESULTS",
    "MODES",
    "PAPER_DATASETS",
    "PAPER_DATASET_NAMES",
    "PAPER_DISCREPANCIES",
    "PAPER_RESULTS",
    "PAPER_SHOTS",
    "PAPER_TABLE1",
    "PAPER_TABLES",
    "TABLE1_METRICS",
    "WINCLIP_RESULTS",
    "WINCLIP_TABLE1",
    "PaperValue",
    "paper_average",
    "paper_values",
]

MODES: tuple[str, str] = ("training_free", "fine_tuned")
"""Res²CLIP\\* (training-free) and Res²CLIP† (fine-tuned), in the paper's column order."""

PAPER_DATASETS: tuple[str, ...] = ("mvtec", "visa", "btad", "mpdd", "dtd")
"""The five evaluation data sets, in the paper's row order."""

PAPER_DATASET_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "mvtec": "MVTec AD",
        "visa": "VisA",
        "btad": "BTAD",
        "mpdd": "MPDD",
        "dtd": "DTD-Synthetic",
    }
)
"""Display names of :data:`PAPER_DATASETS`."""

PAPER_TABLES: Mapping[str, int] = MappingProxyType(
    {"mvtec": 6, "visa": 7, "btad": 8, "mpdd": 9, "dtd": 10}
)
"""The number of each data set's full-metric table in the paper."""

PAPER_SHOTS: tuple[int, ...] = (1, 2, 4)
"""The shot counts the paper reports."""

TABLE1_METRICS: tuple[str, str, str] = ("I-AUROC", "P-AP", "PRO")
"""The three metrics of Table 1 (the paper's I-AUC / P-AP / PRO)."""


class PaperValue(NamedTuple):
    """One reported number: mean and standard deviation over three runs, in percent."""

    mean: float
    std: float


# Tables 6–10, Res²CLIP rows, copied from the paper. Columns: data set, shots,
# model (* training-free, † fine-tuned), then I-AUC I-AP I-F1 P-AUC P-AP P-F1 PRO.
_TABLES_6_TO_10 = """
mvtec 1 * 96.1±0.3 98.4±0.1 95.6±0.1 96.2±0.2 50.8±0.8 54.6±0.6 91.1±0.2
mvtec 1 † 96.0±0.3 98.3±0.1 95.6±0.2 96.6±0.2 57.9±0.5 57.8±0.4 91.7±0.3
mvtec 2 * 96.3±0.1 98.3±0.1 95.9±0.2 96.7±0.0 53.3±0.7 56.6±0.7 92.0±0.1
mvtec 2 † 96.9±0.4 98.5±0.2 96.1±0.6 97.1±0.1 60.6±0.7 60.3±0.9 92.7±0.1
mvtec 4 * 97.5±0.2 98.9±0.1 96.8±0.3 97.1±0.0 55.3±0.3 58.5±0.4 92.8±0.1
mvtec 4 † 97.9±0.2 99.0±0.1 96.8±0.1 97.4±0.1 62.5±0.4 62.2±0.4 93.5±0.1
visa  1 * 88.2±0.3 89.4±0.1 85.4±0.2 96.6±0.1 28.2±0.2 37.3±0.1 89.6±0.2
visa  1 † 89.5±0.5 90.7±0.1 86.1±0.3 97.6±0.0 39.2±0.3 45.3±0.2 92.0±0.1
visa  2 * 89.3±0.1 90.6±0.3 85.8±0.1 96.9±0.1 30.3±1.0 39.3±0.7 90.3±0.4
visa  2 † 90.4±0.4 91.4±0.1 86.7±0.4 97.8±0.0 40.6±0.7 46.7±0.6 92.7±0.5
visa  4 * 90.1±0.4 90.9±0.6 86.8±0.5 97.3±0.0 31.4±0.3 40.5±0.1 90.8±0.1
visa  4 † 91.1±0.4 91.6±0.4 87.5±0.2 98.0±0.0 41.0±0.4 47.3±0.4 93.3±0.1
btad  1 * 95.5±0.7 94.8±2.1 89.7±1.9 97.6±0.3 63.0±1.4 61.3±1.3 82.8±0.7
btad  1 † 95.9±0.2 96.8±1.3 92.3±1.6 98.1±0.2 64.2±2.0 61.7±1.4 83.0±0.7
btad  2 * 95.7±0.2 95.8±0.6 90.0±0.9 97.7±0.1 64.5±0.3 62.3±0.2 83.1±0.3
btad  2 † 96.2±0.3 97.8±0.6 93.8±1.0 98.2±0.1 65.7±1.2 62.6±0.8 83.5±0.5
btad  4 * 96.4±0.5 96.4±0.6 92.1±1.0 97.8±0.1 65.6±0.3 63.0±0.2 83.2±0.1
btad  4 † 96.8±0.5 98.3±0.3 95.5±0.4 98.2±0.0 67.1±0.5 63.4±0.4 83.5±0.2
mpdd  1 * 86.6±1.0 89.4±1.1 86.1±1.2 97.6±0.1 36.9±0.9 41.6±0.9 94.0±0.3
mpdd  1 † 83.6±0.4 84.2±1.0 83.9±1.2 98.0±0.0 37.3±0.4 41.7±0.6 94.2±0.3
mpdd  2 * 87.6±0.7 89.9±0.5 87.9±1.1 97.7±0.2 38.3±0.2 42.8±0.1 94.5±0.2
mpdd  2 † 85.8±0.2 87.5±1.1 87.3±0.5 98.1±0.1 39.0±0.9 42.7±0.8 94.7±0.2
mpdd  4 * 89.0±0.6 91.5±0.4 88.6±0.9 97.9±0.1 40.0±1.0 44.2±0.9 95.0±0.2
mpdd  4 † 87.3±0.9 89.4±1.0 88.0±0.5 98.3±0.1 42.6±1.3 46.7±1.3 95.4±0.2
dtd   1 * 95.5±0.3 98.1±0.3 94.3±0.4 95.3±0.3 69.5±1.0 68.7±0.6 90.3±0.3
dtd   1 † 97.2±0.1 99.0±0.1 96.1±0.3 97.4±0.2 77.5±0.4 74.1±0.1 94.6±0.9
dtd   2 * 95.9±0.3 98.4±0.2 94.9±0.2 95.9±0.0 71.2±0.2 69.9±0.1 90.8±0.4
dtd   2 † 97.4±0.1 99.0±0.1 96.5±0.2 97.7±0.1 78.4±0.2 74.8±0.2 94.7±0.1
dtd   4 * 96.9±0.1 98.8±0.1 96.0±0.3 96.6±0.1 73.2±0.1 71.2±0.1 92.2±0.2
dtd   4 † 97.7±0.1 99.1±0.1 96.8±0.2 98.0±0.1 79.2±0.2 75.1±0.2 95.0±0.1
"""

# Table 1, Res²CLIP columns: data set, shots, then I-AUC/P-AP/PRO for * and †.
_TABLE_1 = """
mvtec   1 96.1/50.8/91.1 96.0/57.9/91.7
visa    1 88.2/28.2/89.6 89.5/39.2/92.0
btad    1 95.5/63.0/82.8 95.9/64.2/83.0
mpdd    1 86.6/36.9/94.0 83.6/37.3/94.2
dtd     1 95.5/69.5/90.3 97.2/77.5/94.6
average 1 92.4/49.7/89.6 92.4/55.2/91.1
mvtec   2 96.3/53.3/92.0 96.9/60.6/92.7
visa    2 89.3/30.3/90.3 90.4/40.6/92.7
btad    2 95.7/64.5/83.1 96.2/65.7/83.5
mpdd    2 87.6/38.3/94.5 85.8/39.0/94.7
dtd     2 95.9/71.2/90.8 97.4/78.4/94.7
average 2 93.0/51.5/90.1 93.3/56.9/91.7
mvtec   4 97.5/55.3/92.8 97.9/62.5/93.5
visa    4 90.1/31.4/90.8 91.1/41.0/93.3
btad    4 96.4/65.6/83.2 96.8/67.1/83.5
mpdd    4 89.0/40.0/95.0 87.3/42.6/95.4
dtd     4 96.9/73.2/92.2 97.7/78.9/95.0
average 4 94.0/53.1/90.8 94.2/58.5/92.1
"""

_MODEL_MARKS = {"*": "training_free", "†": "fine_tuned"}


def _parse_tables_6_to_10(text: str) -> dict[tuple[str, int, str], Mapping[str, PaperValue]]:
    out: dict[tuple[str, int, str], Mapping[str, PaperValue]] = {}
    for line in text.strip().splitlines():
        dataset, shots, mark, *cells = line.split()
        values = []
        for cell in cells:
            mean, std = cell.split("±")
            values.append(PaperValue(float(mean), float(std)))
        key = (dataset, int(shots), _MODEL_MARKS[mark])
        out[key] = MappingProxyType(dict(zip(METRIC_NAMES, values, strict=True)))
    return out


def _parse_table_1(text: str) -> dict[tuple[str, int, str], Mapping[str, float]]:
    out: dict[tuple[str, int, str], Mapping[str, float]] = {}
    for line in text.strip().splitlines():
        dataset, shots, *per_mode = line.split()
        for mode, cell in zip(MODES, per_mode, strict=True):
            values = (float(v) for v in cell.split("/"))
            out[(dataset, int(shots), mode)] = MappingProxyType(
                dict(zip(TABLE1_METRICS, values, strict=True))
            )
    return out


PAPER_RESULTS: Mapping[tuple[str, int, str], Mapping[str, PaperValue]] = MappingProxyType(
    _parse_tables_6_to_10(_TABLES_6_TO_10)
)
"""Tables 6–10: ``(dataset, shots, mode)`` → metric name → :class:`PaperValue` (percent)."""

PAPER_TABLE1: Mapping[tuple[str, int, str], Mapping[str, float]] = MappingProxyType(
    _parse_table_1(_TABLE_1)
)
"""Table 1: ``(dataset or "average", shots, mode)`` → metric → mean (percent), as printed."""

PAPER_DISCREPANCIES: tuple[str, ...] = (
    "DTD-Synthetic, 4-shot, Res²CLIP† P-AP: Table 1 prints 78.9, Table 10 prints 79.2; "
    "Table 1's Average (58.5) fits 79.2 (mean 58.48; 78.9 gives 58.42), so 79.2 is taken "
    "as right. PAPER_RESULTS holds 79.2, PAPER_TABLE1 holds 78.9 as printed.",
)
"""Known inconsistencies between the paper's tables (text, one entry each)."""


# ---------------------------------------------------------------------------- AF-CLIP

AFCLIP_METRICS: tuple[str, ...] = ("I-AUROC", "I-AP", "P-AUROC", "PRO")
"""The four metrics AF-CLIP reports (image AUROC, AP; pixel AUROC, PRO at FPR 0.3)."""

AFCLIP_SHOTS: tuple[int, ...] = (0, 1, 2, 4)
"""0 = AF-CLIP (zero-shot, Table 1); 1, 2, 4 = AF-CLIP+ (Table 2)."""

AFCLIP_DATASET_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "mvtec": "MVTec AD",
        "visa": "VisA",
        "btad": "BTAD",
        "dagm": "DAGM",
        "dtd": "DTD-Synthetic",
        "brainmri": "BrainMRI",
        "br35h": "Br35H",
        "isic": "ISIC",
        "clinicdb": "ClinicDB",
        "colondb": "ColonDB",
        "kvasir": "Kvasir",
    }
)
"""Display names of :data:`AFCLIP_DATASETS`."""

AFCLIP_DATASETS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "industrial": ("mvtec", "visa", "btad", "dagm", "dtd"),
        "medical": ("brainmri", "br35h", "isic", "clinicdb", "colondb", "kvasir"),
    }
)
"""AF-CLIP Table 1's rows: domain → data-set keys, in the paper's order. BrainMRI and Br35H
are classification-only (image metrics), ISIC, ClinicDB, ColonDB and Kvasir
segmentation-only (pixel metrics)."""

# AF-CLIP Table 1 (zero-shot), AF-CLIP column: data set, I-AUROC I-AP P-AUROC PRO ("-": not
# reported for that set). The MVTec row is the model trained on VisA; every other row the
# model trained on MVTec AD (AF-CLIP Sec. 4.1).
_AFCLIP_TABLE_1 = """
mvtec    92.9 96.8 92.3 85.7
visa     88.5 90.0 96.2 88.7
btad     94.3 95.2 94.4 78.3
dagm     98.7 94.6 97.1 93.1
dtd      97.9 99.1 98.6 93.8
brainmri 95.2 96.3 -    -
br35h    96.7 96.4 -    -
isic     -    -    94.8 89.6
clinicdb -    -    87.1 70.0
colondb  -    -    83.2 67.9
kvasir   -    -    84.5 57.5
"""

# AF-CLIP Table 2 (AF-CLIP+, mean±std over 5 runs): data set, shots, the four metrics.
_AFCLIP_TABLE_2 = """
mvtec 1 95.5±1.3 98.0±0.5 96.8±0.4 92.6±0.8
mvtec 2 96.5±1.3 98.4±0.5 97.1±0.3 93.1±0.7
mvtec 4 97.2±0.9 98.6±0.5 97.6±0.2 93.8±0.6
visa  1 90.5±2.1 91.2±1.8 98.2±0.1 92.5±0.7
visa  2 91.2±1.4 91.9±1.4 98.4±0.1 92.9±0.4
visa  4 92.2±1.3 92.5±1.2 98.5±0.1 93.4±0.5
"""

# The official code's result logs (weight/train_on_{visa,mvtec}_test_res.txt), zero-shot.
_AFCLIP_LOGS = """
mvtec    92.92 96.75 92.34 85.65
visa     88.48 89.90 96.25 88.72
btad     94.33 95.26 94.41 78.38
dagm     98.66 94.61 97.13 93.10
dtd      97.94 99.15 98.57 93.82
brainmri 95.22 96.35 -     -
br35h    96.68 96.48 -     -
isic     -     -     94.85 89.63
clinicdb -     -     87.06 69.99
colondb  -     -     83.16 67.90
kvasir   -     -     84.48 57.53
"""


def _parse_afclip(text: str, *, with_shots: bool) -> dict[tuple[str, int], Mapping[str, Any]]:
    out: dict[tuple[str, int], Mapping[str, Any]] = {}
    for line in text.strip().splitlines():
        dataset, *cells = line.split()
        shots = int(cells.pop(0)) if with_shots else 0
        row: dict[str, Any] = {}
        for metric, cell in zip(AFCLIP_METRICS, cells, strict=True):
            if cell == "-":
                continue
            mean, _, std = cell.partition("±")
            row[metric] = PaperValue(float(mean), float(std or 0.0))
        out[(dataset, shots)] = MappingProxyType(row)
    return out


AFCLIP_RESULTS: Mapping[tuple[str, int], Mapping[str, PaperValue]] = MappingProxyType(
    {
        **_parse_afclip(_AFCLIP_TABLE_1, with_shots=False),
        **_parse_afclip(_AFCLIP_TABLE_2, with_shots=True),
    }
)
"""AF-CLIP Tables 1–2: ``(dataset, shots)`` → metric → :class:`PaperValue` (percent).

``shots = 0`` rows are Table 1 (one run: std 0.0); ``1, 2, 4`` Table 2 (MVTec AD and VisA
only). A metric the paper does not report for a data set is absent (medical sets).
Table 2's 0-shot rows repeat Table 1's. Table 4 prints VisA image AP 89.9 for the same
model (Table 1: 90.0; the released log: 89.90)."""

AFCLIP_RELEASED_LOGS: Mapping[str, Mapping[str, float]] = MappingProxyType(
    {
        d: MappingProxyType({m: v.mean for m, v in row.items()})
        for (d, _), row in _parse_afclip(_AFCLIP_LOGS, with_shots=False).items()
    }
)
"""Zero-shot numbers of the official code's released logs (two decimals): dataset → metric."""


# WinCLIP+ (Res²CLIP's baseline) and FineGrainedAD live in their own modules; they need the
# names above.
from resad_kit.engine.paper_results_finegrainedad import FINEGRAINEDAD_RESULTS  # noqa: E402
from resad_kit.engine.paper_results_winclip import (  # noqa: E402
    WINCLIP_RESULTS,
    WINCLIP_TABLE1,
)


def paper_average(method: str, shots: int, mode: str) -> Mapping[str, float] | None:
    """The paper's Table 1 Average row (I-AUROC / P-AP / PRO over the five data sets) of
    ``method``, or ``None``: Res²CLIP (:data:`PAPER_TABLE1`) and WinCLIP+
    (:data:`WINCLIP_TABLE1`, training-free) have one.

    Example:
        >>> from resad_kit.engine.paper_results import paper_average
        >>> dict(paper_average("winclip", 1, "training_free"))
        {'I-AUROC': 85.6, 'P-AP': 35.1, 'PRO': 81.9}
    """
    if method == "res2clip":
        return PAPER_TABLE1.get(("average", shots, mode))
    if method == "winclip" and mode == "training_free":
        return WINCLIP_TABLE1.get(("average", shots))
    return None


def paper_values(
    method: str, dataset: str, shots: int, mode: str
) -> Mapping[str, PaperValue] | None:
    """The paper's numbers for one result group, or ``None`` if its paper has none.

    ``"res2clip"``: :data:`PAPER_RESULTS` (all seven metrics); ``"afclip"``:
    :data:`AFCLIP_RESULTS` (the metrics AF-CLIP reports; its models are fine-tuned, so
    ``mode`` must be ``"fine_tuned"``); ``"winclip"``: :data:`WINCLIP_RESULTS` (WinCLIP+,
    training-free, Res²CLIP's Tables 6–10); ``"finegrainedad"``:
    :data:`FINEGRAINEDAD_RESULTS` (image / pixel AUROC of its Table 1,
    ``mode="fine_tuned"``). Whether the group is comparable (the complete category list) is
    the caller's check.

    Example:
        >>> from resad_kit.engine.paper_results import paper_values
        >>> paper_values("afclip", "visa", 1, "fine_tuned")["I-AUROC"]
        PaperValue(mean=90.5, std=2.1)
        >>> sorted(paper_values("afclip", "isic", 0, "fine_tuned"))
        ['P-AUROC', 'PRO']
        >>> paper_values("afclip", "mvtec", 8, "fine_tuned") is None
        True
        >>> paper_values("winclip", "btad", 1, "training_free")["PRO"]
        PaperValue(mean=66.7, std=1.4)
        >>> paper_values("finegrainedad", "mvtec", 1, "fine_tuned")["P-AUROC"]
        PaperValue(mean=95.49, std=0.0)
    """
    if method == "res2clip":
        return PAPER_RESULTS.get((dataset, shots, mode))
    if method == "afclip" and mode == "fine_tuned":
        return AFCLIP_RESULTS.get((dataset, shots))
    if method == "winclip" and mode == "training_free":
        return WINCLIP_RESULTS.get((dataset, shots))
    if method == "finegrainedad" and mode == "fine_tuned":
        return FINEGRAINEDAD_RESULTS.get((dataset, shots))
    return None
