"""Training of any trainable :class:`~resad_kit.methods.Method` on auxiliary data sets.

:func:`train` fits the trainable part of a method (Res²CLIP†'s adapters, the projection of
a trainable :class:`~resad_kit.methods.NearestNeighbor`, …) with the official Res²CLIP
protocol (paper Sec. 4.1 and App. F.2):

- **Data.** The queries are every image, normal and anomalous, of the given data sets: for
  Res²CLIP the *test* split of the auxiliary data set (:data:`AUXILIARY_DATASET`: VisA
  for a model tested on MVTec AD, MVTec AD for every other target; AF-CLIP uses the same
  pairs), one :class:`~resad_kit.data.AnomalyDataset` per category. Res²CLIP trains
  1-shot: each query gets one normal image of its own category and split, drawn uniformly
  at random with the query itself excluded, fresh for every query in every epoch; a method
  with ``uses_training_references = False`` (AF-CLIP) gets no reference
  (``TrainingBatch.reference`` is ``None``) and its categories need no normal image. Each
  epoch shuffles the queries (``TrainConfig.batch_size``, last batch kept).
- **Features** come from a :class:`~resad_kit.engine.FeatureCache`: the backbone is frozen,
  so each image is encoded once and reused in every epoch.
- **Phases.** Epoch ``e`` trains phase ``model.phases[e % len(model.phases)]``
  (:mod:`resad_kit.engine.schedule`); Res²CLIP alternates ``("visual", "text")``: 0-based
  even epochs train ``A_{v,l}``, ``A_t`` and the residual visual adapters, odd epochs
  ``A_{v,l}``, ``A_t`` and ``A_t^res``. The loss of a batch is ``model.losses(batch,
  phase)["total"]``; every term it returns is logged.
- **Optimisers** (:mod:`resad_kit.engine.optimization`): one Adam (β = (0.5, 0.999), no
  weight decay by default) per group of ``model.optimizer_groups()``, with the method's
  learning rates. Only the optimisers of the epoch's phase step, each after clipping its
  gradients to norm 1.0. Each has a linear warm-up over one epoch of its own steps and a
  half cosine to 0 over all its steps; the first step of each runs at lr 0.
  :meth:`TrainConfig.afclip` (AF-CLIP's code) has no clipping, warm-up or schedule;
  :meth:`TrainConfig.finegrainedad` (FineGrainedAD's code) uses SGD (momentum 0.9, weight
  decay 5e-4) with a cosine decay to 1e-5 and no clipping or warm-up.
- **Checkpoints** after every epoch (``out_dir/checkpoint.safetensors``, see
  :mod:`resad_kit.engine.checkpoint`), with the method's name and config, a checksum and a
  record of the training data (:func:`~resad_kit.engine.fingerprint.data_fingerprint`);
  ``resume=True`` continues from it and reaches the same state as an uninterrupted run,
  and refuses another method, other model or training settings or other data;
  ``resume="auto"`` does the same if the checkpoint exists and starts afresh otherwise.
- **Several processes** (``torchrun``): every rank builds the same batches and reference
  draws and takes its slice of each batch; gradients are averaged by
  ``DistributedDataParallel``. For Res²CLIP this equals one process only for
  ``loss_reduction="per_sample"`` with equal slices (see :func:`train`).
"""

from __future__ import annotations

import logging
import math
import random
import shutil
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from tqdm.auto import tqdm

from resad_kit.data import STANDARD_CATEGORIES, AnomalyDataset
from resad_kit.engine._queries import Queries as _Queries
from resad_kit.engine._train_checks import _check_dist, _loss_keys
from resad_kit.engine.checkpoint import load_checkpoint, save_checkpoint
from resad_kit.engine.distributed import (
    DistContext,
    all_reduce_mean_,
    barrier,
    seed_everything,
    shard,
    wrap_ddp,
)
from resad_kit.engine.features import FeatureCache, backbone_fingerprint
from resad_kit.engine.fingerprint import data_fingerprint
from resad_kit.engine.optimization import LossModule, build_optimization, step_optimizers
from resad_kit.engine.schedule import phase_of_epoch
from resad_kit.engine.train_config import TrainConfig, TrainResult
from resad_kit.methods import Method, TrainingBatch

