"""Files of the synthetic data set: PNG writing, the per-category manifest, temp folders.

A category folder is complete when it holds exactly the PNG files its manifest
(:data:`MANIFEST_NAME`) lists, each with the listed SHA-256, and the manifest's settings
are the requested ones. The manifest is deterministic (sorted, no timestamps), so the same
arguments still give byte-identical folders.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["MANIFEST_NAME", "is_complete", "remove_stale_temp", "write_manifest", "write_png"]

MANIFEST_NAME = "synthetic.json"
"""File in each category folder that records how it was generated and every file's digest."""
_MANIFEST_FORMAT = "resad_kit.synthetic/1"


def write_png(array: np.ndarray, path: Path) -> None:
    """Save ``array`` as a PNG at ``path`` (folders created); PIL writes no timestamp."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(cat_dir: Path, settings: dict[str, Any]) -> None:
    """Write the manifest of ``cat_dir``: ``settings`` and the SHA-256 of every PNG file."""
    files = {p.relative_to(cat_dir).as_posix(): _digest(p) for p in sorted(cat_dir.rglob("*.png"))}
    manifest = {"format": _MANIFEST_FORMAT, "settings": settings, "files": files}
    (cat_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n", "utf-8")


def is_complete(cat_dir: Path, settings: dict[str, Any]) -> bool:
    """Whether ``cat_dir`` holds exactly what its manifest lists, generated with ``settings``."""
    try:
        manifest = json.loads((cat_dir / MANIFEST_NAME).read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    if not isinstance(manifest, dict) or manifest.get("format") != _MANIFEST_FORMAT:
        return False
    if manifest.get("settings") != settings or not isinstance(manifest.get("files"), dict):
        return False
    present = {p.relative_to(cat_dir).as_posix() for p in cat_dir.rglob("*.png")}
    if present != set(manifest["files"]):
        return False
    return all(_digest(cat_dir / name) == digest for name, digest in manifest["files"].items())


def remove_stale_temp(root: Path, category: str) -> None:
    """Delete the temporary folders of this category left by an interrupted call."""
    for stale in root.glob(f".{category}.tmp*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
