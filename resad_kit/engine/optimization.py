"""Optimisers and learning-rate schedules of :func:`~resad_kit.engine.training.train`.

Built from what the method declares (:meth:`~resad_kit.methods.Method.optimizer_groups`):
one Adam (β and weight decay from :class:`~resad_kit.engine.TrainConfig`) or, with
``TrainConfig.optimizer="sgd"`` (FineGrainedAD), one SGD (momentum and weight decay) per
:class:`~resad_kit.methods.OptimizerGroup`, one parameter group per ``(module, lr)`` pair at
``lr × TrainConfig.lr_scale``, and a warm-up + cosine ``LambdaLR``
(:mod:`resad_kit.engine.schedule`) counted in that optimiser's own active steps, or a
constant learning rate (``TrainConfig.lr_schedule="constant"``, AF-CLIP), or a
``CosineAnnealingLR`` to ``TrainConfig.min_lr`` over its active steps
(``lr_schedule="cosine"``, FineGrainedAD). An
optimiser steps only in the epochs of its phases, each step after clipping its gradients
(``TrainConfig.grad_clip``).

For Res²CLIP these are the official code's four optimisers: ``visual`` (``A_{v,l}``),
``residual_visual`` (``A^res_{v,l}`` and ``A^res_{v,cls}``, the latter in its own
parameter group so that it keeps its own lr), ``residual_text`` (``A_t^res``) and ``text``
(``A_t``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR

from resad_kit.engine.schedule import active_epochs, warmup_cosine_scheduler
from resad_kit.engine.train_config import TrainConfig
from resad_kit.methods import Method, OptimizerGroup, TrainingBatch

__all__ = ["LossModule", "Optimization", "build_optimization", "step_optimizers"]


class ConstantFactor:
    """The factor 1 for ``LambdaLR`` (``TrainConfig.lr_schedule="constant"``), picklable."""

    def __call__(self, step: int) -> float:
        return 1.0

    def __repr__(self) -> str:
        return "ConstantFactor()"


class LossModule(nn.Module):
    """``model.losses`` as a module forward, so that ``DistributedDataParallel`` can wrap it."""

    def __init__(self, model: Method) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: TrainingBatch, phase: str) -> dict[str, Tensor]:
        return self.model.losses(batch, phase)


class Optimization:
    """The optimisers of a run, their schedulers and the phases in which each steps.

    Attributes:
        optimizers: ``{group name: torch.optim.Adam or SGD}`` in the method's order.
        schedulers: ``{group name: LambdaLR or CosineAnnealingLR}``.
        phases: ``{group name: the phases in which it steps}``.
    """

    def __init__(
        self,
        optimizers: dict[str, torch.optim.Optimizer],
        schedulers: dict[str, Any],
        phases: dict[str, tuple[str, ...]],
    ) -> None:
        self.optimizers, self.schedulers, self.phases = optimizers, schedulers, phases

    def active(self, phase: str) -> list[str]:
        """Names of the optimisers that step in ``phase``, in order."""
        return [name for name in self.optimizers if phase in self.phases[name]]


def _check_groups(fn: str, model: Method, groups: Sequence[OptimizerGroup]) -> None:
    names = [g.name for g in groups] if isinstance(groups, Sequence) else []
    if not names or not all(isinstance(g, OptimizerGroup) for g in groups):
        raise ValueError(
            f"{fn}: {type(model).__name__}.optimizer_groups() must return a non-empty list "
            f"of OptimizerGroup for a trainable model; got {groups!r}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"{fn}: optimizer group names must be unique; got {names}")
    seen: set[int] = set()
    for g in groups:
        unknown = set(g.phases) - set(model.phases)
        if not g.phases or unknown:
            raise ValueError(
                f"{fn}: optimizer group {g.name!r} must step in a non-empty subset of the "
                f"model's phases {list(model.phases)}; got {list(g.phases)}"
            )
        for module, lr in g.params:
            ids = {id(p) for p in module.parameters()}
            if ids & seen:
                raise ValueError(f"{fn}: a parameter is in two groups (again in {g.name!r})")
            seen |= ids
            if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr >= 0:
                raise ValueError(f"{fn}: group {g.name!r} has learning rate {lr!r}; need >= 0")


def build_optimization(model: Method, config: TrainConfig, steps_per_epoch: int) -> Optimization:
    """One optimiser and one learning-rate schedule per declared optimiser group.

    Args:
        model: a trainable :class:`~resad_kit.methods.Method`.
        config: the :class:`~resad_kit.engine.TrainConfig` (``optimizer``, β or momentum,
            weight decay, ``lr_scale``, ``epochs``, ``warmup_epochs``, ``lr_schedule``,
            ``min_lr``).
        steps_per_epoch: batches per epoch.

    Returns:
        :class:`Optimization`. Each optimiser warms up over ``warmup_epochs`` epochs of its
        own steps and decays over all its active steps (at least one epoch's); with
        ``lr_schedule="constant"`` it keeps the group's learning rate; with
        ``lr_schedule="cosine"`` it decays from the group's rate to ``min_lr`` over all its
        active steps, without warm-up.

    Raises:
        ValueError: no groups, duplicate names, phases outside ``model.phases``, a
            parameter in two groups or a negative learning rate.

    Example:
        >>> from resad_kit.clip import ClipBackbone
        >>> from resad_kit.engine.optimization import build_optimization
        >>> from resad_kit.engine.training import TrainConfig
        >>> from resad_kit.methods import Res2CLIP, Res2CLIPConfig
        >>> model = Res2CLIP(ClipBackbone.tiny(), Res2CLIPConfig.paper(mode="fine_tuned"))
        >>> opt = build_optimization(model, TrainConfig.paper(epochs=4), steps_per_epoch=3)
        >>> list(opt.optimizers)
        ['visual', 'residual_visual', 'residual_text', 'text']
        >>> opt.active("text")
        ['visual', 'residual_text', 'text']
        >>> [g["lr"] for g in opt.optimizers["residual_visual"].param_groups]  # warm-up: 0
        [0.0, 0.0]
    """
    fn = "train"
    groups = model.optimizer_groups()
    _check_groups(fn, model, groups)
    optimizers: dict[str, torch.optim.Optimizer] = {}
    schedulers: dict[str, Any] = {}
    phases: dict[str, tuple[str, ...]] = {}
    for group in groups:
        params = [
            {"name": f"{group.name}.{i}", "params": list(module.parameters()), "lr": lr}
            for i, (module, lr) in enumerate(group.params)
        ]
        for p in params:
            p["lr"] = p["lr"] * config.lr_scale
        if config.optimizer == "sgd":
            optimizers[group.name] = torch.optim.SGD(
                params, lr=params[0]["lr"], momentum=config.momentum,
                weight_decay=config.weight_decay,
            )  # fmt: skip
        else:
            optimizers[group.name] = torch.optim.Adam(
                params, betas=config.betas, weight_decay=config.weight_decay
            )
        phases[group.name] = tuple(group.phases)
        total = active_epochs(config.epochs, group.phases, model.phases) * steps_per_epoch
        if config.lr_schedule == "constant":
            schedulers[group.name] = LambdaLR(optimizers[group.name], ConstantFactor())
        elif config.lr_schedule == "cosine":
            schedulers[group.name] = CosineAnnealingLR(
                optimizers[group.name], T_max=max(total, 1), eta_min=config.min_lr
            )
        else:
            schedulers[group.name] = warmup_cosine_scheduler(
                optimizers[group.name],
                config.warmup_epochs * steps_per_epoch,
                max(total, steps_per_epoch),
            )
    return Optimization(optimizers, schedulers, phases)


def step_optimizers(
    optimization: Optimization, names: Sequence[str], grad_clip: float | None
) -> Mapping[str, float]:
    """Clip, step and advance the schedule of the optimisers ``names``; their lr before.

    Args:
        optimization: the run's :class:`Optimization`.
        names: the optimisers active in this step.
        grad_clip: max-norm of each optimiser's gradients (``None``: no clipping).

    Returns:
        ``{name: lr of its first parameter group in this step}``.
    """
    lrs = {}
    for name in names:
        optimizer = optimization.optimizers[name]
        lrs[name] = optimizer.param_groups[0]["lr"]
        if grad_clip is not None:
            params = [p for g in optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        optimization.schedulers[name].step()
    return lrs
