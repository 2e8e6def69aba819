"""Pure tensor functions: sparsemax, retrieval, residuals, scores, maps, kNN, aggregation.

The training losses live in :mod:`resad_kit.ops.losses` (imported as a submodule so that
their names do not crowd this namespace).
"""

from resad_kit.ops import losses
from resad_kit.ops.aggregation import gaussian_window, spatial_aggregate
from resad_kit.ops.harmonic import harmonic_aggregate, window_indices
from resad_kit.ops.knn import Neighbors, knn_distance
from resad_kit.ops.maps import gaussian_blur, upsample_patches
from resad_kit.ops.region_aggregation import (
    DensityPeaks,
    RegionAggregation,
    dpc_knn,
    progressive_region_aggregation,
)
from resad_kit.ops.region_matching import match_regions, region_weights
from resad_kit.ops.residuals import (
    global_residual,
    prompt_ensemble_mean,
    text_residual,
    visual_residual,
)
from resad_kit.ops.retrieval import (
    Retrieval,
    SparseWeights,
    radial_distance,
    radial_penalty,
    retrieve,
)
from resad_kit.ops.scores import (
    cosine_score,
    fuse,
    magnitude_score,
    projection_score,
    top_fraction_mean,
)
from resad_kit.ops.simplex import sparsemax, sparsemax_threshold

__all__ = [
    "DensityPeaks",
    "Neighbors",
    "RegionAggregation",
    "Retrieval",
    "SparseWeights",
    "cosine_score",
    "dpc_knn",
    "fuse",
    "gaussian_blur",
    "gaussian_window",
    "global_residual",
    "harmonic_aggregate",
    "knn_distance",
    "losses",
    "magnitude_score",
    "match_regions",
    "progressive_region_aggregation",
    "projection_score",
    "prompt_ensemble_mean",
    "radial_distance",
    "radial_penalty",
    "region_weights",
    "retrieve",
    "sparsemax",
    "sparsemax_threshold",
    "spatial_aggregate",
    "text_residual",
    "top_fraction_mean",
    "upsample_patches",
    "visual_residual",
    "window_indices",
]
