"""Composers that assemble the primitives into methods: Res²CLIP and a nearest-neighbour bank.

- :class:`Res2CLIP`: the paper's three-branch method (text, visual, residual-to-residual),
  training-free (Res²CLIP*) or fine-tuned (Res²CLIP†), with :meth:`Res2CLIP.fit_references`,
  ``forward`` → :class:`Prediction` and :meth:`Res2CLIP.losses`;
- :class:`Res2CLIPConfig`: its settings, with the presets ``paper()`` and ``official_code()``;
- :class:`NearestNeighbor`, :class:`NearestNeighborConfig`: a PatchCore-style memory bank
  over the same taps (training-free, or with a learnt projection), a second, small method;
- :class:`AFCLIP`, :class:`AFCLIPConfig`: AF-CLIP (zero-shot) and AF-CLIP+ (few-shot, with
  an injectable memory scorer returning :class:`MemoryScore`), its trainable part
  :class:`AFCLIPModules` (adapter + prompts);
- :class:`WinCLIP`, :class:`WinCLIPConfig`: WinCLIP (zero-shot) and WinCLIP+ (few-shot),
  the shared baseline, as anomalib's ``WinClipModel`` (presets ``anomalib()``, ``paper()``);
- :class:`FineGrainedAD`, :class:`FineGrainedADConfig`: FineGrainedAD's composer (few-shot,
  caption-guided prompts, region aggregation, Query Former); not yet run by the engine;
- :class:`Method`: the interface the engine runs (``resad_kit.methods.base``).

Composers hold no training loop, no IO and no printing (those live in ``resad_kit.engine``).
"""

from resad_kit.methods.afclip import AFCLIP, AFCLIPModules, MemoryScore
from resad_kit.methods.afclip_config import AFCLIPConfig
from resad_kit.methods.base import (
    BranchOutput,
    Method,
    OptimizerGroup,
    Prediction,
    TrainingBatch,
)
from resad_kit.methods.config import Mode, Res2CLIPConfig
from resad_kit.methods.finegrainedad import FineGrainedAD
from resad_kit.methods.finegrainedad_config import FineGrainedADConfig
from resad_kit.methods.nearest_neighbor import NearestNeighbor, NearestNeighborConfig
from resad_kit.methods.res2clip import Res2CLIP
from resad_kit.methods.winclip import WinCLIP
from resad_kit.methods.winclip_config import WinCLIPConfig

__all__ = [
    "AFCLIP",
    "AFCLIPConfig",
    "AFCLIPModules",
    "BranchOutput",
    "FineGrainedAD",
    "FineGrainedADConfig",
    "MemoryScore",
    "Method",
    "Mode",
    "NearestNeighbor",
    "NearestNeighborConfig",
    "OptimizerGroup",
    "Prediction",
    "Res2CLIP",
    "Res2CLIPConfig",
    "TrainingBatch",
    "WinCLIP",
    "WinCLIPConfig",
]
