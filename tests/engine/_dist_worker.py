"""Worker for the multi-process tests of ``resad_kit.engine.distributed``.

Run by ``tests/engine/test_distributed.py`` once per rank, with the ``torchrun``
environment variables set (or under ``torchrun`` itself)::

    python tests/engine/_dist_worker.py shard,collectives,ddp OUT_DIR

Each rank runs the named scenarios in order and saves a dict ``{scenario: result}`` to
``OUT_DIR/rank{RANK}.pt``. The scenario functions take a ``DistContext`` (or ``None``),
so the tests call the very same functions in one process to get the reference results.
Importing this module has no side effects.
"""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

import torch
from torch import nn

from resad_kit.engine.distributed import (
    DistContext,
    all_reduce_mean_,
    barrier,
    broadcast_object,
    cleanup,
    gather,
    init_distributed,
    seed_everything,
    shard,
    unshard,
    unwrap_ddp,
    wrap_ddp,
)

GLOBAL_BATCH = 8
IN_DIM, HIDDEN, OUT_DIM = 6, 8, 2


def work_items() -> list[str]:
    """23 work items (an odd count, so the two shards differ in length)."""
    return [f"hazelnut/test/crack/{i:03d}.png" for i in range(23)]


def compute(item: str) -> torch.Tensor:
    """A deterministic per-item result (stands in for a per-image anomaly map)."""
    g = torch.Generator().manual_seed(zlib.crc32(item.encode()))
    x = torch.randn(4, 4, generator=g)
    return torch.softmax(x @ x.T, dim=-1)


def run_sharded(ctx: DistContext | None) -> dict[str, object]:
    """Shard the items, compute this rank's part, gather and merge in the original order."""
    mine = shard(work_items(), ctx)
    local = [(item, compute(item)) for item in mine]
    merged = unshard(gather(local, ctx))
    return {"mine": mine, "merged": merged}


def run_collectives(ctx: DistContext | None) -> dict[str, object]:
    rank = 0 if ctx is None else ctx.rank
    config = broadcast_object({"seed": 111, "from": rank} if rank == 0 else None, ctx)
    tensors = [torch.tensor([rank + 1.0]), torch.tensor([[2.0 * rank, 1.0]])]
    all_reduce_mean_(tensors, ctx)
    barrier(ctx)
    return {"config": config, "means": tensors, "ranks": gather(rank, ctx)}


class FrozenTrunkNet(nn.Module):
    """A frozen linear trunk (the backbone) and two trainable heads (the adapters)."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(IN_DIM, HIDDEN)
        self.trunk.requires_grad_(False)
        self.visual = nn.Linear(HIDDEN, OUT_DIM)
        self.text = nn.Linear(HIDDEN, OUT_DIM)

    def forward(self, x: torch.Tensor, phase: str = "both") -> torch.Tensor:
        h = torch.tanh(self.trunk(x))
        if phase == "visual":
            return self.visual(h)
        if phase == "text":
            return self.text(h)
        return self.visual(h) + self.text(h)


def _global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(GLOBAL_BATCH, IN_DIM, generator=g), torch.randn(
        GLOBAL_BATCH, OUT_DIM, generator=g
    )


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def train(
    ctx: DistContext | None,
    *,
    steps: int = 3,
    alternate: bool = False,
    find_unused_parameters: bool = True,
    rows: list[int] | None = None,
) -> dict[str, object]:
    """Train :class:`FrozenTrunkNet` with Adam on this rank's half of each global batch.

    ``alternate`` switches the phase every step (only that head is used and only its
    optimiser steps), like Res²CLIP's visual/text alternation. ``rows`` overrides the
    rows of the global batch this process trains on (default: its shard).
    """
    seed_everything(0, ctx)
    net = FrozenTrunkNet()
    init = _state(net)
    model = wrap_ddp(net, ctx, find_unused_parameters=find_unused_parameters)
    optims = {
        name: torch.optim.Adam(getattr(net, name).parameters(), lr=1e-2, betas=(0.5, 0.999))
        for name in ("visual", "text")
    }
    rows = shard(range(GLOBAL_BATCH), ctx) if rows is None else rows
    with_grad = []
    for step in range(steps):
        phase = ("visual", "text")[step % 2] if alternate else "both"
        x, y = _global_batch(step)
        loss = nn.functional.mse_loss(model(x[rows], phase), y[rows])
        loss.backward()
        with_grad.append(sorted(n for n, p in net.named_parameters() if p.grad is not None))
        for name, opt in optims.items():
            if phase in (name, "both"):
                opt.step()
            opt.zero_grad(set_to_none=True)
    return {
        "init": init,
        "final": _state(unwrap_ddp(model)),
        "rows": list(rows),
        "with_grad": with_grad,
    }


def run_unused_without_flag(ctx: DistContext | None) -> str:
    """Alternating phases with ``find_unused_parameters=False``: DDP refuses (message)."""
    try:
        train(ctx, steps=2, alternate=True, find_unused_parameters=False)
    except RuntimeError as err:
        return str(err)
    return ""


SCENARIOS = {
    "shard": run_sharded,
    "collectives": run_collectives,
    "ddp": lambda ctx: train(ctx),
    "alternating": lambda ctx: train(ctx, steps=4, alternate=True),
    # Leaves the DDP reducer of that model broken: keep it last.
    "unused_without_flag": run_unused_without_flag,
}


def main(argv: list[str]) -> None:
    names, out_dir = argv[0].split(","), Path(argv[1])
    torch.set_num_threads(1)
    ctx = init_distributed(device="cpu")
    try:
        results = {name: SCENARIOS[name](ctx) for name in names}
        torch.save(
            {"ctx": (ctx.rank, ctx.world_size, ctx.local_rank, ctx.backend), **results},
            out_dir / f"rank{ctx.rank}.pt",
        )
    finally:
        cleanup(ctx)


if __name__ == "__main__":
    main(sys.argv[1:])
