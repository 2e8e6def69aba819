"""Few-shot normal reference images (Res²CLIP App. F.2, evaluation protocol).

The paper evaluates with ``K ∈ {1, 2, 4}`` normal images of the target class, three runs
with different reference sets, and does not publish the seeds; the official code
(hito2448/Res2CLIP, ``test.py``) draws them from the **train split**, as this module does.
Two selections are offered:

* ``method="random"`` (default): sort the normal training images by their path relative to
  the data root, draw ``torch.randperm(n, generator=torch.Generator().manual_seed(seed))``
  and take its first ``k`` entries. Only torch's CPU generator is involved and the order
  does not depend on the file system, so the same seed gives the same images on every
  machine. For one seed, the ``k``-shot set is a prefix of the ``k+1``-shot set.
* ``method="first"``: the first ``k`` normal training images in the data set's own order
  (sorted file names; VisA's CSV order) — what the official code does when it is given
  neither a reference list nor ``--shuffle``. ``seed`` is ignored.

The official code's published 1-shot lists (JSON files of paths) can be used with
:func:`references_from_paths`.

Training (App. F.2) draws one reference per query with :func:`training_reference`: a
normal image of the query's category, uniformly at random with the query itself excluded.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from resad_kit.data.dataset import AnomalyDataset
from resad_kit.ops._validation import check_positive_int

__all__ = ["References", "references_from_paths", "sample_references", "training_reference"]

METHODS = ("random", "first")


@dataclass(frozen=True)
class References:
    """``K`` normal reference images of one category.

    Attributes:
        indices: positions in ``dataset.samples``.
        paths: the image files' paths relative to the data root (POSIX style; record
            them to document a run).
        images: the images, read and preprocessed like the dataset's items.

    Shape:
        - images: ``(K, 3, S, S)``

    Example:
        >>> import tempfile
        >>> from resad_kit.data import AnomalyDataset, sample_references, synthesize_dataset
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = synthesize_dataset(tmp, categories=["grass"], n_train=3, n_test=0)
        ...     refs = sample_references(AnomalyDataset(tmp, "grass", "train", 8), 2, seed=0)
        >>> len(refs.indices), len(refs.paths), tuple(refs.images.shape)
        (2, 2, (2, 3, 8, 8))
    """

    indices: tuple[int, ...]
    paths: tuple[str, ...]
    images: torch.Tensor


def _check_train(fn: str, dataset: object) -> AnomalyDataset:
    if not isinstance(dataset, AnomalyDataset):
        raise TypeError(f"{fn}: `dataset` must be an AnomalyDataset; got {type(dataset).__name__}")
    if dataset.split != "train":
        raise ValueError(
            f"{fn}: references come from the train split (as in the official code); got "
            f"split={dataset.split!r} — build AnomalyDataset(..., split='train')"
        )
    return dataset


def _load(dataset: AnomalyDataset, indices: list[int]) -> References:
    return References(
        indices=tuple(indices),
        paths=tuple(dataset.samples[i].relative_path for i in indices),
        images=dataset.images(indices),
    )


def sample_references(
    dataset: AnomalyDataset, k: int, seed: int = 0, *, method: str = "random"
) -> References:
    """Pick ``k`` normal images of the train split as few-shot references (App. F.2).

    Args:
        dataset: the category's **train** split (``AnomalyDataset(..., split="train")``).
        k: number of shots ``K``.
        seed: the run's seed (``method="random"``); any int.
        method: ``"random"`` (seeded, the module docstring gives the generator) or
            ``"first"`` (the official code's default order; ``seed`` is ignored).

    Returns:
        The :class:`References` (indices, relative paths, ``(K, 3, S, S)`` images).

    Raises:
        ValueError: a dataset that is not the train split, ``k`` not a positive int or
            larger than the number of normal images, an unknown ``method``.

    Example:
        >>> import tempfile
        >>> from resad_kit.data import AnomalyDataset, sample_references, synthesize_dataset
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = synthesize_dataset(
        ...         tmp, categories=["gravel"], n_train=6, n_test=0, image_size=24
        ...     )
        ...     train = AnomalyDataset(tmp, "gravel", "train", image_size=16)
        ...     a = sample_references(train, 2, seed=1)
        ...     b = sample_references(train, 3, seed=1)
        ...     first = sample_references(train, 2, method="first")
        >>> a.images.shape
        torch.Size([2, 3, 16, 16])
        >>> a.paths == b.paths[:2]  # same seed: the 2-shot set is a prefix of the 3-shot set
        True
        >>> first.paths
        ('gravel/train/good/000.png', 'gravel/train/good/001.png')
    """
    fn = "sample_references"
    dataset = _check_train(fn, dataset)
    k = check_positive_int(fn, "k", k)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"{fn}: `seed` must be an int; got {seed!r}")
    if method not in METHODS:
        raise ValueError(f"{fn}: `method` must be one of {METHODS}; got {method!r}")
    normal = [i for i, s in enumerate(dataset.samples) if s.label == 0]
    if k > len(normal):
        raise ValueError(
            f"{fn}: `k`={k} is larger than the {len(normal)} normal training images of "
            f"category {dataset.category!r}"
        )
    if method == "first":
        return _load(dataset, normal[:k])
    normal.sort(key=lambda i: dataset.samples[i].relative_path)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(normal), generator=generator)[:k].tolist()
    return _load(dataset, [normal[j] for j in order])


def references_from_paths(dataset: AnomalyDataset, paths: Iterable[str | Path]) -> References:
    """References given as paths, e.g. a published list such as the official 1-shot JSON.

    A path matches the sample whose path relative to the data root it equals or ends with
    (``./data/MVTec/carpet/train/good/148.png`` matches ``carpet/train/good/148.png``), so
    lists written on other machines work.

    Args:
        dataset: the category's train split.
        paths: one path per shot, in order.

    Returns:
        The :class:`References`, in the given order.

    Raises:
        ValueError: an empty list, a path that matches no normal training image.

    Example:
        >>> import tempfile
        >>> from resad_kit.data import AnomalyDataset, references_from_paths, synthesize_dataset
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = synthesize_dataset(
        ...         tmp, categories=["coins"], n_train=3, n_test=0, image_size=24
        ...     )
        ...     train = AnomalyDataset(tmp, "coins", "train", image_size=16)
        ...     refs = references_from_paths(train, ["/elsewhere/coins/train/good/002.png"])
        >>> refs.indices, refs.paths
        ((2,), ('coins/train/good/002.png',))
    """
    fn = "references_from_paths"
    dataset = _check_train(fn, dataset)
    wanted = [Path(p).as_posix() for p in paths]
    if not wanted:
        raise ValueError(f"{fn}: `paths` must not be empty")
    normal = {s.relative_path: i for i, s in enumerate(dataset.samples) if s.label == 0}
    indices = []
    for p in wanted:
        hits = [i for rel, i in normal.items() if p == rel or p.endswith("/" + rel)]
        if len(hits) != 1:
            raise ValueError(
                f"{fn}: path {p!r} matches {len(hits)} normal training images of category "
                f"{dataset.category!r} (relative paths look like "
                f"{next(iter(normal), 'none')!r})"
            )
        indices.append(hits[0])
    return _load(dataset, indices)


def training_reference(
    rng: random.Random, normals: Sequence[int], query: int, *, self_reference: bool = False
) -> int:
    """The 1-shot reference of one training query (App. F.2).

    One of ``normals`` (the normal images of the query's category and split), drawn
    uniformly with ``rng`` and the query itself excluded: the same draw as
    ``rng.choice([i for i in normals if i != query])``, in O(1) random numbers.

    A normal query that is the only normal image of its category has no other image to
    draw. The official code then uses the query itself as its reference
    (``self_reference=True``, no random number is drawn); by default this is an error,
    since its residuals are all zero.

    Args:
        rng: the training's reference generator (Python ``random``, as the official code).
        normals: indices of the category's normal images (no duplicates).
        query: index of the query (normal or anomalous).
        self_reference: the official code's fallback for a single normal image.

    Returns:
        The index of the reference image.

    Raises:
        ValueError: no normal image, or a query that is the only normal image without
            ``self_reference=True``.

    Example:
        >>> import random
        >>> from resad_kit.data.sampling import training_reference
        >>> normals = [0, 1, 2, 5]
        >>> draws = {training_reference(random.Random(s), normals, 1) for s in range(50)}
        >>> sorted(draws)  # never the query itself
        [0, 2, 5]
        >>> training_reference(random.Random(0), [3], 3, self_reference=True)
        3
    """
    fn = "training_reference"
    n = len(normals)
    if n == 0:
        raise ValueError(f"{fn}: `normals` is empty; a training query needs a normal reference")
    try:
        position = normals.index(query)
    except ValueError:  # an anomalous query: any normal image
        return normals[rng.randrange(n)]
    if n == 1:
        if self_reference:
            return query
        raise ValueError(
            f"{fn}: query {query} is the only normal image of its category; every query needs "
            "another normal image as its reference (the official code uses the query itself: "
            "self_reference=True)"
        )
    j = rng.randrange(n - 1)
    return normals[j + 1 if j >= position else j]
