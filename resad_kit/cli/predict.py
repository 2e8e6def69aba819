"""``resad-kit predict``: score any folder of images against a few good references.

See :data:`resad_kit.cli.predict_args.DESCRIPTION` (the ``--help`` text) for what is
written and how the suggested threshold is formed (a heuristic).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from resad_kit.cli._common import UsageError, removing_new_handlers, setup_logging
from resad_kit.cli.predict_args import build_parser, check_args, image_files
from resad_kit.cli.registry import build_method
from resad_kit.clip import ClipBackbone
from resad_kit.engine.atomic import atomic_write
from resad_kit.engine.heatmaps import save_heatmaps
from resad_kit.engine.report import WarningCollector, run_provenance, write_report

__all__ = ["leave_one_out_threshold", "load_images", "main", "run"]

logger = logging.getLogger("resad_kit.predict")


def load_images(files: Sequence[Path], backbone: ClipBackbone) -> torch.Tensor:
    """The images as the backbone expects them: ``(N, 3, S, S)`` (``backbone.preprocess``).

    Raises:
        UsageError: a file that cannot be read as an image.
    """
    out = []
    for f in files:
        try:
            with Image.open(f) as image:
                out.append(backbone.preprocess(image))
        except (OSError, ValueError) as err:
            raise UsageError(f"{f}: cannot read the image ({err})") from None
    return torch.stack(out)


def _predict(model: Any, images: torch.Tensor, batch_size: int, device: torch.device) -> Any:
    """Scores ``(N,)``, maps ``(N, S, S)`` and branch maps of ``images``, on the CPU."""
    scores, maps, branches = [], [], {}
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            pred = model(images[start : start + batch_size].to(device))
            scores.append(pred.image_score.float().cpu())
            maps.append(pred.anomaly_map.float().cpu())
            for name, out in pred.branches.items():
                branches.setdefault(name, []).append(out.map.float().cpu())
    return (
        torch.cat(scores),
        torch.cat(maps),
        {name: torch.cat(v) for name, v in branches.items()},
    )


def leave_one_out_threshold(
    model: Any, references: torch.Tensor, device: torch.device
) -> tuple[float, list[float]]:
    """Each reference scored with the others as references; the threshold is their max.

    A heuristic: a score above every held-out good image. ``K − 1`` references are a
    little weaker than ``K``, so it tends to be on the high (lenient) side.

    Args:
        model: a :class:`~resad_kit.methods.Method`.
        references: ``(K, 3, S, S)`` good images, ``K ≥ 2``.
        device: where the model runs.

    Returns:
        ``(threshold, the K held-out scores)``.
    """
    k = len(references)
    if k < 2:
        raise ValueError(f"leave_one_out_threshold: needs ≥ 2 references; got {k}")
    held_out = []
    with torch.inference_mode():
        for i in range(k):
            others = torch.cat([references[:i], references[i + 1 :]]).to(device)
            model.fit_references(others)
            held_out.append(float(model(references[i : i + 1].to(device)).image_score[0]))
    return max(held_out), held_out


def run(args: argparse.Namespace) -> Path:
    """The prediction after the flags were checked; returns the scores file."""
    from resad_kit.cli.reproduce import build_backbone

    refs = image_files("--refs", args.refs)
    images = image_files("--images", args.images)
    out = args.out
    setup_logging(out, True)
    warnings = WarningCollector()
    logging.getLogger().addHandler(warnings)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with logging_redirect_tqdm():
        backbone = build_backbone(args, device)  # weights: after the data checks
        if not backbone.trained:
            logger.warning("backbone untrained (random weights): the scores are not meaningful")
        mode = "fine_tuned" if args.adapters else "training_free"
        model = build_method(args.method, backbone, mode, args.profile).to(device).eval()
        if args.adapters:
            from resad_kit.engine.checkpoint import load_checkpoint

            try:
                load_checkpoint(args.adapters, model, map_location=device)
            except ValueError as err:
                raise UsageError(f"--adapters {args.adapters}: {err}") from None
        ref_images = load_images([f for f, _ in refs], backbone)
        logger.info("%d references, %d images to score", len(refs), len(images))
        threshold = None
        if len(refs) >= 2:
            value, held_out = leave_one_out_threshold(model, ref_images, device)
            threshold = {
                "value": value,
                "how": f"max of {len(refs)} leave-one-out scores of the references",
                "held_out_scores": dict(zip([n for _, n in refs], held_out, strict=True)),
            }
            logger.info("suggested threshold %.6g (leave-one-out over the references)", value)
        model.fit_references(ref_images.to(device))
        scores, maps, branches = [], [], {}
        bar = tqdm(range(0, len(images), 64), desc="predict", disable=args.no_progress)
        for start in bar:
            chunk = load_images([f for f, _ in images[start : start + 64]], backbone)
            s, m, b = _predict(model, chunk, args.batch_size, device)
            scores.append(s)
            maps.append(m)
            for name, v in b.items():
                branches.setdefault(name, []).append(v)
        score = torch.cat(scores)
        amap = torch.cat(maps)
        branch = {name: torch.cat(v) for name, v in branches.items()} if args.branch_maps else {}
    rows = []
    for (_, name), s in zip(images, score.tolist(), strict=True):
        row = {"image": name, "score": f"{s:.9g}"}
        if threshold is not None:
            row["above_threshold"] = str(s > threshold["value"])
        rows.append(row)
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    scores_file = atomic_write(out / "scores.csv", buffer.getvalue())
    if args.heatmaps:
        top = sorted(range(len(images)), key=lambda i: -score[i])[: args.heatmaps]
        top_images = load_images([images[i][0] for i in top], backbone)
        save_heatmaps(
            top_images,
            amap[top],
            None,
            [images[i][1] for i in top],
            out / "heatmaps" / args.method / mode / "images" / "predicted",
            mean=backbone.mean,
            std=backbone.std,
            vmin=float(amap.min()),  # one colour scale for every image of the run
            vmax=float(amap.max()),
            scores=score[top],
            trained=backbone.trained,
            branches={name: v[top] for name, v in branch.items()},
        )
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    config = json.loads(json.dumps(config, default=str))
    atomic_write(out / "config.json", json.dumps(config, indent=2) + "\n")
    provenance = run_provenance(
        backbone, warnings.messages, method=args.method, mode=mode, threshold=threshold
    )
    write_report(out, provenance=provenance, title=f"resad-kit predict: {args.method} ({mode})")
    logging.getLogger().removeHandler(warnings)
    return scores_file


def main(argv: Sequence[str] | None = None, *, prog: str = "resad-kit predict") -> int:
    """Run ``predict``; returns the exit status (a usage error exits with status 2)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    with removing_new_handlers():
        try:
            check_args(args)
            scores_file = run(args)
        except UsageError as error:
            parser.error(str(error))
    print(f"written to {args.out}/: {scores_file.name}, heatmaps/, index.html, log.txt")
    return 0
