"""The docs and help texts of the command stand alone: no citation of files outside the
repository (a design spec, a shared folder, a machine's path). Cite the paper's sections
and equations, or the official code by repository and commit."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OUTSIDE = re.compile(r"spec §|spec \d|shared/|/work/|\bspec/")
# The user-facing texts of issue 17: README, the command's docs, its help and modules.
FILES = [
    "README.md",
    "docs/reproducing.md",
    "docs/engine.md",
    "examples/res2clip_full.py",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "resad_kit" / "cli").glob("*.py")),
    "resad_kit/engine/heatmaps.py",
    "resad_kit/engine/heatmap_panels.py",
    "resad_kit/engine/report.py",
    "resad_kit/engine/report_tables.py",
    "resad_kit/engine/results.py",
    "resad_kit/engine/results_records.py",
    "resad_kit/engine/results_render.py",
]


def test_pattern_finds_what_it_should():
    for bad in ("see spec §4.6", "spec 1.1", "shared/spec/res2clip.md", "/work/main/x"):
        assert OUTSIDE.search(bad), bad
    assert not OUTSIDE.search("paper Sec. 4.1, Eq. (9); specification of the data")


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
