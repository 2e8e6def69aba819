"""``resad-kit reproduce``: the paper's few-shot evaluation, end to end (see DESCRIPTION).

The flags and their checks live in :mod:`resad_kit.cli.reproduce_args`, the profiles and
the data sets in :mod:`resad_kit.cli.reproduce_data`; this module runs them:
flags → data → weights → trainings → evaluation → files (results, heat maps, report).
``examples/res2clip_full.py`` is a thin wrapper around :func:`main`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.contrib.logging import logging_redirect_tqdm

from resad_kit.cli._common import (
    UsageError,
    offline_reason,
    removing_new_handlers,
    setup_logging,
)
from resad_kit.cli.registry import METHODS, build_method
from resad_kit.cli.reproduce_args import build_parser, check_args
from resad_kit.cli.reproduce_data import (
    PROFILES,
    SYNTHETIC,
    Profile,
    auxiliary,
    discover,
    plan,
    released_weights,
    training_sets,
)
from resad_kit.clip import ClipBackbone, WeightsNotFoundError
from resad_kit.engine.atomic import atomic_write, remove_stale_temp_files
from resad_kit.engine.distributed import (
    DistContext,
    barrier,
    cleanup,
    init_distributed,
    seed_everything,
)
from resad_kit.engine.features import FeatureCache
from resad_kit.engine.protocol import run_evaluation
from resad_kit.engine.report import WarningCollector, run_provenance, write_report
from resad_kit.engine.results import summary_table, write_results
from resad_kit.engine.training import CHECKPOINT_NAME, train
from resad_kit.metrics import MetricConfig

__all__ = [
    "PROFILES", "RUN_OUTPUTS", "SYNTHETIC", "Profile", "build_backbone", "build_parser",
    "main", "prepare_out", "previous_run", "run",
]  # fmt: skip

logger = logging.getLogger("resad_kit.reproduce")

UNTRAINED = (
    "BACKBONE UNTRAINED (random weights): these numbers are NOT comparable to the paper; "
    "they only show that the pipeline runs end to end."
)
# What a run writes into --out (besides log.txt and the generated data/): a folder holding
# any of these holds a started or finished run.
RUN_OUTPUTS = (
    "config.json", "metrics.json", "metrics.csv", "table.md", "checkpoints", "heatmaps",
    "index.html", "provenance.json",
)  # fmt: skip


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


def build_backbone(args: argparse.Namespace, device: torch.device) -> ClipBackbone:
    """The backbone of ``--backbone`` for ``--method`` (its
    :class:`~resad_kit.cli.registry.BackboneRecipe`); the real one, offline without
    ``--checkpoint``, fails at once (no hub retries) with a message that says why."""
    recipe = METHODS[args.method].backbone
    if args.backbone == "tiny":
        backbone = ClipBackbone.tiny(seed=0, image_size=args.image_size or 64, **recipe.tiny)
    else:
        backbone = _pretrained(args, device, recipe)
    if recipe.windows:
        from resad_kit.clip.windows import WindowBackbone

        backbone = WindowBackbone.wrap(backbone)
    if recipe.images:
        from resad_kit.clip.image_backbone import ImageBackbone

        backbone = ImageBackbone.wrap(backbone)
    return backbone.to(device)


def _pretrained(args: argparse.Namespace, device: torch.device, recipe: Any) -> ClipBackbone:
    config = recipe.config(args.profile)
    config = dataclasses.replace(config, image_size=args.image_size or config.image_size)
    offline = None
    if args.checkpoint is None:
        offline = offline_reason()
        if offline is not None:  # only the local cache can help: no network retries
            from huggingface_hub import constants

            constants.HF_HUB_OFFLINE = True
    pretrained = str(args.checkpoint) if args.checkpoint else recipe.pretrained
    try:
        return ClipBackbone.from_pretrained(
            recipe.model,
            pretrained,
            config,
            trust_checkpoint=args.trust_checkpoint,
            device=device,
        )
    except WeightsNotFoundError as error:  # the message says what was tried and how to fix it
        where = (
            f"Offline ({offline}) and the weights are not in the local cache. " if offline else ""
        )
        raise UsageError(
            f"{where}{error} (For an offline smoke run use --backbone tiny.)"
        ) from None


def write_config(out: Path, config: dict) -> None:
    atomic_write(out / "config.json", json.dumps(config, indent=2, default=str) + "\n")


def _trained_line(aux: str, result: Any) -> str:
    """One log line for a finished training (not the result's repr: its history is KBs)."""
    losses = getattr(result, "epoch_losses", ())
    last = losses[-1] if losses else {}
    total = last.get("total")
    loss = f", last epoch's mean total loss {total:.4g}" if isinstance(total, float) else ""
    epochs = getattr(result, "epochs", "?")
    steps = getattr(result, "global_step", "?")
    return f"trained on {aux}: {epochs} epochs, {steps} steps{loss}"


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
    warnings = WarningCollector()
    logging.getLogger().addHandler(warnings)
    with logging_redirect_tqdm():
        if is_main:
            logger.info(what)
            for path in remove_stale_temp_files(args.out):
                logger.info("removed %s, left by an interrupted writer", path)
        barrier(dist)
        seed_everything(111, dist)
        backbone = build_backbone(args, dist.device)
        _run_work(args, dist, profile, backbone, all_specs, targets, modes, auxes, warnings)


def _run_work(
    args: argparse.Namespace,
    dist: DistContext,
    profile: Profile,
    backbone: ClipBackbone,
    all_specs: dict,
    targets: list[str],
    modes: list[str],
    auxes: list[str],
    warnings: WarningCollector,
) -> None:
    is_main, progress, device = dist.is_main, not args.no_progress, dist.device
    if not backbone.trained:
        logger.warning(UNTRAINED)
    logger.info("backbone: %r", backbone)
    entry = METHODS[args.method]
    overrides = {"epochs": args.epochs, "batch_size": args.batch_size}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    train_config = (
        entry.train(**overrides, self_reference=profile.self_reference) if entry.train else None
    )
    metrics = profile.metrics if entry.official_metrics else MetricConfig.exact()
    autocast = (
        torch.autocast(
            device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
        )
        if args.precision != "fp32"
        else contextlib.nullcontext()
    )

    def build(mode: str) -> Any:
        return build_method(args.method, backbone, mode, args.profile)

    if entry.per_category:  # FineGrainedAD: one model per category, trained on its shots
        from resad_kit.cli import reproduce_finegrainedad as per_category

        method_config = per_category.method_config(args)
        method_configs = {"fine_tuned": method_config.to_dict()}
        mask_interpolation = per_category.MASK_INTERPOLATION
    else:
        method_configs = {m: build(m).config_dict() for m in modes}
        mask_interpolation = profile.mask_interpolation
    config = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "backbone": repr(backbone),
        "backbone_config": dataclasses.asdict(backbone.config),
        "method": method_configs,
        "metrics": dataclasses.asdict(metrics),
        "mask_interpolation": mask_interpolation,
        "train": dataclasses.asdict(train_config) if train_config else None,
        "world_size": dist.world_size,
    }
    if is_main:  # written before any training: it marks a started run
        write_config(args.out, config)
    cache = FeatureCache(
        backbone, args.cache_dir, batch_size=args.eval_batch_size, progress=progress and is_main
    )
    if entry.per_category:
        specs = [all_specs[t] for t in targets]
        with autocast:
            results = per_category.evaluate_per_category(
                args, dist, cache, specs, method_config, train_config, metrics
            )
        _write_outputs(args, dist, backbone, config, results, warnings)
        return
    models: dict[tuple[str, str], Any] = {}
    trained: dict[str, Any] = {}
    with autocast:
        for target in targets:
            if "training_free" in modes:
                models["training_free", target] = build("training_free")
        for aux in auxes:
            model = build("fine_tuned")
            if args.afclip_weights is not None:  # the released files instead of a training
                from resad_kit.engine.checkpoint_afclip import load_afclip_weights

                files = released_weights(args.afclip_weights, aux)
                trained[aux] = load_afclip_weights(model, *files)
                logger.info("released AF-CLIP weights for %s: %s", aux, ", ".join(files))
                continue
            out_dir = args.out / "checkpoints" / aux
            # A finished training is loaded, an interrupted one continues from its last
            # epoch, one that had not saved an epoch yet starts afresh.
            resume = args.resume and (out_dir / CHECKPOINT_NAME).is_file()
            logger.info("%s %s† on %s", "resuming" if resume else "training", args.method, aux)
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
            logger.info(_trained_line(aux, result))
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
            metric_config=metrics,
            heatmap_dir=args.out / "heatmaps",
            heatmaps=args.heatmaps,
            dist=dist,
            progress=progress,
        )
    _write_outputs(args, dist, backbone, config, results, warnings)


