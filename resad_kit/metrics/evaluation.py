"""All seven metrics of one test set at once, with bounded memory: ``evaluate`` and its accumulator.

:class:`MetricAccumulator` preallocates one score buffer for the pixels of ``num_images``
maps (float32 by default, float16 to halve it) and fills it batch by batch: normal
pixels from the front, anomalous pixels from the back, with the region area of each
anomalous pixel (int32) for AUPRO. :meth:`MetricAccumulator.compute` sorts the two parts
in place once and derives P-AUROC, P-AP, P-F1max and PRO from that one sort; the image
metrics come from the image scores. :func:`evaluate` does the same for tensors in memory.

The official Res²CLIP code evaluates one class at a time and reports the unweighted
mean over the classes of a data set; use one accumulator per class.

``levels`` restricts the metrics to what a data set supports (AF-CLIP, Sec. 4.1: BrainMRI
and Br35H have no masks, so image metrics only; ISIC, ClinicDB, ColonDB and Kvasir have no
normal image, so pixel metrics only). The metrics of a level left out are ``None`` (tables
print "–"), and that level's one-class check is skipped; with both levels (the default) a
one-class input stays an error.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import torch

from resad_kit.metrics._checks import (
    check_both_classes,
    check_fpr_limit,
    check_storage_dtype,
    check_targets,
    to_bool,
)
from resad_kit.metrics._core import rank_stats, sort_inplace
from resad_kit.metrics._store import PixelStore, fill
from resad_kit.metrics.binned import binned_curves, curve_ap, curve_aupro, curve_auroc
from resad_kit.ops._validation import check_binary, check_positive_int, check_tensor

__all__ = ["METRIC_NAMES", "MetricAccumulator", "MetricConfig", "evaluate"]

#: The keys of the dict returned by :func:`evaluate` and :meth:`MetricAccumulator.compute`.
METRIC_NAMES = ("I-AUROC", "I-AP", "I-F1max", "P-AUROC", "P-AP", "P-F1max", "PRO")

#: The metrics of each level: ``"image"`` (from scores and labels) and ``"pixel"`` (maps, masks).
_LEVEL_NAMES = {"image": METRIC_NAMES[:3], "pixel": METRIC_NAMES[3:]}


def _check_levels(fn: str, levels: object) -> tuple[str, ...]:
    """A non-empty subset of ``("image", "pixel")``."""
    ok = not isinstance(levels, str) and isinstance(levels, Collection)
    chosen = set(levels) if ok else set()  # type: ignore[arg-type]
    if not chosen or not chosen <= set(_LEVEL_NAMES):
        raise ValueError(
            f"{fn}: `levels` must be a non-empty subset of ('image', 'pixel'); got {levels!r}"
        )
    return tuple(level for level in _LEVEL_NAMES if level in chosen)


@dataclass(frozen=True)
class MetricConfig:
    """How the metrics are computed: exact (default) or as the official Res²CLIP code.

    Attributes:
        pixel_bins: ``None`` computes P-AUROC, P-AP and PRO exactly; an int computes them
            on that many equal-width score bins as adeval does (official code: 200,
            ``utils/metrics.py``). P-F1max and the image metrics are always exact (the official
            code uses scikit-learn for them).
        f1_eps: added to ``P + R`` in the F1 denominator (official code: ``1e-7``).
        fpr_limit: AUPRO integration limit on the false-positive rate (MVTec AD: 0.3).

    Example:
        >>> from resad_kit.metrics import MetricConfig
        >>> MetricConfig.official_code()
        MetricConfig(pixel_bins=200, f1_eps=1e-07, fpr_limit=0.3)
        >>> MetricConfig.exact() == MetricConfig()
        True
    """

    pixel_bins: int | None = None
    f1_eps: float = 0.0
    fpr_limit: float = 0.3

    def __post_init__(self) -> None:
        fn = "MetricConfig"
        check_positive_int(fn, "pixel_bins", self.pixel_bins, optional=True)
        eps = self.f1_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 <= eps < 1.0:
            raise ValueError(f"{fn}: `f1_eps` must be a number in [0, 1); got {eps!r}")
        check_fpr_limit(fn, self.fpr_limit)

    @classmethod
    def exact(cls) -> MetricConfig:
        """Exact metrics: every distinct score is a threshold (the library default)."""
        return cls()

    @classmethod
    def official_code(cls) -> MetricConfig:
        """The official evaluation: adeval 200-bin pixel AUROC/AP/PRO, F1 with ``1e-7``."""
        return cls(pixel_bins=200, f1_eps=1e-7)


class MetricAccumulator:
    """Collects image scores and anomaly maps of one test set, then computes all metrics.

    Memory: one buffer of ``num_images·height·width`` scores in ``dtype`` (float32: 4 bytes
    a pixel; float16: 2), int32 region areas for the anomalous pixels, and the image
    scores. :meth:`compute` sorts the buffer in place (no index array for the normal
    pixels) and is exact for the stored values: with ``dtype=torch.float16`` the maps
    are rounded to float16 on :meth:`update`, and the metrics are exact for the rounded
    scores. Masks must have the maps' resolution (resize before updating).

    Args:
        num_images: capacity, the number of images of the test set (or class).
        height: map height ``H``.
        width: map width ``W``.
        dtype: storage dtype of the pixel scores: ``torch.float32`` (default),
            ``torch.float16`` or ``torch.float64``.
        config: exact (default) or :meth:`MetricConfig.official_code`.
        levels: the metric levels to compute, ``("image", "pixel")`` (default) or one of
            them; without ``"pixel"`` no pixel is stored and masks are not read.

    Example:
        >>> import torch
        >>> from resad_kit.metrics import MetricAccumulator
        >>> _ = torch.manual_seed(0)
        >>> acc = MetricAccumulator(num_images=4, height=16, width=16)
        >>> for _ in range(2):  # two batches of two images: one normal, one anomalous
        ...     masks = torch.zeros(2, 16, 16, dtype=torch.bool)
        ...     masks[1, 4:8, 4:8] = True
        ...     maps = torch.rand(2, 16, 16) + masks
        ...     acc.update(maps.amax(dim=(1, 2)), maps, torch.tensor([0, 1]), masks)
        >>> {k: round(v, 3) for k, v in acc.compute().items()}
        {'I-AUROC': 1.0, 'I-AP': 1.0, 'I-F1max': 1.0, 'P-AUROC': 1.0, 'P-AP': 1.0,
         'P-F1max': 1.0, 'PRO': 1.0}
    """

    def __init__(
        self,
        num_images: int,
        height: int,
        width: int,
        *,
        dtype: torch.dtype = torch.float32,
        config: MetricConfig | None = None,
        levels: Collection[str] = ("image", "pixel"),
    ) -> None:
        fn = "MetricAccumulator"
        self.levels = _check_levels(fn, levels)
        for name, value in (("num_images", num_images), ("height", height), ("width", width)):
            check_positive_int(fn, name, value)
        np_dtype = check_storage_dtype(fn, dtype)
        self.config = MetricConfig() if config is None else config
        if not isinstance(self.config, MetricConfig):
            raise ValueError(f"{fn}: `config` must be a MetricConfig; got {config!r}")
        self.num_images, self.height, self.width = num_images, height, width
        capacity = num_images * height * width if "pixel" in self.levels else 0
        self._pixels = PixelStore(capacity, np_dtype, regions=True)
        self._scores = np.empty(num_images, dtype=np.float64)
        self._labels = np.empty(num_images, dtype=bool)
        self._count = 0

    def __len__(self) -> int:
        """Number of images added so far."""
        return self._count

    def update(
        self,
        image_scores: torch.Tensor,
        anomaly_maps: torch.Tensor,
        labels: torch.Tensor,
        masks: torch.Tensor,
    ) -> None:
        """Add a batch of ``b`` images (any device; copied to the CPU buffer).

        Raises:
            ValueError: on shapes other than below, more images than ``num_images``,
                non-finite scores or maps (or maps that overflow a float16 buffer), and
                labels or masks that are not 0/1 (maps and masks: only checked for shape
                without the ``"pixel"`` level). Nothing is added then.

        Shape:
            - image_scores: ``(b,)``
            - anomaly_maps: ``(b, H, W)`` with the accumulator's ``H, W``
            - labels: ``(b,)``
            - masks: ``(b, H, W)``
        """
        fn = "MetricAccumulator.update"
        s = check_tensor(fn, "image_scores", image_scores, ndim=1, shape_doc="(b,)")
        y = check_targets(fn, "labels", labels, s, "image_scores")
        check_binary(fn, "labels", y)
        hw = (self.height, self.width)
        shape_doc = f"(b, {hw[0]}, {hw[1]})"  # finiteness: checked chunk by chunk in `fill`
        m = check_tensor(
            fn, "anomaly_maps", anomaly_maps, ndim=3, shape_doc=shape_doc, finite=False
        )
        if m.shape != (s.shape[0], *hw):
            raise ValueError(
                f"{fn}: `anomaly_maps` must have shape (b, H, W) = ({s.shape[0]}, {hw[0]}, "
                f"{hw[1]}) to match `image_scores` and the accumulator; got {tuple(m.shape)}"
            )
        g = check_targets(fn, "masks", masks, m, "anomaly_maps")
        b = s.shape[0]
        if self._count + b > self.num_images:
            raise ValueError(
                f"{fn}: the accumulator holds num_images={self.num_images}; it has "
                f"{self._count} and got {b} more"
            )
        if "pixel" in self.levels:
            fill(fn, self._pixels, m, g)
        self._scores[self._count : self._count + b] = s.detach().cpu().double().numpy()
        self._labels[self._count : self._count + b] = to_bool(fn, "labels", y)
        self._count += b

    def compute(self) -> dict[str, float | None]:
        """The seven metrics of everything added so far, keyed by :data:`METRIC_NAMES`.

        Sorts the stored pixel scores in place; calling it again (after more updates or
        not) is allowed and gives the metrics of all images added. The metrics of a level
        not in :attr:`levels` are ``None``.

        Raises:
            ValueError: if no image was added, or, for a computed level, the labels (image)
                or masks (pixel) hold one class only.
        """
        fn = "MetricAccumulator.compute"
        if self._count == 0:
            raise ValueError(f"{fn}: no image was added; call update() first")
        values: dict[str, float | None] = dict.fromkeys(METRIC_NAMES)
        if "image" in self.levels:
            values.update(self._image_metrics(fn))
        if "pixel" in self.levels:
            values.update(self._pixel_metrics(fn))
        return values

    def _image_metrics(self, fn: str) -> dict[str, float]:
        labels = self._labels[: self._count]
        neg_i, pos_i = self._scores[: self._count][~labels], self._scores[: self._count][labels]
        check_both_classes(fn, "labels", pos_i.size, neg_i.size)
        sort_inplace(neg_i)
        sort_inplace(pos_i)
        image = rank_stats(neg_i, pos_i, f1_eps=self.config.f1_eps)
        values = (image.auroc, image.ap, image.f1max)
        return dict(zip(_LEVEL_NAMES["image"], map(float, values), strict=True))

    def _pixel_metrics(self, fn: str) -> dict[str, float]:
        cfg, store = self.config, self._pixels
        check_both_classes(fn, "masks", store.num_pos, store.num_neg)
        binned = None if cfg.pixel_bins is None else binned_curves(store, cfg.pixel_bins)
        neg, pos, areas = store.sort()
        pixel = rank_stats(
            neg,
            pos,
            areas if binned is None else None,
            store.num_regions,
            f1_eps=cfg.f1_eps,
            fpr_limit=cfg.fpr_limit,
        )
        if binned is None:
            p_auroc, p_ap, pro = pixel.auroc, pixel.ap, float(pixel.aupro)  # type: ignore[arg-type]
        else:
            p_auroc, p_ap = curve_auroc(binned), curve_ap(binned)
            pro = curve_aupro(binned, cfg.fpr_limit)
        values = (p_auroc, p_ap, pixel.f1max, pro)
        return dict(zip(_LEVEL_NAMES["pixel"], map(float, values), strict=True))


def evaluate(
    image_scores: torch.Tensor,
    anomaly_maps: torch.Tensor,
    labels: torch.Tensor,
    masks: torch.Tensor,
    *,
    config: MetricConfig | None = None,
    dtype: torch.dtype | None = None,
    levels: Collection[str] = ("image", "pixel"),
) -> dict[str, float | None]:
    """I-AUROC, I-AP, I-F1max, P-AUROC, P-AP, P-F1max and PRO of one test set.

    The pixel threshold metrics and AUPRO share one sort of the pixel scores (see
    :class:`MetricAccumulator`, which this fills in one update). Keys
    (:data:`METRIC_NAMES`): ``I-`` image level from ``image_scores`` and ``labels``; ``P-``
    pixel level from ``anomaly_maps`` and ``masks`` pooled over all images; ``PRO`` the
    normalised AUPRO up to ``config.fpr_limit``. Values are floats in ``[0, 1]`` (the
    paper prints them ×100), or ``None`` for the metrics of a level left out of
    ``levels`` (a data set without masks, or without normal images; tables print "–").

    Args:
        image_scores: one anomaly score per image.
        anomaly_maps: one anomaly map per image, at the masks' resolution.
        labels: 1 for anomalous images, 0 for normal ones.
        masks: ground-truth masks, 1 = anomalous pixel.
        config: :meth:`MetricConfig.exact` (default) or :meth:`MetricConfig.official_code`.
        dtype: storage dtype of the pixel copy (default: float64 for float64 maps, else
            float32; ``torch.float16`` halves the memory and rounds the maps).
        levels: ``("image", "pixel")`` (default), ``("image",)`` or ``("pixel",)``: the
            levels the data set supports (``AnomalyDataset.levels``). Only a left-out level
            may have one class: with both levels, all-anomalous labels or all-zero masks
            stay an error.

    Returns:
        ``{"I-AUROC": ..., "I-AP": ..., "I-F1max": ..., "P-AUROC": ..., "P-AP": ...,
        "P-F1max": ..., "PRO": ...}``.

    Raises:
        ValueError: on shape mismatches, non-finite scores or maps, labels or masks that
            are not 0/1, labels (with ``"image"``) or masks (with ``"pixel"``) with one
            class only, or bad ``levels``.

    Shape:
        - image_scores: ``(B,)``
        - anomaly_maps: ``(B, H, W)``
        - labels: ``(B,)``
        - masks: ``(B, H, W)``

    Example:
        >>> import torch
        >>> from resad_kit.metrics import evaluate
        >>> masks = torch.zeros(2, 4, 4)
        >>> masks[1, 1:3, 1:3] = 1
        >>> maps = 0.5 * masks + 0.25
        >>> maps[0, 0, 0] = 1.0  # one normal pixel above everything
        >>> scores, labels = torch.tensor([0.2, 0.9]), torch.tensor([0, 1])
        >>> {k: round(v, 3) for k, v in evaluate(scores, maps, labels, masks).items()}
        {'I-AUROC': 1.0, 'I-AP': 1.0, 'I-F1max': 1.0, 'P-AUROC': 0.964, 'P-AP': 0.8,
         'P-F1max': 0.889, 'PRO': 0.881}

        A segmentation-only set (every image anomalous) has pixel metrics only:

        >>> both = torch.ones(2, dtype=torch.long)
        >>> evaluate(scores, maps, both, masks, levels=("pixel",))["I-AUROC"] is None
        True
        >>> evaluate(scores, maps, both, masks)
        Traceback (most recent call last):
        ...
        ValueError: evaluate: labels must contain both classes; got 2 positive and 0 ...
    """
    fn = "evaluate"
    m = check_tensor(fn, "anomaly_maps", anomaly_maps, ndim=3, shape_doc="(B, H, W)", finite=False)
    if dtype is None:
        dtype = torch.float64 if m.dtype == torch.float64 else torch.float32
    try:
        acc = MetricAccumulator(*m.shape, dtype=dtype, config=config, levels=levels)
        acc.update(image_scores, anomaly_maps, labels, masks)
        return acc.compute()
    except ValueError as err:  # name this function, not the accumulator, in the message
        raise ValueError(
            str(err)
            .replace("MetricAccumulator.update", fn, 1)
            .replace("MetricAccumulator.compute", fn, 1)
            .replace("MetricAccumulator:", f"{fn}:", 1)
        ) from None
