"""Content fingerprints of files and training data: a changed input is never reused silently.

- :func:`file_digest`: a BLAKE2b hash of a file's bytes. The feature cache keys its entries
  by it (not by size and modification time, which a replaced file can keep), and
  :func:`data_fingerprint` records it for every image and mask of a training run.
- :func:`data_fingerprint`: a JSON-able record of the training data (per data set: root,
  category, split, preprocessing, and every sample's relative path, label, image and mask
  digests). :func:`~resad_kit.engine.training.train` stores it in each checkpoint and
  refuses to resume on other data; :func:`data_differences` says what differs.

Hashing speed. BLAKE2b hashed 260–300 MiB/s on a 2-core CPU (2026-12-02), about 4 s per
GB of image files. A digest is remembered in the process while the file's device, inode,
size, modification and status-change times (``st_ctime``, which a user cannot set back,
unlike ``st_mtime``) are unchanged, so the feature cache and the training loop do not hash
a file again on every request. A file changed within :data:`RACY_NS` before it was hashed
is not remembered (file-system clocks tick coarsely, so a second write in the same tick
could leave every time stamp as it was; git's "racy clean" rule): it is hashed again on
its next request.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from resad_kit.data import AnomalyDataset

__all__ = ["RACY_NS", "data_differences", "data_fingerprint", "file_digest"]

DATA_FORMAT = "resad_kit.training_data/1"
RACY_NS = 2_000_000_000
"""A file whose time stamps lie within this many nanoseconds (2 s) of the moment it was
hashed is hashed again on its next request instead of using the remembered digest."""

_DIGEST_SIZE = 32  # bytes: 64 hexadecimal digits
_SETTINGS = ("layout", "image_size", "mask_size", "mask_interpolation", "mean", "std")
_LIST = 5  # names shown per kind of difference
_memo: dict[str, tuple[tuple[int, ...], str]] = {}
_memo_lock = threading.Lock()


def _signature(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _hash_file(name: str) -> str:
    """BLAKE2b of the file's bytes, read in 1 MiB blocks (``hashlib.file_digest`` is 3.11+)."""
    digest = hashlib.blake2b(digest_size=_DIGEST_SIZE)
    with open(name, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path: str | os.PathLike[str]) -> str:
    """BLAKE2b (32 bytes) of a file's bytes, remembered while the file is unchanged.

    Args:
        path: the file.

    Returns:
        64 hexadecimal digits; equal for two files with the same bytes.

    Raises:
        ValueError: the file does not exist or cannot be read (the message names it).

    Example:
        >>> from resad_kit.engine.fingerprint import file_digest
        >>> path = getfixture("tmp_path") / "a.bin"
        >>> _ = path.write_bytes(b"abc")
        >>> first = file_digest(path)
        >>> _ = path.write_bytes(b"abd")  # same size, perhaps the same time stamps
        >>> file_digest(path) == first, len(first)
        (False, 64)
    """
    name = os.path.abspath(os.fspath(path))
    try:
        before = _signature(os.stat(name))
        with _memo_lock:
            memo = _memo.get(name)
        if memo is not None and memo[0] == before:
            return memo[1]
        started = time.time_ns()
        hexdigest = _hash_file(name)
        after = os.stat(name)
    except OSError as err:
        raise ValueError(f"file_digest: {name!r} cannot be read: {err}") from err
    settled = max(after.st_mtime_ns, after.st_ctime_ns) < started - RACY_NS
    with _memo_lock:
        if _signature(after) == before and settled:
            _memo[name] = (before, hexdigest)
        else:  # changed while being read, or too recently to trust its time stamps
            _memo.pop(name, None)
    return hexdigest


def _norm(values: Sequence[float] | None) -> list[float] | None:
    return None if values is None else [float(v) for v in values]


