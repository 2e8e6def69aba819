"""Standard category names of the evaluation data sets.

The names are the folder names of each data set's official release, so that
``AnomalyDataset(root, category, ...)`` finds them on disk.

:data:`STANDARD_CATEGORIES`, the five data sets of the Res²CLIP paper (Table 5):

* MVTec AD (15) and VisA (12): the class lists of the official Res²CLIP code;
* BTAD (3): ``01``, ``02``, ``03``;
* MPDD (6) and DTD-Synthetic (12): the release folder names (the official code has no
  loader for them).

:data:`EXTRA_CATEGORIES`, the further data sets of AF-CLIP's Table 1, with the folder
names of the official AF-CLIP code's data tree (its README): DAGM (``Class1`` …
``Class10`` of the Kaggle release ``DAGM_KaggleUpload``), and one category per medical
set, the set's own folder (``BrainMRI``, ``Br35H``, ``ISIC2016``, ``CVC-ClinicDB``,
``CVC-ColonDB``, ``Kvasir``), so that their ``root`` is the folder holding them all. A
``meta.json`` prepared for AnomalyCLIP or AdaCLIP names its classes itself (``brain``,
``colon``, ``skin`` …): list them with :func:`~resad_kit.data.find_categories`.

Each tuple is sorted alphabetically; the order carries no meaning.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["EXTRA_CATEGORIES", "STANDARD_CATEGORIES", "standard_categories"]

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

EXTRA_CATEGORIES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "dagm": tuple(sorted(f"Class{i}" for i in range(1, 11))),
        "brainmri": ("BrainMRI",),
        "br35h": ("Br35H",),
        "isic": ("ISIC2016",),
        "clinicdb": ("CVC-ClinicDB",),
        "colondb": ("CVC-ColonDB",),
        "kvasir": ("Kvasir",),
    }
)
"""Category names of AF-CLIP's further Table 1 sets (``dagm``, ``brainmri``, ``br35h``,
``isic``, ``clinicdb``, ``colondb``, ``kvasir``); read-only."""

_ALIASES = {
    "mvtec_ad": "mvtec",
    "mvtecad": "mvtec",
    "dtd_synthetic": "dtd",
    "dtd-synthetic": "dtd",
    "dagm2007": "dagm",
    "brain_mri": "brainmri",
    "isic2016": "isic",
    "cvc-clinicdb": "clinicdb",
    "cvc-colondb": "colondb",
    "kvasir-seg": "kvasir",
}


def standard_categories(dataset: str) -> tuple[str, ...]:
    """The standard category names of a data set, sorted alphabetically.

    Args:
        dataset: a key of :data:`STANDARD_CATEGORIES` or :data:`EXTRA_CATEGORIES`
            (case-insensitive; ``"mvtec_ad"``, ``"dtd_synthetic"``, ``"cvc-clinicdb"`` …
            are accepted too).

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
        >>> standard_categories("dagm")[:3], standard_categories("CVC-ClinicDB")
        (('Class1', 'Class10', 'Class2'), ('CVC-ClinicDB',))
    """
    key = str(dataset).lower()
    key = _ALIASES.get(key, key)
    known = {**STANDARD_CATEGORIES, **EXTRA_CATEGORIES}
    if key not in known:
        raise ValueError(
            f"standard_categories: unknown `dataset` {dataset!r}; expected one of {sorted(known)}"
        )
    return known[key]
