"""Guards the public surface: names of the architecture doc, docstrings, tests, docs, layers."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import resad_kit
from resad_kit import clip, data, engine, methods, metrics, nn, ops
from resad_kit.methods import res2clip_losses
from resad_kit.ops import losses

ROOT = Path(__file__).resolve().parents[1]

# The `ops` and `nn` tables of the architecture doc, plus what this package adds beside them.
ARCHITECTURE_OPS = {
    "sparsemax", "sparsemax_threshold", "radial_distance", "radial_penalty", "retrieve",
    "text_residual", "visual_residual", "projection_score", "cosine_score", "magnitude_score",
    "top_fraction_mean", "gaussian_blur", "upsample_patches", "fuse",
}  # fmt: skip
EXTRA_OPS = {
    "Retrieval", "SparseWeights", "global_residual", "prompt_ensemble_mean", "losses",
    "knn_distance", "Neighbors", "spatial_aggregate", "gaussian_window",
    "harmonic_aggregate", "window_indices",
    "dpc_knn", "DensityPeaks", "progressive_region_aggregation", "RegionAggregation",
    "match_regions", "region_weights",
}  # fmt: skip
ARCHITECTURE_NN = {"ResidualAdapter", "GlobalAdapter", "LocalConvAdapter"}
EXTRA_NN = {
    "Res2CLIPAdapters", "AttentionAdapter", "self_attention_adapter",
    "QueryFormer", "QueryFormerConfig", "query_cross_attention", "query_former_loss",
}  # fmt: skip
LOSSES = {
    "Reduction", "global_hinge_loss", "local_hinge_loss", "magnitude_loss",
    "direction_regularizer", "magnitude_regularizer", "stop_gradient_projection",
    "binary_focal_loss", "dice_loss", "l1_loss", "patch_alignment_loss",
}  # fmt: skip
RES2CLIP_LOSSES = {"text_branch_loss", "visual_branch_loss", "residual_branch_loss"}
CLIP = {
    "ClipBackbone", "Features", "BackboneConfig", "WeightsNotFoundError", "ImagePreprocess",
    "TextAnchors", "build_prompts", "encode_prompt_ensemble", "vv_attention", "dual_attention",
    "interpolate_pos_embed", "convert_to_safetensors", "LearnablePrompts", "ImageBackbone",
}  # fmt: skip
DATA = {
    "AnomalyDataset", "AnomalyItem", "Sample", "scan_samples", "detect_layout",
    "find_categories", "sample_references", "references_from_paths", "References",
    "synthesize_dataset", "draw_defect", "SYNTHETIC_CATEGORIES", "DEFECT_KINDS",
    "standard_categories", "STANDARD_CATEGORIES", "load_image", "load_mask",
    "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "EXTRA_CATEGORIES", "METRIC_LEVELS", "metric_levels",
}  # fmt: skip
METRICS = {
    "image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "pixel_f1max",
    "aupro", "binned_pixel_auroc", "binned_pixel_ap", "binned_aupro", "evaluate",
    "MetricAccumulator", "MetricConfig", "METRIC_NAMES",
}  # fmt: skip
METHODS = {
    "Res2CLIP", "Res2CLIPConfig", "Mode", "Prediction", "BranchOutput", "TrainingBatch",
    "Method", "OptimizerGroup", "NearestNeighbor", "NearestNeighborConfig",
    "AFCLIP", "AFCLIPConfig", "AFCLIPModules", "MemoryScore",
    "WinCLIP", "WinCLIPConfig", "FineGrainedAD", "FineGrainedADConfig",
}  # fmt: skip
ENGINE = {
    "FeatureCache", "train", "TrainConfig", "TrainResult", "AUXILIARY_DATASET",
    "save_checkpoint", "load_checkpoint", "Checkpoint", "run_evaluation", "evaluate_category",
    "DatasetSpec", "CategoryResult", "aggregate", "write_results", "load_results",
    "summary_table", "PAPER_RESULTS", "PAPER_TABLE1", "overlay", "save_heatmaps",
    "init_distributed", "DistContext",
    "evaluate_finegrainedad", "FewShotFineGrainedAD", "train_on_shots",
}  # fmt: skip

# Each public module, the names it must export, and the document that describes them.
PUBLIC = {
    ops: (ARCHITECTURE_OPS | EXTRA_OPS, "primitives.md"),
    nn: (ARCHITECTURE_NN | EXTRA_NN, "primitives.md"),
    losses: (LOSSES, "primitives.md"),
    res2clip_losses: (RES2CLIP_LOSSES, "primitives.md"),
    clip: (CLIP, "backbone.md"),
    data: (DATA, "data.md"),
    metrics: (METRICS, "metrics.md"),
    methods: (METHODS, "methods.md"),
    engine: (ENGINE, "engine.md"),
}


def test_all_lists_exactly_the_public_names():
    for module, (names, _) in PUBLIC.items():
        assert set(module.__all__) == names, module.__name__
    # clip stays out of the top level: importing open_clip costs seconds.
    assert set(resad_kit.__all__) == {"__version__", "checks", "data", "metrics", "nn", "ops"}
    for module in PUBLIC:
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name} is listed but missing"


def test_import_resad_kit_loads_data_and_metrics_only_on_first_use():
    code = (
        "import sys, resad_kit; "
        "assert not {'resad_kit.data', 'resad_kit.metrics', 'resad_kit.clip'} & set(sys.modules); "
        "assert resad_kit.data.AnomalyDataset and resad_kit.metrics.evaluate"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _public_callables():
    for module, (_, doc) in PUBLIC.items():
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                yield f"{module.__name__}.{name}", obj, doc


@pytest.mark.parametrize(("name", "obj", "doc"), list(_public_callables()))
def test_every_public_name_has_a_doctest_example(name, obj, doc):
    doc = inspect.getdoc(obj) or ""
    has_example = ">>>" in doc
    if inspect.isclass(obj) and not has_example:  # NamedTuples document via their methods
        has_example = any(">>>" in (inspect.getdoc(m) or "") for _, m in inspect.getmembers(obj))
    assert has_example, f"{name} has no doctest example"


@pytest.mark.parametrize(("name", "obj", "doc"), list(_public_callables()))
def test_every_public_name_is_tested_and_documented(name, obj, doc):
    short = name.rsplit(".", 1)[1]
    tests = [p for p in (ROOT / "tests").rglob("test_*.py") if p.name != "test_public_api.py"]
    assert any(short in p.read_text() for p in tests), f"no test mentions {short}"
    assert short in (ROOT / "docs" / doc).read_text(), f"{short} not in {doc}"


def _imports(package: str):
    """(file name, imported module) for every import statement of ``resad_kit/<package>``."""
    for path in (ROOT / "resad_kit" / package).glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                yield from ((path.name, alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                yield path.name, node.module or ""


# What each package may import besides the standard library, and which resad_kit packages.
STDLIB = {
    "__future__", "abc", "collections", "dataclasses", "functools", "math", "numbers", "typing",
    "os", "threading", "types",  # the checks switch (ops/_validation.py)
}  # fmt: skip
LAYERS = {
    "ops": ({"torch", "einops"}, {"ops"}),
    "nn": ({"torch", "einops"}, {"nn", "ops"}),
    "metrics": ({"torch", "numpy", "scipy"}, {"metrics", "ops"}),  # no scikit-learn
    "data": (None, {"data", "ops", "_image"}),
    "clip": (None, {"clip", "ops", "_image"}),
    # The composer holds no IO: no data, metrics or engine; the engine may use everything.
    "methods": ({"torch", "einops"}, {"methods", "clip", "nn", "ops"}),
    "engine": (None, {"engine", "methods", "clip", "nn", "ops", "data", "metrics", "_image"}),
}


@pytest.mark.parametrize("package", list(LAYERS))
def test_packages_keep_to_their_layer(package):
    """ops/ is torch + einops only; clip/, data/, metrics/ never import each other."""
    third_party, internal = LAYERS[package]
    for file, module in _imports(package):
        top, *rest = module.split(".")
        if top == "resad_kit":
            assert (rest[0] if rest else "") in internal, f"{package}/{file} imports {module}"
        elif third_party is not None:
            assert top in third_party | STDLIB, f"{package}/{file} imports {module}"
