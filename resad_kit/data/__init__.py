"""Data sets, few-shot references and synthetic defects.

- :class:`AnomalyDataset`: one category and split in the MVTec AD (also MPDD,
  DTD-Synthetic), BTAD, VisA, DAGM, medical classification/segmentation or ``meta.json``
  (AnomalyCLIP/AdaCLIP) layout; items hold the normalised image, binary mask, label,
  defect type and path. :func:`scan_samples` lists the samples without reading images;
  :func:`detect_layout` and :func:`find_categories` inspect a data root;
  :func:`metric_levels` tells which metric levels (image, pixel) a data set supports.
- :func:`sample_references`, :func:`references_from_paths`: the few-shot normal references.
- :func:`synthesize_dataset`, :func:`draw_defect`: an offline MVTec-layout data set with
  drawn defects and exact masks.
- :func:`standard_categories`: the category names of MVTec AD, VisA, BTAD, MPDD,
  DTD-Synthetic (:data:`STANDARD_CATEGORIES`) and of AF-CLIP's further Table 1 sets
  (:data:`EXTRA_CATEGORIES`: DAGM and the six medical sets).
- :func:`load_image`, :func:`load_mask`, :data:`OPENAI_CLIP_MEAN`,
  :data:`OPENAI_CLIP_STD`: the preprocessing (bicubic squash resize, CLIP normalisation).

This package never imports :mod:`resad_kit.clip`: a backbone's mean and std are passed in.
"""

from resad_kit.data.categories import EXTRA_CATEGORIES, STANDARD_CATEGORIES, standard_categories
from resad_kit.data.dataset import AnomalyDataset, AnomalyItem
from resad_kit.data.layouts import (
    METRIC_LEVELS,
    Sample,
    detect_layout,
    find_categories,
    metric_levels,
    scan_samples,
)
from resad_kit.data.sampling import References, references_from_paths, sample_references
from resad_kit.data.synthetic import (
    DEFECT_KINDS,
    SYNTHETIC_CATEGORIES,
    draw_defect,
    synthesize_dataset,
)
from resad_kit.data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, load_image, load_mask

__all__ = [
    "DEFECT_KINDS",
    "EXTRA_CATEGORIES",
    "METRIC_LEVELS",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "STANDARD_CATEGORIES",
    "SYNTHETIC_CATEGORIES",
    "AnomalyDataset",
    "AnomalyItem",
    "References",
    "Sample",
    "detect_layout",
    "draw_defect",
    "find_categories",
    "load_image",
    "load_mask",
    "metric_levels",
    "references_from_paths",
    "sample_references",
    "scan_samples",
    "standard_categories",
    "synthesize_dataset",
]
