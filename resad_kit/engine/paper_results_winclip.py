"""WinCLIP+ as Res²CLIP's paper reports it (the baseline column of Tables 1 and 6–10).

Part of :mod:`resad_kit.engine.paper_results`, which re-exports both names.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from resad_kit.engine.paper_results import (
    TABLE1_METRICS,
    PaperValue,
    _parse_tables_6_to_10,
)

__all__ = ["WINCLIP_RESULTS", "WINCLIP_TABLE1"]

# Res²CLIP Tables 6–10, WinCLIP+ [15] rows (training-free baseline, mean±std over three
# runs): data set, shots, I-AUC I-AP I-F1 P-AUC P-AP P-F1 PRO.
_WINCLIP_TABLES_6_TO_10 = """
mvtec 1 * 93.1±0.4 96.6±0.1 93.7±0.2 93.6±0.1 38.5±0.4 42.7±0.4 84.1±0.3
mvtec 2 * 94.7±0.2 97.3±0.0 94.6±0.2 93.9±0.1 40.0±0.7 43.9±0.4 84.6±0.3
mvtec 4 * 95.1±0.2 97.5±0.1 95.1±0.2 94.3±0.1 42.0±0.2 45.7±0.2 85.5±0.5
visa  1 * 82.9±0.1 84.5±0.5 82.1±0.2 94.8±0.1 15.5±0.2 22.6±0.1 80.2±0.7
visa  2 * 83.5±0.4 84.9±0.6 82.5±0.3 95.0±0.1 16.5±0.6 23.9±0.7 80.8±0.3
visa  4 * 84.4±1.0 85.6±1.6 82.9±0.9 95.2±0.1 17.9±1.2 25.4±1.1 81.3±0.2
btad  1 * 85.0±3.7 80.6±4.4 78.2±3.9 95.6±0.4 42.0±1.5 47.4±1.6 66.7±1.4
btad  2 * 85.7±0.5 85.3±1.4 80.4±1.9 95.8±0.1 43.3±1.5 49.1±1.1 66.7±0.6
btad  4 * 86.4±1.5 85.4±3.9 83.6±1.0 95.9±0.0 45.0±0.4 50.5±0.2 67.0±0.4
mpdd  1 * 69.1±0.8 73.7±1.0 81.1±0.4 96.2±0.3 30.7±0.6 32.6±0.9 88.4±1.2
mpdd  2 * 70.1±0.7 74.0±0.9 81.9±0.6 95.1±1.0 31.9±0.6 33.7±0.6 89.5±0.3
mpdd  4 * 71.8±1.3 75.9±0.9 82.5±0.2 94.3±0.2 32.2±0.3 33.8±0.3 88.5±0.6
dtd   1 * 98.1±0.2 99.1±0.1 96.9±0.1 96.8±0.1 48.8±0.4 52.0±0.4 90.3±0.1
dtd   2 * 98.2±0.1 99.2±0.1 97.2±0.2 96.8±0.1 49.3±0.3 52.3±0.3 90.4±0.3
dtd   4 * 98.3±0.1 99.2±0.1 97.1±0.1 97.0±0.1 50.0±0.2 52.7±0.2 90.7±0.1
"""

# Res²CLIP Table 1, WinCLIP+ column, Average rows (I-AUC / P-AP / PRO).
_WINCLIP_AVERAGE = {1: (85.6, 35.1, 81.9), 2: (86.4, 36.2, 82.4), 4: (87.2, 37.4, 82.6)}

WINCLIP_RESULTS: Mapping[tuple[str, int], Mapping[str, PaperValue]] = MappingProxyType(
    {(d, k): row for (d, k, _), row in _parse_tables_6_to_10(_WINCLIP_TABLES_6_TO_10).items()}
)
"""WinCLIP+ in Res²CLIP's Tables 6–10: ``(dataset, shots)`` → metric → :class:`PaperValue`
(1/2/4 shots; zero-shot WinCLIP is not in the Res²CLIP paper)."""

WINCLIP_TABLE1: Mapping[tuple[str, int], Mapping[str, float]] = MappingProxyType(
    {
        **{
            (d, k): MappingProxyType({m: row[m].mean for m in TABLE1_METRICS})
            for (d, k), row in WINCLIP_RESULTS.items()
        },
        **{
            ("average", k): MappingProxyType(dict(zip(TABLE1_METRICS, v, strict=True)))
            for k, v in _WINCLIP_AVERAGE.items()
        },
    }
)
"""WinCLIP+ in Res²CLIP's Table 1: ``(dataset or "average", shots)`` → I-AUROC/P-AP/PRO."""
