"""Settings and result of :func:`~resad_kit.engine.training.train`.

:class:`TrainConfig` holds what is the engine's (epochs, batch size, warm-up, the optimiser
(Adam's β or SGD's momentum) and weight decay, the schedule, gradient clipping, a scale on
every learning rate, the seed);
the learning rates, phases and losses are the method's
(:meth:`~resad_kit.methods.Method.optimizer_groups`). :class:`TrainResult` is the loss
history of a run.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Literal

__all__ = ["TrainConfig", "TrainResult"]

LR_SCHEDULES = ("warmup_cosine", "constant", "cosine")
OPTIMIZERS = ("adam", "sgd")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`~resad_kit.engine.training.train`, each with its source.

    The defaults are Res²CLIP's (paper App. F.2 and the official code). The learning rates
    are the model's own (each :class:`~resad_kit.methods.OptimizerGroup`'s, e.g.
    ``Res2CLIPConfig.lr_local``, ``lr_text``, ``lr_global_visual``); ``lr_scale`` multiplies
    all of them. The phases are the model's (:attr:`~resad_kit.methods.Method.phases`).

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
        self_reference: a category with a single normal image uses it as its own
            reference when it is the query (the official code's fallback, with a logged
            warning); ``False`` (paper: each query's reference is *another* normal image)
            makes such a category an error.
        lr_schedule: ``"warmup_cosine"`` (Res²CLIP: linear warm-up over
            ``warmup_epochs`` then a half cosine to 0) or ``"constant"`` (the method's
            learning rates throughout; AF-CLIP's official code has no scheduler) or
            ``"cosine"`` (``CosineAnnealingLR``: ``lr_t = min_lr + (lr − min_lr)·(1 +
            cos(π t / T))/2`` over each optimiser's ``T`` active steps, no warm-up;
            FineGrainedAD).
        optimizer: ``"adam"`` (Adam with ``betas``; Res²CLIP, AF-CLIP) or ``"sgd"`` (SGD
            with ``momentum``; FineGrainedAD). Both use ``weight_decay``.
        momentum: SGD momentum (unused by Adam).
        min_lr: the floor ``eta_min`` of ``lr_schedule="cosine"`` (unused otherwise).

    Presets: :meth:`paper` (Res²CLIP, the default), :meth:`afclip` (AF-CLIP) and
    :meth:`finegrainedad` (FineGrainedAD).

    Example:
        >>> from resad_kit.engine.training import TrainConfig
        >>> TrainConfig.paper()
        TrainConfig(epochs=10, batch_size=16, warmup_epochs=1, betas=(0.5, 0.999),
                    weight_decay=0.0, grad_clip=1.0, lr_scale=1.0, seed=111,
                    keep_epoch_checkpoints=False, self_reference=False,
                    lr_schedule='warmup_cosine', optimizer='adam', momentum=0.9,
                    min_lr=0.0)
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
    self_reference: bool = False
    lr_schedule: Literal["warmup_cosine", "constant", "cosine"] = "warmup_cosine"
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = 0.9
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        fn = "TrainConfig"
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"{fn}: `optimizer` must be one of {OPTIMIZERS}; got {self.optimizer!r}"
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"{fn}: `lr_schedule` must be one of {LR_SCHEDULES}; got {self.lr_schedule!r}"
            )
        if not isinstance(self.self_reference, bool):
            raise ValueError(f"{fn}: `self_reference` must be a bool; got {self.self_reference!r}")
        for name, low in (("epochs", 1), ("batch_size", 1), ("warmup_epochs", 0), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{fn}: `{name}` must be an int >= {low}; got {value!r}")
        betas = tuple(self.betas)
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
            raise ValueError(f"{fn}: `betas` must be two numbers in [0, 1); got {self.betas!r}")
        object.__setattr__(self, "betas", (float(betas[0]), float(betas[1])))
        for name, optional in (
            ("weight_decay", False),
            ("grad_clip", True),
            ("lr_scale", False),
            ("momentum", False),
            ("min_lr", False),
        ):
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
        """Res²CLIP's settings (paper + official code); ``overrides`` replace fields."""
        return cls(**overrides)

    @classmethod
    def afclip(cls, **overrides: Any) -> TrainConfig:
        """AF-CLIP's training (paper Sec. 4.1 + official code Faustinaqq/AF-CLIP ``main.py``).

        2 epochs, batch 8, Adam β = (0.5, 0.999) (code; the paper says only "Adam"), no
        weight decay, no warm-up, no scheduler (``lr_schedule="constant"``), no gradient
        clipping, seed 122 (the code's default). The learning rate (1e-4) is
        ``AFCLIPConfig.lr``. ``overrides`` replace fields.

        Example:
            >>> from resad_kit.engine.training import TrainConfig
            >>> c = TrainConfig.afclip()
            >>> c.epochs, c.batch_size, c.warmup_epochs, c.grad_clip, c.seed, c.lr_schedule
            (2, 8, 0, None, 122, 'constant')
        """
        values: dict[str, Any] = {
            "epochs": 2,
            "batch_size": 8,
            "warmup_epochs": 0,
            "betas": (0.5, 0.999),
            "weight_decay": 0.0,
            "grad_clip": None,
            "seed": 122,
            "lr_schedule": "constant",
        }
        return cls(**{**values, **overrides})

    @classmethod
    def finegrainedad(cls, **overrides: Any) -> TrainConfig:
        """FineGrainedAD's training (released code RetoFan233/FineGrainedAD,
        ``train_seg_finegrained_patch.py``, built on PromptAD).

        SGD (lr ``FineGrainedADConfig.lr`` = 2e-3), momentum 0.9, weight decay 5e-4,
        ``CosineAnnealingLR(T_max=100, eta_min=1e-5)`` over 100 epochs, no warm-up, no
        gradient clipping, seed 111. One step per epoch: the batch is all ``K`` shots
        (``batch_size=16`` ≥ any ``K`` of the protocol), so the per-step cosine equals the
        code's per-epoch one. ``overrides`` replace fields.

        Example:
            >>> from resad_kit.engine.training import TrainConfig
            >>> c = TrainConfig.finegrainedad()
            >>> c.optimizer, c.momentum, c.weight_decay, c.lr_schedule, c.min_lr, c.epochs
            ('sgd', 0.9, 0.0005, 'cosine', 1e-05, 100)
        """
        values: dict[str, Any] = {
            "epochs": 100,
            "batch_size": 16,
            "warmup_epochs": 0,
            "weight_decay": 5e-4,
            "grad_clip": None,
            "seed": 111,
            "lr_schedule": "cosine",
            "optimizer": "sgd",
            "momentum": 0.9,
            "min_lr": 1e-5,
        }
        return cls(**{**values, **overrides})


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What :func:`~resad_kit.engine.training.train` returns.

    Attributes:
        checkpoint: the latest checkpoint file.
        history: one dict per step: ``epoch``, ``step`` (global, 0-based), ``phase``, the
            loss terms ``model.losses`` returned (Res²CLIP: ``text``, ``visual``,
            ``residual``, ``total``; mean over all ranks) and ``lr`` (``{optimiser: lr of
            its first parameter group in this step}`` for the optimisers that stepped;
            Res²CLIP's ``residual_visual``'s first group is ``A^res_{v,l}``).
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

        See :func:`~resad_kit.engine.training.train` for a real run.
    """

    checkpoint: Path
    history: tuple[dict[str, Any], ...]
    epoch_losses: tuple[dict[str, Any], ...]
    epochs: int
    global_step: int
