"""Sharded evaluation under ``torchrun`` returns what one process returns (issue 6).

Two CPU processes (gloo) run ``_protocol_worker.py`` with the variables ``torchrun`` sets
and call :func:`~resad_kit.engine.protocol.run_evaluation` with ``dist=ctx`` on three
synthetic categories (an uneven shard: rank 0 takes the first and third, rank 1 the
second), for a training-free and a fine-tuned model with deterministically perturbed
adapters. The test runs the same function in its own process (``dist=None``) and
compares: every rank must return the single-process list exactly, having evaluated only
its own categories. The last test launches ``examples/res2clip_full.py`` under the real
launcher (``python -m torch.distributed.run``) and compares its ``metrics.json`` with a
one-process run of the same command.
"""

from __future__ import annotations

import importlib.util
import json
import pickle
import sys
from pathlib import Path

import pytest
import torch

from resad_kit.data import AnomalyDataset, sample_references, synthesize_dataset
from resad_kit.engine.results import load_results

ROOT = Path(__file__).resolve().parents[2]
WORKER_PATH = Path(__file__).with_name("_protocol_worker.py")
EXAMPLE = ROOT / "examples" / "res2clip_full.py"
WORLD = 2


def _load_worker():
    spec = importlib.util.spec_from_file_location("_protocol_worker", WORKER_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


worker = _load_worker()


def _expected_misses(root: Path, category: str) -> int:
    """Images the cache must encode for one category: all test images, each reference once."""
    size = worker.SIZE
    train = AnomalyDataset(root, category, "train", size)
    refs = {
        i
        for k in worker.SHOTS
        for s in worker.SEEDS
        for i in sample_references(train, k, s).indices
    }
    return len(AnomalyDataset(root, category, "test", size)) + len(refs)


def _pngs(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*.png")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, processes) -> dict[str, object]:
    """Both ranks' outputs and the single-process reference (computed while they run)."""
    tmp = tmp_path_factory.mktemp("protocol_ddp")
    root = synthesize_dataset(
        tmp / "data",
        worker.CATEGORIES,
        n_train=worker.N_TRAIN,
        n_test=worker.N_TEST,
        image_size=worker.SIZE,
    )
    procs = processes.start_ranks([sys.executable, str(WORKER_PATH), str(root), str(tmp)], WORLD)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # as in the workers
        single = worker.evaluate(root, tmp / "heatmaps_single", None)
    finally:
        torch.set_num_threads(threads)
        processes.wait(procs, "protocol workers")
    ranks = []
    for r in range(WORLD):
        with (tmp / f"rank{r}.pkl").open("rb") as f:
            ranks.append(pickle.load(f))  # our own worker wrote it
    return {"root": root, "tmp": tmp, "single": single, "ranks": ranks}


@pytest.mark.slow
def test_every_rank_returns_the_single_process_results(runs) -> None:
    single = runs["single"]["results"]
    n = len(worker.CATEGORIES) * len(worker.SHOTS) * len(worker.SEEDS) * 2
    assert len(single) == n
    assert [r["ctx"] for r in runs["ranks"]] == [(0, 2, "gloo"), (1, 2, "gloo")]
    for rank in runs["ranks"]:
        assert rank["results"] == single  # CategoryResult equality: metrics exactly equal
    # not vacuous: the two modes give different numbers on the same references
    by_key = {(r.category, r.shots, r.seed, r.mode): r for r in single}
    for c in worker.CATEGORIES:
        tf, ft = by_key[c, 2, 0, "training_free"], by_key[c, 2, 0, "fine_tuned"]
        assert tf.references == ft.references
        assert tf.metrics != ft.metrics


@pytest.mark.slow
def test_fine_tuned_adapters_are_the_same_in_every_process(runs) -> None:
    want = runs["single"]["adapters"]
    for rank in runs["ranks"]:
        assert rank["adapters"].keys() == want.keys()
        for key, value in want.items():
            assert torch.equal(rank["adapters"][key], value), key


@pytest.mark.slow
def test_each_rank_evaluates_only_its_shard(runs) -> None:
    units = [f"{worker.DATASET}/{c}" for c in worker.CATEGORIES]
    assert runs["single"]["logged"] == units
    logged = [r["logged"] for r in runs["ranks"]]
    assert logged == [units[0::2], units[1::2]]  # uneven: 2 categories and 1
    # the feature caches agree: each rank encoded the images of its categories only
    per_category = {c: _expected_misses(runs["root"], c) for c in worker.CATEGORIES}
    assert runs["single"]["misses"] == sum(per_category.values())
    for r, rank in enumerate(runs["ranks"]):
        mine = worker.CATEGORIES[r::WORLD]
        assert rank["misses"] == sum(per_category[c] for c in mine), r


@pytest.mark.slow
def test_heat_maps_are_written_by_the_rank_that_owns_the_category(runs) -> None:
    tmp = runs["tmp"]
    single = _pngs(tmp / "heatmaps_single")
    # one overlay per category and mode
    assert len(single) == len(worker.CATEGORIES) * 2 * worker.HEATMAPS
    per_rank = [_pngs(tmp / f"heatmaps{r}") for r in range(WORLD)]
    assert per_rank[0].isdisjoint(per_rank[1])
    assert per_rank[0] | per_rank[1] == single
    for r, files in enumerate(per_rank):
        categories = {Path(f).parts[2] for f in files}  # <mode>/<dataset>/<category>/...
        assert categories == set(worker.CATEGORIES[r::WORLD])


@pytest.mark.slow
def test_example_under_torchrun_writes_the_single_process_metrics(
    tmp_path: Path, processes
) -> None:
    """``torchrun --standalone --nproc_per_node=2 examples/res2clip_full.py ...`` vs one process."""
    args = [
        *("--backbone", "tiny", "--mode", "training-free", "--shots", "1", "--seeds", "111"),
        *("--heatmaps", "0", "--device", "cpu", "--no-progress", "--out"),
    ]
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={WORLD}",
    ]
    ddp = processes.start([*launcher, str(EXAMPLE), *args, str(tmp_path / "ddp")])
    one = processes.start([sys.executable, str(EXAMPLE), *args, str(tmp_path / "one")])
    processes.wait([ddp, one], "examples/res2clip_full.py")

    records = load_results(tmp_path / "ddp")
    assert records == load_results(tmp_path / "one")
    # 2 data sets × 2 categories × 1 shot × 1 seed × 1 mode
    assert len(records) == 4
    assert {(r.dataset, r.mode) for r in records} == {
        ("sample", "training_free"),
        ("synthetic", "training_free"),
    }
    # rank 0 logs to log.txt what it evaluated itself: units 0 and 2 of the four
    log = (tmp_path / "ddp" / "log.txt").read_text()
    assert "sample/hazelnut:" in log
    assert "synthetic/brick:" in log
    assert "sample/transistor:" not in log
    assert "synthetic/coins:" not in log
    assert "sample/transistor:" in (tmp_path / "one" / "log.txt").read_text()
    worlds = [json.loads((tmp_path / d / "config.json").read_text()) for d in ("ddp", "one")]
    assert [w["world_size"] for w in worlds] == [2, 1]
