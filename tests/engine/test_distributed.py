"""Tests of resad_kit.engine.distributed: sharding, collectives and DDP on 2 gloo processes.

The multi-process tests start two CPU workers (``_dist_worker.py``) with the environment
``torchrun`` sets, once for the whole module, and compare what each rank computed with
the same functions run in this single process.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

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

WORKER_PATH = Path(__file__).with_name("_dist_worker.py")
WORLD = 2
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _load_worker():
    spec = importlib.util.spec_from_file_location("_dist_worker", WORKER_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


worker = _load_worker()


def _launch(processes, scenarios: list[str], out_dir: Path) -> list[dict]:
    """Run the worker on 2 ranks with the torchrun variables set by hand; load each rank's file."""
    argv = [sys.executable, str(WORKER_PATH), ",".join(scenarios), str(out_dir)]
    processes.wait(processes.start_ranks(argv, WORLD), "distributed workers")
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory, processes) -> list[dict]:
    """The results of every scenario on both ranks (one launch for the module)."""
    out = tmp_path_factory.mktemp("dist")
    return _launch(
        processes, ["shard", "collectives", "ddp", "alternating", "unused_without_flag"], out
    )


def _assert_states_close(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


# --------------------------------------------------------------------- shard / unshard


@given(n=st.integers(0, 40), world=st.integers(1, 6))
def test_shards_partition_items_and_unshard_restores_order(n: int, world: int) -> None:
    items = [f"img{i}" for i in range(n)]
    parts = [shard(items, DistContext(rank=r, world_size=world)) for r in range(world)]
    assert sorted(x for p in parts for x in p) == sorted(items)  # every item exactly once
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert unshard(parts) == items


def test_unshard_rejects_shards_in_the_wrong_order() -> None:
    parts = [shard(list(range(5)), DistContext(rank=r, world_size=2)) for r in range(2)]
    with pytest.raises(ValueError, match=r"shard lengths \[2, 3\]"):
        unshard(parts[::-1])
    with pytest.raises(ValueError, match="non-empty"):
        unshard([])


@pytest.mark.slow
def test_two_ranks_shard_gather_merge_equals_one_process(ranks: list[dict]) -> None:
    items = worker.work_items()
    single = worker.run_sharded(None)
    assert [item for item, _ in single["merged"]] == items
    mine = [r["shard"]["mine"] for r in ranks]
    assert [len(m) for m in mine] == [12, 11]
    assert set(mine[0]).isdisjoint(mine[1])
    for r in ranks:  # every rank holds the whole merged list, in the original order
        merged = r["shard"]["merged"]
        assert [item for item, _ in merged] == items
        for (_, got), (_, want) in zip(merged, single["merged"], strict=True):
            assert torch.equal(got, want)


@pytest.mark.slow
def test_two_ranks_collectives(ranks: list[dict]) -> None:
    assert [r["ctx"] for r in ranks] == [(0, 2, 0, "gloo"), (1, 2, 1, "gloo")]
    for r in ranks:
        out = r["collectives"]
        assert out["config"] == {"seed": 111, "from": 0}  # rank 0's object everywhere
        assert torch.equal(out["means"][0], torch.tensor([1.5]))
        assert torch.equal(out["means"][1], torch.tensor([[1.0, 1.0]]))
        assert out["ranks"] == [0, 1]


# --------------------------------------------------------------------------- DDP


@pytest.mark.slow
def test_ddp_on_two_half_batches_equals_one_process_on_the_full_batch(ranks: list[dict]) -> None:
    single = worker.train(None)
    assert single["rows"] == list(range(worker.GLOBAL_BATCH))
    assert [r["ddp"]["rows"] for r in ranks] == [[0, 2, 4, 6], [1, 3, 5, 7]]
    for r in ranks:
        _assert_states_close(r["ddp"]["final"], single["final"])
        _assert_states_close(r["ddp"]["init"], single["init"], atol=0)
    # the check has teeth: training moved the heads, and half a batch alone ends elsewhere
    moved = single["final"]["visual.weight"] - single["init"]["visual.weight"]
    assert moved.abs().max() > 1e-2
    half = worker.train(None, rows=[0, 2, 4, 6])["final"]["visual.weight"]
    assert (half - single["final"]["visual.weight"]).abs().max() > 1e-3
    # the frozen trunk never changes
    assert torch.equal(single["final"]["trunk.weight"], single["init"]["trunk.weight"])


@pytest.mark.slow
def test_ddp_with_alternating_phases_needs_and_works_with_find_unused(ranks: list[dict]) -> None:
    single = worker.train(None, steps=4, alternate=True)
    visual, text = ["visual.bias", "visual.weight"], ["text.bias", "text.weight"]
    assert single["with_grad"] == [visual, text, visual, text]
    for r in ranks:
        out = r["alternating"]
        assert out["with_grad"] == single["with_grad"]  # unused heads keep grad=None
        _assert_states_close(out["final"], single["final"])
        message = r["unused_without_flag"]
        assert "Expected to have finished reduction in the prior iteration" in message
        assert "find_unused_parameters" in message


# --------------------------------------------------------------------- one process


def test_disabled_context_helpers_are_identities() -> None:
    for ctx in (None, DistContext()):
        items = ["a", "b", "c"]
        assert shard(items, ctx) == items
        assert gather({"x": 1}, ctx) == [{"x": 1}]
        assert broadcast_object("cfg", ctx) == "cfg"
        t = torch.tensor([2.0, 4.0])
        assert all_reduce_mean_([t], ctx)[0] is t
        assert torch.equal(t, torch.tensor([2.0, 4.0]))
        net = torch.nn.Linear(2, 1)
        assert wrap_ddp(net, ctx) is net
        assert unwrap_ddp(net) is net
        barrier(ctx)
        cleanup(ctx)


def test_init_distributed_without_env_is_single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    ctx = init_distributed(device="cpu")
    assert ctx == DistContext(0, 1, 0, torch.device("cpu"), None)
    assert not torch.distributed.is_initialized()
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc_per_node=1
    assert not init_distributed(device="cpu").enabled


def test_collectives_without_process_group_fail_clearly() -> None:
    ctx = DistContext(rank=0, world_size=2, backend="gloo")
    with pytest.raises(RuntimeError, match="no process group is initialised"):
        gather(1, ctx)
    with pytest.raises(RuntimeError, match="no process group is initialised"):
        wrap_ddp(torch.nn.Linear(2, 1), ctx)


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"WORLD_SIZE": "2"}, "RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT not set"),
        ({"RANK": "0"}, "RANK set but WORLD_SIZE missing"),
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE must be an integer; got 'two'"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE must be ≥ 1"),
        (
            {
                "WORLD_SIZE": "2",
                "RANK": "2",
                "LOCAL_RANK": "0",
                "MASTER_ADDR": "x",
                "MASTER_PORT": "1234",
            },
            "RANK must satisfy 0 ≤ RANK < WORLD_SIZE=2; got 2",
        ),
        (
            {
                "WORLD_SIZE": "2",
                "RANK": "0",
                "LOCAL_RANK": "0",
                "MASTER_ADDR": "x",
                "MASTER_PORT": "port",
            },
            "MASTER_PORT must be an integer",
        ),
    ],
)
def test_init_distributed_env_errors(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], match: str
) -> None:
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=match):
        init_distributed(device="cpu")
    assert not torch.distributed.is_initialized()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the errors without CUDA")