def _write_outputs(
    args: argparse.Namespace,
    dist: DistContext,
    backbone: ClipBackbone,
    config: dict,
    results: list,
    warnings: WarningCollector,
) -> None:
    """The main rank writes config.json, the results (table.md, …) and the report."""
    if dist.is_main:
        write_config(args.out, config)
        provenance = run_provenance(backbone, warnings.messages, world_size=dist.world_size)
        write_results(
            results,
            args.out,
            backbone_label=f"{backbone.model_name} ({backbone.weights})",
            trained=backbone.trained,
            config=config,
            extra_metadata={"provenance": provenance},
        )
        report = write_report(args.out, provenance=provenance)
        print(summary_table(results, trained=backbone.trained))
        print(
            f"\nwritten to {args.out}/: table.md, metrics.csv, metrics.json, {report.name} "
            "(open it in a browser: tables, heat maps, config, provenance), heatmaps/, log.txt"
        )
        if not backbone.trained:
            print(UNTRAINED)


def main(argv: Sequence[str] | None = None, *, prog: str = "resad-kit reproduce") -> int:
    """Run ``reproduce``; returns the exit status (a usage error exits with status 2)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        check_args(args)
        dist = init_distributed(args.device)
    except (UsageError, ValueError) as error:
        parser.error(str(error))
    try:
        with removing_new_handlers():
            try:
                run(args, dist)
            except UsageError as error:
                parser.error(str(error))
    finally:
        cleanup(dist)
    return 0
