"""Guard: no file in the ``resad_kit`` package is longer than 400 lines (issue 13).

Long files mix concerns; a file that grows past the limit is split by concern into
focused modules (re-exporting what was public from the original module).
"""

from __future__ import annotations

from pathlib import Path

import resad_kit

MAX_LINES = 400
PACKAGE = Path(resad_kit.__file__).resolve().parent


def too_long(root: Path, limit: int = MAX_LINES) -> dict[str, int]:
    """Line counts of the Python files under ``root`` with more than ``limit`` lines
    (package data such as caption tables in JSON is data, not code)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        if lines > limit:
            found[path.relative_to(root).as_posix()] = lines
    return found


def test_no_package_file_is_longer_than_400_lines():
    assert list(PACKAGE.glob("*.py")), f"no Python files found under {PACKAGE}"
    offenders = too_long(PACKAGE)
    assert not offenders, (
        f"files in resad_kit longer than {MAX_LINES} lines (split them by concern): {offenders}"
    )


def test_the_guard_flags_a_long_file_and_only_it(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "long.py").write_text("x = 1\n" * (MAX_LINES + 1))
    (tmp_path / "limit.py").write_text("x = 1\n" * MAX_LINES)
    (tmp_path / "blob.bin").write_bytes(b"\xff\xfe\n" * 1000)
    assert too_long(tmp_path) == {"sub/long.py": MAX_LINES + 1}