def test_init_distributed_device_and_backend_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="asks for CUDA but no CUDA device"):
        init_distributed(device="cuda")
    with pytest.raises(ValueError, match="'nccl' needs a CUDA device"):
        init_distributed(device="cpu", backend="nccl")
    assert init_distributed().device == torch.device("cpu")


def test_context_validation() -> None:
    with pytest.raises(ValueError, match="rank"):
        DistContext(rank=2, world_size=2)
    with pytest.raises(ValueError, match="world_size"):
        DistContext(world_size=0)
    assert DistContext(device="cpu").device == torch.device("cpu")
    assert DistContext(rank=1, world_size=2).enabled
    with pytest.raises(TypeError, match="DistContext or None"):
        shard([1], ctx="rank0")


def test_seed_everything_same_or_per_rank() -> None:
    assert seed_everything(7, DistContext(rank=1, world_size=2)) == 7
    assert seed_everything(7, DistContext(rank=1, world_size=2), per_rank=True) == 8
    seed_everything(3)
    a = np.random.rand(), torch.rand(3)  # noqa: NPY002 - the global generator is what is seeded
    seed_everything(3)
    b = np.random.rand(), torch.rand(3)  # noqa: NPY002
    assert a[0] == b[0]
    assert torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="seed"):
        seed_everything(-1)


# ------------------------------------------------------------------------ torchrun


@pytest.mark.slow
def test_same_worker_under_torchrun(tmp_path: Path, processes) -> None:
    """The real launcher: ``torchrun --standalone --nproc_per_node=2`` (it picks the port)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={WORLD}",
        str(WORKER_PATH),
        "shard",
        str(tmp_path),
    ]
    processes.wait([processes.start(cmd)], "torchrun")
    single = worker.run_sharded(None)["merged"]
    for r in range(WORLD):
        out = torch.load(tmp_path / f"rank{r}.pt")
        assert out["ctx"] == (r, WORLD, r, "gloo")
        assert [item for item, _ in out["shard"]["merged"]] == worker.work_items()
        assert all(
            torch.equal(a, b) for (_, a), (_, b) in zip(out["shard"]["merged"], single, strict=True)
        )
