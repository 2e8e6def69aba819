"""One preallocated buffer holding pixel scores split by class (private).

A store for ``n`` pixels is a single 1-D array of ``n`` floats: negative pixels are
written from the front, positive pixels from the back, so no mask is kept and the
metrics can sort both parts in place. For AUPRO each positive pixel also keeps the area
of its ground-truth region (int32, connected components with 8-connectivity per image).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from resad_kit.metrics._checks import to_bool, to_storage
from resad_kit.metrics._core import sort_inplace, sort_with_areas

__all__: list[str] = []

#: Pixels converted and validated per step when a store is filled (bounds temporaries).
FILL_PIXELS = 1 << 22

# 8-connectivity inside each image of a (B, H, W) stack, never across images.
_EIGHT_CONNECTED = np.zeros((3, 3, 3), dtype=bool)
_EIGHT_CONNECTED[1] = True


def label_regions(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Region area of every positive pixel of ``(b, H, W)`` bool masks (row-major), and ``R``.

    Regions are the connected components of each mask with 8-connectivity (the MVTec AD
    reference), found per image.
    """
    labels, num = ndimage.label(masks, structure=_EIGHT_CONNECTED)
    sizes = np.bincount(labels.ravel(), minlength=num + 1).astype(np.int32)
    return sizes[labels[masks]], int(num)


class PixelStore:
    """Pixel scores of up to ``capacity`` pixels, split into negatives and positives."""

    def __init__(self, capacity: int, dtype: type[np.floating], *, regions: bool) -> None:
        self.buffer = np.empty(capacity, dtype=dtype)
        self.num_neg = 0
        self.num_pos = 0
        self.num_regions = 0
        self.regions = regions
        self._areas: list[np.ndarray] = []  # newest first in buffer order: see `areas`

    @property
    def free(self) -> int:
        return self.buffer.size - self.num_neg - self.num_pos

    @property
    def neg(self) -> np.ndarray:
        return self.buffer[: self.num_neg]

    @property
    def pos(self) -> np.ndarray:
        return self.buffer[self.buffer.size - self.num_pos :]

    @property
    def areas(self) -> np.ndarray:
        """Region areas aligned with :attr:`pos` (later blocks sit in front of earlier ones)."""
        if len(self._areas) != 1:
            self._areas = [np.concatenate([*self._areas[::-1], np.empty(0, np.int32)])]
        return self._areas[0]

    def add(self, scores: np.ndarray, masks: np.ndarray) -> None:
        """Append ``(b, H, W)`` scores (already in the store's dtype) with bool masks."""
        flat, m = scores.reshape(-1), masks.reshape(-1)
        k_pos = int(np.count_nonzero(m))
        k_neg = m.size - k_pos
        if k_neg:
            np.compress(~m, flat, out=self.buffer[self.num_neg : self.num_neg + k_neg])
        if k_pos:
            end = self.buffer.size - self.num_pos
            np.compress(m, flat, out=self.buffer[end - k_pos : end])
            if self.regions:
                areas, num = label_regions(masks)
                self._areas.append(areas)
                self.num_regions += num
        self.num_neg += k_neg
        self.num_pos += k_pos

    def sort(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Sort both parts in place; return ``(neg, pos, areas or None)``, ascending by score."""
        neg, pos = self.neg, self.pos
        sort_inplace(neg)
        if not self.regions:
            sort_inplace(pos)
            return neg, pos, None
        areas = sort_with_areas(pos, self.areas) if pos.size else self.areas
        self._areas = [areas]
        return neg, pos, areas


def fill(
    fn: str,
    store: PixelStore,
    maps: torch.Tensor,
    masks: torch.Tensor,
    names: tuple[str, str] = ("anomaly_maps", "masks"),
) -> None:
    """Validate ``(B, H, W)`` maps (finite) and masks (binary) a few images at a time, and add them.

    Shapes must already be checked. On invalid input nothing is added (the store is rolled
    back to its state before the call) and ``ValueError`` is raised.
    """
    state = (store.num_neg, store.num_pos, store.num_regions, len(store._areas))
    step = max(1, FILL_PIXELS // max(1, maps[0].numel()))
    try:
        for start in range(0, maps.shape[0], step):
            scores = to_storage(fn, names[0], maps[start : start + step], store.buffer.dtype.type)
            store.add(scores, to_bool(fn, names[1], masks[start : start + step]))
    except ValueError:
        store.num_neg, store.num_pos, store.num_regions = state[:3]
        del store._areas[state[3] :]
        raise
