"""The training schedule (paper Sec. 3.7, App. F.2): phases of epochs, warm-up + cosine.

- :func:`phase_of_epoch`: the phase a 0-based epoch trains: ``schedule[epoch % len(schedule)]``
  for a method's :attr:`~resad_kit.methods.Method.phases`. Res²CLIP alternates
  ``("visual", "text")``: even epochs update the visual side of the residual branch, odd
  epochs its text side.
- :func:`active_epochs`: in how many of ``epochs`` epochs an optimiser steps, given the
  phases in which it is active.
- :func:`warmup_cosine`, :class:`WarmupCosine`, :func:`warmup_cosine_scheduler`: the
  learning-rate factor of one optimiser, linear warm-up from 0 then a half cosine to 0.

Each optimiser counts **its own** steps: its ``LambdaLR`` is stepped only when the
optimiser is, so Res²CLIP's residual optimisers, active every other epoch, warm up during
their first active epoch and decay over their active steps only (official code; the paper
only says "one warm-up epoch").

The factor at step 0 is 0, so the very first optimiser step of every optimiser runs at
learning rate 0 (a ``LambdaLR`` artefact of the official code, kept for fidelity: the
first step leaves the weights unchanged but does update Adam's moments).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from resad_kit.ops._phases import PHASES

__all__ = [
    "WarmupCosine",
    "active_epochs",
    "phase_of_epoch",
    "warmup_cosine",
    "warmup_cosine_scheduler",
]


def _check_count(fn: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{fn}: `{name}` must be an int >= 0; got {value!r}")
    return value


def _check_schedule(fn: str, schedule: Sequence[str]) -> tuple[str, ...]:
    if isinstance(schedule, str) or not schedule or not all(isinstance(p, str) for p in schedule):
        raise ValueError(
            f"{fn}: `schedule` must be a non-empty sequence of phase names; got {schedule!r}"
        )
    return tuple(schedule)


def phase_of_epoch(epoch: int, schedule: Sequence[str] = PHASES) -> str:
    """The phase trained in a 0-based epoch: ``schedule[epoch % len(schedule)]``.

    Args:
        epoch: 0-based epoch index.
        schedule: the phases in the order epochs cycle through them (a method's
            ``phases``); default Res²CLIP's ``("visual", "text")``.

    Returns:
        The phase. For Res²CLIP, ``"visual"`` for even epochs (the first one included):
        ``A^res_{v,l}`` and ``A^res_{v,cls}`` are trained with ``A_t^res`` frozen;
        ``"text"`` for odd epochs: ``A_t^res`` is trained with the residual visual adapters
        frozen. ``A_t`` and ``A_{v,l}`` are trained in both.

    Example:
        >>> from resad_kit.engine.schedule import phase_of_epoch
        >>> [phase_of_epoch(e) for e in range(4)]
        ['visual', 'text', 'visual', 'text']
        >>> phase_of_epoch(3, ("train",))  # a one-phase method trains every epoch
        'train'
    """
    fn = "phase_of_epoch"
    epoch = _check_count(fn, "epoch", epoch)
    schedule = _check_schedule(fn, schedule)
    return schedule[epoch % len(schedule)]


def active_epochs(epochs: int, phases: Collection[str], schedule: Sequence[str] = PHASES) -> int:
    """How many of ``epochs`` epochs have a phase in ``phases``.

    Args:
        epochs: total number of epochs.
        phases: the phases in which an optimiser steps, a non-empty subset of ``schedule``.
        schedule: the cycle of phases (see :func:`phase_of_epoch`).

    Returns:
        For Res²CLIP: ``epochs`` for both phases (``A_t``, ``A_{v,l}``), ``ceil(epochs / 2)``
        for ``{"visual"}`` (residual visual adapters), ``floor(epochs / 2)`` for ``{"text"}``
        (``A_t^res``).

    Example:
        >>> from resad_kit.engine.schedule import active_epochs
        >>> active_epochs(10, {"visual", "text"}), active_epochs(9, {"visual"})
        (10, 5)
        >>> active_epochs(9, {"text"}), active_epochs(9, {"train"}, ("train",))
        (4, 9)
    """
    fn = "active_epochs"
    _check_count(fn, "epochs", epochs)
    schedule = _check_schedule(fn, schedule)
    unknown = set(phases) - set(schedule)
    if unknown or not phases:
        raise ValueError(
            f"{fn}: `phases` must be a non-empty subset of {list(dict.fromkeys(schedule))}; "
            f"got {sorted(phases)}"
        )
    return sum(1 for e in range(epochs) if phase_of_epoch(e, schedule) in phases)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    r"""Learning-rate factor: linear warm-up from 0, then a half cosine to 0 (paper App. F.2).

    .. math::

        \lambda(s) = \begin{cases}
            s / W & s < W \\
            \tfrac12\,(1 + \cos(\pi\,p)), \quad
            p = \min\!\big(1, (s - W) / \max(1, T - W)\big) & s \ge W
        \end{cases}

    with ``W = warmup_steps`` and ``T = total_steps`` (the optimiser's own steps).
    ``W = 0`` means no warm-up (the factor starts at 1). Past ``T`` the factor stays 0.

    Args:
        step: the optimiser's own step count ``s`` (0 for its first step).
        warmup_steps: ``W`` (official: one epoch of steps).
        total_steps: ``T``, all active steps of the optimiser, warm-up included.

    Returns:
        The factor in ``[0, 1]`` that ``LambdaLR`` multiplies the base learning rate by.

    Example:
        >>> from resad_kit.engine.schedule import warmup_cosine
        >>> [round(warmup_cosine(s, 2, 6), 3) for s in range(7)]
        [0.0, 0.5, 1.0, 0.854, 0.5, 0.146, 0.0]
        >>> warmup_cosine(0, 0, 4)  # no warm-up
        1.0
    """
    fn = "warmup_cosine"
    _check_count(fn, "step", step)
    _check_count(fn, "warmup_steps", warmup_steps)
    _check_count(fn, "total_steps", total_steps)
    if step < warmup_steps:
        return step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


class WarmupCosine:
    """:func:`warmup_cosine` as a picklable callable for ``LambdaLR``.

    ``LambdaLR.state_dict()`` stores the attributes of a callable object (not of a
    plain function), so the warm-up and total steps travel with a checkpoint.

    Args:
        warmup_steps: see :func:`warmup_cosine`.
        total_steps: see :func:`warmup_cosine`.

    Example:
        >>> from resad_kit.engine.schedule import WarmupCosine
        >>> WarmupCosine(2, 6)(1)
        0.5
    """

    def __init__(self, warmup_steps: int, total_steps: int) -> None:
        self.warmup_steps = _check_count("WarmupCosine", "warmup_steps", warmup_steps)
        self.total_steps = _check_count("WarmupCosine", "total_steps", total_steps)

    def __call__(self, step: int) -> float:
        return warmup_cosine(step, self.warmup_steps, self.total_steps)

    def __repr__(self) -> str:
        return f"WarmupCosine(warmup_steps={self.warmup_steps}, total_steps={self.total_steps})"


def warmup_cosine_scheduler(optimizer: Optimizer, warmup_steps: int, total_steps: int) -> LambdaLR:
    """A ``LambdaLR`` with the :class:`WarmupCosine` factor for every parameter group.

    Step it right after its optimiser, and only when the optimiser steps, so that the
    schedule counts the optimiser's own steps. On creation it sets every group's ``lr``
    to ``base_lr · factor(0) = 0`` (with warm-up), so the first step runs at lr 0.

    Args:
        optimizer: the optimiser; every group's ``lr`` becomes its base learning rate.
        warmup_steps: linear warm-up length, in the optimiser's own steps.
        total_steps: all active steps of the optimiser.

    Returns:
        The scheduler.

    Example:
        >>> import torch
        >>> from resad_kit.engine.schedule import warmup_cosine_scheduler
        >>> w = torch.nn.Parameter(torch.zeros(1))
        >>> opt = torch.optim.Adam([w], lr=1e-3)
        >>> sched = warmup_cosine_scheduler(opt, warmup_steps=2, total_steps=4)
        >>> lrs = []
        >>> for _ in range(4):
        ...     lrs.append(opt.param_groups[0]["lr"])
        ...     opt.step()
        ...     sched.step()
        >>> lrs
        [0.0, 0.0005, 0.001, 0.0005]
    """
    return LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps))
