"""Reproduce Res²CLIP's few-shot evaluation (Tables 1, 6–10): training-free and fine-tuned.

The paper's protocol (Sec. 4.1, Tables 6–10): a frozen CLIP ViT-L/14-336 at 518 px;
Res²CLIP* is training-free; Res²CLIP† trains its adapters on the auxiliary data set's test
split (VisA for MVTec AD, MVTec AD for every other target); both are evaluated with
K ∈ {1, 2, 4} normal references drawn with three seeds from each category's train split,
per category, and averaged (mean ± std over seeds). Results go to ``--out``: metrics.csv,
metrics.json, table.md (the paper's numbers beside ours), heat maps, config.json and
log.txt.

Full reproduction on a GPU (weights and data sets downloaded beforehand; see
docs/reproducing.md)::

    python examples/res2clip_full.py --data-root /data --checkpoint /weights/ViT-L-14-336px.pt

Offline smoke run on the shipped real sample and a synthetic data set, with a tiny
*untrained* CLIP (every output says the numbers are not comparable to the paper)::

    python examples/res2clip_full.py --backbone tiny --out results/smoke

Multi-GPU: ``torchrun --nproc_per_node=N examples/res2clip_full.py ...`` (training with
DistributedDataParallel, evaluation sharded by category; rank 0 writes the outputs).

Every flag is checked before any work starts; a usage error prints one line and exits
with status 2. A folder that holds a run is never overwritten silently: ``--resume``
continues it from wherever it stopped (a training in progress continues from its last
epoch, a finished one is loaded, the evaluation runs again and gives the same numbers),
``--overwrite`` replaces it. Result files are written atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from resad_kit.clip import BackboneConfig, ClipBackbone, WeightsNotFoundError
from resad_kit.data import (
    AnomalyDataset,
    find_categories,
    standard_categories,
    synthesize_dataset,
)
from resad_kit.engine.atomic import atomic_write, remove_stale_temp_files
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
from resad_kit.engine.training import AUXILIARY_DATASET, CHECKPOINT_NAME, TrainConfig, train
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
SYNTHETIC = {"categories": ["brick", "coins"], "n_train": 6, "n_test": 8, "image_size": 128}
UNTRAINED = (
    "BACKBONE UNTRAINED (random weights): these numbers are NOT comparable to the paper; "
    "they only show that the pipeline runs end to end."
)
# What a run writes into --out (besides log.txt and the generated data/): a folder holding
# any of these holds a started or finished run.
RUN_OUTPUTS = ("config.json", "metrics.json", "metrics.csv", "table.md", "checkpoints", "heatmaps")
MAX_SIDE = 4096  # --image-size and --eval-size above this are typos, not experiments
MIN_EVAL_SIDE = 16  # below this, resized masks lose small defects (no anomalous pixel left)
PATCH = {"paper": 14, "tiny": 8}  # ViT-L/14 and the tiny test backbone


@dataclasses.dataclass(frozen=True)
class Profile:
    """Every setting that ``--profile`` selects, each taken from a library preset.

    Attributes:
        backbone: the backbone preset (``BackboneConfig.paper()`` / ``.official_code()``).
        method: the Res2CLIP preset by mode (``Res2CLIPConfig.paper`` / ``.official_code``).
        metrics: the metric preset (``MetricConfig.exact()`` / ``.official_code()``).
        mask_interpolation: how the training and test masks are resized
            (``AnomalyDataset``): nearest neighbour, or the official code's bilinear resize
            thresholded at 0.5.
        self_reference: a training category with a single normal image uses it as its own
            reference (``TrainConfig.self_reference``, the official code's fallback, with a
            logged warning) instead of stopping with a usage error.
    """

    backbone: BackboneConfig
    method: Callable[..., Res2CLIPConfig]
    metrics: MetricConfig
    mask_interpolation: str
    self_reference: bool


PROFILES = {
    "paper": Profile(
        BackboneConfig.paper(), Res2CLIPConfig.paper, MetricConfig.exact(), "nearest", False
    ),
    "official": Profile(
        BackboneConfig.official_code(),
        Res2CLIPConfig.official_code,
        MetricConfig.official_code(),
        "bilinear",
        True,
    ),
}


class UsageError(Exception):
    """A flag, or the data or folder it names, that makes the run impossible (exit 2)."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        line = " ".join(str(message).split())
        self.exit(2, f"{self.prog}: error: {line}\n")


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script."""
    p = _Parser(
        prog="res2clip_full.py",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
        allow_abbrev=False,  # a typo such as --epoch is an error, not --epochs
    )
    p.add_argument("--data-root", type=Path, help="folder holding the data sets (mvtec/, visa/, …)")
    p.add_argument("--datasets", nargs="+", help="data set keys (default: all found)")
    p.add_argument("--shots", nargs="+", type=int, default=[1, 2, 4], help="K ≥ 1, distinct")
    p.add_argument(
        "--seeds", nargs="+", type=int, default=[111, 222, 333], help="0 … 2**32-1, distinct"
    )
    p.add_argument("--mode", choices=["training-free", "fine-tune", "both"], default="both")
    p.add_argument("--backbone", choices=["paper", "tiny"], default="paper")
    p.add_argument("--checkpoint", type=Path, help="local CLIP weights (ViT-L-14-336)")
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="read an OpenAI TorchScript --checkpoint with torch.jit.load, which RUNS code "
        "stored in the file (only for files you trust; by default its tensors are read "
        "without running anything; or convert it once: python -m resad_kit.clip.convert)",
    )
    p.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="paper",
        help="the paper's settings, or the official code's (backbone, method, training "
        "masks, metrics)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if any)")
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        default="fp32",
        help="autocast dtype of the backbone (paper: fp32)",
    )
    p.add_argument(
        "--image-size", type=int, help="input side, a multiple of the patch (paper 518; tiny 64)"
    )
    p.add_argument(
        "--eval-size", type=int, help="mask/map side of the metrics, ≥ 16 (default: input side)"
    )
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16, help="training batch size")
    p.add_argument("--eval-batch-size", type=int, default=8)
    p.add_argument("--heatmaps", type=int, default=4, help="overlays per category and mode (≥ 0)")
    p.add_argument("--cache-dir", type=Path, help="store features on disk (float16)")
    p.add_argument(
        "--allow-subset",
        action="store_true",
        help="evaluate data sets with missing standard categories",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from where it stopped (trainings from their last "
        "checkpoint; the evaluation is run again)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in --out (its results, checkpoints and heat maps)",
    )
    p.add_argument("--out", type=Path, default=Path("results/res2clip"))
    p.add_argument("--no-progress", action="store_true")
    return p


# ---------------------------------------------------------------------------- checks


def _check_ints(name: str, values: Sequence[int], low: int, high: int | None = None) -> None:
    bad = [v for v in values if v < low or (high is not None and v > high)]
    if bad:
        upper = f" and ≤ {high}" if high is not None else ""
        raise UsageError(f"{name} must be ≥ {low}{upper}; got {bad[0]}")
    if len(set(values)) != len(values):
        dup = sorted({v for v in values if values.count(v) > 1})
        raise UsageError(f"{name} must be distinct; {dup} given more than once")


def _check_folder(flag: str, path: Path) -> None:
    """``path`` is a folder we can write to, or one we can create."""
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"{flag} {path} is a file, not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UsageError(f"{flag} {path} is not writable")
        return
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {path} cannot be created: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path} cannot be created: {parent} is not writable")


def _check_device(spec: str | None) -> None:
    if spec is None:
        return
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {spec!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {spec}: there are {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(f"--device {spec}: MPS is not available on this machine")
    elif device.type != "cpu":
        raise UsageError(f"--device {spec}: use cpu, cuda, cuda:N or mps")


def check_args(args: argparse.Namespace) -> None:
    """Every check of the flags that needs no data and no backbone.

    Raises:
        UsageError: the first problem found, in one line.
    """
    _check_ints("--shots", args.shots, 1)
    _check_ints("--seeds", args.seeds, 0, 2**32 - 1)
    for flag in ("epochs", "batch_size", "eval_batch_size"):
        value = getattr(args, flag)
        if value < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be ≥ 1; got {value}")
    if args.heatmaps < 0:
        raise UsageError(f"--heatmaps must be ≥ 0; got {args.heatmaps}")
    patch = PATCH[args.backbone]
    if args.image_size is not None and not (
        patch <= args.image_size <= MAX_SIDE and args.image_size % patch == 0
    ):
        raise UsageError(
            f"--image-size must be a multiple of the {args.backbone} backbone's patch size "
            f"{patch} between {patch} and {MAX_SIDE}; got {args.image_size}"
        )
    if args.eval_size is not None and not MIN_EVAL_SIDE <= args.eval_size <= MAX_SIDE:
        raise UsageError(
            f"--eval-size must be between {MIN_EVAL_SIDE} and {MAX_SIDE} (smaller masks lose "
            f"small defects entirely); got {args.eval_size}"
        )
    if args.checkpoint is not None:
        if args.backbone == "tiny":
            raise UsageError(
                "--checkpoint loads ViT-L-14-336 weights, but --backbone tiny has random "
                "weights; drop one of them"
            )
        if not args.checkpoint.is_file():
            raise UsageError(
                f"--checkpoint {args.checkpoint}: no such file (for an offline smoke run use "
                "--backbone tiny)"
            )
    if args.trust_checkpoint and args.checkpoint is None:
        raise UsageError("--trust-checkpoint needs --checkpoint (a local weights file)")
    if args.data_root is not None and not args.data_root.is_dir():
        raise UsageError(f"--data-root {args.data_root} is not a folder")
    keys = PAPER_DATASETS if args.data_root is not None else tuple(OFFLINE_AUXILIARY)
    if args.datasets is not None:
        unknown = [d for d in args.datasets if d not in keys]
        if unknown:
            raise UsageError(f"--datasets {unknown} unknown; choose from {list(keys)}")
        if len(set(args.datasets)) != len(args.datasets):
            raise UsageError(f"--datasets must be distinct; got {args.datasets}")
    if args.resume and args.overwrite:
        raise UsageError("--resume continues the run in --out, --overwrite replaces it; pick one")
    _check_device(args.device)
    _check_folder("--out", args.out)
    if args.cache_dir is not None:
        _check_folder("--cache-dir", args.cache_dir)


def previous_run(out: Path) -> list[str]:
    """The outputs of an earlier run (started or finished) that ``out`` holds."""
    return [name for name in RUN_OUTPUTS if (out / name).exists()]


def prepare_out(args: argparse.Namespace, found: list[str], *, apply: bool) -> str:
    """Refuse, continue or replace an earlier run in ``--out``; say which happened.

    Args:
        args: the flags.
        found: :func:`previous_run` of ``--out``.
        apply: delete the previous run's outputs under ``--overwrite`` (main rank only).

    Returns:
        A sentence for the log.

    Raises:
        UsageError: ``--out`` holds a run and neither ``--resume`` nor ``--overwrite`` was
            given.
    """
    out = args.out
    if found and not (args.resume or args.overwrite):
        raise UsageError(
            f"--out {out} holds a previous run ({', '.join(found)}); pass --resume to "
            "continue it or --overwrite to replace it"
        )
    if not found:
        return f"new run in {out}" + (" (nothing to resume there)" if args.resume else "")
    if args.resume:
        return f"resuming the run in {out} ({', '.join(found)})"
    for name in found if apply else ():
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return f"--overwrite: removed the previous run's {', '.join(found)} from {out}"


def setup_logging(out: Path, main: bool) -> list[logging.Handler]:
    """Log to stderr (and, on the main rank, to ``out/log.txt``); returns the handlers."""
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
    return handlers


# ---------------------------------------------------------------------------- data


def build_backbone(args: argparse.Namespace, device: torch.device) -> ClipBackbone:
    if args.backbone == "tiny":
        backbone = ClipBackbone.tiny(seed=0, image_size=args.image_size or 64)
        return backbone.to(device)
    config = dataclasses.replace(PROFILES[args.profile].backbone, image_size=args.image_size or 518)
    pretrained = str(args.checkpoint) if args.checkpoint else "openai"
    return ClipBackbone.from_pretrained(
        "ViT-L-14-336",
        pretrained,
        config,
        trust_checkpoint=args.trust_checkpoint,
        device=device,
    )


def find_dataset(root: Path, key: str) -> Path | None:
    for name in FOLDERS[key]:
        if (root / name).is_dir():
            return root / name
    return None


def discover(args: argparse.Namespace, out: Path, dist: DistContext) -> dict[str, DatasetSpec]:
    """The data sets to use, by key: under --data-root, or the offline sample + synthetic.

    The synthetic data set is generated under ``out/data/synthetic`` by the main rank, or
    reused when complete (a partial one, from an interrupted run, is regenerated).
    """
    if args.data_root is None:
        synthetic = out / "data" / "synthetic"
        if dist.is_main:
            synthesize_dataset(synthetic, **SYNTHETIC, seed=0, reuse=True)
        barrier(dist)  # the other ranks read what rank 0 wrote
        return {
            "sample": DatasetSpec("sample", SAMPLE_ROOT, ("hazelnut", "transistor")),
            "synthetic": DatasetSpec("synthetic", synthetic, tuple(SYNTHETIC["categories"])),
        }
    specs = {}
    for key in PAPER_DATASETS:
        root = find_dataset(args.data_root, key)
        if root is None:
            continue
        wanted = standard_categories(key)
        found = set(find_categories(root))
        missing = [c for c in wanted if c not in found]
        if missing and not args.allow_subset:
            raise UsageError(
                f"{key} at {root} lacks the categories {missing}; complete the download or "
                "pass --allow-subset (the averages are then not comparable to the paper)"
            )
        present = tuple(c for c in wanted if c in found)
        if present:
            specs[key] = DatasetSpec(key, root, present)
    if not specs:
        names = {k: v[0] for k, v in FOLDERS.items()}
        raise UsageError(
            f"no data set found under {args.data_root}; expected folders such as {names}"
        )
    return specs


def auxiliary(key: str) -> str:
    return OFFLINE_AUXILIARY.get(key) or AUXILIARY_DATASET[key]


def _normals(spec: DatasetSpec, category: str, split: str) -> int:
    """Number of normal images of one split (the file list only; no image is read)."""
    return AnomalyDataset(spec.root, category, split, 8).labels.count(0)


def plan(
    args: argparse.Namespace, specs: dict[str, DatasetSpec]
) -> tuple[list[str], list[str], list[str]]:
    """The targets, the modes and the auxiliary data sets to train on, checked.

    Raises:
        UsageError: an unknown or missing data set, a missing auxiliary data set, a
            category with fewer normal training images than the largest ``--shots``, an
            auxiliary category with fewer than two normal test images, or a data set that
            cannot be read (the reader's message).
    """
    targets = args.datasets or list(specs)  # default: every data set found
    unknown = [t for t in targets if t not in specs]
    if unknown:
        raise UsageError(f"--datasets {unknown} not found; available: {sorted(specs)}")
    modes = {"training-free": ["training_free"], "fine-tune": ["fine_tuned"]}.get(
        args.mode, ["training_free", "fine_tuned"]
    )
    auxes: list[str] = []
    if "fine_tuned" in modes:
        for target in targets:
            aux = auxiliary(target)
            if aux not in specs:
                raise UsageError(
                    f"fine-tuning for {target} needs its auxiliary data set {aux!r} under "
                    f"--data-root (paper Sec. 4.1); add it or use --mode training-free"
                )
            if aux not in auxes:
                auxes.append(aux)
    profile = PROFILES[args.profile]
    for aux in auxes:  # each training query's reference is another normal image
        spec = specs[aux]
        for category in spec.categories:
            normals = _normals(spec, category, "test")
            if normals == 1 and profile.self_reference:
                continue  # the official code's fallback; train() logs a warning
            if normals < 2:
                raise UsageError(
                    f"training on {aux}/{category} needs at least two normal test images "
                    f"(each query's reference is another normal image); it has {normals}"
                    + (" (--profile official uses a single one as its own)" if normals else "")
                )
    k = max(args.shots)
    for target in targets:
        spec = specs[target]
        for category in spec.categories:
            _normals(spec, category, "test")  # reads its file list: a missing mask stops here
            normals = _normals(spec, category, "train")
            if normals < k:
                raise UsageError(
                    f"--shots {k} needs {k} normal training images, but {target}/{category} "
                    f"has {normals}"
                )
    return targets, modes, auxes


def training_sets(
    spec: DatasetSpec, backbone: ClipBackbone, profile: Profile
) -> list[AnomalyDataset]:
    """The auxiliary data set's test split, one data set per category, with the profile's
    mask resize (official: bilinear + threshold 0.5, as the official code)."""
    datasets = [
        AnomalyDataset(
            spec.root,
            c,
            "test",
            backbone.image_size,
            mean=backbone.mean,
            std=backbone.std,
            mask_interpolation=profile.mask_interpolation,
        )
        for c in spec.categories
    ]
    return datasets


# ---------------------------------------------------------------------------- run


def write_config(out: Path, config: dict) -> None:
    atomic_write(out / "config.json", json.dumps(config, indent=2, default=str) + "\n")


def run(args: argparse.Namespace, dist: DistContext) -> None:
    """The run after the flags were checked: data, backbone, trainings, evaluation, files."""
    is_main = dist.is_main
    profile = PROFILES[args.profile]
    found = previous_run(args.out)
    prepare_out(args, found, apply=False)  # a refusal comes before anything is written
    try:
        all_specs = discover(args, args.out, dist)  # (generates the offline synthetic data)
        targets, modes, auxes = plan(args, all_specs)
    except ValueError as error:  # a data set the readers reject: their message says why
        raise UsageError(str(error)) from None
    barrier(dist)  # every rank has looked at --out before the main rank changes it
    what = prepare_out(args, found, apply=is_main)
    setup_logging(args.out, is_main)
    if is_main:
        logger.info(what)
        for path in remove_stale_temp_files(args.out):
            logger.info("removed %s, left by an interrupted writer", path)
    barrier(dist)
    seed_everything(111, dist)
    progress = not args.no_progress
    device = dist.device
    try:
        backbone = build_backbone(args, device)
    except WeightsNotFoundError as error:  # the message says what was tried and how to fix it
        raise UsageError(f"{error} (For an offline smoke run use --backbone tiny.)") from None
    if not backbone.trained:
        logger.warning(UNTRAINED)
    logger.info("backbone: %r", backbone)
    train_config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, self_reference=profile.self_reference
    )
    config = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "backbone": repr(backbone),
        "backbone_config": dataclasses.asdict(backbone.config),
        "method": {m: profile.method(m).to_dict() for m in modes},
        "metrics": dataclasses.asdict(profile.metrics),
        "mask_interpolation": profile.mask_interpolation,
        "train": dataclasses.asdict(train_config),
        "world_size": dist.world_size,
    }
    if is_main:  # written before any training: it marks a started run
        write_config(args.out, config)
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
    models: dict[tuple[str, str], Res2CLIP] = {}
    trained: dict[str, Res2CLIP] = {}
    with autocast:
        for target in targets:
            if "training_free" in modes:
                models["training_free", target] = Res2CLIP(
                    backbone, profile.method("training_free")
                )
        for aux in auxes:
            model = Res2CLIP(backbone, profile.method("fine_tuned"))
            out_dir = args.out / "checkpoints" / aux
            # A finished training is loaded, an interrupted one continues from its last
            # epoch, one that had not saved an epoch yet starts afresh.
            resume = args.resume and (out_dir / CHECKPOINT_NAME).is_file()
            logger.info("%s Res2CLIP† on %s", "resuming" if resume else "training", aux)
            try:
                result = train(
                    model,
                    training_sets(all_specs[aux], backbone, profile),
                    cache,
                    train_config,
                    out_dir=out_dir,
                    resume=resume,
                    progress=progress,
                    dist=dist,
                )
            except ValueError as error:
                if not resume:
                    raise
                raise UsageError(
                    f"--resume: cannot continue the training on {aux}: {error} (use "
                    "--overwrite to start the run afresh)"
                ) from None
            logger.info("trained on %s: %s", aux, result)
            cache.clear()  # the auxiliary features (GBs at 518 px) are not needed now
            trained[aux] = model
        for target in targets:
            if "fine_tuned" in modes:
                models["fine_tuned", target] = trained[auxiliary(target)]
        results = run_evaluation(
            models,
            [all_specs[t] for t in targets],
            cache,
            shots=args.shots,
            seeds=args.seeds,
            eval_size=args.eval_size,
            mask_interpolation=profile.mask_interpolation,
            batch_size=args.eval_batch_size,
            metric_config=profile.metrics,
            heatmap_dir=args.out / "heatmaps",
            heatmaps=args.heatmaps,
            dist=dist,
            progress=progress,
        )
    if is_main:
        write_config(args.out, config)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the script; returns the exit status (a usage error exits with status 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_args(args)
        dist = init_distributed(args.device)
    except (UsageError, ValueError) as error:
        parser.error(str(error))
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        run(args, dist)
    except UsageError as error:
        parser.error(str(error))
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)
            handler.close()
        cleanup(dist)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
