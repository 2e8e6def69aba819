"""Training and evaluation of any method: feature cache, training loop, protocol, results.

The engine runs every :class:`~resad_kit.methods.Method` (Res²CLIP, the nearest-neighbour
bank, …) through the same code: optimisers from ``model.optimizer_groups()``, phases from
``model.phases``, losses from ``model.losses``, checkpoints of ``model.trainable_module()``
recorded with ``model.name`` and ``model.config_dict()``.

The library (``ops``, ``nn``, ``clip``, ``data``, ``metrics``, ``methods``) never imports this
package; ``examples/res2clip_full.py`` drives it. See docs/engine.md.

- :class:`FeatureCache` (``features.py``): each image encoded once per run, optionally on
  disk (float16 safetensors);
- :func:`train` (``training.py``), :class:`TrainConfig` (``train_config.py``), the
  optimisers (``optimization.py``), :func:`save_checkpoint`, :func:`load_checkpoint`
  (``checkpoint.py``), phases and warm-up + cosine schedules (``schedule.py``);
- :func:`run_evaluation`, :class:`DatasetSpec` (``protocol.py``): data sets × categories ×
  shots × seeds × modes;
- :func:`evaluate_finegrainedad`, :class:`FewShotFineGrainedAD`, :func:`train_on_shots`
  (``finegrainedad_protocol.py``): FineGrainedAD's protocol, one model per category trained
  on every draw of shots;
- :class:`CategoryResult`, :func:`write_results`, :func:`summary_table` (``results.py``),
  :data:`PAPER_RESULTS` (``paper_results.py``), :func:`save_heatmaps` (``heatmaps.py``);
- :func:`init_distributed`, :class:`DistContext` (``dist_context.py``) and the collectives
  (``distributed.py``) for ``torchrun``.
"""

from resad_kit.engine.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from resad_kit.engine.distributed import DistContext, init_distributed
from resad_kit.engine.features import FeatureCache
from resad_kit.engine.finegrainedad_protocol import (
    FewShotFineGrainedAD,
    evaluate_finegrainedad,
    train_on_shots,
)
from resad_kit.engine.heatmaps import overlay, save_heatmaps
from resad_kit.engine.paper_results import PAPER_RESULTS, PAPER_TABLE1
from resad_kit.engine.protocol import DatasetSpec, evaluate_category, run_evaluation
from resad_kit.engine.results import (
    CategoryResult,
    aggregate,
    load_results,
    summary_table,
    write_results,
)
from resad_kit.engine.training import AUXILIARY_DATASET, TrainConfig, TrainResult, train

__all__ = [
    "AUXILIARY_DATASET",
    "PAPER_RESULTS",
    "PAPER_TABLE1",
    "CategoryResult",
    "Checkpoint",
    "DatasetSpec",
    "DistContext",
    "FeatureCache",
    "FewShotFineGrainedAD",
    "TrainConfig",
    "TrainResult",
    "aggregate",
    "evaluate_category",
    "evaluate_finegrainedad",
    "init_distributed",
    "load_checkpoint",
    "load_results",
    "overlay",
    "run_evaluation",
    "save_checkpoint",
    "save_heatmaps",
    "summary_table",
    "train",
    "train_on_shots",
    "write_results",
]
