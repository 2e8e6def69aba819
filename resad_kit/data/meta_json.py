"""The ``meta.json`` convention of AnomalyCLIP and AdaCLIP: a data set described by one file.

Many CLIP anomaly-detection repositories (GitHub ``zqhang/AnomalyCLIP``,
``generate_dataset_json/*.py``; ``caoyunkang/AdaCLIP``, ``data_preprocess/*.py``) describe a
data set by ``<root>/meta.json``::

    {"train": {<class>: [<entry>, ...], ...},
     "test":  {<class>: [{"img_path": "brain/test/yes/Y1.jpg", "mask_path": "",
                          "cls_name": "brain", "specie_name": "yes", "anomaly": 1}, ...]}}

Reading rules (those of the repositories' data loaders, made strict):

* The section names ``train`` and ``test`` match case-insensitively (AnomalyCLIP's DAGM
  script writes ``Train``/``Test``); a missing or empty section holds no class.
* ``img_path`` and ``mask_path`` are relative to ``<root>``; an absolute path (the medical
  scripts of AnomalyCLIP write ``f"{root}/..."``) is accepted when it lies inside
  ``<root>``. A path outside ``<root>`` (``..``, another machine's absolute path) or a
  missing file is an error.
* ``anomaly`` is ``0`` or ``1``. ``mask_path`` is ``""`` (or absent) when an image has no
  mask: always for normal images, and for every image of a set without masks (the
  loaders then use an empty mask). A normal image's ``mask_path`` is ignored.
* ``specie_name`` is the defect type (``""``: ``normal``/``anomaly`` from the label);
  ``cls_name`` is not used (the class is the key the entry is listed under).
* The entries keep the file's order.

The metric levels a ``meta.json`` data set supports are read from its ``test`` section as
a whole (:func:`meta_json_levels`): image metrics when it holds normal images, pixel
metrics when its anomalous images have masks. That is how the sets declare themselves in
this convention: BrainMRI and Br35H list no mask (classification only), ISIC, ClinicDB,
ColonDB and Kvasir list no normal image (segmentation only).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from resad_kit.data.sample import Sample

__all__: list[str] = []

META_JSON = "meta.json"
_REQUIRED = ("img_path", "anomaly")


def has_meta_json(root: Path) -> bool:
    """Whether ``<root>/meta.json`` exists."""
    return (root / META_JSON).is_file()


def _fail(path: Path, message: str) -> ValueError:
    return ValueError(f"AnomalyDataset: {str(path)!r}: {message}")


def read_meta_json(root: Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``{split: {class: [entry, ...]}}`` with lower-case split names, structure checked.

    Raises:
        ValueError: a missing file, invalid JSON, a section or entry of the wrong type, an
            entry without ``img_path`` or ``anomaly``, or an ``anomaly`` other than 0/1.
    """
    path = root / META_JSON
    if not path.is_file():
        raise ValueError(f"AnomalyDataset: layout 'meta_json' needs {str(path)!r}; it is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        where = f"{err.msg} at line {err.lineno}, column {err.colno}"
        raise _fail(path, f"not valid JSON: {where}") from None
    except UnicodeDecodeError as err:
        raise _fail(path, f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not isinstance(data, dict):
        raise _fail(path, f"must hold a JSON object with 'train'/'test'; got {type(data).__name__}")
    splits: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for key, section in data.items():
        split = str(key).lower()
        if split not in ("train", "test"):
            continue
        if split in splits:
            raise _fail(path, f"two {split!r} sections (keys differ only in case)")
        if not isinstance(section, dict):
            raise _fail(path, f"section {key!r} must map class names to lists of entries")
        for cls, items in section.items():
            if not isinstance(items, list):
                raise _fail(path, f"{key}[{cls!r}] must be a list of entries")
            for i, entry in enumerate(items):
                _check_entry(path, f"{key}[{cls!r}][{i}]", entry)
        splits[split] = section
    if not splits:
        raise _fail(path, f"no 'train' or 'test' section; top-level keys: {list(data)[:10]}")
    return splits


def _check_entry(path: Path, where: str, entry: object) -> None:
    if not isinstance(entry, dict):
        raise _fail(path, f"{where} must be an object; got {type(entry).__name__}")
    missing = [k for k in _REQUIRED if k not in entry]
    if missing:
        raise _fail(path, f"{where} lacks the keys {missing}; it has {sorted(entry)}")
    anomaly = entry["anomaly"]
    if type(anomaly) not in (int, bool) or anomaly not in (0, 1):
        raise _fail(path, f"{where}: 'anomaly' must be 0 or 1; got {anomaly!r}")
    for key in ("img_path", "mask_path", "specie_name"):
        value = entry.get(key)
        if value is not None and not isinstance(value, str):
            raise _fail(path, f"{where}: {key!r} must be a string; got {value!r}")
    if not entry["img_path"]:
        raise _fail(path, f"{where}: 'img_path' is empty")


def _has_mask(entry: dict[str, Any]) -> bool:
    return bool(entry["anomaly"]) and bool(entry.get("mask_path"))


def _resolve(root: Path, value: str, where: str) -> Path:
    """``value`` (relative to ``root``, or absolute inside it) as an absolute, existing file."""
    path = Path(os.path.normpath(root / value))
    if root not in path.parents:
        raise _fail(
            root / META_JSON,
            f"{where} {value!r} is outside the data root {str(root)!r}; paths must be relative "
            f"to the folder holding meta.json (regenerate it there)",
        )
    if not path.is_file():
        state = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise _fail(root / META_JSON, f"{where} {value!r} {state} ({str(path)!r})")
    return path


def meta_json_categories(root: Path) -> tuple[str, ...]:
    """The class names of every section of ``<root>/meta.json``, sorted."""
    return tuple(sorted({c for section in read_meta_json(root).values() for c in section}))


def scan_meta_json(root: str | Path, category: str, split: str) -> list[Sample]:
    """The samples of ``category`` in the ``split`` section of ``<root>/meta.json``.

    Raises:
        ValueError: see :func:`read_meta_json`; also a category absent from the section,
            a path outside ``root`` or a missing image or mask file.
    """
    root = Path(os.path.abspath(root))
    splits = read_meta_json(root)
    section = splits.get(split, {})
    if category not in section:
        raise _fail(
            root / META_JSON,
            f"category {category!r} is not in the {split!r} section; classes there: "
            f"{sorted(section)}; sections: {sorted(splits)}",
        )
    samples = []
    for i, entry in enumerate(section[category]):
        where = f"{split}[{category!r}][{i}]"
        image = _resolve(root, entry["img_path"], f"{where}: img_path")
        label = int(entry["anomaly"])
        mask = None
        if _has_mask(entry):
            mask = _resolve(root, entry["mask_path"], f"{where}: mask_path")
        defect = entry.get("specie_name") or ("anomaly" if label else "normal")
        samples.append(
            Sample(
                path=image,
                mask_path=mask,
                label=label,
                defect=defect,
                category=category,
                relative_path=image.relative_to(root).as_posix(),
            )
        )
    return samples


def meta_json_levels(root: Path) -> tuple[str, ...]:
    """The metric levels the ``test`` section supports: ``"image"`` and/or ``"pixel"``.

    ``"image"`` when the section holds a normal image; ``"pixel"`` when its anomalous
    images have masks. A file without a ``test`` section supports both.

    Raises:
        ValueError: when some anomalous test images have a mask and others do not (pixel
            metrics would count the unmasked ones as normal), or when the section holds
            neither a normal image nor a mask.
    """
    test = read_meta_json(root).get("test")
    if test is None:
        return ("image", "pixel")
    entries = [e for items in test.values() for e in items]
    anomalous = [e for e in entries if e["anomaly"]]
    masked = sum(_has_mask(e) for e in anomalous)
    if 0 < masked < len(anomalous):
        example = next(e["img_path"] for e in anomalous if not _has_mask(e))
        raise _fail(
            root / META_JSON,
            f"{masked} anomalous test images have a mask_path and {len(anomalous) - masked} "
            f"do not (e.g. {example!r}); pixel metrics need a mask for every anomalous image",
        )
    levels = tuple(
        level
        for level, ok in (("image", len(anomalous) < len(entries)), ("pixel", masked > 0))
        if ok
    )
    if not levels:
        raise _fail(
            root / META_JSON,
            "the 'test' section holds neither a normal image nor a mask: no metric applies",
        )
    return levels
