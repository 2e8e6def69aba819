"""The training queries of :func:`~resad_kit.engine.training.train`.

:class:`Queries` lists every image of the given data sets as a query, draws each query's
1-shot reference (another normal image of its category and split, uniformly), gathers
cached features of any mix of data sets in the order asked, and reads the loss masks once
(kept bit-packed in memory).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from resad_kit.clip import Features
from resad_kit.data import AnomalyDataset
from resad_kit.data.sampling import training_reference
from resad_kit.engine.features import FeatureCache

__all__ = ["Queries"]

logger = logging.getLogger("resad_kit.engine.training")


class Queries:
    """Query list, reference draws and masks over several data sets (paper App. F.2).

    With ``references=False`` (a method that trains without 1-shot references, e.g.
    AF-CLIP) the categories need no normal image.
    """

    def __init__(
        self,
        datasets: Sequence[AnomalyDataset],
        *,
        self_reference: bool = False,
        references: bool = True,
    ) -> None:
        fn = "train"
        self.self_reference = bool(self_reference)
        if isinstance(datasets, AnomalyDataset) or not isinstance(datasets, Sequence):
            raise TypeError(f"{fn}: `datasets` must be a sequence of AnomalyDataset")
        if not datasets:
            raise ValueError(f"{fn}: `datasets` must not be empty")
        for k, ds in enumerate(datasets):
            if not isinstance(ds, AnomalyDataset):
                raise TypeError(
                    f"{fn}: `datasets[{k}]` must be an AnomalyDataset; got {type(ds).__name__}"
                )
        sizes = {(ds.image_size, ds.mask_size) for ds in datasets}
        if len(sizes) != 1:
            raise ValueError(
                f"{fn}: every data set must have the same image_size and mask_size; got "
                f"{sorted(sizes)}"
            )
        self.datasets = list(datasets)
        self.items = [(d, i) for d, ds in enumerate(datasets) for i in range(len(ds))]
        if not self.items:
            raise ValueError(f"{fn}: the data sets hold no image")
        self.normals = [[i for i, y in enumerate(ds.labels) if y == 0] for ds in datasets]
        for ds, normals in zip(datasets, self.normals, strict=True):
            if not references:  # the method draws no 1-shot references
                break
            if len(normals) == 1 and self.self_reference:
                logger.warning(
                    "%s: category %r (%s split) has a single normal image; as in the official "
                    "code it is its own training reference",
                    fn,
                    ds.category,
                    ds.split,
                )
            elif len(normals) < 2:  # a normal query needs another normal image
                raise ValueError(
                    f"{fn}: category {ds.category!r} ({ds.split} split) has "
                    f"{len(normals)} normal image(s); every query needs another normal "
                    "image of its category as its 1-shot reference"
                    + (
                        " (TrainConfig(self_reference=True): the official code's fallback)"
                        if normals
                        else ""
                    )
                )
        self._masks: dict[tuple[int, int], np.ndarray] = {}

    def reference(self, rng: random.Random, item: tuple[int, int]) -> tuple[int, int]:
        """One normal image of the query's data set, the query excluded, uniformly
        (:func:`~resad_kit.data.sampling.training_reference`)."""
        d, i = item
        ref = training_reference(rng, self.normals[d], i, self_reference=self.self_reference)
        return d, ref

    def features(self, cache: FeatureCache, items: Sequence[tuple[int, int]]) -> Features:
        """Cached features of ``items`` (any mix of data sets), in the order of ``items``.

        The global torch generator is left as it was: encoding a cache miss iterates a
        ``DataLoader``, which draws a seed from it, and the random stream of a run must not
        depend on which features were cached (a resumed run starts with an empty cache).
        """
        groups: dict[int, list[int]] = {}
        for b, (d, _) in enumerate(items):
            groups.setdefault(d, []).append(b)
        with torch.random.fork_rng(devices=[]):
            parts = [
                cache.features(self.datasets[d], [items[b][1] for b in bs])
                for d, bs in groups.items()
            ]
        if len(parts) == 1:
            return parts[0]
        order = [b for bs in groups.values() for b in bs]
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        inverse = inverse.to(parts[0].cls.device)
        n_taps = len(parts[0].patches)
        patches = [torch.cat([p.patches[t] for p in parts])[inverse] for t in range(n_taps)]
        tap_cls = None
        if parts[0].tap_cls is not None:  # BackboneConfig(tap_cls=True): each tap's CLS
            tap_cls = [torch.cat([p.tap_cls[t] for p in parts])[inverse] for t in range(n_taps)]
        cls = torch.cat([p.cls for p in parts])[inverse]
        return Features(patches, cls, parts[0].grid, tap_cls)

    def masks(self, items: Sequence[tuple[int, int]], device: torch.device) -> Tensor:
        """``(B, S, S)`` binary float masks; decoded once, kept bit-packed in memory."""
        size = self.datasets[0].mask_size
        out = torch.zeros(len(items), size, size)
        for b, (d, i) in enumerate(items):
            ds = self.datasets[d]
            if ds.samples[i].mask_path is None:  # a normal image: all zeros
                continue
            if (d, i) not in self._masks:
                mask = ds.masks([i])[0].numpy() > 0.5
                self._masks[d, i] = np.packbits(mask)
            bits = np.unpackbits(self._masks[d, i], count=size * size)
            out[b] = torch.from_numpy(bits.reshape(size, size).astype(np.float32))
        return out.to(device)
