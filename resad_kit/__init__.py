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

Every subpackage loads on first use (``resad_kit.ops``, ``from resad_kit import nn``):
``data`` and ``metrics`` pull in PIL, scikit-image and SciPy, ``ops`` and ``nn`` pull in
torch, so ``import resad_kit`` itself imports nothing heavy and the ``resad-kit`` command's
``--help`` answers without loading torch (``resad_kit.cli``).
"""

import importlib
from types import ModuleType
from typing import Any

__all__ = ["__version__", "checks", "data", "metrics", "nn", "ops"]
_LAZY = frozenset({"data", "metrics", "nn", "ops"})


def __getattr__(name: str) -> ModuleType | Any:
    if name in _LAZY:
        return importlib.import_module(f"resad_kit.{name}")
    if name == "checks":  # the switch of resad_kit.ops._validation
        return importlib.import_module("resad_kit.ops._validation").checks
    raise AttributeError(f"module 'resad_kit' has no attribute {name!r}")


__version__ = "0.1.0"
