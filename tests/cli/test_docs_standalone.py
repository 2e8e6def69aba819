"""The docs, docstrings, help texts and tests stand alone: no citation of files outside the
repository (a design spec, a shared folder, a machine's path). Cite the paper's sections
and equations, or the official code by repository and commit."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OUTSIDE = re.compile(
    r"spec\s*§|spec[\s-]+\d|\(spec\s|spec flag|project spec|\bthe spec\b|\bspec's"
    r"|shared/|/work/|\bspec/",
    re.IGNORECASE,
)
# This file holds the pattern and the strings that test it, so it is not scanned.
SELF = str(Path(__file__).resolve().relative_to(ROOT))
# Every text a user reads: README, the docs, the examples, and every module (docstrings,
# comments, help and error messages) of the package and the benchmarks; and the tests
# (their docstrings and comments say where each reference comes from).
FILES = sorted(
    (
        {"README.md"}
        | {str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")}
        | {str(p.relative_to(ROOT)) for p in (ROOT / "examples").glob("*.py")}
        | {str(p.relative_to(ROOT)) for p in (ROOT / "resad_kit").rglob("*.py")}
        | {str(p.relative_to(ROOT)) for p in (ROOT / "benchmarks").rglob("*.py")}
        | {str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("*.py")}
    )
    - {SELF}
)


def test_pattern_finds_what_it_should():
    for bad in (
        "see spec §4.6",
        "spec 1.1",
        "(spec\n3.6)",
        "(spec sections 1–2)",
        "spec flag `raw_global_residual`",
        "the project spec",
        "shared/spec/res2clip.md",
        "/work/main/x",
        "Spec §5.2 item 5: one-hot",
        "SPEC 1.4",
        "The spec-1.4/1.5 reference forward",
        "written out from the spec (§3.2–3.6)",
        "the spec's blocks, taps and grid",
    ):
        assert OUTSIDE.search(bad), bad
    for fine in (
        "paper Sec. 4.1, Eq. (9); specification of the data",
        "AnomalyDataset(spec.root, category)",
        "def check_device(spec: str | None)",
        "_normals(spec, category)",
        "importlib.util.spec_from_file_location(name, path)",
        "DatasetSpec(root, category)",
        "evaluate(specs, cache)",
        "inspect.signature(fn)",
        "the specs of each dataset",
    ):
        assert not OUTSIDE.search(fine), fine


def test_every_kind_of_text_is_covered():
    for name in ("README.md", "docs/primitives.md", "resad_kit/clip/backbone.py"):
        assert name in FILES
    for name in ("tests/conftest.py", "tests/ops/test_retrieval.py", "tests/clip/conftest.py"):
        assert name in FILES
    assert SELF == "tests/cli/test_docs_standalone.py"
    assert SELF not in FILES
    assert any(name.startswith("benchmarks/") for name in FILES)
    assert any(name.startswith("examples/") for name in FILES)


@pytest.mark.parametrize("name", FILES)
def test_no_reference_outside_the_repository(name):
    text = (ROOT / name).read_text(encoding="utf-8")
    found = [m.group(0) for m in OUTSIDE.finditer(text)]
    assert found == [], f"{name} cites files outside the repository: {found}"


@pytest.mark.parametrize("command", ["reproduce", "predict"])
def test_help_text_stands_alone(command):
    from resad_kit.cli import predict_args, reproduce_args

    module = {"reproduce": reproduce_args, "predict": predict_args}[command]
    text = module.build_parser().format_help()
    assert OUTSIDE.search(text) is None
