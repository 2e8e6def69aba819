"""Guards the public surface: names of the architecture doc, docstrings, tests, docs, layers."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import resad_kit
from resad_kit import nn, ops
from resad_kit.ops import losses

ROOT = Path(__file__).resolve().parents[1]

# The `ops` and `nn` tables of the architecture doc, plus what this package adds beside them.
ARCHITECTURE_OPS = {
    "sparsemax", "sparsemax_threshold", "radial_distance", "radial_penalty", "retrieve",
    "text_residual", "visual_residual", "projection_score", "cosine_score", "magnitude_score",
    "top_fraction_mean", "gaussian_blur", "upsample_patches", "fuse",
}  # fmt: skip
EXTRA_OPS = {"Retrieval", "SparseWeights", "global_residual", "prompt_ensemble_mean", "losses"}
ARCHITECTURE_NN = {"ResidualAdapter", "GlobalAdapter", "LocalConvAdapter"}
EXTRA_NN = {"Res2CLIPAdapters"}
LOSSES = {
    "Reduction", "global_hinge_loss", "local_hinge_loss", "magnitude_loss",
    "direction_regularizer", "magnitude_regularizer", "stop_gradient_projection",
    "text_branch_loss", "visual_branch_loss", "residual_branch_loss",
    "binary_focal_loss", "dice_loss", "l1_loss",
}  # fmt: skip


def test_all_lists_exactly_the_public_names():
    assert set(ops.__all__) == ARCHITECTURE_OPS | EXTRA_OPS
    assert set(nn.__all__) == ARCHITECTURE_NN | EXTRA_NN
    assert set(losses.__all__) == LOSSES
    assert set(resad_kit.__all__) == {"__version__", "nn", "ops"}
    for module in (ops, nn, losses):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name} is listed but missing"


def _public_callables():
    for module in (ops, nn, losses):
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                yield f"{module.__name__}.{name}", obj


@pytest.mark.parametrize(("name", "obj"), list(_public_callables()))
def test_every_public_name_has_a_doctest_example(name, obj):
    doc = inspect.getdoc(obj) or ""
    has_example = ">>>" in doc
    if inspect.isclass(obj) and not has_example:  # NamedTuples document via their methods
        has_example = any(">>>" in (inspect.getdoc(m) or "") for _, m in inspect.getmembers(obj))
    assert has_example, f"{name} has no doctest example"


@pytest.mark.parametrize(("name", "obj"), list(_public_callables()))
def test_every_public_name_is_tested_and_documented(name, obj):
    short = name.rsplit(".", 1)[1]
    tests = [p for p in (ROOT / "tests").rglob("test_*.py") if p.name != "test_public_api.py"]
    assert any(short in p.read_text() for p in tests), f"no test mentions {short}"
    assert short in (ROOT / "docs" / "primitives.md").read_text(), f"{short} not in primitives.md"


def test_ops_imports_only_torch_einops_and_itself():
    """Layering: ops/ depends on torch (+ einops) only, never on nn/, clip/, data/, methods/."""
    allowed = {"torch", "einops", "math", "collections", "typing", "__future__", "numbers"}
    for path in (ROOT / "resad_kit" / "ops").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for module_name in names:
                top = module_name.split(".")[0]
                if top == "resad_kit":
                    assert module_name.startswith("resad_kit.ops"), f"{path.name}: {module_name}"
                else:
                    assert top in allowed, f"{path.name} imports {module_name}"
