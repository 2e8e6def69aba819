"""Training under DistributedDataParallel equals one process (resad_kit.engine.training).

Two CPU processes (gloo) run this file as a script with the variables ``torchrun`` sets;
the test trains the same model in its own process and compares. With
``loss_reduction="per_sample"`` and batches that split evenly, the mean of the two slices'
gradients is the gradient of the whole batch, so the adapters must agree up to float
rounding. (With the official ``"batch"`` reduction each slice is normalised by its own
pixel counts; ``train`` warns about that, tested in ``test_training.py``.)

Run by hand: ``RANK=0 WORLD_SIZE=1 ... python tests/engine/test_training_ddp.py ROOT OUT``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from resad_kit.clip import ClipBackbone
from resad_kit.data import AnomalyDataset, synthesize_dataset
from resad_kit.engine.checkpoint import load_checkpoint
from resad_kit.engine.distributed import DistContext, cleanup, init_distributed
from resad_kit.engine.features import FeatureCache
from resad_kit.engine.training import TrainConfig, TrainResult, train
from resad_kit.methods import Res2CLIP, Res2CLIPConfig

SIZE = 32
CATEGORIES = ("grass", "coins")
WORLD = 2
TIMEOUT_S = 120  # a hang guard; the launch takes a few seconds
# 8 queries, batches of 4 (2 per process), 2 epochs: both phases, 4 steps.
CONFIG = TrainConfig.paper(epochs=2, batch_size=4, warmup_epochs=0, lr_scale=50.0)


def run(root: Path, out_dir: Path, dist: DistContext | None) -> TrainResult:
    """The training both the workers and the single-process reference run."""
    torch.set_num_threads(1)
    backbone = ClipBackbone.tiny(image_size=SIZE)
    torch.manual_seed(0)  # the adapters' random initial weights, the same in every process
    model = Res2CLIP(backbone, Res2CLIPConfig.paper(mode="fine_tuned", loss_reduction="per_sample"))
    data = [AnomalyDataset(root, c, "test", image_size=SIZE) for c in CATEGORIES]
    cache = FeatureCache(backbone, progress=False)
    return train(model, data, cache, CONFIG, out_dir=out_dir, progress=False, dist=dist)


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path: Path, processes) -> None:
    root = synthesize_dataset(tmp_path / "data", CATEGORIES, n_train=1, n_test=4, image_size=SIZE)
    procs = processes.start_ranks(
        [sys.executable, __file__, str(root), str(tmp_path / "ddp")], WORLD
    )
    try:
        single = run(root, tmp_path / "single", None)  # while the workers run
    finally:
        processes.wait(procs, "training workers", timeout=TIMEOUT_S)

    # Only rank 0 writes checkpoints; every rank logs the same (all-reduced) losses.
    assert sorted(p.name for p in (tmp_path / "ddp").glob("*.safetensors")) == [
        "checkpoint.safetensors"
    ]
    histories = [json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in range(2)]
    assert histories[0] == histories[1]
    assert len(histories[0]) == len(single.history) == 4
    for h_ddp, h_one in zip(histories[0], single.history, strict=True):
        assert h_ddp["phase"] == h_one["phase"]
        assert h_ddp["lr"] == h_one["lr"]
        for key in ("text", "visual", "residual", "total"):
            assert abs(h_ddp[key] - h_one[key]) < 1e-5, (h_ddp["step"], key)

    ddp = load_checkpoint(tmp_path / "ddp" / "checkpoint.safetensors")
    one = load_checkpoint(tmp_path / "single" / "checkpoint.safetensors")
    assert ddp.adapters.keys() == one.adapters.keys()
    for key, value in one.adapters.items():
        torch.testing.assert_close(ddp.adapters[key], value, rtol=0, atol=1e-5, msg=key)
    # Not vacuous: training moved the zero-initialised up-projections.
    assert one.adapters["residual_text.fc2.weight"].abs().max() > 1e-3
    assert one.adapters["residual_local.0.up.weight"].abs().max() > 1e-3
    for name, state in one.optimizers.items():
        for pid, values in state["state"].items():
            for k, v in values.items():
                torch.testing.assert_close(
                    ddp.optimizers[name]["state"][pid][k], v, rtol=0, atol=1e-5
                )


def _worker(root: str, out_dir: str) -> None:
    ctx = init_distributed(device="cpu", backend="gloo")
    try:
        result = run(Path(root), Path(out_dir), ctx)
        Path(out_dir, f"rank{ctx.rank}.json").write_text(json.dumps(list(result.history)))
    finally:
        cleanup(ctx)


if __name__ == "__main__":
    _worker(*sys.argv[1:3])
