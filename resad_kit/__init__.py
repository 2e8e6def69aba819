"""resad_kit: residual anomaly primitives for CLIP-based few-shot anomaly detection.

- :mod:`resad_kit.ops`: pure tensor functions (sparsemax, retrieval, residuals, scores,
  maps, and the training losses in :mod:`resad_kit.ops.losses`);
- :mod:`resad_kit.nn`: the residual adapters (thin modules holding parameters);
- :mod:`resad_kit.data`: data set readers, few-shot references, a synthetic data set;
- :mod:`resad_kit.metrics`: exact image and pixel metrics and ``evaluate``;
- :mod:`resad_kit.clip`: the frozen CLIP backbone and prompt ensembles (import it
  explicitly, ``from resad_kit.clip import ClipBackbone``; it loads open_clip).
"""

from resad_kit import data, metrics, nn, ops

__all__ = ["__version__", "data", "metrics", "nn", "ops"]

__version__ = "0.1.0"
