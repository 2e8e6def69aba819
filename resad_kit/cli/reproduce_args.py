"""``resad-kit reproduce``: its flags and the checks that need neither data nor weights.

No torch at module level (``resad-kit reproduce --help`` answers at once).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from resad_kit.cli._common import Parser, UsageError, check_device, check_folder, check_ints
from resad_kit.cli.registry import METHODS, method_names

__all__ = [
    "DESCRIPTION", "add_arguments", "build_parser", "check_args", "dataset_keys",
    "resolve_defaults",
]  # fmt: skip

DESCRIPTION = """\
Reproduce Res²CLIP's few-shot evaluation (paper Table 1 and Tables 6–10): training-free
(Res²CLIP*) and fine-tuned (Res²CLIP†).

The paper's protocol (Sec. 4.1): a frozen CLIP ViT-L/14-336 at 518 px; Res²CLIP* is
training-free; Res²CLIP† trains its adapters on the auxiliary data set's test split (VisA
for MVTec AD, MVTec AD for every other target); both are evaluated with K ∈ {1, 2, 4}
normal references drawn with three seeds from each category's train split, per category,
and averaged (mean ± std over seeds). Results go to --out: metrics.csv, metrics.json,
table.md (the paper's numbers beside ours), index.html (a report with the heat maps),
heatmaps/, config.json and log.txt.

Full reproduction on a GPU (weights and data sets downloaded beforehand; see
docs/reproducing.md):

    resad-kit reproduce --data-root /data --checkpoint /weights/ViT-L-14-336px.pt

Offline smoke run (about 4 minutes on 2 CPU cores) on the shipped real sample and a
synthetic data set written under --out/data/synthetic, with a tiny *untrained* CLIP (every
output says the numbers are not comparable to the paper):

    resad-kit reproduce --backbone tiny --out results/smoke

AF-CLIP (--method afclip): zero-shot AF-CLIP (--shots 0) and few-shot AF-CLIP+ (1/2/4
shots, five seeds), AF-CLIP Tables 1–2; its adapter and prompts are trained on the
auxiliary data set's test split (TrainConfig.afclip()), or read from the official
repository's released files with --afclip-weights. With --data-root it also reads DAGM and
the medical sets of AF-CLIP's Table 1. WinCLIP (--method winclip): the training-free
baseline, zero-shot WinCLIP and few-shot WinCLIP+ on open_clip's ViT-B-16-plus-240.
FineGrainedAD (--method finegrainedad): one model per category (its MFSC captions; your own
with --captions FILE), trained on every draw of shots (TrainConfig.finegrainedad(): SGD,
100 epochs), no auxiliary data set; MVTec AD and VisA by default, maps evaluated at 400 px.
Each method's defaults (shots, seeds, epochs, batch size) are its paper's; see
docs/reproducing.md.

Multi-GPU: torchrun --nproc_per_node=N -m resad_kit.cli reproduce ... (training with
DistributedDataParallel, evaluation sharded by category; rank 0 writes the outputs and
prints errors).

Checks come in the order data → weights → work: every flag first, then the data sets,
then the weights, before any training. A usage error prints one line and exits with
status 2. A folder that holds a run is never overwritten silently: --resume continues it
from wherever it stopped, --overwrite replaces it. Result files are written atomically.
"""

PAPER_DATASETS = ("mvtec", "visa", "btad", "mpdd", "dtd")
# AF-CLIP's further Table 1 sets (--method afclip with --data-root).
AFCLIP_EXTRA_DATASETS = ("dagm", "brainmri", "br35h", "isic", "clinicdb", "colondb", "kvasir")
OFFLINE_DATASETS = ("sample", "synthetic")
MAX_SIDE = 4096  # --image-size and --eval-size above this are typos, not experiments
MIN_EVAL_SIDE = 16  # below this, resized masks lose small defects (no anomalous pixel left)
TINY_PATCH = 8  # the tiny test backbone's patch (the real ones: the method's BackboneRecipe)
PATCH = {"paper": 14, "tiny": TINY_PATCH}  # predict's backbones: ViT-L/14 and the tiny one
PROFILE_NAMES = ("official", "paper")


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of ``reproduce``, each with its help text."""
    p.add_argument(
        "--data-root",
        type=Path,
        help="folder holding the data sets (mvtec/, visa/, btad/, mpdd/, dtd/; --method "
        "afclip also dagm/ and the medical sets' folders; see docs/reproducing.md); without "
        "it: the offline sample + synthetic data",
    )
    p.add_argument("--datasets", nargs="+", help="data set keys to evaluate (default: all found)")
    p.add_argument(
        "--method",
        choices=method_names(),
        default="res2clip",
        help="the method to run (default: res2clip, the paper's): "
        + "; ".join(f"{e.name}: {e.title}" for e in METHODS.values()),
    )
    p.add_argument(
        "--shots",
        nargs="+",
        type=int,
        help="numbers K of normal reference images per category, distinct, each ≥ 1 (0: "
        "zero-shot, afclip and winclip only) (default: the method's paper: res2clip, "
        "finegrainedad 1 2 4; afclip, winclip 0 1 2 4)",
    )
    p.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        help="seeds that draw the references, 0 … 2**32-1, distinct; the tables show mean "
        "± std over them (default: 111 222 333; afclip, its paper's five runs: 111 222 333 "
        "444 555; finegrainedad, its code's one run: 111)",
    )
    p.add_argument(
        "--mode",
        choices=["training-free", "fine-tune", "both"],
        help="Res²CLIP* (training-free), Res²CLIP† (adapters fine-tuned on the auxiliary "
        "data set) or both (default: every mode of the method; afclip and finegrainedad are "
        "fine-tuned only, winclip training-free only)",
    )
    p.add_argument(
        "--backbone",
        choices=["paper", "tiny"],
        default="paper",
        help="paper: the method's CLIP (ViT-L/14-336; winclip: ViT-B-16-plus-240, "
        "laion400m_e31; finegrainedad: ViT-B-16-plus-240, laion400m_e32; pretrained weights "
        "needed); tiny: a small CLIP with random weights for offline smoke runs (numbers not "
        "meaningful)",
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="local CLIP weights file of the method's backbone (ViT-L-14-336; winclip, "
        "finegrainedad: ViT-B-16-plus-240)",
    )
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="read an OpenAI TorchScript --checkpoint with torch.jit.load, which RUNS code "
        "stored in the file (only for files you trust; by default its tensors are read "
        "without running anything; or convert it once: python -m resad_kit.clip.convert)",
    )
    p.add_argument(
        "--profile",
        choices=PROFILE_NAMES,
        default="paper",
        help="the paper's settings, or the official code's (res2clip: backbone, method, "
        "training masks, metrics; afclip: AFCLIPConfig.official_code(), needed by "
        "--afclip-weights; winclip: anomalib's WinCLIPConfig.anomalib(); finegrainedad: "
        "FineGrainedADConfig.paper() / .official_code())",
    )
    p.add_argument(
        "--afclip-weights",
        type=Path,
        metavar="DIR",
        help="--method afclip: evaluate the released adapter and prompts of the official "
        "AF-CLIP repository instead of training (DIR holds {mvtec,visa}_{adaptor,prompt}.pt: "
        "visa_* for MVTec AD and the shipped MVTec AD sample, mvtec_* for every other data "
        "set)",
    )
    p.add_argument(
        "--captions",
        type=Path,
        metavar="FILE",
        help="--method finegrainedad: a JSON file of MFSC captions (schema in "
        "docs/finegrainedad.md) that adds to or replaces the shipped table, e.g. for a "
        "category it does not cover",
    )
    p.add_argument(
        "--select-epoch-on-test",
        action="store_true",
        help="--method finegrainedad: keep each model's epoch of best pixel AUROC on the TEST "
        "set, as the released code does; model selection on the test set, optimistic, "
        "warned, and labelled method finegrainedad_test_selected (default: the last epoch)",
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
        "--eval-size",
        type=int,
        help="mask/map side of the metrics, ≥ 16 (default: input side; finegrainedad with "
        "--backbone paper: 400, its code's)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        help="training epochs of the adapters (default: the method's paper: res2clip 10, "
        "afclip 2, finegrainedad 100 per draw of shots)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        help="training batch size (default: the method's paper: res2clip 16, afclip 8; "
        "finegrainedad has none: each epoch is one step on all K shots)",
    )
    p.add_argument(
        "--eval-batch-size", type=int, default=8, help="images per forward pass when evaluating"
    )
    p.add_argument(
        "--heatmaps",
        type=int,
        default=4,
        help="heat-map figures per category and mode (≥ 0; anomalous and normal images)",
    )
    p.add_argument("--cache-dir", type=Path, help="store image features on disk (float16)")
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
    p.add_argument(
        "--out",
        type=Path,
        help="the run's folder: results, heat maps, report, log (and, offline, the "
        "synthetic data under data/) (default: results/METHOD)",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars (log lines only), e.g. for batch jobs",
    )
    return p


def build_parser(prog: str = "resad-kit reproduce") -> argparse.ArgumentParser:
    """The command line of ``reproduce`` (``prog``: the name shown in usage and errors)."""
    p = Parser(
        prog=prog,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # a typo such as --epoch is an error, not --epochs
    )
    return add_arguments(p)


def dataset_keys(args: argparse.Namespace) -> tuple[str, ...]:
    """The ``--datasets`` choices: the offline two without ``--data-root``; else the
    paper's five, and for ``--method afclip`` also AF-CLIP's further Table 1 sets."""
    if args.data_root is None:
        return OFFLINE_DATASETS
    return PAPER_DATASETS + (AFCLIP_EXTRA_DATASETS if args.method == "afclip" else ())


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the flags left unset with the method's defaults (:class:`MethodEntry
    <resad_kit.cli.registry.MethodEntry>`); returns ``args``."""
    entry = METHODS[args.method]
    if args.shots is None:
        args.shots = list(entry.shots)
    if args.seeds is None:
        args.seeds = list(entry.seeds)
    if args.out is None:
        args.out = Path("results") / args.method
    if args.eval_size is None and args.backbone == "paper":
        args.eval_size = entry.eval_size
    return args


def check_args(args: argparse.Namespace) -> None:
    """Every check of the flags that needs no data and no backbone: the data flags first,
    then the weights flags, then the work's. Unset flags take the method's defaults
    first (:func:`resolve_defaults`).

    Raises:
        UsageError: the first problem found, in one line.
    """
    entry = METHODS[args.method]
    resolve_defaults(args)
    if args.data_root is not None and not args.data_root.is_dir():
        raise UsageError(f"--data-root {args.data_root} is not a folder")
    keys = dataset_keys(args)
    if args.datasets is not None:
        unknown = [d for d in args.datasets if d not in keys]
        if unknown:
            raise UsageError(f"--datasets {unknown} unknown; choose from {list(keys)}")
        if len(set(args.datasets)) != len(args.datasets):
            raise UsageError(f"--datasets must be distinct; got {args.datasets}")
    if 0 in args.shots and not entry.zero_shot:
        raise UsageError(
            f"--shots 0 (zero-shot) is not a setting of --method {args.method}; its shots "
            "must be ≥ 1"
        )
    check_ints("--shots", args.shots, 0 if entry.zero_shot else 1)
    check_ints("--seeds", args.seeds, 0, 2**32 - 1)
    modes = {"training-free": "training_free", "fine-tune": "fine_tuned"}
    if args.mode in modes and modes[args.mode] not in entry.modes:
        raise UsageError(
            f"--mode {args.mode}: --method {args.method} has only "
            f"{[m.replace('_', '-').replace('tuned', 'tune') for m in entry.modes]}"
        )
    if args.checkpoint is not None:
        if args.backbone == "tiny":
            raise UsageError(
                f"--checkpoint loads {entry.backbone.model} weights, but --backbone tiny has "
                "random weights; drop one of them"
            )
        if not args.checkpoint.is_file():
            raise UsageError(
                f"--checkpoint {args.checkpoint}: no such file (for an offline smoke run use "
                "--backbone tiny)"
            )
    if args.trust_checkpoint and args.checkpoint is None:
        raise UsageError("--trust-checkpoint needs --checkpoint (a local weights file)")
    if args.afclip_weights is not None:
        if args.method != "afclip":
            raise UsageError(
                f"--afclip-weights holds AF-CLIP's released weights; it needs --method afclip "
                f"(got --method {args.method})"
            )
        if args.profile != "official":
            raise UsageError(
                "--afclip-weights needs --profile official (the released prompts were trained "
                "with the official code's layout, context before <SOT>)"
            )
        if not args.afclip_weights.is_dir():
            raise UsageError(
                f"--afclip-weights {args.afclip_weights} is not a folder (the official "
                "repository's weight/ folder)"
            )
    if args.captions is not None:
        if not entry.per_category:
            raise UsageError(
                f"--captions holds FineGrainedAD's MFSC captions; it needs --method "
                f"finegrainedad (got --method {args.method})"
            )
        if not args.captions.is_file():
            raise UsageError(f"--captions {args.captions}: no such file")
    if args.select_epoch_on_test and not entry.per_category:
        raise UsageError(
            f"--select-epoch-on-test is FineGrainedAD's released-code option; it needs "
            f"--method finegrainedad (got --method {args.method})"
        )
    if entry.per_category and args.batch_size is not None:
        raise UsageError(
            f"--batch-size: --method {args.method} trains on all K shots at once (one step "
            "per epoch); drop the flag"
        )
    for flag in ("epochs", "batch_size", "eval_batch_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be ≥ 1; got {value}")
    if args.heatmaps < 0:
        raise UsageError(f"--heatmaps must be ≥ 0; got {args.heatmaps}")
    patch = TINY_PATCH if args.backbone == "tiny" else entry.backbone.patch
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
    if args.resume and args.overwrite:
        raise UsageError("--resume continues the run in --out, --overwrite replaces it; pick one")
    check_device(args.device)
    check_folder("--out", args.out)
    if args.cache_dir is not None:
        check_folder("--cache-dir", args.cache_dir)