__all__ = ["AUXILIARY_DATASET", "CHECKPOINT_NAME", "TrainConfig", "TrainResult", "train"]

logger = logging.getLogger(__name__)

AUXILIARY_DATASET = MappingProxyType(
    {target: ("visa" if target == "mvtec" else "mvtec") for target in STANDARD_CATEGORIES}
)
"""Target data set → the data set whose test split trains its adapters (paper Sec. 4.1):
``mvtec`` → ``visa``, every other target (``visa``, ``btad``, ``mpdd``, ``dtd``) →
``mvtec``. Two checkpoints cover all five benchmarks."""

CHECKPOINT_NAME = "checkpoint.safetensors"
"""File name of the latest checkpoint in ``out_dir``."""


# ---------------------------------------------------------------------------- state


def _rng_state(reference: random.Random) -> dict[str, Any]:
    state: dict[str, Any] = {
        "reference": reference.getstate(),
        "python": random.getstate(),
        "torch_cpu": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], reference: random.Random) -> None:
    reference.setstate(state["reference"])
    random.setstate(state["python"])
    torch.set_rng_state(state["torch_cpu"])
    cuda = state.get("torch_cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The query order of one epoch: a seeded shuffle that depends only on (seed, epoch)."""
    order = list(range(n))
    random.Random(f"resad_kit.train:{seed}:{epoch}").shuffle(order)
    return order


# ---------------------------------------------------------------------------- train


def _check_model(model: object, cache: object) -> Method:
    fn = "train"
    if not isinstance(model, Method):
        raise TypeError(
            f"{fn}: `model` must be a resad_kit.methods.Method; got {type(model).__name__}"
        )
    if not model.trainable or model.trainable_module() is None:
        raise ValueError(
            f"{fn}: the {type(model).__name__} model ({model.name!r}, mode {model.mode!r}) is "
            "training-free: it declares no training phases or nothing to train; build a "
            "trainable one (e.g. Res2CLIPConfig.paper(mode='fine_tuned'))"
        )
    if not isinstance(cache, FeatureCache):
        raise TypeError(f"{fn}: `cache` must be a FeatureCache; got {type(cache).__name__}")
    if cache.backbone is not model.backbone and cache.fingerprint != backbone_fingerprint(
        model.backbone
    ):
        raise ValueError(
            f"{fn}: `cache` encodes images with another backbone than the model's; build it "
            "with FeatureCache(model.backbone, ...)"
        )
    return model


def train(
    model: Method,
    datasets: Sequence[AnomalyDataset],
    cache: FeatureCache,
    config: TrainConfig | None = None,
    *,
    out_dir: str | Path,
    resume: bool | str = False,
    progress: bool = True,
    dist: DistContext | None = None,
) -> TrainResult:
    """Train a trainable :class:`~resad_kit.methods.Method` in place; see the module docstring.

    Args:
        model: a trainable method (non-empty ``phases``), e.g. a fine-tuned
            :class:`~resad_kit.methods.Res2CLIP`; trained in place. Its optimiser groups'
            learning rates (times ``config.lr_scale``) and its losses are used.
        datasets: the training queries, one :class:`~resad_kit.data.AnomalyDataset` per
            category (paper: the test split of :data:`AUXILIARY_DATASET` ``[target]``), all
            with the same ``image_size`` and ``mask_size`` (the loss resolution; paper 518).
            Each category needs at least two normal images (none for a method that draws
            no training references).
        cache: a :class:`~resad_kit.engine.FeatureCache` of the model's backbone.
        config: :class:`TrainConfig`; ``None`` is ``TrainConfig.paper()``.
        out_dir: folder of the checkpoints (created if needed).
        resume: ``True``: continue from ``out_dir/checkpoint.safetensors`` at the epoch
            after the saved one; its model and training configs and its training data
            (the content of every image and mask, their labels, order and preprocessing)
            must equal these. ``"auto"``: the same if that checkpoint exists, else a fresh
            run (for a script that resumes a sequence of trainings). ``False``: a fresh
            run; an existing checkpoint there is overwritten.
        progress: show a tqdm bar per epoch (loss and ETA), on rank 0 only.
        dist: a :class:`~resad_kit.engine.distributed.DistContext` from
            ``init_distributed()`` to train under ``torchrun``: every rank builds the same
            batches and reference draws (same seed), computes the losses of its slice
            ``batch[rank::world_size]`` in a ``DistributedDataParallel`` wrapper (gradients
            averaged) and only rank 0 writes checkpoints. With
            ``loss_reduction="per_sample"`` and batches that split evenly this gives the
            single-process gradients (up to float rounding); with ``"batch"`` (official)
            each slice is normalised by its own pixel counts, so the result differs slightly
            (a warning says so).

    Returns:
        :class:`TrainResult`.

    Raises:
        TypeError: a model that is not a :class:`~resad_kit.methods.Method`.
        ValueError: a training-free model, invalid optimiser groups, empty data sets, a
            category with fewer than two normal images, mismatched sizes, a cache of
            another backbone, ``resume=True`` without a checkpoint, resuming another method
            or with other settings or data, a corrupt checkpoint, a batch smaller than the
            number of processes, a ``resume`` other than ``True``, ``False`` or ``"auto"``.
        FloatingPointError: a non-finite loss.

    Side effects:
        A fresh run seeds ``random``, NumPy and torch with ``config.seed``; a resumed run
        restores the saved ``random`` and torch states.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from resad_kit.clip import ClipBackbone
        >>> from resad_kit.data import AnomalyDataset, synthesize_dataset
        >>> from resad_kit.engine.features import FeatureCache
        >>> from resad_kit.engine.training import TrainConfig, train
        >>> from resad_kit.methods import Res2CLIP, Res2CLIPConfig
        >>> backbone = ClipBackbone.tiny(image_size=32)
        >>> model = Res2CLIP(backbone, Res2CLIPConfig.paper(mode="fine_tuned"))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     root = synthesize_dataset(
        ...         Path(tmp) / "data", ["grass"], n_train=1, n_test=4, image_size=32
        ...     )
        ...     data = [AnomalyDataset(root, "grass", "test", image_size=32)]
        ...     cache = FeatureCache(backbone, progress=False)
        ...     config = TrainConfig.paper(epochs=2, batch_size=2)
        ...     result = train(model, data, cache, config, out_dir=tmp, progress=False)
        ...     result.checkpoint.name
        'checkpoint.safetensors'
        >>> result.epochs, result.global_step, [e["phase"] for e in result.epoch_losses]
        (2, 4, ['visual', 'text'])
        >>> result.history[0]["lr"]  # the first step of every optimiser runs at lr 0
        {'visual': 0.0, 'residual_visual': 0.0, 'text': 0.0}
    """
    fn = "train"
    model = _check_model(model, cache)
    config = TrainConfig.paper() if config is None else config
    if not isinstance(config, TrainConfig):
        raise TypeError(f"{fn}: `config` must be a TrainConfig; got {type(config).__name__}")
    if resume not in (True, False, "auto") or not isinstance(resume, (bool, str)):
        raise ValueError(f"{fn}: `resume` must be True, False or 'auto'; got {resume!r}")
    queries = _Queries(
        datasets,
        self_reference=config.self_reference,
        references=model.uses_training_references,
    )
    data = data_fingerprint(queries.datasets)  # hashes every image and mask once
    n = len(queries.items)
    _check_dist(dist, model, n, config.batch_size)
    is_main = dist is None or dist.is_main
    steps_per_epoch = math.ceil(n / config.batch_size)
    optimization = build_optimization(model, config, steps_per_epoch)
    optimizers, schedulers = optimization.optimizers, optimization.schedulers
    out_dir = Path(out_dir)
    path = out_dir / CHECKPOINT_NAME

    reference_rng = random.Random(config.seed)
    start_epoch, global_step = 0, 0
    history: list[dict[str, Any]] = []
    epoch_losses: list[dict[str, Any]] = []
    if resume == "auto":
        resume = path.is_file()
        if not resume:
            logger.info("train: no checkpoint at %s yet; starting a fresh run", path)
    if resume:
        if not path.is_file():
            raise ValueError(f"{fn}: `resume=True` but there is no checkpoint at {str(path)!r}")
        ckpt = load_checkpoint(
            path,
            model,
            optimizers=optimizers,
            schedulers=schedulers,
            train_config=config,
            data=data,
        )
        _set_rng_state(ckpt.rng, reference_rng)
        start_epoch, global_step = ckpt.epoch, ckpt.global_step
        history = list(ckpt.extra.get("history", []))
        epoch_losses = list(ckpt.extra.get("epoch_losses", []))
        logger.info("resuming from %s after epoch %d", path, start_epoch)
    else:
        seed_everything(config.seed)
        if path.exists() and is_main:
            logger.warning("train: overwriting the existing checkpoint %s", path)

    loss_module = wrap_ddp(LossModule(model), dist, find_unused_parameters=True)
    device = model.backbone.device
    trainable = model.trainable_module()
    was_training = trainable.training
    trainable.train()
    loss_keys: tuple[str, ...] | None = None
    try:
        for epoch in range(start_epoch, config.epochs):
            phase = phase_of_epoch(epoch, model.phases)
            active = optimization.active(phase)
            order = _epoch_order(n, config.seed, epoch)
            sums: dict[str, float] = {}
            bar = tqdm(
                range(0, n, config.batch_size),
                desc=f"epoch {epoch + 1}/{config.epochs} ({phase})",
                disable=not (progress and is_main),
                leave=False,
            )
            for start in bar:
                batch = [queries.items[k] for k in order[start : start + config.batch_size]]
                if model.uses_training_references:
                    refs = shard([queries.reference(reference_rng, q) for q in batch], dist)
                batch = shard(batch, dist)
                inputs = TrainingBatch(
                    queries.features(cache, batch),
                    queries.features(cache, refs) if model.uses_training_references else None,
                    queries.masks(batch, device),
                )
                for optimizer in optimizers.values():
                    optimizer.zero_grad(set_to_none=True)
                losses = loss_module(inputs, phase)
                loss_keys = _loss_keys(losses, loss_keys)
                # Mean over the ranks first, so that every rank sees a NaN and stops.
                values = torch.stack([losses[k].detach().float() for k in loss_keys])
                all_reduce_mean_(values, dist)
                if not bool(torch.isfinite(values).all()):
                    raise FloatingPointError(
                        f"{fn}: non-finite loss at epoch {epoch} step {global_step}: "
                        + ", ".join(
                            f"{k}={v:.4g}" for k, v in zip(loss_keys, values.tolist(), strict=True)
                        )
                    )
                losses["total"].backward()
                lrs = dict(step_optimizers(optimization, active, config.grad_clip))
                record = dict(zip(loss_keys, values.tolist(), strict=True))
                history.append(
                    {"epoch": epoch, "step": global_step, "phase": phase, **record, "lr": lrs}
                )
                for k in loss_keys:
                    sums[k] = sums.get(k, 0.0) + record[k]
                global_step += 1
                bar.set_postfix(loss=f"{record['total']:.4f}")
            steps = len(bar)
            bar.close()
            means = {k: v / steps for k, v in sums.items()}
            epoch_losses.append({"epoch": epoch, "phase": phase, "steps": steps, **means})
            if is_main:
                logger.info(
                    "epoch %d/%d (%s): %s",
                    epoch + 1,
                    config.epochs,
                    phase,
                    ", ".join(f"{k} {v:.4f}" for k, v in means.items()),
                )
                save_checkpoint(
                    path,
                    model,
                    optimizers=optimizers,
                    schedulers=schedulers,
                    train_config=config,
                    epoch=epoch + 1,
                    global_step=global_step,
                    rng=_rng_state(reference_rng),
                    extra={"history": history, "epoch_losses": epoch_losses},
                    data=data,
                )
                if config.keep_epoch_checkpoints:
                    shutil.copyfile(path, out_dir / f"checkpoint_epoch{epoch + 1:03d}.safetensors")
            barrier(dist)
    finally:
        trainable.train(was_training)
    return TrainResult(
        checkpoint=path,
        history=tuple(history),
        epoch_losses=tuple(epoch_losses),
        epochs=config.epochs,
        global_step=global_step,
    )
