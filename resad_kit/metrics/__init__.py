"""Anomaly-detection metrics: exact image/pixel AUROC, AP, F1max, AUPRO, and ``evaluate``.

- :mod:`~resad_kit.metrics.ranking`: ``image_auroc``, ``image_ap``, ``image_f1max``,
  ``pixel_auroc``, ``pixel_ap``, ``pixel_f1max`` (exact; equal to scikit-learn);
- :mod:`~resad_kit.metrics.pro`: ``aupro`` (the MVTec AD definition, limit 0.3);
- :mod:`~resad_kit.metrics.binned`: the official code's 200-bin approximations
  ``binned_pixel_auroc``, ``binned_pixel_ap``, ``binned_aupro``;
- :mod:`~resad_kit.metrics.evaluation`: ``evaluate``, ``MetricAccumulator`` (bounded
  memory, one shared sort), ``MetricConfig`` (``exact()`` / ``official_code()``),
  ``METRIC_NAMES``.

Everything depends on torch, NumPy and SciPy (connected components) only.
"""

from resad_kit.metrics.binned import binned_aupro, binned_pixel_ap, binned_pixel_auroc
from resad_kit.metrics.evaluation import (
    METRIC_NAMES,
    MetricAccumulator,
    MetricConfig,
    evaluate,
)
from resad_kit.metrics.pro import aupro
from resad_kit.metrics.ranking import (
    image_ap,
    image_auroc,
    image_f1max,
    pixel_ap,
    pixel_auroc,
    pixel_f1max,
)

__all__ = [
    "METRIC_NAMES",
    "MetricAccumulator",
    "MetricConfig",
    "aupro",
    "binned_aupro",
    "binned_pixel_ap",
    "binned_pixel_auroc",
    "evaluate",
    "image_ap",
    "image_auroc",
    "image_f1max",
    "pixel_ap",
    "pixel_auroc",
    "pixel_f1max",
]
