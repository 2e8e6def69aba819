"""``resad-kit reproduce --method finegrainedad``: one model per category, trained on its shots.

FineGrainedAD (Fan et al., "Towards Fine-Grained Vision-Language Alignment for Few-Shot
Anomaly Detection", §4.1; released code RetoFan233/FineGrainedAD,
``train_seg_finegrained_patch.py``) has no auxiliary data set: every category gets its own
model (its MFSC captions), trained on the ``K`` normal shots of every ``(shots, seed)``
draw and evaluated on the category's test split. The run therefore calls
:func:`~resad_kit.engine.finegrainedad_protocol.evaluate_finegrainedad` instead of
:func:`~resad_kit.engine.train` + :func:`~resad_kit.engine.run_evaluation`; the files it
writes are those of every method (:mod:`resad_kit.cli.reproduce`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from resad_kit.cli._common import UsageError
from resad_kit.cli.registry import finegrainedad_config
from resad_kit.clip.image_backbone import ImageBackbone
from resad_kit.clip.mfsc import CategoryCaptions, load_captions
from resad_kit.engine.distributed import DistContext
from resad_kit.engine.features import FeatureCache
from resad_kit.engine.finegrainedad_protocol import evaluate_finegrainedad
from resad_kit.engine.protocol import DatasetSpec
from resad_kit.engine.results import CategoryResult
from resad_kit.engine.train_config import TrainConfig
from resad_kit.metrics import MetricConfig

__all__ = ["caption_loader", "check_captions", "evaluate_per_category"]

logger = logging.getLogger("resad_kit.reproduce")


def caption_loader(path: Path | None) -> Callable[[str], CategoryCaptions]:
    """``category → CategoryCaptions``: the shipped MFSC table, or with ``--captions`` a
    user file whose categories add to or replace the shipped ones."""
    return load_captions if path is None else lambda category: load_captions(category, path=path)


def check_captions(args: argparse.Namespace, specs: Sequence[DatasetSpec]) -> None:
    """Every category of ``specs`` has captions (before any backbone or training).

    Raises:
        UsageError: the first category without captions (the loader's message, which lists
            the known categories, plus the flag that supplies a file), or an invalid file.
    """
    captions = caption_loader(args.captions)
    for spec in specs:
        for category in spec.categories:
            try:
                captions(category)
            except ValueError as error:
                raise UsageError(
                    f"{spec.name}/{category}: {error} (on the command line: --captions FILE)"
                ) from None


def evaluate_per_category(
    args: argparse.Namespace,
    dist: DistContext,
    backbone: ImageBackbone,
    specs: Sequence[DatasetSpec],
    train_config: TrainConfig,
    metrics: MetricConfig,
    write_config: Callable[[Path, dict], None],
) -> tuple[dict[str, Any], list[CategoryResult]]:
    """The run's config and results: :func:`evaluate_finegrainedad` over ``specs``.

    Args:
        args: the checked flags (``--profile``, ``--backbone``, ``--shots``, ``--seeds``,
            ``--eval-size``, ``--captions``, ``--select-epoch-on-test``, heat maps, cache,
            batch size, progress).
        dist: the distributed context (the main rank writes ``config.json`` first).
        backbone: the :class:`~resad_kit.clip.image_backbone.ImageBackbone` of the run.
        specs: the target data sets.
        train_config: :meth:`TrainConfig.finegrainedad` with the flags' overrides.
        metrics: the metric preset.
        write_config: writes ``config.json`` (it marks a started run).

    Returns:
        ``(config, results)``: ``config`` as every method's ``config.json`` (``method``
        holds the ``FineGrainedADConfig`` of the fine-tuned mode).
    """
    if not isinstance(backbone, ImageBackbone):  # the registry's recipe wraps it
        raise TypeError(f"evaluate_per_category: expected an ImageBackbone; got {backbone!r}")
    config = finegrainedad_config(args.profile, tiny=args.backbone == "tiny")
    run_config = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "backbone": repr(backbone),
        "backbone_config": dataclasses.asdict(backbone.config),
        "method": {"fine_tuned": config.to_dict()},
        "metrics": dataclasses.asdict(metrics),
        "mask_interpolation": "nearest",
        "train": dataclasses.asdict(train_config),
        "world_size": dist.world_size,
    }
    if dist.is_main:
        write_config(args.out, run_config)
    logger.info(
        "finegrainedad: one model per category and draw of shots (%d epochs each; "
        "no auxiliary data set)",
        train_config.epochs,
    )
    if args.select_epoch_on_test:
        logger.warning(
            "--select-epoch-on-test: each model keeps the epoch of best pixel AUROC on the "
            "TEST set (the released code's selection); the numbers are optimistic and "
            "labelled method finegrainedad_test_selected"
        )
    progress = not args.no_progress
    cache = FeatureCache(
        backbone,
        args.cache_dir,
        batch_size=args.eval_batch_size,
        progress=progress and dist.is_main,
    )
    results = evaluate_finegrainedad(
        specs,
        cache,
        config=config,
        train_config=train_config,
        captions=caption_loader(args.captions),
        select_epoch_on_test=args.select_epoch_on_test,
        shots=args.shots,
        seeds=args.seeds,
        eval_size=args.eval_size,
        mask_interpolation="nearest",
        batch_size=args.eval_batch_size,
        metric_config=metrics,
        heatmap_dir=args.out / "heatmaps",
        heatmaps=args.heatmaps,
        dist=dist,
        progress=progress,
    )
    return run_config, results
