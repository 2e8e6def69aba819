"""The shipped sample data: unchanged files (checksums) and their licence files."""

from __future__ import annotations

import hashlib
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"


def _checksums() -> dict[str, str]:
    lines = (EXAMPLES / "SHA256SUMS").read_text().splitlines()
    return {name: digest for digest, name in (line.split(maxsplit=1) for line in lines)}


def test_every_shipped_file_matches_its_checksum():
    sums = _checksums()
    on_disk = {
        p.relative_to(EXAMPLES).as_posix()
        for p in EXAMPLES.rglob("*")
        if p.is_file() and p.name not in ("README.md", "SHA256SUMS")
    }
    assert on_disk == set(sums)  # nothing missing, nothing unlisted
    assert len(sums) == 218
    for name, digest in sums.items():
        assert hashlib.sha256((EXAMPLES / name).read_bytes()).hexdigest() == digest, name


def test_licence_files_ship_with_the_images():
    for folder in ("mvtec_mini/hazelnut", "mvtec_mini/transistor", "hazelnut_toy_otx"):
        licence = (EXAMPLES / folder / "LICENSE.txt").read_text()
        assert "Provenance" in licence
    for category in ("hazelnut", "transistor"):
        licence = (EXAMPLES / "mvtec_mini" / category / "LICENSE.txt").read_text()
        assert "CC BY-NC-SA 4.0" in licence
        assert (
            "MVTec Software GmbH" in (EXAMPLES / "mvtec_mini" / category / "readme.txt").read_text()
        )
    toy = (EXAMPLES / "hazelnut_toy_otx" / "LICENSE.txt").read_text()
    assert "Apache License" in toy
    assert "CC-BY-4.0" in toy
    readme = (EXAMPLES / "README.md").read_text()
    assert "not a benchmark" in readme
