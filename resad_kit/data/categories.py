"""Standard category names of the five evaluation data sets (paper Table 5).

The names are the folder names of each data set's official release, so that
``AnomalyDataset(root, category, ...)`` finds them on disk:

* MVTec AD (15) and VisA (12): the class lists of the official Res²CLIP code;
* BTAD (3): ``01``, ``02``, ``03``;
* MPDD (6) and DTD-Synthetic (12): the release folder names (the official code has no
  loader for them).

Each tuple is sorted alphabetically; the order carries no meaning.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["STANDARD_CATEGORIES", "standard_categories"]

STANDARD_CATEGORIES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "mvtec": (
            "bottle",
            "cable",
            "capsule",
            "carpet",
            "grid",
            "hazelnut",
            "leather",
            "metal_nut",
            "pill",
            "screw",
            "tile",
            "toothbrush",
            "transistor",
            "wood",
            "zipper",
        ),
        "visa": (
            "candle",
            "capsules",
            "cashew",
            "chewinggum",
            "fryum",
            "macaroni1",
            "macaroni2",
            "pcb1",
            "pcb2",
            "pcb3",
            "pcb4",
            "pipe_fryum",
        ),
        "btad": ("01", "02", "03"),
        "mpdd": (
            "bracket_black",
            "bracket_brown",
            "bracket_white",
            "connector",
            "metal_plate",
            "tubes",
        ),
        "dtd": (
            "Blotchy_099",
            "Fibrous_183",
            "Marbled_078",
            "Matted_069",
            "Mesh_114",
            "Perforated_037",
            "Stratified_154",
            "Woven_001",
            "Woven_068",
            "Woven_104",
            "Woven_125",
            "Woven_127",
        ),
    }
)
"""Category names per data set key (``mvtec``, ``visa``, ``btad``, ``mpdd``, ``dtd``); read-only."""

_ALIASES = {
    "mvtec_ad": "mvtec",
    "mvtecad": "mvtec",
    "dtd_synthetic": "dtd",
    "dtd-synthetic": "dtd",
}


def standard_categories(dataset: str) -> tuple[str, ...]:
    """The standard category names of a data set, sorted alphabetically.

    Args:
        dataset: ``"mvtec"``, ``"visa"``, ``"btad"``, ``"mpdd"`` or ``"dtd"``
            (case-insensitive; ``"mvtec_ad"`` and ``"dtd_synthetic"`` are accepted too).

    Returns:
        The category (folder) names.

    Raises:
        ValueError: for an unknown data set name.

    Example:
        >>> from resad_kit.data import standard_categories
        >>> standard_categories("btad")
        ('01', '02', '03')
        >>> [len(standard_categories(d)) for d in ("mvtec", "visa", "btad", "mpdd", "dtd")]
        [15, 12, 3, 6, 12]
    """
    key = str(dataset).lower()
    key = _ALIASES.get(key, key)
    if key not in STANDARD_CATEGORIES:
        raise ValueError(
            f"standard_categories: unknown `dataset` {dataset!r}; "
            f"expected one of {sorted(STANDARD_CATEGORIES)}"
        )
    return STANDARD_CATEGORIES[key]
