"""Multi-process helpers for ``torchrun``: process group, sharding, gathering, DDP.

The same script runs in one process or under ``torchrun --nproc_per_node=N``:

* :func:`init_distributed` (defined in :mod:`resad_kit.engine.dist_context`, with
  :class:`DistContext` and :func:`cleanup`) reads the environment that ``torchrun`` sets (``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and returns a
  :class:`DistContext`. Without those variables (or with ``WORLD_SIZE=1``) the context is
  *disabled*: no process group is created and every helper below is the identity.
* Evaluation is sharded: rank ``r`` of ``W`` takes ``items[r::W]`` (:func:`shard`), the
  per-rank results are collected with :func:`gather` and put back in the original order
  with :func:`unshard`; the result is the list a single process would have built.
* Training wraps the module in ``DistributedDataParallel`` (:func:`wrap_ddp`), with
  ``find_unused_parameters=True`` by default because a method's phases may leave some of
  its parameters without a gradient in a step (Res²CLIP's alternating phases do).

Every helper accepts ``ctx=None`` as a shorthand for the disabled single-process context.
Collective helpers (:func:`gather`, :func:`broadcast_object`, :func:`all_reduce_mean_`,
:func:`barrier`) must be called by every rank, in the same order.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from resad_kit.engine.dist_context import (
    TORCHRUN_ENV,
    DistContext,
    _ctx,
    _group,
    cleanup,
    init_distributed,
)
from resad_kit.ops._validation import check_tensor

__all__ = [
    "TORCHRUN_ENV",
    "DistContext",
    "all_reduce_mean_",
    "barrier",
    "broadcast_object",
    "cleanup",
    "gather",
    "init_distributed",
    "seed_everything",
    "shard",
    "unshard",
    "unwrap_ddp",
    "wrap_ddp",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
M = TypeVar("M", bound=nn.Module)


def shard(items: Sequence[T], ctx: DistContext | None) -> list[T]:
    """The items this rank works on: ``items[rank::world_size]`` (round robin).

    The shards of all ranks are disjoint, cover every item exactly once, differ in length
    by at most one, and depend only on ``len(items)``, the rank and the world size, so every
    rank can compute every other rank's shard. :func:`unshard` inverts it.

    Args:
        items: any sequence (a list of paths, ``range(n)`` of indices, ...).
        ctx: the context; ``None`` or disabled returns every item.

    Returns:
        A new list with this rank's items, in their original relative order.

    Example:
        >>> from resad_kit.engine.distributed import DistContext, shard
        >>> items = list("abcdefg")
        >>> shard(items, DistContext(rank=0, world_size=3))
        ['a', 'd', 'g']
        >>> shard(items, DistContext(rank=2, world_size=3))
        ['c', 'f']
        >>> shard(range(4), None)
        [0, 1, 2, 3]
    """
    ctx = _ctx("shard", ctx)
    if not isinstance(items, Sequence):
        raise TypeError(f"shard: `items` must be a sequence; got {type(items).__name__}")
    return list(items[ctx.rank :: ctx.world_size])


def unshard(shards: Sequence[Sequence[T]]) -> list[T]:
    """Merge per-rank shards (e.g. from :func:`gather`) back into the original order.

    ``shards[r]`` must be rank ``r``'s result of :func:`shard` (or one output per item of
    it), so item ``i`` of the original sequence is ``shards[i % W][i // W]``.

    Args:
        shards: the ``W`` per-rank lists, in rank order.

    Returns:
        The merged list, as long as the original sequence.

    Raises:
        ValueError: no shards, or lengths that no :func:`shard` split produces (rank
            ``r`` must hold ``ceil((n - r) / W)`` items).

    Example:
        >>> from resad_kit.engine.distributed import DistContext, shard, unshard
        >>> items = list(range(7))
        >>> parts = [shard(items, DistContext(rank=r, world_size=3)) for r in range(3)]
        >>> parts
        [[0, 3, 6], [1, 4], [2, 5]]
        >>> unshard(parts) == items
        True
    """
    fn = "unshard"
    if not isinstance(shards, Sequence) or len(shards) == 0:
        raise ValueError(
            f"unshard: `shards` must be a non-empty sequence of per-rank lists; got {shards!r}"
        )
    world = len(shards)
    lengths = [len(s) for s in shards]
    n = sum(lengths)
    expected = [len(range(r, n, world)) for r in range(world)]
    if lengths != expected:
        raise ValueError(
            f"{fn}: shard lengths {lengths} do not come from splitting {n} items over "
            f"{world} ranks round robin (expected {expected}); pass the shards in rank order"
        )
    merged: list[T] = []
    for i in range(n):
        merged.append(shards[i % world][i // world])
    return merged


def gather(obj: Any, ctx: DistContext | None) -> list[Any]:
    """Collect one picklable object from every rank (``all_gather_object``) on every rank.

    Move tensors to the CPU first: a CUDA tensor is unpickled onto the sender's device.

    Args:
        obj: this rank's object.
        ctx: the context; ``None`` or disabled returns ``[obj]``.

    Returns:
        The ``W`` objects in rank order (this rank's own at index ``ctx.rank``).

    Example:
        >>> from resad_kit.engine.distributed import gather
        >>> gather({"scores": [0.5]}, None)
        [{'scores': [0.5]}]
    """
    ctx = _group("gather", ctx)
    if ctx is None:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, ctx: DistContext | None, src: int = 0) -> Any:
    """Send rank ``src``'s picklable object to every rank; return it everywhere.

    Args:
        obj: the object on rank ``src`` (ignored on the other ranks).
        ctx: the context; ``None`` or disabled returns ``obj``.
        src: the sending rank.

    Example:
        >>> from resad_kit.engine.distributed import broadcast_object
        >>> broadcast_object({"run": "2026-11-23"}, None)
        {'run': '2026-11-23'}
    """
    fn = "broadcast_object"
    world = _ctx(fn, ctx).world_size
    if isinstance(src, bool) or not isinstance(src, int) or not 0 <= src < world:
        raise ValueError(f"{fn}: `src` must be a rank in [0, {world}); got {src!r}")
    group = _group(fn, ctx)
    if group is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean_(
    tensors: torch.Tensor | Sequence[torch.Tensor], ctx: DistContext | None
) -> torch.Tensor | Sequence[torch.Tensor]:
    """Replace each tensor in place by its mean over the ranks (sum, then divide by ``W``).

    Args:
        tensors: one floating tensor or a sequence of them, same shapes on every rank and on
            the backend's device (CUDA for ``nccl``).
        ctx: the context; ``None`` or disabled leaves the tensors unchanged.

    Returns:
        ``tensors`` itself (modified in place).

    Example:
        >>> import torch
        >>> from resad_kit.engine.distributed import all_reduce_mean_
        >>> loss = torch.tensor([0.25, 0.5])
        >>> all_reduce_mean_(loss, None) is loss
        True
    """
    fn = "all_reduce_mean_"
    single = isinstance(tensors, torch.Tensor)
    seq = [tensors] if single else tensors
    if not isinstance(seq, Sequence):
        raise TypeError(
            f"{fn}: `tensors` must be a tensor or a sequence of tensors; "
            f"got {type(tensors).__name__}"
        )
    for i, t in enumerate(seq):
        check_tensor(fn, "tensors" if single else f"tensors[{i}]", t, nonempty=False)
    group = _group(fn, ctx)
    if group is None:
        return tensors
    for t in seq:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(group.world_size)
    return tensors


def barrier(ctx: DistContext | None) -> None:
    """Wait until every rank reaches this point (no-op when disabled).

    Example:
        >>> from resad_kit.engine.distributed import barrier
        >>> barrier(None)

    """
    group = _group("barrier", ctx)
    if group is None:
        return
    if group.backend == "nccl" and group.device.type == "cuda":
        dist.barrier(device_ids=[group.device.index])
    else:
        dist.barrier()


def wrap_ddp(
    module: M,
    ctx: DistContext | None,
    find_unused_parameters: bool = True,
) -> M | DistributedDataParallel:
    """Wrap a module in ``DistributedDataParallel``; return it unchanged when disabled.

    DDP averages the gradients of the trainable parameters over the ranks during
    ``backward``; parameters with ``requires_grad=False`` (a frozen backbone) take no part.
    ``find_unused_parameters=True`` lets a forward leave some trainable parameters without a
    gradient (Res²CLIP's alternating phases do); such parameters keep ``grad=None``, as in a
    single process. Rank 0's parameters and buffers are copied to all ranks at construction
    (the buffers again before every forward, DDP's default).

    Args:
        module: the module, already on ``ctx.device``; a DDP module is returned as is.
        ctx: the context; ``None`` or disabled returns ``module`` itself.
        find_unused_parameters: passed to DDP.

    Returns:
        The DDP wrapper (its ``.module`` is ``module``; see :func:`unwrap_ddp`), or ``module``.

    Raises:
        ValueError: no trainable parameter, or parameters on another device than ``ctx``'s.

    Example:
        >>> import torch
        >>> from resad_kit.engine.distributed import wrap_ddp
        >>> net = torch.nn.Linear(3, 1)
        >>> wrap_ddp(net, None) is net
        True
    """
    fn = "wrap_ddp"
    if not isinstance(module, nn.Module):
        raise TypeError(f"{fn}: `module` must be a torch.nn.Module; got {type(module).__name__}")
    group = _group(fn, ctx)
    if group is None or isinstance(module, DistributedDataParallel):
        return module
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(
            f"{fn}: `module` ({type(module).__name__}) has no parameter with "
            f"requires_grad=True; DDP has nothing to synchronise"
        )
    wrong = [(n, p.device) for n, p in trainable if p.device != group.device]
    if wrong:
        name, got = wrong[0]
        raise ValueError(
            f"{fn}: `module` must be on ctx.device={group.device}; parameter {name!r} is on "
            f"{got} — call module.to(ctx.device) first"
        )
    device_ids = [group.device.index] if group.device.type == "cuda" else None
    return DistributedDataParallel(
        module,
        device_ids=device_ids,
        output_device=device_ids[0] if device_ids else None,
        find_unused_parameters=find_unused_parameters,
    )


def unwrap_ddp(module: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (for ``state_dict`` keys without ``module.``).

    Example:
        >>> import torch
        >>> from resad_kit.engine.distributed import unwrap_ddp
        >>> net = torch.nn.Linear(3, 1)
        >>> unwrap_ddp(net) is net
        True
    """
    return module.module if isinstance(module, DistributedDataParallel) else module


def seed_everything(seed: int, ctx: DistContext | None = None, *, per_rank: bool = False) -> int:
    """Seed Python's ``random``, NumPy and torch (CPU and every CUDA device).

    Args:
        seed: a non-negative int.
        ctx: the context, used only with ``per_rank``.
        per_rank: seed ``seed + rank`` instead of the same ``seed`` on every rank (for
            random augmentations that should differ between ranks).

    Returns:
        The seed actually used.

    Example:
        >>> import random, torch
        >>> from resad_kit.engine.distributed import seed_everything
        >>> seed_everything(111)
        111
        >>> a = (random.random(), torch.rand(2))
        >>> _ = seed_everything(111)
        >>> b = (random.random(), torch.rand(2))
        >>> a[0] == b[0] and torch.equal(a[1], b[1])
        True
    """
    fn = "seed_everything"
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"{fn}: `seed` must be an int in [0, 2**32); got {seed!r}")
    used = seed + _ctx(fn, ctx).rank if per_rank else seed
    random.seed(used)
    np.random.seed(used % 2**32)  # noqa: NPY002 - seeding the legacy global generator is the point
    torch.manual_seed(used)
    return used
