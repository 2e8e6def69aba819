"""Worker for ``tests/engine/test_protocol_ddp.py``: the evaluation protocol on one rank.

Run once per rank with the variables ``torchrun`` sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``)::

    python tests/engine/_protocol_worker.py DATA_ROOT OUT_DIR

Each rank calls :func:`evaluate` with its ``DistContext`` and pickles the returned dict to
``OUT_DIR/rank{RANK}.pkl``; the test calls the same :func:`evaluate` with ``dist=None`` for
the single-process reference. Importing this module has no side effects.
"""

from __future__ import annotations

import logging
import pickle
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from resad_kit.clip import ClipBackbone
from resad_kit.engine.distributed import DistContext, cleanup, init_distributed
from resad_kit.engine.features import FeatureCache
from resad_kit.engine.protocol import DatasetSpec, run_evaluation
from resad_kit.methods import Res2CLIP, Res2CLIPConfig

SIZE = 32
DATASET = "synth"
# Three categories on two ranks: rank 0 evaluates the 1st and 3rd, rank 1 the 2nd.
CATEGORIES = ("brick", "coins", "grass")
N_TRAIN, N_TEST = 3, 4
SHOTS, SEEDS = (1, 2), (0, 5)
HEATMAPS = 1
PERTURB_SEED, PERTURB_SCALE = 1234, 0.05


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def protocol_log() -> Iterator[list[str]]:
    """Collect the INFO messages of ``resad_kit.engine.protocol`` (one per category)."""
    log = logging.getLogger("resad_kit.engine.protocol")
    handler, level = _Records(), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield handler.messages
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def build_models(backbone: ClipBackbone) -> dict[tuple[str, str], Res2CLIP]:
    """Training-free and fine-tuned models; the adapters are the same in every process.

    The adapters are initialised under a fixed global seed (the caller's random state is
    restored afterwards) and then moved away from their zero-initialised identity by
    noise from a private generator, so the fine-tuned model differs from the
    training-free one.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        tuned = Res2CLIP(backbone, Res2CLIPConfig.paper("fine_tuned"))
    g = torch.Generator().manual_seed(PERTURB_SEED)
    with torch.no_grad():
        for _, p in sorted(tuned.adapters.named_parameters()):
            p.add_(torch.randn(p.shape, generator=g), alpha=PERTURB_SCALE)
    return {
        ("training_free", DATASET): Res2CLIP(backbone),
        ("fine_tuned", DATASET): tuned,
    }


def evaluate(root: Path, heatmap_dir: Path, dist: DistContext | None) -> dict[str, object]:
    """Run :func:`run_evaluation` over :data:`CATEGORIES`; return what the test compares.

    Returns:
        ``results`` (the returned list), ``logged`` (the ``dataset/category`` units this
        process evaluated, from the protocol's log), ``misses`` (images its feature cache
        encoded) and ``adapters`` (the fine-tuned model's adapter state).
    """
    backbone = ClipBackbone.tiny(seed=0, image_size=SIZE)
    models = build_models(backbone)
    cache = FeatureCache(backbone, progress=False)
    with protocol_log() as messages:
        results = run_evaluation(
            models,
            [DatasetSpec(DATASET, root, CATEGORIES)],
            cache,
            shots=SHOTS,
            seeds=SEEDS,
            heatmap_dir=heatmap_dir,
            heatmaps=HEATMAPS,
            dist=dist,
            progress=False,
        )
    return {
        "results": results,
        "logged": [m.split(":", 1)[0] for m in messages],
        "misses": cache.stats["misses"],
        "adapters": {
            k: v.clone() for k, v in models["fine_tuned", DATASET].adapters.state_dict().items()
        },
    }


def main(argv: list[str]) -> None:
    root, out_dir = Path(argv[0]), Path(argv[1])
    torch.set_num_threads(1)
    ctx = init_distributed(device="cpu", backend="gloo")
    try:
        out = evaluate(root, out_dir / f"heatmaps{ctx.rank}", ctx)
        out["ctx"] = (ctx.rank, ctx.world_size, ctx.backend)
        with (out_dir / f"rank{ctx.rank}.pkl").open("wb") as f:
            pickle.dump(out, f)
    finally:
        cleanup(ctx)


if __name__ == "__main__":
    main(sys.argv[1:])
