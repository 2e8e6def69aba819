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
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

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
from resad_kit.methods.finegrainedad_config import FineGrainedADConfig
from resad_kit.metrics import MetricConfig

__all__ = [
    "MASK_INTERPOLATION", "caption_loader", "check_captions", "evaluate_per_category",
    "method_config",
]  # fmt: skip

logger = logging.getLogger("resad_kit.reproduce")

MASK_INTERPOLATION = "nearest"
"""Masks resized to the evaluation size by nearest neighbour, whatever ``--profile`` (the
bilinear resize of ``--profile official`` comes from the Res²CLIP code)."""


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


def method_config(args: argparse.Namespace) -> FineGrainedADConfig:
    """The ``FineGrainedADConfig`` of ``--profile`` (and ``--backbone tiny``)."""
    return finegrainedad_config(args.profile, tiny=args.backbone == "tiny")


def evaluate_per_category(
    args: argparse.Namespace,
    dist: DistContext,
    cache: FeatureCache,
    specs: Sequence[DatasetSpec],
    config: FineGrainedADConfig,
    train_config: TrainConfig,
    metrics: MetricConfig,
) -> list[CategoryResult]:
    """The results of :func:`evaluate_finegrainedad` over ``specs``.

    Args:
        args: the checked flags (``--shots``, ``--seeds``, ``--eval-size``, ``--captions``,
            ``--select-epoch-on-test``, heat maps, batch size, progress).
        dist: the distributed context.
        cache: the run's feature cache over an
            :class:`~resad_kit.clip.image_backbone.ImageBackbone` (the registry's recipe).
        specs: the target data sets.
        config: :func:`method_config` (what ``config.json`` records).
        train_config: :meth:`TrainConfig.finegrainedad` with the flags' overrides.
        metrics: the metric preset.
    """
    if not isinstance(cache.backbone, ImageBackbone):
        raise TypeError(f"evaluate_per_category: expected an ImageBackbone; got {cache.backbone!r}")
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
    return evaluate_finegrainedad(
        specs,
        cache,
        config=config,
        train_config=train_config,
        captions=caption_loader(args.captions),
        select_epoch_on_test=args.select_epoch_on_test,
        shots=args.shots,
        seeds=args.seeds,
        eval_size=args.eval_size,
        mask_interpolation=MASK_INTERPOLATION,
        batch_size=args.eval_batch_size,
        metric_config=metrics,
        heatmap_dir=args.out / "heatmaps",
        heatmaps=args.heatmaps,
        dist=dist,
        progress=not args.no_progress,
    )
