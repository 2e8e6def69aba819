"""Feature cache: encode each image with the frozen backbone once, reuse it everywhere.

The backbone of every method (Res²CLIP, :class:`~resad_kit.methods.NearestNeighbor`, …) is
frozen, so the features of an image depend only on the
backbone and on the image tensor. :class:`FeatureCache` computes them once per run (in
batches, only for images it does not hold yet) and reuses them across epochs, shots and
seeds; with a ``directory`` it also keeps them on disk, one safetensors file per image,
for later runs and other processes.

Memory. Per image the cache holds ``len(layers)`` patch tensors ``(N, D)`` and the global
feature ``(D,)``. For the paper's ViT-L/14 at 518 px (``N = 37² = 1369``, ``D = 768``, 4
taps) that is 4 206 336 values: 16.8 MB in float32, 8.4 MB in float16; the 1725 test
images of MVTec AD take 29.0 GB in float32 (14.5 GB in float16). Hence the choices below:
entries live on the CPU (device memory is left to the model), in float16 when a
``directory`` is used, and ``memory=False`` keeps nothing in memory (every call reads the
disk). :attr:`FeatureCache.memory_bytes` reports what is held.

Shape legend: ``B`` images, ``L`` tapped layers, ``N = h·w`` patches, ``D`` embedding dim.
"""

from __future__ import annotations

import hashlib
import json
import logging
import operator
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from resad_kit.clip import ClipBackbone, Features
from resad_kit.data import AnomalyDataset
from resad_kit.engine._feature_store import (
    STORE_DTYPES,
    Entry,
    backbone_fingerprint,
    read_entry,
    write_entry,
)
from resad_kit.engine.fingerprint import file_digest
from resad_kit.ops._validation import check_positive_int

__all__ = ["FeatureCache", "backbone_fingerprint"]

logger = logging.getLogger(__name__)


def _stack_images(items: list[dict[str, Any]]) -> Tensor:
    """``DataLoader`` collate: the ``(B, 3, S, S)`` images only (module level: picklable)."""
    return torch.stack([item["image"] for item in items])


