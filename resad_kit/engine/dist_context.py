"""The process group of a ``torchrun`` run: :class:`DistContext`, :func:`init_distributed`.

:func:`init_distributed` reads the environment that ``torchrun`` sets (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), picks the device and
backend, initialises the default process group and returns a :class:`DistContext`; without
those variables (or with ``WORLD_SIZE=1``) the context is *disabled* and nothing is
initialised. :func:`cleanup` destroys the group. The collectives, sharding and DDP helpers
that take the context are in :mod:`resad_kit.engine.distributed` (which re-exports these
names).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["TORCHRUN_ENV", "DistContext", "cleanup", "init_distributed"]

logger = logging.getLogger("resad_kit.engine.distributed")

_CPU = torch.device("cpu")

#: The variables ``torchrun`` sets for every worker (``env://`` initialisation).
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a (possibly single-process) job.

    Attributes:
        rank: global rank of this process, ``0 ≤ rank < world_size``.
        world_size: number of processes ``W``; ``1`` means a single process.
        local_rank: rank on this machine (selects the GPU ``cuda:local_rank``).
        device: the device this process computes on (a ``str`` is converted).
        backend: the process-group backend (``"nccl"``, ``"gloo"``), ``None`` when disabled.

    Example:
        >>> from resad_kit.engine.distributed import DistContext
        >>> ctx = DistContext()
        >>> ctx.enabled, ctx.is_main, ctx.device
        (False, True, device(type='cpu'))
        >>> DistContext(rank=1, world_size=2, backend="gloo").is_main
        False
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = _CPU
    backend: str | None = None

    def __post_init__(self) -> None:
        fn = "DistContext"
        for name in ("rank", "world_size", "local_rank"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{fn}: `{name}` must be an int; got {value!r}")
        if self.world_size < 1:
            raise ValueError(f"{fn}: `world_size` must be ≥ 1; got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(
                f"{fn}: `rank` must satisfy 0 ≤ rank < world_size={self.world_size}; "
                f"got {self.rank}"
            )
        if self.local_rank < 0:
            raise ValueError(f"{fn}: `local_rank` must be ≥ 0; got {self.local_rank}")
        object.__setattr__(self, "device", torch.device(self.device))

    @property
    def enabled(self) -> bool:
        """Whether more than one process takes part (collectives communicate)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that writes files and logs progress."""
        return self.rank == 0


def _ctx(fn: str, ctx: DistContext | None) -> DistContext:
    if ctx is None:
        return DistContext()
    if not isinstance(ctx, DistContext):
        raise TypeError(f"{fn}: `ctx` must be a DistContext or None; got {type(ctx).__name__}")
    return ctx


def _group(fn: str, ctx: DistContext | None) -> DistContext | None:
    """The context if collectives must communicate (checked), ``None`` for one process."""
    ctx = _ctx(fn, ctx)
    if not ctx.enabled:
        return None
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"{fn}: `ctx` has world_size={ctx.world_size} but no process group is "
            f"initialised; build the context with init_distributed()"
        )
    return ctx


def _env_int(fn: str, name: str) -> int:
    raw = os.environ[name]
    try:
        return int(raw)
    except ValueError:
        raise ValueError(
            f"{fn}: environment variable {name} must be an integer; got {raw!r}"
        ) from None


def _resolve_device(fn: str, device: str | torch.device | None, local_rank: int) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{fn}: `device` must name a torch device; got {device!r}") from None
    if dev.type != "cuda":
        return dev
    if not torch.cuda.is_available():
        raise ValueError(f"{fn}: `device`={device!r} asks for CUDA but no CUDA device is available")
    index = local_rank if dev.index is None else dev.index
    count = torch.cuda.device_count()
    if index >= count:
        raise ValueError(
            f"{fn}: this process needs cuda:{index} (LOCAL_RANK={local_rank}) but only "
            f"{count} CUDA device(s) are visible; use --nproc_per_node ≤ {count}"
        )
    return torch.device("cuda", index)


def _resolve_backend(fn: str, backend: str | None, device: torch.device) -> str:
    if backend is None:
        if device.type == "cuda" and dist.is_available() and dist.is_nccl_available():
            return "nccl"
        return "gloo"
    if not isinstance(backend, str) or not backend:
        raise ValueError(f"{fn}: `backend` must be a non-empty str or None; got {backend!r}")
    if backend == "nccl" and device.type != "cuda":
        raise ValueError(
            f"{fn}: `backend`='nccl' needs a CUDA device; got device {str(device)!r} "
            f"(use backend='gloo' on CPU)"
        )
    return backend


def init_distributed(
    device: str | torch.device | None = None, backend: str | None = None
) -> DistContext:
    """Join the ``torchrun`` job described by the environment, or run as one process.

    With ``WORLD_SIZE > 1`` in the environment, every variable ``torchrun`` sets (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) must be present; the
    default process group is initialised with ``init_method="env://"`` (or reused when the
    caller already initialised one with the same rank and size). Without ``WORLD_SIZE``,
    or with ``WORLD_SIZE=1``, the context is disabled and no process group is created.

    Args:
        device: ``None`` picks ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``;
            ``"cuda"`` means ``cuda:LOCAL_RANK``; ``"cpu"`` forces the CPU.
        backend: ``None`` picks ``"nccl"`` for a CUDA device and ``"gloo"`` otherwise.

    Returns:
        The :class:`DistContext` of this process. On CUDA the current device is set to
        ``ctx.device``.

    Raises:
        ValueError: incomplete or malformed ``torchrun`` variables (the message names
            them), a CUDA device that is not there, ``backend='nccl'`` without CUDA.

    Example:
        >>> from resad_kit.engine.distributed import init_distributed
        >>> ctx = init_distributed(device="cpu")  # no torchrun variables: one process
        >>> ctx.enabled, ctx.rank, ctx.world_size, ctx.backend
        (False, 0, 1, None)
    """
    fn = "init_distributed"
    env = os.environ
    if "WORLD_SIZE" not in env:
        partial = [name for name in ("RANK", "LOCAL_RANK") if name in env]
        if partial:
            raise ValueError(
                f"{fn}: {', '.join(partial)} set but WORLD_SIZE missing; launch with "
                f"`torchrun --nproc_per_node=N script.py` or set all of {', '.join(TORCHRUN_ENV)}"
            )
        world_size = 1
    else:
        world_size = _env_int(fn, "WORLD_SIZE")
        if world_size < 1:
            raise ValueError(f"{fn}: environment variable WORLD_SIZE must be ≥ 1; got {world_size}")
    if world_size == 1:
        dev = _resolve_device(fn, device, 0)
        _resolve_backend(fn, backend, dev)  # same checks as in a job, so errors show early
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        return DistContext(device=dev)

    missing = [name for name in TORCHRUN_ENV if name not in env]
    if missing:
        raise ValueError(
            f"{fn}: WORLD_SIZE={world_size} but {', '.join(missing)} not set; launch with "
            f"`torchrun --nproc_per_node=N script.py` or set all of {', '.join(TORCHRUN_ENV)}"
        )
    rank = _env_int(fn, "RANK")
    local_rank = _env_int(fn, "LOCAL_RANK")
    port = _env_int(fn, "MASTER_PORT")
    if not 0 <= rank < world_size:
        raise ValueError(
            f"{fn}: environment variable RANK must satisfy 0 ≤ RANK < WORLD_SIZE={world_size}; "
            f"got {rank}"
        )
    if local_rank < 0:
        raise ValueError(f"{fn}: environment variable LOCAL_RANK must be ≥ 0; got {local_rank}")
    if not 0 < port < 65536:
        raise ValueError(f"{fn}: environment variable MASTER_PORT must be a port; got {port}")
    if not dist.is_available():
        raise RuntimeError(f"{fn}: this torch build has no torch.distributed support")
    dev = _resolve_device(fn, device, local_rank)
    chosen = _resolve_backend(fn, backend, dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if dist.is_initialized():
        if (dist.get_rank(), dist.get_world_size()) != (rank, world_size):
            raise RuntimeError(
                f"{fn}: a process group is already initialised with rank "
                f"{dist.get_rank()}/{dist.get_world_size()} but the environment says "
                f"{rank}/{world_size}"
            )
        chosen = str(dist.get_backend())
    else:
        dist.init_process_group(
            backend=chosen, init_method="env://", rank=rank, world_size=world_size
        )
    logger.info(
        "joined process group: rank %d of %d (local rank %d), backend %s, device %s",
        rank,
        world_size,
        local_rank,
        chosen,
        dev,
    )
    return DistContext(rank, world_size, local_rank, dev, chosen)


def cleanup(ctx: DistContext | None) -> None:
    """Destroy the default process group (no-op when disabled or already destroyed).

    Example:
        >>> from resad_kit.engine.distributed import cleanup, init_distributed
        >>> cleanup(init_distributed(device="cpu"))  # single process: nothing to do

    """
    ctx = _ctx("cleanup", ctx)
    if ctx.enabled and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
