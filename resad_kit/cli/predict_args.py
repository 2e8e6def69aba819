"""``resad-kit predict``: its flags and the checks that need no weights (no torch here)."""

from __future__ import annotations

import argparse
from pathlib import Path

from resad_kit.cli._common import Parser, UsageError, check_device, check_folder
from resad_kit.cli.registry import method_names
from resad_kit.cli.reproduce_args import MAX_SIDE, PATCH, PROFILE_NAMES

__all__ = ["DESCRIPTION", "IMAGE_SUFFIXES", "build_parser", "check_args", "image_files"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

DESCRIPTION = """\
Score your own images against a few good ones (no data set layout needed).

The references (--refs: a folder of normal images of your product, or image files) are
the K-shot normal references of the method; every image of --images (folders, searched
recursively, or files) gets an image score and an anomaly map. Written to --out:

  scores.csv   one row per image: path, score, and (with ≥ 2 references) whether it is
               above the suggested threshold
  heatmaps/    one figure per image (input | overlay, colour bar, score in the title),
               all images on one colour scale
  index.html   a report: the scores, the threshold, the heat maps, config and provenance
  config.json, provenance.json, log.txt

Suggested threshold (a heuristic, with ≥ 2 references): each reference is scored with
the others as references (leave-one-out); the threshold is the highest of those scores,
so that no held-out good image would be flagged. It is not calibrated: K−1 references are
a little weaker than K (higher scores on good images), and a few good images cannot show
how normal variation looks; check it on images whose answer you know.

Example (offline, random weights: runs, but the scores are not meaningful):

    resad-kit predict --refs my_good/ --images to_check/ --backbone tiny --out pred/

With CLIP weights and adapters fine-tuned by `resad-kit reproduce`:

    resad-kit predict --refs my_good/ --images to_check/ --checkpoint ViT-L-14-336px.pt \\
        --adapters results/res2clip/checkpoints/visa/checkpoint.safetensors --out pred/
"""


def build_parser(prog: str = "resad-kit predict") -> argparse.ArgumentParser:
    """The command line of ``predict``."""
    p = Parser(
        prog=prog,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument(
        "--refs",
        nargs="+",
        type=Path,
        required=True,
        help="good (normal) reference images: a folder (searched recursively) or files",
    )
    p.add_argument(
        "--images",
        nargs="+",
        type=Path,
        required=True,
        help="the images to score: folders (searched recursively) or files",
    )
    p.add_argument(
        "--method",
        choices=method_names(predict=True),
        default="res2clip",
        help="the method (default: res2clip, the paper's)",
    )
    p.add_argument(
        "--adapters",
        type=Path,
        help="a checkpoint of trained adapters (checkpoints/<data set>/checkpoint.safetensors "
        "of a reproduce run): the fine-tuned mode; without it the method is training-free",
    )
    p.add_argument(
        "--profile",
        choices=PROFILE_NAMES,
        default="paper",
        help="the method's preset (must match the --adapters checkpoint's run)",
    )
    p.add_argument(
        "--backbone",
        choices=["paper", "tiny"],
        default="paper",
        help="paper: CLIP ViT-L/14-336 (pretrained weights needed); tiny: random weights, "
        "offline tests only (scores not meaningful)",
    )
    p.add_argument("--checkpoint", type=Path, help="local CLIP weights file (ViT-L-14-336)")
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="read an OpenAI TorchScript --checkpoint with torch.jit.load (runs code stored "
        "in the file: only for files you trust)",
    )
    p.add_argument(
        "--image-size", type=int, help="input side, a multiple of the patch (paper 518; tiny 64)"
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if any)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    p.add_argument(
        "--heatmaps",
        type=int,
        default=32,
        help="heat-map figures to draw, highest scores first (≥ 0; default 32)",
    )
    p.add_argument(
        "--branch-maps",
        action="store_true",
        help="also draw each branch's map (Res²CLIP: text, visual, residual) in the heat maps",
    )
    p.add_argument("--out", type=Path, required=True, help="the folder to write to")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an earlier prediction in --out"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def image_files(flag: str, paths: list[Path]) -> list[tuple[Path, str]]:
    """``(file, name)`` pairs of the images ``paths`` name; ``name`` is relative to the
    folder given (or the file's name), in a stable order.

    Raises:
        UsageError: a path that does not exist, a file that is not an image, no image.
    """
    out: list[tuple[Path, str]] = []
    for path in paths:
        if path.is_dir():
            files = sorted(
                f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
            )
            out += [(f, f.relative_to(path).as_posix()) for f in files]
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise UsageError(f"{flag} {path}: not an image ({', '.join(IMAGE_SUFFIXES)})")
            out.append((path, path.name))
        else:
            raise UsageError(f"{flag} {path}: no such file or folder")
    if not out:
        raise UsageError(f"{flag} {' '.join(map(str, paths))}: no image found")
    return out


def check_args(args: argparse.Namespace) -> None:
    """The flags, data first (the image folders), then the weights, then the work.

    Raises:
        UsageError: the first problem found, in one line.
    """
    image_files("--refs", args.refs)
    image_files("--images", args.images)
    if args.checkpoint is not None:
        if args.backbone == "tiny":
            raise UsageError("--checkpoint loads ViT-L-14-336 weights; drop --backbone tiny")
        if not args.checkpoint.is_file():
            raise UsageError(f"--checkpoint {args.checkpoint}: no such file")
    if args.trust_checkpoint and args.checkpoint is None:
        raise UsageError("--trust-checkpoint needs --checkpoint (a local weights file)")
    if args.adapters is not None and not args.adapters.is_file():
        raise UsageError(f"--adapters {args.adapters}: no such file")
    patch = PATCH[args.backbone]
    if args.image_size is not None and not (
        patch <= args.image_size <= MAX_SIDE and args.image_size % patch == 0
    ):
        raise UsageError(
            f"--image-size must be a multiple of {patch} between {patch} and {MAX_SIDE}; "
            f"got {args.image_size}"
        )
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be ≥ 1; got {args.batch_size}")
    if args.heatmaps < 0:
        raise UsageError(f"--heatmaps must be ≥ 0; got {args.heatmaps}")
    check_device(args.device)
    check_folder("--out", args.out)
    if (args.out / "scores.csv").exists() and not args.overwrite:
        raise UsageError(
            f"--out {args.out} holds an earlier prediction (scores.csv); pass --overwrite "
            "to replace it"
        )