def data_fingerprint(datasets: Sequence[AnomalyDataset]) -> dict[str, Any]:
    """A JSON-able record of training data: settings and content of every sample.

    Args:
        datasets: the data sets, in training order.

    Returns:
        ``{"format", "datasets": [...]}``; each data set gives its absolute ``root`` (for
        the messages only: a moved data set with the same content is the same data),
        ``category``, ``split``, the settings that change what the model sees
        (``layout``, ``image_size``, ``mask_size``, ``mask_interpolation``, ``mean``,
        ``std``) and ``samples``: ``[relative_path, label, image digest, mask digest or
        None]`` in the data set's order (:func:`file_digest`).

    Raises:
        TypeError: an element that is not an :class:`~resad_kit.data.AnomalyDataset`.
        ValueError: an image or mask file that cannot be read.

    Example:
        >>> from resad_kit.data import AnomalyDataset, synthesize_dataset
        >>> from resad_kit.engine.fingerprint import data_differences, data_fingerprint
        >>> root = synthesize_dataset(getfixture("tmp_path"), ["grass"], 1, 4, image_size=16)
        >>> test = AnomalyDataset(root, "grass", "test", image_size=16)
        >>> record = data_fingerprint([test])
        >>> record["datasets"][0]["samples"][0][:2]
        ['grass/test/good/000.png', 0]
        >>> data_differences(record, data_fingerprint([test]))
        []
        >>> bilinear = AnomalyDataset(
        ...     root, "grass", "test", image_size=16, mask_interpolation="bilinear"
        ... )
        >>> data_differences(record, data_fingerprint([bilinear]))
        ["data set 0 (grass/test): mask_interpolation: checkpoint 'nearest', now 'bilinear'"]
    """
    out = []
    for k, ds in enumerate(datasets):
        if not isinstance(ds, AnomalyDataset):
            raise TypeError(
                f"data_fingerprint: `datasets[{k}]` must be an AnomalyDataset; "
                f"got {type(ds).__name__}"
            )
        samples = [
            [
                s.relative_path,
                int(s.label),
                file_digest(s.path),
                None if s.mask_path is None else file_digest(s.mask_path),
            ]
            for s in ds.samples
        ]
        out.append(
            {
                "root": str(Path(ds.root).absolute()),
                "category": ds.category,
                "split": ds.split,
                "layout": ds.layout,
                "image_size": ds.image_size,
                "mask_size": ds.mask_size,
                "mask_interpolation": ds.mask_interpolation,
                "mean": _norm(ds.mean),
                "std": _norm(ds.std),
                "samples": samples,
            }
        )
    return {"format": DATA_FORMAT, "datasets": out}


def _names(paths: Sequence[str]) -> str:
    shown = ", ".join(repr(p) for p in paths[:_LIST])
    return shown + (f" and {len(paths) - _LIST} more" if len(paths) > _LIST else "")


def _sample_differences(saved: list[list[Any]], now: list[list[Any]]) -> list[str]:
    old = {s[0]: s[1:] for s in saved}
    new = {s[0]: s[1:] for s in now}
    kinds = {
        "removed": [p for p in old if p not in new],
        "added": [p for p in new if p not in old],
        "with another label": [p for p in old if p in new and old[p][0] != new[p][0]],
        "with other image bytes": [p for p in old if p in new and old[p][1] != new[p][1]],
        "with other mask bytes": [p for p in old if p in new and old[p][2] != new[p][2]],
    }
    out = [
        f"{len(paths)} image(s) {kind}: {_names(paths)}" for kind, paths in kinds.items() if paths
    ]
    if not out and [s[0] for s in saved] != [s[0] for s in now]:
        out.append("the same images in another order")
    return out


def data_differences(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """What differs between two :func:`data_fingerprint` records (empty: the same data).

    The roots are not compared (a data set moved with its content unchanged is the same
    data); they are named in the messages.

    Args:
        saved: the record stored in a checkpoint.
        now: the record of the data at hand.

    Returns:
        One readable line per difference: the data sets (category/split, in order), each
        setting, and the samples removed, added, relabelled or with other image or mask
        bytes (the first few relative paths of each).
    """
    if saved.get("format") != now.get("format"):
        return [f"record format: checkpoint {saved.get('format')!r}, now {now.get('format')!r}"]
    old, new = saved["datasets"], now["datasets"]
    names_old = [f"{d['category']}/{d['split']}" for d in old]
    names_new = [f"{d['category']}/{d['split']}" for d in new]
    if names_old != names_new:
        return [f"data sets (in order): checkpoint {names_old}, now {names_new}"]
    out = []
    for k, (a, b) in enumerate(zip(old, new, strict=True)):
        where = f"data set {k} ({names_old[k]})"
        if a["root"] != b["root"]:
            where += f" (checkpoint root {a['root']!r}, now {b['root']!r})"
        out += [
            f"{where}: {key}: checkpoint {a.get(key)!r}, now {b.get(key)!r}"
            for key in _SETTINGS
            if a.get(key) != b.get(key)
        ]
        out += [f"{where}: {line}" for line in _sample_differences(a["samples"], b["samples"])]
    return out
