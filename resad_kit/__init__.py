"""resad_kit: residual anomaly primitives for CLIP-based few-shot anomaly detection.

- :mod:`resad_kit.ops`: pure tensor functions (sparsemax, retrieval, residuals, scores,
  maps, and the training losses in :mod:`resad_kit.ops.losses`);
- :mod:`resad_kit.nn`: the residual adapters (thin modules holding parameters);
- :mod:`resad_kit.data`: data set readers, few-shot references, a synthetic data set;
- :mod:`resad_kit.metrics`: exact image and pixel metrics and ``evaluate``;
- :mod:`resad_kit.clip`: the frozen CLIP backbone and prompt ensembles (import it
  explicitly, ``from resad_kit.clip import ClipBackbone``; it loads open_clip).

:func:`checks` switches the input checks of the primitives off for hot paths
(``with resad_kit.checks(False): ...``; environment variable ``RESAD_KIT_CHECKS=0``).

``ops`` and ``nn`` load with the package; ``data`` and ``metrics`` load on first use
(they pull in PIL, scikit-image and SciPy), so ``import resad_kit`` stays as cheap as torch.
"""

import importlib
from types import ModuleType

from resad_kit import nn, ops
from resad_kit.ops._validation import checks

__all__ = ["__version__", "checks", "data", "metrics", "nn", "ops"]
_LAZY = frozenset({"data", "metrics"})


def __getattr__(name: str) -> ModuleType:
    if name in _LAZY:
        return importlib.import_module(f"resad_kit.{name}")
    raise AttributeError(f"module 'resad_kit' has no attribute {name!r}")


__version__ = "0.1.0"
