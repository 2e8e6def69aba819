"""Reproduce Res²CLIP's few-shot evaluation (Tables 1, 6–10): training-free and fine-tuned.

The paper's protocol (spec §4.6, §6): a frozen CLIP ViT-L/14-336 at 518 px; Res²CLIP* is
training-free; Res²CLIP† trains its adapters on the auxiliary data set's test split (VisA for
MVTec AD, MVTec AD for every other target); both are evaluated with K ∈ {1, 2, 4} normal
references drawn with three seeds from each category's train split, per category, and
averaged (mean ± std over seeds). Results go to ``--out``: metrics.csv, metrics.json,
table.md (the paper's numbers beside ours), heat maps, config.json and log.txt.

Full reproduction on a GPU (weights and data sets downloaded beforehand; see
docs/reproducing.md)::

    python examples/res2clip_full.py --data-root /data --checkpoint /weights/ViT-L-14-336px.pt

Offline smoke run on the shipped real sample and a synthetic data set, with a tiny
*untrained* CLIP (every output says the numbers are not comparable to the paper)::

    python examples/res2clip_full.py --backbone tiny --out results/smoke

Multi-GPU: ``torchrun --nproc_per_node=N examples/res2clip_full.py ...`` (training with
DistributedDataParallel, evaluation sharded by category; rank 0 writes the outputs).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from resad_kit.clip import BackboneConfig, ClipBackbone, WeightsNotFoundError
from resad_kit.data import (
    AnomalyDataset,
    find_categories,
    standard_categories,
    synthesize_dataset,
)
from resad_kit.engine.distributed import (
    DistContext,
    barrier,
    cleanup,
    init_distributed,
    seed_everything,
)
from resad_kit.engine.features import FeatureCache
from resad_kit.engine.protocol import DatasetSpec, run_evaluation
from resad_kit.engine.results import summary_table, write_results
from resad_kit.engine.training import AUXILIARY_DATASET, TrainConfig, train
from resad_kit.methods import Res2CLIP, Res2CLIPConfig
from resad_kit.metrics import MetricConfig

logger = logging.getLogger("res2clip_full")

HERE = Path(__file__).resolve().parent
SAMPLE_ROOT = HERE / "data" / "mvtec_mini"
PAPER_DATASETS = ("mvtec", "visa", "btad", "mpdd", "dtd")
# Folder names under --data-root that hold each data set (first match wins).
FOLDERS = {
    "mvtec": ("mvtec", "mvtec_ad", "mvtec_anomaly_detection", "MVTec-AD", "MVTec"),
    "visa": ("visa", "VisA", "VisA_20220922"),
    "btad": ("btad", "BTAD", "BTech_Dataset_transformed"),
    "mpdd": ("mpdd", "MPDD"),
    "dtd": ("dtd", "DTD-Synthetic", "dtd_synthetic", "DTD_Synthetic"),
}
# Offline data (no --data-root): each trains the adapters evaluated on the other.
OFFLINE_AUXILIARY = {"sample": "synthetic", "synthetic": "sample"}
UNTRAINED = (
    "BACKBONE UNTRAINED (random weights): these numbers are NOT comparable to the paper; "
    "they only show that the pipeline runs end to end."
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-root", type=Path, help="folder holding the data sets (mvtec/, visa/, …)")
    p.add_argument("--datasets", nargs="+", help="data set keys (default: all found)")
    p.add_argument("--shots", nargs="+", type=int, default=[1, 2, 4])
    p.add_argument("--seeds", nargs="+", type=int, default=[111, 222, 333])
    p.add_argument("--mode", choices=["training-free", "fine-tune", "both"], default="both")
    p.add_argument("--backbone", choices=["paper", "tiny"], default="paper")
    p.add_argument("--checkpoint", type=Path, help="local CLIP weights (ViT-L-14-336)")
    p.add_argument(
        "--profile",
        choices=["paper", "official"],
        default="paper",
        help="paper settings, or the official code's (spec §10.1)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if any)")
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        default="fp32",
        help="autocast dtype of the backbone (paper: fp32)",
    )
    p.add_argument("--image-size", type=int, help="input side (paper 518; tiny 64)")
    p.add_argument("--eval-size", type=int, help="mask/map side of the metrics (default input)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16, help="training batch size")
    p.add_argument("--eval-batch-size", type=int, default=8)
    p.add_argument("--heatmaps", type=int, default=4, help="overlays per category and mode")
    p.add_argument("--cache-dir", type=Path, help="store features on disk (float16)")
    p.add_argument(
        "--allow-subset",
        action="store_true",
        help="evaluate data sets with missing standard categories",
    )
    p.add_argument("--resume", action="store_true", help="continue training from checkpoints")
    p.add_argument("--out", type=Path, default=Path("results/res2clip"))
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def setup_logging(out: Path, main: bool) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if main:
        out.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(out / "log.txt", mode="a", encoding="utf-8"))
    logging.basicConfig(
        level=logging.INFO if main else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )


def build_backbone(args: argparse.Namespace, device: torch.device) -> ClipBackbone:
    config = BackboneConfig.official_code() if args.profile == "official" else BackboneConfig()
    if args.backbone == "tiny":
        backbone = ClipBackbone.tiny(seed=0, image_size=args.image_size or 64)
        return backbone.to(device)
    config = dataclasses.replace(config, image_size=args.image_size or 518)
    pretrained = str(args.checkpoint) if args.checkpoint else "openai"
    return ClipBackbone.from_pretrained("ViT-L-14-336", pretrained, config, device=device)


def find_dataset(root: Path, key: str) -> Path | None:
    for name in FOLDERS[key]:
        if (root / name).is_dir():
            return root / name
    return None


def discover(args: argparse.Namespace, out: Path, dist: DistContext) -> dict[str, DatasetSpec]:
    """The data sets to use, by key: under --data-root, or the offline sample + synthetic."""
    if args.data_root is None:
        synthetic = out / "data" / "synthetic"
        if dist.is_main and not synthetic.is_dir():
            synthesize_dataset(
                synthetic,
                categories=["brick", "coins"],
                n_train=6,
                n_test=8,
                image_size=128,
                seed=0,
            )
        barrier(dist)  # the other ranks read what rank 0 wrote
        return {
            "sample": DatasetSpec("sample", SAMPLE_ROOT, ("hazelnut", "transistor")),
            "synthetic": DatasetSpec("synthetic", synthetic, ("brick", "coins")),
        }
    if not args.data_root.is_dir():
        raise SystemExit(f"--data-root {args.data_root} is not a folder")
    specs = {}
    for key in PAPER_DATASETS:
        root = find_dataset(args.data_root, key)
        if root is None:
            continue
        wanted = standard_categories(key)
        found = set(find_categories(root))
        missing = [c for c in wanted if c not in found]
        if missing and not args.allow_subset:
            raise SystemExit(
                f"{key} at {root} lacks the categories {missing}; complete the download or "
                "pass --allow-subset (the averages are then not comparable to the paper)"
            )
        present = tuple(c for c in wanted if c in found)
        if present:
            specs[key] = DatasetSpec(key, root, present)
    if not specs:
        names = {k: v[0] for k, v in FOLDERS.items()}
        raise SystemExit(
            f"no data set found under {args.data_root}; expected folders such as {names}"
        )
    return specs


def auxiliary(key: str) -> str:
    return OFFLINE_AUXILIARY.get(key) or AUXILIARY_DATASET[key]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    dist = init_distributed(args.device)
    is_main = dist.is_main
    setup_logging(args.out, is_main)
    seed_everything(111, dist)
    progress = not args.no_progress
    device = dist.device
    try:
        backbone = build_backbone(args, device)
    except WeightsNotFoundError as error:  # the message says what was tried and how to fix it
        raise SystemExit(f"{error}\n(For an offline smoke run use --backbone tiny.)") from None
    if not backbone.trained:
        logger.warning(UNTRAINED)
    logger.info("backbone: %r", backbone)
    all_specs = discover(args, args.out, dist)
    targets = args.datasets or list(all_specs)  # default: every data set found
    unknown = [t for t in targets if t not in all_specs]
    if unknown:
        raise SystemExit(f"--datasets {unknown} not found; available: {sorted(all_specs)}")
    modes = {"training-free": ["training_free"], "fine-tune": ["fine_tuned"]}.get(
        args.mode, ["training_free", "fine_tuned"]
    )
    make_config = (
        Res2CLIPConfig.official_code if args.profile == "official" else Res2CLIPConfig.paper
    )
    cache = FeatureCache(
        backbone, args.cache_dir, batch_size=args.eval_batch_size, progress=progress and is_main
    )
    autocast = (
        torch.autocast(
            device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
        )
        if args.precision != "fp32"
        else contextlib.nullcontext()
    )
    train_config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size)
    models: dict[tuple[str, str], Res2CLIP] = {}
    trained: dict[str, Res2CLIP] = {}
    with autocast:
        for target in targets:
            if "training_free" in modes:
                models["training_free", target] = Res2CLIP(backbone, make_config("training_free"))
            if "fine_tuned" in modes:
                aux = auxiliary(target)
                if aux not in all_specs:
                    raise SystemExit(
                        f"fine-tuning for {target} needs its auxiliary data set {aux!r} under "
                        f"--data-root (paper Sec. 4.1); add it or use --mode training-free"
                    )
                if aux not in trained:
                    model = Res2CLIP(backbone, make_config("fine_tuned"))
                    spec = all_specs[aux]
                    datasets = [
                        AnomalyDataset(
                            spec.root,
                            c,
                            "test",
                            backbone.image_size,
                            mean=backbone.mean,
                            std=backbone.std,
                        )
                        for c in spec.categories
                    ]
                    logger.info("training Res2CLIP† on %s (for %s)", aux, target)
                    result = train(
                        model,
                        datasets,
                        cache,
                        train_config,
                        out_dir=args.out / "checkpoints" / aux,
                        resume=args.resume,
                        progress=progress,
                        dist=dist,
                    )
                    logger.info("trained on %s: %s", aux, result)
                    cache.clear()  # the auxiliary features (GBs at 518 px) are not needed now
                    trained[aux] = model
                models["fine_tuned", target] = trained[aux]
        results = run_evaluation(
            models,
            [all_specs[t] for t in targets],
            cache,
            shots=args.shots,
            seeds=args.seeds,
            eval_size=args.eval_size,
            batch_size=args.eval_batch_size,
            metric_config=MetricConfig.official_code() if args.profile == "official" else None,
            heatmap_dir=args.out / "heatmaps",
            heatmaps=args.heatmaps,
            dist=dist,
            progress=progress,
        )
    if is_main:
        config = {
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "backbone": repr(backbone),
            "backbone_config": dataclasses.asdict(backbone.config),
            "method": {m: make_config(m).to_dict() for m in modes},
            "train": dataclasses.asdict(train_config),
            "world_size": dist.world_size,
        }
        (args.out / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
        write_results(
            results,
            args.out,
            backbone_label=f"{backbone.model_name} ({backbone.weights})",
            trained=backbone.trained,
            config=config,
        )
        print(summary_table(results, trained=backbone.trained))
        print(f"\nwritten to {args.out}/ (table.md, metrics.csv, metrics.json, heatmaps/, log.txt)")
        if not backbone.trained:
            print(UNTRAINED)
    cleanup(dist)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
