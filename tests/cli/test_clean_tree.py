"""The guard of tests/conftest.py: a test that writes an output into the working tree
(a git-ignored file such as results/…/log.txt, or a file at the top) fails the run."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"


def _guard():
    spec = importlib.util.spec_from_file_location("_conftest_guard", CONFTEST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_guard_finds_outputs_not_sources_nor_caches(tmp_path: Path) -> None:
    guard = _guard()
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("results/\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("")
    before = guard.working_tree_files(tmp_path)
    assert before == {".gitignore", "pkg/a.py"}
    (tmp_path / "results" / "res2clip").mkdir(parents=True)
    (tmp_path / "results" / "res2clip" / "log.txt").write_text("x")  # an output (ignored)
    (tmp_path / "stray.png").write_text("x")  # an output at the top
    (tmp_path / "pkg" / "b.py").write_text("")  # a source file being written: not flagged
    (tmp_path / "pkg" / "__pycache__").mkdir()
    (tmp_path / "pkg" / "__pycache__" / "a.pyc").write_text("")  # a cache: not seen
    new = guard.working_tree_files(tmp_path) - before
    assert new == {"results/res2clip/log.txt", "stray.png", "pkg/b.py"}
    assert guard.outputs_among(new, tmp_path) == ["results/res2clip/log.txt", "stray.png"]


def test_guard_without_git_counts_every_new_file(tmp_path: Path) -> None:
    guard = _guard()
    if (
        subprocess.run(["git", "-C", str(tmp_path), "rev-parse"], capture_output=True).returncode
        == 0
    ):
        pytest.fail("tmp_path is inside a git checkout; the test needs one outside")
    assert guard.outputs_among({"pkg/b.py"}, tmp_path) == ["pkg/b.py"]
