"""Training of Res²CLIP† on an auxiliary data set (spec §4.4–4.6, paper Sec. 4.1 and App. F.2).

:func:`train` fits the adapters of a fine-tuned :class:`~resad_kit.methods.Res2CLIP` with
the official protocol:

- **Data** (spec §4.6). The queries are every image, normal and anomalous, of the given
  data sets: the *test* split of the auxiliary data set (:data:`AUXILIARY_DATASET`:
  VisA for a model tested on MVTec AD, MVTec AD for every other target), one
  :class:`~resad_kit.data.AnomalyDataset` per category. Training is always 1-shot: each
  query gets one normal image of its own category and split, drawn uniformly at random
  with the query itself excluded, fresh for every query in every epoch. Each epoch shuffles
  the queries (batch 16, last batch kept).
- **Features** come from a :class:`~resad_kit.engine.FeatureCache`: the backbone is frozen,
  so each image is encoded once and reused in every epoch.
- **Alternating schedule** (spec §4.4). 0-based even epochs train ``A_{v,l}``, ``A_t``
  and the residual visual adapters; odd epochs ``A_{v,l}``, ``A_t`` and ``A_t^res``.
- **Optimisers** (spec §4.5). Four Adam (β = (0.5, 0.999), no weight decay), as in the
  official code: ``"visual"`` (``A_{v,l}``), ``"residual_visual"`` (``A^res_{v,l}`` and
  ``A^res_{v,cls}``, the latter in its own parameter group so that it keeps the paper's
  lr), ``"residual_text"`` (``A_t^res``) and ``"text"`` (``A_t``). Only the optimisers of
  the epoch's phase step, each after clipping its gradients to norm 1.0. Each has a
  linear warm-up over one epoch of its own steps and a half cosine to 0 over all its
  steps (:mod:`resad_kit.engine.schedule`); the first step of each runs at lr 0.
- **Checkpoints** after every epoch (``out_dir/checkpoint.safetensors``, see
  :mod:`resad_kit.engine.checkpoint`), with a checksum and a record of the training data
  (:func:`~resad_kit.engine.fingerprint.data_fingerprint`); ``resume=True`` continues
  from it and reaches the same state as an uninterrupted run, and refuses other model or
  training settings or other data; ``resume="auto"`` does the same if the checkpoint
  exists and starts afresh otherwise.
- **Several processes** (``torchrun``): every rank builds the same batches and reference
  draws and takes its slice of each batch; gradients are averaged by
  ``DistributedDataParallel``. This equals one process only for
  ``loss_reduction="per_sample"`` with equal slices (see :func:`train`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import shutil
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from resad_kit.data import STANDARD_CATEGORIES, AnomalyDataset
from resad_kit.engine._queries import Queries as _Queries
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
from resad_kit.engine.schedule import active_epochs, phase_of_epoch, warmup_cosine_scheduler
from resad_kit.methods import Res2CLIP, TrainingBatch

__all__ = ["AUXILIARY_DATASET", "CHECKPOINT_NAME", "TrainConfig", "TrainResult", "train"]

logger = logging.getLogger(__name__)

AUXILIARY_DATASET = MappingProxyType(
    {target: ("visa" if target == "mvtec" else "mvtec") for target in STANDARD_CATEGORIES}
)
"""Target data set → the data set whose test split trains its adapters (paper Sec. 4.1,
spec §4.6): ``mvtec`` → ``visa``, every other target (``visa``, ``btad``, ``mpdd``,
``dtd``) → ``mvtec``. Two checkpoints cover all five benchmarks."""

CHECKPOINT_NAME = "checkpoint.safetensors"
"""File name of the latest checkpoint in ``out_dir``."""

LOSS_KEYS = ("text", "visual", "residual", "total")

# Optimiser name → the adapter families (``Res2CLIPAdapters.parameter_groups`` names) it
# updates, in the official code's grouping (spec §4.4).
_OPTIMIZERS = MappingProxyType(
    {
        "visual": ("visual",),
        "residual_visual": ("residual_local", "residual_global"),
        "residual_text": ("residual_text",),
        "text": ("text",),
    }
)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`train`, each with its source (spec §4.5, §8).

    The learning rates per adapter group are the model's (``Res2CLIPConfig.lr_local``,
    ``lr_text``, ``lr_global_visual``); ``lr_scale`` multiplies all of them.

    Attributes:
        epochs: training epochs (paper F.2 + code: 10).
        batch_size: queries per step (paper F.2 + code: 16; last batch kept).
        warmup_epochs: linear warm-up, in epochs of each optimiser's own steps (paper
            F.2: one epoch; code: ``steps_per_epoch`` steps); 0 disables it.
        betas: Adam β (paper F.2 + code: (0.5, 0.999)).
        weight_decay: Adam weight decay (code: 0).
        grad_clip: max-norm of the gradients of each optimiser (paper F.2 + code: 1.0);
            ``None`` disables clipping.
        lr_scale: factor on every learning rate (1 = the model config's, paper values).
        seed: seeds the shuffles, the reference draws and torch/NumPy/``random``
            (code: 111).
        keep_epoch_checkpoints: also keep ``checkpoint_epoch{NNN}.safetensors`` for
            every epoch (the latest is always ``checkpoint.safetensors``).

    Example:
        >>> from resad_kit.engine.training import TrainConfig
        >>> TrainConfig.paper()
        TrainConfig(epochs=10, batch_size=16, warmup_epochs=1, betas=(0.5, 0.999),
                    weight_decay=0.0, grad_clip=1.0, lr_scale=1.0, seed=111,
                    keep_epoch_checkpoints=False)
        >>> TrainConfig.paper(epochs=2, warmup_epochs=0).epochs
        2
    """

    epochs: int = 10
    batch_size: int = 16
    warmup_epochs: int = 1
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    lr_scale: float = 1.0
    seed: int = 111
    keep_epoch_checkpoints: bool = False

    def __post_init__(self) -> None:
        fn = "TrainConfig"
        for name, low in (("epochs", 1), ("batch_size", 1), ("warmup_epochs", 0), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{fn}: `{name}` must be an int >= {low}; got {value!r}")
        betas = tuple(self.betas)
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
            raise ValueError(f"{fn}: `betas` must be two numbers in [0, 1); got {self.betas!r}")
        object.__setattr__(self, "betas", (float(betas[0]), float(betas[1])))
        for name, optional in (("weight_decay", False), ("grad_clip", True), ("lr_scale", False)):
            value = getattr(self, name)
            if value is None and optional:
                continue
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not (ok and math.isfinite(value) and value >= 0) or (
                name == "grad_clip" and value == 0
            ):
                raise ValueError(f"{fn}: `{name}` must be a finite number >= 0; got {value!r}")
            object.__setattr__(self, name, float(value))

    @classmethod
    def paper(cls, **overrides: Any) -> TrainConfig:
        """The paper's (and official code's) settings; ``overrides`` replace fields."""
        return cls(**overrides)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        checkpoint: the latest checkpoint file.
        history: one dict per step: ``epoch``, ``step`` (global, 0-based), ``phase``, the
            losses ``text``, ``visual``, ``residual``, ``total`` (mean over all ranks) and
            ``lr`` (``{optimiser: lr of its first parameter group in this step}`` for the
            optimisers that stepped; ``residual_visual``'s first group is ``A^res_{v,l}``).
        epoch_losses: one dict per epoch: ``epoch``, ``phase``, ``steps`` and the mean of
            each loss over the epoch's steps.
        epochs: completed epochs.
        global_step: completed steps.

    Example:
        >>> from pathlib import Path
        >>> from resad_kit.engine.training import TrainResult
        >>> result = TrainResult(Path("run/checkpoint.safetensors"), (), (), 0, 0)
        >>> [e["total"] for e in result.epoch_losses]  # the loss curve, one value per epoch
        []

        See :func:`train` for a real run.
    """

    checkpoint: Path
    history: tuple[dict[str, Any], ...]
    epoch_losses: tuple[dict[str, Any], ...]
    epochs: int
    global_step: int


# ---------------------------------------------------------------------------- optimisation


class _Losses(nn.Module):
    """``model.losses`` as a module forward, so that DDP can wrap it."""

    def __init__(self, model: Res2CLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: TrainingBatch, phase: str) -> dict[str, Tensor]:
        return self.model.losses(batch, phase)


def _optimizers(
    model: Res2CLIP, config: TrainConfig, steps_per_epoch: int
) -> tuple[dict[str, torch.optim.Optimizer], dict[str, Any], dict[str, set[str]]]:
    """The four Adam optimisers, their schedulers and the phases in which each steps."""
    c = model.config
    groups = {
        g["name"]: g
        for g in model.adapters.parameter_groups(
            lr_local=c.lr_local * config.lr_scale,
            lr_text=c.lr_text * config.lr_scale,
            lr_global_visual=c.lr_global_visual * config.lr_scale,
        )
    }
    optimizers, schedulers, phases = {}, {}, {}
    for name, families in _OPTIMIZERS.items():
        optimizers[name] = torch.optim.Adam(
            [groups[f] for f in families], betas=config.betas, weight_decay=config.weight_decay
        )
        phases[name] = {
            p for p in ("visual", "text") if set(families) <= set(model.adapters.phase_modules(p))
        }
        total = active_epochs(config.epochs, phases[name]) * steps_per_epoch
        schedulers[name] = warmup_cosine_scheduler(
            optimizers[name], config.warmup_epochs * steps_per_epoch, max(total, steps_per_epoch)
        )
    return optimizers, schedulers, phases


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


def _check_dist(dist: DistContext | None, model: Res2CLIP, n: int, batch_size: int) -> None:
    if dist is None or not dist.enabled:
        return
    w = dist.world_size
    last = n % batch_size or batch_size
    if min(batch_size, last) < w:
        raise ValueError(
            f"train: every batch must hold at least one query per process; with {n} queries "
            f"and batch_size={batch_size} the smallest batch has {min(batch_size, last)} "
            f"but world_size={w}"
        )
    if model.config.loss_reduction == "batch":
        logger.warning(
            "train: loss_reduction='batch' normalises by the pixel and image counts of each "
            "process's slice of the batch, so training on %d processes differs slightly from "
            "one process (which pools the counts over the whole batch); "
            "loss_reduction='per_sample' with equal slices gives the same gradients",
            w,
        )
    if batch_size % w or last % w:
        logger.warning(
            "train: batch_size=%d (last batch %d) does not split evenly over %d processes; "
            "DDP weighs every slice equally, which differs slightly from one process",
            batch_size,
            last,
            w,
        )


# ---------------------------------------------------------------------------- train


def _check_model(model: object, cache: object) -> Res2CLIP:
    fn = "train"
    if not isinstance(model, Res2CLIP):
        raise TypeError(f"{fn}: `model` must be a Res2CLIP; got {type(model).__name__}")
    if model.adapters is None:
        raise ValueError(
            f"{fn}: the model is training-free (config.mode={model.config.mode!r}) and has no "
            "adapters to train; build it with Res2CLIPConfig.paper(mode='fine_tuned')"
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
    model: Res2CLIP,
    datasets: Sequence[AnomalyDataset],
    cache: FeatureCache,
    config: TrainConfig | None = None,
    *,
    out_dir: str | Path,
    resume: bool | str = False,
    progress: bool = True,
    dist: DistContext | None = None,
) -> TrainResult:
    """Train the adapters of a fine-tuned Res²CLIP (spec §4.4–4.6); see the module docstring.

    Args:
        model: a fine-tuned :class:`~resad_kit.methods.Res2CLIP` (with adapters); trained
            in place. Its config's learning rates (times ``config.lr_scale``) and
            ``loss_reduction`` are used.
        datasets: the training queries, one :class:`~resad_kit.data.AnomalyDataset` per
            category (paper: the test split of :data:`AUXILIARY_DATASET` ``[target]``), all
            with the same ``image_size`` and ``mask_size`` (the loss resolution; paper 518).
            Each category needs at least two normal images.
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
        ValueError: a training-free model, empty data sets, a category with fewer than two
            normal images, mismatched sizes, a cache of another backbone, ``resume=True``
            without a checkpoint, resuming with other settings or data, a corrupt
            checkpoint, a batch smaller than the number of processes, a ``resume`` other
            than ``True``, ``False`` or ``"auto"``.
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
    queries = _Queries(datasets)
    data = data_fingerprint(queries.datasets)  # hashes every image and mask once
    n = len(queries.items)
    _check_dist(dist, model, n, config.batch_size)
    is_main = dist is None or dist.is_main
    steps_per_epoch = math.ceil(n / config.batch_size)
    optimizers, schedulers, phases = _optimizers(model, config, steps_per_epoch)
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

    loss_module = wrap_ddp(_Losses(model), dist, find_unused_parameters=True)
    device = model.backbone.device
    was_training = model.adapters.training
    model.adapters.train()
    try:
        for epoch in range(start_epoch, config.epochs):
            phase = phase_of_epoch(epoch)
            active = [name for name in optimizers if phase in phases[name]]
            order = _epoch_order(n, config.seed, epoch)
            sums = dict.fromkeys(LOSS_KEYS, 0.0)
            bar = tqdm(
                range(0, n, config.batch_size),
                desc=f"epoch {epoch + 1}/{config.epochs} ({phase})",
                disable=not (progress and is_main),
                leave=False,
            )
            for start in bar:
                batch = [queries.items[k] for k in order[start : start + config.batch_size]]
                refs = [queries.reference(reference_rng, q) for q in batch]
                batch, refs = shard(batch, dist), shard(refs, dist)
                inputs = TrainingBatch(
                    queries.features(cache, batch),
                    queries.features(cache, refs),
                    queries.masks(batch, device),
                )
                for optimizer in optimizers.values():
                    optimizer.zero_grad(set_to_none=True)
                losses = loss_module(inputs, phase)
                # Mean over the ranks first, so that every rank sees a NaN and stops.
                values = torch.stack([losses[k].detach().float() for k in LOSS_KEYS])
                all_reduce_mean_(values, dist)
                if not bool(torch.isfinite(values).all()):
                    raise FloatingPointError(
                        f"{fn}: non-finite loss at epoch {epoch} step {global_step}: "
                        + ", ".join(
                            f"{k}={v:.4g}" for k, v in zip(LOSS_KEYS, values.tolist(), strict=True)
                        )
                    )
                losses["total"].backward()
                lrs = {}
                for name in active:
                    optimizer = optimizers[name]
                    lrs[name] = optimizer.param_groups[0]["lr"]
                    if config.grad_clip is not None:
                        params = [p for g in optimizer.param_groups for p in g["params"]]
                        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                    optimizer.step()
                    schedulers[name].step()
                record = dict(zip(LOSS_KEYS, values.tolist(), strict=True))
                history.append(
                    {"epoch": epoch, "step": global_step, "phase": phase, **record, "lr": lrs}
                )
                for k in LOSS_KEYS:
                    sums[k] += record[k]
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
        model.adapters.train(was_training)
    return TrainResult(
        checkpoint=path,
        history=tuple(history),
        epoch_losses=tuple(epoch_losses),
        epochs=config.epochs,
        global_step=global_step,
    )
