"""resad_kit: residual anomaly primitives for CLIP-based few-shot anomaly detection.

- :mod:`resad_kit.ops`: pure tensor functions (sparsemax, retrieval, residuals, scores,
  maps, and the training losses in :mod:`resad_kit.ops.losses`);
- :mod:`resad_kit.nn`: the residual adapters (thin modules holding parameters).
"""

from resad_kit import nn, ops

__all__ = ["__version__", "nn", "ops"]

__version__ = "0.1.0"
