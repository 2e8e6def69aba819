"""Checks of :func:`~resad_kit.engine.training.train`: the process split and the loss terms."""

from __future__ import annotations

import logging

from resad_kit.engine.distributed import DistContext
from resad_kit.methods import Method

__all__: list[str] = []

logger = logging.getLogger("resad_kit.engine.training")


def _check_dist(dist: DistContext | None, model: Method, n: int, batch_size: int) -> None:
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
    if getattr(model.config, "loss_reduction", None) == "batch":  # Res2CLIP's batch norm
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


def _loss_keys(losses: object, keys: tuple[str, ...] | None) -> tuple[str, ...]:
    """The loss terms of a step; the same in every step of a run, ``"total"`` among them."""
    fn = "train"
    if not isinstance(losses, dict) or "total" not in losses:
        raise ValueError(f"{fn}: model.losses must return a dict with a 'total' entry")
    now = tuple(losses)
    if keys is not None and now != keys:
        raise ValueError(f"{fn}: model.losses returned the terms {list(now)}, before {list(keys)}")
    return now
