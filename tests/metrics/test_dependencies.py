"""Layering: resad_kit.metrics imports torch, NumPy, SciPy and the ops validation only."""

from __future__ import annotations

import ast
from pathlib import Path

import resad_kit.metrics

PACKAGE = Path(resad_kit.metrics.__file__).parent
ALLOWED = {"__future__", "dataclasses", "math", "numpy", "scipy", "torch"}


def test_metrics_import_no_scikit_learn_and_nothing_above_ops():
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top == "resad_kit":
                    assert name.startswith(("resad_kit.metrics", "resad_kit.ops")), (
                        f"{path.name} imports {name}"
                    )
                else:
                    assert top in ALLOWED, f"{path.name} imports {name}"
