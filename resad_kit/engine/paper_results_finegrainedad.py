"""FineGrainedAD's reported numbers (Fan et al., "Towards Fine-Grained Vision-Language
Alignment for Few-Shot Anomaly Detection", Table 1).

Table 1 reports image AUROC / pixel AUROC (percent) on MVTec AD and VisA at 1, 2 and 4
shots, without a standard deviation (stored as ``std = 0``, like AF-CLIP's single-run
Table 1). The models are trained per category on the shots (``mode="fine_tuned"``).
Table 6 (Real-IAD, C1 view) is not stored: the library has no Real-IAD loader. Part of
:mod:`resad_kit.engine.paper_results`, which re-exports :data:`FINEGRAINEDAD_RESULTS`.

Example:
    >>> from resad_kit.engine.paper_results import FINEGRAINEDAD_RESULTS
    >>> dict(FINEGRAINEDAD_RESULTS[("visa", 4)])
    {'I-AUROC': PaperValue(mean=86.95, std=0.0), 'P-AUROC': PaperValue(mean=97.54, std=0.0)}
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from resad_kit.engine.paper_results import PaperValue

__all__ = ["FINEGRAINEDAD_METRICS", "FINEGRAINEDAD_RESULTS"]

FINEGRAINEDAD_METRICS: tuple[str, str] = ("I-AUROC", "P-AUROC")
"""The two metrics of FineGrainedAD's Table 1 (image / pixel AUROC)."""

# Table 1, row "FineGrainedAD": data set, shots, image AUROC, pixel AUROC.
_TABLE1 = """
mvtec 1 91.04 95.49
mvtec 2 93.66 96.08
mvtec 4 94.51 96.71
visa  1 84.16 96.42
visa  2 86.16 96.97
visa  4 86.95 97.54
"""


def _parse(text: str) -> dict[tuple[str, int], Mapping[str, PaperValue]]:
    rows = {}
    for line in text.strip().splitlines():
        dataset, shots, *values = line.split()
        rows[(dataset, int(shots))] = MappingProxyType(
            {
                m: PaperValue(float(v), 0.0)
                for m, v in zip(FINEGRAINEDAD_METRICS, values, strict=True)
            }
        )
    return rows


FINEGRAINEDAD_RESULTS: Mapping[tuple[str, int], Mapping[str, PaperValue]] = MappingProxyType(
    _parse(_TABLE1)
)
"""FineGrainedAD's Table 1: ``(dataset, shots)`` → ``{"I-AUROC", "P-AUROC"}`` →
:class:`~resad_kit.engine.paper_results.PaperValue` (std 0: the paper reports none)."""