class FeatureCache:
    """Backbone features of data-set images, each image encoded at most once per cache.

    :meth:`features` returns :class:`~resad_kit.clip.Features` of the requested images
    (float32, on ``backbone.device``). Images the cache does not hold are read with the
    data set, encoded in batches of ``batch_size`` (frozen backbone, no gradients) and
    stored; later requests reuse them. An entry is keyed by
    :func:`backbone_fingerprint`, the content of the image file (a BLAKE2b hash of its
    bytes, :func:`~resad_kit.engine.fingerprint.file_digest`), the data set's
    ``image_size``, its normalisation ``mean``/``std`` and the store dtype: another
    backbone (even another random seed), a file with other bytes (even with the same size
    and modification time) or another preprocessing never reuses an entry, while a moved
    or copied file with the same bytes does.

    Precision. Entries are kept in ``store_dtype``, and every returned value equals the
    backbone's output cast to ``store_dtype`` and back to float32, whether it was just
    computed, held in memory or read from disk, so a run with a warm disk cache gives
    exactly the values of a cold run. The default is float16 with a ``directory`` (the
    disk format: the round trip is the float16 cast, half the memory and disk) and
    float32 without one (the backbone's exact values). Values outside the float16 range
    raise ``ValueError`` (use ``store_dtype=torch.float32``).

    Disk. With ``directory`` (created if missing), every entry is also written as
    ``<directory>/<key hash>.safetensors`` (tensors ``patches (L, N, D)`` and
    ``cls (D,)``, the key in the metadata), atomically (temporary file + ``os.replace``),
    so processes may share a directory. A later cache with the same directory reads the
    entries back instead of encoding. An unreadable, corrupt or mismatching file is
    logged as a warning, recomputed and overwritten; a failed write is logged and the
    run goes on. Entries are stored batch by batch, so an interrupted call keeps the
    batches it finished (in memory and on disk).

    Memory. Entries are held on the CPU (see the module docstring for sizes);
    ``memory=False`` holds none and reads the disk on every call (it needs a
    ``directory``). :attr:`memory_bytes` is what is held.

    Args:
        backbone: the frozen :class:`~resad_kit.clip.ClipBackbone`.
        directory: folder of the disk store, or ``None`` for memory only.
        batch_size: images per backbone call.
        progress: show a tqdm progress bar while encoding.
        memory: keep entries in (CPU) memory.
        store_dtype: ``torch.float16`` or ``torch.float32``; ``None``: float16 with a
            ``directory``, float32 without.
        num_workers: ``DataLoader`` worker processes that read the images (0: in this
            process).

    Attributes:
        stats: ``{"hits", "misses", "disk_hits"}``: requested images served from memory,
            encoded by the backbone, and read from disk (each entry of ``indices`` counts
            once; a repeat within a call counts as a hit).

    Example:
        >>> from resad_kit.clip import ClipBackbone
        >>> from resad_kit.data import AnomalyDataset, synthesize_dataset
        >>> from resad_kit.engine.features import FeatureCache
        >>> root = synthesize_dataset(getfixture("tmp_path"), ["grass"], 2, 4, image_size=32)
        >>> backbone = ClipBackbone.tiny(image_size=32)
        >>> dataset = AnomalyDataset(root, "grass", "test", image_size=32)
        >>> cache = FeatureCache(backbone, progress=False)
        >>> features = cache.features(dataset, [3, 0])
        >>> len(features.patches), tuple(features.patches[0].shape), features.grid
        (4, (2, 16, 32), (4, 4))
        >>> _ = cache.features(dataset)  # images 0 and 3 are reused, 1 and 2 encoded
        >>> cache.stats
        {'hits': 2, 'misses': 4, 'disk_hits': 0}
    """

    def __init__(
        self,
        backbone: ClipBackbone,
        directory: str | os.PathLike[str] | None = None,
        *,
        batch_size: int = 8,
        progress: bool = True,
        memory: bool = True,
        store_dtype: torch.dtype | None = None,
        num_workers: int = 0,
    ) -> None:
        fn = "FeatureCache"
        if not isinstance(backbone, ClipBackbone):
            raise TypeError(
                f"{fn}: `backbone` must be a ClipBackbone; got {type(backbone).__name__}"
            )
        self.batch_size = check_positive_int(fn, "batch_size", batch_size)
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"{fn}: `num_workers` must be an int ≥ 0; got {num_workers!r}")
        if store_dtype is None:
            store_dtype = torch.float32 if directory is None else torch.float16
        if store_dtype not in STORE_DTYPES:
            raise ValueError(
                f"{fn}: `store_dtype` must be torch.float16 or torch.float32; got {store_dtype!r}"
            )
        if not memory and directory is None:
            raise ValueError(
                f"{fn}: `memory=False` needs a `directory` (otherwise nothing would be cached)"
            )
        self.directory = None if directory is None else Path(directory).expanduser().absolute()
        if self.directory is not None:
            if self.directory.exists() and not self.directory.is_dir():
                raise ValueError(f"{fn}: `directory` {str(self.directory)!r} is not a folder")
            self.directory.mkdir(parents=True, exist_ok=True)
        self.backbone = backbone
        self.progress = bool(progress)
        self.memory = bool(memory)
        self.store_dtype = store_dtype
        self.num_workers = num_workers
        backbone_fingerprint(backbone)  # hash the weights now (later calls check for changes)
        self._entries: dict[str, Entry] = {}
        self._stats = {"hits": 0, "misses": 0, "disk_hits": 0}

    # ------------------------------------------------------------------ state

    @property
    def stats(self) -> dict[str, int]:
        """``{"hits", "misses", "disk_hits"}`` counted over all calls (a copy)."""
        return dict(self._stats)

    @property
    def fingerprint(self) -> str:
        """:func:`backbone_fingerprint` of the backbone now (a changed weight changes it)."""
        return backbone_fingerprint(self.backbone)

    @property
    def memory_bytes(self) -> int:
        """Bytes of the entries held in memory."""
        return sum(e.patches.nbytes + e.cls.nbytes for e in self._entries.values())

    def __len__(self) -> int:
        """Number of entries held in memory."""
        return len(self._entries)

    def clear(self) -> None:
        """Drop the entries held in memory (the disk store, if any, is kept).

        The evaluation protocol calls it after each category (``release_features``): at
        518 px a category's test features take gigabytes and are not needed again.
        """
        self._entries.clear()

    def __repr__(self) -> str:
        where = "memory" if self.directory is None else str(self.directory)
        dtype = STORE_DTYPES[self.store_dtype]
        return (
            f"FeatureCache(backbone={self.backbone.model_name!r}, store={where!r}, "
            f"dtype={dtype}, entries={len(self)}, stats={self._stats})"
        )

    # ------------------------------------------------------------------ keys

    def _check(self, dataset: object, indices: Sequence[int] | None) -> list[int]:
        fn = "FeatureCache.features"
        if not isinstance(dataset, AnomalyDataset):
            raise TypeError(
                f"{fn}: `dataset` must be an AnomalyDataset; got {type(dataset).__name__}"
            )
        if dataset.image_size != self.backbone.image_size:
            raise ValueError(
                f"{fn}: the data set's image_size is {dataset.image_size} but the backbone is "
                f"built for image_size={self.backbone.image_size} (one input size per backbone); "
                "build the AnomalyDataset with the backbone's image_size"
            )
        n = len(dataset)
        if indices is None:
            if n == 0:
                raise ValueError(f"{fn}: the data set {dataset!r} is empty")
            return list(range(n))
        try:
            out = [operator.index(i) for i in indices]
        except TypeError:
            raise ValueError(
                f"{fn}: `indices` must be a sequence of ints; got {indices!r}"
            ) from None
        if not out:
            raise ValueError(f"{fn}: `indices` must not be empty (pass None for all images)")
        bad = [i for i in out if not 0 <= i < n]
        if bad:
            raise ValueError(
                f"{fn}: `indices` must lie in [0, {n}) for this data set of {n} images; "
                f"got {bad[:5]}"
            )
        return out

    def _key(self, dataset: AnomalyDataset, index: int, fingerprint: str) -> str:
        path = dataset.samples[index].path
        try:
            content = file_digest(path)
        except ValueError as err:
            raise ValueError(
                f"FeatureCache.features: image {str(path)!r} cannot be read: {err.__cause__}"
            ) from err
        key = {
            "backbone": fingerprint,
            "content": content,
            "image_size": dataset.image_size,
            "mean": None if dataset.mean is None else list(dataset.mean),
            "std": None if dataset.std is None else list(dataset.std),
            "dtype": STORE_DTYPES[self.store_dtype],
        }
        return json.dumps(key, sort_keys=True)

    @staticmethod
    def _name(key: str) -> str:
        return hashlib.sha1(key.encode()).hexdigest()

    # ------------------------------------------------------------------ disk

    def _file(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / f"{self._name(key)}.safetensors"

    def _read(self, key: str) -> Entry | None:
        b = self.backbone
        shape = (len(b.layers), b.grid[0] * b.grid[1], b.tap_dim, b.embed_dim)
        return read_entry(self._file(key), key, shape, self.store_dtype, b.config.tap_cls)

    def _write(self, key: str, entry: Entry) -> None:
        write_entry(self._file(key), key, entry)

    # ------------------------------------------------------------------ encoding

    def _encode(self, dataset: AnomalyDataset, indices: list[int]) -> Iterator[list[Entry]]:
        """Encode the images at ``indices`` in batches; yield each batch's entries in order."""
        loader = DataLoader(
            Subset(dataset, indices),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=_stack_images,
        )
        bar = tqdm(
            total=len(indices),
            desc=f"features {dataset.category}/{dataset.split}",
            unit="img",
            disable=not self.progress,
        )
        with bar:
            for images in loader:
                with torch.no_grad():
                    out = self.backbone(images.to(self.backbone.device))
                # (B, L, N, D) and (B, D), cast on the device (less to copy), then to the CPU
                patches = torch.stack(out.patches, dim=1).to(self.store_dtype).cpu()
                cls = out.cls.to(self.store_dtype).cpu()
                taps = None
                if out.tap_cls is not None:  # (B, L, C)
                    taps = torch.stack(out.tap_cls, dim=1).to(self.store_dtype).cpu()
                finite = [torch.isfinite(t).all() for t in (patches, cls, taps) if t is not None]
                if not all(finite):
                    hint = (
                        "; use store_dtype=torch.float32"
                        if self.store_dtype == torch.float16
                        else ""
                    )
                    raise ValueError(
                        f"FeatureCache.features: the features of {dataset!r} are not finite "
                        f"in {self.store_dtype} (overflow?){hint}"
                    )
                yield [
                    Entry(p.clone(), c.clone(), None if taps is None else taps[i].clone())
                    for i, (p, c) in enumerate(zip(patches, cls, strict=True))
                ]
                bar.update(len(images))

    def features(self, dataset: AnomalyDataset, indices: Sequence[int] | None = None) -> Features:
        """Features of the images at ``indices`` of ``dataset``, stacked in that order.

        Args:
            dataset: an :class:`~resad_kit.data.AnomalyDataset` whose ``image_size`` is
                the backbone's.
            indices: positions in ``dataset`` (repeats allowed); ``None``: all images.

        Returns:
            :class:`~resad_kit.clip.Features` ``(patches, cls, grid, tap_cls)``: float32
            on ``backbone.device``, equal to the backbone's output cast to ``store_dtype``
            (``tap_cls`` for a backbone with ``BackboneConfig(tap_cls=True)``, else ``None``).

        Shape:
            - patches: ``L`` × ``(B, N, C)``, ``B = len(indices)``, ``C = backbone.tap_dim``
            - cls: ``(B, D)``
            - tap_cls: ``L`` × ``(B, C)`` or ``None``

        Raises:
            ValueError: empty ``indices`` (or data set), an index out of range, an image
                size other than the backbone's, an unreadable image file.
        """
        positions = self._check(dataset, indices)
        fingerprint = self.fingerprint
        keys = {i: self._key(dataset, i, fingerprint) for i in dict.fromkeys(positions)}
        found = {i: self._entries[key] for i, key in keys.items() if key in self._entries}
        fetched = len(keys) - len(found)  # images read from disk or encoded in this call
        for i, key in keys.items():
            if i not in found and self.directory is not None:
                entry = self._read(key)
                if entry is not None:
                    found[i] = entry
                    self._stats["disk_hits"] += 1
        missing = [i for i in keys if i not in found]
        if missing:
            logger.info(
                "FeatureCache: encoding %d of %d images of %s/%s",
                len(missing),
                len(keys),
                dataset.category,
                dataset.split,
            )
            todo = iter(missing)
            for batch in self._encode(dataset, missing):
                for entry in batch:  # stored batch by batch: an interrupted run keeps them
                    i = next(todo)
                    found[i] = entry
                    self._stats["misses"] += 1
                    if self.memory:
                        self._entries[keys[i]] = entry
                    if self.directory is not None:
                        self._write(keys[i], entry)
        self._stats["hits"] += len(positions) - fetched
        if self.memory:
            for i, key in keys.items():
                self._entries[key] = found[i]
        device = self.backbone.device
        patches = torch.stack([found[i].patches for i in positions]).to(device)
        patches = rearrange(patches, "b l n d -> l b n d").float().contiguous()
        cls = torch.stack([found[i].cls for i in positions]).to(device).float()
        tap_cls = None
        if self.backbone.config.tap_cls:
            taps = torch.stack([found[i].tap_cls for i in positions]).to(device)
            tap_cls = list(rearrange(taps, "b l c -> l b c").float().contiguous().unbind(0))
        return Features(list(patches.unbind(0)), cls, self.backbone.grid, tap_cls)
