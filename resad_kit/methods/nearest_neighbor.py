"""A PatchCore-style nearest-neighbour memory bank over the backbone taps (a second method).

Deliberately small, it shows that a method is a composition of the public primitives and
that the engine (training, checkpoints, protocol, heat maps) runs any
:class:`~resad_kit.methods.Method`. Inspired by PatchCore (Roth et al., "Towards Total
Recall in Industrial Anomaly Detection", CVPR 2022), without its coreset subsampling and
neighbourhood aggregation, over the same CLIP taps as Res²CLIP:

- **memory bank**: the patch features of the ``K`` normal references at every used tap;
- **patch score**: per query patch, the mean over the ``k`` nearest bank patches of the
  cosine distance ``(1 − cos)/2`` (:func:`~resad_kit.ops.knn_distance`; PatchCore Eq. 6
  with ``k = 1``), averaged over the taps;
- **map**: upsampled bilinearly (:func:`~resad_kit.ops.upsample_patches`) and smoothed
  (:func:`~resad_kit.ops.gaussian_blur`; PatchCore smooths with σ = 4 too);
- **image score**: the map's maximum (PatchCore Eq. 7) or the mean of its top fraction.

Training-free by default. With ``trainable=True`` a linear projection of the patch
features (the identity at initialisation, shared by the taps) is learnt in one phase
``"train"``: the 1-shot distance map of each training query against its own reference is
pushed towards the ground-truth mask (L1 + Dice, :mod:`resad_kit.ops.losses`).

Shape legend: ``B`` query images, ``K`` shots, ``N = h·w`` patches, ``D`` channels,
``L`` used taps, ``H×W`` output pixels.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
from torch import Tensor, nn

from resad_kit.clip import ClipBackbone, Features
from resad_kit.methods.base import Method, OptimizerGroup, Prediction, TrainingBatch
from resad_kit.ops import gaussian_blur, knn_distance, top_fraction_mean, upsample_patches
from resad_kit.ops import losses as L

__all__ = ["NearestNeighbor", "NearestNeighborConfig"]


@dataclasses.dataclass(frozen=True)
class NearestNeighborConfig:
    """Settings of :class:`NearestNeighbor` (sources: PatchCore, Roth et al., CVPR 2022).

    Attributes:
        taps: positions in ``backbone.layers`` whose patches form the bank, or ``"all"``.
        k: nearest bank patches averaged per query patch (PatchCore: 1).
        score: image score: ``"max"`` of the map (PatchCore Eq. 7) or
            ``"top_fraction_mean"`` (mean of its top ``top_fraction``, as Res²CLIP).
        top_fraction: share of pixels for ``"top_fraction_mean"``, in ``(0, 1]``.
        blur_sigma: σ of the Gaussian smoothing of the map (PatchCore: 4).
        blur_kernel: odd size of the smoothing kernel.
        trainable: learn a linear projection of the patch features (phase ``"train"``).
        lr: learning rate of that projection.
        chunk_size: query rows per similarity block of the search (``None``: automatic).

    Example:
        >>> from resad_kit.methods import NearestNeighborConfig
        >>> config = NearestNeighborConfig.patchcore(trainable=True)
        >>> NearestNeighborConfig.from_dict(config.to_dict()) == config, config.k
        (True, 1)
    """

    taps: tuple[int, ...] | Literal["all"] = "all"
    k: int = 1
    score: Literal["max", "top_fraction_mean"] = "max"
    top_fraction: float = 0.01
    blur_sigma: float = 4.0
    blur_kernel: int = 5
    trainable: bool = False
    lr: float = 1e-3
    chunk_size: int | None = None

    def __post_init__(self) -> None:
        fn = "NearestNeighborConfig"
        taps = self.taps if self.taps == "all" else tuple(self.taps)
        if taps != "all" and not (taps and all(type(t) is int for t in taps)):
            raise ValueError(f"{fn}: `taps` must be 'all' or a non-empty tuple of ints")
        object.__setattr__(self, "taps", taps)
        if self.score not in ("max", "top_fraction_mean"):
            raise ValueError(f"{fn}: `score` must be 'max' or 'top_fraction_mean'")
        for name, ok in (
            ("k", type(self.k) is int and self.k >= 1),
            ("top_fraction", 0 < self.top_fraction <= 1),
            ("blur_sigma", self.blur_sigma > 0),
            ("blur_kernel", type(self.blur_kernel) is int and self.blur_kernel % 2 == 1),
            ("trainable", isinstance(self.trainable, bool)),
            ("lr", self.lr > 0),
            ("chunk_size", self.chunk_size is None or type(self.chunk_size) is int),
        ):
            if not ok:
                raise ValueError(f"{fn}: invalid `{name}`: {getattr(self, name)!r}")

    @classmethod
    def patchcore(cls, **overrides: Any) -> NearestNeighborConfig:
        """PatchCore's scoring (Roth et al., CVPR 2022): 1-NN, max of a σ = 4 smoothed map."""
        return cls(**overrides)

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-serialisable values (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> NearestNeighborConfig:
        """Rebuild a config from :meth:`to_dict`'s output; unknown keys are an error."""
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"NearestNeighborConfig.from_dict: unknown fields {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


class NearestNeighbor(Method):
    """Nearest-neighbour memory bank over the backbone taps (see the module docstring).

    Args:
        backbone: a frozen :class:`~resad_kit.clip.ClipBackbone`.
        config: :class:`NearestNeighborConfig`; ``None`` is ``NearestNeighborConfig.patchcore()``.

    Example:
        >>> import torch
        >>> from resad_kit.clip import ClipBackbone
        >>> from resad_kit.methods import NearestNeighbor
        >>> model = NearestNeighbor(ClipBackbone.tiny()).fit_references(torch.randn(2, 3, 64, 64))
        >>> pred = model(torch.randn(3, 3, 64, 64))
        >>> pred.anomaly_map.shape, pred.image_score.shape, model.name, model.mode
        (torch.Size([3, 64, 64]), torch.Size([3]), 'nearest_neighbor', 'training_free')
    """

    name = "nearest_neighbor"

    def __init__(self, backbone: ClipBackbone, config: NearestNeighborConfig | None = None) -> None:
        super().__init__()
        self.backbone, self.config = backbone, config or NearestNeighborConfig.patchcore()
        n = len(backbone.layers)
        taps = range(n) if self.config.taps == "all" else self.config.taps
        if not all(-n <= t < n for t in taps):
            raise ValueError(f"NearestNeighbor: `config.taps` {taps} out of range for {n} taps")
        self.taps = tuple(t % n for t in taps)
        d = backbone.embed_dim
        self.projection = nn.Linear(d, d, bias=False) if self.config.trainable else None
        if self.projection is not None:
            nn.init.eye_(self.projection.weight)
            self.projection.to(backbone.device)
        self._bank: Tensor | None = None  # (L, 1, K·N, D)

    @property
    def phases(self) -> tuple[str, ...]:
        return ("train",) if self.projection is not None else ()

    def optimizer_groups(self) -> list[OptimizerGroup]:
        p = self.projection
        return (
            [] if p is None else [OptimizerGroup("projection", ((p, self.config.lr),), ("train",))]
        )

    def trainable_module(self) -> nn.Module | None:
        return self.projection

    def _patches(self, inputs: Tensor | Features) -> tuple[Tensor, tuple[int, int]]:
        """``(L, B, N, D)`` float32 patches of the used taps (not projected), and the grid."""
        if not isinstance(inputs, Features):
            with torch.no_grad():
                inputs = self.backbone(inputs)
        if len(inputs.patches) != len(self.backbone.layers):
            raise ValueError("NearestNeighbor: the features must hold every backbone tap")
        x = torch.stack([inputs.patches[t] for t in self.taps])
        return x.to(self.backbone.device, torch.float32), inputs.grid

    def _project(self, x: Tensor) -> Tensor:
        return x if self.projection is None else self.projection(x)

    def fit_references(self, references: Tensor | Features) -> NearestNeighbor:
        """Keep the patches of ``K ≥ 1`` reference images (or features) as the bank."""
        patches, _ = self._patches(references)
        self._bank = patches.flatten(1, 2)[:, None].detach()  # (L, 1, K·N, D), shot-major
        return self

    def forward(
        self,
        inputs: Tensor | Features,
        *,
        output_size: int | tuple[int, int] | None = None,
        return_intermediates: bool = False,
    ) -> Prediction:
        """Map and score of ``B`` queries; intermediates: ``patch_distance`` ``(L, B, N, k)``."""
        if self._bank is None:
            raise ValueError("NearestNeighbor: call fit_references(...) before forward")
        c, p = self.config, self.backbone.patch_size
        query, grid = self._patches(inputs)
        bank = self._project(self._bank)
        distance = knn_distance(self._project(query), bank, k=c.k, chunk_size=c.chunk_size)
        size = output_size or (inputs.shape[-2:] if isinstance(inputs, Tensor) else None)
        size = size or (grid[0] * p, grid[1] * p)
        m = upsample_patches(distance.mean(dim=(0, -1)), size, grid)
        m = gaussian_blur(m, c.blur_sigma, c.blur_kernel)
        score = m.flatten(1).amax(1) if c.score == "max" else top_fraction_mean(m, c.top_fraction)
        extra = {"patch_distance": distance} if return_intermediates else None
        return Prediction(score, m, {}, extra)

    def losses(self, batch: TrainingBatch, phase: str) -> dict[str, Tensor]:
        """L1 + Dice of the 1-shot distance map (query vs its own reference) to the mask."""
        if self.projection is None or phase != "train":
            raise ValueError(f"NearestNeighbor.losses: nothing to train in phase {phase!r}")
        query, grid = self._patches(batch.query)
        query = self._project(query)
        ref = self._project(self._patches(batch.reference)[0])  # a 1-shot bank per query
        masks = (batch.masks.to(query.device) > 0.5).float()
        distance = knn_distance(query, ref, k=self.config.k).mean(dim=(0, -1))
        m = upsample_patches(distance, tuple(masks.shape[-2:]), grid)
        l1, dice = L.l1_loss(m, masks), L.dice_loss(m, masks)
        return {"l1": l1, "dice": dice, "total": l1 + dice}
