"""The few-shot evaluation protocol: data sets × categories × shots × seeds × models.

Any :class:`~resad_kit.methods.Method` is evaluated the same way: fitted to the references
with ``fit_references`` and run with ``forward(features, output_size=...)``. Each result
records the model's ``method`` (``model.name``) and ``mode`` (``model.mode``), so one run
can compare methods on the same references. The models are keyed by a label, by
convention their mode (``"training_free"``/``"fine_tuned"``); a mode label that is not the
model's own mode is refused (it would mislabel the results).

For every category the test images are encoded once (through a
:class:`~resad_kit.engine.features.FeatureCache`) and reused for every shot count, seed and
model. For each ``(shots, seed)`` the ``K`` normal references are drawn from the
category's train split with :func:`~resad_kit.data.sample_references` (seeded; the same
references for every model, as the paper compares methods on the same references), every
model is fitted to them and predicts all test images in batches, and the seven metrics
are computed per category with :func:`~resad_kit.metrics.evaluate` on maps at the masks'
resolution (the paper's 518 px by default). ``K = 0`` (zero-shot, for methods that
support it, such as AF-CLIP) draws no references and runs one seed. Categories are the
unit of work: under ``torchrun`` each rank evaluates its share
(:func:`~resad_kit.engine.distributed.shard`) and the results are gathered, so they are
the same as in one process.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from resad_kit.data import AnomalyDataset, sample_references
from resad_kit.engine._protocol_parts import (
    _check_models,
    _check_shots,
    _heatmap_folder,
    _heatmap_indices,
    _slice,
)
from resad_kit.engine.distributed import DistContext, gather, shard
from resad_kit.engine.features import FeatureCache
from resad_kit.engine.heatmaps import save_heatmaps
from resad_kit.engine.results import CategoryResult
from resad_kit.methods import Method
from resad_kit.metrics import MetricConfig, evaluate

__all__ = ["DatasetSpec", "evaluate_category", "run_evaluation"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetSpec:
    """One data set to evaluate: its key, root folder and categories.

    Attributes:
        name: the key used in tables (``"mvtec"``, ``"visa"``, ``"btad"``, ``"mpdd"``,
            ``"dtd"`` for the paper's; any other name for other data).
        root: the folder holding the category folders (or VisA's root).
        categories: the categories to evaluate, in order.

    Example:
        >>> from resad_kit.engine import DatasetSpec
        >>> spec = DatasetSpec("mvtec", "/data/mvtec", ["bottle", "cable"])
        >>> spec.root.name, spec.categories
        ('mvtec', ('bottle', 'cable'))
    """

    name: str
    root: Path
    categories: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.categories:
            raise ValueError(f"DatasetSpec: data set {self.name!r} has no categories")
        object.__setattr__(self, "root", Path(self.root))
        object.__setattr__(self, "categories", tuple(self.categories))


def evaluate_category(
    models: Mapping[str, Method],
    dataset: str,
    test: AnomalyDataset,
    train: AnomalyDataset | None,
    cache: FeatureCache,
    *,
    shots: Sequence[int] = (1, 2, 4),
    seeds: Sequence[int] = (111, 222, 333),
    batch_size: int = 8,
    metric_config: MetricConfig | None = None,
    heatmap_dir: str | Path | None = None,
    heatmaps: int = 4,
    reference_method: str = "random",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> list[CategoryResult]:
    """Evaluate one category for every ``(shots, seed, model)``.

    Args:
        models: label → :class:`~resad_kit.methods.Method` for this data set. The results
            carry ``model.name`` and ``model.mode``; by convention the label is the mode,
            and a mode label (``"training_free"``, ``"fine_tuned"``) must be the model's own.
            Two models of the same method and mode are refused.
        dataset: the data set key for the results.
        test, train: the category's test and train splits (same image size; the test
            split's ``mask_size`` is the evaluation resolution). ``train`` may be ``None``
            when every ``K`` is 0 (a data set with a test split only, e.g. a medical set).
        cache: the feature cache of the models' (shared) backbone.
        shots, seeds: the few-shot settings; the references of ``(K, seed)`` are the same
            for every model. ``K = 0`` is zero-shot (methods with
            ``supports_zero_shot``, e.g. AF-CLIP): no reference is drawn,
            ``clear_references()`` replaces ``fit_references``, and only the first seed
            is run (the prediction does not depend on it).
        batch_size: query images per forward pass.
        metric_config: exact metrics (default) or ``MetricConfig.official_code()``.
        heatmap_dir: write heat-map overlays of the first ``heatmaps`` test images (for
            the largest ``K`` and the first seed, every model) under
            ``heatmap_dir/<mode>/<dataset>/<category>/`` (Res²CLIP) or
            ``heatmap_dir/<method>/<mode>/<dataset>/<category>/`` (any other method).
        heatmaps: number of images with overlays per category and model.
        reference_method: ``"random"`` (seeded) or ``"first"`` (official code's order).
        mean, std: the images' normalisation (to undo it in the heat maps).

    Returns:
        One :class:`~resad_kit.engine.results.CategoryResult` per ``(shots, seed, model)``.

    Raises:
        TypeError: a model that is not a :class:`~resad_kit.methods.Method`.
        ValueError: no model, a mode label that is not the model's mode, two models of one
            method and mode, a test split without both normal and anomalous images, a
            negative shot count, or ``0`` in ``shots`` with a method that needs references.

    Example:
        >>> from resad_kit.clip import ClipBackbone
        >>> from resad_kit.data import AnomalyDataset, synthesize_dataset
        >>> from resad_kit.engine import FeatureCache, evaluate_category
        >>> from resad_kit.methods import Res2CLIP
        >>> root = synthesize_dataset(getfixture("tmp_path"), ["grass"], 2, 4, image_size=32)
        >>> backbone = ClipBackbone.tiny(image_size=32)
        >>> test, train = (AnomalyDataset(root, "grass", s, 32) for s in ("test", "train"))
        >>> results = evaluate_category(
        ...     {"training_free": Res2CLIP(backbone)},
        ...     "synthetic",
        ...     test,
        ...     train,
        ...     FeatureCache(backbone, progress=False),
        ...     shots=(2,),
        ...     seeds=(7,),
        ... )
        >>> [(r.shots, r.seed, r.n_images) for r in results]
        [(2, 7, 4)]
    """
    _check_models("evaluate_category", models)
    _check_shots("evaluate_category", models, shots)
    if train is None and any(shots):
        raise ValueError(
            "evaluate_category: few-shot settings (shots > 0) need the train split; "
            f"got train=None with shots={tuple(shots)}"
        )
    test.check_both_labels(dataset)  # before any work; the message names the category
    queries = cache.features(test)
    n = len(test)
    size = (test.mask_size, test.mask_size)
    masks = test.masks(range(n))
    labels = torch.tensor(test.labels)
    results = []
    for k in shots:
        for seed_index, seed in enumerate(seeds if k else seeds[:1]):  # 0 shots: one seed
            if k:
                refs = sample_references(train, k, seed, method=reference_method)
                ref_features, ref_paths = cache.features(train, refs.indices), refs.paths
            for model in models.values():
                if k:
                    model.fit_references(ref_features)
                else:  # zero-shot: no references are drawn
                    model.clear_references()
                    ref_paths = ()
                scores, maps = [], []
                with torch.inference_mode():
                    for start in range(0, n, batch_size):
                        pred = model(_slice(queries, start, start + batch_size), output_size=size)
                        scores.append(pred.image_score.float().cpu())
                        maps.append(pred.anomaly_map.float().cpu())
                score, amap = torch.cat(scores), torch.cat(maps)
                metrics = evaluate(
                    score, amap, labels, masks, config=metric_config, levels=test.levels
                )
                results.append(
                    CategoryResult(
                        dataset,
                        test.category,
                        k,
                        seed,
                        model.mode,
                        metrics,
                        ref_paths,
                        n_images=n,
                        method=model.name,
                    )
                )
                if heatmap_dir is not None and heatmaps > 0 and k == max(shots) and seed_index == 0:
                    picked = _heatmap_indices(test.labels, heatmaps)
                    save_heatmaps(
                        test.images(picked),
                        amap[picked],
                        masks[picked],
                        [test.samples[i].relative_path for i in picked],
                        _heatmap_folder(heatmap_dir, model, dataset, test.category),
                        mean=mean,
                        std=std,
                        vmin=float(amap.min()),  # the category's range: one colour scale
                        vmax=float(amap.max()),
                        scores=score[picked],
                        labels=labels[picked],
                        trained=cache.backbone.trained,
                    )
    return results


def _evaluate_unit(
    models: Mapping[str, Method],
    spec: DatasetSpec,
    category: str,
    cache: FeatureCache,
    *,
    eval_size: int | None,
    mask_interpolation: str,
    shots: Sequence[int],
    **options: Any,
) -> list[CategoryResult]:
    image_size = cache.backbone.image_size
    norm = {"mean": cache.backbone.mean, "std": cache.backbone.std}
    test = AnomalyDataset(
        spec.root,
        category,
        "test",
        image_size,
        mask_size=eval_size,
        mask_interpolation=mask_interpolation,
        **norm,
    )
    # zero-shot only: no train split is read (some data sets have a test split only)
    train = AnomalyDataset(spec.root, category, "train", image_size, **norm) if any(shots) else None
    results = evaluate_category(
        models, spec.name, test, train, cache, shots=shots, **options, **norm
    )
    first = results[0]
    # the first metric the data set supports (a segmentation-only set has no I-AUROC)
    name, value = next(((k, v) for k, v in first.metrics.items() if v is not None), ("-", None))
    logger.info(
        "%s/%s: %d images, %d results (e.g. %d-shot seed %d %s: %s %s)",
        spec.name,
        category,
        first.n_images,
        len(results),
        first.shots,
        first.seed,
        first.mode,
        name,
        "–" if value is None else f"{value:.3f}",
    )
    return results


def run_evaluation(
    models: Mapping[tuple[str, str], Method],
    datasets: Sequence[DatasetSpec],
    cache: FeatureCache,
    *,
    shots: Sequence[int] = (1, 2, 4),
    seeds: Sequence[int] = (111, 222, 333),
    eval_size: int | None = None,
    mask_interpolation: str = "nearest",
    batch_size: int = 8,
    metric_config: MetricConfig | None = None,
    heatmap_dir: str | Path | None = None,
    heatmaps: int = 4,
    reference_method: str = "random",
    dist: DistContext | None = None,
    progress: bool = True,
    release_features: bool = True,
) -> list[CategoryResult]:
    """Run the protocol over data sets and categories; every rank returns all results.

    Args:
        models: ``(label, dataset key)`` → the :class:`~resad_kit.methods.Method` to
            evaluate on that data set (the fine-tuned model of a target is the one trained
            on its auxiliary data set); the label as in :func:`evaluate_category`, by
            convention ``model.mode``.
        datasets: what to evaluate.
        cache: feature cache of the backbone shared by all models.
        shots, seeds: few-shot settings (paper: 1, 2, 4 shots; three seeds); ``0`` is
            zero-shot, run with the first seed only (see :func:`evaluate_category`).
        eval_size: mask (and map) side for the metrics; ``None``: the backbone's input
            size (paper: 518).
        mask_interpolation: how the test masks are resized to ``eval_size``:
            ``"nearest"`` (default) or ``"bilinear"`` (bilinear + threshold 0.5, the official
            code's; see :class:`~resad_kit.data.AnomalyDataset`).
        batch_size, metric_config, heatmap_dir, heatmaps, reference_method: see
            :func:`evaluate_category`.
        dist: distributed context; categories are sharded across ranks and gathered.
        progress: show a progress bar over categories (main rank).
        release_features: :meth:`FeatureCache.clear` the cache's memory after each
            category (each category's features are used only by that category; at 518 px
            they take gigabytes). The disk store, if any, is kept.

    Returns:
        The :class:`~resad_kit.engine.results.CategoryResult` list in data set, category,
        shots, seed, method, mode order.

    Raises:
        TypeError: a model that is not a :class:`~resad_kit.methods.Method`.
        ValueError: no model for a data set, a mode label that is not the model's mode,
            two models of one method and mode for a data set.
        RuntimeError: under ``torchrun``, on every rank when any rank failed (the message
            names the rank and its error), instead of leaving the others waiting. In one
            process the error itself propagates.

    Example:
        >>> from resad_kit.clip import ClipBackbone
        >>> from resad_kit.data import synthesize_dataset
        >>> from resad_kit.engine import DatasetSpec, FeatureCache, run_evaluation
        >>> from resad_kit.methods import NearestNeighbor, Res2CLIP
        >>> root = synthesize_dataset(getfixture("tmp_path"), ["grass"], 2, 4, image_size=32)
        >>> backbone = ClipBackbone.tiny(image_size=32)
        >>> results = run_evaluation(
        ...     {  # any Methods, compared on the same references
        ...         ("training_free", "synthetic"): Res2CLIP(backbone),
        ...         ("nearest_neighbor", "synthetic"): NearestNeighbor(backbone),
        ...     },
        ...     [DatasetSpec("synthetic", root, ("grass",))],
        ...     FeatureCache(backbone, progress=False),
        ...     shots=(1,),
        ...     seeds=(0, 1),
        ...     progress=False,
        ... )
        >>> [(r.seed, r.method, r.mode) for r in results]
        [(0, 'nearest_neighbor', 'training_free'), (0, 'res2clip', 'training_free'),
         (1, 'nearest_neighbor', 'training_free'), (1, 'res2clip', 'training_free')]
    """
    _check_models("run_evaluation", models)
    _check_shots("run_evaluation", models, shots)
    units = [(spec, category) for spec in datasets for category in spec.categories]
    for spec in datasets:
        if not any(name == spec.name for _, name in models):
            raise ValueError(f"run_evaluation: no model for data set {spec.name!r}")
    mine = shard(units, dist)
    main = dist is None or dist.is_main
    bar = tqdm(mine, desc="evaluate", unit="category", disable=not (progress and main))
    results: list[CategoryResult] = []
    failure = None
    try:
        for spec, category in bar:
            bar.set_postfix_str(f"{spec.name}/{category}")
            models_here = {label: m for (label, name), m in models.items() if name == spec.name}
            results.extend(
                _evaluate_unit(
                    models_here,
                    spec,
                    category,
                    cache,
                    eval_size=eval_size,
                    mask_interpolation=mask_interpolation,
                    shots=shots,
                    seeds=seeds,
                    batch_size=batch_size,
                    metric_config=metric_config,
                    heatmap_dir=heatmap_dir,
                    heatmaps=heatmaps,
                    reference_method=reference_method,
                )
            )
            if release_features:
                cache.clear()
    except Exception as error:
        if dist is None or not dist.enabled:
            raise
        # Tell every rank (they would otherwise wait in `gather` until the timeout).
        logger.exception("run_evaluation failed on rank %d", dist.rank)
        failure = f"rank {dist.rank}: {type(error).__name__}: {error}"
    parts = gather((results, failure), dist)
    failures = [f for _, f in parts if f is not None]
    if failures:
        raise RuntimeError("run_evaluation failed: " + "; ".join(failures))
    gathered = [r for part, _ in parts for r in part]
    order = {(s.name, c): i for i, (s, c) in enumerate(units)}
    gathered.sort(key=lambda r: (order[(r.dataset, r.category)], r.shots, r.seed, r.method, r.mode))
    return gathered
