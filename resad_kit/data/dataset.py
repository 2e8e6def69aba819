"""``AnomalyDataset``: one category and split of an anomaly-detection data set.

The sample list (paths, labels, defect types, masks) is built once, without reading any
image, and is available as :attr:`AnomalyDataset.samples`; images are read in
``__getitem__``, so a ``torch.utils.data.DataLoader`` with workers parallelises the IO.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypedDict

import torch
from torch.utils.data import Dataset

from resad_kit.data.layouts import METRIC_LEVELS, Sample, metric_levels, scan_samples
from resad_kit.data.transforms import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    check_interpolation,
    check_normalization,
    image_to_tensor,
    open_image,
    read_sample_mask,
)
from resad_kit.ops._validation import check_positive_int

__all__ = ["AnomalyDataset", "AnomalyItem"]


class AnomalyItem(TypedDict):
    """One item of :class:`AnomalyDataset` (a dict, so that ``DataLoader`` collates it).

    Keys:
        image: ``(3, S, S)`` float32, squash-resized (bicubic) and normalised.
        mask: ``(1, S_m, S_m)`` float32 in ``{0, 1}`` (``S_m = mask_size``, default ``S``);
            all zeros for normal images.
        label: ``0`` normal, ``1`` anomalous.
        defect: the defect type (see :class:`~resad_kit.data.Sample`).
        category: the category name.
        path: the image file, as a string.

    Example:
        >>> import tempfile
        >>> from resad_kit.data import AnomalyDataset, synthesize_dataset
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = synthesize_dataset(tmp, categories=["grass"], n_train=1, n_test=2)
        ...     item = AnomalyDataset(tmp, "grass", "test", image_size=8)[0]
        >>> sorted(item), item["label"], float(item["mask"].sum())
        (['category', 'defect', 'image', 'label', 'mask', 'path'], 0, 0.0)
    """

    image: torch.Tensor
    mask: torch.Tensor
    label: int
    defect: str
    category: str
    path: str


class AnomalyDataset(Dataset):
    """Images, masks and labels of one category and split of an anomaly-detection data set.

    The layout is read from disk (``layout="auto"``, see
    :func:`~resad_kit.data.detect_layout`): MVTec AD (also MPDD, DTD-Synthetic, the
    synthetic data set and the shipped samples), BTAD, VisA's ``split_csv/1cls.csv``, DAGM,
    the medical classification (BrainMRI, Br35H) and segmentation (ISIC, ClinicDB,
    ColonDB, Kvasir) trees, or an AnomalyCLIP/AdaCLIP ``meta.json``.
    Images are converted to RGB, squash-resized to ``image_size`` with bicubic
    interpolation (any input size; no crop) and normalised with ``mean``/``std`` (default
    OpenAI CLIP; pass the backbone's values; 16-bit grey images are scaled by their range).
    Masks must be grey (1-bit, 8/16-bit grey, or palette/RGB with only grey colours; see
    :func:`~resad_kit.data.load_mask`), are binarised (``> 0``) and resized with nearest
    neighbour (``mask_interpolation="bilinear"``: the official code's bilinear resize +
    ``> 0.5``). A mask whose size differs from its image's is an error on every path that
    reads it (items and :meth:`masks`).

    :attr:`levels` declares which metrics the data set supports (see
    :func:`~resad_kit.data.metric_levels`): both levels, image metrics only (no masks:
    anomalous items get an all-zero mask) or pixel metrics only (no normal image). The
    evaluation reports the others as "–".

    Args:
        root: the data root (the folder holding the category folders, or VisA's root).
        category: category name, e.g. ``"hazelnut"``, ``"01"``, ``"pcb1"``.
        split: ``"train"`` or ``"test"``.
        image_size: side ``S`` of the square image tensors (paper: 518).
        layout: ``"auto"`` or one of :data:`~resad_kit.data.layouts.LAYOUTS`.
        mean: per-channel normalisation mean; ``None`` with ``std=None`` keeps ``[0, 1]``.
        std: per-channel normalisation std.
        mask_size: side of the mask tensors; default ``image_size`` (e.g. 256 to evaluate
            at a lower resolution than the model input).
        mask_interpolation: ``"nearest"`` (default) or ``"bilinear"`` (official code).
        levels: ``"auto"`` (the layout declares them) or the metric levels to insist on,
            a non-empty subset of ``("image", "pixel")``.

    Attributes:
        samples: the :class:`~resad_kit.data.Sample` list (no image loaded).
        layout: the layout that was used.
        levels: the supported metric levels, e.g. ``("image", "pixel")``.
        mean, std: the normalisation of the images (``None`` for ``[0, 1]`` images).

    Raises:
        ValueError: unknown layout, split or category (the message lists what exists), a
            missing file or mask, bad ``image_size``/``mean``/``std``/``mask_interpolation``/
            ``levels``;
            when a file is read: a mask whose size differs from its image's, an ambiguous
            (colour, transparent) mask, a float image.

    Example:
        >>> import tempfile
        >>> from resad_kit.data import AnomalyDataset, synthesize_dataset
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = synthesize_dataset(
        ...         tmp, categories=["brick"], n_train=2, n_test=4, image_size=32
        ...     )
        ...     test = AnomalyDataset(tmp, "brick", "test", image_size=16)
        ...     item = test[3]
        >>> test
        AnomalyDataset(category='brick', split='test', layout='mvtec', n=4, anomalous=2,
                       image_size=16)
        >>> [(s.defect, s.label) for s in test.samples]
        [('good', 0), ('good', 0), ('hole', 1), ('scratch', 1)]
        >>> item["image"].shape, item["mask"].shape, item["label"], item["defect"]
        (torch.Size([3, 16, 16]), torch.Size([1, 16, 16]), 1, 'scratch')
        >>> bool(item["mask"].any())
        True
    """

    def __init__(
        self,
        root: str | Path,
        category: str,
        split: str = "test",
        image_size: int = 518,
        layout: str = "auto",
        *,
        mean: Sequence[float] | None = OPENAI_CLIP_MEAN,
        std: Sequence[float] | None = OPENAI_CLIP_STD,
        mask_size: int | None = None,
        mask_interpolation: str = "nearest",
        levels: str | Sequence[str] = "auto",
    ) -> None:
        fn = "AnomalyDataset"
        self.image_size = check_positive_int(fn, "image_size", image_size)
        self.mask_size = check_positive_int(fn, "mask_size", mask_size, optional=True) or (
            self.image_size
        )
        self.mask_interpolation = check_interpolation(fn, mask_interpolation)
        self._norm = check_normalization(fn, mean, std)
        self.root = Path(root)
        self.category = str(category)
        self.split = split
        samples, self.layout = scan_samples(self.root, self.category, split, layout)
        self.samples: tuple[Sample, ...] = samples
        if isinstance(levels, str) and levels == "auto":
            self.levels = metric_levels(self.root, self.layout)
        else:
            self.levels = _check_levels(fn, levels)

    @property
    def mean(self) -> tuple[float, ...] | None:
        """The per-channel normalisation mean of the images (``None``: ``[0, 1]`` images)."""
        return None if self._norm is None else self._norm[0]

    @property
    def std(self) -> tuple[float, ...] | None:
        """The per-channel normalisation std of the images (``None``: ``[0, 1]`` images)."""
        return None if self._norm is None else self._norm[1]

    @property
    def labels(self) -> tuple[int, ...]:
        """The label of every sample (``0`` normal, ``1`` anomalous), without reading images."""
        return tuple(s.label for s in self.samples)

    def check_both_labels(self, dataset: str | None = None) -> None:
        """Raise unless the split holds what the metrics of its :attr:`levels` need.

        Image-level metrics (AUROC, AP) rank anomalous against normal images, so a data set
        with image metrics needs both in its test split; pixel-level metrics need an
        anomalous image (with its mask). Call this before any work so that the error names
        the data set, category and split rather than coming from the metrics. A
        segmentation-only set (no normal image) passes: it declares pixel metrics only.

        Args:
            dataset: the data set's name for the message (e.g. ``"mvtec"``), if known.

        Raises:
            ValueError: with image metrics, when every image is normal or every image is
                anomalous; with pixel metrics only, when no image is anomalous.

        Example:
            >>> import shutil, tempfile
            >>> from pathlib import Path
            >>> from resad_kit.data import AnomalyDataset, synthesize_dataset
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     _ = synthesize_dataset(tmp, categories=["grass"], n_train=1, n_test=2)
            ...     AnomalyDataset(tmp, "grass", "test", image_size=8).check_both_labels()
            ...     shutil.rmtree(Path(tmp) / "grass" / "test" / "scratch")
            ...     AnomalyDataset(tmp, "grass", "test", image_size=8).check_both_labels("demo")
            Traceback (most recent call last):
            ...
            ValueError: AnomalyDataset: data set 'demo', category 'grass', split 'test' (root ...)
            has 1 normal and 0 anomalous images; ...
        """
        n_anomalous = sum(self.labels)
        n_normal = len(self.samples) - n_anomalous
        needs_normal = "image" in self.levels
        if n_anomalous and (n_normal or not needs_normal):
            return
        where = f"data set {dataset!r}, " if dataset is not None else ""
        what = "image-level metrics need both" if needs_normal else "pixel metrics need them"
        missing = "normal images" if n_anomalous else "defect images (and their masks)"
        raise ValueError(
            f"AnomalyDataset: {where}category {self.category!r}, split {self.split!r} (root "
            f"{str(self.root)!r}) has {n_normal} normal and {n_anomalous} anomalous images; "
            f"{what}: add the {missing} or leave {self.category!r} out"
        )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> AnomalyItem:
        n = len(self.samples)
        if not -n <= index < n:
            raise IndexError(f"AnomalyDataset: index {index} out of range for {n} samples")
        s = self.samples[index]
        fn = "AnomalyDataset"
        image = open_image(fn, "image", s.path)
        mask = read_sample_mask(
            fn, s.mask_path, s.path, self.mask_size, self.mask_interpolation, image.size
        )
        return AnomalyItem(
            image=image_to_tensor(image, self.image_size, self._norm, fn),
            mask=mask,
            label=s.label,
            defect=s.defect,
            category=s.category,
            path=str(s.path),
        )

    def images(self, indices: Sequence[int]) -> torch.Tensor:
        """Stack the images at ``indices`` into one ``(K, 3, S, S)`` tensor.

        Example:
            >>> import tempfile
            >>> from resad_kit.data import AnomalyDataset, synthesize_dataset
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     _ = synthesize_dataset(
            ...         tmp, categories=["grass"], n_train=3, n_test=0, image_size=24
            ...     )
            ...     AnomalyDataset(tmp, "grass", "train", image_size=8).images([0, 2]).shape
            torch.Size([2, 3, 8, 8])
        """
        if len(indices) == 0:
            raise ValueError("AnomalyDataset.images: `indices` must not be empty")
        return torch.stack([self[i]["image"] for i in indices])

    def masks(self, indices: Sequence[int]) -> torch.Tensor:
        """Read only the masks at ``indices`` (no image is decoded) as ``(K, S_m, S_m)``.

        The same values and the same checks as ``self[i]["mask"][0]``, a mask whose size
        differs from its image's included (the image's size is read from its file header);
        an evaluation or training loop whose images come from a feature cache needs nothing
        else from the files.

        Example:
            >>> import tempfile
            >>> from resad_kit.data import AnomalyDataset, synthesize_dataset
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     _ = synthesize_dataset(tmp, categories=["grass"], n_train=1, n_test=4)
            ...     test = AnomalyDataset(tmp, "grass", "test", image_size=8, mask_size=16)
            ...     masks = test.masks([0, 3])
            >>> masks.shape, float(masks[0].sum()), bool(masks[1].any())
            (torch.Size([2, 16, 16]), 0.0, True)
        """
        if len(indices) == 0:
            raise ValueError("AnomalyDataset.masks: `indices` must not be empty")
        n = len(self.samples)
        for i in indices:
            if not -n <= i < n:
                raise IndexError(f"AnomalyDataset.masks: index {i} out of range for {n} samples")
        fn = "AnomalyDataset.masks"
        return torch.cat(
            [
                read_sample_mask(
                    fn,
                    self.samples[i].mask_path,
                    self.samples[i].path,
                    self.mask_size,
                    self.mask_interpolation,
                )
                for i in indices
            ]
        )

    def __repr__(self) -> str:
        levels = "" if self.levels == METRIC_LEVELS else f", levels={self.levels!r}"
        return (
            f"AnomalyDataset(category={self.category!r}, split={self.split!r}, "
            f"layout={self.layout!r}, n={len(self)}, anomalous={sum(self.labels)}, "
            f"image_size={self.image_size}{levels})"
        )


def _check_levels(fn: str, levels: object) -> tuple[str, ...]:
    """A non-empty subset of :data:`METRIC_LEVELS`, in that order."""
    try:
        chosen = () if isinstance(levels, str) else tuple(levels)  # type: ignore[arg-type]
    except TypeError:
        chosen = ()
    if not chosen or any(level not in METRIC_LEVELS for level in chosen):
        raise ValueError(
            f"{fn}: `levels` must be 'auto' or a non-empty subset of {METRIC_LEVELS}; "
            f"got {levels!r}"
        )
    return tuple(level for level in METRIC_LEVELS if level in chosen)
